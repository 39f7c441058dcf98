"""SIGKILL the mirror lifecycle's removals (`--prune`, `keep: 1`) and a PEP 825 variants.json
re-publication at exact points; after every kill the LIVE mirror passes `torchdepot verify-mirror`
(exit 0, no orphan) and the next run converges (docs/publication.md, docs/lifecycle.md).

The removal window (manifest committed, files not yet deleted) lasts microseconds, so the time
and byte triggers of tests/test_crash.py cannot hit it. Here the real CLI runs in a child process
(``KILLER``) that SIGKILLs itself when the named step of ``torchdepot.sync`` is reached: the
process dies exactly as from an outside ``kill -9`` (no handler, no cleanup runs), at a point
the test names. A few kills at wall-clock offsets cover the rest of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_lifecycle import CPU, CU118, ROOT, cpu_spec, site, wheels  # noqa: F401 (fixtures)
from tests.venvs import hermetic_env
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.store.layout import PUBLISH_JOURNAL
from torchdepot.sync.check import verify_mirror

pytestmark = pytest.mark.slow  # SIGKILL suites: dozens of real CLI runs

# Runs `torchdepot <args>` and SIGKILLs itself at POINT (argv[1]): "<module>:<function>[:<when>]"
# kills on entry ("enter", default) or on return ("exit") of that function; "unlink:<k>" after
# the k-th file the lifecycle's removal step deletes, "rmtree" when it is about to remove a folder.
KILLER = r'''
import os, pathlib, signal, sys, importlib
point, args = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point.startswith(("unlink:", "rmtree")):  # inside the lifecycle's removal step only
    import shutil
    import torchdepot.sync.pip as pip
    left, inside = [int(point.split(":")[1]) if ":" in point else 0], [False]
    real_unlink, real_rmtree, real_remove = pathlib.Path.unlink, shutil.rmtree, pip._remove
    def unlink(self, *a, **k):
        real_unlink(self, *a, **k)
        if inside[0]:
            left[0] -= 1
            if left[0] == 0:
                die()
    def rmtree(*a, **k):
        if inside[0] and point == "rmtree":
            die()
        return real_rmtree(*a, **k)
    def remove(*a, **k):
        inside[0] = True
        return real_remove(*a, **k)
    pathlib.Path.unlink, shutil.rmtree, pip._remove = unlink, rmtree, remove
else:
    modname, func, *when = point.split(":")
    mod = importlib.import_module(modname)
    real = getattr(mod, func)
    def wrapped(*a, **k):
        if when != ["exit"]:
            die()
        out = real(*a, **k)
        die()
        return out
    setattr(mod, func, wrapped)
from torchdepot.cli import main
sys.argv = ["torchdepot", *args]
main()
'''

P = "torchdepot.sync.pip"
# Kill points of a run that removes files, in run order. "journaled": the removals are in the
# journal, the manifest not yet committed; "committed" .. "checking": the removal window.
POINTS = {
    "index swapped": "torchdepot.sync.pipindex:publish:exit",
    "journaled": f"{P}:write_landing",
    "committed": f"{P}:_remove",
    "1 removed": "unlink:1",
    "2 removed": "unlink:2",
    "files removed": "rmtree",  # the pruned target's folder is next
    "checking": f"{P}:_verify_published",
}


def _env(tmp: Path, b: str) -> dict[str, str]:
    return hermetic_env(PIP_INDEX_URL=b, UV_CACHE_DIR=str(tmp / "uv-cache"), TORCHDEPOT_NO_PROGRESS="1",
                        PYTHONPATH=str(ROOT))


def _run(tmp: Path, b: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchdepot", *args], capture_output=True, text=True,
                          env=_env(tmp, b), cwd=tmp, timeout=300)


def _killed_at(tmp: Path, b: str, point: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", KILLER, point, *args], capture_output=True, text=True,
                          env=_env(tmp, b), cwd=tmp, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)
    return proc


def _killed_after(tmp: Path, b: str, seconds: float, *args: str) -> bool:
    """Start a run, SIGKILL it ``seconds`` in; False when it finished first."""
    proc = subprocess.Popen([sys.executable, "-m", "torchdepot", *args], env=_env(tmp, b), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _live_verify(tmp: Path, b: str, m: Path, label: str) -> str:
    """`torchdepot verify-mirror` on the live mirror: exit 0, no orphan, no unknown entry."""
    proc = _run(tmp, b, "verify-mirror", str(m), "--json")
    assert proc.returncode == 0, (label, proc.stdout, proc.stderr)
    kinds = [p["kind"] for p in json.loads(proc.stdout)["problems"]]
    assert not {"orphan", "unknown", "missing", "corrupt", "dangling-link"} & set(kinds), (label, proc.stdout)
    return ",".join(sorted(set(kinds))) or "clean"


def _unlisted(m: Path, paths: list[str]) -> list[str]:
    """Those of ``paths`` still on disk that the committed manifest no longer lists."""
    listed = mf.load(m).by_path()
    return [p for p in paths if (m / p).exists() and p not in listed]


def _converged(m: Path) -> None:
    report = verify_mirror(m)  # a full re-hash
    assert report.ok, report.problems
    assert report.problems == [], report.problems
    assert not (m / PUBLISH_JOURNAL).exists(), publication.load_journal(m)


def _base(tmp: Path, b: str, name: str, *runs: tuple[str, ...]) -> Path:
    m = tmp / name
    for args in runs:
        proc = _run(tmp, b, *args, "--out", str(m))
        assert proc.returncode == 0, proc.stderr
    return m


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_sigkill_in_the_prune_window_leaves_live_mirror_verify_clean(site):  # noqa: F811 - the fixture imported above
    a, b, tmp, _layout = site
    spec = cpu_spec(tmp, a)
    base = _base(tmp, b, "base", ("mirror", "--spec", str(_cu118_spec(tmp, a))), ("mirror", "--spec", str(spec)))
    gone = [f.path for f in mf.load(base).files if "+cu118" in f.path]
    assert gone
    assert (base / "targets" / CU118).is_dir()
    prune = ("mirror", "--spec", str(spec), "--prune")
    seen = {}
    for label, point in POINTS.items():
        m = _copy(base, tmp / f"prune-{label.replace(' ', '-')}")
        _killed_at(tmp, b, point, *prune, "--out", str(m))
        seen[label] = _live_verify(tmp, b, m, label)
        # in the removal window the unlisted files still there are the journal's (staged), not orphans
        assert ("staged" in seen[label]) == bool(_unlisted(m, gone)), (label, seen[label])
        if label in ("committed", "1 removed", "2 removed", "files removed"):
            assert CU118 not in {t.id for t in mf.load(m).targets}
            assert _unlisted(m, gone) is not None
        proc = _run(tmp, b, *prune, "--out", str(m))
        assert proc.returncode == 0, (label, proc.stderr)
        _converged(m)
        assert not any((m / p).exists() for p in gone), label
        assert not (m / "targets" / CU118).exists(), label
        assert {t.id for t in mf.load(m).targets} == {CPU}
    print(f"--prune kill points -> live verify-mirror: {seen}")
    assert len(seen) == len(POINTS)


def _cu118_spec(tmp: Path, a: str) -> Path:
    path = tmp / "cu118.yaml"
    path.write_text("\n".join(["accelerators: [cu118]", "pythons: ['3.11']", "platforms: [linux-x86_64]",
                               f"upstreams: [{a}]", "extra_packages: [numpy]"]) + "\n")
    return path


def test_sigkill_in_the_keep_window_leaves_live_mirror_verify_clean(site, wheels):  # noqa: F811
    a, b, tmp, layout = site
    keep1 = cpu_spec(tmp, a, keep=1).rename(tmp / "keep1.yaml")
    spec = cpu_spec(tmp, a)
    base = _base(tmp, b, "base", ("mirror", "--spec", str(spec)))
    layout("cpu", wheels["cpu"] + wheels["cpu-new"])  # upstream upgrades torch: both stay without keep
    proc = _run(tmp, b, "mirror", "--spec", str(spec), "--out", str(base))
    assert proc.returncode == 0, proc.stderr
    old = [f.path for f in mf.load(base).files if "torch-2.13.0" in f.path]
    assert len(old) == 2
    assert sorted(r.torch for r in mf.load(base).releases) == ["2.13.0+cpu", "2.14.0+cpu"]
    run = ("mirror", "--spec", str(keep1))
    seen = {}
    points = {k: v for k, v in POINTS.items() if k != "files removed"}  # no target folder goes here
    for label, point in points.items():
        m = _copy(base, tmp / f"keep-{label.replace(' ', '-')}")
        _killed_at(tmp, b, point, *run, "--out", str(m))
        seen[label] = _live_verify(tmp, b, m, label)
        assert ("staged" in seen[label]) == bool(_unlisted(m, old)), (label, seen[label])
        if label in ("committed", "1 removed"):
            assert _unlisted(m, old), label  # the window was hit: the manifest no longer lists them
        proc = _run(tmp, b, *run, "--out", str(m))
        assert proc.returncode == 0, (label, proc.stderr)
        _converged(m)
        assert not any((m / p).exists() for p in old), label
        assert [r.torch for r in mf.load(m).releases] == ["2.14.0+cpu"]
    # and at wall-clock offsets across the whole run (crawl, resolve, publish, removal): offsets
    # are fractions of one unkilled run measured here, each on a fresh copy, since a run that
    # completed leaves later runs no-ops that no fixed offset lands in
    started = time.monotonic()
    proc = _run(tmp, b, *run, "--out", str(_copy(base, tmp / "keep-measured")))
    whole = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    timed = []
    for fraction in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        m = _copy(base, tmp / f"keep-timed-{fraction}")
        if _killed_after(tmp, b, fraction * whole, *run, "--out", str(m)):
            timed.append(fraction)
            seen[f"{fraction * whole:.2f}s"] = _live_verify(tmp, b, m, f"{fraction * whole:.2f}s")
        proc = _run(tmp, b, *run, "--out", str(m))
        assert proc.returncode == 0, proc.stderr
        _converged(m)
        assert not any((m / p).exists() for p in old)
    print(f"keep: 1 kill points -> live verify-mirror: {seen} (whole run {whole:.2f} s)")
    assert len(timed) >= 2, (timed, whole)


def test_a_killed_prune_then_a_plain_sync_keeps_the_target_and_forgets_the_journal(site):  # noqa: F811 - the fixture imported above
    """A run killed after journaling but before its commit, followed by a run that does not prune:
    nothing is lost, and the journal entries of what stayed are dropped."""
    a, b, tmp, _layout = site
    spec = cpu_spec(tmp, a)
    m = _base(tmp, b, "M", ("mirror", "--spec", str(_cu118_spec(tmp, a))), ("mirror", "--spec", str(spec)))
    before = {f.path: f.sha256 for f in mf.load(m).files}
    _killed_at(tmp, b, POINTS["journaled"], "mirror", "--spec", str(spec), "--prune", "--out", str(m))
    assert f"targets/{CU118}" in publication.load_journal(m)
    _live_verify(tmp, b, m, "journaled")
    proc = _run(tmp, b, "mirror", "--spec", str(spec), "--out", str(m))
    assert proc.returncode == 0, proc.stderr
    _converged(m)
    assert {f.path: f.sha256 for f in mf.load(m).files} == before
    assert (m / "targets" / CU118 / "pylock.toml").is_file()


@pytest.mark.parametrize("when", ["written", "widened"])
def test_sigkill_after_a_changed_variants_json_is_written_leaves_no_orphan(tmp_path, when):
    """A re-sync where upstream changed torch's variants.json: killed after the new file is
    written (before any manifest lists it), the live mirror is verify-clean; the next run converges."""
    from tests.httpserver import Server
    from tests.mirror_upstream import make_wheel, sha256
    from tests.test_variants import (  # noqa: F401
        PRIORITIES,
        SCHEMA,
        VARIANTS,
        _anchor,
        _page,
        variant_wheel,
        write_variants_json,
    )
    from torchdepot.sources.variants import parse_variants_json

    root = tmp_path / "up"
    torch = root / "whl" / "variant" / "torch"
    variant_wheel(torch, "null", ("filelock",))
    write_variants_json(root, {"$schema": SCHEMA, "default-priorities": PRIORITIES, "variants": VARIANTS})
    w = make_wheel(root / "simple" / "filelock", "filelock", "3.20.0")
    (root / "simple" / "filelock" / "index.html").write_text(_page([_anchor(w.name, w.name, sha256(w))]))
    with Server(root) as s:
        b = f"{s.url}/simple"
        spec = tmp_path / "v.yaml"
        spec.write_text("\n".join(["accelerators: [cpu]", "pythons: ['3.11']", "platforms: [linux-x86_64]",
                                   "extra_packages: []", "channel: variant", f"upstreams: [{s.url}/whl]"]) + "\n")
        m = tmp_path / "M"
        assert _run(tmp_path, b, "mirror", "--spec", str(spec), "--out", str(m)).returncode == 0
        write_variants_json(root, {"$schema": SCHEMA, "default-priorities": {"namespace": ["nvidia", "intel"]},
                                   "variants": {**VARIANTS, "xpu": {"intel": {"device": ["xpu"]}}}})
        # the mirror holds only null: it stores upstream's file narrowed to that label
        narrowed = parse_variants_json((torch / "torch-2.10.0-variants.json").read_bytes(), "v").subset_text({"null"})
        new_sha = hashlib.sha256(narrowed.encode()).hexdigest()
        new_path = f"packages/torch/{new_sha[:16]}/torch-2.10.0-variants.json"
        point = ("torchdepot.sync.pipindex:publish_variants_json:exit" if when == "written"
                 else "torchdepot.sync.pipindex:publish")
        _killed_at(tmp_path, b, point, "mirror", "--spec", str(spec), "--out", str(m))
        assert (m / new_path).is_file()
        assert new_path in publication.load_journal(m)
        assert (new_path in mf.load(m).by_path()) == (when == "widened")
        _live_verify(tmp_path, b, m, when)
        proc = _run(tmp_path, b, "mirror", "--spec", str(spec), "--out", str(m))
        assert proc.returncode == 0, proc.stderr
        _converged(m)
        assert mf.load(m).by_path()[new_path].sha256 == new_sha
