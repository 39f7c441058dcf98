"""The air-gap round trip with the real torch-2.13.0+cpu wheel:

site A: ``torchdepot mirror`` (from loopback upstreams shaped like download.pytorch.org)
-> ``torchdepot lock`` -> ``torchdepot bundle --zstd --split`` -> (the parts are carried over)
site B, an empty dir: ``torchdepot unbundle`` -> ``torchdepot serve`` -> a fresh venv installs
the CPU lock with ``pip --require-hashes`` through the served mirror, and torch imports.
Tampering one byte of a bundle: unbundle fails naming the file and publishes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import TORCH_VERSION
from tests.kit.cli import ROOT, td
from tests.venvs import hermetic_env, make_venv, run

CPU = "cpu-py311-linux-x86_64"


def visible(root: Path) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if not f.startswith(".")]
    return sorted(out)


@pytest.mark.e2e
def test_mirror_bundle_unbundle_serve_install(tmp_path, torch_wheel, torch_mirror):
    site_a, site_b, usb = tmp_path / "site-a", tmp_path / "site-b", tmp_path / "usb"
    for d in (site_a, usb):
        d.mkdir(parents=True)
    mirror, envs = torch_mirror.root, site_a / "envs"  # the session's `torchdepot mirror` run
    proc = torch_mirror.first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = td("lock", "--mirror", mirror, "--out", envs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lock_a = envs / CPU / "requirements.lock"
    assert lock_a.is_file()
    assert "--hash=sha256:" in lock_a.read_text()

    # site A -> media: zstd, split like a size-limited stick
    proc = td("bundle", "--mirror", mirror, "--envs", envs, "--targets", CPU, "--zstd", "--split", "64M",
              "--out", usb / "torch-cpu.tar.zst")
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted(usb.glob("torch-cpu.tar.zst.*"))
    assert len(parts) >= 2
    assert all(p.stat().st_size <= 64 * 1024 * 1024 for p in parts)

    # site B: an empty directory on "another machine"; the upstreams are gone
    dest = site_b / "mirror"
    proc = td("unbundle", usb / "torch-cpu.tar.zst", "--to", dest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (dest / "packages" / "torch" / torch_wheel.name).stat().st_size == torch_wheel.stat().st_size
    assert (dest / "envs" / CPU / "requirements.lock").read_bytes() == lock_a.read_bytes()
    assert (dest / "index.html").is_file()
    assert CPU in (dest / "index.html").read_text()

    server = subprocess.Popen([sys.executable, "-m", "torchdepot", "serve", "--root", dest, "--port", "0", "--quiet"],
                              stdout=subprocess.PIPE, text=True, env=hermetic_env(), cwd=ROOT)
    try:
        line = server.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0].rstrip("/")
        py = make_venv(site_b / "venv")
        inst = run([py, "-m", "pip", "install", "--no-cache-dir", "--require-hashes", "--no-deps",
                    "-r", dest / "envs" / CPU / "requirements.lock"],
                   env=hermetic_env(TORCHDEPOT_MIRROR=url), timeout=900)
        assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]
        check = run([py, "-c", "import torch, numpy; print(torch.__version__, torch.cuda.is_available(), "
                               "torch.from_numpy(numpy.ones(3)).sum().item())"], timeout=300)
        assert check.returncode == 0, check.stderr[-2000:]
        assert check.stdout.split() == [f"{TORCH_VERSION}+cpu", "False", "3.0"]
    finally:
        server.terminate()
        server.wait(10)

    # tampering one byte: named, and nothing becomes visible at the destination
    plain = usb / "plain.tar"
    proc = td("bundle", "--mirror", mirror, "--envs", envs, "--targets", CPU, "--out", plain)
    assert proc.returncode == 0, proc.stderr[-3000:]
    member = f"packages/torch/{torch_wheel.name}"
    with tarfile.open(plain) as tar:
        offset = tar.getmember(member).offset_data + 12_345_678
    with open(plain, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x20]))
    fresh = site_b / "fresh"
    proc = td("unbundle", plain, "--to", fresh)
    assert proc.returncode == 1
    assert f"torchdepot: error: {member}: sha256" in proc.stderr
    assert "nothing published" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert visible(fresh) == []
