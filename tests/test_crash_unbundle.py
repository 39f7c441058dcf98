"""SIGKILL unbundle's commit at every step (issue 22 item 7): after each kill the mirror is the
old one or the new one (leftovers aside: ``verify-mirror`` exits 0, no orphan, no dangling
link, no bad JSON page), and both the next unbundle and ``verify-mirror --repair`` converge.

Before the commit was journaled, 16 of 30 kills left the mirror NOT OK and ``--repair``
could not clear it. As in tests/test_crash_lifecycle.py, the real CLI runs in a child
(``KILLER``) that SIGKILLs itself at a named point: ``step:<k>:<before|after>`` around the
k-th step of the commit (each file moved in, the manifest widened, the ``whl`` swap, the
landing page, the manifest), or on entry to a named function.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mirror_fixture import CPU_ID, make_mirror
from tests.test_bundle import mirror_view
from torchdepot.ship.bundle import plan_bundle, unbundle, write_bundle
from torchdepot.store import publication
from torchdepot.sync.check import verify_mirror

ROOT = Path(__file__).resolve().parent.parent

KILLER = r'''
import os, signal, sys, importlib
point, args = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

ub = importlib.import_module("torchdepot.ship.bundle.unbundle")  # the package exports a function of that name
if point.startswith("step:"):
    _, k, when = point.split(":")
    k, seen = int(k), [0]
    def hook(real):
        def step(*a, **kw):
            seen[0] += 1
            if seen[0] == k and when == "before":
                die()
            out = real(*a, **kw)
            if seen[0] == k and when == "after":
                die()
            return out
        return step
    ub._Commit.put, ub._Commit.link = hook(ub._Commit.put), hook(ub._Commit.link)
else:
    modname, func = point.split(":")
    mod = importlib.import_module(modname)
    real = getattr(mod, func)
    def wrapped(*a, **k):
        out = real(*a, **k)
        die()
    setattr(mod, func, wrapped)
    if modname == "torchdepot.store.publication":
        ub.pub = mod
from torchdepot.cli import main
sys.argv = ["torchdepot", *args]
main()
'''


def run_killed(point: str, bundle: Path, dest: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHDEPOT_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", KILLER, point, "unbundle", str(bundle), "--to", str(dest)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    return done.returncode


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A source mirror, its full bundle, a CPU-only bundle, and the two expected results."""
    tmp = tmp_path_factory.mktemp("crash-unbundle")
    src = tmp / "src" / "mirror"
    make_mirror(src)
    full, _ = write_bundle(plan_bundle(src, None, src.parent / "envs", None), tmp / "full.tar")
    cpu, _ = write_bundle(plan_bundle(src, [CPU_ID], src.parent / "envs", None), tmp / "cpu.tar")
    base = tmp / "base"  # an existing mirror holding the CPU target only
    unbundle(cpu[0], base)
    merged = tmp / "merged"
    copy_tree(base, merged)
    unbundle(full[0], merged)
    fresh = tmp / "fresh"
    unbundle(full[0], fresh)
    return {"tmp": tmp, "full": full[0], "base": base, "merged": merged, "fresh": fresh}


def count_steps(setup: dict[str, Path], into: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many commit steps the uninterrupted run takes (counted in-process on a copy)."""
    ub = importlib.import_module("torchdepot.ship.bundle.unbundle")

    dest = setup["tmp"] / f"count-{into}"
    if into == "base":
        copy_tree(setup["base"], dest)
    seen = [0]

    def counting(real):
        def step(*a, **kw):
            seen[0] += 1
            return real(*a, **kw)
        return step
    monkeypatch.setattr(ub._Commit, "put", counting(ub._Commit.put))
    monkeypatch.setattr(ub._Commit, "link", counting(ub._Commit.link))
    unbundle(setup["full"], dest)
    monkeypatch.undo()
    return seen[0]


def state_is_old_or_new(dest: Path, old: Path | None, new: Path) -> None:
    if not (dest / "manifest.json").exists():
        assert old is None  # a fresh destination before its first manifest: nothing is served
        assert not (dest / "whl").exists()
        assert not (dest / "index.html").exists()
        return
    report = verify_mirror(dest)
    bad = [p for p in report.unrepaired if p.kind not in ("partial", "temp", "staging", "staged")]
    assert report.ok, bad
    assert not [p for p in report.problems if p.kind == "orphan"]


@pytest.mark.e2e
@pytest.mark.parametrize("into", ["base", "fresh"])
def test_a_kill_at_every_commit_step_leaves_old_or_new_and_converges(setup, into, monkeypatch):
    old = setup["base"] if into == "base" else None
    new = setup["merged"] if into == "base" else setup["fresh"]
    steps = count_steps(setup, into, monkeypatch)
    assert steps >= 5  # files, the widened manifest, the whl swap, landing, manifest
    points = [f"step:{k}:{when}" for k in range(1, steps + 1) for when in ("before", "after")]
    points += ["torchdepot.store.publication:record", "torchdepot.ship.bundle.unbundle:_verify"]
    for i, point in enumerate(points):
        dest = setup["tmp"] / f"{into}-{i}"
        if old is not None:
            copy_tree(old, dest)
        code = run_killed(point, setup["full"], dest)
        assert code == -signal.SIGKILL, (point, code)
        state_is_old_or_new(dest, old, new)
        if i % 2 == 0:  # the next run converges
            assert run_killed("step:100000:after", setup["full"], dest) == 0, point
        else:  # or verify-mirror --repair does, and then the next run
            if (dest / "manifest.json").exists():
                report = verify_mirror(dest, repair=True)
                assert report.ok, (point, report.unrepaired)
                assert not report.unrepaired, (point, report.unrepaired)
            assert run_killed("step:100000:after", setup["full"], dest) == 0, point
        report = verify_mirror(dest)
        assert report.ok, (point, report.problems)
        assert not report.problems, (point, report.problems)
        assert mirror_view(dest) == mirror_view(new), point
        assert not publication.load_journal(dest), point
