"""Minimum NVIDIA driver per CUDA version (minor-version compatibility, NVIDIA release notes
Table 2, as tabled by uv's ``uv-torch`` backend and light-the-torch; see ../shared/data/compat.yaml).

Pure data + lookup; used by the landing page (and usable by ``doctor``).
"""

from __future__ import annotations

# (cuda major, minor) lower bound -> (linux min driver, windows min driver); first match wins.
_ROWS: tuple[tuple[tuple[int, int], str, str], ...] = (
    ((13, 0), "580", "580"),
    ((12, 0), "525.60.13", "528.33"),
    ((11, 1), "450.80.02", "452.39"),
    ((11, 0), "450.36.06", "451.22"),
    ((10, 2), "440.33", "441.22"),
    ((10, 1), "418.39", "418.96"),
    ((10, 0), "410.48", "411.31"),
    ((9, 2), "396.26", "398.26"),
    ((9, 1), "390.46", "391.29"),
    ((9, 0), "384.81", "385.54"),
    ((8, 0), "375.26", "376.51"),
)


def min_driver(cuda: str | tuple[int, ...], os: str = "linux") -> str | None:
    """``min_driver("11.8")`` -> ``"450.80.02"``; ``os="windows"`` for the Windows column.

    None for a CUDA version older than the table (or not a CUDA version).
    """
    if isinstance(cuda, str):
        try:
            parts = tuple(int(p) for p in cuda.split(".")[:2])
        except ValueError:
            return None
    else:
        parts = tuple(cuda[:2])
    if len(parts) < 2:
        return None
    for bound, linux, windows in _ROWS:
        if parts >= bound:
            return windows if os == "windows" else linux
    return None
