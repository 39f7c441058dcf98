"""Segmentation without a size threshold (issue 21): every file large enough for two pieces
of the smallest size (about 1 MB) goes out in pieces that share the run's connections, and a
host that refuses an extra connection (429/503 while another piece of the file is in flight)
gets one stream per file from then on; a connection that is free takes the second half of
the largest run still in flight (aria2's rule), on block boundaries, never under one block;
near the end (no run left for that rule) it cuts the run that would end last below a block,
only where the cut pays for the new request's first-byte wait (the tail rule).
Real loopback servers; requests, ranges and bytes counted at the server."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.faultserver import Fault, FaultServer
from torchdepot.fetch import DEFAULT_SPLIT_BYTES, Fetcher, FetchItem
from torchdepot.fetch.pieces import block_count, plan_runs, sidecar_path
from torchdepot.net.http import Client, HttpConfig

MB = 1_000_000


def _client() -> Client:
    return Client(HttpConfig(retries=0, backoff=0.01, max_backoff=0.05, connect_timeout=2.0, read_timeout=5.0))


def _item(up: FaultServer, name: str, data: bytes) -> FetchItem:
    url = up.add(f"/whl/{name}", data)
    return FetchItem(f"packages/p/{name}", (url,), hashlib.sha256(data).hexdigest(), len(data))


def _requests(up: FaultServer, name: str) -> list:
    return up.ranges[f"/whl/{name}"]


@pytest.fixture
def up():
    with FaultServer(validators=True) as s:
        yield s


def test_a_mix_of_sizes_fetches_every_file_of_two_pieces_or_more_in_pieces(tmp_path, up):
    rng = random.Random(7)
    sizes = {"a.whl": MB // 2, "b.whl": 3 * MB // 2, "c.whl": 5 * MB // 2, "d.whl": 6 * MB, "e.whl": 12 * MB}
    items = {name: _item(up, name, rng.randbytes(size)) for name, size in sizes.items()}
    report = Fetcher(tmp_path, _client(), progress=False).run(list(items.values()))  # the defaults
    assert [r.status for r in report.results] == ["downloaded"] * len(sizes), report.results
    fetched = {r.key: r.fetched_bytes for r in report.results}
    for name, size in sizes.items():
        assert (tmp_path / items[name].key).stat().st_size == size
        assert fetched[items[name].key] == size  # every byte written once
        asked = _requests(up, name)
        # a run cut in flight (a loaded machine reads slowly, so cuts become worth it) wastes at
        # most what the server had already pushed into loopback's socket buffers past the cut
        assert up.body_bytes[f"/whl/{name}"] <= size + (len(asked) - 1) * MB, (name, asked)
        if size >= DEFAULT_SPLIT_BYTES:  # in pieces: over the connections free when it starts,
            # split further only where a run would take long (never on this fast loopback)
            assert all(r and r.startswith("bytes=") for r in asked), (name, asked)
        else:
            assert asked == [None], (name, asked)  # too small for two pieces: one stream
    assert len(_requests(up, "e.whl")) >= 2  # the first file over several connections
    assert DEFAULT_SPLIT_BYTES <= 2 * MB  # no threshold beyond two of the smallest pieces


@pytest.mark.parametrize("status", [429, 503])
def test_a_host_refusing_parallel_ranges_gets_one_stream(tmp_path, up, status):
    rng = random.Random(status)
    first, second = rng.randbytes(6 * MB), rng.randbytes(4 * MB)
    a, b = _item(up, "a.whl", first), _item(up, "b.whl", second)
    # the first piece request is served slowly (in flight), the next one is refused
    up.schedule("/whl/a.whl", Fault("drip", rate=2 * MB), Fault("status", status=status))
    with Fetcher(tmp_path, _client(), progress=False, attempts=3) as f:
        ra = f.submit(a).result()
        rb = f.submit(b).result()
    assert (ra.status, rb.status) == ("downloaded", "downloaded"), (ra, rb)
    assert (tmp_path / a.key).read_bytes() == first
    assert (tmp_path / b.key).read_bytes() == second
    asked = _requests(up, "a.whl")
    assert asked[-1] is None  # after the refusal: the whole file over one connection
    assert _requests(up, "b.whl") == [None]  # and every later file from that host
    assert up.body_bytes["/whl/a.whl"] <= 2 * len(first) + MB  # bounded waste before the fallback


# -- aria2's rule: a free connection takes the second half of the largest remaining run ----------
KB128 = 128 * 1024
# (no tail cuts below a block here: these tests are about aria2's rule; the tail rule has its own below)
STEAL = dict(piece_bytes=KB128, split_bytes=2 * KB128, head_steal_bytes=2 * KB128, tail_piece_bytes=KB128,
             connections=2, connections_per_host=2, progress=False)


def _bounded(asked: list) -> list[tuple[int, int]]:
    out = []
    for r in asked:
        if r and r.startswith("bytes=") and not r.endswith("-"):
            a, b = r[6:].split("-")
            out.append((int(a), int(b)))
    return out


def test_a_free_connection_splits_a_large_run_in_flight(tmp_path, up):
    data = random.Random(3).randbytes(16 * KB128)
    item = _item(up, "steal.whl", data)
    # two runs (6 and 10 blocks): one drips, the other is served at once and, once done, takes
    # the second half of what the dripping one has left, again and again
    up.schedule("/whl/steal.whl", Fault("drip", rate=1 * MB), Fault("ok"))
    up.always("/whl/steal.whl", Fault("ok"))
    report = Fetcher(tmp_path, _client(), **STEAL).run([item])
    res = report.results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data
    assert res.fetched_bytes == len(data)  # the owner stopped where the thief began
    asked = _bounded(_requests(up, "steal.whl"))
    runs = [(a, b - 1) for a, b in plan_runs(len(data), KB128, set(), 2, stagger=True)]
    assert runs == [(0, 6 * KB128 - 1), (6 * KB128, 16 * KB128 - 1)]  # staggered: they end apart
    assert set(runs) <= set(asked)  # one run per connection first
    # (which of the two drips is up to the order the server saw them in)
    stolen = [(a, b) for a, b in asked if (a, b) not in runs]
    assert stolen, asked  # ranges that start inside the dripping run while it was in flight
    assert all(any(x < a <= y for x, y in runs) for a, _ in stolen)
    assert all(a % KB128 == 0 for a, _ in stolen)  # on block boundaries
    assert all(b - a + 1 >= KB128 for a, b in stolen)  # never under the smallest piece
    # the dripping owner was cut where the first stolen half begins: no byte written twice,
    # and at most what was in flight at that boundary crossed the link for nothing
    assert up.body_bytes["/whl/steal.whl"] <= len(data) + 2 * KB128


def test_unknown_size_of_a_few_pieces_splits_without_dropping_its_first_answer(tmp_path, up):
    data = random.Random(4).randbytes(3 * KB128 + 5)  # 4 blocks: far under the old 8-piece bound
    url = up.add("/whl/nosize.whl", data)
    item = FetchItem("packages/p/nosize.whl", (url,), hashlib.sha256(data).hexdigest(), None)
    up.schedule("/whl/nosize.whl", Fault("drip", rate=1 * MB))  # the first answer is slow
    up.always("/whl/nosize.whl", Fault("ok"))
    res = Fetcher(tmp_path, _client(), **STEAL).run([item]).results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data
    asked = _requests(up, "nosize.whl")
    assert asked[0] is None
    assert _bounded(asked)  # the rest of its answer was taken over by a range
    assert res.fetched_bytes == len(data)
    assert up.body_bytes["/whl/nosize.whl"] <= len(data) + KB128  # not the whole rest of the first answer


@given(st.integers(1, 10**10), st.integers(64 * 1024, 10**8), st.sets(st.integers(0, 200)), st.integers(1, 64),
       st.booleans())
def test_runs_cover_exactly_the_unfinished_blocks(size, block, done, conns, stagger):
    count = block_count(size, block)
    done = {i for i in done if i < count}
    runs = plan_runs(size, block, done, conns, stagger=stagger)
    covered = [(a, b) for a, b in runs]
    assert all(a < b for a, b in covered)
    assert all(a % block == 0 for a, _ in covered)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(covered))
    left = {i for i in range(count) if i not in done}
    assert sum(b - a for a, b in covered) == sum(min(size, (i + 1) * block) - i * block for i in left)
    assert len(runs) <= count - len(done)  # never a run under one block


def test_a_sidecar_of_the_old_piece_layout_is_not_read_as_blocks(tmp_path, up):
    # 3.5 blocks over 2 connections: the old layout made 4 pieces of 0.875 block, so its
    # "pieces 0 and 1 done" covers 1.75 blocks, not the 2 blocks that "blocks 0 and 1" would
    size = 7 * KB128 // 2
    data = random.Random(5).randbytes(size)
    item = FetchItem("packages/p/old.whl", (up.add("/whl/old.whl", data),), None, size)  # no hash to catch it
    fetcher = Fetcher(tmp_path, _client(), **STEAL)
    part = fetcher._partial_path(item.key)
    part.parent.mkdir(parents=True)
    have = 7 * KB128 // 4
    part.write_bytes(data[:have] + bytes(size - have))
    sidecar_path(part).write_text(json.dumps({"version": 1, "size": size, "etag": None, "last_modified": None,
                                              "piece_bytes": KB128, "count": 4, "done": [0, 1]}))
    res = fetcher.run([item]).results[0]
    assert res.status == "downloaded", res
    assert not res.resumed
    assert (tmp_path / item.key).read_bytes() == data


def test_a_connection_freed_by_another_file_splits_a_file_that_started_as_one_run(tmp_path, up):
    # a one-stream file holds one of the two connections when the large file starts, so the
    # large file starts as one run (no request spent on a split that would only wait); when
    # the small file is done, its connection takes the second half of that run (aria2's
    # rule across files), although no task of the large file is left to do it
    small = random.Random(8).randbytes(50_000)
    data = random.Random(9).randbytes(16 * KB128)
    t, a = _item(up, "t.whl", small), _item(up, "a.whl", data)
    up.schedule("/whl/t.whl", Fault("drip", rate=200_000))
    up.schedule("/whl/a.whl", Fault("drip", rate=1 * MB))
    up.always("/whl/a.whl", Fault("ok"))
    with Fetcher(tmp_path, _client(), **STEAL) as f:
        rt = f.submit(t)
        for _ in range(500):  # until the small file's request holds its connection
            if _requests(up, "t.whl"):
                break
            time.sleep(0.01)
        ra = f.submit(a)
        results = rt.result(), ra.result()
    assert [r.status for r in results] == ["downloaded", "downloaded"], results
    assert (tmp_path / a.key).read_bytes() == data
    asked = _bounded(_requests(up, "a.whl"))
    assert asked[0] == (0, len(data) - 1)  # one run: the other connection was busy
    stolen = asked[1:]
    assert stolen, asked  # split by the connection the small file freed
    assert all(0 < s < len(data) and s % KB128 == 0 and e - s + 1 >= KB128 for s, e in stolen)
    assert results[1].fetched_bytes == len(data)  # no byte written twice
    assert up.body_bytes["/whl/a.whl"] <= len(data) + 2 * KB128


# -- the tail rule: below a block near the end, only where a cut pays for its first-byte wait ----
def test_near_the_end_a_free_connection_cuts_below_a_block_where_it_pays(tmp_path, up, monkeypatch):
    import torchdepot.fetch.engine as engine
    from torchdepot.fetch.segmented import TAIL_GRANULE

    def second_pass(path):
        raise AssertionError(f"{path} read again to hash it")

    monkeypatch.setattr(engine, "sha256_file", second_pass)  # blocks finished by two runs still hash on the way
    data = random.Random(11).randbytes(4 * KB128)
    item = _item(up, "tail.whl", data)
    # two runs (1 and 3 blocks); the one the server sees first drips for a second or so, the other is
    # served at once: no run has two blocks left for long, so only the tail rule splits the dripping one
    up.schedule("/whl/tail.whl", Fault("drip", rate=400_000))
    up.always("/whl/tail.whl", Fault("ok"))
    floor = 16 * 1024
    res = Fetcher(tmp_path, _client(), **dict(STEAL, tail_piece_bytes=floor)).run([item]).results[0]
    assert res.status == "downloaded", res
    assert (tmp_path / item.key).read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.fetched_bytes == len(data)  # every byte written once, though cuts fall inside blocks
    asked = _bounded(_requests(up, "tail.whl"))
    runs = [(a, b - 1) for a, b in plan_runs(len(data), KB128, set(), 2, stagger=True)]
    stolen = [(a, b) for a, b in asked if (a, b) not in runs]
    inside = [(a, b) for a, b in stolen if a % KB128]
    assert inside, asked  # cut below a block
    assert all(a % TAIL_GRANULE == 0 and b - a + 1 >= floor for a, b in inside), asked
    assert up.body_bytes["/whl/tail.whl"] <= len(data) + len(stolen) * 64 * 1024  # what a cut left in flight


def _reading(runs: list[tuple[int, int, int, float]], size: int):
    """A file in flight whose runs (first, pos, end, rate) have been read for a second at ``rate``."""
    from torchdepot.fetch.pieces import PieceState, Validators
    from torchdepot.fetch.segmented import _Segmented

    seg = _Segmented(item=None, url="", part=None, fd=-1, size=size, block=MB,  # type: ignore[arg-type]
                     state=PieceState(Validators(size), MB, block_count(size, MB)), started=0.0, meter=None)  # type: ignore[arg-type]
    now = 100.0
    for first, pos, end, rate in runs:
        run = seg.add_run(first, end)
        run.pos, run.since, run.base = pos, now - 1.0, pos - int(rate)
    return seg, now


@pytest.mark.parametrize("wait", [0.01, 0.03, 0.2])
def test_a_tail_cut_pays_for_its_first_byte_wait_or_is_not_made(wait):
    from torchdepot.fetch.segmented import TAIL_GRANULE, TAIL_PAYS, _tail_cut

    rate = 8 * MB
    floor = 64 * 1024
    least = (1 + 2 * TAIL_PAYS) * wait * rate  # bytes left under which a cut cannot pay
    for left in (int(least * 0.9), int(least * 1.1) + 3 * TAIL_GRANULE, 3 * MB // 2):
        seg, now = _reading([(0, 100_000, 100_000 + left, rate)], 4 * MB)
        found = _tail_cut(seg, now, wait, floor, head_min=4 * MB)
        share_would_be = (left - wait * rate) / 2
        if left < least or share_would_be < floor:
            assert found is None, (left, found)
            continue
        assert found is not None, left
        seconds, run, cut = found
        assert seconds == pytest.approx(left / rate)
        assert cut % TAIL_GRANULE == 0
        assert run.pos < cut
        assert run.end - cut >= floor
        # the owner's rest and the new run's wait plus reading end together (to a granule)
        owner, thief = (cut - run.pos) / rate, wait + (run.end - cut) / rate
        assert abs(owner - thief) <= 2 * TAIL_GRANULE / rate


def test_the_tail_rule_cuts_the_run_that_would_end_last_not_the_largest():
    from torchdepot.fetch.segmented import _tail_cut

    # a 1.5 MB run at 8 MB/s ends in 0.19 s; a 1 MB run at 2 MB/s in 0.5 s: that one is cut
    seg, now = _reading([(0, 0, 3 * MB // 2, 8 * MB), (2 * MB, 2 * MB, 3 * MB, 2 * MB)], 4 * MB)
    found = _tail_cut(seg, now, 0.03, 64 * 1024, head_min=4 * MB)
    assert found is not None
    assert found[1].first == 2 * MB
    # a run not being read (no rate) or read too briefly to tell is never cut by the tail rule
    seg, now = _reading([(0, 0, 3 * MB // 2, 8 * MB)], 4 * MB)
    seg.runs[0].since = None
    assert _tail_cut(seg, now, 0.03, 64 * 1024, head_min=4 * MB) is None
    seg.runs[0].since = now - 0.001
    assert _tail_cut(seg, now, 0.03, 64 * 1024, head_min=4 * MB) is None


def test_bytes_at_the_hashed_prefix_are_hashed_from_memory_the_rest_read_back_once(tmp_path, monkeypatch):
    import os

    import torchdepot.fetch.segmented as segmented
    from torchdepot.fetch.pieces import PieceState, Validators

    data = random.Random(12).randbytes(3 * KB128 + 1000)
    part = tmp_path / "f.part"
    part.write_bytes(bytes(len(data)))
    fd = os.open(part, os.O_RDWR)
    read_back: list[tuple[int, int]] = []
    real = os.preadv

    def preadv(fd_, buffers, offset):
        n = real(fd_, buffers, offset)
        read_back.append((offset, n))
        return n

    monkeypatch.setattr(segmented.os, "preadv", preadv)
    try:
        size = len(data)
        seg = segmented._Segmented(item=None, url="", part=part, fd=fd, size=size, block=KB128,  # type: ignore[arg-type]
                                   state=PieceState(Validators(size), KB128, block_count(size, KB128)),
                                   started=0.0, meter=None)  # type: ignore[arg-type]

        def write(first: int, end: int) -> None:  # what a run does with a chunk: write, hash if at the prefix, record
            os.pwrite(fd, data[first:end], first)
            seg.digest.take(data[first:end], first)
            with seg.lock:
                segmented._record(seg, first, end)
            seg.digest.follow(seg)

        cut = KB128 + 5000  # a run that ends inside a block (a tail cut), the next one written first
        write(2 * KB128, size)  # past a gap: not hashed yet
        write(cut, 2 * KB128)
        assert seg.digest.pos == 0
        write(0, 1000)  # at the prefix: from memory
        write(1000, cut)  # from memory, up to inside block 1; then blocks 1 and the rest are done: read back
        seg.digest.follow(seg, wait=True)
    finally:
        os.close(fd)
    assert seg.digest.pos == size
    assert seg.digest.hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert seg.state.done == set(range(block_count(size, KB128)))
    assert read_back, "the bytes past the gap are read back"
    assert all(offset >= cut for offset, _ in read_back)  # never what was hashed from memory
    assert sum(n for _, n in read_back) == size - cut  # and the rest exactly once


def test_a_free_connection_waits_for_young_runs_of_its_own_file_only():
    # a file's thread waits for all its piece tasks: one waiting for another file's young runs
    # (to judge their rate for the tail rule) would hold back its own file's end (seen 0.14-0.25 s)
    from torchdepot.fetch.segmented import RATE_SECONDS, Segmenter

    segmenter = Segmenter(pool=None, executor=None, split_bytes=2 * MB, piece_bytes=MB,  # type: ignore[arg-type]
                          connections_per_host=16, attempts=1)
    own, now = _reading([(0, MB, MB, 8 * MB)], 4 * MB)  # its one run is done
    other, _ = _reading([(0, 0, 3 * MB, 8 * MB)], 4 * MB)
    other.runs[0].since = time.monotonic()  # just asked for: too young to judge
    segmenter.in_flight.add(own)
    segmenter.in_flight.add(other)
    assert segmenter._tail_wait(own) == 0
    assert 0 < segmenter._tail_wait(other) <= RATE_SECONDS
