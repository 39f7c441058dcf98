"""Helpers shared by the lock/verify tests: tiny wheels and a hand-built mirror.

The hand-built mirror follows torchdepot/manifest.py's layout (packages/, whl/<acc>/<project>/,
manifest.json) so lock/verify can be tested in seconds with a stand-in ``torch`` wheel;
the e2e test uses the real torch wheel through ``torchdepot mirror``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import shutil
import urllib.parse
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.utils import canonicalize_name, parse_wheel_filename

from torchdepot.cli import main
from torchdepot.store.fsutil import sha256_file
from torchdepot.store.manifest import FileEntry, Manifest, Target, TargetPackage, save

FAKE_TORCH = '''\
__version__ = "{version}"
class version:
    cuda = {cuda!r}
class cuda:
    @staticmethod
    def is_available():
        return False
class _T:
    def __init__(self, xs):
        self.xs = [float(x) for x in xs]
    def __mul__(self, k):
        return _T(x * k for x in self.xs)
    def sum(self):
        return sum(self.xs)
def tensor(xs):
    return _T(xs)
def from_numpy(a):
    return _T(a.tolist())
'''


def make_wheel(d: Path, name: str, version: str, files: dict[str, str], tag: str = "py3-none-any") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    dist = f"{name.replace('-', '_')}-{version}"
    path = d / f"{dist}-{tag}.whl"
    meta = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    allf = {**files, **meta}
    record = []
    for n, text in allf.items():
        b = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(b)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for n, text in sorted(allf.items()):
            z.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), text)
        z.writestr(zipfile.ZipInfo(f"{dist}.dist-info/RECORD", (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return path


def fake_torch_wheels(d: Path, version: str = "2.13.0+cpu", cuda: str | None = None) -> list[Path]:
    return [
        make_wheel(d, "torch", version, {"torch/__init__.py": FAKE_TORCH.format(version=version, cuda=cuda)}),
        make_wheel(d, "filelock", "3.0.0", {"filelock/__init__.py": "X = 1\n"}),
    ]


@pytest.fixture(autouse=True, name="private_tmp")
def private_tmp_fixture(tmp_path, monkeypatch):
    """Throwaway envs go under this test's tmp_path; --keep cleanup can never reach anything else.

    Autouse in every test module that imports ``private_tmp_fixture`` (the verify tests).
    """
    import tempfile

    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return d


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def build_mirror(root: Path, wheels: list[Path], acc: str = "cpu", python: str = "3.11",
                 platform: str = "linux-x86_64", extra_targets: tuple[tuple[str, str], ...] = ()) -> Manifest:
    """packages/<project>/<wheel> (hard links), whl/<acc>/<project>/index.html, manifest.json."""
    files, pkgs, projects = [], [], {}
    for w in wheels:
        name, version, _, _ = parse_wheel_filename(w.name)
        proj = str(canonicalize_name(name))
        rel = f"packages/{proj}/{w.name}"
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            try:
                os.link(w, dest)
            except OSError:
                shutil.copyfile(w, dest)
        sha, size = sha256_file(dest)
        files.append(FileEntry(rel, sha, size, "wheel", proj, str(version), url=None))
        pkgs.append(TargetPackage(proj, str(version), rel))
        projects.setdefault(proj, []).append((w.name, sha))
    for a in {acc, *(x for x, _ in extra_targets)}:
        for proj, entries in projects.items():
            page = root / "whl" / a / proj / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            links = "".join(
                f'<a href="../../../packages/{proj}/{urllib.parse.quote(n)}#sha256={s}">{html.escape(n)}</a><br/>\n'
                for n, s in entries
            )
            page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
        (root / "whl" / a / "index.html").write_text(
            "<html><body>\n" + "".join(f'<a href="{p}/">{p}</a><br/>\n' for p in sorted(projects)) + "</body></html>\n")
    targets = [Target(f"{acc}-py{python.replace('.', '')}-{platform}", "pip", acc, python, platform, tuple(pkgs), index=f"whl/{acc}")]
    for a, py in extra_targets:
        targets.append(Target(f"{a}-py{py.replace('.', '')}-{platform}", "pip", a, py, platform, tuple(pkgs), index=f"whl/{a}"))
    m = Manifest(files=files, targets=targets, spec={"note": "hand-built test mirror"})
    save(root, m)
    return m
