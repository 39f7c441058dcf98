"""Conda repodata is bounded on its own path (issue 22 item 8), against a loopback upstream:
a dripping ``repodata.json``, a ``.zst`` that inflates to 3.6 GB, a gzip ``Content-Encoding``
bomb: each refused quickly in one line, with nothing large left in the cache. Conditional
requests: an unchanged channel answers 304 and is not downloaded again."""

from __future__ import annotations

import io
import json
import time
import zlib
from pathlib import Path

import pytest
import zstandard

from tests.kit.routed import Route, Upstream
from tests.kit.zeros import Zeros
from torchdepot.errors import TorchdepotError, UpstreamError
from torchdepot.net.http import Client, HttpConfig
from torchdepot.sources.channel import (
    RepodataCache,
    RepodataLimits,
    RepodataRefused,
    fetch_repodata,
)

GOOD = json.dumps({"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {
    "_libgcc_mutex-0.1-conda_forge.conda": {"name": "_libgcc_mutex", "version": "0.1", "build": "conda_forge",
                                            "build_number": 0, "depends": []}}}).encode()


def client(deadline: float = 120.0) -> Client:
    return Client(HttpConfig(retries=0, connect_timeout=2, read_timeout=10, page_deadline=deadline))


def cache_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def fetch(up: Upstream, cache: Path, deadline: float = 120.0):
    with client(deadline) as c:
        return fetch_repodata(c, "conda-forge", (f"{up.url}/conda-forge",), "linux-64", RepodataCache(cache))


@pytest.fixture(scope="module")
def zst_bomb() -> bytes:
    """~32 KB of zstd that inflates to 1 GiB of zeros (the issue's was 114 KB -> 3.6 GB: the same
    class; the ratio bound refuses it after 64 MiB of output either way)."""
    out = io.BytesIO()
    zstandard.ZstdCompressor(level=3).copy_stream(Zeros(2**30), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """~0.25 MB of gzip that inflates to 256 MiB (gzip's ratio tops out near 1030x)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(16 * 2**20)
    return b"".join([c.compress(block) for _ in range(16)] + [c.flush()])


@pytest.mark.slow
def test_dripping_repodata_is_cut_at_the_deadline(tmp_path):
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json"] = Route(GOOD, drip=0.5)
        t0 = time.monotonic()
        with pytest.raises(RepodataRefused) as exc:
            fetch(up, tmp_path, deadline=1.5)
        took = time.monotonic() - t0
    msg = str(exc.value)
    assert "gave up" in msg
    assert "1.5 s" in msg
    assert "\n" not in msg
    assert took < 6
    assert not [p for p in cache_files(tmp_path) if p.endswith(".part") or p.endswith(".zst")]


def test_zst_bomb_is_refused_quickly_and_leaves_nothing(tmp_path, zst_bomb):
    assert len(zst_bomb) < 100_000
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json.zst"] = Route(zst_bomb)
        t0 = time.monotonic()
        with pytest.raises(RepodataRefused) as exc:
            fetch(up, tmp_path)
        took = time.monotonic() - t0
    msg = str(exc.value)
    assert "refused as a bomb" in msg
    assert "repodata.json.zst" in msg
    assert "\n" not in msg
    assert took < 10
    assert sum(cache_files(tmp_path).values()) == 0  # the .part and the .zst are gone
    # the sibling repodata.json was not tried: a bomb is not a missing file
    assert [p for p, _ in up.requests] == ["/conda-forge/linux-64/repodata.json.zst"]


def test_gzip_bomb_is_decoded_in_bounded_steps_and_refused(tmp_path, gzip_bomb):
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json"] = Route(gzip_bomb, headers={"Content-Encoding": "gzip"})
        with pytest.raises(RepodataRefused) as exc:
            fetch(up, tmp_path)
    assert "refused as a bomb" in str(exc.value)
    assert sum(cache_files(tmp_path).values()) == 0


def test_size_cap_applies_to_plain_bodies(tmp_path):
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json"] = Route(GOOD + b" " * 5000)
        with client() as c, pytest.raises(RepodataRefused) as exc:
            fetch_repodata(c, "conda-forge", (f"{up.url}/conda-forge",), "linux-64", RepodataCache(tmp_path),
                           limits=RepodataLimits(max_bytes=4096))
    assert "larger than" in str(exc.value)
    assert sum(cache_files(tmp_path).values()) == 0


def test_gzip_and_zst_bodies_that_are_fine_decode(tmp_path):
    with Upstream() as up:
        up.routes["/a/linux-64/repodata.json"] = Route(zlib.compress(GOOD), headers={"Content-Encoding": "deflate"})
        up.routes["/b/linux-64/repodata.json.zst"] = Route(zstandard.ZstdCompressor().compress(GOOD))
        with client() as c:
            a = fetch_repodata(c, "a", (f"{up.url}/a",), "linux-64", RepodataCache(tmp_path))
            b = fetch_repodata(c, "b", (f"{up.url}/b",), "linux-64", RepodataCache(tmp_path))
    assert a.path.read_bytes() == GOOD
    assert b.path.read_bytes() == GOOD
    assert a.url.endswith("/repodata.json")  # .zst answered 404: the plain file is the fallback
    assert b.url.endswith("/repodata.json.zst")


def test_unchanged_channel_answers_304_and_is_not_downloaded_again(tmp_path):
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json.zst"] = Route(zstandard.ZstdCompressor().compress(GOOD),
                                                                    etag='"v1"')
        first = fetch(up, tmp_path)
        second = fetch(up, tmp_path)
    assert not first.from_cache
    assert second.from_cache
    assert second.path.read_bytes() == GOOD
    sent = [h for p, h in up.requests if p.endswith(".zst")]
    assert "If-None-Match" not in sent[0]
    assert sent[1]["If-None-Match"] == '"v1"'


def test_bad_zst_is_one_line(tmp_path):
    with Upstream() as up:
        up.routes["/conda-forge/linux-64/repodata.json.zst"] = Route(b"not zstd at all")
        with pytest.raises(UpstreamError) as exc:
            fetch(up, tmp_path)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, TorchdepotError)
    assert sum(cache_files(tmp_path).values()) == 0


# -- CEP-16 shards: fetched by the same bounded reader, each checked against the index's sha256 --

def _zmsgpack(doc: object) -> bytes:
    import msgpack

    return zstandard.ZstdCompressor().compress(msgpack.packb(doc, use_bin_type=True))


def _shard(name: str = "pytorch") -> bytes:
    rec = {"name": name, "version": "2.7.1", "build": "cpu_0", "build_number": 0, "depends": ["python >=3.11"],
           "sha256": bytes(range(32)), "md5": bytes(16), "size": 10, "subdir": "linux-64"}
    return _zmsgpack({"packages": {}, "packages.conda": {f"{name}-2.7.1-cpu_0.conda": rec}, "removed": []})


def _sharded(up: Upstream, shard: bytes, digest: bytes | None = None, shards_base: str = "./shards/",
             base_url: str = "") -> None:
    import hashlib

    digest = digest if digest is not None else hashlib.sha256(shard).digest()
    for sd in ("linux-64", "noarch"):
        shards = {"pytorch": digest} if sd == "linux-64" else {}
        up.routes[f"/cf/{sd}/repodata_shards.msgpack.zst"] = Route(_zmsgpack(
            {"version": 1, "info": {"subdir": sd, "base_url": base_url, "shards_base_url": shards_base}, "shards": shards}))
    up.routes[f"/cf/linux-64/shards/{digest.hex()}.msgpack.zst"] = Route(shard)


def sharded(up: Upstream, cache: Path, deadline: float = 120.0):
    from torchdepot.sources.channel import fetch_sharded

    with client(deadline) as c:
        return fetch_sharded(c, "cf", f"{up.url}/cf", ("linux-64", "noarch"), ("pytorch",), RepodataCache(cache))


def test_sharded_closure_is_read_and_hashes_become_hex(tmp_path):
    with Upstream() as up:
        _sharded(up, _shard())
        paths = sharded(up, tmp_path)
    doc = json.loads(paths["linux-64"].path.read_text())
    rec = doc["packages.conda"]["pytorch-2.7.1-cpu_0.conda"]
    assert rec["sha256"] == bytes(range(32)).hex()
    assert json.loads(paths["noarch"].path.read_text())["packages.conda"] == {}
    assert paths["linux-64"].packages_url == f"{up.url}/cf/linux-64/"  # no base_url: beside the index


def test_no_shard_index_means_none(tmp_path):
    with Upstream() as up:
        assert sharded(up, tmp_path) is None


def test_shard_whose_bytes_differ_from_the_index_is_refused(tmp_path):
    with Upstream() as up:
        _sharded(up, _shard(), digest=bytes(32))
        up.routes[f"/cf/linux-64/shards/{bytes(32).hex()}.msgpack.zst"] = Route(_shard())
        with pytest.raises(RepodataRefused) as exc:
            sharded(up, tmp_path)
    assert "do not match the sha256" in str(exc.value)


def test_shard_bomb_is_refused(tmp_path, zst_bomb):
    with Upstream() as up:
        _sharded(up, zst_bomb)  # its hash is right: the inflation bound must stop it
        with pytest.raises(RepodataRefused) as exc:
            sharded(up, tmp_path)
    assert "refused as a bomb" in str(exc.value)


def test_packages_elsewhere_in_the_channel_are_where_base_url_says(tmp_path):
    with Upstream() as up:
        _sharded(up, _shard(), base_url="../pkgs/")
        paths = sharded(up, tmp_path)
    assert paths["linux-64"].packages_url == f"{up.url}/cf/pkgs/"


def test_packages_outside_the_channel_are_refused(tmp_path):
    with Upstream() as up:
        _sharded(up, _shard(), base_url="http://elsewhere.example/pkgs/")
        with pytest.raises(RepodataRefused) as exc:
            sharded(up, tmp_path)
    assert "base_url 'http://elsewhere.example/pkgs/' leaves the channel" in str(exc.value)


def test_shards_elsewhere_are_refused(tmp_path):
    with Upstream() as up:
        _sharded(up, _shard(), shards_base="http://elsewhere.example/shards/")
        with pytest.raises(RepodataRefused) as exc:
            sharded(up, tmp_path)
    assert "leaves the channel" in str(exc.value)


@pytest.mark.slow
def test_dripping_shard_is_cut_at_the_deadline(tmp_path):
    with Upstream() as up:
        shard = _shard()
        _sharded(up, shard)
        import hashlib

        up.routes[f"/cf/linux-64/shards/{hashlib.sha256(shard).hexdigest()}.msgpack.zst"] = Route(shard, drip=0.5)
        t0 = time.monotonic()
        with pytest.raises(RepodataRefused) as exc:
            sharded(up, tmp_path, deadline=1.5)
    assert "gave up" in str(exc.value)
    assert time.monotonic() - t0 < 6
