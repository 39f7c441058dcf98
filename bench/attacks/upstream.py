"""A loopback PyTorch-like upstream whose files can be re-published with new bytes, and the
published mirror the bench builds from it once (with the real ``torchdepot mirror``).

Same layout as :mod:`tests.loopback_upstream` (``/whl/cpu/<project>/`` with ``#sha256`` and
PEP 658 links, ``/simple/`` for dependencies), built from a ``filename -> bytes`` dict so an
attack can swap the bytes behind a name (:meth:`Site.republish`) or a page (:meth:`Site.page`), or
link a file through ``%2e%2e`` path segments (:meth:`Site.link_behind_dot_segments`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from bench.attacks.harness import Sandbox, copy_tree, run_cli
from tests.faultserver import FaultServer
from tests.kit.upstream import DEPS, TORCH, padded_wheel
from tests.kit.wheels import wheel_metadata as _metadata
from tests.loopback_upstream import write_spec


def _page(links: list[tuple[str, str]]) -> bytes:
    body = "".join(f'<a href="{href}">{text}</a><br/>\n' for href, text in links)
    return f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode()


def make_wheel(name: str, version: str, tag: str, requires: tuple[str, ...], payload: int, seed: int) -> tuple[str, bytes]:
    w = padded_wheel(name, version, tag, requires, payload, seed)
    return w.filename, w.data

PAYLOAD = 100_000


def original_wheels(payload: int = PAYLOAD, seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i, (name, version, tag, req) in enumerate((TORCH,) + DEPS):
        fname, data = make_wheel(name, version, tag, req, payload, seed * 100 + i)
        out[fname] = data
    return out


class Site:
    """Wheels served from a :class:`FaultServer`; pages rebuilt on every change."""

    def __init__(self, server: FaultServer, wheels: dict[str, bytes], metadata: bool = True):
        self.server = server
        self.metadata = metadata
        self.wheels: dict[str, bytes] = {}
        self.publish(wheels)

    @property
    def url(self) -> str:
        return self.server.url

    @staticmethod
    def path(fname: str) -> str:
        return f"/whl/files/{fname}"

    def torch_name(self) -> str:
        return next(f for f in self.wheels if f.startswith("torch-"))

    def publish(self, wheels: dict[str, bytes]) -> None:
        self.wheels = dict(wheels)
        by_project: dict[str, list[str]] = {}
        for fname, data in wheels.items():
            self.server.add(self.path(fname), data)
            if self.metadata:
                self.server.add(self.path(fname) + ".metadata", _metadata(data))
            by_project.setdefault(canonicalize_name(parse_wheel_filename(fname)[0]), []).append(fname)
        for project, fnames in by_project.items():
            links = []
            for f in fnames:
                href = f"/whl/files/{f.replace('+', '%2B')}#sha256={hashlib.sha256(wheels[f]).hexdigest()}"
                if self.metadata:
                    href += f'" data-dist-info-metadata="sha256={hashlib.sha256(_metadata(wheels[f])).hexdigest()}'
                links.append((href, f))
            self.page(project, _page(links))
        self.server.add("/whl/cpu/index.html", _page([(f"{p}/", p) for p in by_project]))
        self.server.add("/simple/index.html", _page([(f"{p}/", p) for p in by_project]))

    def page(self, project: str, body: bytes) -> None:
        self.server.add(f"/whl/cpu/{project}/index.html", body)
        self.server.add(f"/simple/{project}/index.html", body)

    def link_behind_dot_segments(self, fname: str, data: bytes) -> None:
        """Upstream's torch page also links ``fname`` (a newer "torch") through a path with
        ``%2e%2e`` segments on the same, allowed host; its bytes (``data``) live elsewhere."""
        torch = self.torch_name()
        good = f"/whl/files/{torch.replace('+', '%2B')}#sha256={hashlib.sha256(self.wheels[torch]).hexdigest()}"
        self.server.add(f"/evil/{fname}", data)
        evil = f"/whl/files/%2e%2e/%2e%2e/evil/{fname.replace('+', '%2B')}#sha256={hashlib.sha256(data).hexdigest()}"
        self.page("torch", _page([(good, torch), (evil, fname)]))

    def republish(self, fname: str, data: bytes) -> None:
        """Upstream replaces the bytes behind ``fname`` (same name, new sha256 on the page)."""
        self.publish({**self.wheels, fname: data})


def build_mirror(site: Site, sb: Sandbox, out: Path) -> Path:
    """Publish a mirror of ``site`` at ``out`` with the real CLI; raises when that fails."""
    spec = write_spec(sb.work / "base-spec.yaml", site.url, out)
    r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site))
    if r.rc != 0:
        raise RuntimeError(f"base mirror failed: {r.stderr.strip()[-400:]}")
    return out


def mirror_env(sb: Sandbox, site: Site, **extra: str) -> dict:
    return sb.env(PIP_INDEX_URL=site.url + "/simple", **extra)


def fresh_copy(base: Path, dst: Path) -> Path:
    return copy_tree(base, dst)
