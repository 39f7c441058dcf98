"""A small PyTorch-like upstream on a :class:`tests.faultserver.FaultServer` (127.0.0.1 only).

Layout like download.pytorch.org: ``/whl/cpu/<project>/index.html`` with ``#sha256=``
links, plus a PEP 503 ``/simple/<project>/`` dependency index (what pip config points at).
Wheels are tiny but valid (METADATA with Requires-Dist) and padded with incompressible
bytes so a slow-drip server makes downloads take measurable time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

from tests.faultserver import FaultServer
from tests.venvs import hermetic_env

ROOT = Path(__file__).resolve().parent.parent
TORCH = ("torch", "2.5.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", ("filelock", "typing-extensions>=4", "sympy"))
DEPS = (
    ("filelock", "3.16.1", "py3-none-any", ()),
    ("typing_extensions", "4.12.2", "py3-none-any", ()),
    ("sympy", "1.13.1", "py3-none-any", ("mpmath<1.4,>=1.1",)),
    ("mpmath", "1.3.0", "py3-none-any", ()),
)


def make_wheel(name: str, version: str, tag: str, requires: tuple[str, ...], payload: int, seed: int) -> tuple[str, bytes]:
    dist = name.replace("-", "_")
    fname = f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{dist}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{dist}/payload.bin": random.Random(seed).randbytes(payload),
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: loopback\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    rec = []
    for n, d in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
        rec.append(f"{n},sha256={h},{len(d)}")
    files[f"{info}/RECORD"] = ("\n".join(rec + [f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n, d in files.items():
            zf.writestr(zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0)), d)
    return fname, buf.getvalue()


@dataclass
class Upstream:
    server: FaultServer
    wheels: dict[str, bytes]  # filename -> bytes
    paths: dict[str, str]  # filename -> URL path on the server

    @property
    def url(self) -> str:
        return self.server.url

    def wheel_hits(self) -> dict[str, int]:
        return {f: self.server.hits[p] for f, p in self.paths.items()}


def _metadata(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))


def _page(links: list[tuple[str, str]]) -> bytes:
    body = "".join(f'<a href="{href}">{text}</a><br/>\n' for href, text in links)
    return f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode()


def populate(server: FaultServer, payload: int = 200_000) -> Upstream:
    """Serve torch (+ deps) on /whl/cpu/ and the deps on /simple/; returns what was served."""
    wheels, paths = {}, {}
    by_project: dict[str, list[str]] = {}
    for i, (name, version, tag, req) in enumerate((TORCH,) + DEPS):
        fname, data = make_wheel(name, version, tag, req, payload, i)
        project = canonicalize_name(name)
        path = f"/whl/files/{fname}"
        server.add(path, data)
        # PEP 658: resolvers read ~1 KB of metadata instead of the wheel
        server.add(path + ".metadata", _metadata(data))
        wheels[fname], paths[fname] = data, path
        by_project.setdefault(project, []).append(fname)
    for project, fnames in by_project.items():
        links = [(f"/whl/files/{f.replace('+', '%2B')}#sha256={hashlib.sha256(wheels[f]).hexdigest()}"
                  f'" data-dist-info-metadata="sha256={hashlib.sha256(_metadata(wheels[f])).hexdigest()}', f)
                 for f in fnames]
        server.add(f"/whl/cpu/{project}/index.html", _page(links))
        server.add(f"/simple/{project}/index.html", _page(links))
    server.add("/whl/cpu/index.html", _page([(f"{p}/", p) for p in by_project]))
    server.add("/simple/index.html", _page([(f"{p}/", p) for p in by_project]))
    return Upstream(server, wheels, paths)


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


__all__ = ["populate", "write_spec", "mirror_env", "run_mirror", "mirror_cmd", "Upstream"]
