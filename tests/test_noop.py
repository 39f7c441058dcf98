"""A no-op re-sync costs what changed (issue 21): with the spec, the manifest and every upstream
page unchanged (each answering 304), a sync replays the last clean run's record
(``sync/settled.py``): no resolution, no lock rendered, no page published, no file but
``manifest.json``, the landing page and the record rewritten, and the same result and lines as a
whole no-op. Anything changed (a page, the spec, a file of the mirror) runs the whole sync,
which changes the mirror, reading a changed page's body once. Counted at a real loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faultserver import FaultServer
from tests.kit.upstream import TORCH, padded_wheel, pep503, populate
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.sync import settled
from torchdepot.sync.pip import sync

# what a replay rewrites: the commit (last_sync), the landing page that shows it, the record, the sweep's record,
REWRITTEN = {L.MANIFEST_NAME, L.LANDING_NAME, L.SETTLED, L.CACHE_SYNCS, L.LOCK_FILE}  # and the flock every run takes


@pytest.fixture
def upstream():
    with FaultServer(validators=True) as server:
        yield populate(server, payload=20_000)


def _sync(up, tmp_path: Path, **spec_kw):
    spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "upstreams": [up.url + "/whl"], "out": str(tmp_path / "out"),
                       "jobs": 2, **spec_kw}, "test spec")
    msgs: list[str] = []
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=up.url + "/simple"))
    return res, msgs


def _state(out: Path) -> dict[str, int | bytes]:
    """Every file under the mirror (state and view included) -> its mtime; a cache entry (which
    the closing sweep touches to keep it) -> its bytes."""
    caches = (L.PAGE_CACHE + "/", L.METADATA_CACHE + "/")
    return {rel: (p.read_bytes() if rel.startswith(caches) else p.stat().st_mtime_ns)
            for p in out.rglob("*") if p.is_file() and (rel := p.relative_to(out).as_posix()) not in REWRITTEN}


def _comparable(res) -> dict:
    doc = res.to_json()
    for key in ("seconds", "phases"):
        doc.pop(key)
    return doc


def _without_last_sync(out: Path) -> dict:
    doc = json.loads((out / L.MANIFEST_NAME).read_text())
    doc.pop("last_sync")
    return doc


def test_no_op_replays_without_resolving_or_publishing(upstream, tmp_path):
    out = tmp_path / "out"
    first, _ = _sync(upstream, tmp_path)
    assert "resolve" in first.phases
    assert (out / L.SETTLED).is_file()
    before, committed = _state(out), _without_last_sync(out)
    upstream.server.reset_counters()
    again, msgs = _sync(upstream, tmp_path)
    assert "resolve" not in again.phases, again.phases  # nothing planned, resolved, fetched or published
    assert _state(out) == before  # no lock, index page, view file, cache entry or wheel rewritten
    assert _without_last_sync(out) == committed
    assert again.verify == "ok"
    assert again.manifest is not None
    assert again.manifest.last_sync.verify == "ok"
    absent = [p for p in upstream.server.hits if upstream.server._lookup(p)[0] is None]
    assert again.requests["unchanged"] == again.requests["pages"] - len(absent) > 0
    assert sum(n for p, n in upstream.server.body_bytes.items() if p not in absent) == 0  # only 304s
    # the same result, lines and requests as the whole no-op it stands for
    (out / L.SETTLED).unlink()
    whole, whole_msgs = _sync(upstream, tmp_path)
    assert "resolve" in whole.phases
    assert _comparable(again) == _comparable(whole)
    assert msgs == whole_msgs
    assert _without_last_sync(out) == committed
    third, _ = _sync(upstream, tmp_path)  # the whole no-op wrote the record again
    assert "resolve" not in third.phases


def test_a_changed_page_still_changes_the_mirror(upstream, tmp_path):
    """A new torch on upstream's page: the next sync runs whole, picks it, reads that page's
    body once (the replay's revalidation hands it on), and the sync after is a replay again."""
    _sync(upstream, tmp_path)
    newer = padded_wheel(TORCH[0], "2.5.1+cpu", *TORCH[2:], payload=20_000, seed=9)
    old = [padded_wheel(*TORCH, payload=20_000, seed=0)]
    tree = pep503([*old, newer], pages=["/whl/cpu"], files="/whl/files", indexes=False)
    for path, content in tree.files.items():
        if "/torch/" in path or newer.filename in path:
            upstream.server.add(path, content)
    upstream.server.reset_counters()
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" in res.phases
    assert res.torch_versions == {"cpu-py311-linux-x86_64": "2.5.1+cpu"}
    page = tree.files["/whl/cpu/torch/index.html"]
    assert upstream.server.body_bytes["/whl/cpu/torch/"] == len(page)  # read once, not twice
    files = {e.path.rsplit("/", 1)[-1] for e in mf.load(tmp_path / "out").files}
    assert newer.filename in files
    again, _ = _sync(upstream, tmp_path)
    assert "resolve" not in again.phases
    assert again.torch_versions == res.torch_versions


def test_a_changed_spec_runs_whole(upstream, tmp_path):
    _sync(upstream, tmp_path)
    res, _ = _sync(upstream, tmp_path, extra_packages=["mpmath"])
    assert "resolve" in res.phases


def test_a_missing_file_runs_whole_and_is_fetched_again(upstream, tmp_path):
    out = tmp_path / "out"
    _sync(upstream, tmp_path)
    wheel = next(e.path for e in mf.load(out).files if e.kind == "wheel" and e.project == "filelock")
    (out / wheel).unlink()
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" in res.phases
    assert res.verify == "ok"
    assert (out / wheel).is_file()


def test_an_unreadable_record_runs_whole(upstream, tmp_path):
    out = tmp_path / "out"
    _sync(upstream, tmp_path)
    (out / L.SETTLED).write_text("{not json")
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" in res.phases
    assert json.loads((out / L.SETTLED).read_text())["manifest"]  # written anew by the clean run


def test_a_deleted_lock_runs_whole_and_is_written_again(upstream, tmp_path):
    out = tmp_path / "out"
    _sync(upstream, tmp_path)
    lock = out / L.target_lock("cpu-py311-linux-x86_64")
    text = lock.read_text()
    lock.unlink()
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" in res.phases
    assert lock.read_text() == text


def test_a_replay_killed_after_keeping_a_changed_page_leaves_no_record(upstream, tmp_path, monkeypatch):
    """The replay removes the record before it keeps a changed page: a run that dies right after
    the revalidation (here: raises there) leaves no record to replay over the page it kept, and
    the next sync picks the change up."""
    out = tmp_path / "out"
    _sync(upstream, tmp_path)
    newer = padded_wheel(TORCH[0], "2.5.1+cpu", *TORCH[2:], payload=20_000, seed=9)
    tree = pep503([padded_wheel(*TORCH, payload=20_000, seed=0), newer], pages=["/whl/cpu"], files="/whl/files",
                  indexes=False)
    for path, content in tree.files.items():
        if "/torch/" in path or newer.filename in path:
            upstream.server.add(path, content)
    revalidate = settled._unchanged

    def dies_after(reader, pages, *progress):
        revalidate(reader, pages, *progress)  # the changed page is kept by now
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(settled, "_unchanged", dies_after)
        with pytest.raises(RuntimeError):
            _sync(upstream, tmp_path)
    assert not (out / L.SETTLED).exists()
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" in res.phases
    assert res.torch_versions == {"cpu-py311-linux-x86_64": "2.5.1+cpu"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                            ["inputs", "manifest", "generation", "pages", "results", "cache", "x"]), inner, max_size=6),
                        max_leaves=12))
def test_any_record_file_is_read_or_ignored(tmp_path, doc):
    """A damaged settled.json is a cache miss (None), never an exception."""
    (tmp_path / L.STATE_DIR).mkdir(exist_ok=True)
    (tmp_path / L.SETTLED).write_text(json.dumps(doc))
    got = settled._load(tmp_path)
    assert got is None or isinstance(got, settled.Record)


def test_a_page_re_stamped_with_the_same_bytes_is_still_a_no_op(upstream, tmp_path):
    """A server that sends new validators for bytes it did not change (a regenerated index):
    the page body comes back once, and the sync is still a replay."""
    _sync(upstream, tmp_path)
    path = "/whl/cpu/torch/index.html"
    upstream.server.add(path, upstream.server.files[path][0])  # same bytes, new ETag
    upstream.server.reset_counters()
    res, _ = _sync(upstream, tmp_path)
    assert "resolve" not in res.phases
    assert upstream.server.body_bytes["/whl/cpu/torch/"] == len(upstream.server.files[path][0])
    upstream.server.reset_counters()
    again, _ = _sync(upstream, tmp_path)  # kept with its new validators: a 304 now
    assert "resolve" not in again.phases
    assert upstream.server.body_bytes["/whl/cpu/torch/"] == 0


def test_a_replay_says_the_tombstone_lines_a_whole_no_op_says(tmp_path):
    """Upstream drops a file a target pins: the mirror keeps it (a tombstone, said in one line
    each sync). The replayed no-op says that line and returns what the whole no-op returns."""
    from tests.kit.wheels import wheel_bytes

    cudnn = wheel_bytes("nvidia-cudnn-cu12", "9.1.0.70", module="nvidia_cudnn", payload=b"\0" * 2000)
    torch = wheel_bytes("torch", "2.5.0+cpu", requires=("nvidia-cudnn-cu12==9.1.0.70",))
    with FaultServer(validators=True) as server:
        pep503([torch, cudnn], pages=["/whl/cpu", "/simple"], files="/whl/files").serve(server)

        class Up:
            url = server.url

        _sync(Up, tmp_path)
        pep503([torch], pages=["/whl/cpu", "/simple"], files="/whl/files", indexes=False).serve(server)
        for root in ("/whl/cpu", "/simple"):  # the cudnn pages list nothing now, and the file is gone
            server.add(f"{root}/nvidia-cudnn-cu12/index.html", b"<html><body></body></html>")
        with server._lock:
            server.files.pop(f"/whl/files/{cudnn.filename}", None)
        whole_first, first_msgs = _sync(Up, tmp_path)
        assert whole_first.tombstones, first_msgs
        _sync(Up, tmp_path)  # settles: the record of a clean run with the tombstone
        replayed, msgs = _sync(Up, tmp_path)
        assert "resolve" not in replayed.phases
        assert any("tombstone" in m for m in msgs), msgs
        (tmp_path / "out" / L.SETTLED).unlink()
        whole, whole_msgs = _sync(Up, tmp_path)
        assert "resolve" in whole.phases
        assert msgs == whole_msgs
        assert _comparable(replayed) == _comparable(whole)


@pytest.mark.slow  # real CLI runs, SIGKILLed (about 5 s)
def test_sigkill_anywhere_in_a_replay_leaves_the_mirror_clean_and_the_next_sync_right(tmp_path):
    """A replay SIGKILLed after its revalidation, around its manifest save and after its record
    is written: the live mirror is verify-clean and lists what it listed, and the next sync
    (whole or replayed) commits the same mirror. Each point must be reached."""
    import signal
    import subprocess
    import sys

    from tests.loopback_upstream import mirror_env, run_mirror, write_spec
    from tests.loopback_upstream import populate as populate_cli
    from tests.test_crash import KILLER
    from torchdepot.sync.check import verify_mirror

    points = ["exit:torchdepot.sync.settled:_unchanged:1", "enter:torchdepot.store.manifest:save:1",
              "exit:torchdepot.store.manifest:save:1", "exit:torchdepot.sync.settled:_save:1"]
    with FaultServer(validators=True) as server:
        up = populate_cli(server, payload=20_000)
        env = mirror_env(up.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "mirror.yaml", up.url, out)
        assert run_mirror(spec, env).returncode == 0
        committed = _without_last_sync(out)
        for point in points:
            assert (out / L.SETTLED).is_file(), point  # the run before left a record: this one replays
            proc = subprocess.run([sys.executable, "-c", KILLER, point, "mirror", "--spec", str(spec)], env=env,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=120, start_new_session=True)
            assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
            assert verify_mirror(out).ok, point
            assert _without_last_sync(out) == committed, point
            again = run_mirror(spec, env, "--json")
            assert again.returncode == 0, (point, again.stderr)
            assert _without_last_sync(out) == committed, point
        last = run_mirror(spec, env, "--json")
        assert "resolve" not in json.loads(last.stdout)["phases"]
