"""Landing page: content from the manifest, and a real render in headless Chromium
(served over 127.0.0.1 by torchdepot's own server); screenshot in test-artifacts/landing.png."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.mirror_fixture import CPU_ID, make_mirror
from torchdepot.cli import main
from torchdepot.ship.serve import make_server, server_url
from torchdepot.site.landing import PLACEHOLDER, render, write_landing
from torchdepot.store import manifest as mf

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("landing") / "mirror"
    make_mirror(root, envs=root / "envs")  # locks served with the mirror (as unbundle lays them out)
    write_landing(root, mf.load(root))
    return root


def test_page_without_js_holds_matrix_commands_and_drivers(mirror):
    page = (mirror / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for tid in (CPU_ID, "cu126-py311-linux-x86_64", "cu118-py310-windows-amd64"):
        assert f'data-variant="{tid}"' in page
        assert f'id="{tid}"' in page
    plain = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert f"pip install --index-url {PLACEHOLDER}/whl/cu118 torch==2.7.0+cu118" in plain
    assert f"pip install --index-url {PLACEHOLDER}/whl/cpu torch==2.13.0+cpu" in plain
    assert f"conda install --override-channels -c {PLACEHOLDER}/conda/pytorch-fixture pytorch=2.13.0=cpu_py311_0" in plain
    assert f"torchdepot config pip --url {PLACEHOLDER} --variant cu126" in plain
    assert f"-r {PLACEHOLDER}/envs/{CPU_ID}/requirements.lock" in plain
    assert "≥ 525.60.13" in plain
    assert "≥ 528.33" in plain
    assert "≥ 450.80.02" in plain
    assert "≥ 452.39" in plain
    # links are relative (work under any base), none absolute
    assert 'href="whl/cpu/"' in page
    assert 'href="http' not in page
    assert 'href="/' not in page


def test_empty_mirror_and_escaping(tmp_path):
    page = render(mf.Manifest(), tmp_path)
    assert "no torch builds yet" in page
    t = mf.Target(id="cpu-py311-linux-x86_64", kind="pip", accelerator="cpu", python="3.11", platform="linux-x86_64",
                  packages=(mf.TargetPackage(name="torch", version="2.0<script>", path="packages/torch/x.whl"),),
                  index="whl/cpu")
    page = render(mf.Manifest(files=[mf.FileEntry("packages/torch/x.whl", "0" * 64, 5, "wheel")], targets=[t]), tmp_path)
    assert "2.0<script>" not in page
    assert "2.0&lt;script&gt;" in page


def test_cli_landing(tmp_path):
    root = tmp_path / "m"
    make_mirror(root)
    (root / "index.html").unlink(missing_ok=True)
    r = CliRunner().invoke(main, ["landing", "--mirror", str(root)])
    assert r.exit_code == 0, r.output
    assert "cu126-py311-linux-x86_64" in (root / "index.html").read_text()
    r = CliRunner().invoke(main, ["landing", "--mirror", str(tmp_path / "nope")])
    assert r.exit_code == 1
    assert "no manifest" in r.output


def _chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    assert exe, "chromium not installed: apt-get install -y chromium (.ci/run installs it)"
    return exe


@pytest.mark.slow
def test_renders_in_headless_chromium(mirror, tmp_path):
    exe = _chromium()
    httpd = make_server(mirror, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = server_url(httpd) + "/"
        common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
        env = {**os.environ, "HOME": str(tmp_path)}
        dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=90, env=env)
        assert dom.returncode == 0, dom.stderr[-2000:]
        out = dom.stdout
        assert 'id="matrix"' in out
        for tid in (CPU_ID, "cu126-py311-linux-x86_64", "cu118-py310-windows-amd64"):
            assert f'data-variant="{tid}"' in out
        # the script ran: commands carry this server's address instead of the placeholder
        base = server_url(httpd)
        plain = html.unescape(re.sub(r"<[^>]+>", "", out))
        assert f"pip install --index-url {base}/whl/cu126 torch==2.13.0+cu126" in plain
        assert f"conda install --override-channels -c {base}/conda/pytorch-fixture pytorch=2.13.0" in plain
        assert PLACEHOLDER not in plain.split("Install", 1)[1].split("(function", 1)[0]

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "landing.png"
        shot.unlink(missing_ok=True)
        proc = subprocess.run(common + [f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url],
                              capture_output=True, text=True, timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert shot.is_file()
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000
    finally:
        httpd.shutdown()
        httpd.server_close()
