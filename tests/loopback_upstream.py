"""Running ``torchdepot mirror`` against the small PyTorch-like loopback upstream.

The upstream itself (``populate``: a :class:`tests.faultserver.FaultServer` laid out like
download.pytorch.org, wheels padded with incompressible bytes) is built by ``tests/kit/upstream.py``
and re-exported here; this module writes the spec, the hermetic environment and runs the CLI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.kit.upstream import DEPS, TORCH, Upstream, populate
from tests.venvs import hermetic_env

ROOT = Path(__file__).resolve().parent.parent


def write_spec(path: Path, upstream: str, out: Path, jobs: int = 2) -> Path:
    spec = {
        "packages": ["torch"],
        "extra_packages": [],
        "accelerators": ["cpu"],
        "pythons": ["3.11"],
        "platforms": ["linux-x86_64"],
        "upstreams": [upstream + "/whl"],
        "out": str(out),
        "jobs": jobs,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def mirror_env(upstream: str, tmp: Path) -> dict[str, str]:
    """Hermetic: pip config points at the loopback /simple only; uv's cache is a tmp dir."""
    return hermetic_env(PIP_INDEX_URL=upstream + "/simple", UV_CACHE_DIR=str(tmp / "uv-cache"),
                        PYTHONPATH=str(ROOT), TORCHDEPOT_NO_PROGRESS="1")


def mirror_cmd(spec: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torchdepot", "mirror", "--spec", str(spec), *extra]


def run_mirror(spec: Path, env: dict, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(mirror_cmd(spec, *extra), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(spec.parent))


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def outside_root(tmp: Path, allowed: set[Path]) -> list[str]:
    """Files under ``tmp`` that are in none of ``allowed`` dirs."""
    bad = []
    for p in tmp.rglob("*"):
        if p.is_file() and not any(a == p or a in p.parents for a in allowed):
            bad.append(str(p))
    return bad


__all__ = ["DEPS", "TORCH", "populate", "write_spec", "mirror_env", "run_mirror", "mirror_cmd", "Upstream"]
