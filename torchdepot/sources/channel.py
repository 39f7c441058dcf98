"""Fetch ``<channel>/<subdir>/repodata.json`` with mirror failover and an HTTP cache.

``repodata.json.zst`` is tried first (10x smaller), then ``repodata.json``. The body is
cached under ``<cache>/<channel>/<subdir>/`` with its ETag / Last-Modified, and the
next fetch sends ``If-None-Match`` / ``If-Modified-Since``: an unchanged channel
answers 304 and nothing is downloaded twice.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests
import zstandard

from torchdepot.errors import TorchdepotError, UpstreamError, load_json
from torchdepot.net.http import Client, describe, file_url_path
from torchdepot.store.fsutil import atomic_write_bytes, atomic_write_text, safe_join

MAX_REPODATA_BYTES = 4 * 1024**3  # conda-forge linux-64 is ~0.4 GB uncompressed


def decompress_zst(body: bytes, url: str, limit: int = MAX_REPODATA_BYTES) -> bytes:
    """Decompress ``repodata.json.zst``, refusing more than ``limit`` bytes of output."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            data = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise UpstreamError(f"{url}: not a valid zstd stream ({exc})") from None
    if len(data) > limit:
        raise UpstreamError(f"{url}: repodata larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class FetchedRepodata:
    channel: str
    subdir: str
    base_url: str  # the mirror that answered (no trailing slash)
    url: str  # the exact file fetched
    path: Path  # the cached, decompressed repodata.json
    from_cache: bool  # answered 304 (or file:// unchanged)


def _read_body(resp: requests.Response, url: str) -> bytes:
    chunks, total = [], 0
    try:
        for chunk in resp.iter_content(1024 * 1024):
            total += len(chunk)
            if total > MAX_REPODATA_BYTES:
                raise UpstreamError(f"{url}: repodata larger than {MAX_REPODATA_BYTES} bytes")
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise UpstreamError(f"{url}: {describe(exc)}") from None
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit() and int(cl) != total:
        raise UpstreamError(f"{url}: body ended after {total} of {cl} bytes")
    return b"".join(chunks)


class RepodataCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, channel: str, subdir: str) -> Path:
        return safe_join(self.root, channel, subdir)

    def meta(self, channel: str, subdir: str) -> dict:
        try:
            path = self._dir(channel, subdir) / "meta.json"
            d = load_json(path.read_bytes(), str(path))
            return d if isinstance(d, dict) else {}
        except (OSError, TorchdepotError):
            return {}

    def body(self, channel: str, subdir: str) -> Path:
        return self._dir(channel, subdir) / "repodata.json"

    def store(self, channel: str, subdir: str, data: bytes, meta: dict) -> Path:
        path = self.body(channel, subdir)
        atomic_write_bytes(path, data)
        atomic_write_text(path.parent / "meta.json", json.dumps(meta, sort_keys=True))
        return path


def _get(client: Client, url: str, headers: dict) -> tuple[int, bytes, dict]:
    """-> (status, body, lowercased headers). file:// reads the disk (status 200)."""
    if urllib.parse.urlsplit(url).scheme == "file":
        try:
            return 200, file_url_path(url).read_bytes(), {}
        except OSError as exc:
            raise UpstreamError(f"{url}: {exc.strerror or exc}") from None
    resp = client.request("GET", url, headers=headers, stream=True)
    with contextlib.closing(resp):
        if resp.status_code == 304:
            return 304, b"", {k.lower(): v for k, v in resp.headers.items()}
        if resp.status_code != 200:
            raise UpstreamError(f"{url}: HTTP {resp.status_code}")
        body = _read_body(resp, url)
        return 200, body, {k.lower(): v for k, v in resp.headers.items()}


def fetch_repodata(client: Client, channel: str, mirrors: tuple[str, ...], subdir: str,
                   cache: RepodataCache, label: str | None = None) -> FetchedRepodata:
    """Fetch one subdir's repodata from the first mirror that answers.

    Raises :class:`UpstreamError` naming every URL tried when none does.
    """
    meta = cache.meta(channel, subdir)
    cached = cache.body(channel, subdir)
    errors: list[str] = []
    for base in mirrors:
        base = base.rstrip("/")
        for fname in ("repodata.json.zst", "repodata.json"):
            url = f"{base}/{subdir}/{fname}"
            headers = {"Accept-Encoding": "gzip"}
            if meta.get("url") == url and cached.is_file():
                if meta.get("etag"):
                    headers["If-None-Match"] = meta["etag"]
                if meta.get("last_modified"):
                    headers["If-Modified-Since"] = meta["last_modified"]
            try:
                status, body, hdrs = _get(client, url, headers)
            except UpstreamError as exc:
                errors.append(str(exc))
                continue
            if status == 304:
                return FetchedRepodata(channel, subdir, base, url, cached, True)
            data = decompress_zst(body, url, MAX_REPODATA_BYTES) if fname.endswith(".zst") else body
            new_meta = {"url": url, "etag": hdrs.get("etag"), "last_modified": hdrs.get("last-modified")}
            if meta.get("url") == url and cached.is_file() and cached.read_bytes() == data:
                return FetchedRepodata(channel, subdir, base, url, cached, True)
            path = cache.store(channel, subdir, data, new_meta)
            return FetchedRepodata(channel, subdir, base, url, path, False)
    raise UpstreamError(f"channel {label or channel!r} {subdir}: no mirror served repodata ({'; '.join(errors)})")
