"""End to end: the real torch-2.13.0+cpu wheel, a download.pytorch.org-shaped upstream on
loopback (dependency links absolute to a second server), ``torchdepot mirror`` in a
subprocess, the mirror served by a third server, and a hermetic ``pip install
--index-url <mirror>/whl/cpu torch`` into a throwaway venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TORCH_VERSION
from tests.httpserver import Server
from tests.mirror_upstream import build_upstreams, dead_url
from tests.venvs import hermetic_env, make_venv, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_mirror_then_offline_pip_install(tmp_path, torch_wheel, dep_wheels):
    a_root, b_root, out = tmp_path / "A", tmp_path / "B", tmp_path / "mirror"
    a_root.mkdir()
    b_root.mkdir()
    spec = tmp_path / "mirror.yaml"
    with Server(b_root) as b, Server(a_root) as a:
        build_upstreams(a_root, b_root, b.url, [torch_wheel], dep_wheels)
        dead = dead_url()
        spec.write_text(
            "packages: [torch]\nextra_packages: [numpy]\naccelerators: [cpu]\npythons: ['3.11']\n"
            f"platforms: [linux-x86_64]\nupstreams: [{dead}, {a.url}/whl]\n")
        # Dependencies: the user's pip config, here hermetically an index on server B.
        env = hermetic_env(PIP_INDEX_URL=f"{b.url}/simple")
        proc = subprocess.run([sys.executable, "-m", "torchdepot", "mirror", "--spec", str(spec), "--out", str(out)],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert f"upstream {dead} unreachable" in proc.stderr
        assert "11 files: 11 downloaded" in proc.stdout, proc.stdout
        wheel = out / "packages" / "torch" / torch_wheel.name
        assert wheel.stat().st_size == torch_wheel.stat().st_size
        page = (out / "whl" / "cpu" / "torch" / "index.html").read_text()
        assert "torch-2.13.0%2Bcpu" in page and 'data-core-metadata="sha256=' in page
        for dep in ("numpy", "sympy", "filelock", "jinja2", "markupsafe"):
            assert (out / "whl" / "cpu" / dep / "index.html").is_file(), dep
        # Re-run: nothing fetched.
        again = subprocess.run([sys.executable, "-m", "torchdepot", "mirror", "--spec", str(spec), "--out", str(out)],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert again.returncode == 0 and "0 downloaded, 11 already present" in again.stdout, again.stdout

    # Upstreams are gone: only the mirror serves now.
    with Server(out) as m:
        py = make_venv(tmp_path / "venv")
        inst = run([py, "-m", "pip", "install", "--index-url", f"{m.url}/whl/cpu", "torch"], timeout=900)
        assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]
        check = run([py, "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"], timeout=300)
        assert check.returncode == 0, check.stderr[-2000:]
        assert check.stdout.split() == [f"{TORCH_VERSION}+cpu", "False"]
    # Relative links work over file:// too.
    dl = run([py, "-m", "pip", "download", "--no-deps", "-d", tmp_path / "dl", "--index-url",
              (out / "whl" / "cpu").as_uri(), "filelock"], timeout=300)
    assert dl.returncode == 0, dl.stderr[-1000:]
    assert list((tmp_path / "dl").glob("filelock-*.whl"))
