"""A line-preserving INI editor for pip.conf / pip.ini.

configparser rewrites whole files (comments and layout lost), so edits are made on
lines: only the lines of the keys we set change; every other line -- comments,
blank lines, unrelated sections and keys, their order and spelling -- is kept byte
for byte. configparser is still used first, to refuse a malformed file, and the lines are read
by configparser's own rules (:func:`_layout`): a header's name is not stripped, and an
indented line under a key is part of its value, whatever it looks like.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field

from torchdepot.clientconfig.common import ConfigFileError
from torchdepot.errors import one_line

# configparser's own patterns (RawConfigParser.SECTCRE / OPTCRE), applied to the stripped line
# as it does: the header is everything between the first "[" and the last "]", NOT stripped --
# ``[ global ]`` is a section named " global ", which pip does not read as [global].
_SECTION = re.compile(r"\[(?P<header>.+)\]")
_OPTION = re.compile(r"(?P<option>.*?)\s*[=:]\s*(?P<value>.*)$")
_COMMENT_PREFIXES = ("#", ";")


def norm_key(key: str) -> str:
    # pip treats index_url and index-url alike (pip._internal.configuration._normalize_name)
    return key.strip().lower().replace("_", "-")


def validate(text: str, where: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    try:
        cp.read_string(text, source=where)
    except configparser.Error as exc:
        first = one_line(exc)
        raise ConfigFileError(f"{where}: malformed INI, left untouched ({first})") from None
    return cp


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


@dataclass(frozen=True)
class _Option:
    key: str  # normalised (norm_key)
    first: int  # the ``key = value`` line
    end: int  # one past its last continuation line


@dataclass
class _Section:
    name: str | None  # None: the lines before the first header
    header: int  # the header's line (-1 for the preamble)
    options: list[_Option] = field(default_factory=list)


def _layout(lines: list[str]) -> list[_Section]:
    """Sections and their options, line by line as ``RawConfigParser._read`` sees them: a
    non-blank, non-comment line indented deeper than the current option's line continues its
    value (even one that looks like ``[global]``); blank lines and comment lines inside a value
    do not end it; otherwise a line is a section header or an option."""
    sections = [_Section(None, -1)]
    opt: tuple[str, int, int] | None = None  # key, first line, indent of the key line
    last = -1  # the option's last value line
    for i, line in enumerate(lines):
        value = line.strip()
        if not value or value.startswith(_COMMENT_PREFIXES):
            continue
        indent = len(line) - len(line.lstrip())
        if opt is not None and indent > opt[2]:
            last = i
            continue
        if opt is not None:
            sections[-1].options.append(_Option(opt[0], opt[1], last + 1))
            opt = None
        if m := _SECTION.match(value):
            sections.append(_Section(m.group("header"), i))
        elif m := _OPTION.match(value):
            opt, last = (norm_key(m.group("option")), i, indent), i
    if opt is not None:
        sections[-1].options.append(_Option(opt[0], opt[1], last + 1))
    return sections


def _lead_of_next(lines: list[str], start: int) -> str:
    """The leading whitespace of the first line from ``start`` that configparser reads
    (not blank, not a comment); "" when there is none."""
    for line in lines[start:]:
        value = line.strip()
        if value and not value.startswith(_COMMENT_PREFIXES):
            return line[: len(line) - len(line.lstrip())]
    return ""


def _indent_of_next(lines: list[str], start: int) -> int:
    return len(_lead_of_next(lines, start))


def _end_of(sections: list[_Section], index: int, total: int) -> int:
    """One past the last line of ``sections[index]`` (the next header, or the end)."""
    return sections[index + 1].header if index + 1 < len(sections) else total


def get(text: str, section: str, key: str) -> str | None:
    cp = validate(text, "<config>")
    for k, v in cp.items(section) if cp.has_section(section) else ():
        if norm_key(k) == norm_key(key):
            return v
    return None


def sections_with(text: str, key: str) -> list[str]:
    return [sec.name for sec in _layout(text.splitlines(keepends=True))
            if sec.name is not None and any(o.key == norm_key(key) for o in sec.options)]


def set_value(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = value`` in ``[section]``, replacing an existing key (any spelling)."""
    nl = _newline(text)
    lines = text.splitlines(keepends=True)
    layout = _layout(lines)
    for n, sec in enumerate(layout):
        if sec.name != section:
            continue
        keys = [o for o in sec.options if o.key == norm_key(key)]
        if keys:
            o = keys[-1]  # configparser keeps the last; so do we
            line = lines[o.first]
            lead = line[: len(line) - len(line.lstrip())]
            spelled = _OPTION.match(line.strip()).group("option")  # type: ignore[union-attr]
            lines[o.first:o.end] = [f"{lead}{spelled} = {value}{nl}"]
            return "".join(lines)
        # After the section's last option (continuation lines included), unindented -- unless
        # the next line that counts is indented: it would then continue OUR value. Then right
        # after the header, indented like that next line (no option is open there).
        pos = sec.options[-1].end if sec.options else sec.header + 1
        pos = min(pos, _end_of(layout, n, len(lines)))
        lead = ""
        if _indent_of_next(lines, pos):
            pos = sec.header + 1
            lead = _lead_of_next(lines, pos)
        if pos > 0 and not lines[pos - 1].endswith(("\n", "\r")):
            lines[pos - 1] += nl
        lines[pos:pos] = [f"{lead}{key} = {value}{nl}"]
        return "".join(lines)
    out = text
    if out and not out.endswith(("\n", "\r")):
        out += nl
    if out.strip():
        out += nl
    return out + f"[{section}]{nl}{key} = {value}{nl}"
