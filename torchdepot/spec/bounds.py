"""Bounded reading of user-written YAML (the mirror spec; reusable for other YAML inputs).

Every limit is a module constant with a safe default, and every refusal is a one-line
:class:`~torchdepot.errors.SpecError` naming the file (and the line, for YAML problems):

- ``MAX_SPEC_BYTES``: at most this many bytes are read (``--spec /dev/zero`` stops there);
- text must be UTF-8 (a UTF-8 BOM is accepted); UTF-16/32 files are named as such;
- ``MAX_ALIASES``: YAML alias references per document, and ``MAX_NODES``: the size of the
  document with every alias expanded, counted on the composed node graph before any object
  is built (a 400-byte "billion laughs" is refused in milliseconds);
- ``MAX_DEPTH``: nesting of sequences and mappings (no RecursionError on ``[[[[...``);
- ``MAX_SCALAR``: characters in one scalar (key or value), and ``MAX_DIGITS`` in one run of digits, so a
  5,000-digit number never reaches ``int()`` (Python refuses past 4,300 digits) nor a message.

Pure apart from :func:`read_bounded`, which reads one file.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

from torchdepot.errors import SpecError, one_line

MAX_SPEC_BYTES = 256 * 1024  # a real spec is under 2 KB
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_DEPTH = 32
MAX_SCALAR = 4096
MAX_DIGITS = 32  # the longest real number in a spec: a version part or a date, far below this
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_LONG_DIGITS = re.compile(rf"\d{{{MAX_DIGITS + 1},}}")
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


def quote_key(name: object) -> str:
    """A YAML key as it should appear in a one-line error: plain keys bare, odd ones quoted."""
    text = show_text(str(name))
    return text if _PLAIN_KEY.fullmatch(text) else repr(text)


def show_text(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a message (user input can be megabytes long)."""
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def show(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a one-line message, cut to ``limit`` characters."""
    if isinstance(value, str):
        return repr(show_text(value, limit))
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > limit:
        return f"<a {len(str(abs(value)))}-digit number>"  # sys int limits allow this many here
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_bounded(path: Path, limit: int = MAX_SPEC_BYTES) -> bytes:
    """At most ``limit`` bytes of ``path``; SpecError for a larger file, a directory or an I/O error."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise SpecError(f"{path}: larger than {limit // 1024} KiB; a spec is a short YAML file")
    return data


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text (an optional UTF-8 BOM dropped); other encodings are refused by name."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise SpecError(f"{where}: the file is {name} (it starts with a {name} byte-order mark); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                        "save it as UTF-8") from None
    if "\x00" in text:
        raise SpecError(f"{where}: contains NUL bytes; a spec is UTF-8 text (UTF-16 without a byte-order mark?)")
    return text


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds aliases, nesting and scalars while composing, before any object
    is built, and knows the key path of the node being composed (for the message)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._path: list[str] = []

    def _where(self, mark: yaml.Mark | None = None) -> str:
        # types-PyYAML leaves Parser.peek_event unannotated (it returns the next Event)
        mark = mark or self.peek_event().start_mark  # type: ignore[no-untyped-call]
        key = "".join(self._path).lstrip(".")
        return f"{key + ': ' if key else ''}at line {mark.line + 1}, column {mark.column + 1}"

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # index: a key node or a position
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"{self._where()}: more than {MAX_ALIASES} YAML aliases (an alias bomb?)")
        if isinstance(index, yaml.ScalarNode):
            self._path.append("." + quote_key(index.value))
        elif isinstance(index, int) and not isinstance(index, bool):
            self._path.append(f"[{index}]")
        else:
            self._path.append("")  # the document, or a mapping key being composed
        try:
            if len(self._path) > MAX_DEPTH:
                raise SpecError(f"{self._where()}: nested deeper than {MAX_DEPTH} levels")
            # types-PyYAML types index as int; PyYAML also passes the key node (see above)
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._path.pop()

    def compose_scalar_node(self, anchor: dict[Any, yaml.Node]) -> yaml.ScalarNode:
        node = super().compose_scalar_node(anchor)
        value = node.value
        if len(value) > MAX_SCALAR:
            raise SpecError(f"{self._where(node.start_mark)}: a value of {len(value)} characters "
                            f"(at most {MAX_SCALAR})")
        if _LONG_DIGITS.search(value):
            raise SpecError(f"{self._where(node.start_mark)}: a number of more than {MAX_DIGITS} digits")
        return node


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document with aliases expanded; shared nodes are counted once per use."""
    memo: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in memo:
            if isinstance(node, yaml.SequenceNode):
                memo[id(node)] = 1 + sum(size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                memo[id(node)] = 1 + sum(size(k) + size(v) for k, v in node.value)
            else:
                memo[id(node)] = 1
        return memo[id(node)]

    return size(root)  # recursion is bounded by MAX_DEPTH


def load_yaml(text: str, where: str) -> object:
    """One YAML document, bounded as the module docstring says; errors are one line naming ``where``."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader already rejects control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise SpecError(f"more than {MAX_NODES} values once YAML aliases are expanded (an alias bomb?)")
        return loader.construct_document(node)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc, 200)
        raise SpecError(f"{where}: invalid YAML{at}: {problem}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # int/float/timestamp overflow, last resorts
        raise SpecError(f"{where}: invalid YAML: {show_text(str(exc) or type(exc).__name__, 100)}") from None
    finally:
        if loader is not None:
            loader.dispose()
