"""Download bounds (issue 13): a per-file minimum-rate floor over a window, the optional
whole-run deadline, and the HTTP header parsers (Range, Content-Range, Retry-After, the
piece sidecar) fuzzed with hypothesis: they never raise and stay within bounds."""

from __future__ import annotations

import hashlib
import itertools
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faultserver import Fault, FaultServer
from torchdepot.errors import UpstreamError
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.fetch.bounds import RateFloor, RateMeter
from torchdepot.fetch.pieces import PieceState, Validators, plan_pieces
from torchdepot.net.http import (
    MAX_RETRY_AFTER,
    Client,
    HttpConfig,
    parse_content_range,
    parse_range,
    range_header,
    retry_after_seconds,
)


def _client() -> Client:
    return Client(HttpConfig(retries=0, backoff=0.01, max_backoff=0.05, connect_timeout=2.0, read_timeout=2.0))


def _data(size: int) -> bytes:
    return (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]


@pytest.fixture
def up():
    with FaultServer(validators=True) as s:
        yield s


@pytest.mark.parametrize("split", [False, True], ids=["one-connection", "pieces"])
def test_dripping_upstream_hits_the_rate_floor(tmp_path, up, split):
    data = _data(2_000_000)
    url = up.add("/whl/drip.whl", data)
    up.always("/whl/drip.whl", Fault("drip", rate=20_000))  # would take 100 s
    item = FetchItem("packages/p/drip-1.0-py3-none-any.whl", (url,), hashlib.sha256(data).hexdigest(), len(data))
    t = time.monotonic()
    rep = Fetcher(tmp_path, _client(), progress=False, min_rate=500_000, rate_window=0.5,  # 8 x 20 kB/s < 500 kB/s
                  split_bytes=500_000 if split else 10**9, piece_bytes=128 * 1024).run([item])
    took = time.monotonic() - t
    res = rep.results[0]
    assert res.status == "failed", res
    assert "too slow" in res.error, res
    assert url in res.error, res
    assert "\n" not in res.error
    assert not (tmp_path / item.key).exists()
    assert took < 3.0, took


def test_a_dripping_index_page_hits_the_page_deadline(up):
    """Index pages have a whole-page deadline: 1 byte every few ms never trips the read timeout
    (each recv gets a byte), so without it a sync would wait forever on one page."""
    url = up.add("/whl/cpu/torch/", b"<html>" + b" " * 200_000 + b"</html>")
    up.always("/whl/cpu/torch/", Fault("drip", rate=2_000))  # would take 100 s
    client = Client(HttpConfig(retries=0, connect_timeout=2.0, read_timeout=2.0, page_deadline=1.0))
    t = time.monotonic()
    with pytest.raises(UpstreamError, match="page not complete after 1 s") as exc:
        client.get_bytes(url)
    assert url in str(exc.value)
    assert time.monotonic() - t < 4.0


def test_a_slow_link_above_the_floor_completes(tmp_path, up):
    data = _data(300_000)
    url = up.add("/whl/slow.whl", data)
    up.always("/whl/slow.whl", Fault("drip", rate=400_000))
    item = FetchItem("packages/p/slow-1.0-py3-none-any.whl", (url,), hashlib.sha256(data).hexdigest(), len(data))
    rep = Fetcher(tmp_path, _client(), progress=False, min_rate=50_000, rate_window=0.3).run([item])
    assert rep.results[0].status == "downloaded", rep.results[0]


def test_whole_run_deadline_bounds_a_segmented_file(tmp_path, up):
    data = _data(2_000_000)
    url = up.add("/whl/big.whl", data)
    # 50 kB/s a response: even over 16 connections the file takes 2.5 s, well past the deadline
    # (at 200 kB/s, 16 runs could end it in 0.63 s, a coin toss against 0.6 s)
    up.always("/whl/big.whl", Fault("drip", rate=50_000))
    item = FetchItem("packages/p/big-1.0-py3-none-any.whl", (url,), None, len(data))
    t = time.monotonic()
    rep = Fetcher(tmp_path, _client(), progress=False, deadline=0.6, split_bytes=500_000,
                  piece_bytes=128 * 1024).run([item])
    assert rep.results[0].status == "failed"
    assert "overall timeout" in rep.results[0].error
    assert time.monotonic() - t < 3.0


def test_rate_meter_window():
    m = RateMeter(RateFloor(min_rate=100, window=10), now=0.0)
    assert m.too_slow(5.0) is None  # no full window yet
    m.add(500, 5.0)
    assert m.too_slow(10.0) == 500  # 500 < 100 * 10
    m.add(600, 12.0)
    assert m.too_slow(12.0) is None  # 1100 bytes since t=0
    assert m.too_slow(25.0) == 0  # nothing in the last 10 s
    assert RateMeter(RateFloor(min_rate=0), now=0.0).too_slow(1e9) is None  # 0 disables


def test_defaults_are_documented_values():
    f = RateFloor()
    assert (f.min_rate, f.window) == (1000.0, 60.0)


# -- header parsers -------------------------------------------------------------------------
@given(st.text(max_size=200))
def test_content_range_never_raises(text):
    cr = parse_content_range(text)
    if cr is not None:
        assert 0 <= cr.first <= cr.last
        assert (cr.total is None or cr.last < cr.total)


@given(st.integers(0, 10**18), st.integers(0, 10**18), st.integers(1, 10**18))
def test_content_range_roundtrip(a, b, total):
    first, last = min(a, b), max(a, b)
    cr = parse_content_range(f"bytes {first}-{last}/{total}")
    if last < total:
        assert (cr.first, cr.last, cr.total, cr.length) == (first, last, total, last - first + 1)
    else:
        assert cr is None


@given(st.text(max_size=200), st.integers(0, 10**12))
def test_range_never_raises_and_stays_inside_the_body(text, size):
    r = parse_range(text, size)
    if r is not None:
        assert 0 <= r[0] <= r[1] < size


@given(st.integers(0, 10**15), st.one_of(st.none(), st.integers(0, 10**15)), st.integers(1, 10**15))
def test_range_header_roundtrip(first, last, size):
    if last is not None and last < first:
        first, last = last, first
    r = parse_range(range_header(first, last), size)
    if first >= size:
        assert r is None
    else:
        assert r == (first, size - 1 if last is None else min(last, size - 1))


def test_hostile_header_numbers():
    digits = "9" * 5000
    assert parse_content_range(f"bytes 0-{digits}/{digits}") is None
    assert parse_range(f"bytes={digits}-", 10) is None
    assert parse_range("bytes=-5", 10) == (5, 9)
    assert retry_after_seconds(digits) is None
    assert retry_after_seconds("9" * 30) is None or retry_after_seconds("9" * 30) <= MAX_RETRY_AFTER


@given(st.text(max_size=80))
def test_retry_after_never_raises_and_is_bounded(text):
    v = retry_after_seconds(text)
    assert v is None or 0 <= v <= MAX_RETRY_AFTER


@given(st.integers(0, 10**19))
def test_retry_after_seconds_are_capped(n):
    v = retry_after_seconds(str(n))
    assert v == min(float(n), MAX_RETRY_AFTER)


# -- pieces and their sidecar ---------------------------------------------------------------
@given(st.integers(1, 10**12), st.integers(64 * 1024, 10**9), st.integers(1, 64))
def test_pieces_tile_the_file(size, piece, conns):
    pieces = plan_pieces(size, piece, conns)
    assert pieces[0].first == 0
    assert pieces[-1].last == size - 1
    assert all(a.last + 1 == b.first for a, b in itertools.pairwise(pieces))
    assert len(pieces) <= max(1, 2 * conns) or all(p.length >= piece for p in pieces[:-1])


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
                     max_leaves=30)


@settings(max_examples=200)
@given(_json)
def test_sidecar_parser_never_raises(doc):
    PieceState.from_json(json.dumps(doc))


@given(st.integers(1, 10**12), st.one_of(st.none(), st.text(max_size=30)), st.sets(st.integers(0, 9)))
def test_sidecar_roundtrip(size, etag, done):
    state = PieceState(Validators(size, etag, None), 4_000_000, 10, set(done))
    back = PieceState.from_json(state.to_json())
    assert back == state


def test_sidecar_garbage_is_ignored():
    for text in ("", "{", "[]", '{"version": 1}', "\x00" * 10, '{"version":1,"size":true,"piece_bytes":1,"count":1,'
                 '"done":[]}', '{"version":1,"size":5,"piece_bytes":1,"count":1,"done":[3]}'):
        assert PieceState.from_json(text) is None
