"""Helpers shared by the lock/verify tests: a stand-in torch wheel and a hand-built mirror.

The hand-built mirror follows torchdepot/manifest.py's layout (packages/, whl/<acc>/<project>/,
manifest.json) so lock/verify can be tested in seconds with a stand-in ``torch`` wheel;
the e2e test uses the real torch wheel through ``torchdepot mirror``.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.kit.upstream import link, project_list
from tests.kit.upstream import page as pep503_page
from tests.kit.wheels import build_wheel
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


def fake_torch_wheels(d: Path, version: str = "2.13.0+cpu", cuda: str | None = None) -> list[Path]:
    return [
        build_wheel(d, "torch", version, files={"torch/__init__.py": FAKE_TORCH.format(version=version, cuda=cuda)}),
        build_wheel(d, "filelock", "3.0.0", files={"filelock/__init__.py": "X = 1\n"}),
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
            page.write_bytes(pep503_page(link(f"../../../packages/{proj}/{urllib.parse.quote(n)}", n, s) for n, s in entries))
        (root / "whl" / a / "index.html").write_bytes(project_list(projects))
    targets = [Target(f"{acc}-py{python.replace('.', '')}-{platform}", "pip", acc, python, platform, tuple(pkgs), index=f"whl/{acc}")]
    for a, py in extra_targets:
        targets.append(Target(f"{a}-py{py.replace('.', '')}-{platform}", "pip", a, py, platform, tuple(pkgs), index=f"whl/{a}"))
    m = Manifest(files=files, targets=targets, spec={"note": "hand-built test mirror"})
    save(root, m)
    return m
