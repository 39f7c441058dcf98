"""The fetcher against a fault-injecting upstream (tests/faultserver.py, real TCP on 127.0.0.1).

Every run must end with each file either published and hash-valid, or failed with a
one-line reason and nothing at its final path. Small files, short backoff: seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from tests.faultserver import Fault, FaultServer, flaky_faults, leave_partial
from torchdepot.fetch import Fetcher, FetchItem, FetchReport
from torchdepot.net.http import Client, HttpConfig

SIZE = 200_000


def _data(seed: int = 0, size: int = SIZE) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _client(**kw) -> Client:
    cfg = dict(retries=0, backoff=0.01, max_backoff=0.05, connect_timeout=2.0, read_timeout=2.0)
    cfg.update(kw)
    return Client(HttpConfig(**cfg))


def _fetch(root: Path, items: list[FetchItem], client: Client | None = None, **kw) -> FetchReport:
    kw.setdefault("attempts", 4)
    kw.setdefault("progress", False)
    return Fetcher(root, client or _client(), **kw).run(items)


def check_invariants(root: Path, report: FetchReport, expected: dict[str, bytes]) -> None:
    """Published => exact bytes; failed => one-line reason and nothing at the final path."""
    for r in report.results:
        final = root / r.key
        if r.status in ("downloaded", "present"):
            assert final.read_bytes() == expected[r.key], r
            assert r.sha256 == _sha(expected[r.key])
        else:
            assert r.status == "failed"
            assert r.error, r
            assert "\n" not in r.error, r
            assert not final.exists(), f"{r.key} published despite failure: {r.error}"
    # Nothing but published files (and the state dir) under the root.
    published = {r.key for r in report.results if r.status != "failed"}
    seen = {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).as_posix().startswith(".torchdepot")}
    assert seen <= published | {".torchdepot.lock"}, seen - published


@pytest.fixture
def up():
    with FaultServer() as s:
        yield s


def _item(up: FaultServer, name: str, data: bytes, *, with_hash: bool = True, with_size: bool = True) -> FetchItem:
    url = up.add(f"/whl/{name}", data)
    return FetchItem(f"packages/p/{name}", (url,), _sha(data) if with_hash else None,
                     len(data) if with_size else None)


def test_clean_download_baseline(tmp_path, up):
    data = _data(1)
    item = _item(up, "a-1.0-py3-none-any.whl", data)
    rep = _fetch(tmp_path, [item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].status == "downloaded"
    assert up.hits["/whl/a-1.0-py3-none-any.whl"] == 1


TRANSIENT = flaky_faults(SIZE) + [
    Fault("html"),
    Fault("stall", n=1000, seconds=1.5),
    Fault("ignore_range"),
    Fault("bad_content_range"),
    Fault("oversize"),
]


@pytest.mark.parametrize("fault", [f for f in TRANSIENT if f.mode != "ignore_range"], ids=lambda f: f"{f.mode}{f.status if f.mode == 'status' else ''}")
def test_transient_fault_twice_then_serve(tmp_path, up, fault):
    data = _data(2)
    item = _item(up, "b-1.0-py3-none-any.whl", data)
    up.schedule("/whl/b-1.0-py3-none-any.whl", fault, fault)
    rep = _fetch(tmp_path, [item], _client(read_timeout=0.5), attempts=4)
    check_invariants(tmp_path, rep, {item.key: data})
    res = rep.results[0]
    assert res.status == "downloaded", res
    assert up.hits["/whl/b-1.0-py3-none-any.whl"] == 3 == res.attempts


@pytest.mark.parametrize("fault", TRANSIENT + [Fault("wrong_bytes"), Fault("html_disguised")],
                         ids=lambda f: f"{f.mode}{f.status if f.mode == 'status' else ''}")
def test_persistent_fault_fails_cleanly_with_bounded_attempts(tmp_path, up, fault):
    data = _data(3)
    item = _item(up, "c-1.0-py3-none-any.whl", data)
    up.always("/whl/c-1.0-py3-none-any.whl", fault)
    rep = _fetch(tmp_path, [item], _client(read_timeout=0.5), attempts=3)
    check_invariants(tmp_path, rep, {item.key: data})
    res = rep.results[0]
    # ignore_range only bites on a resume (a first request gets the whole body, correctly).
    if fault.mode == "ignore_range":
        assert res.status == "downloaded"
        return
    assert res.status == "failed", res
    assert up.hits["/whl/c-1.0-py3-none-any.whl"] <= 3


@pytest.mark.parametrize("mode", ["wrong_bytes", "html_disguised", "html"])
def test_no_claimed_hash_still_refuses_html_and_flags_nothing_wrong(tmp_path, up, mode):
    """Without an upstream hash, a challenge page must still never be stored as a wheel."""
    data = _data(4)
    item = _item(up, "d-1.0-py3-none-any.whl", data, with_hash=False, with_size=False)
    up.always("/whl/d-1.0-py3-none-any.whl", Fault(mode))
    rep = _fetch(tmp_path, [item], attempts=2)
    res = rep.results[0]
    if mode == "wrong_bytes":
        # Nothing can tell wrong bytes from right ones without a claim: stored, and hashed truthfully.
        assert res.status == "downloaded"
        assert res.sha256 == _sha((tmp_path / item.key).read_bytes())
    else:
        assert res.status == "failed", res
        assert "HTML" in res.error, res
        assert not (tmp_path / item.key).exists()


def test_wrong_bytes_once_is_refetched_from_scratch(tmp_path, up):
    data = _data(5)
    item = _item(up, "e-1.0-py3-none-any.whl", data)
    up.schedule("/whl/e-1.0-py3-none-any.whl", Fault("wrong_bytes"))
    rep = _fetch(tmp_path, [item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].status == "downloaded"
    assert up.ranges["/whl/e-1.0-py3-none-any.whl"] == [None, None]  # second try from zero


def test_wrong_bytes_under_warn_policy_is_published_and_flagged(tmp_path, up):
    data = _data(6)
    item = _item(up, "f-1.0-py3-none-any.whl", data)
    up.always("/whl/f-1.0-py3-none-any.whl", Fault("wrong_bytes"))
    rep = _fetch(tmp_path, [item], on_hash_mismatch="warn")
    res = rep.results[0]
    assert res.status == "downloaded"
    assert res.hash_mismatch
    stored = (tmp_path / item.key).read_bytes()
    assert res.sha256 == _sha(stored) != item.sha256


def test_resume_with_range_refetches_only_the_rest(tmp_path, up):
    data = _data(7)
    item = _item(up, "g-1.0-py3-none-any.whl", data)
    cut = int(SIZE * 0.7)
    # a clean close (an abrupt reset may discard bytes still in the client's socket buffer)
    up.schedule("/whl/g-1.0-py3-none-any.whl", Fault("truncate", n=cut))
    rep = _fetch(tmp_path, [item])
    check_invariants(tmp_path, rep, {item.key: data})
    res = rep.results[0]
    assert res.status == "downloaded"
    assert res.resumed
    assert up.ranges["/whl/g-1.0-py3-none-any.whl"] == [None, f"bytes={cut}-"]
    # bytes sent for the second attempt = the rest only
    assert up.body_bytes["/whl/g-1.0-py3-none-any.whl"] - cut == SIZE - cut < SIZE


def test_resume_across_runs_after_a_crash(tmp_path, up):
    """A partial left by a killed run is resumed by the next one."""
    data = _data(8)
    item = _item(up, "h-1.0-py3-none-any.whl", data)
    f = Fetcher(tmp_path, _client(), progress=False)
    leave_partial(f, item.key, data[:150_000])
    rep = f.run([item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].resumed
    assert up.body_bytes["/whl/h-1.0-py3-none-any.whl"] == SIZE - 150_000


def test_corrupt_partial_is_caught_by_hash_and_restarted(tmp_path, up):
    data = _data(9)
    item = _item(up, "i-1.0-py3-none-any.whl", data)
    f = Fetcher(tmp_path, _client(), progress=False)
    leave_partial(f, item.key, b"\0" * 100_000)  # garbage prefix: resume yields a wrong hash
    rep = f.run([item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].status == "downloaded"
    assert up.ranges["/whl/i-1.0-py3-none-any.whl"] == ["bytes=100000-", None]


@pytest.mark.parametrize("mode", ["ignore_range", "bad_content_range"])
def test_range_not_honoured_restarts_cleanly(tmp_path, up, mode):
    data = _data(10)
    item = _item(up, "j-1.0-py3-none-any.whl", data)
    f = Fetcher(tmp_path, _client(), progress=False, attempts=3)
    part = leave_partial(f, item.key, data[:80_000])
    up.schedule("/whl/j-1.0-py3-none-any.whl", Fault(mode))
    rep = f.run([item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].status == "downloaded"
    assert not part.exists()


def test_404_is_not_retried(tmp_path, up):
    item = FetchItem("packages/p/k-1.0-py3-none-any.whl", (up.url + "/whl/missing.whl",), None)
    rep = _fetch(tmp_path, [item], attempts=5)
    res = rep.results[0]
    assert res.status == "failed"
    assert "404" in res.error
    assert up.hits["/whl/missing.whl"] == 1


def test_failover_to_second_url(tmp_path, up):
    data = _data(11)
    item = _item(up, "l-1.0-py3-none-any.whl", data)
    item = FetchItem(item.key, (up.url + "/whl/gone.whl",) + item.urls, item.sha256, item.size)
    rep = _fetch(tmp_path, [item])
    check_invariants(tmp_path, rep, {item.key: data})
    assert rep.results[0].status == "downloaded"


def test_retry_after_is_honoured(tmp_path, up):
    data = _data(12, 10_000)
    item = _item(up, "m-1.0-py3-none-any.whl", data)
    up.schedule("/whl/m-1.0-py3-none-any.whl", Fault("status", status=429, retry_after="1"))
    t = time.monotonic()
    rep = _fetch(tmp_path, [item], _client(max_backoff=5))
    assert rep.results[0].status == "downloaded"
    assert time.monotonic() - t >= 0.95


def test_backoff_grows_with_jitter_and_is_capped():
    c = Client(HttpConfig(backoff=0.1, max_backoff=1.0))
    for attempt in range(6):
        delays = [c.backoff_delay(attempt) for _ in range(200)]
        base = min(1.0, 0.1 * 2**attempt)
        assert all(base * 0.5 <= d <= base for d in delays)
        assert len(set(delays)) > 100  # jitter: parallel jobs do not retry in lockstep
    assert c.backoff_delay(0, retry_after=0.7) >= 0.7
    assert c.backoff_delay(0, retry_after=3600) == 1.0  # a hostile Retry-After cannot wedge us


def test_client_retries_are_bounded(tmp_path, up):
    up.add("/simple/", b"<html></html>")
    up.always("/simple/", Fault("status", status=503))
    c = _client(retries=3)
    from torchdepot.errors import UpstreamError
    with pytest.raises(UpstreamError, match="503"):
        c.get_bytes(up.url + "/simple/")
    assert up.hits["/simple/"] == 4


def test_per_file_timeout_on_slow_drip(tmp_path, up):
    data = _data(13)
    item = _item(up, "n-1.0-py3-none-any.whl", data)
    up.always("/whl/n-1.0-py3-none-any.whl", Fault("drip", rate=20_000))  # would take 10 s
    t = time.monotonic()
    rep = _fetch(tmp_path, [item], file_timeout=0.6)
    took = time.monotonic() - t
    res = rep.results[0]
    check_invariants(tmp_path, rep, {item.key: data})
    assert res.status == "failed", res
    assert "timeout" in res.error, res
    assert took < 3.0, took


def test_per_file_timeout_on_a_stalled_body(tmp_path, up):
    data = _data(14)
    item = _item(up, "o-1.0-py3-none-any.whl", data)
    up.always("/whl/o-1.0-py3-none-any.whl", Fault("stall", n=100, seconds=3))
    t = time.monotonic()
    rep = _fetch(tmp_path, [item], _client(read_timeout=10), file_timeout=0.6)
    res = rep.results[0]
    assert res.status == "failed", res
    assert "timeout" in res.error, res
    assert time.monotonic() - t < 2.5


def test_overall_timeout_bounds_the_run(tmp_path, up):
    datas = {f"packages/p/q{i}-1.0-py3-none-any.whl": _data(100 + i) for i in range(6)}
    items = []
    for key, data in datas.items():
        name = key.rsplit("/", 1)[1]
        items.append(_item(up, name, data))
        up.always(f"/whl/{name}", Fault("drip", rate=40_000))  # 5 s each
    t = time.monotonic()
    rep = _fetch(tmp_path, items, jobs=2, deadline=0.8)
    took = time.monotonic() - t
    check_invariants(tmp_path, rep, datas)
    assert all(r.status == "failed" and "overall timeout" in r.error for r in rep.results), rep.results
    assert took < 3.0, took


def test_deadline_starts_at_run_not_construction(tmp_path, up):
    data = _data(15, 1000)
    item = _item(up, "r-1.0-py3-none-any.whl", data)
    f = Fetcher(tmp_path, _client(), progress=False, deadline=0.3)
    time.sleep(0.4)
    assert f.run([item]).results[0].status == "downloaded"


def test_backoff_sleep_respects_deadline(tmp_path, up):
    data = _data(16, 1000)
    item = _item(up, "s-1.0-py3-none-any.whl", data)
    up.always("/whl/s-1.0-py3-none-any.whl", Fault("status", status=503, retry_after="30"))
    t = time.monotonic()
    rep = _fetch(tmp_path, [item], _client(max_backoff=30), file_timeout=0.5, attempts=5)
    assert rep.results[0].status == "failed"
    assert time.monotonic() - t < 2.0


def test_redirect_loop_is_bounded(tmp_path, up):
    up.add("/whl/loop.whl", b"x")
    up.always("/whl/loop.whl", Fault("redirect_loop"))
    item = FetchItem("packages/p/loop-1.0-py3-none-any.whl", (up.url + "/whl/loop.whl",), None)
    rep = _fetch(tmp_path, [item], max_redirects=5, attempts=3)
    res = rep.results[0]
    assert res.status == "failed"
    assert "redirect" in res.error
    assert up.hits["/whl/loop.whl"] == 6  # one chain of 1 + 5 hops, not retried


def test_redirect_to_another_host_needs_policy(tmp_path, up):
    data = _data(17)
    with FaultServer() as other:
        port = other.url.rsplit(":", 1)[1]
        other.add("/files/t.whl", data)
        up.add("/whl/t.whl", b"")
        up.always("/whl/t.whl", Fault("redirect", location=f"http://localhost:{port}/files/t.whl"))
        item = FetchItem("packages/p/t-1.0-py3-none-any.whl", (up.url + "/whl/t.whl",), _sha(data), len(data))
        rep = _fetch(tmp_path, [item], allowed_hosts={"127.0.0.1"})
        res = rep.results[0]
        assert res.status == "failed"
        assert "not allowed" in res.error
        assert "localhost" in res.error
        assert other.hits["/files/t.whl"] == 0
        assert up.hits["/whl/t.whl"] == 1
        check_invariants(tmp_path, rep, {item.key: data})
        rep = _fetch(tmp_path, [item], allowed_hosts={"127.0.0.1", "localhost"})
        assert rep.results[0].status == "downloaded"
        check_invariants(tmp_path, rep, {item.key: data})


def test_first_url_host_is_also_checked(tmp_path, up):
    data = _data(18)
    item = _item(up, "u-1.0-py3-none-any.whl", data)
    rep = _fetch(tmp_path, [item], allowed_hosts={"download.pytorch.org"})
    assert rep.results[0].status == "failed"
    assert up.hits["/whl/u-1.0-py3-none-any.whl"] == 0


def test_no_partial_file_is_ever_visible_at_the_final_path(tmp_path, up):
    data = _data(19, 300_000)
    item = _item(up, "v-1.0-py3-none-any.whl", data)
    up.always("/whl/v-1.0-py3-none-any.whl", Fault("drip", rate=600_000))
    final = tmp_path / item.key
    seen: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(len(final.read_bytes()))
            time.sleep(0.002)

    w = threading.Thread(target=watch)
    w.start()
    try:
        rep = _fetch(tmp_path, [item])
    finally:
        stop.set()
        w.join()
    assert rep.results[0].status == "downloaded"
    assert all(n == len(data) for n in seen)
    check_invariants(tmp_path, rep, {item.key: data})


def test_mixed_faults_in_parallel(tmp_path, up):
    import random

    rng = random.Random(1234)
    modes = TRANSIENT + [Fault("wrong_bytes"), Fault("html_disguised"), Fault("ok")]
    expected, items = {}, []
    for i in range(24):
        data = _data(200 + i, 50_000 + i)
        name = f"w{i}-1.0-py3-none-any.whl"
        items.append(_item(up, name, data))
        expected[items[-1].key] = data
        for _ in range(rng.randint(0, 3)):
            f = rng.choice(modes)
            if f.mode == "stall":
                f = Fault("stall", n=10, seconds=0.6)
            up.schedule(f"/whl/{name}", f)
    rep = _fetch(tmp_path, items, _client(read_timeout=0.3), jobs=4, attempts=3)
    check_invariants(tmp_path, rep, expected)
    assert len(rep.downloaded) >= 12
    # A second run completes whatever is left, re-fetching nothing already published.
    before = dict(up.hits)
    rep2 = _fetch(tmp_path, items, _client(read_timeout=0.3), jobs=4, attempts=4)
    check_invariants(tmp_path, rep2, expected)
    for r in rep.downloaded:
        path = "/whl/" + r.key.rsplit("/", 1)[1]
        assert up.hits[path] == before[path]


def test_file_url_source(tmp_path):
    data = _data(20)
    src = tmp_path / "src" / "x-1.0-py3-none-any.whl"
    src.parent.mkdir()
    src.write_bytes(data)
    root = tmp_path / "out"
    item = FetchItem("packages/x/x-1.0-py3-none-any.whl", (src.as_uri(),), _sha(data))
    rep = _fetch(root, [item])
    check_invariants(root, rep, {item.key: data})
    bad = FetchItem("packages/x/y-1.0-py3-none-any.whl", ((tmp_path / "nope.whl").as_uri(),), None)
    rep = _fetch(root, [bad])
    assert rep.results[0].status == "failed"
    assert "no such file" in rep.results[0].error


def test_unsafe_key_is_refused(tmp_path, up):
    data = _data(21)
    url = up.add("/whl/z.whl", data)
    rep = _fetch(tmp_path / "root", [FetchItem("../escape.whl", (url,), _sha(data))])
    assert rep.results[0].status == "failed"
    assert not (tmp_path / "escape.whl").exists()
    assert up.hits["/whl/z.whl"] == 0
    assert os.listdir(tmp_path) == ["root"]


# -- whole syncs through the CLI ------------------------------------------------------------
def test_sync_under_transient_faults_completes_and_verifies(tmp_path):
    from tests.loopback_upstream import mirror_env, populate, run_mirror, write_spec
    from torchdepot.sync.check import verify_mirror

    faults = [Fault("close_after", n=5000), Fault("status", status=503), Fault("truncate", n=7000),
              Fault("html"), Fault("status", status=429, retry_after="0")]
    with FaultServer() as server:
        up = populate(server, payload=30_000)
        for path, fault in zip(sorted(up.paths.values()), faults, strict=True):
            server.schedule(path, fault)
        out = tmp_path / "out"
        proc = run_mirror(write_spec(tmp_path / "spec.yaml", up.url, out), mirror_env(up.url, tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert all(n == 2 for n in up.wheel_hits().values()), up.wheel_hits()
    rep = verify_mirror(out)
    assert rep.ok
    assert rep.checked == 10


def test_sync_under_a_persistent_fault_fails_with_one_line_and_publishes_no_index(tmp_path):
    from tests.loopback_upstream import mirror_env, populate, run_mirror, write_spec

    with FaultServer() as server:
        up = populate(server, payload=30_000)
        torch = next(p for f, p in up.paths.items() if f.startswith("torch-"))
        server.always(torch, Fault("wrong_bytes"))
        out = tmp_path / "out"
        proc = run_mirror(write_spec(tmp_path / "spec.yaml", up.url, out), mirror_env(up.url, tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("torchdepot: error:")
    assert "sha256 mismatch" in lines[-1]
    assert "torch-2.5.0" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (out / "manifest.json").exists()
    assert not (out / "whl").exists()
    assert not list((out / "packages").glob("torch/*.whl"))
    # the files that did verify are kept for the next run
    assert len(list((out / "packages").glob("*/*.whl"))) == 4


def test_per_file_timeout_covers_all_candidate_urls(tmp_path, up):
    data = _data(22)
    a = up.add("/whl/slow1.whl", data)
    b = up.add("/whl/slow2.whl", data)
    for p in ("/whl/slow1.whl", "/whl/slow2.whl"):
        up.always(p, Fault("drip", rate=20_000))
    item = FetchItem("packages/p/slow-1.0-py3-none-any.whl", (a, b), _sha(data), len(data))
    t = time.monotonic()
    rep = _fetch(tmp_path, [item], file_timeout=0.6)
    assert rep.results[0].status == "failed"
    assert "timeout" in rep.results[0].error
    assert time.monotonic() - t < 2.0  # not one timeout per URL


def test_long_keys_get_a_bounded_partial_name(tmp_path, up):
    data = _data(23)
    name = "x" * 150 + "-1.0-py3-none-any.whl"
    item = _item(up, name, data)
    item = FetchItem("packages/" + "p" * 100 + "/" + name, item.urls, item.sha256, item.size)
    f = Fetcher(tmp_path, _client(), progress=False)
    assert len(f._partial_path(item.key).name) <= 255
    up.schedule("/whl/" + name, Fault("truncate", n=SIZE // 2))
    rep = f.run([item])
    assert rep.results[0].status == "downloaded"
    assert rep.results[0].resumed
