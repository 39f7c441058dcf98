"""``doctor --check``: inspect the torch installed in an interpreter, in a subprocess (a
broken torch or numpy must not take doctor down with it)."""

from __future__ import annotations

import json
import subprocess

from torchdepot.errors import TorchdepotError
from torchdepot.model.gpu_tables import Cap, arch_list_covers

PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0], "torch": None, "cuda": None, "hip": None, "arch_list": [],
       "cuda_available": None, "device_count": None, "numpy": None, "numpy_error": None, "error": None}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = getattr(torch.version, "cuda", None)
    out["hip"] = getattr(torch.version, "hip", None)
    out["cuda_available"] = bool(torch.cuda.is_available())
    out["device_count"] = int(torch.cuda.device_count()) if out["cuda_available"] else 0
    out["arch_list"] = list(torch.cuda.get_arch_list()) if out["cuda_available"] and out["cuda"] else []
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
try:
    import numpy
    out["numpy"] = numpy.__version__
    if out["torch"]:
        torch.from_numpy(numpy.zeros(1))  # the ABI mismatch shows here ("numpy.core.multiarray failed to import")
except Exception as exc:
    out["numpy_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def probe(python: str, timeout: float = 120.0) -> dict:
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TorchdepotError(f"{python}: cannot run ({exc})") from None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise TorchdepotError(f"{python}: probe failed: {(proc.stderr or proc.stdout).strip()[-300:]}") from None


def findings(result: dict, max_cuda: str | None, gpu_present: bool, caps: tuple[Cap, ...] = ()) -> list[str]:
    """Problems (pure): each a one-line message; empty when the install looks right.
    ``caps``: the NVIDIA GPUs' compute capabilities, checked against the build's arch list."""
    out = []
    if result.get("torch") is None:
        out.append(f"torch is not importable: {result.get('error') or 'not installed'}")
        return out
    cuda = result.get("cuda")
    if cuda:
        if max_cuda is None:
            out.append(f"torch {result['torch']} is a CUDA {cuda} build but no NVIDIA driver was found")
        elif tuple(map(int, cuda.split(".")[:2])) > tuple(map(int, max_cuda.split(".")[:2])):
            out.append(f"torch {result['torch']} needs CUDA {cuda} but the driver supports up to {max_cuda}")
        elif not result.get("cuda_available"):
            out.append(f"torch {result['torch']} (CUDA {cuda}) reports torch.cuda.is_available() == False")
        else:
            arches = result.get("arch_list") or []
            missing = [c for c in caps if arches and not arch_list_covers(arches, c)]
            if missing:
                out.append(f"torch {result['torch']} has no kernels for compute {', '.join(f'{a}.{b}' for a, b in missing)} "
                           f"(its arch list: {' '.join(arches)}); see docs/gpu-architectures.md")
    elif gpu_present and not result.get("hip"):
        out.append(f"torch {result['torch']} is a CPU-only build on a machine with a GPU")
    if result.get("numpy_error") and not result["numpy_error"].startswith("ModuleNotFoundError"):
        out.append(f"numpy: {result['numpy_error']}")
    return out
