"""Fetch a channel's repodata with mirror failover, an HTTP cache and bounds.

A channel that serves a CEP-16 shard index (``<subdir>/repodata_shards.msgpack.zst``) is read
through its shards: only those of the names the specs' closure reaches, each checked against
the sha256 its index names (:func:`fetch_sharded`). Otherwise ``repodata.json.zst`` is tried
first (10x smaller), then ``repodata.json``. The body is
cached under ``<cache>/<channel>/<subdir>/`` with its ETag / Last-Modified, and the
next fetch sends ``If-None-Match`` / ``If-Modified-Since``: an unchanged channel
answers 304 and nothing is downloaded twice.

Every body is bounded like an index page (issue 22 item 8), and never held in memory:
- a whole-body deadline (the client's ``page_deadline``): a server dripping a byte every
  few seconds is cut off, not waited on;
- a cap on the decompressed size (``RepodataLimits.max_bytes``) and on the inflation ratio
  past a floor (``max_ratio``): a 114 KB ``.zst`` that inflates to 3.6 GB, or a gzip
  ``Content-Encoding`` bomb, is refused after a bounded amount of output;
- decoding streams to a ``.part`` file next to the cache entry, removed on any failure,
  so nothing large is left in ``.torchdepot/cache``.
JSON depth is bounded by the reader (py-rattler's ``SparseRepoData``, serde): nesting is
skipped, never recursed into by Python.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import requests
import urllib3
import zstandard

from torchdepot.errors import TorchdepotError, UpstreamError, load_json
from torchdepot.model.sizes import format_size
from torchdepot.net.http import Client, HttpStatusError, cut_connection, describe, file_url_path
from torchdepot.store.fsutil import atomic_write_text, fsync_dir, safe_join

CHUNK = 256 * 1024
STEP = 4 * 1024 * 1024  # most output one decompression step may produce


@dataclass(frozen=True)
class RepodataLimits:
    """Bounds of one repodata body. conda-forge linux-64 is ~0.4 GB decompressed at ~12x."""

    max_bytes: int = 2 * 1024**3  # decompressed
    max_ratio: float = 200.0  # decompressed / compressed, checked past ``ratio_floor``
    ratio_floor: int = 64 * 1024**2
    deadline: float | None = None  # seconds for the whole body; None: the client's page_deadline


DEFAULT_LIMITS = RepodataLimits()


@dataclass(frozen=True)
class FetchedRepodata:
    channel: str
    subdir: str
    base_url: str  # the mirror that answered (no trailing slash)
    url: str  # the exact file fetched
    path: Path  # the cached, decompressed repodata.json
    from_cache: bool  # answered 304 (or file:// unchanged)


class RepodataRefused(UpstreamError):
    """A repodata body refused for its shape (a bomb, too large) or its pace (past the deadline):
    not a missing file, so no sibling URL is tried instead."""


class _Budget:
    """Counts decompressed output against the size cap and the inflation ratio."""

    def __init__(self, url: str, limits: RepodataLimits):
        self.url, self.limits = url, limits
        self.out = 0

    def add(self, n: int, compressed: int) -> None:
        self.out += n
        lim = self.limits
        if self.out > lim.max_bytes:
            raise RepodataRefused(f"{self.url}: repodata larger than {format_size(lim.max_bytes)} decompressed; refused")
        if self.out > lim.ratio_floor and compressed > 0 and self.out > lim.max_ratio * compressed:
            raise RepodataRefused(f"{self.url}: repodata inflates more than {lim.max_ratio:g}x "
                                f"({format_size(compressed)} -> over {format_size(self.out)}); refused as a bomb")


def _write_zst(src: BinaryIO, compressed_size: int, dst: BinaryIO, budget: _Budget) -> None:
    """Stream-decompress a zstd body, one bounded step at a time."""
    reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=CHUNK)
    try:
        while True:
            block = reader.read(STEP)
            if not block:
                return
            budget.add(len(block), compressed_size)
            dst.write(block)
    except zstandard.ZstdError as exc:
        raise RepodataRefused(f"{budget.url}: not a valid zstd stream ({exc})") from None


class _Gunzip:
    """``Content-Encoding: gzip``/``deflate`` decoded by us in bounded steps (urllib3 would
    inflate a whole network chunk at once)."""

    def __init__(self, encoding: str):
        self.d = zlib.decompressobj(zlib.MAX_WBITS | 32 if encoding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self.d.decompress(data, STEP)
            while out:
                yield out
                out = self.d.decompress(self.d.unconsumed_tail, STEP) if self.d.unconsumed_tail else b""
        except zlib.error as exc:
            raise UpstreamError(f"invalid compressed body ({exc})") from None


class RepodataCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def dir(self, channel: str, subdir: str) -> Path:
        return safe_join(self.root, channel, subdir)

    def meta(self, channel: str, subdir: str) -> dict:
        try:
            path = self.dir(channel, subdir) / "meta.json"
            d = load_json(path.read_bytes(), str(path))
            return d if isinstance(d, dict) else {}
        except (OSError, TorchdepotError):
            return {}

    def body(self, channel: str, subdir: str) -> Path:
        return self.dir(channel, subdir) / "repodata.json"

    def commit(self, channel: str, subdir: str, part: Path, meta: dict) -> Path:
        path = self.body(channel, subdir)
        os.replace(part, path)
        fsync_dir(path.parent)
        atomic_write_text(path.parent / "meta.json", json.dumps(meta, sort_keys=True))
        return path


def _decode_to(part: Path, raw: Path | None, chunks: Iterator[bytes] | None, compressed: Callable[[], int],
               zst: bool, budget: _Budget) -> None:
    """Write the decompressed body to ``part``: from a downloaded ``.zst`` file, or from
    (already transfer-decoded) chunks."""
    with open(part, "wb") as dst:
        if zst:
            assert raw is not None
            with open(raw, "rb") as src:
                _write_zst(src, raw.stat().st_size, dst, budget)
        else:
            assert chunks is not None
            for block in chunks:
                budget.add(len(block), compressed())
                dst.write(block)


def _http_body(client: Client, url: str, headers: dict, limits: RepodataLimits,
               sink: Callable[[Iterator[bytes], Callable[[], int]], None]) -> tuple[int, dict]:
    """GET ``url`` and pass the transfer-decoded body, chunk by chunk, to ``sink(chunks, compressed)``
    under the body deadline. -> (status, lowercased headers); 304 passes nothing."""
    resp = client.request("GET", url, headers=headers, stream=True)  # >= 400: HttpStatusError, an UpstreamError
    deadline = limits.deadline if limits.deadline is not None else client.config.page_deadline
    expired = threading.Event()
    watchdog = threading.Timer(deadline, cut_connection, args=(resp, expired))
    watchdog.daemon = True
    watchdog.start()
    started = time.monotonic()
    gave_up = f"{url}: repodata not complete after {deadline:g} s; gave up"
    try:
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status_code == 304:
            return 304, hdrs
        if resp.status_code != 200:
            raise UpstreamError(f"{url}: HTTP {resp.status_code}")
        encoding = hdrs.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate", ""):
            raise UpstreamError(f"{url}: unsupported Content-Encoding {encoding[:40]!r}")
        received = [0]

        def raw_chunks() -> Iterator[bytes]:
            for chunk in resp.raw.stream(CHUNK, decode_content=False):
                received[0] += len(chunk)
                if expired.is_set() or time.monotonic() - started > deadline:
                    raise RepodataRefused(gave_up)
                yield chunk

        def decoded() -> Iterator[bytes]:
            if encoding in ("gzip", "deflate"):
                gz = _Gunzip(encoding)
                for chunk in raw_chunks():
                    yield from gz.feed(chunk)
            else:
                yield from raw_chunks()

        sink(decoded(), lambda: received[0])
        if expired.is_set():
            raise RepodataRefused(gave_up)
        declared = hdrs.get("content-length", "")
        if declared.isascii() and declared.isdigit() and len(declared) < 19 and int(declared) != received[0]:
            raise UpstreamError(f"{url}: body ended after {received[0]} of {declared} bytes")
        return 200, hdrs
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        # raw.stream raises urllib3's own errors (ProtocolError when the deadline cuts the socket)
        if expired.is_set():
            raise RepodataRefused(gave_up) from None
        raise UpstreamError(f"{url}: {describe(exc)}") from None
    except UpstreamError as exc:
        if expired.is_set() and "gave up" not in str(exc):
            raise RepodataRefused(gave_up) from None
        raise
    finally:
        watchdog.cancel()
        resp.close()


def _fetch_one(client: Client, url: str, headers: dict, zst: bool, part: Path, limits: RepodataLimits) -> tuple[int, dict]:
    """Download and decode one candidate into ``part``. -> (status, headers)."""
    budget = _Budget(url, limits)
    raw = part.with_name(part.name + ".zst")
    try:
        if urllib.parse.urlsplit(url).scheme == "file":
            src = file_url_path(url)
            try:
                if zst:
                    with open(src, "rb") as f, open(part, "wb") as dst:
                        _write_zst(f, os.fstat(f.fileno()).st_size, dst, budget)
                else:
                    with open(src, "rb") as f:
                        _decode_to(part, None, iter(lambda: f.read(CHUNK), b""), lambda: 0, False, budget)
            except OSError as exc:
                raise UpstreamError(f"{url}: {exc.strerror or exc}") from None
            return 200, {}
        if zst:
            def to_raw(chunks: Iterator[bytes], compressed: Callable[[], int]) -> None:
                with open(raw, "wb") as f:
                    for block in chunks:  # the .zst itself is bounded by the cap too
                        budget.add(len(block), 0)
                        f.write(block)
            status, hdrs = _http_body(client, url, headers, limits, to_raw)
            if status == 200:
                _decode_to(part, raw, None, lambda: 0, True, _Budget(url, limits))
            return status, hdrs

        def to_part(chunks: Iterator[bytes], compressed: Callable[[], int]) -> None:
            _decode_to(part, None, chunks, compressed, False, budget)
        return _http_body(client, url, headers, limits, to_part)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            raw.unlink()


def fetch_repodata(client: Client, channel: str, mirrors: tuple[str, ...], subdir: str,
                   cache: RepodataCache, label: str | None = None,
                   limits: RepodataLimits = DEFAULT_LIMITS) -> FetchedRepodata:
    """Fetch one subdir's repodata from the first mirror that answers.

    Raises :class:`UpstreamError` naming every URL tried when none does.
    """
    meta = cache.meta(channel, subdir)
    cached = cache.body(channel, subdir)
    d = cache.dir(channel, subdir)
    d.mkdir(parents=True, exist_ok=True)
    part = d / "repodata.json.part"
    errors: list[str] = []
    for base in mirrors:
        base = base.rstrip("/")
        for fname in ("repodata.json.zst", "repodata.json"):
            url = f"{base}/{subdir}/{fname}"
            headers = {"Accept-Encoding": "gzip, deflate"}
            if meta.get("url") == url and cached.is_file():
                if meta.get("etag"):
                    headers["If-None-Match"] = meta["etag"]
                if meta.get("last_modified"):
                    headers["If-Modified-Since"] = meta["last_modified"]
            try:
                status, hdrs = _fetch_one(client, url, headers, fname.endswith(".zst"), part, limits)
            except RepodataRefused:
                raise  # a hostile, broken or stalled body is not a missing file: stop here, in one line
            except UpstreamError as exc:
                errors.append(str(exc))
                continue
            if status == 304:
                return FetchedRepodata(channel, subdir, base, url, cached, True)
            new_meta = {"url": url, "etag": hdrs.get("etag"), "last_modified": hdrs.get("last-modified")}
            if meta.get("url") == url and cached.is_file() and _same_file(cached, part):
                part.unlink()
                return FetchedRepodata(channel, subdir, base, url, cached, True)
            return FetchedRepodata(channel, subdir, base, url, cache.commit(channel, subdir, part, new_meta), False)
    raise UpstreamError(f"channel {label or channel!r} {subdir}: no mirror served repodata ({'; '.join(errors)})")


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


# -- CEP-16 sharded repodata -------------------------------------------------------------------
SHARD_INDEX = "repodata_shards.msgpack.zst"
# One package name's records: small (conda-forge's largest shards are a few MB decompressed).
SHARD_LIMITS = RepodataLimits(max_bytes=256 * 1024**2, ratio_floor=16 * 1024**2)
MAX_SHARDS = 20_000  # names in one closure, over all subdirs: far beyond any real one
_DEP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def _small_body(client: Client, url: str, limits: RepodataLimits) -> bytes | None:
    """A whole (compressed) body in memory, under the size cap and the deadline; None for a 404."""
    chunks: list[bytes] = []
    budget = _Budget(url, limits)

    def keep(blocks: Iterator[bytes], compressed: Callable[[], int]) -> None:
        for block in blocks:
            budget.add(len(block), 0)
            chunks.append(block)
    try:
        status, _ = _http_body(client, url, {}, limits, keep)
    except RepodataRefused:
        raise
    except HttpStatusError as exc:
        if exc.status in (404, 410):
            return None
        raise
    return b"".join(chunks) if status == 200 else None


def _unzstd(data: bytes, url: str, limits: RepodataLimits) -> bytes:
    out = io.BytesIO()
    _write_zst(io.BytesIO(data), len(data), out, _Budget(url, limits))
    return out.getvalue()


def _unpack(data: bytes, url: str) -> dict[str, Any]:
    import msgpack  # type: ignore[import-untyped]  # no stubs published

    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack's ExtraData, FormatError, StackError, ValueError...
        raise RepodataRefused(f"{url}: not a valid msgpack document ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise RepodataRefused(f"{url}: not a msgpack map")
    return doc


def _plain(value: object) -> object:
    """A shard record as repodata.json has it: msgpack's binary hashes (sha256, md5) as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ShardedSubdir:
    """One subdir read through its shards: the closure's records as a repodata.json on disk, and
    where its packages are (the shard index's ``info.base_url``, resolved against the index)."""

    path: Path
    packages_url: str  # ends with "/"; a package is ``packages_url + filename``


def fetch_sharded(client: Client, channel: str, base: str, subdirs: tuple[str, ...], specs: tuple[str, ...],
                  cache: RepodataCache, limits: RepodataLimits = SHARD_LIMITS) -> dict[str, ShardedSubdir] | None:
    """The records of ``specs``' closure read through the channel's CEP-16 shards only: the shard
    index of each subdir, then one shard per package name the closure reaches (by the names in
    each record's ``depends``), each body bounded like repodata and checked against the sha256
    the index names. Written per subdir as a repodata.json that py-rattler's SparseRepoData
    reads like a full one. None when ``base`` has no shard index for every subdir (then the
    caller reads repodata.json(.zst)). CEP-16's ``base_url`` (where packages are) and
    ``shards_base_url`` are relative to the index and may not leave the channel."""
    import hashlib

    base = base.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        return None
    indexes: dict[str, tuple[str, dict[str, Any]]] = {}
    packages: dict[str, str] = {}
    for sd in subdirs:
        url = f"{base}/{sd}/{SHARD_INDEX}"
        body = _small_body(client, url, limits)
        if body is None:
            return None
        doc = _unpack(_unzstd(body, url, limits), url)
        shards, info = doc.get("shards"), doc.get("info")
        if not isinstance(shards, dict) or (info is not None and not isinstance(info, dict)):
            raise RepodataRefused(f"{url}: not a CEP-16 shard index (no 'shards' map)")
        shards_base = _within(url, base, info, "shards_base_url", "./shards/")
        packages[sd] = _within(url, base, info, "base_url", "./")
        indexes[sd] = (shards_base, shards)
    wanted = [_spec_name(s) for s in specs]
    seen: set[str] = set()
    per_subdir: dict[str, dict[str, dict[str, object]]] = {sd: {} for sd in subdirs}
    fetched = 0
    while wanted:
        name = wanted.pop()
        if name in seen or name.startswith("__"):
            continue
        seen.add(name)
        for sd, (shards_base, shards) in indexes.items():
            digest = shards.get(name)
            if not isinstance(digest, bytes) or len(digest) != 32:
                continue
            fetched += 1
            if fetched > MAX_SHARDS:
                raise RepodataRefused(f"{base}: closure reaches more than {MAX_SHARDS} shards; refused")
            url = f"{shards_base}{digest.hex()}.msgpack.zst"
            body = _small_body(client, url, limits)
            if body is None:
                raise UpstreamError(f"{url}: shard for {name!r} listed in the index but missing")
            if hashlib.sha256(body).digest() != digest:
                raise RepodataRefused(f"{url}: shard bytes do not match the sha256 the index names")
            shard = _unpack(_unzstd(body, url, limits), url)
            for key in ("packages", "packages.conda"):
                table = shard.get(key)
                for fn, rec in (table.items() if isinstance(table, dict) else ()):
                    if not isinstance(fn, str) or not isinstance(rec, dict):
                        continue
                    record = _plain(rec)
                    assert isinstance(record, dict)
                    per_subdir[sd][fn] = record
                    for dep in record.get("depends") or ():
                        m = _DEP_NAME.match(dep) if isinstance(dep, str) else None
                        if m and m.group(0) not in seen:
                            wanted.append(m.group(0))
    out: dict[str, ShardedSubdir] = {}
    for sd, recs in per_subdir.items():
        doc_out = {"info": {"subdir": sd},
                   "packages": {f: r for f, r in sorted(recs.items()) if f.endswith(".tar.bz2")},
                   "packages.conda": {f: r for f, r in sorted(recs.items()) if not f.endswith(".tar.bz2")},
                   "repodata_version": 1}
        d = cache.dir(channel, sd)
        d.mkdir(parents=True, exist_ok=True)
        part = d / "repodata.json.part"
        part.write_text(json.dumps(doc_out, sort_keys=True))
        path = cache.commit(channel, sd, part, {"url": f"{base}/{sd}/{SHARD_INDEX}", "sharded": True})
        out[sd] = ShardedSubdir(path=path, packages_url=packages[sd])
    return out


def _within(index_url: str, base: str, info: dict[str, Any] | None, key: str, default: str) -> str:
    """``info[key]`` resolved against the shard index's URL, ending in "/"; refused where it
    leaves the channel ``base`` (a shard index cannot send us to another host or path)."""
    rel = (info or {}).get(key) or default
    url = urllib.parse.urljoin(index_url, rel if isinstance(rel, str) else default)
    url = url if url.endswith("/") else url + "/"
    if not url.startswith(f"{base}/"):
        raise RepodataRefused(f"{index_url}: {key} {str(rel)[:100]!r} leaves the channel")
    return url


def _spec_name(spec: str) -> str:
    """The package name a match spec string names (``pytorch >=2.5`` -> ``pytorch``), by py-rattler."""
    import rattler

    try:
        name = rattler.MatchSpec(spec).name
    except Exception as exc:  # rattler's InvalidMatchSpecError
        raise UpstreamError(f"{spec!r}: not a match spec ({' '.join(str(exc).split())[:100]})") from None
    return str(name.normalized) if name is not None else spec.split()[0]


# -- channel metadata beside the repodata ----------------------------------------------------
METADATA_LIMITS = RepodataLimits(max_bytes=256 * 1024**2)


def fetch_optional(client: Client, url: str, dest: Path, limits: RepodataLimits = METADATA_LIMITS) -> Path | None:
    """Fetch an optional channel file (``channeldata.json``, ``<subdir>/run_exports.json``) to
    ``dest``, under the same bounds as repodata. None when upstream does not have it (or fails
    to serve it: these files help clients, the channel works without them); a hostile body is
    still refused."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        status, _ = _fetch_one(client, url, {"Accept-Encoding": "gzip, deflate"}, url.endswith(".zst"), part, limits)
    except RepodataRefused:
        raise
    except UpstreamError:
        return None
    if status != 200:
        with contextlib.suppress(OSError):
            part.unlink()
        return None
    os.replace(part, dest)
    return dest
