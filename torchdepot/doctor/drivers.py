"""NVIDIA driver version -> the CUDA versions it can run (CUDA minor-version compatibility).

The table (``torchdepot.model.cuda.CUDA_DRIVER_MINIMUMS``) is NVIDIA's release-notes
Table 2 as used by uv and light-the-torch. Pure: no I/O.
"""

from __future__ import annotations

import re

from torchdepot.model.cuda import CUDA_DRIVER_MINIMUMS
from torchdepot.errors import ParseError

_DRIVER = re.compile(r"\d+(?:\.\d+){0,3}")


def parse_driver(text: str) -> tuple[int, ...]:
    """``"535.104.05"`` -> (535, 104, 5). Raises ParseError for anything else."""
    t = (text or "").strip()
    if not _DRIVER.fullmatch(t):
        raise ParseError(f"{text!r} is not an NVIDIA driver version")
    return tuple(int(p) for p in t.split("."))


def _cuda_key(cuda: str) -> tuple[int, ...]:
    return tuple(int(p) for p in cuda.split("."))


def min_driver(cuda: str, os: str = "linux") -> str | None:
    """Minimum driver for CUDA ``X.Y`` on ``os`` (linux/windows), or None if not tabled."""
    key = _cuda_key(cuda)[:2]
    for c, linux, windows in CUDA_DRIVER_MINIMUMS:
        if _cuda_key(c) == key:
            return windows if os == "windows" else linux
    return None


def supports(driver: str, cuda: str, os: str = "linux") -> bool:
    """Can ``driver`` run CUDA ``X.Y`` builds? Unknown CUDA versions: only if an older
    tabled version of the same major is supported and a newer one of that major is too
    (i.e. it lies inside a supported band)."""
    need = min_driver(cuda, os)
    have = parse_driver(driver)
    if need is not None:
        return have >= parse_driver(need)
    key = _cuda_key(cuda)[:2]
    older = [c for c, *_ in CUDA_DRIVER_MINIMUMS if _cuda_key(c) < key and _cuda_key(c)[0] == key[0]]
    newer = [c for c, *_ in CUDA_DRIVER_MINIMUMS if _cuda_key(c) > key and _cuda_key(c)[0] == key[0]]
    return bool(older and newer) and supports(driver, newer[-1], os)


def max_cuda(driver: str | None, os: str = "linux") -> str | None:
    """Newest tabled CUDA version ``driver`` can run (``"12.9"``), or None."""
    if not driver:
        return None
    for cuda, *_ in CUDA_DRIVER_MINIMUMS:
        if supports(driver, cuda, os):
            return cuda
    return None
