"""The one upstream builder for tests: download.pytorch.org-shaped PEP 503 trees.

An upstream is a :class:`Tree`, URL path -> content, built purely and then either written
under a directory that a ``tests.httpserver.Server`` serves (:meth:`Tree.write`; real wheels
such as the 190 MB torch wheel are symlinked, not copied) or added to a
``tests.faultserver.FaultServer`` (:meth:`Tree.serve`).

:func:`pep503` lays out one host: the wheels (with PEP 658 ``.metadata`` sidecars when asked),
one page per project under each of ``pages`` (``/whl/cpu``, ``/simple``) linking them with
``#sha256=`` (optionally a wrong, lying hash), and each page root's project list. Links may
point at another host (``base_url``) whose tree holds the files: download.pytorch.org's
dependency pages link to its file host like that. :func:`pytorch_upstreams` is that two-host
shape (A: PyTorch-like, B: dependency files and the user's simple index).

Invariants: pages are deterministic (sorted projects, wheel order as given); a file name is
placed once per tree; nothing here opens a socket.
"""

from __future__ import annotations

import hashlib
import html
import os
import random
import socket
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.kit.wheels import BuiltWheel, wheel_bytes, wheel_metadata

Wheel = Path | BuiltWheel  # a wheel file on disk, or one built in memory


def wheel_name(wheel: Wheel) -> str:
    return wheel.name if isinstance(wheel, Path) else wheel.filename


def wheel_project(wheel: Wheel) -> str:
    return str(canonicalize_name(parse_wheel_filename(wheel_name(wheel))[0]))


def _data(wheel: Wheel) -> bytes:
    return wheel.read_bytes() if isinstance(wheel, Path) else wheel.data


def _sha(wheel: Wheel) -> str:
    return hashlib.sha256(_data(wheel)).hexdigest()


def link(href: str, text: str, sha: str | None = None, meta_sha: str | None = None) -> str:
    """One PEP 503 anchor; ``meta_sha`` adds both PEP 714 metadata attributes."""
    attrs = f'href="{html.escape(href + (f"#sha256={sha}" if sha else ""))}"'
    if meta_sha:
        attrs += f' data-core-metadata="sha256={meta_sha}" data-dist-info-metadata="sha256={meta_sha}"'
    return f"<a {attrs}>{html.escape(text)}</a>"


def page(anchors: Iterable[str]) -> bytes:
    """A PEP 503 page around ``anchors`` (one per line)."""
    return ("<!DOCTYPE html><html><body>\n" + "".join(f"{a}<br/>\n" for a in anchors) + "</body></html>\n").encode()


def project_list(projects: Iterable[str]) -> bytes:
    return page(f'<a href="{p}/">{p}</a>' for p in sorted(projects))


@dataclass
class Tree:
    """URL path (``/whl/cpu/torch/index.html``) -> bytes, or a file on disk to serve as is."""

    files: dict[str, bytes | Path] = field(default_factory=dict)

    def add(self, path: str, content: bytes | Path) -> None:
        self.files[path] = content

    def __or__(self, other: Tree) -> Tree:
        return Tree({**self.files, **other.files})

    def write(self, root: Path) -> None:
        """Lay the tree out under ``root``; files on disk are symlinked (served, not copied)."""
        for path, content in self.files.items():
            dest = Path(root) / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            elif not dest.exists():
                try:
                    os.symlink(content, dest)
                except OSError:
                    dest.write_bytes(content.read_bytes())

    def serve(self, server) -> None:
        """Add every file to a FaultServer (in memory)."""
        for path, content in self.files.items():
            server.add(path, content if isinstance(content, bytes) else content.read_bytes())


def pep503(wheels: Sequence[Wheel], *, pages: Sequence[str], files: str, base_url: str = "", place: bool = True,
           metadata: bool = True, lie: Mapping[str, str] | None = None, indexes: bool = True) -> Tree:
    """One host's PEP 503 tree for ``wheels``.

    ``files``: the URL directory the wheels live in; ``base_url``: prefix of the links (another
    host; then ``place=False`` as that host's tree holds the files); ``metadata``: PEP 658
    sidecars and link attributes; ``lie``: project -> the sha256 its links claim instead of the
    real one; ``indexes``: each page root also lists its projects.
    """
    tree = Tree()
    by_project: dict[str, list[Wheel]] = {}
    for w in wheels:
        by_project.setdefault(wheel_project(w), []).append(w)
    for project, ws in sorted(by_project.items()):
        anchors = []
        for w in ws:
            name = wheel_name(w)
            meta = wheel_metadata(w if isinstance(w, Path) else w.data) if metadata else None
            if place:
                tree.add(f"{files}/{name}", w if isinstance(w, Path) else w.data)
                if meta is not None:
                    tree.add(f"{files}/{name}.metadata", meta)
            sha = (lie or {}).get(project) or _sha(w)
            anchors.append(link(f"{base_url}{files}/{urllib.parse.quote(name)}", name, sha,
                                hashlib.sha256(meta).hexdigest() if meta is not None else None))
        for root in pages:
            tree.add(f"{root}/{project}/index.html", page(anchors))
    if indexes:
        for root in pages:
            tree.add(f"{root}/index.html", project_list(by_project))
    return tree


def pytorch_upstreams(torch_wheels: Sequence[Wheel], dep_wheels: Sequence[Wheel], b_url: str, *, acc: str = "cpu",
                      wrong_sha: Iterable[str] = frozenset()) -> tuple[Tree, Tree]:
    """Upstream A (``/whl/<acc>/torch/`` with sidecars; its dependency pages link absolute to
    ``b_url``) and B (the dependency files under ``/files/`` and a ``/simple/`` index).
    ``wrong_sha``: projects whose links on A claim a wrong sha256 (upstream lies)."""
    lies = {p: ("0" if p == "torch" else "f") * 64 for p in wrong_sha}
    a = pep503(torch_wheels, pages=[f"/whl/{acc}"], files=f"/whl/{acc}", lie=lies, indexes=False)
    a |= pep503(dep_wheels, pages=[f"/whl/{acc}"], files="/files", base_url=b_url, place=False, metadata=False,
                lie=lies, indexes=False)
    b = pep503(dep_wheels, pages=["/simple"], files="/files", metadata=False)
    return a, b


# The in-memory loopback upstream: a small torch and its dependency chain, one host.
TORCH = ("torch", "2.5.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", ("filelock", "typing-extensions>=4", "sympy"))
DEPS = (
    ("filelock", "3.16.1", "py3-none-any", ()),
    ("typing_extensions", "4.12.2", "py3-none-any", ()),
    ("sympy", "1.13.1", "py3-none-any", ("mpmath<1.4,>=1.1",)),
    ("mpmath", "1.3.0", "py3-none-any", ()),
)


def padded_wheel(name: str, version: str, tag: str, requires: tuple[str, ...], payload: int, seed: int) -> BuiltWheel:
    """A wheel padded with ``payload`` incompressible bytes (stored, not deflated), so a
    slow-drip server makes its download take measurable time."""
    dist = name.replace("-", "_")
    files = {f"{dist}/__init__.py": f"__version__ = {version!r}\n".encode(),
             f"{dist}/payload.bin": random.Random(seed).randbytes(payload)}
    return wheel_bytes(name, version, tag, requires, files=files, compression=zipfile.ZIP_STORED)


@dataclass
class Upstream:
    """What :func:`populate` serves: wheel file name -> bytes and -> URL path."""

    server: object  # tests.faultserver.FaultServer
    wheels: dict[str, bytes]
    paths: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def wheel_hits(self) -> dict[str, int]:
        return {f: self.server.hits[p] for f, p in self.paths.items()}


def populate(server, payload: int = 200_000) -> Upstream:
    """Serve torch and its dependencies on one FaultServer: files under ``/whl/files/`` (with
    sidecars), pages under ``/whl/cpu/`` and the same under ``/simple/`` (the pip index)."""
    wheels = [padded_wheel(*spec, payload, seed) for seed, spec in enumerate((TORCH, *DEPS))]
    pep503(wheels, pages=["/whl/cpu", "/simple"], files="/whl/files").serve(server)
    return Upstream(server, {w.filename: w.data for w in wheels}, {w.filename: f"/whl/files/{w.filename}" for w in wheels})


def dead_url() -> str:
    """A loopback URL nothing listens on (bound then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/whl"
