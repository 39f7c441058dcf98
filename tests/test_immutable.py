"""Immutable publication (issue 13 (a)): a published file's bytes never change in place.

Upstream re-publishes a wheel under the same name with new bytes: the re-sync stores them
at a new path, the live mirror stays verify-clean when the re-sync fails late, and the
old copy stays listed at its old path (a tombstone) while its target is recorded. Conda packages keep their published bytes.
Plus the pure path choice (property-tested) and the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.faultserver import Fault, FaultServer
from tests.httpserver import Server
from tests.kit.upstream import DEPS, TORCH, padded_wheel, pep503
from tests.loopback_upstream import mirror_env, populate, run_mirror, write_spec
from torchdepot.net.http import Client, HttpConfig, file_url_path
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.layout import PUBLISH_JOURNAL, changed_bytes_path
from torchdepot.sync.check import verify_mirror
from torchdepot.sync.conda import CACHE_DIR, sync_conda

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = 20_000


def republish(up, name: str, seed: int, payload: int = PAYLOAD) -> tuple[str, bytes]:
    """Upstream replaces the bytes behind ``name``'s wheel (same file name, new sha256 in its pages)."""
    wheel = padded_wheel(*next(r for r in (TORCH, *DEPS) if r[0] == name), payload, seed)
    pep503([wheel], pages=["/whl/cpu", "/simple"], files="/whl/files", indexes=False).serve(up.server)
    up.wheels[wheel.filename] = wheel.data
    return wheel.filename, wheel.data


def verify_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchdepot", "verify-mirror", str(out), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def linked(out: Path, project: str) -> dict[str, str]:
    """file name -> root-relative path of what the live ``whl/cpu/<project>/`` page links (the
    live copy: a retired copy a lock still pins is linked too, yanked; sync/tombstones.py)."""
    from torchdepot.sources.pep503 import parse_html

    page = out / "whl" / "cpu" / project / "index.html"
    found = {}
    for link in parse_html(page.read_bytes(), page.as_uri()).links:
        if link.yanked is not None:
            continue
        target = file_url_path(link.url)
        found[link.filename] = target.resolve().relative_to(out.resolve()).as_posix()
    return found


@pytest.mark.slow
def test_changed_bytes_go_to_a_new_path_and_a_late_failure_keeps_the_live_mirror(tmp_path):
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        first = run_mirror(spec, env)
        assert first.returncode == 0, first.stderr
        torch_name = next(f for f in up.wheels if f.startswith("torch-"))
        old_path = f"packages/torch/{torch_name}"
        old_bytes = (out / old_path).read_bytes()
        assert linked(out, "torch")[torch_name] == old_path

        # Upstream changes torch's bytes; mpmath changes too but its new bytes arrive corrupt.
        _, new_bytes = republish(up, "torch", seed=101)
        mp_name, _ = republish(up, "mpmath", seed=102)
        server.always(up.paths[mp_name], Fault("wrong_bytes"))
        failed = run_mirror(spec, env)
        assert failed.returncode == 1
        assert "failed" in failed.stderr
        # The live mirror is the previous generation, whole: same bytes at the same path, verify-clean.
        assert (out / old_path).read_bytes() == old_bytes
        assert linked(out, "torch")[torch_name] == old_path
        doc = json.loads(verify_cli(out).stdout)
        assert doc["ok"] is True, doc
        assert {p["kind"] for p in doc["problems"]} <= {"staged", "partial"}, doc["problems"]
        new_path = changed_bytes_path(old_path, hashlib.sha256(new_bytes).hexdigest(), len(new_bytes))
        assert (out / new_path).read_bytes() == new_bytes, "staged at its new path, beside the live copy"
        assert any(p["kind"] == "staged" and p["path"] == new_path for p in doc["problems"])

        server.always(up.paths[mp_name], Fault())
        done = run_mirror(spec, env)
        assert done.returncode == 0, done.stderr
    assert linked(out, "torch")[torch_name] == new_path
    assert (out / new_path).read_bytes() == new_bytes
    listed = mf.load(out).by_path()
    assert new_path in listed
    assert new_path + ".metadata" in listed
    # the old bytes stay listed at their old path (a tombstone, sync/tombstones.py) while the
    # target is recorded, off the pages; nothing else is left behind
    assert listed[old_path].sha256 == hashlib.sha256(old_bytes).hexdigest()
    assert (out / old_path).read_bytes() == old_bytes
    assert "tombstone: torch 2.5.0+cpu" in done.stderr
    assert not (out / PUBLISH_JOURNAL).exists()
    rep = verify_mirror(out)
    assert rep.ok, rep.problems
    assert rep.problems == [], rep.problems
    pylock = (out / "targets/cpu-py311-linux-x86_64/pylock.toml").read_text()
    assert new_path in pylock
    assert f'"{old_path}"' not in pylock
    # (--prune lets them go: tests/test_tombstones.py)


@pytest.mark.slow
def test_user_file_at_a_package_path_is_never_overwritten(tmp_path):
    """A file the mirror did not create at the path new bytes would take: they go to the next one."""
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        assert run_mirror(spec, env).returncode == 0
        torch_name, new_bytes = republish(up, "torch", seed=103)
        sha = hashlib.sha256(new_bytes).hexdigest()
        old_path = f"packages/torch/{torch_name}"
        mine = out / changed_bytes_path(old_path, sha, len(new_bytes))
        mine.parent.mkdir(parents=True)
        mine.write_bytes(b"the user's own file")
        res = run_mirror(spec, env)
        assert res.returncode == 0, res.stderr
    assert mine.read_bytes() == b"the user's own file"
    assert linked(out, "torch")[torch_name] == changed_bytes_path(old_path, sha, len(new_bytes), 1)
    rep = verify_mirror(out)
    assert [(p.kind, p.path) for p in rep.problems] == [("orphan", mine.relative_to(out).as_posix())]


# -- conda: a channel serves <subdir>/<file>, so a published package keeps its bytes ---------

def _channel(root: Path, payload: bytes) -> str:
    noarch = root / "chan" / "noarch"
    noarch.mkdir(parents=True, exist_ok=True)
    (root / "chan" / "linux-64").mkdir(exist_ok=True)
    fname = "foo-1.0-0.conda"
    (noarch / fname).write_bytes(payload)
    rec = {"name": "foo", "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "noarch",
           "sha256": hashlib.sha256(payload).hexdigest(), "md5": hashlib.md5(payload).hexdigest(),
           "size": len(payload), "noarch": "generic"}
    for sd, pkgs in (("noarch", {fname: rec}), ("linux-64", {})):
        (root / "chan" / sd / "repodata.json").write_text(json.dumps(
            {"info": {"subdir": sd}, "packages": {}, "packages.conda": pkgs, "repodata_version": 1}))
    return fname


def test_conda_package_changed_upstream_keeps_published_bytes(tmp_path):
    srv = tmp_path / "srv"
    fname = _channel(srv, b"A" * 5000)
    out = tmp_path / "out"
    key = f"conda/t/noarch/{fname}"
    cfg = HttpConfig(connect_timeout=2, read_timeout=5, retries=0)

    def run():
        with Server(srv) as s, Client(cfg) as c:
            spec = MirrorSpec(accelerators=("cpu",), pythons=("3.11",), platforms=("linux-x86_64",),
                              conda={"channels": [{"name": "t", "mirrors": [f"{s.url}/chan"]}], "specs": ["foo"]})
            return sync_conda(spec, out, client=c)

    res = run()
    mf.save(out, mf.Manifest(files=res.files, targets=res.targets))
    published = (out / key).read_bytes()
    _channel(srv, b"B" * 6000)  # same name, other bytes
    shutil.rmtree(out / CACHE_DIR)  # the repodata cache expired: the new record is seen
    res2 = run()
    assert (out / key).read_bytes() == published == b"A" * 5000
    assert "kept although upstream now declares other bytes" in res2.summary
    rd = json.loads((out / "conda/t/noarch/repodata.json").read_text())["packages.conda"][fname]
    assert rd["sha256"] == hashlib.sha256(published).hexdigest()
    assert rd["size"] == 5000
    assert "md5" not in rd
    mf.save(out, mf.Manifest(files=res2.files, targets=res2.targets))
    rep = verify_mirror(out)
    assert rep.ok, rep.problems
    assert rep.problems == [], rep.problems


# -- the pure path choice -------------------------------------------------------------

def _entry(path: str, sha: str, size: int) -> mf.FileEntry:
    return mf.FileEntry(path=path, sha256=sha, size=size, kind="wheel")


hexes = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(old=hexes, new=hexes, size=st.integers(0, 10**9), taken=st.integers(0, 3))
def test_choose_path_never_picks_a_path_listed_with_other_bytes(old, new, size, taken):
    default = "packages/torch/torch-2.5.0-cp311-none-any.whl"
    live = {default: _entry(default, old, size)}
    for n in range(taken):  # earlier changes already took some content-addressed paths
        p = changed_bytes_path(default, new, size, n)
        live[p] = _entry(p, old, size + 1)
    got = pub.choose_path(default, pub.Claim(new, size), live, frozenset(), lambda p: p in live)
    entry = live.get(got)
    assert entry is None or (entry.sha256 == new and entry.size == size)
    if old == new:
        assert got == default
    else:
        assert got == changed_bytes_path(default, new, size, taken)


def test_choose_path_without_a_claim_keeps_the_name_and_a_user_file_is_avoided():
    default = "packages/x/x-1-py3-none-any.whl"
    assert pub.choose_path(default, pub.Claim(), {}, frozenset(), lambda p: True) == default
    got = pub.choose_path(default, pub.Claim("ab" * 32, 3), {}, frozenset(), lambda p: p == default)
    assert got == f"packages/x/{'ab' * 8}/x-1-py3-none-any.whl"
    # the mirror's own unpublished copy (journaled) may be replaced: it is not live
    assert pub.choose_path(default, pub.Claim("ab" * 32, 3), {}, frozenset({default}), lambda p: True) == default


def test_journal_records_merges_and_forgets(tmp_path):
    assert pub.load_journal(tmp_path) == frozenset()
    pub.record(tmp_path, ["packages/a/a.whl"])
    pub.record(tmp_path, ["packages/b/b.whl"])
    assert pub.load_journal(tmp_path) == {"packages/a/a.whl", "packages/b/b.whl"}
    pub.forget(tmp_path, ["packages/a/a.whl", "packages/b/b.whl"])
    assert not (tmp_path / PUBLISH_JOURNAL).exists()
    (tmp_path / PUBLISH_JOURNAL).write_text('{"paths": ["../../etc/passwd", "/abs", "packages/ok.whl"]}')
    assert pub.load_journal(tmp_path) == {"packages/ok.whl"}


def test_bytes_that_moved_stay_and_a_retired_path_never_gets_other_bytes(tmp_path):
    """Issue 21 item 3 / 22 item 5: X at P, then Z at Q (P removed): the next sync keeps Z at Q
    (it used to move back to P, downloaded again), and P never serves bytes other than X."""
    default = "packages/filelock/filelock-3.16.1-py3-none-any.whl"
    x, z, w = "aa" * 32, "bb" * 32, "cc" * 32
    q = changed_bytes_path(default, z, 10)
    live = {q: _entry(q, z, 10)}
    retired = {default: x}
    assert pub.choose_path(default, pub.Claim(z, 10), live, frozenset(), lambda p: p in live, retired) == q
    assert pub.choose_path(default, pub.Claim(z, 10), live, frozenset(), lambda p: p in live) == q  # even unrecorded
    got = pub.choose_path(default, pub.Claim(w, 10), live, frozenset(), lambda p: p in live, retired)
    assert got == changed_bytes_path(default, w, 10)
    assert pub.choose_path(default, pub.Claim(x, 10), live, frozenset(), lambda p: p in live, retired) == default
    # what a run supersedes is remembered before it writes, with the .metadata beside it
    live[default] = _entry(default, x, 10)
    live[default + ".metadata"] = _entry(default + ".metadata", "dd" * 32, 3)
    assert pub.superseded(default, q, live) == {default: x, default + ".metadata": "dd" * 32}
    pub.retire(tmp_path, pub.superseded(default, q, live))
    pub.retire(tmp_path, {q: z})
    assert pub.load_retired(tmp_path) == {default: x, default + ".metadata": "dd" * 32, q: z}


@pytest.mark.slow
def test_a_resync_failing_after_the_manifest_is_widened_keeps_the_old_locks(tmp_path, monkeypatch):
    """Issue 22 item 6: the new targets/<id>/pylock.toml went live over the old index when the
    index swap failed after the manifest was widened; verify said ok. Now the locks follow the
    swap, and verify-mirror reports a lock naming a file the live index does not link."""
    from click.testing import CliRunner

    import torchdepot.sync.pipindex as pipindex
    from torchdepot.cli import main
    from torchdepot.errors import TorchdepotError

    lock = "targets/cpu-py311-linux-x86_64/pylock.toml"
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        assert run_mirror(spec, env).returncode == 0
        before = (out / lock).read_text()
        torch_name, new_bytes = republish(up, "torch", seed=111)

        def swap_fails(*_a, **_k):
            raise TorchdepotError("index swap failed (test)")
        monkeypatch.setattr(pipindex, "publish", swap_fails)
        res = CliRunner().invoke(main, ["mirror", "--spec", str(spec)], env=env)
        assert res.exit_code == 1, res.output
        assert "index swap failed" in res.output
    new_path = changed_bytes_path(f"packages/torch/{torch_name}", hashlib.sha256(new_bytes).hexdigest(),
                                  len(new_bytes))
    assert new_path in mf.load(out).by_path(), "the manifest was widened before the failure"
    assert (out / lock).read_text() == before
    rep = verify_mirror(out)
    assert rep.ok, rep.problems
    # the old writer's state: the new lock over the old index is noticed
    (out / lock).write_text(before.replace(f"packages/torch/{torch_name}", new_path).replace(
        hashlib.sha256((out / f"packages/torch/{torch_name}").read_bytes()).hexdigest(),
        hashlib.sha256(new_bytes).hexdigest()))
    rep = verify_mirror(out)
    assert not rep.ok
    stale = [p for p in rep.unrepaired if p.kind == "dangling-link"]
    assert [p.path for p in stale] == [lock]
    assert "no live or kept index generation links" in stale[0].detail


def test_a_retired_path_is_not_reused_without_a_claim_either():
    """A hashless upstream (no sha256, no size): the bytes are unknown until downloaded, so a
    path that once served other bytes is skipped, and the copy already published stays put."""
    default = "packages/x/x-1-py3-none-any.whl"
    retired = {default: "aa" * 32}
    got = pub.choose_path(default, pub.Claim(), {}, frozenset(), lambda p: False, retired)
    assert got != default
    assert got == changed_bytes_path(default, None, None)
    live = {got: _entry(got, "bb" * 32, 5)}
    assert pub.choose_path(default, pub.Claim(), live, frozenset(), lambda p: p in live, retired) == got
    assert pub.choose_path(default, pub.Claim(), {}, frozenset(), lambda p: True) == default  # never retired
