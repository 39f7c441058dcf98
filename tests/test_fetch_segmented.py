"""Segmented downloads against a real loopback upstream (tests/faultserver.py, TCP on
127.0.0.1): pieces over capped, kept-alive connections; resume of finished pieces after a
SIGKILL; fallback to one connection when Range is ignored or the file changes; dropped
connections mid-piece; the assembled file's hash still decides. Small sizes: seconds."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faultserver import Fault, FaultServer
from torchdepot.fetch import Fetcher, FetchItem, ProgressEvent
from torchdepot.fetch.pieces import load_state, plan_runs, sidecar_path
from torchdepot.net.http import Client, HttpConfig

ROOT = Path(__file__).resolve().parent.parent
SIZE = 2_000_000
PIECE = 128 * 1024
# (no tail cuts below a block, which tests/test_fetch_dynamic.py covers: ranges here start on blocks)
SPLIT = dict(split_bytes=500_000, piece_bytes=PIECE, head_steal_bytes=500_000, tail_piece_bytes=PIECE, connections=8,
             connections_per_host=4)


def _data(seed: int, size: int = SIZE) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // 32 + 1))[:size]


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _client(**kw) -> Client:
    cfg = dict(retries=0, backoff=0.01, max_backoff=0.05, connect_timeout=2.0, read_timeout=2.0)
    cfg.update(kw)
    return Client(HttpConfig(**cfg))


def _fetcher(root: Path, **kw) -> Fetcher:
    args = dict(SPLIT, progress=False, attempts=4)
    args.update(kw)
    return Fetcher(root, _client(), **args)


def _item(up: FaultServer, name: str, data: bytes, *, with_hash: bool = True) -> FetchItem:
    url = up.add(f"/whl/{name}", data)
    return FetchItem(f"packages/p/{name}", (url,), _sha(data) if with_hash else None, len(data))


def _bounded(ranges: list) -> list[tuple[int, int]]:
    out = []
    for r in ranges:
        if r and r.startswith("bytes=") and not r.endswith("-"):
            a, b = r[6:].split("-")
            out.append((int(a), int(b)))
    return out


@pytest.fixture
def up():
    with FaultServer(validators=True) as s:
        yield s


def test_large_file_goes_out_in_pieces_every_byte_once(tmp_path, up):
    data = _data(1)
    item = _item(up, "torch-1.0-py3-none-any.whl", data)
    small = _item(up, "small-1.0-py3-none-any.whl", _data(2, 100_000))
    rep = _fetcher(tmp_path).run([item, small])
    assert [r.status for r in rep.results] == ["downloaded", "downloaded"], rep.results
    assert (tmp_path / item.key).read_bytes() == data
    path = "/whl/torch-1.0-py3-none-any.whl"
    # runs over the connections free when it starts (up to 4: fewer while the small file holds
    # one or is about to), on block boundaries, halves of them taken by free connections
    # (one not asked for yet may be halved before its request): bounded ranges that start on
    # block boundaries and cover the file
    asked = _bounded(up.ranges[path])
    assert len(asked) >= 2, asked
    assert len(asked) == len(up.ranges[path]), up.ranges[path]
    assert all(a % PIECE == 0 for a, _ in asked), asked
    covered = sorted(asked)
    assert covered[0][0] == 0
    assert max(b for _, b in covered) == SIZE - 1
    assert all(a2 <= b1 + 1 for (_, b1), (a2, _) in itertools.pairwise(covered)), covered
    assert {r.key: r.fetched_bytes for r in rep.results}[item.key] == SIZE  # every byte written once
    assert up.ranges["/whl/small-1.0-py3-none-any.whl"] == [None]  # small files: one plain request
    assert not sidecar_path(_fetcher(tmp_path)._partial_path(item.key)).exists()


def test_connections_are_capped_and_kept_alive(tmp_path, up):
    items = [_item(up, f"big{i}-1.0-py3-none-any.whl", _data(30 + i)) for i in range(3)]
    items.append(_item(up, "tiny-1.0-py3-none-any.whl", _data(40, 50_000)))
    rep = _fetcher(tmp_path, connections=2, connections_per_host=2).run(items)
    assert all(r.status == "downloaded" for r in rep.results), rep.results
    asked = sum(len(v) for v in up.ranges.values())
    # each big file in pieces over the connections it finds free (split further only where a
    # run would take long), the tiny one whole
    assert asked >= 3 + 1
    assert all(r and r.startswith("bytes=") for i in range(3) for r in up.ranges[f"/whl/big{i}-1.0-py3-none-any.whl"])
    assert up.peak_active <= 2  # the cap
    assert len(up.peers) < asked  # pooled sockets are reused


_CHILD = f"""
import sys
from pathlib import Path
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.net.http import Client, HttpConfig
root, url, sha, size = sys.argv[1:5]
f = Fetcher(Path(root), Client(HttpConfig(retries=0)), progress=False, split_bytes=500_000,
            piece_bytes={PIECE}, connections=8, connections_per_host=8)
f.run([FetchItem("packages/p/big-1.0-py3-none-any.whl", (url,), sha, int(size))])
"""


def test_piece_resume_after_sigkill_refetches_only_unfinished_pieces(tmp_path, up):
    data = _data(3)
    item = _item(up, "big-1.0-py3-none-any.whl", data)
    path = "/whl/big-1.0-py3-none-any.whl"
    # 16 pieces, 8 at once: the first 4 requests are served at full speed, the rest drip (100 s)
    up.schedule(path, *[Fault("ok")] * 4)
    up.always(path, Fault("drip", rate=2_500))
    part = _fetcher(tmp_path)._partial_path(item.key)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), item.urls[0], item.sha256, str(SIZE)],
                             env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = load_state(part)
            if state is not None and len(state.done) >= 4:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the child never finished 4 pieces")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = load_state(part)
    assert state is not None
    assert state.count == 16
    done = {(i * PIECE, min(SIZE, (i + 1) * PIECE) - 1) for i in state.done}
    assert 4 <= len(done) < 16
    assert not (tmp_path / item.key).exists()
    time.sleep(0.3)  # requests the child sent just before it died reach the log first
    first_run = set(_bounded(up.ranges[path]))
    up.reset_counters()
    up.always(path, Fault("ok"))
    rep = Fetcher(tmp_path, _client(), progress=False, split_bytes=500_000, piece_bytes=PIECE,
                  connections=8, connections_per_host=8).run([item])
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert res.resumed, res
    assert (tmp_path / item.key).read_bytes() == data
    second_run = _bounded(up.ranges[path])
    assert second_run
    assert not [(a, b) for a, b in second_run for x, y in done if a <= y and x <= b], "a finished block asked again"
    # (body_bytes would also count the drips the server wrote to the dead child's sockets)
    assert res.fetched_bytes == SIZE - sum(y - x + 1 for x, y in done)
    assert first_run  # the killed run did use ranges


def test_server_that_ignores_range_falls_back_to_one_connection(tmp_path, up):
    data = _data(4)
    item = _item(up, "noranges-1.0-py3-none-any.whl", data)
    path = "/whl/noranges-1.0-py3-none-any.whl"
    up.always(path, Fault("ignore_range"))
    rep = _fetcher(tmp_path).run([item])
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data
    assert up.ranges[path][-1] is None  # the restart: one plain request from zero
    part = _fetcher(tmp_path)._partial_path(item.key)
    assert not part.exists()
    assert not sidecar_path(part).exists()


def _change_when_requested(up: FaultServer, path: str, new: bytes, after_hits: int) -> threading.Thread:
    def run():
        deadline = time.monotonic() + 10
        while up.hits[path] < after_hits and time.monotonic() < deadline:
            time.sleep(0.005)
        up.add(path, new)  # new bytes, new ETag and Last-Modified

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # several syncs or paced downloads (1-3 s): kept out of the fast tier
def test_file_that_changes_mid_download_restarts_on_one_connection(tmp_path, up):
    old, new = _data(5), _data(6)
    item = _item(up, "moving-1.0-py3-none-any.whl", old, with_hash=False)
    path = "/whl/moving-1.0-py3-none-any.whl"
    # two runs, one faster: once it is done it takes half of the other's rest, asked after the change
    up.schedule(path, Fault("drip", rate=4_000_000), Fault("drip", rate=1_000_000))
    up.always(path, Fault("drip", rate=2_000_000))
    t = _change_when_requested(up, path, new, after_hits=2)
    rep = _fetcher(tmp_path, connections=2).run([item])
    t.join()
    res = rep.results[0]
    assert res.status == "downloaded", res
    # never a mix of two versions: the whole file is the new one
    assert (tmp_path / item.key).read_bytes() == new
    assert res.sha256 == _sha(new)
    assert None in up.ranges[path]  # fell back to a plain request from zero


@pytest.mark.slow
def test_changed_file_under_a_hash_claim_is_refused(tmp_path, up):
    old, new = _data(7), _data(8)
    item = _item(up, "moved-1.0-py3-none-any.whl", old)
    path = "/whl/moved-1.0-py3-none-any.whl"
    up.schedule(path, Fault("drip", rate=4_000_000), Fault("drip", rate=1_000_000))
    up.always(path, Fault("drip", rate=2_000_000))
    t = _change_when_requested(up, path, new, after_hits=2)
    rep = _fetcher(tmp_path, attempts=3, connections=2).run([item])
    t.join()
    res = rep.results[0]
    assert res.status == "failed", res
    assert res.hash_mismatch, res
    assert "sha256 mismatch" in res.error, res
    assert "\n" not in res.error
    assert not (tmp_path / item.key).exists()


def test_resume_of_a_changed_file_discards_the_old_pieces(tmp_path, up):
    old, new = _data(9), _data(10)
    item = _item(up, "swap-1.0-py3-none-any.whl", old, with_hash=False)
    path = "/whl/swap-1.0-py3-none-any.whl"
    # a first run that gives up after some pieces (404 for the rest) leaves a sidecar
    # one run is served, the other drips; the half the served one then takes is refused. The
    # served run is paced (2 s for the whole file alone): unpaced, on a loaded machine it could
    # finish the file before the second connection's request started
    up.schedule(path, Fault("drip", rate=1_000_000), Fault("drip", rate=50_000))
    up.always(path, Fault("status", status=404))
    rep = _fetcher(tmp_path, connections=2).run([item])
    assert rep.results[0].status == "failed"
    part = _fetcher(tmp_path)._partial_path(item.key)
    assert load_state(part) is not None
    assert load_state(part).done
    up.add(path, new)
    up.always(path, Fault("ok"))
    up.reset_counters()
    rep = _fetcher(tmp_path).run([item])
    assert rep.results[0].status == "downloaded"
    assert (tmp_path / item.key).read_bytes() == new


def test_connections_dropped_mid_piece_continue_where_they_stopped(tmp_path, up):
    data = _data(11)
    item = _item(up, "drops-1.0-py3-none-any.whl", data)
    path = "/whl/drops-1.0-py3-none-any.whl"
    up.schedule(path, Fault("range_reset", n=50_000), Fault("range_reset", n=10_000), Fault("range_reset", n=0))
    rep = _fetcher(tmp_path).run([item])
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data
    asked = _bounded(up.ranges[path])
    assert len(asked) >= len(plan_runs(SIZE, PIECE, set(), 4)) + 3
    assert rep.results[0].fetched_bytes == SIZE  # a cut run continues from the byte it reached


def test_a_corrupt_piece_is_caught_by_the_hash_of_the_assembled_file(tmp_path, up):
    data = _data(12)
    item = _item(up, "corrupt-1.0-py3-none-any.whl", data)
    path = "/whl/corrupt-1.0-py3-none-any.whl"
    up.schedule(path, Fault("corrupt_range"))  # one bad piece: retried once from scratch
    rep = _fetcher(tmp_path).run([item])
    assert rep.results[0].status == "downloaded"
    assert (tmp_path / item.key).read_bytes() == data
    assert rep.results[0].fetched_bytes == 2 * SIZE

    bad = _item(up, "always-1.0-py3-none-any.whl", _data(13))
    up.always("/whl/always-1.0-py3-none-any.whl", Fault("corrupt_range"))
    rep = _fetcher(tmp_path).run([bad])
    res = rep.results[0]
    assert res.status == "failed", res
    assert res.hash_mismatch, res
    assert "sha256 mismatch" in res.error, res
    assert not (tmp_path / bad.key).exists()
    part = _fetcher(tmp_path)._partial_path(bad.key)
    assert not part.exists()
    assert not sidecar_path(part).exists()


def test_submit_starts_each_file_at_once_and_reports_progress(tmp_path, up):
    items = [_item(up, f"s{i}-1.0-py3-none-any.whl", _data(20 + i, 300_000 + i * 400_000)) for i in range(4)]
    events: list[ProgressEvent] = []
    with Fetcher(tmp_path, _client(), progress=False, on_progress=events.append, **SPLIT) as f:
        first = f.submit(items[0])
        assert first.result(timeout=10).status == "downloaded"  # done before the rest is even known
        futures = [f.submit(i) for i in items[1:]] + [f.submit(items[0])]
        assert futures[-1] is first  # same key, same download
    rep = f.report
    assert [r.status for r in rep.results] == ["downloaded"] * 4
    files = [e for e in events if e.kind == "file"]
    assert len(files) == 4
    assert files[-1].files_done == 4
    total = sum(i.size for i in items)
    assert files[-1].done == files[-1].total == total == rep.fetched_bytes


def test_non_terminal_progress_prints_plain_lines(tmp_path, up):
    import io

    from torchdepot.fetch.progress import Progress

    out = io.StringIO()  # not a TTY
    p = Progress(None, stream=out, line_interval=0.0)
    p.add_file(2_000_000)
    p.advance(1_000_000)
    p.close()
    line = out.getvalue().strip()
    assert line.startswith("fetch: 1.0 MB / 2.0 MB,")
    assert "ETA" in line
    assert "(0/1 files)" in line


def test_unknown_size_splits_once_the_first_answer_states_it(tmp_path, up):
    """HTML indexes state no size: the first 200 keeps streaming from byte 0, free
    connections take the second halves of what it has left."""
    data = _data(50)
    url = up.add("/whl/nosize-1.0-py3-none-any.whl", data)
    # a paced link (about 1 s for the file), so that every split is worth its cut: unpaced loopback
    # finishes first on a fast machine, and how often a run is cut would follow the machine's speed
    up.always("/whl/nosize-1.0-py3-none-any.whl", Fault("drip", rate=2_000_000))
    item = FetchItem("packages/p/nosize-1.0-py3-none-any.whl", (url,), _sha(data), None)
    events: list[ProgressEvent] = []
    rep = _fetcher(tmp_path, on_progress=events.append).run([item])
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data, res
    ranges = up.ranges["/whl/nosize-1.0-py3-none-any.whl"]
    assert ranges[0] is None
    asked = _bounded(ranges)
    assert len(asked) >= 3
    assert all(a % PIECE == 0 and a > 0 for a, _ in asked)
    assert res.fetched_bytes == SIZE
    assert events[-1].total == SIZE


@pytest.mark.parametrize("with_hash", [True, False])
def test_pieces_are_hashed_as_they_arrive_never_read_again(tmp_path, up, monkeypatch, with_hash):
    """Issue 21: a file's hash is computed while it downloads, once: the pieces finish out of
    order, the digest follows the finished prefix, and no pass over the assembled file follows."""
    import torchdepot.fetch.engine as engine

    def second_pass(path):
        raise AssertionError(f"{path} read again to hash it")

    monkeypatch.setattr(engine, "sha256_file", second_pass)
    data = _data(21)
    item = _item(up, "inorder-1.0-py3-none-any.whl", data, with_hash=with_hash)
    path = "/whl/inorder-1.0-py3-none-any.whl"
    up.schedule(path, Fault("drip", rate=400_000))  # the first run finishes last: blocks out of order
    rep = _fetcher(tmp_path).run([item])
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert res.sha256 == _sha(data)
    assert (tmp_path / item.key).read_bytes() == data
    assert len(_bounded(up.ranges[path])) >= 2  # it did go out in pieces
