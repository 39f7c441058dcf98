"""The sweep of ``.torchdepot/pages`` and ``.torchdepot/metadata`` (store/cachefiles.py): an
entry none of the last five successful syncs used is deleted at the end of a sync; what a
sync used is kept; nothing but the cache's own regular files is ever touched."""

from __future__ import annotations

import json
import os
import time

from tests.faultserver import FaultServer
from tests.kit.upstream import populate
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import cachefiles
from torchdepot.store import layout as L
from torchdepot.sync.pip import sync

PAGE = "a" * 64
META = "core-" + "b" * 64


def _plant(root, rel, name, mtime, data=b"x"):
    path = root / rel / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_entries_unused_for_five_syncs_go_and_used_ones_stay(tmp_path):
    now = time.time()
    stale_page = _plant(tmp_path, L.PAGE_CACHE, PAGE, now - 10_000, b"12345")
    stale_parse = _plant(tmp_path, L.PAGE_CACHE, PAGE + ".parsed.json", now - 10_000)
    used_meta = _plant(tmp_path, L.METADATA_CACHE, META, now - 10_000)
    recent = _plant(tmp_path, L.METADATA_CACHE, "wheel-" + "c" * 64, now - 50)  # used by a recent sync
    foreign = _plant(tmp_path, L.PAGE_CACHE, "notes.txt", now - 10_000)  # a user's file
    os.symlink(foreign, tmp_path / L.PAGE_CACHE / ("d" * 64))  # a link named like an entry
    used = {L.METADATA_CACHE: frozenset({META})}
    for n in range(1, cachefiles.KEEP_SYNCS):  # too few syncs recorded: nothing goes yet
        swept = cachefiles.sweep(tmp_path, used, now - 1000 + n)
        assert (swept.files, swept.syncs) == (0, n)
        assert stale_page.exists()
    swept = cachefiles.sweep(tmp_path, {}, now - 100)
    assert (swept.files, swept.bytes, swept.syncs) == (2, 6, cachefiles.KEEP_SYNCS)
    assert "pruned 2 entries (6 B)" in (swept.line() or "")
    assert not stale_page.exists()
    assert not stale_parse.exists()
    assert used_meta.exists()  # touched by the syncs that used it
    assert recent.exists()
    assert foreign.exists()
    assert (tmp_path / L.PAGE_CACHE / ("d" * 64)).is_symlink()
    record = json.loads((tmp_path / L.CACHE_SYNCS).read_text())["syncs"]
    assert len(record) == cachefiles.KEEP_SYNCS
    assert record[-1] == now - 100


def test_a_bad_record_or_a_symlinked_folder_is_harmless(tmp_path):
    (tmp_path / L.STATE_DIR).mkdir()
    (tmp_path / L.CACHE_SYNCS).write_text("{not json")
    elsewhere = tmp_path / "elsewhere"
    _plant(elsewhere, ".", PAGE, 0)
    os.symlink(elsewhere, tmp_path / L.PAGE_CACHE)  # a planted link: never entered
    for n in range(cachefiles.KEEP_SYNCS):
        cachefiles.sweep(tmp_path, {L.PAGE_CACHE: frozenset({PAGE})}, 1000.0 + n)
    assert (elsewhere / PAGE).exists()
    assert os.stat(elsewhere / PAGE).st_mtime == 0
    assert cachefiles.load_syncs(tmp_path) == [1000.0 + n for n in range(cachefiles.KEEP_SYNCS)]


def _sync(up, out):
    spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "upstreams": [up.url + "/whl"], "out": str(out), "jobs": 2}, "spec")
    msgs: list[str] = []
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=up.url + "/simple"))
    return res, msgs


def test_a_sync_keeps_what_it_used_and_prunes_what_no_recent_sync_did(tmp_path):
    with FaultServer(validators=True) as server:
        up = populate(server, payload=1000)
        out = tmp_path / "out"
        first, _ = _sync(up, out)
        assert first.cache_used is not None
        on_disk = {rel: {p.name for p in (out / rel).iterdir()} for rel in cachefiles.FOLDERS}
        assert on_disk[L.PAGE_CACHE]
        assert on_disk[L.METADATA_CACHE]
        for rel in cachefiles.FOLDERS:  # every entry the run wrote is one it reports as used
            assert on_disk[rel] <= first.cache_used[rel], rel
        # four older syncs recorded; a page of a URL no longer read, and every real entry made old
        old = time.time() - 10_000
        (out / L.CACHE_SYNCS).write_text(json.dumps({"syncs": [old + n for n in range(1, 5)]}))
        gone = _plant(out, L.PAGE_CACHE, "e" * 64, old - 1)
        for rel in cachefiles.FOLDERS:
            for name in on_disk[rel]:
                os.utime(out / rel / name, (old - 1, old - 1))
        second, msgs = _sync(up, out)
        assert second.requests["unchanged"] > 0  # the kept pages were revalidated, not re-read
        assert not gone.exists(), msgs
        assert any("cache: pruned 1 entries" in m for m in msgs), msgs
        for rel in cachefiles.FOLDERS:  # what this sync used survived the sweep
            assert {p.name for p in (out / rel).iterdir()} >= second.cache_used[rel] & on_disk[rel]
        assert {p.name for p in (out / L.PAGE_CACHE).iterdir()} == on_disk[L.PAGE_CACHE]
