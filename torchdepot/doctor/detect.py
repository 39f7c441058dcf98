"""Detect the machine: OS, arch, Python, glibc, and GPUs with their driver.

NVIDIA driver, in uv's order: ``TORCHDEPOT_CUDA_DRIVER``, ``/sys/module/nvidia/version``,
``/proc/driver/nvidia/version``, then ``nvidia-smi`` on PATH (which also names the GPUs
and their compute capability). AMD via ``rocm_agent_enumerator``; Intel GPUs via PCI
vendor 0x8086 display devices (-> xpu). File paths live under ``root`` (default
``TORCHDEPOT_SYSROOT`` or ``/``) so tests can point them at recorded fixtures.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torchdepot.errors import ParseError
from torchdepot.model.gpu_tables import parse_driver

SMI_QUERY = ["--query-gpu=driver_version,name,compute_cap", "--format=csv,noheader"]
SMI_QUERY_OLD = ["--query-gpu=driver_version,name", "--format=csv,noheader"]  # drivers < 510 lack compute_cap
_PROC_VERSION = re.compile(r"Kernel Module(?: for \w+)?\s+(\d+\.\d+(?:\.\d+)?)")
_GFX = re.compile(r"gfx[0-9a-f]+")


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str | None
    compute_cap: str | None
    vendor: str = "nvidia"  # nvidia | amd | intel

    def to_json(self) -> dict:
        return {"name": self.name, "driver": self.driver, "compute_cap": self.compute_cap, "vendor": self.vendor}


@dataclass(frozen=True)
class Machine:
    os: str  # linux | windows | macos
    arch: str  # x86_64 | aarch64 | arm64 | amd64
    python: str  # "3.11"
    glibc: str | None
    gpus: tuple[Gpu, ...] = ()
    driver: str | None = None  # NVIDIA driver
    driver_source: str | None = None  # env | sysfs | procfs | nvidia-smi
    notes: tuple[str, ...] = field(default=())

    @property
    def nvidia(self) -> bool:
        return self.driver is not None

    @property
    def amd_gfx(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.gpus if g.vendor == "amd")

    @property
    def intel(self) -> bool:
        return any(g.vendor == "intel" for g in self.gpus)

    def to_json(self) -> dict:
        d = asdict(self)
        d["gpus"] = [g.to_json() for g in self.gpus]
        d["notes"] = list(self.notes)
        return d


def host_os() -> str:
    return {"linux": "linux", "win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform)


def glibc_version() -> str | None:
    """``"2.36"`` from the C library this interpreter runs on; None on musl/non-Linux."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        text = ""
    m = re.fullmatch(r"glibc (\d+\.\d+)", text.strip())
    if m:
        return m.group(1)
    lib, ver = platform.libc_ver()
    return ver if lib == "glibc" and ver else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _valid_driver(text: str | None) -> str | None:
    if not text:
        return None
    t = text.strip()
    try:
        parse_driver(t)
    except ParseError:
        return None
    return t


def driver_from_files(root: Path) -> tuple[str | None, str | None]:
    """(driver, source) from sysfs, else procfs."""
    d = _valid_driver(_read(root / "sys/module/nvidia/version"))
    if d:
        return d, "sysfs"
    text = _read(root / "proc/driver/nvidia/version")
    if text:
        m = _PROC_VERSION.search(text)
        if m:
            return m.group(1), "procfs"
    return None, None


def gpus_from_procfs(root: Path, driver: str | None) -> list[Gpu]:
    """GPU models from ``/proc/driver/nvidia/gpus/*/information`` (no nvidia-smi needed)."""
    out: list[Gpu] = []
    base = root / "proc/driver/nvidia/gpus"
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return out
    for d in entries:
        text = _read(d / "information") or ""
        m = re.search(r"^Model:\s*(.+)$", text, re.M)
        if m:
            out.append(Gpu(m.group(1).strip(), driver, None))
    return out


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str] | None"]


def run_tool(argv: list[str], timeout: float = 20.0):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def parse_smi(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=driver_version,name[,compute_cap] --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not _valid_driver(parts[0]):
            continue
        cap = parts[2] if len(parts) > 2 and re.fullmatch(r"\d+\.\d+", parts[2]) else None
        gpus.append(Gpu(parts[1], parts[0], cap))
    return gpus


def nvidia_smi(which: Callable[[str], str | None], run: Runner) -> tuple[list[Gpu], str | None]:
    exe = which("nvidia-smi")
    if not exe:
        return [], None
    proc = run([exe, *SMI_QUERY])
    if proc is None:
        return [], "nvidia-smi could not be run"
    gpus = parse_smi(proc.stdout) if proc.returncode == 0 else []
    if not gpus:  # drivers before 510 reject compute_cap: ask again without it
        proc = run([exe, *SMI_QUERY_OLD])
        gpus = parse_smi(proc.stdout) if proc is not None and proc.returncode == 0 else []
    if not gpus:
        err = (proc.stderr or proc.stdout).strip().splitlines() if proc is not None else []
        return [], f"nvidia-smi failed: {err[0] if err else 'no output'}"
    return gpus, None


def amd_gpus(which: Callable[[str], str | None], run: Runner) -> list[Gpu]:
    exe = which("rocm_agent_enumerator")
    if not exe:
        return []
    proc = run([exe])
    if proc is None or proc.returncode != 0:
        return []
    # gfx000 is the CPU agent
    return [Gpu(g, None, None, "amd") for g in _GFX.findall(proc.stdout) if g != "gfx000"]


def intel_gpus(root: Path) -> list[Gpu]:
    """Intel display controllers (PCI class 0x03xxxx, vendor 0x8086) -> xpu candidates."""
    out: list[Gpu] = []
    base = root / "sys/bus/pci/devices"
    try:
        devices = sorted(base.iterdir())
    except OSError:
        return out
    for d in devices:
        vendor = (_read(d / "vendor") or "").strip().lower()
        cls = (_read(d / "class") or "").strip().lower()
        if vendor == "0x8086" and cls.startswith("0x03"):
            device = (_read(d / "device") or "").strip()
            out.append(Gpu(f"Intel GPU {device}".strip(), None, None, "intel"))
    return out


def detect(root: Path | str | None = None, env: Mapping[str, str] | None = None,
           which: Callable[[str], str | None] | None = None, run: Runner = run_tool) -> Machine:
    """Detect this machine. ``root``/``env``/``which``/``run`` are injectable for tests."""
    env = os.environ if env is None else env
    root = Path(root if root is not None else env.get("TORCHDEPOT_SYSROOT") or "/")
    if which is None:
        path = env.get("PATH")
        which = lambda name: shutil.which(name, path=path)  # noqa: E731
    notes: list[str] = []
    driver, source = None, None
    override = env.get("TORCHDEPOT_CUDA_DRIVER")
    if override:
        driver = _valid_driver(override)
        source = "env" if driver else None
        if not driver:
            notes.append(f"ignored TORCHDEPOT_CUDA_DRIVER={override!r} (not a driver version)")
    if not driver:
        driver, source = driver_from_files(root)
    smi, smi_note = nvidia_smi(which, run)
    if smi_note and (driver or which("nvidia-smi")):
        notes.append(smi_note)
    if not driver and smi:
        driver, source = smi[0].driver, "nvidia-smi"
    gpus: list[Gpu] = list(smi) or (gpus_from_procfs(root, driver) if driver else [])
    gpus += amd_gpus(which, run)
    gpus += intel_gpus(root)
    machine = platform.machine().lower() or "unknown"
    return Machine(
        os=host_os(),
        arch=machine,
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        glibc=glibc_version() if host_os() == "linux" else None,
        gpus=tuple(gpus),
        driver=driver,
        driver_source=source,
        notes=tuple(notes),
    )
