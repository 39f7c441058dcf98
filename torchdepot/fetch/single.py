"""One file over one connection into its partial file, resumed where a previous attempt
stopped; and the copy of a ``file://`` source.

Invariants:
- a partial file is resumed with an open-ended Range; the bytes already on disk start
  the digest, so the whole file is still hashed exactly once;
- a 200 to that Range, an unrequested 206 or a wrong ``Content-Range`` restarts the file
  from zero (:class:`~torchdepot.fetch.pool.Retry` with ``restart``); a partial longer
  than the stated size is dropped before the request;
- an HTML page (by Content-Type, or by its first bytes under a binary type) is never
  stored unless the key itself is an HTML page; more bytes than the stated size, or a
  body shorter than its Content-Length, is an error, never a published file;
- every chunk is checked against the bounds while it arrives (``read1``), so a server
  dripping bytes is cut off by the rate floor and the timeouts;
- a file of unknown size whose first 200 states a size of two pieces or more and accepts
  ranges is split right there: that response keeps streaming from byte 0 and owns the
  whole file, while free connections take the second halves of what is left (see
  :mod:`torchdepot.fetch.segmented`); it is closed only where another run begins, so
  what crosses the link for nothing is at most what was in flight at that boundary.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from torchdepot.fetch.bounds import RateMeter
from torchdepot.fetch.items import HTML_TYPES, FetchItem, looks_like_html
from torchdepot.fetch.pool import CHUNK, READ_ERRORS, Fatal, Pool, Retry, keep_alive
from torchdepot.fetch.segmented import Segmenter
from torchdepot.net.http import (
    describe,
    file_url_path,
    parse_content_range,
    range_header,
    stated_length,
)


@dataclass(frozen=True)
class _Answer:
    """How to take a response's body: ``mode`` ``wb`` (from zero) or ``ab`` (resume)."""

    mode: str
    resumed: bool
    expected_len: int | None  # bytes the body should have, when stated


@dataclass(frozen=True)
class Streamer:
    """Single-connection downloads through ``pool``; ``segmenter`` takes over a large file
    whose size only its first response states."""

    pool: Pool
    segmenter: Segmenter

    def fetch(self, item: FetchItem, url: str, part: Path, started: float, hasher,
              meter: RateMeter, may_split: bool = False) -> tuple[int, bool, bool | str]:
        """One HTTP attempt appending to ``part``. Returns (bytes received, resumed?, split?).

        ``split``: the file went out in pieces from its first 200 (``part`` is then complete
        but was not fed to ``hasher``): the sha256 the pieces computed on the way, or True
        when they could not."""
        have = part.stat().st_size if part.exists() else 0
        if item.size is not None and have > item.size:
            part.unlink()
            have = 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = range_header(have)
        with self.pool.hold(url) as slot:
            resp = self.pool.open(url, headers, started)
            wants_html = item.key.endswith((".html", ".htm"))
            with contextlib.closing(resp):
                ans = _answer(resp, url, part, have, hasher, wants_html)
                if resp.status_code == 200 and item.size is None and ans.expected_len and not have:
                    self.pool.progress.learn_size(ans.expected_len, item.key)
                    if may_split and self._splits_here(resp, ans.expected_len, url):
                        n, _, _, digest = self.segmenter.fetch(item, url, part, started, meter,
                                                               size=ans.expected_len, first=resp, slot=slot)
                        return n, False, digest or True
                limit = (item.size - (have if ans.mode == "ab" else 0)) if item.size is not None else None
                received = self._stream(resp, url, part, ans.mode, hasher, started, meter, limit=limit,
                                        size=item.size, sniff=not ans.resumed and not wants_html)
                if ans.expected_len is not None and received < ans.expected_len:
                    raise Retry(f"{url}: body ended after {received} of {ans.expected_len} bytes")
                keep_alive(resp)
                return received, ans.resumed, False

    def _splits_here(self, resp: requests.Response, size: int, url: str) -> bool:
        # this response is never cut before another run's start, so no size bound of its own
        return (self.segmenter.worth_splitting(size, url)
                and resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes")

    def _stream(self, resp: requests.Response, url: str, part: Path, mode: str, hasher, started: float,
                meter: RateMeter, *, limit: int | None, size: int | None, sniff: bool) -> int:
        """Write ``resp``'s body to ``part`` (``mode``), feeding ``hasher``; returns its length."""
        received = 0
        with open(part, mode) as fh:
            while True:
                # read1: whatever has arrived (not a full CHUNK), so the bounds are
                # checked while a slow server drips bytes.
                try:
                    chunk = resp.raw.read1(CHUNK)
                except READ_ERRORS as exc:
                    fh.flush()
                    raise Retry(f"{url}: {describe(exc)} after {received} bytes") from None
                if not chunk:
                    break
                if sniff and received == 0 and looks_like_html(chunk):
                    raise Retry(f"{url}: server sent an HTML page instead of the file", restart=True)
                received += len(chunk)
                if limit is not None and received > limit:
                    raise Retry(f"{url}: more bytes than the expected {size}", restart=True)
                fh.write(chunk)  # a local disk error propagates: not the network's fault
                hasher.update(chunk)
                self.pool.advance(len(chunk))
                meter.add(len(chunk), time.monotonic())
                self.pool.check_time(started, meter, url)
        return received

    def copy_local(self, url: str, part: Path, hasher) -> int:
        """Copy a ``file://`` source (pip find-links dirs, local indexes) into ``part``."""
        src = file_url_path(url)
        copied = 0
        try:
            with open(src, "rb") as fin, open(part, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                    hasher.update(chunk)
                    copied += len(chunk)
                    self.pool.advance(len(chunk))
        except FileNotFoundError:
            raise Fatal(f"{url}: no such file") from None
        return copied


def _answer(resp: requests.Response, url: str, part: Path, have: int, hasher, wants_html: bool) -> _Answer:
    """Judge a response to a request for ``part`` with ``have`` bytes already on disk."""
    ctype = resp.headers.get("Content-Type", "").lower()
    if ctype.startswith(HTML_TYPES) and not wants_html:
        # A challenge/login page instead of the artifact: never store it.
        raise Retry(f"{url}: server sent an HTML page ({ctype}) instead of the file")
    if have and resp.status_code == 206:
        cr = parse_content_range(resp.headers.get("Content-Range"))
        if cr is None or cr.first != have:
            raise Retry(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                        f"for resume at {have}", restart=True)
        _hash_prefix(part, have, hasher)  # the bytes already on disk start the digest
        return _Answer(mode="ab", resumed=True, expected_len=cr.length)
    if resp.status_code == 206:
        raise Retry(f"{url}: unrequested partial content", restart=True)
    if resp.status_code != 200:
        raise Fatal(f"{url}: HTTP {resp.status_code}")
    # A 200 to a Range request means the server ignored it: restart from zero.
    stated = stated_length(resp.headers)
    return _Answer(mode="wb", resumed=False, expected_len=stated if stated is not None and stated < 10**18 else None)


def _hash_prefix(path: Path, length: int, hasher) -> None:
    with open(path, "rb") as fh:
        left = length
        while left > 0 and (chunk := fh.read(min(CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)
