"""Segmentation without a size threshold (issue 21): every file large enough for two pieces
of the smallest size (about 1 MB) goes out in pieces that share the run's connections, and a
host that refuses an extra connection (429/503 while another piece of the file is in flight)
gets one stream per file from then on. Real loopback servers; bytes counted at the server."""

from __future__ import annotations

import hashlib
import random

import pytest

from tests.faultserver import Fault, FaultServer
from torchdepot.fetch import DEFAULT_SPLIT_BYTES, Fetcher, FetchItem
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


def test_a_mix_of_sizes_splits_every_file_of_two_pieces_or_more(tmp_path, up):
    rng = random.Random(7)
    sizes = {"a.whl": MB // 2, "b.whl": 3 * MB // 2, "c.whl": 5 * MB // 2, "d.whl": 6 * MB, "e.whl": 12 * MB}
    items = {name: _item(up, name, rng.randbytes(size)) for name, size in sizes.items()}
    report = Fetcher(tmp_path, _client(), progress=False).run(list(items.values()))  # the defaults
    assert [r.status for r in report.results] == ["downloaded"] * len(sizes), report.results
    for name, size in sizes.items():
        assert (tmp_path / items[name].key).stat().st_size == size
        assert up.body_bytes[f"/whl/{name}"] == size  # every byte once
        asked = _requests(up, name)
        if size >= DEFAULT_SPLIT_BYTES:
            assert len(asked) >= 2, (name, asked)
            assert all(r and r.startswith("bytes=") for r in asked), (name, asked)
        else:
            assert asked == [None], (name, asked)  # too small for two pieces: one stream
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
