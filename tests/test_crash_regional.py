"""SIGKILL a regional operator's sync (``releases:``, sync/regional.py) over a flat, hashless,
no-Range upstream (``python -m http.server``), where the selection reads wheels whole for their
METADATA and hands them to the run's fetcher at once (``sync/download.WholeReads``): their bytes
reach stored paths before the fetch step and long before the manifest is committed.

After a kill at the fetch step (whole reads stored, nothing fetched by the step yet) or after
it (every file stored, nothing published), the live mirror is what the last clean run left
(its manifest, index and files unchanged; what the killed run stored is journaled, so
``verify-mirror`` calls it staged, never an orphan), and the next run converges: its closing
check passes, the journal is gone and every stored wheel is one the manifest lists.
The child runs the same ``sync`` the tests of tests/test_regional_flat.py run, in its own
process, and kills itself at the named function (as ``kill -9`` would: no cleanup runs).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_regional_flat import _expected, _page_names, upstream  # noqa: F401 (the fixture)
from tests.venvs import hermetic_env
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.sync.check import verify_mirror

pytestmark = pytest.mark.slow  # several syncs in child processes

ROOT = Path(__file__).resolve().parent.parent
ACCS = ("cpu", "cu128")

# argv: POINT ("<module>:<function>", killed on entry; "-" for none) and the spec as JSON.
CHILD = r"""
import importlib, json, os, signal, sys
point, data = sys.argv[1], json.loads(sys.argv[2])
if point != "-":
    modname, func = point.split(":")
    mod = importlib.import_module(modname)
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(mod, func, die)
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.sync.pip import sync
res = sync(parse_spec(data, "regional.yaml"), client=make_session(HttpConfig(retries=0)), progress=False,
           echo=lambda line: print(line, file=sys.stderr), pip_sources=PipSources(no_index=True))
print(res.verify)
"""

WHOLE_READS_STORED = "torchdepot.sync.regional:_fetch"  # the selection's whole reads are in the store
ALL_STORED = "torchdepot.sync.regional:_release"  # the fetch step is done; nothing is published


def _run(tmp: Path, base: str, out: Path, point: str = "-", releases: str = "torch>=2.0") -> subprocess.CompletedProcess:
    data = {"releases": releases, "packages": ["torch"], "extra_packages": [], "accelerators": ["all"],
            "pythons": ["all"], "platforms": ["all"], "upstreams": [base], "out": str(out), "jobs": 4}
    return subprocess.run([sys.executable, "-c", CHILD, point, json.dumps(data)], capture_output=True, text=True,
                          env=hermetic_env(PYTHONPATH=str(ROOT), TORCHDEPOT_NO_PROGRESS="1"), cwd=tmp, timeout=300)


def _passed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]  # its closing check


def _stored_wheels(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*.whl")
            if not p.relative_to(out).as_posix().startswith((L.INDEX_LINK + "/", ".torchdepot/"))}


def _live(out: Path) -> set[str]:
    """The problem kinds of the live mirror, which must hold no orphan, nothing unknown, missing
    or corrupt (what a killed run stored is journaled: staged)."""
    kinds = {p.kind for p in verify_mirror(out).problems}
    assert not {"orphan", "unknown", "missing", "corrupt", "dangling-link"} & kinds, verify_mirror(out).problems
    return kinds


def _converged(out: Path) -> None:
    report = verify_mirror(out)
    assert report.ok, report.problems
    assert report.problems == [], report.problems
    assert not (out / L.PUBLISH_JOURNAL).exists(), publication.load_journal(out)
    listed = {e.path for e in mf.load(out).files if e.kind == "wheel"}
    assert _stored_wheels(out) <= listed, sorted(_stored_wheels(out) - listed)  # nothing the killed run left
    for acc in ACCS:
        assert _page_names(out, acc) == _expected(acc)


@pytest.mark.parametrize("point", [WHOLE_READS_STORED, ALL_STORED])
def test_a_killed_first_sync_leaves_nothing_the_next_one_trusts(upstream, tmp_path, point):  # noqa: F811
    up, _root = upstream
    out = tmp_path / "out"
    killed = _run(tmp_path, up.url + "/", out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stored = _stored_wheels(out)
    assert stored  # the whole reads (and, at the second point, the fetch) stored bytes before any commit
    assert stored <= publication.load_journal(out), sorted(stored - publication.load_journal(out))
    assert not (out / mf.MANIFEST_NAME).exists()

    again = _run(tmp_path, up.url + "/", out)
    _passed(again)
    _converged(out)
    assert not (out / L.WHOLE_DIR).exists() or not any((out / L.WHOLE_DIR).iterdir())


@pytest.mark.parametrize("point", [WHOLE_READS_STORED, ALL_STORED])
def test_a_killed_sync_of_more_releases_leaves_the_live_mirror_as_it_was(upstream, tmp_path, point):  # noqa: F811
    up, _root = upstream
    out = tmp_path / "out"
    first = _run(tmp_path, up.url + "/", out, releases="torch==2.0.0")
    _passed(first)
    manifest = (out / mf.MANIFEST_NAME).read_bytes()
    pages = {acc: _page_names(out, acc) for acc in ACCS}
    assert all(any(n.startswith("torch-2.0.0+") for n in names) for names in pages.values())
    assert not any(n.startswith("torch-2.1.0+") for names in pages.values() for n in names)
    before = _stored_wheels(out)

    killed = _run(tmp_path, up.url + "/", out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    new = _stored_wheels(out) - before
    assert any("torch-2.1.0+" in p for p in new), sorted(new)  # torch 2.1.0 read whole (no Range), stored early
    assert (out / mf.MANIFEST_NAME).read_bytes() == manifest  # nothing committed
    assert {acc: _page_names(out, acc) for acc in ACCS} == pages  # the published index unchanged
    assert "staged" in _live(out)
    assert new <= publication.load_journal(out)

    again = _run(tmp_path, up.url + "/", out)
    _passed(again)
    _converged(out)
