"""Minimum NVIDIA driver a CUDA variant needs (NVIDIA minor-version compatibility table,
as tabled by uv's uv-torch backend and light-the-torch; ../shared/DOMAIN.md §4 and
../shared/data/compat.yaml; tests check it against compat.yaml). The one copy of the table:
``doctor`` reads it too. Pure data; written into each lock's ``variant.json``."""

from __future__ import annotations

from torchdepot.model.accel import Accelerator

# (cuda, linux minimum driver, windows minimum driver), newest first.
CUDA_DRIVER_MINIMUMS: tuple[tuple[str, str, str], ...] = (
    ("13.2", "580", "580"),
    ("13.0", "580", "580"),
    ("12.9", "525.60.13", "528.33"),
    ("12.8", "525.60.13", "528.33"),
    ("12.6", "525.60.13", "528.33"),
    ("12.5", "525.60.13", "528.33"),
    ("12.4", "525.60.13", "528.33"),
    ("12.3", "525.60.13", "528.33"),
    ("12.2", "525.60.13", "528.33"),
    ("12.1", "525.60.13", "528.33"),
    ("12.0", "525.60.13", "528.33"),
    ("11.8", "450.80.02", "452.39"),
    ("11.7", "450.80.02", "452.39"),
    ("11.6", "450.80.02", "452.39"),
    ("11.5", "450.80.02", "452.39"),
    ("11.4", "450.80.02", "452.39"),
    ("11.3", "450.80.02", "452.39"),
    ("11.2", "450.80.02", "452.39"),
    ("11.1", "450.80.02", "452.39"),
    ("11.0", "450.36.06", "451.22"),
    ("10.2", "440.33", "441.22"),
    ("10.1", "418.39", "418.96"),
    ("10.0", "410.48", "411.31"),
    ("9.2", "396.26", "398.26"),
    ("9.1", "390.46", "391.29"),
    ("9.0", "384.81", "385.54"),
    ("8.0", "375.26", "376.51"),
)


def _bands(table: tuple[tuple[str, str, str], ...]) -> tuple[tuple[tuple[int, int], str, str], ...]:
    """Runs of equal minimums, each keyed by its oldest CUDA: a CUDA version between (or
    newer than) tabled ones of a band takes the band's minimum."""
    out: list[tuple[tuple[int, int], str, str]] = []
    for cuda, linux, windows in table:  # newest first
        major, minor = (int(p) for p in cuda.split(".")[:2])
        if out and out[-1][1:] == (linux, windows):
            out[-1] = ((major, minor), linux, windows)  # extend the band down
        else:
            out.append(((major, minor), linux, windows))
    return tuple(out)


_BANDS = _bands(CUDA_DRIVER_MINIMUMS)


def min_nvidia_driver(acc: Accelerator, os_name: str = "linux") -> str | None:
    """``cu118`` -> ``"450.80.02"`` on linux; None for cpu/rocm/xpu or a CUDA older than the table."""
    if acc.kind != "cuda" or len(acc.version) < 2:
        return None
    key = tuple(acc.version[:2])
    for bound, linux, windows in _BANDS:
        if key >= bound:
            return windows if os_name == "windows" else linux
    return None


def min_driver(cuda: str | tuple[int, ...], os: str = "linux") -> str | None:
    """``min_driver("11.8")`` -> ``"450.80.02"``; a CUDA version as text or tuple; None if unknown."""
    try:
        parts = tuple(int(p) for p in (cuda.split(".") if isinstance(cuda, str) else cuda)[:2])
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    return min_nvidia_driver(Accelerator("cuda", parts), os)
