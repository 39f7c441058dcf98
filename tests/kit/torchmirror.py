"""The real-torch mirror that the end-to-end tests share: made ONCE per session.

``torchdepot mirror`` runs in a subprocess, as a user runs it, against two loopback upstreams
shaped like download.pytorch.org (tests/kit/upstream.py): A lists the real torch-2.13.0+cpu
wheel, its dependency pages link to B, which also serves the simple index standing in for the
user's pip configuration. The spec lists an unreachable upstream first (failover) and numpy as
an extra package. The upstreams stay up while the session runs, so a test can run the mirror
again (on its own copy: :meth:`TorchMirror.copy`).

Invariants: tests only READ ``root``; :meth:`TorchMirror.changed` lists what was written there
anyway (the session fixture fails on it at teardown). Everything lives under one tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.httpserver import Server
from tests.kit.cli import td
from tests.kit.upstream import dead_url, pytorch_upstreams
from tests.venvs import hermetic_env


def _state(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (links not followed) -> (size, mtime in ns)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _link_wheels(src: str, dst: str) -> None:
    if src.endswith(".whl"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@dataclass(frozen=True)
class TorchMirror:
    root: Path  # the published mirror: read it, never write it
    spec: Path  # the spec it was made from (upstreams: [dead, A/whl]; extra_packages: [numpy])
    env: dict[str, str]  # hermetic, with the user's pip index (B's /simple)
    dead: str  # the unreachable upstream listed first
    first_run: subprocess.CompletedProcess  # what `torchdepot mirror` printed making it
    state: dict[str, tuple[int, int]] = field(repr=False)

    def mirror(self, out: Path) -> subprocess.CompletedProcess:
        """``torchdepot mirror --spec <spec> --out <out>`` as the first run was made."""
        return _mirror(self.spec, out, self.env)

    def copy(self, dest: Path) -> Path:
        """A private copy a test may change. Wheels are hard-linked (published files are
        replaced, never edited in place); the rest, such as the writer's lock file that a run
        rewrites, is copied."""
        shutil.copytree(self.root, dest, symlinks=True, copy_function=_link_wheels)
        return dest

    def changed(self) -> list[str]:
        now = _state(self.root)
        return sorted(p for p in self.state.keys() | now.keys() if self.state.get(p) != now.get(p))


def _mirror(spec: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return td("mirror", "--spec", spec, "--out", out, env=env)


@contextlib.contextmanager
def torch_mirror(base: Path, torch_wheel: Path, dep_wheels: list[Path]) -> Iterator[TorchMirror]:
    """Serve the upstreams, mirror the real torch wheel once, and yield the mirror."""
    a_root, b_root, out, spec = base / "A", base / "B", base / "mirror", base / "mirror.yaml"
    a_root.mkdir(parents=True)
    b_root.mkdir()
    with Server(b_root) as b, Server(a_root) as a:
        up_a, up_b = pytorch_upstreams([torch_wheel], dep_wheels, b.url)
        up_a.write(a_root)
        up_b.write(b_root)
        dead = dead_url()
        spec.write_text(
            "packages: [torch]\nextra_packages: [numpy]\naccelerators: [cpu]\npythons: ['3.11']\n"
            f"platforms: [linux-x86_64]\nupstreams: [{dead}, {a.url}/whl]\n")
        env = hermetic_env(PIP_INDEX_URL=f"{b.url}/simple")
        first = _mirror(spec, out, env)
        yield TorchMirror(root=out, spec=spec, env=env, dead=dead, first_run=first,
                          state=_state(out) if out.is_dir() else {})
