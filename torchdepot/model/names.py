"""File and package names that are safe to store: no separators, no traversal, no control characters.

Pure: the host policy screens upstream links with it, and the store refuses to write
anything else. Two rules, each once:

- :func:`safe_filename`: the pip side's conservative file-name rule (a wheel or index file).
- :func:`safe_path_name`: a name checked only as a path component (conda files: conda's
  names start with ``_`` — ``_libgcc_mutex`` — which the pip rule refuses), and
  :func:`conda_package_name` / :func:`conda_filename` for conda's own name grammar.

Every rule refuses ``/``, ``\\``, ``.``/``..``, control characters and names over
255 bytes.
"""

from __future__ import annotations

import re
import urllib.parse

from torchdepot.errors import UnsafePathError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-!~]*")
# conda's MatchSpec / conda-build rule: lowercase alphanumerics, "_", "-", "." (a leading "_" is valid)
_CONDA_NAME = re.compile(r"[a-z0-9_][a-z0-9_.\-]*")
_CONDA_FILE = re.compile(r"(?P<name>[^/\\]+)-(?P<version>[^-/\\]+)-(?P<build>[^-/\\]+)\.(?:conda|tar\.bz2)")
MAX_NAME_BYTES = 255  # one path component on every file system we publish to


def _control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def safe_path_name(name: str) -> str:
    """Accept a bare path component (decoded) or raise :class:`UnsafePathError`.

    Refused: empty, ``.``/``..``, a separator, a control character, over 255 UTF-8 bytes,
    a leading ``-`` (would read as an option) or surrounding whitespace."""
    decoded = urllib.parse.unquote(name)
    if (
        not decoded
        or decoded in (".", "..")
        or "/" in decoded
        or "\\" in decoded
        or _control(decoded)
        or decoded.startswith("-")
        or decoded != decoded.strip()
        or len(decoded.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        raise UnsafePathError(f"unsafe file name {name[:300]!r}")
    return decoded


def safe_filename(name: str) -> str:
    """Accept a bare file name under the pip rule (safe path, conservative characters) or raise."""
    decoded = safe_path_name(name)
    if not _SAFE_NAME.fullmatch(decoded):
        raise UnsafePathError(f"unsafe file name {name[:300]!r}")
    return decoded


def conda_package_name(name: str) -> str:
    """A conda package name (``_libgcc_mutex``, ``python_abi``, ``cuda-version``) or raise."""
    if not isinstance(name, str) or len(name) > MAX_NAME_BYTES or not _CONDA_NAME.fullmatch(name) \
            or name in (".", "..") or ".." in name:
        raise UnsafePathError(f"not a conda package name: {str(name)[:300]!r}")
    return name


def conda_filename(name: str) -> str:
    """A conda package file name (``<name>-<version>-<build>.conda|.tar.bz2``), safe as a path, or raise."""
    decoded = safe_path_name(name)
    m = _CONDA_FILE.fullmatch(decoded)
    if not m:
        raise UnsafePathError(f"not a conda package file name: {name[:300]!r}")
    conda_package_name(m.group("name"))
    return decoded
