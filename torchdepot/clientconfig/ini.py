"""A line-preserving INI editor for pip.conf / pip.ini.

configparser rewrites whole files (comments and layout lost), so edits are made on
lines: only the lines of the keys we set change; every other line -- comments,
blank lines, unrelated sections and keys, their order and spelling -- is kept byte
for byte. configparser is still used first, to refuse a malformed file.
"""

from __future__ import annotations

import configparser
import re

from torchdepot.clientconfig.common import ConfigFileError

_SECTION = re.compile(r"^\s*\[([^\]]+)\]")
_KEY = re.compile(r"^([^\s#;\[][^=:]*?)\s*[=:]")


def norm_key(key: str) -> str:
    # pip treats index_url and index-url alike (pip._internal.configuration._normalize_name)
    return key.strip().lower().replace("_", "-")


def validate(text: str, where: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser()
    try:
        cp.read_string(text, source=where)
    except configparser.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigFileError(f"{where}: malformed INI, left untouched ({first})") from None
    return cp


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _sections(lines: list[str]) -> list[tuple[str | None, int, int]]:
    """(name, first line after header, end) spans; name None for the preamble."""
    spans: list[tuple[str | None, int, int]] = []
    name, start = None, 0
    for i, ln in enumerate(lines):
        m = _SECTION.match(ln)
        if m:
            spans.append((name, start, i))
            name, start = m.group(1).strip(), i + 1
    spans.append((name, start, len(lines)))
    return spans


def _key_spans(lines: list[str], start: int, end: int) -> list[tuple[str, int, int]]:
    """(normalised key, first line, end) for each key, continuation lines included."""
    out = []
    i = start
    while i < end:
        m = _KEY.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < end and lines[j].strip() and lines[j][:1] in (" ", "\t"):
            j += 1
        out.append((norm_key(m.group(1)), i, j))
        i = j
    return out


def get(text: str, section: str, key: str) -> str | None:
    cp = validate(text, "<config>")
    for k, v in cp.items(section) if cp.has_section(section) else ():
        if norm_key(k) == norm_key(key):
            return v
    return None


def sections_with(text: str, key: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    return [
        name
        for name, s, e in _sections(lines)
        if name is not None and any(k == norm_key(key) for k, _, _ in _key_spans(lines, s, e))
    ]


def set_value(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = value`` in ``[section]``, replacing an existing key (any spelling)."""
    nl = _newline(text)
    lines = text.splitlines(keepends=True)
    for name, s, e in _sections(lines):
        if name != section:
            continue
        keys = [(k, a, b) for k, a, b in _key_spans(lines, s, e) if k == norm_key(key)]
        if keys:
            _, a, b = keys[-1]  # configparser keeps the last; so do we
            m = _KEY.match(lines[a])
            assert m is not None  # _key_spans starts each span on a line _KEY matches
            spelled = m.group(1)
            lines[a:b] = [f"{spelled} = {value}{nl}"]
            return "".join(lines)
        # insert after the section's last non-blank, non-comment line
        pos = s
        for i in range(s, e):
            if lines[i].strip() and not lines[i].lstrip().startswith(("#", ";")):
                pos = i + 1
        if pos > 0 and not lines[pos - 1].endswith(("\n", "\r")):
            lines[pos - 1] += nl
        lines[pos:pos] = [f"{key} = {value}{nl}"]
        return "".join(lines)
    out = text
    if out and not out.endswith(("\n", "\r")):
        out += nl
    if out.strip():
        out += nl
    return out + f"[{section}]{nl}{key} = {value}{nl}"
