"""End to end: the real torch-2.13.0+cpu wheel, a download.pytorch.org-shaped upstream on
loopback (dependency links absolute to a second server), ``torchdepot mirror`` in a
subprocess (the session's ``torch_mirror``, re-run here on a copy), the mirror served by a
third server, and a hermetic ``pip install --index-url <mirror>/whl/cpu torch`` into a
throwaway venv."""

from __future__ import annotations

import pytest

from tests.conftest import TORCH_VERSION
from tests.httpserver import Server
from tests.venvs import make_venv, run


@pytest.mark.e2e
def test_mirror_then_offline_pip_install(tmp_path, torch_wheel, torch_mirror):
    # The session's mirror run (tests/kit/torchmirror.py): a dead upstream first, then A.
    proc = torch_mirror.first_run
    assert proc.returncode == 0, proc.stderr
    assert f"upstream {torch_mirror.dead} unreachable" in proc.stderr
    assert "11 packages fetched: 11 downloaded" in proc.stdout, proc.stdout
    out = torch_mirror.copy(tmp_path / "mirror")  # the re-run below is this test's own
    wheel = out / "packages" / "torch" / torch_wheel.name
    assert wheel.stat().st_size == torch_wheel.stat().st_size
    page = (out / "whl" / "cpu" / "torch" / "index.html").read_text()
    assert "torch-2.13.0%2Bcpu" in page
    assert 'data-core-metadata="sha256=' in page
    for dep in ("numpy", "sympy", "filelock", "jinja2", "markupsafe"):
        assert (out / "whl" / "cpu" / dep / "index.html").is_file(), dep
    # Re-run: nothing fetched.
    again = torch_mirror.mirror(out)
    assert again.returncode == 0, again.stdout
    assert "0 downloaded, 11 already present" in again.stdout, again.stdout

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
