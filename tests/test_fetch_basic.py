import hashlib
import os

from tests.httpserver import Server
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.net.http import HttpConfig, make_session


def test_fetch_roundtrip(tmp_path):
    up = tmp_path/"up"; up.mkdir()
    data = os.urandom(3_000_000); (up/"a.whl").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    out = tmp_path/"out"
    with Server(up) as s:
        # half-written partial resumes with Range
        f = Fetcher(out, make_session(HttpConfig(retries=1, backoff=0.01)), progress=False)
        part = f._partial_path("packages/a/a.whl"); part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(data[:1_000_000])
        r = f.run([FetchItem("packages/a/a.whl", (s.url+"/a.whl",), sha, len(data))])
        assert r.results[0].status == "downloaded", r.results[0]
        assert r.results[0].resumed
        assert r.results[0].fetched_bytes == 2_000_000
        assert (out/"packages/a/a.whl").read_bytes() == data
        r2 = Fetcher(out, make_session(), progress=False).run([FetchItem("packages/a/a.whl", (s.url+"/a.whl",), sha, len(data))])
        assert r2.results[0].status == "present"
        assert r2.fetched_bytes == 0
        # wrong claimed hash -> fail policy publishes nothing
        r3 = Fetcher(out, make_session(HttpConfig(retries=0, backoff=0.01)), progress=False).run([FetchItem("packages/a/b.whl", (s.url+"/a.whl",), "0"*64)])
        assert r3.results[0].status == "failed"
        assert not (out/"packages/a/b.whl").exists()
        r4 = Fetcher(out, make_session(HttpConfig(retries=0, backoff=0.01)), progress=False, on_hash_mismatch="warn").run([FetchItem("packages/a/b.whl", (s.url+"/a.whl",), "0"*64)])
        assert r4.results[0].status == "downloaded"
        assert r4.results[0].hash_mismatch
    r5 = Fetcher(out, make_session(), progress=False).run([FetchItem("packages/a/c.whl", ((up/"a.whl").as_uri(),), sha)])
    assert r5.results[0].status == "downloaded"


def test_segmented_roundtrip_by_host_name_and_old_api(tmp_path):
    """A LAN-style host name (not an IP), the batch helper, and a re-run that reads nothing."""
    from tests.faultserver import FaultServer
    from torchdepot.fetch import fetch_items

    data = os.urandom(3_000_000)
    sha = hashlib.sha256(data).hexdigest()
    with FaultServer(validators=True) as up:
        port = up.url.rsplit(":", 1)[1]
        up.add("/whl/big.whl", data)
        url = f"http://localhost:{port}/whl/big.whl"
        item = FetchItem("packages/b/big-1.0-py3-none-any.whl", (url,), sha, len(data))
        kw = dict(progress=False, split_bytes=1_000_000, piece_bytes=256 * 1024, allowed_hosts={"localhost"})
        rep = fetch_items(tmp_path, [item], make_session(HttpConfig(retries=0)), **kw)
        assert rep.results[0].status == "downloaded"
        assert rep.fetched_bytes == len(data)
        assert len(up.ranges["/whl/big.whl"]) > 1  # pieces
        assert (tmp_path / item.key).read_bytes() == data
        rep = fetch_items(tmp_path, [item], make_session(), **kw)
        assert rep.results[0].status == "present"
        assert up.hits["/whl/big.whl"] == len(up.ranges["/whl/big.whl"])


def test_moving_seconds_is_the_union_of_the_downloads_not_the_fetchers_open_time(tmp_path):
    """Issue 21: a fetcher started early (the pinned torch while uv resolves) idles between its
    files; the report's bytes-moving time leaves the idle gap out, overlaps counted once."""
    import time

    from torchdepot.fetch.items import busy_seconds

    assert busy_seconds([]) == 0
    assert busy_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == 4.0
    up = tmp_path / "up"
    up.mkdir()
    (up / "a.whl").write_bytes(b"a" * 1000)
    (up / "b.whl").write_bytes(b"b" * 1000)
    with Server(up) as s, Fetcher(tmp_path / "out", make_session(), progress=False) as f:
        f.submit(FetchItem("packages/a/a.whl", (s.url + "/a.whl",))).result()
        time.sleep(0.5)  # the fetcher is open but moves nothing
        f.submit(FetchItem("packages/b/b.whl", (s.url + "/b.whl",))).result()
    rep = f.report
    assert rep is not None
    assert [r.status for r in rep.results] == ["downloaded", "downloaded"]
    assert all(r.span is not None and r.span[0] <= r.span[1] for r in rep.results)
    assert rep.seconds >= 0.5
    assert rep.moving_seconds < rep.seconds - 0.4


def test_a_local_copy_is_used_first_and_the_result_names_the_url(tmp_path):
    """FetchItem.local: bytes this run already holds are copied, no URL is asked (nothing
    listens on it here), and the result names urls[0], where the bytes came from."""
    import socket

    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    local = tmp_path / "spool.whl"
    local.write_bytes(data)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x-1.0-py3-none-any.whl"
    fetcher = Fetcher(tmp_path / "out", make_session(HttpConfig(retries=0, backoff=0.01)), progress=False)
    res = fetcher.run([FetchItem("packages/x/x.whl", (url,), sha, local=local.as_uri())]).results[0]
    assert (res.status, res.url, res.sha256) == ("downloaded", url, sha)
    assert (tmp_path / "out" / "packages/x/x.whl").read_bytes() == data
    bad = Fetcher(tmp_path / "out", make_session(HttpConfig(retries=0, backoff=0.01)), progress=False)
    res = bad.run([FetchItem("packages/x/y.whl", (url,), "0" * 64, local=local.as_uri())]).results[0]
    assert (res.status, res.url, res.hash_mismatch) == ("failed", url, True)
