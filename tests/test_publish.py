"""torchdepot publish through the real rclone: upload order (observed by a logging wrapper
around rclone), an rclone-config remote, and pip installing from the published copy."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.mirror_fixture import make_mirror
from tests.venvs import make_venv, run
from torchdepot.cli import main
from torchdepot.ship.serve import make_server, server_url
from torchdepot.site.landing import write_landing
from torchdepot.store import manifest as mf


def _rclone() -> str:
    exe = shutil.which("rclone") or ("/usr/bin/rclone" if os.path.exists("/usr/bin/rclone") else None)
    assert exe, "rclone not installed: apt-get install -y rclone (.ci/run installs it)"
    return exe


@pytest.fixture
def mirror(tmp_path) -> Path:
    root = tmp_path / "mirror"
    make_mirror(root, envs=root / "envs")
    write_landing(root, mf.load(root))
    return root


@pytest.fixture
def wrapped(tmp_path, monkeypatch):
    """rclone on PATH -> a wrapper logging each call and what the destination held before it."""
    real = _rclone()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "rclone-calls.jsonl"
    wrapper = bindir / "rclone"
    wrapper.write_text(f"""#!{sys.executable}
import json, os, sys
dest = os.environ.get("PUBLISH_DEST_DIR", "")
seen = sorted(os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs) if dest else []
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "dest_before": seen}}) + "\\n")
os.execv({real!r}, [{real!r}] + sys.argv[1:])
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "rclone.conf"))
    return log


def test_upload_order_files_first_indexes_last(mirror, tmp_path, wrapped, monkeypatch):
    dest = tmp_path / "published"
    monkeypatch.setenv("PUBLISH_DEST_DIR", str(dest))
    r = CliRunner().invoke(main, ["publish", "--mirror", str(mirror), "--to", str(dest)])
    assert r.exit_code == 0, r.output
    calls = [json.loads(line) for line in wrapped.read_text().splitlines()]
    steps = [c["argv"][0] for c in calls]
    assert steps == ["copy", "copy", "copy", "copyto", "copyto"]
    packages = {f.path for f in mf.load(mirror).files}
    before_indexes = set(calls[2]["dest_before"])
    assert packages <= before_indexes, "every package is up before any index"
    assert not [p for p in before_indexes if p.startswith("whl/") or "repodata" in p]
    before_manifest = set(calls[3]["dest_before"])
    assert "whl/cpu/torch/index.html" in before_manifest
    assert "conda/pytorch-fixture/linux-64/repodata.json" in before_manifest
    assert "manifest.json" not in before_manifest
    assert "index.html" not in before_manifest
    assert calls[3]["argv"][2].endswith("manifest.json")
    assert calls[4]["argv"][2].endswith("index.html")
    assert "manifest.json" in calls[4]["dest_before"]
    # a real tree: whl/ is files (no symlink), state dirs stay home
    assert (dest / "whl").is_dir()
    assert not (dest / "whl").is_symlink()
    assert not (dest / ".publish").exists()
    assert not (dest / ".torchdepot").exists()
    assert (dest / "manifest.json").read_bytes() == (mirror / "manifest.json").read_bytes()


def test_dry_run_copies_nothing(mirror, tmp_path, wrapped):
    r = CliRunner().invoke(main, ["publish", "--mirror", str(mirror), "--to", str(tmp_path / "d"), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["packages", "locks", "indexes", "manifest", "landing"]
    assert not (tmp_path / "d").exists()
    assert not wrapped.exists()


def test_missing_rclone_and_bad_mirror(mirror, tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["publish", "--mirror", str(tmp_path / "nope"), "--to", str(tmp_path / "d"), "--dry-run"])
    assert r.exit_code == 1
    assert "no manifest" in r.output
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = CliRunner().invoke(main, ["publish", "--mirror", str(mirror), "--to", str(tmp_path / "d")])
    assert r.exit_code == 1
    assert "rclone not found" in r.output


def test_failed_step_stops_before_indexes(mirror, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "rclone"
    fake.write_text("#!/bin/sh\necho 'ERROR : permission denied' >&2\nexit 7\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = CliRunner().invoke(main, ["publish", "--mirror", str(mirror), "--to", str(tmp_path / "d")])
    assert r.exit_code == 1
    assert "step 'packages' failed (exit 7)" in r.output
    assert "permission denied" in r.output


@pytest.mark.slow
def test_rclone_config_remote_then_pip_install_from_published(mirror, tmp_path, wrapped):
    (tmp_path / "rclone.conf").write_text("[labstore]\ntype = local\n")
    dest_dir = tmp_path / "store" / "torch"
    r = CliRunner().invoke(main, ["publish", "--mirror", str(mirror), "--to", f"labstore:{dest_dir}"])
    assert r.exit_code == 0, r.output
    assert (dest_dir / "whl" / "cpu" / "torch" / "index.html").is_file()
    httpd = make_server(dest_dir, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        py = make_venv(tmp_path / "venv")
        proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--index-url", f"{server_url(httpd)}/whl/cpu", "torch"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = run([py, "-c", "import torch; print(torch.__version__)"])
        assert proc.stdout.strip() == "2.13.0+cpu", proc.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
