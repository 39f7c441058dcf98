"""Loopback upstreams for mirror tests, laid out like download.pytorch.org.

Upstream A (``<A>/whl/<acc>/torch/``) lists torch wheels with ``#sha256=`` and PEP 658
``.metadata``; its dependency pages ``<A>/whl/<acc>/<dep>/`` link with ABSOLUTE URLs to
upstream B (another server), which also serves a plain simple index ``<B>/simple/`` that
stands in for the user's pip index.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import urllib.parse
import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from torchdepot.store.fsutil import sha256_file


def sha256(path: Path) -> str:
    return sha256_file(path)[0]


def make_wheel(dest: Path, name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
               requires_python: str | None = None, payload: bytes = b"") -> Path:
    """A small but real wheel (METADATA, WHEEL, RECORD) that pip and uv accept."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = Path(dest) / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name.replace('-', '_')}/__init__.py": f"__version__ = {version!r}\n".encode() + payload,
        f"{dist}.dist-info/METADATA": meta.encode(),
        f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = []
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    Path(dest).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in files.items():
            zf.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), data)
    return path


def wheel_metadata(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return zf.read(name)


def _page(links: list[str]) -> str:
    return "<!DOCTYPE html><html><body>\n" + "".join(f"{a}<br/>\n" for a in links) + "</body></html>\n"


def _link(href: str, text: str, sha: str | None, meta_sha: str | None = None) -> str:
    attrs = f'href="{html.escape(href + (f"#sha256={sha}" if sha else ""))}"'
    if meta_sha:
        attrs += f' data-core-metadata="sha256={meta_sha}" data-dist-info-metadata="sha256={meta_sha}"'
    return f"<a {attrs}>{html.escape(text)}</a>"


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        try:
            os.symlink(src, dest)  # the 190 MB torch wheel is served, not copied
        except OSError:
            dest.write_bytes(src.read_bytes())


def build_upstreams(a_root: Path, b_root: Path, b_url: str, torch_wheels: list[Path], dep_wheels: list[Path],
                    acc: str = "cpu", wrong_sha: set[str] = frozenset()) -> None:
    """Lay out upstream A (PyTorch-like) and B (dependency file host + simple index).

    ``wrong_sha``: projects whose links on A claim a wrong sha256 (upstream lies).
    """
    variant = Path(a_root) / "whl" / acc
    links = []
    for w in torch_wheels:
        _place(w, variant / w.name)
        meta = wheel_metadata(w)
        (variant / (w.name + ".metadata")).write_bytes(meta)
        sha = "0" * 64 if "torch" in wrong_sha else sha256(w)
        links.append(_link(f"/whl/{acc}/{urllib.parse.quote(w.name)}", w.name, sha, hashlib.sha256(meta).hexdigest()))
    (variant / "torch").mkdir(parents=True, exist_ok=True)
    (variant / "torch" / "index.html").write_text(_page(links))
    by_project: dict[str, list[Path]] = {}
    for w in dep_wheels:
        by_project.setdefault(canonicalize_name(parse_wheel_filename(w.name)[0]), []).append(w)
    for project, wheels in sorted(by_project.items()):
        a_links, b_links = [], []
        for w in wheels:
            _place(w, Path(b_root) / "files" / w.name)
            real = sha256(w)
            claim = "f" * 64 if project in wrong_sha else real
            a_links.append(_link(f"{b_url}/files/{urllib.parse.quote(w.name)}", w.name, claim))
            b_links.append(_link(f"../../files/{urllib.parse.quote(w.name)}", w.name, real))
        (variant / project).mkdir(parents=True, exist_ok=True)
        (variant / project / "index.html").write_text(_page(a_links))
        (Path(b_root) / "simple" / project).mkdir(parents=True, exist_ok=True)
        (Path(b_root) / "simple" / project / "index.html").write_text(_page(b_links))
    (Path(b_root) / "simple" / "index.html").write_text(
        _page([f'<a href="{p}/">{p}</a>' for p in sorted(by_project)]))


def dead_url() -> str:
    """A loopback URL nothing listens on (bound then closed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/whl"
