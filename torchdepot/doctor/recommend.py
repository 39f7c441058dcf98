"""Pure selection: which PyTorch builds a machine can run, which one to use, and which of a
mirror's builds fits best. No I/O.

A CUDA build fits when the NVIDIA driver can run its CUDA version AND its compiled
architectures include every NVIDIA GPU's compute capability (model.gpu_tables's tables): a
GTX 1080 (6.1) on driver 580 gets cu126, never cu130/cu132, whose builds start at sm_75.
Without a mirror only *current* variants are considered (those of the newest tabled
releases); an older variant is offered only when nothing current fits the GPU. A build
whose architectures are not tabled (a torch newer than the table) ranks after every known
fit, with a warning to check ``torch.cuda.get_arch_list()``. A machine with a GPU that
ends on ``cpu`` gets a warning saying why the GPU will sit idle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torchdepot.doctor.detect import Gpu, Machine
from torchdepot.errors import ParseError
from torchdepot.model.accel import (
    Accelerator,
    accelerator_from_dir,
    accelerator_sort_key,
    parse_accelerator,
)
from torchdepot.model.gpu_tables import (
    CURRENT_ROCM,
    ArchBuild,
    Cap,
    Coverage,
    arch_build,
    coverage,
    current_cuda_variants,
    driver_supports,
    max_cuda,
    min_nvidia_driver,
    newest_build,
    newest_covering_build,
    parse_compute_cap,
    rocm_coverage,
    tabled_cuda_variants,
)
from torchdepot.model.trust import install_commands
from torchdepot.model.wheelname import version_sort_key

# Compute capability by GPU model, for drivers whose nvidia-smi cannot report it (< 510) and
# for GPUs named only in /proc. NVIDIA's "CUDA GPUs" list (developer.nvidia.com/cuda-gpus).
# Longest names first where one is a prefix of another (A100 before A10).
_CAP_BY_NAME: tuple[tuple[str, str], ...] = (
    (r"\bGB?200\b|\bB200\b|\bB100\b", "10.0"),
    (r"\bGH200\b|\bH100\b|\bH200\b|\bH800\b|\bH20\b", "9.0"),
    (r"\bL40S?\b|\bL4\b|\bRTX 40\d0\b|\bRTX 6000 Ada\b", "8.9"),
    (r"\bA100\b|\bA800\b|\bA30\b", "8.0"),
    (r"\bA10G?\b|\bA40\b|\bRTX A\d{4}\b|\bRTX 30\d0\b|\bA2\b", "8.6"),
    (r"\bRTX 50\d0\b|\bRTX PRO 6000\b", "12.0"),
    (r"\bT4\b|\bRTX 20\d0\b|\bGTX 16\d0\b|\bQuadro RTX \d{4}\b|TITAN RTX", "7.5"),
    (r"\bV100\b|TITAN V\b", "7.0"),
    (r"\bP100\b", "6.0"),
    (r"\bP40\b|\bP4\b|\bGTX 10\d0\b|TITAN Xp|TITAN X \(Pascal\)", "6.1"),
    (r"\bK80\b", "3.7"),
    (r"\bK40m?\b|\bK20[mXc]?\b", "3.5"),
)


def gpu_cap(gpu: Gpu) -> tuple[Cap | None, str | None]:
    """(compute capability, "nvidia-smi" | "name") of an NVIDIA GPU; (None, None) if unknown."""
    if gpu.compute_cap:
        try:
            return parse_compute_cap(gpu.compute_cap), "nvidia-smi"
        except ParseError:
            pass
    for pattern, cap in _CAP_BY_NAME:
        if re.search(pattern, gpu.name, re.I):
            return parse_compute_cap(cap), "name"
    return None, None


def nvidia_caps(machine: Machine) -> tuple[Cap, ...] | None:
    """Every NVIDIA GPU's compute capability (deduplicated); None when any one is unknown."""
    caps = []
    for g in machine.gpus:
        if g.vendor == "nvidia":
            cap, _ = gpu_cap(g)
            if cap is None:
                return None
            caps.append(cap)
    return tuple(dict.fromkeys(caps))


def machine_platform(machine: Machine) -> str | None:
    """The arch table's platform key: linux-x86_64, linux-aarch64, windows-amd64; None (macOS...)."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.arch, machine.arch)
    if machine.os == "linux" and arch in ("x86_64", "aarch64"):
        return f"linux-{arch}"
    if machine.os == "windows" and arch == "x86_64":
        return "windows-amd64"
    return None


@dataclass(frozen=True)
class Fit:
    """One candidate build judged for this machine."""

    accelerator: str
    torch: str | None  # the torch version judged (a mirror's version, or the tabled minor "2.14")
    fits: Coverage  # yes / no / unknown (architectures not tabled, or GPU capability unknown)
    reason: str | None = None  # why not, or why unknown
    no_device: bool = False  # "no" only because the machine has no GPU of this kind

    def to_json(self) -> dict:
        return {"accelerator": self.accelerator, "torch": self.torch, "fits": self.fits, "reason": self.reason,
                "no_device": self.no_device}


@dataclass(frozen=True)
class Assessment:
    compatible: tuple[str, ...]  # accelerators that run here, best first, cpu last
    recommended: str
    fits: tuple[Fit, ...]  # every candidate, in judging order
    warnings: tuple[str, ...]

    def fit(self, acc: str) -> Fit | None:
        return next((f for f in self.fits if f.accelerator == acc), None)


def _minor_text(build: ArchBuild) -> str:
    return f"{build.torch[0]}.{build.torch[1]}"


def _caps_text(caps: tuple[Cap, ...]) -> str:
    return ", ".join(f"{a}.{b}" for a, b in caps)


def _judge_cuda(machine: Machine, acc: Accelerator, versions: Sequence[str] | None, platform: str | None,
                caps: tuple[Cap, ...] | None) -> Fit:
    """``versions``: a mirror's torch versions of ``acc`` (None: judge the newest tabled release)."""
    cuda = acc.cuda_version or ""
    if not machine.driver or machine.os not in ("linux", "windows"):
        return Fit(acc.name, None, "no", "no NVIDIA driver found", no_device=True)
    if not driver_supports(machine.driver, cuda, machine.os):
        need = min_nvidia_driver(acc, machine.os)
        return Fit(acc.name, None, "no", f"CUDA {cuda} needs driver >= {need or '(unknown)'}, found {machine.driver}")
    if platform is None:
        return Fit(acc.name, None, "no", f"no CUDA builds for {machine.os}-{machine.arch}")
    if versions is None:
        build = newest_build(acc.name, platform)
        if build is None:
            return Fit(acc.name, None, "unknown", "no tabled release build")
        verdict = coverage(build, caps or ())
        if verdict == "no":
            older = newest_covering_build(acc.name, platform, caps or ())
            if older is not None:  # an older release of the same variant still carried the GPU's arch
                return Fit(acc.name, _minor_text(older), "yes", f"torch <= {_minor_text(older)} only")
            return Fit(acc.name, _minor_text(build), "no",
                       f"builds carry {' '.join(build.arch_list)}, not compute {_caps_text(caps or ())}")
        return Fit(acc.name, _minor_text(build), verdict, None if verdict == "yes" else "GPU compute capability unknown")
    best_unknown: Fit | None = None
    last_no: Fit | None = None
    for v in sorted(versions, key=version_sort_key, reverse=True):
        build = arch_build(v, acc.name, platform)
        verdict = coverage(build, caps or ())
        if verdict == "yes":
            return Fit(acc.name, v, "yes")
        if verdict == "unknown" and best_unknown is None:
            why = "GPU compute capability unknown" if build is not None else f"architectures of torch {v} {acc.name} not tabled"
            best_unknown = Fit(acc.name, v, "unknown", why)
        if verdict == "no" and last_no is None:
            carried = " ".join(build.arch_list) if build is not None else "no tabled architectures"
            last_no = Fit(acc.name, v, "no", f"torch {v} {acc.name} carries {carried}, "
                                             f"not compute {_caps_text(caps or ())}")
    if best_unknown is not None:
        return best_unknown
    return last_no or Fit(acc.name, None, "unknown", "no torch version")


def _judge(machine: Machine, name: str, versions: Sequence[str] | None, platform: str | None,
           caps: tuple[Cap, ...] | None) -> Fit | None:
    acc = accelerator_from_dir(name)
    if acc is None or acc.flags:
        return None
    newest = max(versions, key=version_sort_key) if versions else None
    if acc.kind == "cuda":
        return _judge_cuda(machine, acc, versions, platform, caps)
    if acc.kind == "rocm":
        if not machine.amd_gfx or machine.os != "linux":
            return Fit(acc.name, newest, "no", "no AMD GPU found", no_device=True)
        verdict = rocm_coverage(acc.name, machine.amd_gfx)
        if verdict == "unknown" and acc.version < (6, 0):
            verdict = "yes"  # ROCm releases older than uv's table: no architecture data, allow (as before)
        why = None if verdict == "yes" else (f"{acc.name} builds lack {' '.join(machine.amd_gfx)}" if verdict == "no"
                                              else f"{acc.name} architectures not tabled")
        return Fit(acc.name, newest, verdict, why)
    if acc.kind == "xpu":
        ok = machine.intel and machine.os in ("linux", "windows")
        return Fit(acc.name, newest, "yes" if ok else "no", None if ok else "no Intel GPU found", no_device=not ok)
    return Fit(acc.name, newest, "yes")  # cpu


def _order(fits: list[Fit]) -> list[Fit]:
    rank = {"yes": 0, "unknown": 1}
    usable = [f for f in fits if f.fits in rank and f.accelerator != "cpu"]
    usable.sort(key=lambda f: (rank[f.fits], accelerator_sort_key(parse_accelerator(f.accelerator))))
    return usable


def _gpu_text(machine: Machine) -> str:
    names = []
    for g in machine.gpus:
        cap = gpu_cap(g)[0] if g.vendor == "nvidia" else None
        names.append(g.name + (f" (compute {cap[0]}.{cap[1]})" if cap else ""))
    return ", ".join(dict.fromkeys(names))


def assess(machine: Machine, offered: Mapping[str, Sequence[str]] | None = None) -> Assessment:
    """Judge the candidates: a mirror's accelerators -> their torch versions for this
    machine's Python (``offered``), or, without a mirror, the current variants."""
    platform = machine_platform(machine)
    caps = nvidia_caps(machine)
    gpu = bool(machine.driver or machine.amd_gfx or machine.intel or machine.gpus)
    if offered is not None:
        names = list(offered)
    else:
        names = [*(current_cuda_variants(platform) if platform else ()), *CURRENT_ROCM, "xpu"]
    fits = [f for n in names if (f := _judge(machine, n, offered.get(n) if offered is not None else None,
                                               platform, caps)) is not None]
    usable = _order(fits)
    warnings: list[str] = []
    if offered is None and platform and machine.driver and not any(parse_accelerator(f.accelerator).kind == "cuda"
                                                                     for f in usable):
        # Nothing current fits this NVIDIA GPU: offer the newest older variant that still does.
        for name in sorted(tabled_cuda_variants(platform), key=lambda n: accelerator_sort_key(parse_accelerator(n))):
            if name in names:
                continue
            f = _judge(machine, name, None, platform, caps)
            if f is not None and f.fits == "yes":
                fits.append(Fit(f.accelerator, f.torch, "yes", f"older variant: torch <= {f.torch}"))
                usable = _order(fits)
                warnings.append(f"no current build fits this GPU: {f.accelerator} is the newest that does "
                                f"(torch <= {f.torch}); a newer driver or GPU is needed for current builds")
                break
    compatible = tuple(f.accelerator for f in usable) + ("cpu",)
    recommended = compatible[0]
    chosen = next((f for f in usable if f.accelerator == recommended), None)
    if chosen is not None and chosen.fits == "unknown":
        warnings.append(f"{recommended}: {chosen.reason}; after installing, check that torch.cuda.get_arch_list() "
                        "covers this GPU")
    if recommended == "cpu" and gpu:
        why = "; ".join(f"{f.accelerator}: {f.reason}" for f in fits if f.fits == "no" and not f.no_device)
        warnings.append(f"the GPU will sit idle: no {'offered ' if offered is not None else ''}GPU build fits "
                        f"{_gpu_text(machine) or 'this GPU'}" + (f" ({why})" if why else ""))
    if caps is None and machine.driver:
        warnings.append("compute capability of an NVIDIA GPU unknown: architectures not checked")
    return Assessment(compatible=compatible, recommended=recommended, fits=tuple(fits), warnings=tuple(warnings))


def summary(machine: Machine, offered: Mapping[str, Sequence[str]] | None = None) -> dict:
    """The ``doctor --json`` object (without the mirror part)."""
    a = assess(machine, offered)
    d = machine.to_json()
    for g, j in zip(machine.gpus, d["gpus"], strict=True):
        cap, source = gpu_cap(g) if g.vendor == "nvidia" else (None, None)
        if cap and source == "name":
            j["compute_cap_from_name"] = f"{cap[0]}.{cap[1]}"
    d["max_cuda"] = max_cuda(machine.driver, machine.os) if machine.os in ("linux", "windows") else None
    d["platform"] = machine_platform(machine)
    d["compatible"] = list(a.compatible)
    d["recommended"] = a.recommended
    d["candidates"] = [f.to_json() for f in a.fits]
    d["warnings"] = list(a.warnings)
    return d


@dataclass(frozen=True)
class MirrorChoice:
    accelerator: str
    version: str | None  # torch public version to pin, if known
    index_url: str  # <mirror>/whl/<acc>

    @property
    def requirement(self) -> str:
        return f"torch=={self.version}" if self.version else "torch"

    @property
    def command(self) -> str:
        """pip, verbatim: works against a plain-HTTP mirror on a LAN host name too."""
        return install_commands(self.index_url, self.requirement)[0]

    @property
    def uv_command(self) -> str:
        return install_commands(self.index_url, self.requirement)[1]


def choose_mirrored(a: Assessment, offered: Mapping[str, Sequence[str]]) -> tuple[str, str | None] | None:
    """(accelerator, torch version) of the mirror's best build for this machine, or None."""
    for acc in a.compatible:
        if acc in offered:
            f = a.fit(acc)
            return acc, (f.torch if f is not None else None) or (max(offered[acc], key=version_sort_key)
                                                                  if offered[acc] else None)
    return None
