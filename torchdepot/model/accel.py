"""Accelerators: the one vocabulary shared by wheels, conda builds, specs and drivers.

A PyTorch build targets exactly one accelerator: ``cpu``, CUDA ``cuXY[Z]``, ROCm
``rocmX.Y[.Z]`` or Intel ``xpu``. Upstream spells it many ways (``+cu118``,
``/whl/cu80/``, ``cuda11.8``, ``cuda118``); every spelling parses to one
:class:`Accelerator`, whose :attr:`~Accelerator.name` is the PyTorch index spelling.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from torchdepot.errors import ParseError

KINDS = ("cpu", "cuda", "rocm", "xpu")

# Flags are extra build properties that do not change the accelerator itself.
FLAG_CXX11_ABI = "cxx11-abi"
FLAG_PYPI_CUDNN = "pypi-cudnn"
FLAG_FULL = "full"
FLAG_PYPI_PKG = "pypi-pkg"


@dataclass(frozen=True, order=True)
class Accelerator:
    kind: str
    version: tuple[int, ...] = ()
    flags: frozenset[str] = field(default_factory=frozenset, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown accelerator kind {self.kind!r}")

    @property
    def name(self) -> str:
        """The PyTorch index spelling: ``cpu``, ``cu118``, ``rocm6.2.4``, ``xpu``."""
        if self.kind == "cuda":
            return "cu" + "".join(str(p) for p in self.version)
        if self.kind == "rocm":
            return "rocm" + ".".join(str(p) for p in self.version)
        return self.kind

    @property
    def cuda_version(self) -> str | None:
        """``"11.8"`` for cu118, else None."""
        if self.kind != "cuda":
            return None
        return ".".join(str(p) for p in self.version)

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def __str__(self) -> str:
        return self.name


CPU = Accelerator("cpu")
XPU = Accelerator("xpu")

_CU_RE = re.compile(r"cu(\d{2,3})")
# Version parts are bounded ({1,4} digits): a 5,000-digit "label" names no accelerator (int() would refuse it).
_ROCM_RE = re.compile(r"rocm(\d{1,4}(?:\.\d{1,4}){1,2})")


def _cuda_from_digits(digits: str) -> tuple[int, int]:
    # PyTorch spells CUDA X.Y as cu + X + Y with a one-digit minor: cu92, cu118, cu130.
    return int(digits[:-1]), int(digits[-1])


def parse_accelerator(text: str) -> Accelerator:
    """Parse a canonical accelerator name as used in specs and index dirs.

    Accepts ``cpu``, ``cu118``, ``rocm6.2``, ``xpu`` and the frozen legacy dir names
    ``cpu-cxx11-abi``, ``cpu_pypi_pkg``, ``cu121_full``, ``cu117_pypi_cudnn``.
    Raises :class:`ParseError` otherwise.
    """
    acc = accelerator_from_dir(text)
    if acc is None:
        raise ParseError(f"{text!r} is not an accelerator (cpu, cuXYZ, rocmX.Y, xpu)")
    return acc


@functools.lru_cache(maxsize=1024)  # pure and hot: every link's directories are tried
def accelerator_from_dir(segment: str) -> Accelerator | None:
    """Accelerator named by an index directory such as ``cu80`` or ``cpu-cxx11-abi``."""
    s = segment.strip().lower()
    flags: set[str] = set()
    for suffix, flag in (
        ("-cxx11-abi", FLAG_CXX11_ABI),
        ("_pypi_cudnn", FLAG_PYPI_CUDNN),
        ("_pypi_pkg", FLAG_PYPI_PKG),
        ("_full", FLAG_FULL),
    ):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
            flags.add(flag)
    return _canonical(s, frozenset(flags))


def _canonical(s: str, flags: frozenset[str]) -> Accelerator | None:
    """``cpu`` / ``xpu`` / ``cuXY[Z]`` / ``rocmX.Y[.Z]`` once suffixes and flags are stripped."""
    if s in ("cpu", "xpu"):
        return Accelerator(s, (), flags)
    if m := _CU_RE.fullmatch(s):
        return Accelerator("cuda", _cuda_from_digits(m.group(1)), flags)
    if m := _ROCM_RE.fullmatch(s):
        return Accelerator("rocm", tuple(int(p) for p in m.group(1).split(".")), flags)
    return None


_LABEL_CU_DOTTED = re.compile(r"cu\.(\d{1,4})\.(\d{1,4})(?:\..*)?")
_LABEL_CU_PREFIX = re.compile(r"cu(\d{2,3})(?:torch[\d.]+.*)?")


@functools.lru_cache(maxsize=1024)  # pure and hot: one call per labelled wheel
def accelerator_from_local(label: str) -> Accelerator | None:
    """Accelerator stated by a PEP 440 local label, or None when it states none.

    ``cpu``, ``cpu.cxx11.abi``, ``cu118``, ``cu117.with.pypi.cudnn``, ``rocm5.4.2``,
    ``xpu``, and third-party schemes ``cu.12.8.torch.2.11`` and ``cu128torch2.7``.
    A label such as a git hash (``e437e35``) states nothing.
    """
    s = label.lower()
    flags: set[str] = set()
    if s.endswith(".cxx11.abi"):
        flags.add(FLAG_CXX11_ABI)
        s = s[: -len(".cxx11.abi")]
    elif s.endswith(".with.pypi.cudnn"):
        flags.add(FLAG_PYPI_CUDNN)
        s = s[: -len(".with.pypi.cudnn")]
    if acc := _canonical(s, frozenset(flags)):
        return acc
    if m := _LABEL_CU_DOTTED.fullmatch(s):
        return Accelerator("cuda", (int(m.group(1)), int(m.group(2))), frozenset(flags))
    if m := _LABEL_CU_PREFIX.fullmatch(s):
        return Accelerator("cuda", _cuda_from_digits(m.group(1)), frozenset(flags))
    return None


# PEP 825 variant labels as PyTorch names them (/whl/variant/): cuda12.8, rocm7.1, xpu, null.
_VARIANT_CUDA = re.compile(r"cuda(\d{1,4})\.(\d{1,4})")
NULL_VARIANT = "null"  # PEP 825: the label of the build with no variant properties (PyTorch's CPU build)


@functools.lru_cache(maxsize=256)
def accelerator_from_variant_label(label: str) -> Accelerator | None:
    """``cuda12.8`` -> cu128, ``cuda13.0`` -> cu130, ``rocm7.1``, ``xpu``, ``null`` -> cpu;
    None for a label that names no accelerator."""
    s = label.lower()
    if s == NULL_VARIANT:
        return CPU
    if m := _VARIANT_CUDA.fullmatch(s):
        return Accelerator("cuda", (int(m.group(1)), int(m.group(2))))
    return _canonical(s, frozenset())


def variant_label(acc: Accelerator) -> str:
    """The PEP 825 label PyTorch gives a build: cu126 -> ``cuda12.6``, cpu -> ``null``,
    ``rocm7.1``, ``xpu`` (the inverse of :func:`accelerator_from_variant_label`)."""
    if acc.kind == "cuda":
        return f"cuda{acc.cuda_version}"
    if acc.kind == "cpu":
        return NULL_VARIANT
    return acc.name


def cuda_from_dotted(version: str) -> Accelerator:
    """``"11.8"`` or ``"10.1.243"`` -> cu118 / cu101 (patch levels dropped)."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() and len(p) <= 4 for p in parts[:2]):
        raise ParseError(f"{version!r} is not a CUDA version X.Y")
    return Accelerator("cuda", (int(parts[0]), int(parts[1])))


def accelerator_sort_key(acc: Accelerator) -> tuple[int, tuple[int, ...]]:
    """Newest GPU stacks first, cpu last (the order ``doctor`` lists them in)."""
    order = {"cuda": 0, "rocm": 1, "xpu": 2, "cpu": 3}
    return (order[acc.kind], tuple(-p for p in acc.version))
