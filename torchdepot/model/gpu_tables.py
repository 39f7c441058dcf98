"""GPU toolkit tables, the one copy: which NVIDIA driver a CUDA variant needs, which GPU
architectures each PyTorch release build carries, and the ROCm gfx table (which AMD GPUs
ROCm builds run on).

Driver table: NVIDIA's minor-version compatibility table (CUDA release notes, Table 2) as
tabled by uv's uv-torch backend and light-the-torch (../shared/DOMAIN.md §4,
../shared/data/compat.yaml; tests check it against compat.yaml). A CUDA version takes the
minimum of the newest tabled version at or below it *of the same major* (12.7 -> 12.6's);
a major newer than the table (14.0) is unknown (None), never guessed.

Architecture table: torch minor release x variant x platform -> the release wheel's
``TORCH_CUDA_ARCH_LIST`` (what ``torch.cuda.get_arch_list()`` reports), with a confidence
and the source of each row; docs/gpu-architectures.md prints it with the sources. A GPU of
compute capability M.m runs a build that has SASS ``sm_Mn`` with n <= m (binary
compatibility holds only within a major) or PTX ``compute_XY`` with XY <= M.m (JIT) — the
rule torch's own ``_check_capability`` applies.

Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from torchdepot.errors import ParseError
from torchdepot.model.accel import Accelerator

# --- NVIDIA driver minimums ------------------------------------------------------------
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

OsName = Literal["linux", "windows"]
_DRIVER = re.compile(r"\d+(?:\.\d+){0,3}")


def parse_driver(text: str) -> tuple[int, ...]:
    """``"535.104.05"`` -> (535, 104, 5). Raises ParseError for anything else."""
    t = (text or "").strip()
    if not _DRIVER.fullmatch(t):
        raise ParseError(f"{text!r} is not an NVIDIA driver version")
    return tuple(int(p) for p in t.split("."))


def _cuda_key(cuda: str) -> tuple[int, int]:
    major, minor = (int(p) for p in cuda.split(".")[:2])
    return major, minor


def min_nvidia_driver(acc: Accelerator, os_name: str = "linux") -> str | None:
    """``cu118`` -> ``"450.80.02"`` on linux; None for cpu/rocm/xpu or an untabled CUDA major."""
    if acc.kind != "cuda" or len(acc.version) < 2:
        return None
    key = tuple(acc.version[:2])
    for cuda, linux, windows in CUDA_DRIVER_MINIMUMS:  # newest first: the first at or below wins
        tabled = _cuda_key(cuda)
        if tabled[0] == key[0] and tabled <= key:
            return windows if os_name == "windows" else linux
    return None


def min_driver(cuda: str | tuple[int, ...], os: str = "linux") -> str | None:
    """``min_driver("11.8")`` -> ``"450.80.02"``: :func:`min_nvidia_driver` for a CUDA
    version given as text or tuple; None if unknown or not a version."""
    try:
        parts = tuple(int(p) for p in (cuda.split(".") if isinstance(cuda, str) else cuda)[:2])
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    return min_nvidia_driver(Accelerator("cuda", parts), os)


def driver_supports(driver: str, cuda: str, os: str = "linux") -> bool:
    """Can NVIDIA ``driver`` run CUDA ``X.Y`` builds? False when the CUDA version is unknown."""
    need = min_driver(cuda, os)
    return need is not None and parse_driver(driver) >= parse_driver(need)


def max_cuda(driver: str | None, os: str = "linux") -> str | None:
    """Newest tabled CUDA version ``driver`` can run (``"12.9"``), or None."""
    if not driver:
        return None
    for cuda, *_ in CUDA_DRIVER_MINIMUMS:
        if driver_supports(driver, cuda, os):
            return cuda
    return None


# --- GPU architectures per release build -----------------------------------------------
Platform = Literal["linux-x86_64", "linux-aarch64", "windows-amd64"]
Confidence = Literal["H", "M", "L"]  # H: release-branch script or measured get_arch_list(); M: main + PR evidence; L: inferred
Coverage = Literal["yes", "no", "unknown"]
Cap = tuple[int, int]

# Sources, cited by key in the rows (docs/gpu-architectures.md expands them).
ARCH_SOURCES: dict[str, str] = {
    "builder": "pytorch/builder manywheel/build_cuda.sh and windows/cuda*.bat on branches release/2.0 .. release/2.5",
    "ci": "pytorch/pytorch .ci/manywheel/build_cuda.sh (scripts moved from builder, builder#2017) on the release branch",
    "ci-table": "pytorch/pytorch .ci/manywheel/build_env_setup.py TORCH_CUDA_ARCH_LIST_TABLE (2.13+) and RELEASE.md",
    "win-bat": "pytorch/pytorch .ci/pytorch/windows/cuda*.bat, later internal/cuda_config.bat",
    "pr146265": "pytorch/pytorch PRs #146265, #147607 (cu128 drops 5.0/6.0/7.0), #148000 (cu126 without +PTX)",
    "i157517": "pytorch/pytorch issue #157517 and PR #158700 (Maxwell/Pascal removed from 12.8+; use cu126)",
    "pr172598": "pytorch/pytorch PR #172598 (exclude Volta from 12.8/12.9), RFC #172352",
    "i182250": "pytorch/pytorch issue #182250: measured get_arch_list() of 2.10.0+cu128, 2.11.0+cu126, 2.11.0+cu128",
    "i95648": "pytorch/pytorch issue #95648: measured 2.0-era cu118 list sm_37 .. sm_90",
    "pr175567": "pytorch/pytorch PR #175567 ([release-only] remove +PTX from CUDA 13.0), #188914/#188925",
    "aarch64": "pytorch/pytorch PRs #162364, #163764 (aarch64 lists), build_env_setup.py table",
    "uv14742": "astral-sh/uv issue #14742: measured stable cu128 list sm_75 .. sm_120 compute_120",
}

# (torch minors "first[-last]", variant, platform, TORCH_CUDA_ARCH_LIST, confidence, sources)
# From ../shared/data/cuda_arch.md (researched per row); rows marked L are best effort.
_ARCH_ROWS: tuple[tuple[str, str, Platform, str, Confidence, str], ...] = (
    # Linux x86_64 (manywheel)
    ("2.0", "cu117", "linux-x86_64", "3.7;5.0;6.0;7.0;7.5;8.0;8.6", "M", "builder"),
    ("2.0-2.3", "cu118", "linux-x86_64", "3.7;5.0;6.0;7.0;7.5;8.0;8.6;9.0", "M", "builder i95648"),
    ("2.1-2.3", "cu121", "linux-x86_64", "5.0;6.0;7.0;7.5;8.0;8.6;9.0", "M", "builder"),
    ("2.4-2.5", "cu118", "linux-x86_64", "3.7;5.0;6.0;7.0;7.5;8.0;8.6;9.0", "H", "builder"),
    ("2.4-2.5", "cu121", "linux-x86_64", "5.0;6.0;7.0;7.5;8.0;8.6;9.0", "H", "builder"),
    ("2.4-2.6", "cu124", "linux-x86_64", "5.0;6.0;7.0;7.5;8.0;8.6;9.0", "H", "builder ci"),
    ("2.6-2.7", "cu118", "linux-x86_64", "3.7;5.0;6.0;7.0;7.5;8.0;8.6;9.0", "M", "ci"),
    ("2.6-2.14", "cu126", "linux-x86_64", "5.0;6.0;7.0;7.5;8.0;8.6;9.0", "H", "ci pr146265 i182250 ci-table"),
    ("2.7", "cu128", "linux-x86_64", "7.5;8.0;8.6;9.0;10.0;12.0+PTX", "H", "pr146265 uv14742"),
    ("2.8-2.10", "cu128", "linux-x86_64", "7.0;7.5;8.0;8.6;9.0;10.0;12.0", "H", "ci i157517 i182250"),
    ("2.8-2.10", "cu129", "linux-x86_64", "7.0;7.5;8.0;8.6;9.0;10.0;12.0", "L", "ci"),
    ("2.9-2.10", "cu130", "linux-x86_64", "7.5;8.0;8.6;9.0;10.0;12.0", "M", "ci"),
    ("2.11", "cu128", "linux-x86_64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "pr172598 i182250"),
    ("2.11-2.14", "cu130", "linux-x86_64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "pr175567 ci-table"),
    ("2.12-2.14", "cu132", "linux-x86_64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "ci-table"),
    # Windows x64: never +PTX except cu118's 3.7
    ("2.0-2.7", "cu118", "windows-amd64", "3.7+PTX;5.0;6.0;6.1;7.0;7.5;8.0;8.6;9.0", "M", "builder win-bat"),
    ("2.1-2.5", "cu121", "windows-amd64", "5.0;6.0;6.1;7.0;7.5;8.0;8.6;9.0", "M", "builder"),
    ("2.4-2.6", "cu124", "windows-amd64", "5.0;6.0;6.1;7.0;7.5;8.0;8.6;9.0", "H", "builder win-bat"),
    ("2.6-2.14", "cu126", "windows-amd64", "5.0;6.0;6.1;7.0;7.5;8.0;8.6;9.0", "H", "win-bat"),
    ("2.7", "cu128", "windows-amd64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "win-bat"),
    ("2.8-2.10", "cu128", "windows-amd64", "7.0;7.5;8.0;8.6;9.0;10.0;12.0", "L", "win-bat"),
    ("2.11", "cu128", "windows-amd64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "win-bat"),
    ("2.9-2.14", "cu130", "windows-amd64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "win-bat ci-table"),
    ("2.12-2.14", "cu132", "windows-amd64", "7.5;8.0;8.6;9.0;10.0;12.0", "H", "win-bat ci-table"),
    # Linux aarch64 (SBSA: GH200, GB200, Thor); lists before 2.9 are unreliable (CMake defaults)
    ("2.9-2.14", "cu126", "linux-aarch64", "8.0;9.0", "H", "aarch64"),
    ("2.9-2.11", "cu128", "linux-aarch64", "8.0;9.0;10.0;12.0", "M", "aarch64"),
    ("2.9-2.14", "cu130", "linux-aarch64", "8.0;9.0;10.0;11.0;12.0", "H", "aarch64 ci-table"),
    ("2.12-2.14", "cu132", "linux-aarch64", "8.0;9.0;10.0;11.0;12.0", "H", "ci-table"),
)


@dataclass(frozen=True)
class ArchBuild:
    """The GPU architectures one release build (torch minor x variant x platform) carries."""

    torch: tuple[int, int]
    variant: str
    platform: Platform
    sass: tuple[Cap, ...]
    ptx: tuple[Cap, ...]
    confidence: Confidence
    sources: tuple[str, ...]

    @property
    def arch_list(self) -> tuple[str, ...]:
        """As ``torch.cuda.get_arch_list()`` prints it: ``sm_75 ... sm_120 compute_120``."""
        return tuple(f"sm_{a}{b}" for a, b in self.sass) + tuple(f"compute_{a}{b}" for a, b in self.ptx)

    def covers(self, cap: Cap) -> bool:
        """Does this build carry kernels a GPU of compute capability ``cap`` can run?"""
        return any(s[0] == cap[0] and s[1] <= cap[1] for s in self.sass) or any(p <= cap for p in self.ptx)


def parse_compute_cap(text: str) -> Cap:
    """``"8.6"`` -> (8, 6). Raises ParseError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,2})\.(\d)\s*", text or "")
    if not m:
        raise ParseError(f"{text!r} is not a compute capability (like 8.6)")
    return int(m.group(1)), int(m.group(2))


def parse_arch_list(text: str) -> tuple[tuple[Cap, ...], tuple[Cap, ...]]:
    """``TORCH_CUDA_ARCH_LIST`` (``"7.5;8.0;12.0+PTX"``) -> (sass caps, ptx caps)."""
    sass: list[Cap] = []
    ptx: list[Cap] = []
    for item in text.replace(" ", ";").split(";"):
        if not item:
            continue
        cap = parse_compute_cap(item.removesuffix("+PTX"))
        sass.append(cap)
        if item.endswith("+PTX"):
            ptx.append(cap)
    return tuple(sass), tuple(ptx)


_ARCH_NAME = re.compile(r"(sm|compute)_(\d+)(\d)[a-z]?")


def arch_list_covers(names: list[str] | tuple[str, ...], cap: Cap) -> bool:
    """Does ``torch.cuda.get_arch_list()`` output (``["sm_75", ..., "compute_120"]``)
    carry kernels for compute capability ``cap``? Unparseable names are ignored."""
    sass: list[Cap] = []
    ptx: list[Cap] = []
    for n in names:
        if m := _ARCH_NAME.fullmatch(n.strip()):
            (sass if m.group(1) == "sm" else ptx).append((int(m.group(2)), int(m.group(3))))
    return ArchBuild(torch=(0, 0), variant="", platform="linux-x86_64", sass=tuple(sass), ptx=tuple(ptx),
                     confidence="H", sources=()).covers(cap)


def _minor(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _expand(rows: Iterable[tuple[str, str, Platform, str, Confidence, str]]) -> dict[tuple[tuple[int, int], str, str], ArchBuild]:
    out: dict[tuple[tuple[int, int], str, str], ArchBuild] = {}
    for span, variant, platform, arches, confidence, sources in rows:
        first, _, last = span.partition("-")
        lo, hi = _minor(first), _minor(last or first)
        sass, ptx = parse_arch_list(arches)
        for minor in range(lo[1], hi[1] + 1):
            key = ((lo[0], minor), variant, platform)
            if key in out:
                raise ValueError(f"architecture table: duplicate row {key}")  # caught by the tests
            out[key] = ArchBuild(torch=(lo[0], minor), variant=variant, platform=platform, sass=sass, ptx=ptx,
                                 confidence=confidence, sources=tuple(sources.split()))
    return out


ARCH_TABLE: dict[tuple[tuple[int, int], str, str], ArchBuild] = _expand(_ARCH_ROWS)
# "Current" = the variants of the newest few tabled releases; older ones are shown only
# when a mirror holds them or nothing current fits.
CURRENT_RELEASES = 3


def torch_minor(version: str) -> tuple[int, int] | None:
    """``"2.11.0+cu128"`` -> (2, 11); None when not a version."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def arch_build(torch_version: str | tuple[int, int], variant: str, platform: str) -> ArchBuild | None:
    """The tabled build, or None when that torch x variant x platform is not tabled."""
    minor = torch_minor(torch_version) if isinstance(torch_version, str) else torch_version
    return ARCH_TABLE.get((minor, variant, platform)) if minor else None


def newest_build(variant: str, platform: str) -> ArchBuild | None:
    """The newest tabled release build of ``variant`` on ``platform``."""
    builds = [b for (minor, v, p), b in ARCH_TABLE.items() if v == variant and p == platform]
    return max(builds, key=lambda b: b.torch) if builds else None


def newest_covering_build(variant: str, platform: str, caps: tuple[Cap, ...]) -> ArchBuild | None:
    """The newest tabled release of ``variant`` whose build runs on every GPU in ``caps``."""
    builds = [b for (minor, v, p), b in ARCH_TABLE.items()
              if v == variant and p == platform and all(b.covers(c) for c in caps)]
    return max(builds, key=lambda b: b.torch) if builds else None


def current_cuda_variants(platform: str) -> tuple[str, ...]:
    """CUDA variants built by the newest :data:`CURRENT_RELEASES` tabled torch releases."""
    minors = sorted({k[0] for k in ARCH_TABLE if k[2] == platform})[-CURRENT_RELEASES:]
    return tuple(sorted({k[1] for k in ARCH_TABLE if k[2] == platform and k[0] in minors}))


def tabled_cuda_variants(platform: str) -> tuple[str, ...]:
    return tuple(sorted({k[1] for k in ARCH_TABLE if k[2] == platform}))


def coverage(build: ArchBuild | None, caps: tuple[Cap, ...]) -> Coverage:
    """``yes`` when the build runs on every GPU, ``no`` when not, ``unknown`` when the build
    or a GPU's compute capability is not known."""
    if build is None or not caps:
        return "unknown"
    return "yes" if all(build.covers(c) for c in caps) else "no"


# --- AMD: ROCm builds per gfx architecture ---------------------------------------------
# uv's LINUX_AMD_GPU_DRIVERS ("inferred by running torch.cuda.get_arch_list() for each ROCm
# version"); compat.yaml rocm_gpu_architectures.
_ROCM_COMMON = {"gfx900", "gfx906", "gfx908", "gfx90a", "gfx1030"}
ROCM_GFX: dict[str, frozenset[str]] = {
    "rocm7.2": frozenset(_ROCM_COMMON | {"gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201"}),
    "rocm7.1": frozenset(_ROCM_COMMON | {"gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"}),
    "rocm7.0": frozenset(_ROCM_COMMON | {"gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"}),
    "rocm6.4": frozenset(_ROCM_COMMON | {"gfx942", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"}),
    "rocm6.3": frozenset(_ROCM_COMMON | {"gfx942", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"}),
    "rocm6.2.4": frozenset(_ROCM_COMMON | {"gfx942", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"}),
    "rocm6.2": frozenset(_ROCM_COMMON | {"gfx1100", "gfx942"}),
    "rocm6.1": frozenset(_ROCM_COMMON | {"gfx942", "gfx1100", "gfx1101"}),
    "rocm6.0": frozenset(_ROCM_COMMON | {"gfx1100", "gfx942"}),
}
# ROCm variants of the newest releases (test-infra release matrix, compat.md: 2.11-2.13 ship 7.1/7.2).
CURRENT_ROCM = ("rocm7.2", "rocm7.1")


def rocm_coverage(variant: str, gfx: tuple[str, ...]) -> Coverage:
    table = ROCM_GFX.get(variant)
    if table is None or not gfx:
        return "unknown"
    return "yes" if all(g in table for g in gfx) else "no"

