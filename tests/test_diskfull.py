"""A full disk (issue 22 item 13): ``verify-mirror`` runs on it (a read-only check needs no
space), "no space left on device" names the file, and unbundle's disk-full error is one
line that leaves the destination as it was.

The disk is a 1 MiB tmpfs mounted in a private mount namespace (``unshare --mount``, with
``--map-root-user`` when not root), so nothing outside the test sees it and it goes away
with the process; no privileges beyond an unprivileged user namespace are needed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mirror_fixture import make_mirror
from torchdepot.ship.bundle import plan_bundle, write_bundle

ROOT = Path(__file__).resolve().parent.parent


def in_tiny_disk(tmp_path: Path, body: str, size: str = "1m") -> Path:
    """Run shell ``body`` with ``$DISK`` a fresh tmpfs of ``size``; returns the dir of results."""
    disk, res = tmp_path / "disk", tmp_path / "results"
    disk.mkdir()
    res.mkdir()
    ns = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    script = (f"set -u\nDISK={shlex.quote(str(disk))}\nRES={shlex.quote(str(res))}\n"
              f"TD='{sys.executable} -m torchdepot'\n"
              f'mount -t tmpfs -o size={size} tmpfs "$DISK"\n{body}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHDEPOT_NO_PROGRESS": "1"}
    done = subprocess.run([*ns, "sh", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return res


WRITE = ("import sys, pathlib; from torchdepot.store.fsutil import atomic_write_bytes; "
         "atomic_write_bytes(pathlib.Path(sys.argv[1]), bytes(2 << 20))")
FILL = 'dd if=/dev/zero of="$DISK/filler" bs=4096 2>/dev/null; true\n'


def out(res: Path, name: str) -> tuple[int, str, str]:
    return (int((res / f"{name}.rc").read_text()), (res / f"{name}.out").read_text(),
            (res / f"{name}.err").read_text())


def run_as(name: str, cmd: str) -> str:
    return f'{cmd} > "$RES/{name}.out" 2> "$RES/{name}.err"; echo $? > "$RES/{name}.rc"\n'


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src" / "mirror"
    make_mirror(root)
    shutil.rmtree(root / ".torchdepot" / "fixture-build", ignore_errors=True)
    return root


def test_verify_mirror_runs_on_a_full_disk(src, tmp_path):
    (src / ".torchdepot.lock").unlink(missing_ok=True)  # not even the lock file may be needed
    res = in_tiny_disk(tmp_path, f'cp -a {shlex.quote(str(src))} "$DISK/mirror"\n' + FILL
                       + 'echo x > "$DISK/probe" 2>/dev/null && echo "disk not full" > "$RES/notfull"\n'
                       + run_as("verify", '$TD verify-mirror "$DISK/mirror"'))
    assert not (res / "notfull").exists()
    rc, stdout, stderr = out(res, "verify")
    assert rc == 0, stderr
    assert "ok" in (stdout + stderr).lower()


def test_no_space_names_the_file_and_unbundle_is_one_line(src, tmp_path):
    parts, _ = write_bundle(plan_bundle(src, None, None, None), tmp_path / "b.tar")
    bundle = shlex.quote(str(parts[0]))
    # an existing mirror on the full disk, and a new one: both refused in one line, nothing published
    res = in_tiny_disk(tmp_path, f'cp -a {shlex.quote(str(src))} "$DISK/mirror"\n'
                       + 'rm -f "$DISK/mirror/manifest.json" "$DISK/mirror/whl"; rm -rf "$DISK/mirror/.publish"\n'
                       + 'mkdir "$DISK/fresh"\n' + FILL
                       + 'find "$DISK/mirror" -type f ! -path "*/.torchdepot*" | sort > "$RES/before"\n'
                       + run_as("into-mirror", f'$TD unbundle {bundle} --to "$DISK/mirror"')
                       + 'find "$DISK/mirror" -type f ! -path "*/.torchdepot*" | sort > "$RES/after"\n'
                       + 'rm -f "$DISK/filler"; dd if=/dev/zero of="$DISK/filler" bs=4096 count=236 2>/dev/null\n'
                       + run_as("fresh", f'$TD unbundle {bundle} --to "$DISK/fresh"')
                       + 'ls -A "$DISK/fresh" > "$RES/fresh-ls"\n'
                       + run_as("write", f'{sys.executable} -c "{WRITE}" "$DISK/x.bin"'))
    for name in ("into-mirror", "fresh"):
        rc, _stdout, stderr = out(res, name)
        assert rc == 1, stderr
        assert stderr.count("\n") == 1, stderr
        assert len(stderr) < 300, stderr
        assert "no space left on device" in stderr.lower(), stderr
        assert "[" not in stderr, stderr  # not a Python list
        assert "Errno" not in stderr, stderr
        assert str(tmp_path / "disk") in stderr, stderr  # names the file it could not write
    assert (res / "before").read_text() == (res / "after").read_text()
    assert "manifest.json" not in (res / "fresh-ls").read_text()
    rc, _stdout, stderr = out(res, "write")
    assert rc == 1
    assert "x.bin: no space left on device" in stderr, stderr
