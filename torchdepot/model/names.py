"""File names that are safe to store: no separators, no traversal, no control characters.

Pure: the host policy screens upstream links with it, and the store refuses to write
anything else.
"""

from __future__ import annotations

import re
import urllib.parse

from torchdepot.errors import UnsafePathError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-!~]*")


def safe_filename(name: str) -> str:
    """Accept a bare file name (no separators, no traversal, no control chars) or raise."""
    decoded = urllib.parse.unquote(name)
    if (
        not decoded
        or decoded in (".", "..")
        or "/" in decoded
        or "\\" in decoded
        or "\x00" in decoded
        or not _SAFE_NAME.fullmatch(decoded)
        or len(decoded) > 255
    ):
        raise UnsafePathError(f"unsafe file name {name!r}")
    return decoded
