"""Two writers on one mirror: the second waits (``--wait``) or exits with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import ROOT, mirror_cmd, mirror_env, populate, write_spec
from torchdepot.errors import LockedError
from torchdepot.store.fsutil import MirrorLock

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from torchdepot.store.fsutil import MirrorLock
with MirrorLock({out!r}):
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(out, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=str(out)), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once_with_a_clear_message(tmp_path):
    holder = _holder(tmp_path, 5)
    try:
        t = time.monotonic()
        with pytest.raises(LockedError) as exc, MirrorLock(tmp_path):
            pass
        assert time.monotonic() - t < 0.5
        msg = str(exc.value)
        assert "another torchdepot run is writing this mirror" in msg
        assert f"pid {holder.pid}" in msg
        assert "--wait" in msg
        assert "\n" not in msg
    finally:
        holder.kill()
        holder.wait()


def test_wait_times_out_then_succeeds_after_release(tmp_path):
    holder = _holder(tmp_path, 1.0)
    try:
        t = time.monotonic()
        with pytest.raises(LockedError, match="after waiting 0.3s"), MirrorLock(tmp_path, wait=0.3):
            pass
        assert 0.25 < time.monotonic() - t < 1.0
        with MirrorLock(tmp_path, wait=10):
            assert time.monotonic() - t > 0.9  # got it only once the holder let go (~1 s)
            assert (tmp_path / ".torchdepot.lock").read_text() == str(os.getpid())
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_never_wedges_the_mirror(tmp_path):
    holder = _holder(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with MirrorLock(tmp_path):  # the kernel dropped the flock with the process
        pass


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with MirrorLock(tmp_path), pytest.raises(LockedError), MirrorLock(tmp_path):
        pass


def test_two_cli_syncs_on_one_out_dir(tmp_path):
    """Run 1 holds the lock while downloading slowly; run 2 refuses at once; run 3 queues
    with --wait and finishes after run 1 without fetching anything again."""
    with FaultServer() as server:
        up = populate(server, payload=150_000)
        for path in up.paths.values():
            server.always(path, Fault("drip", rate=150_000))  # ~1 s per wheel, 2 at a time
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        env = mirror_env(up.url, tmp_path)
        first = subprocess.Popen(mirror_cmd(spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=str(tmp_path))
        try:
            deadline = time.monotonic() + 60
            while not any(server.hits[p] for p in up.paths.values()):  # run 1 is downloading
                assert time.monotonic() < deadline, first.communicate()
                assert first.poll() is None, first.communicate()
                time.sleep(0.05)
            second = subprocess.run(mirror_cmd(spec), env=env, capture_output=True, text=True, cwd=str(tmp_path),
                                    timeout=60)
            assert first.poll() is None, "run 1 finished too early for the test to mean anything"
            assert second.returncode == 1
            lines = second.stderr.strip().splitlines()
            assert lines[-1].startswith("torchdepot: error:")
            assert "another torchdepot run is writing" in lines[-1]
            assert f"pid {first.pid}" in lines[-1]
            third = subprocess.Popen(mirror_cmd(spec, "--wait", "120"), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
            out1, err1 = first.communicate(timeout=120)
            t_first_done = time.monotonic()
            assert first.returncode == 0, err1
            out3, err3 = third.communicate(timeout=120)
            assert third.returncode == 0, err3
            assert time.monotonic() >= t_first_done
            assert "5 already present" in out3
            assert "0 downloaded" in out3
        finally:
            for p in (first,):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        # every wheel went over the wire exactly once: never two writers fetching the same file
        assert all(n == 1 for n in up.wheel_hits().values()), up.wheel_hits()
    from torchdepot.sync.check import verify_mirror

    assert verify_mirror(out).ok


def test_verify_mirror_repair_waits_for_a_sync(tmp_path):
    (tmp_path / "manifest.json").write_text(
        '{"format": "torchdepot-manifest", "version": 1, "spec": {}, "files": [], "targets": []}')
    holder = _holder(tmp_path, 1.0)
    t = time.monotonic()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "torchdepot", "verify-mirror", str(tmp_path), "--repair"]
        now = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert now.returncode == 1
        assert "another torchdepot run" in now.stderr
        later = subprocess.run(cmd + ["--wait", "30"], capture_output=True, text=True, env=env, timeout=60)
        assert later.returncode == 0, later.stderr
        assert time.monotonic() - t > 0.9
    finally:
        holder.kill()
        holder.wait()
