"""Pure selection: which accelerators a machine can run, which one to use, and which of a
mirror's accelerators fits best. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from torchdepot.model.accel import Accelerator, accelerator_from_dir, accelerator_sort_key
from torchdepot.doctor.detect import Machine
from torchdepot.doctor.drivers import max_cuda, supports

# The accelerators PyTorch's index knows (uv's list of index URLs; compat.yaml
# uv_known_pytorch_indexes), used when no mirror is given.
KNOWN_ACCELERATORS = (
    "cu132 cu130 cu129 cu128 cu126 cu125 cu124 cu123 cu122 cu121 cu120 cu118 cu117 cu116 cu115 cu114 "
    "cu113 cu112 cu111 cu110 cu102 cu101 cu100 cu92 cu91 cu90 cu80 rocm7.2 rocm7.1 rocm7.0 rocm6.4 "
    "rocm6.3 rocm6.2.4 rocm6.2 rocm6.1 rocm6.0 rocm5.7 rocm5.6 rocm5.5 rocm5.4.2 rocm5.4 rocm5.3 "
    "rocm5.2 rocm5.1.1 rocm4.2 rocm4.1 rocm4.0.1 xpu cpu"
).split()

# ROCm builds per AMD architecture (uv's LINUX_AMD_GPU_DRIVERS; compat.yaml rocm_gpu_architectures).
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


def _accs(names) -> list[Accelerator]:
    out = {}
    for n in names:
        a = accelerator_from_dir(n)
        if a is not None and not a.flags:
            out[a.name] = a
    return list(out.values())


def _rocm_ok(acc: Accelerator, gfx: tuple[str, ...]) -> bool:
    table = ROCM_GFX.get(acc.name)
    if table is None:  # ROCm releases older than the table: no architecture data, allow
        return acc.version < (6, 0)
    return all(g in table for g in gfx)


def compatible(machine: Machine, candidates=KNOWN_ACCELERATORS) -> list[str]:
    """Accelerators this machine can run, newest GPU stack first, ``cpu`` last.

    macOS builds carry no accelerator label (MPS is in the default build): only cpu."""
    accs = _accs(candidates)
    out: list[Accelerator] = []
    for a in accs:
        if a.kind == "cuda":
            if machine.driver and machine.os in ("linux", "windows") and supports(machine.driver, a.cuda_version, machine.os):
                out.append(a)
        elif a.kind == "rocm":
            if machine.amd_gfx and machine.os == "linux" and _rocm_ok(a, machine.amd_gfx):
                out.append(a)
        elif a.kind == "xpu":
            if machine.intel and machine.os in ("linux", "windows"):
                out.append(a)
    out.sort(key=accelerator_sort_key)
    return [a.name for a in out] + ["cpu"]


def recommended(compat: list[str]) -> str:
    """The first (newest) compatible accelerator; ``cpu`` when nothing else fits."""
    return compat[0] if compat else "cpu"


@dataclass(frozen=True)
class MirrorChoice:
    accelerator: str
    version: str | None  # torch public version to pin, if known
    index_url: str  # <mirror>/whl/<acc>

    @property
    def command(self) -> str:
        pin = f"torch=={self.version}" if self.version else "torch"
        return f"pip install --index-url {self.index_url} {pin}"


def choose_mirrored(compat: list[str], mirrored: list[str]) -> str | None:
    """The best of the mirror's accelerators for this machine (order of ``compat``)."""
    have = set(mirrored)
    for acc in compat:
        if acc in have:
            return acc
    return None


def summary(machine: Machine, candidates=KNOWN_ACCELERATORS) -> dict:
    """The ``doctor --json`` object (without the mirror part)."""
    compat = compatible(machine, candidates)
    d = machine.to_json()
    d["max_cuda"] = max_cuda(machine.driver, machine.os) if machine.os in ("linux", "windows") else None
    d["compatible"] = compat
    d["recommended"] = recommended(compat)
    return d
