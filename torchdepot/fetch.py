"""Parallel, resumable, hash-checked downloads into a mirror root.

Invariants (the "nothing lost" contract):
- bytes arrive in ``<root>/.torchdepot/partial/``; a file appears at its final path only
  by ``os.replace`` after its size and sha256 were checked, so a reader (or a crash)
  never sees half a file;
- a partial file is resumed with HTTP Range; a server that ignores Range (200) or
  answers the wrong ``Content-Range`` restarts it from zero;
- upstream hashes are claims: what arrived is always hashed; a disagreement is retried
  once from scratch, then handled by the policy (``fail``: not published; ``warn``:
  published and reported);
- a file already present and recorded is not fetched again (hash cache keyed on
  size+mtime, so a no-op re-sync reads no file bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from torchdepot.errors import IntegrityError, UpstreamError
from torchdepot.store.fsutil import atomic_write_text, fsync_dir, safe_join, sha256_file
from torchdepot.net.http import (Client, HttpStatusError, describe, file_url_path, retry_after_seconds)

CHUNK = 1024 * 1024
STATE_DIR = ".torchdepot"
HTML_TYPES = ("text/html", "application/xhtml")
HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body")
# What a failed read of a response body can raise, below and inside requests.
_READ_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException, OSError)


def looks_like_html(head: bytes) -> bool:
    """A challenge/login page served with a binary content type still starts like HTML."""
    return head.lstrip()[:16].lower().startswith(HTML_MAGIC)


@dataclass(frozen=True)
class FetchItem:
    key: str  # POSIX path relative to the mirror root
    urls: tuple[str, ...]  # candidates, tried in order (failover)
    sha256: str | None = None  # what upstream claims; None when it claims nothing
    size: int | None = None  # expected size, when upstream states it


@dataclass
class FetchResult:
    key: str
    status: str  # "downloaded" | "present" | "failed"
    sha256: str | None = None
    size: int = 0
    fetched_bytes: int = 0
    url: str | None = None
    error: str | None = None
    upstream_sha256: str | None = None
    hash_mismatch: bool = False
    resumed: bool = False
    attempts: int = 0


@dataclass
class FetchReport:
    results: list[FetchResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def downloaded(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "downloaded"]

    @property
    def present(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "present"]

    @property
    def fetched_bytes(self) -> int:
        return sum(r.fetched_bytes for r in self.results)

    @property
    def mismatches(self) -> list[FetchResult]:
        return [r for r in self.results if r.hash_mismatch]

    def summary(self) -> str:
        secs = max(self.seconds, 1e-9)
        mb = self.fetched_bytes / 1e6
        return (
            f"{len(self.results)} files: {len(self.downloaded)} downloaded, "
            f"{len(self.present)} already present (skipped), {len(self.failed)} failed; "
            f"{mb:.1f} MB in {self.seconds:.1f} s ({mb / secs:.1f} MB/s)"
            + (f"; {len(self.mismatches)} upstream hash mismatches" if self.mismatches else "")
        )


class _Fatal(Exception):
    """Stop trying this URL (but maybe try the next one)."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.restart = restart


class HashCache:
    """``key -> (size, mtime_ns, sha256)`` for files this mirror verified before."""

    def __init__(self, root: Path):
        self.path = Path(root) / STATE_DIR / "hashes.json"
        self.lock = threading.Lock()
        self.data: dict[str, list] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self.data = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, ValueError):
            pass

    def lookup(self, key: str, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        with self.lock:
            entry = self.data.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        return None

    def record(self, key: str, path: Path, sha256: str) -> None:
        st = path.stat()
        with self.lock:
            self.data[key] = [st.st_size, st.st_mtime_ns, sha256]

    def forget(self, key: str) -> None:
        with self.lock:
            self.data.pop(key, None)

    def save(self) -> None:
        with self.lock:
            text = json.dumps(self.data, sort_keys=True, indent=0)
        atomic_write_text(self.path, text)


def hash_present(root: Path, key: str, cache: HashCache | None = None) -> tuple[str, int] | None:
    """(sha256, size) of a file at its final path, using the cache when stat matches."""
    path = safe_join(root, key)
    if not path.is_file():
        return None
    if cache is not None:
        cached = cache.lookup(key, path)
        if cached:
            return cached, path.stat().st_size
    digest, size = sha256_file(path)
    if cache is not None:
        cache.record(key, path, digest)
    return digest, size


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Fetcher:
    def __init__(
        self,
        root: Path,
        client: Client,
        *,
        jobs: int = 4,
        on_hash_mismatch: str = "fail",
        attempts: int = 5,
        file_timeout: float | None = None,
        deadline: float | None = None,
        allowed_hosts: set[str] | None = None,
        progress: bool | None = None,
        max_redirects: int = 10,
        fsync: bool = False,
    ):
        if on_hash_mismatch not in ("fail", "warn"):
            raise ValueError("on_hash_mismatch must be 'fail' or 'warn'")
        self.root = Path(root)
        self.client = client
        self.jobs = max(1, jobs)
        self.policy = on_hash_mismatch
        self.attempts = max(1, attempts)
        self.file_timeout = file_timeout
        self.deadline_seconds = deadline
        self.deadline: float | None = None  # absolute; set when run() starts
        self.allowed_hosts = allowed_hosts
        self.progress = progress
        self.max_redirects = max_redirects
        # fsync each file before its rename: survives power loss, costs a disk flush per
        # file. Off by default: a process crash cannot lose page-cache data, and after a
        # power loss a short/zeroed file fails the size+hash check of the next sync.
        self.fsync = fsync
        self.cache = HashCache(self.root)
        self.partial_dir = self.root / STATE_DIR / "partial"
        self._bar: tqdm | None = None
        self._bar_lock = threading.Lock()

    # -- public -----------------------------------------------------------------
    def run(self, items: list[FetchItem]) -> FetchReport:
        start = time.monotonic()
        self.deadline = None if self.deadline_seconds is None else start + self.deadline_seconds
        unique: dict[str, FetchItem] = {}
        for it in items:
            unique.setdefault(it.key, it)  # stored once even when several targets need it
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        total = sum(i.size or 0 for i in unique.values())
        report = FetchReport()
        with tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc="fetch",
                  disable=self._disabled(), dynamic_ncols=True) as bar:
            self._bar = bar
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                futures = {pool.submit(self._one, it): it for it in unique.values()}
                for fut in as_completed(futures):
                    it = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # a bug must not lose the other files' results
                        res = FetchResult(it.key, "failed", error=f"{type(exc).__name__}: {exc}")
                    report.results.append(res)
            self._bar = None
        self.cache.save()
        report.results.sort(key=lambda r: r.key)
        report.seconds = time.monotonic() - start
        return report

    # -- internals --------------------------------------------------------------
    def _disabled(self) -> bool | None:
        if self.progress is None:
            return None  # tqdm: off when not a terminal
        return not self.progress

    def _advance(self, n: int) -> None:
        if self._bar is not None and n:
            with self._bar_lock:
                self._bar.update(n)

    def _partial_path(self, key: str) -> Path:
        name = key.replace("/", "__")
        if len(name) > 200:  # keep under NAME_MAX; a digest keeps it unique and stable for resume
            name = name[:120] + "-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.partial_dir / (name + ".part")

    def _one(self, item: FetchItem) -> FetchResult:
        dest = safe_join(self.root, item.key)
        present = self._check_present(item, dest)
        if present is not None:
            return present
        errors: list[str] = []
        started = time.monotonic()  # the per-file timeout covers every candidate URL
        attempts = 0
        for url in item.urls:
            try:
                res = self._from_url(item, url, dest, started)
                res.attempts += attempts
                return res
            except _Fatal as exc:
                errors.append(str(exc))
                attempts += 1
            except IntegrityError as exc:
                # Upstream served bytes that disagree with its own claim: do not publish.
                return FetchResult(item.key, "failed", error=str(exc), url=url,
                                   upstream_sha256=item.sha256, hash_mismatch=True)
        if not item.urls:
            errors.append("no URL to fetch from")
        return FetchResult(item.key, "failed", error="; ".join(errors), upstream_sha256=item.sha256,
                           attempts=attempts)

    def _check_present(self, item: FetchItem, dest: Path) -> FetchResult | None:
        if not dest.is_file():
            return None
        got = hash_present(self.root, item.key, self.cache)
        if got is None:
            return None
        digest, size = got
        if item.size is not None and size != item.size:
            return None
        if item.sha256 is None or digest == item.sha256:
            return FetchResult(item.key, "present", digest, size, upstream_sha256=item.sha256)
        # Present but different from what upstream now claims: a mismatch accepted
        # under the warn policy before stays; under fail it is refetched.
        if self.policy == "warn":
            return FetchResult(item.key, "present", digest, size, upstream_sha256=item.sha256, hash_mismatch=True)
        return None

    def _remaining(self, started: float) -> float | None:
        """Seconds left before the per-file or overall timeout (None: unbounded)."""
        now = time.monotonic()
        limits = []
        if self.deadline is not None:
            limits.append(self.deadline - now)
        if self.file_timeout is not None:
            limits.append(started + self.file_timeout - now)
        return min(limits) if limits else None

    def _check_time(self, started: float) -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise _Fatal("overall timeout reached")
        if self.file_timeout is not None and now - started > self.file_timeout:
            raise _Fatal(f"per-file timeout of {self.file_timeout:g}s reached")

    def _open(self, url: str, headers: dict, started: float) -> requests.Response:
        """GET following redirects by hand so every hop's host passes the policy.

        One request per hop (the attempt loop in :meth:`_from_url` does the retrying, so
        attempts are counted once); the read timeout is cut to the time left so a stalled
        body cannot outlive the per-file or overall timeout by more than that.
        """
        current = url
        timeout = None
        left = self._remaining(started)
        if left is not None:
            connect, read = self.client.timeout
            timeout = (connect, max(0.05, min(read, left)))
        for _ in range(self.max_redirects + 1):
            host = urllib.parse.urlsplit(current).hostname or ""
            if self.allowed_hosts is not None and host not in self.allowed_hosts:
                raise _Fatal(f"{current}: host {host!r} is not allowed by the mirror's host policy")
            try:
                resp = self.client.request("GET", current, headers=headers, stream=True, allow_redirects=False,
                                           retries=0, timeout=timeout)
            except HttpStatusError as exc:
                if exc.retryable:
                    raise _Retry(str(exc), exc.retry_after) from None
                raise _Fatal(str(exc)) from None  # 404/403/410...: trying again will not help
            except UpstreamError as exc:
                raise _Retry(str(exc)) from None
            if resp.status_code in (301, 302, 303, 307, 308):
                loc = resp.headers.get("Location")
                resp.close()
                if not loc:
                    raise _Fatal(f"{current}: redirect without Location")
                current = urllib.parse.urljoin(current, loc)
                continue
            return resp
        raise _Fatal(f"{url}: more than {self.max_redirects} redirects")

    def _from_url(self, item: FetchItem, url: str, dest: Path, started: float) -> FetchResult:
        part = self._partial_path(item.key)
        mismatches = 0
        resumed = False
        fetched = 0
        last_error = ""
        retry_after: float | None = None
        for attempt in range(self.attempts):
            self._check_time(started)
            if attempt:
                # Back off (with jitter) before the next attempt; Retry-After wins if longer.
                self.client.sleep_before_retry(attempt - 1, retry_after, limit=self._remaining(started))
                self._check_time(started)
                retry_after = None
            hasher = hashlib.sha256()
            try:
                if urllib.parse.urlsplit(url).scheme == "file":
                    n, was_resumed = self._copy_local(url, part, hasher), False
                else:
                    n, was_resumed = self._download(item, url, part, started, hasher)
                fetched += n
                resumed = resumed or was_resumed
            except _Retry as exc:
                last_error = str(exc)
                retry_after = exc.retry_after
                if exc.restart:
                    with contextlib.suppress(FileNotFoundError):
                        part.unlink()
                continue
            # Complete body on disk: verify it (hashed while it streamed in, no second read).
            digest, size = hasher.hexdigest(), part.stat().st_size
            if item.size is not None and size != item.size:
                part.unlink()
                last_error = f"{url}: got {size} bytes, expected {item.size}"
                continue
            if item.sha256 is not None and digest != item.sha256:
                mismatches += 1
                if mismatches < 2:
                    part.unlink()  # maybe a bad resume or a flaky mirror: once more from zero
                    last_error = f"{url}: sha256 {digest} != upstream {item.sha256}"
                    continue
                if self.policy == "fail":
                    part.unlink()
                    raise IntegrityError(
                        f"{item.key}: sha256 mismatch from {url}: got {digest}, upstream says {item.sha256} "
                        "(--on-hash-mismatch warn to accept)"
                    )
            self._publish(part, dest)
            self.cache.record(item.key, dest, digest)
            return FetchResult(item.key, "downloaded", digest, size, fetched, url, None, item.sha256,
                               item.sha256 is not None and digest != item.sha256, resumed, attempt + 1)
        raise _Fatal(last_error or f"{url}: failed after {self.attempts} attempts")

    def _publish(self, part: Path, dest: Path) -> None:
        if self.fsync:
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        if self.fsync:
            fsync_dir(dest.parent)

    def _copy_local(self, url: str, part: Path, hasher) -> int:
        """Copy a ``file://`` source (pip find-links dirs, local indexes) into ``part``."""
        src = file_url_path(url)
        copied = 0
        try:
            with open(src, "rb") as fin, open(part, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                    hasher.update(chunk)
                    copied += len(chunk)
                    self._advance(len(chunk))
        except FileNotFoundError:
            raise _Fatal(f"{url}: no such file") from None
        return copied

    def _download(self, item: FetchItem, url: str, part: Path, started: float, hasher) -> tuple[int, bool]:
        """One HTTP attempt appending to ``part``. Returns (bytes received, resumed?)."""
        have = part.stat().st_size if part.exists() else 0
        if item.size is not None and have > item.size:
            part.unlink()
            have = 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        resp = self._open(url, headers, started)
        wants_html = item.key.endswith((".html", ".htm"))
        with contextlib.closing(resp):
            ctype = resp.headers.get("Content-Type", "").lower()
            if ctype.startswith(HTML_TYPES) and not wants_html:
                # A challenge/login page instead of the artifact: never store it.
                raise _Retry(f"{url}: server sent an HTML page ({ctype}) instead of the file")
            resumed = False
            mode = "wb"
            expected_len: int | None = None
            if have and resp.status_code == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
                if not m or int(m.group(1)) != have:
                    raise _Retry(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} for resume at {have}",
                                 restart=True)
                mode, resumed = "ab", True
                expected_len = int(m.group(2)) - have + 1
                _hash_prefix(part, have, hasher)  # the bytes already on disk start the digest
            elif resp.status_code == 206:
                raise _Retry(f"{url}: unrequested partial content", restart=True)
            elif resp.status_code != 200:
                raise _Fatal(f"{url}: HTTP {resp.status_code}")
            else:
                cl = resp.headers.get("Content-Length")
                # A 200 to a Range request means the server ignored it: restart from zero.
                expected_len = int(cl) if cl and cl.isascii() and cl.isdigit() else None
            received = 0
            limit = (item.size - (have if mode == "ab" else 0)) if item.size is not None else None
            sniff = not resumed and not wants_html
            with open(part, mode) as fh:
                while True:
                    # read1: whatever has arrived (not a full CHUNK), so the timeouts are
                    # checked while a slow server drips bytes.
                    try:
                        chunk = resp.raw.read1(CHUNK)
                    except _READ_ERRORS as exc:
                        fh.flush()
                        raise _Retry(f"{url}: {describe(exc)} after {received} bytes") from None
                    if not chunk:
                        break
                    if sniff and received == 0 and looks_like_html(chunk):
                        raise _Retry(f"{url}: server sent an HTML page instead of the file", restart=True)
                    received += len(chunk)
                    if limit is not None and received > limit:
                        raise _Retry(f"{url}: more bytes than the expected {item.size}", restart=True)
                    fh.write(chunk)  # a local disk error propagates: not the network's fault
                    hasher.update(chunk)
                    self._advance(len(chunk))
                    self._check_time(started)
            if expected_len is not None and received < expected_len:
                raise _Retry(f"{url}: body ended after {received} of {expected_len} bytes")
            return received, resumed


def _hash_prefix(path: Path, length: int, hasher) -> None:
    with open(path, "rb") as fh:
        left = length
        while left > 0 and (chunk := fh.read(min(CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)


def fetch_items(root: Path, items: list[FetchItem], client: Client, **kwargs) -> FetchReport:
    """Convenience wrapper: ``Fetcher(root, client, **kwargs).run(items)``."""
    return Fetcher(root, client, **kwargs).run(items)


__all__ = ["FetchItem", "FetchResult", "FetchReport", "Fetcher", "HashCache", "fetch_items", "hash_present",
           "retry_after_seconds"]
