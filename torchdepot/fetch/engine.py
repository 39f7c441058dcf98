"""Parallel, resumable, hash-checked downloads into a mirror root, split over several
connections when a file is large.

Invariants (the "nothing lost" contract):
- bytes arrive in ``<root>/.torchdepot/partial/``; a file appears at its final path only
  by ``os.replace`` after its size and sha256 were checked, so a reader (or a crash)
  never sees half a file;
- a file of at least ``split_bytes`` is fetched as byte-range pieces over several
  connections (its size from the index, else from its first 200's Content-Length: that
  response then streams the first piece); each piece is written at its offset in the partial file and
  recorded in a sidecar (see :mod:`torchdepot.fetch.pieces`) only once all its bytes are
  there, so a killed run resumes with the unfinished pieces only;
- the assembled file is hashed once, streamed, before it is published: a corrupt piece
  fails the check like any other wrong byte;
- a server that ignores Range (200 to a piece request), or a file that changes during
  the download (ETag, Last-Modified or size differ between responses or from the
  sidecar), drops the pieces and restarts the file from zero over one connection;
- a single-connection partial file is resumed with an open-ended Range; a 200 or a wrong
  ``Content-Range`` restarts it from zero;
- upstream hashes are claims: what arrived is always hashed; a disagreement is retried
  once from scratch, then handled by the policy (``fail``: not published; ``warn``:
  published and reported);
- a file already present and recorded is not fetched again (hash cache keyed on
  size+mtime, so a no-op re-sync reads no file bytes);
- bounds: sockets are capped overall (``connections``) and per host
  (``connections_per_host``); a file receiving under ``min_rate`` bytes/s over
  ``rate_window`` seconds is aborted with one line naming its URL; ``file_timeout`` and
  the whole-run ``deadline`` are optional hard limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from torchdepot.store import layout as L
from torchdepot.errors import IntegrityError, UpstreamError
from torchdepot.fetch.bounds import DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, RateFloor, RateMeter
from torchdepot.fetch.pieces import (Piece, PieceState, Validators, load_state, plan_pieces, save_state,
                                     sidecar_path)
from torchdepot.fetch.progress import Progress, ProgressCallback
from torchdepot.net.http import (Client, HttpStatusError, describe, file_url_path, parse_content_range,
                                 range_header)
from torchdepot.store.fsutil import atomic_write_text, fsync_dir, safe_join, sha256_file

CHUNK = 256 * 1024  # per read: small enough that 32 threads hold little memory
MB = 1_000_000
HTML_TYPES = ("text/html", "application/xhtml")
HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body")
# What a failed read of a response body can raise, below and inside requests.
_READ_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException, OSError)

# Defaults that fit a CDN: it serves each connection a few MB/s and tolerates a handful
# of connections per client host (aria2's -x caps at 16; browsers open 6 per host).
DEFAULT_CONNECTIONS = 32  # sockets open at once, all hosts together
DEFAULT_CONNECTIONS_PER_HOST = 16
DEFAULT_SPLIT_BYTES = 16 * MB  # files at least this large go out in pieces
DEFAULT_PIECE_BYTES = 4 * MB  # and each piece is at least this large


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
        self.path = Path(root) / L.STATE_DIR / L.HASHES_NAME
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


class _Fallback(Exception):
    """Stop the pieces: fetch this file over one connection from zero instead."""


class _Slots:
    """Connection caps: ``total`` sockets at once, ``per_host`` to any one host."""

    def __init__(self, total: int, per_host: int):
        self.total = threading.BoundedSemaphore(total)
        self.per_host_cap = per_host
        self.hosts: dict[str, threading.BoundedSemaphore] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, url: str):
        """Hold a socket slot for ``url``'s host; ``release()`` on the yielded object gives
        it back early (a file thread must not hold one while it waits for its pieces)."""
        host = urllib.parse.urlsplit(url).netloc
        with self.lock:
            sem = self.hosts.setdefault(host, threading.BoundedSemaphore(self.per_host_cap))
        sem.acquire()  # always host first, then total: no lock-order cycle
        self.total.acquire()
        held = _Held((self.total, sem))
        try:
            yield held
        finally:
            held.release()


class _Held:
    def __init__(self, sems: tuple[threading.BoundedSemaphore, ...]):
        self.sems = sems
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            for sem in self.sems:
                sem.release()


@dataclass
class _Segmented:
    """One file's piece download in flight (shared by its piece tasks)."""

    item: FetchItem
    url: str
    part: Path
    fd: int
    pieces: tuple[Piece, ...]
    state: PieceState
    started: float
    meter: RateMeter
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: threading.Event = field(default_factory=threading.Event)
    fetched: int = 0
    requests: int = 0
    reached: dict[int, int] = field(default_factory=dict)  # piece -> next offset to write


class Fetcher:
    """Downloads :class:`FetchItem` s into ``root``.

    Batch use (unchanged): ``Fetcher(root, client).run(items) -> FetchReport``.
    Streaming use (start each file as soon as it is known)::

        with Fetcher(root, client) as f:        # start(): pools, progress, deadline
            fut = f.submit(item)                # Future[FetchResult]; same key -> same future
            ...
        report = f.report                       # close(): waits, saves the hash cache

    ``jobs``: files in flight at least (the connection caps bound the sockets);
    ``connections`` / ``connections_per_host``: socket caps; ``split_bytes`` /
    ``piece_bytes``: which files are split and the smallest piece; ``min_rate`` (bytes/s,
    0: off) over ``rate_window`` s: the per-file rate floor; ``file_timeout`` /
    ``deadline``: optional per-file and whole-run limits in seconds; ``on_progress``: a
    callable receiving :class:`~torchdepot.fetch.progress.ProgressEvent` s.
    """

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
        connections: int = DEFAULT_CONNECTIONS,
        connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST,
        split_bytes: int = DEFAULT_SPLIT_BYTES,
        piece_bytes: int = DEFAULT_PIECE_BYTES,
        min_rate: float = DEFAULT_MIN_RATE,
        rate_window: float = DEFAULT_RATE_WINDOW,
        on_progress: ProgressCallback | None = None,
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
        self.deadline: float | None = None  # absolute; set when run()/start() begins
        self.allowed_hosts = allowed_hosts
        self.progress = progress
        self.max_redirects = max_redirects
        # fsync each file before its rename: survives power loss, costs a disk flush per
        # file. Off by default: a process crash cannot lose page-cache data, and after a
        # power loss a short/zeroed file fails the size+hash check of the next sync.
        self.fsync = fsync
        self.connections = max(1, connections)
        self.connections_per_host = max(1, min(connections_per_host, self.connections))
        self.split_bytes = max(1, split_bytes)
        self.piece_bytes = max(64 * 1024, piece_bytes)
        self.floor = RateFloor(min_rate=max(0.0, min_rate), window=rate_window)
        self.on_progress = on_progress
        self.cache = HashCache(self.root)
        self.partial_dir = self.root / L.PARTIAL_DIR
        self.report: FetchReport | None = None
        self._progress: Progress | None = None
        self._slots: _Slots | None = None
        self._files: ThreadPoolExecutor | None = None
        self._pieces: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._started_at = 0.0

    # -- public -----------------------------------------------------------------
    def run(self, items: list[FetchItem]) -> FetchReport:
        unique: dict[str, FetchItem] = {}
        for it in items:
            unique.setdefault(it.key, it)  # stored once even when several targets need it
        self.start()
        try:
            # Largest first: the long downloads start early and the small ones fill the gaps.
            for it in sorted(unique.values(), key=lambda i: -(i.size or 0)):
                self.submit(it)
        finally:
            report = self.close()
        return report

    def start(self) -> "Fetcher":
        """Open the pools and the progress display; the whole-run deadline starts now."""
        if self._files is not None:
            return self
        self._started_at = time.monotonic()
        self.deadline = None if self.deadline_seconds is None else self._started_at + self.deadline_seconds
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.client.size_pools(hosts=max(16, self.connections), per_host=self.connections_per_host)
        self._slots = _Slots(self.connections, self.connections_per_host)
        self._progress = Progress(self.progress, self.on_progress)
        # Files beyond the socket caps just wait for a slot; pieces get their own pool so a
        # file waiting for its pieces never holds a socket.
        self._files = ThreadPoolExecutor(max_workers=max(self.jobs, self.connections), thread_name_prefix="fetch")
        self._pieces = ThreadPoolExecutor(max_workers=self.connections, thread_name_prefix="piece")
        self._futures = {}
        self.report = None
        return self

    def submit(self, item: FetchItem) -> "Future[FetchResult]":
        """Start fetching ``item`` now; the future never raises (a failure is a result)."""
        if self._files is None:
            raise RuntimeError("Fetcher.submit before start()")
        with self._lock:
            fut = self._futures.get(item.key)
            if fut is None:
                self._progress.add_file(item.size)
                fut = self._futures[item.key] = self._files.submit(self._guarded, item)
        return fut

    def close(self) -> FetchReport:
        """Wait for every submitted file; return (and keep in ``report``) the results."""
        if self._files is None:
            return self.report or FetchReport()
        report = FetchReport()
        try:
            for fut in as_completed(list(self._futures.values())):
                report.results.append(fut.result())
        finally:
            self._files.shutdown(wait=True)
            self._pieces.shutdown(wait=True)
            self._progress.close()
            self._files = self._pieces = None
            self.cache.save()
        report.results.sort(key=lambda r: r.key)
        report.seconds = time.monotonic() - self._started_at
        self.report = report
        return report

    def __enter__(self) -> "Fetcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------
    def _guarded(self, item: FetchItem) -> FetchResult:
        try:
            res = self._one(item)
        except Exception as exc:  # a bug must not lose the other files' results
            res = FetchResult(item.key, "failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        self._progress.file_done(item.key, res.status)
        return res

    def _advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(n)

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
        meter = RateMeter(self.floor, started)
        attempts = 0
        for url in item.urls:
            try:
                res = self._from_url(item, url, dest, started, meter)
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

    def _check_time(self, started: float, meter: RateMeter | None = None, url: str = "") -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise _Fatal("overall timeout reached")
        if self.file_timeout is not None and now - started > self.file_timeout:
            raise _Fatal(f"per-file timeout of {self.file_timeout:g}s reached")
        if meter is not None:
            got = meter.too_slow(now)
            if got is not None:
                raise _Fatal(f"{url}: too slow: {got} bytes in the last {self.floor.window:g} s, under the floor of "
                             f"{self.floor.min_rate:g} B/s; aborted")

    def _open(self, url: str, headers: dict, started: float) -> requests.Response:
        """GET following redirects by hand so every hop's host passes the policy.

        One request per hop (the attempt loops do the retrying, so attempts are counted
        once); the read timeout is cut to the time left, and to the rate window, so a
        stalled body cannot outlive a bound by more than that.
        """
        current = url
        connect, read = self.client.timeout
        if self.floor.enabled:
            read = min(read, self.floor.window)
        left = self._remaining(started)
        if left is not None:
            read = min(read, left)
        timeout = (connect, max(0.05, read))
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

    def _splits(self, item: FetchItem, url: str) -> bool:
        return (item.size is not None and item.size >= self.split_bytes and self.connections_per_host > 1
                and urllib.parse.urlsplit(url).scheme in ("http", "https"))

    def _verdict(self, item: FetchItem, url: str, part: Path, digest: str, size: int, mismatches: int) -> str | None:
        """None: publishable. Else why to start over from scratch (the partial is gone).
        Raises :class:`IntegrityError` on a repeated hash mismatch under the fail policy."""
        if item.size is not None and size != item.size:
            self._drop_partial(part)
            return f"{url}: got {size} bytes, expected {item.size}"
        if item.sha256 is not None and digest != item.sha256:
            if mismatches < 2:
                self._drop_partial(part)  # maybe a bad resume or a flaky mirror: once more from zero
                return f"{url}: sha256 {digest} != upstream {item.sha256}"
            if self.policy == "fail":
                self._drop_partial(part)
                raise IntegrityError(
                    f"{item.key}: sha256 mismatch from {url}: got {digest}, upstream says {item.sha256} "
                    "(--on-hash-mismatch warn to accept)"
                )
        return None

    @staticmethod
    def _drop_partial(part: Path) -> None:
        side = sidecar_path(part)
        for p in (part, side, side.with_name(side.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _from_url(self, item: FetchItem, url: str, dest: Path, started: float, meter: RateMeter) -> FetchResult:
        part = self._partial_path(item.key)
        mismatches = 0
        resumed = False
        fetched = 0
        last_error = ""
        retry_after: float | None = None
        split = self._splits(item, url)
        may_split = True  # an unknown size may still split once the first response states it
        if not split and sidecar_path(part).exists():
            self._drop_partial(part)  # a piece file has holes: never resume it as one stream
        for attempt in range(self.attempts):
            self._check_time(started, meter, url)
            if attempt:
                # Back off (with jitter) before the next attempt; Retry-After wins if longer.
                self.client.sleep_before_retry(attempt - 1, retry_after, limit=self._remaining(started))
                self._check_time(started, meter, url)
                retry_after = None
            if split:
                try:
                    n, was_resumed, _requests = self._segmented(item, url, part, started, meter)
                except _Fallback as exc:
                    # Ranges unusable or the file changed: one connection, from zero.
                    self._drop_partial(part)
                    split = False
                    last_error = str(exc)
                    continue
                fetched += n
                resumed = resumed or was_resumed
                digest, size = sha256_file(part)  # the assembled file, hashed once, streamed
            else:
                hasher = hashlib.sha256()
                assembled = False
                try:
                    if urllib.parse.urlsplit(url).scheme == "file":
                        n, was_resumed = self._copy_local(url, part, hasher), False
                    else:
                        n, was_resumed, assembled = self._download(item, url, part, started, hasher, meter,
                                                                   may_split)
                    fetched += n
                    resumed = resumed or was_resumed
                except _Retry as exc:
                    last_error = str(exc)
                    retry_after = exc.retry_after
                    if exc.restart:
                        with contextlib.suppress(FileNotFoundError):
                            part.unlink()
                    continue
                except _Fallback as exc:
                    self._drop_partial(part)
                    may_split = False
                    last_error = str(exc)
                    continue
                if assembled:  # split once its size was known: the pieces' file, hashed once
                    digest, size = sha256_file(part)
                else:  # complete body on disk: hashed while it streamed in, no second read
                    digest, size = hasher.hexdigest(), part.stat().st_size
            if item.sha256 is not None and digest != item.sha256:
                mismatches += 1
            why = self._verdict(item, url, part, digest, size, mismatches)
            if why is not None:
                last_error = why
                continue
            with contextlib.suppress(FileNotFoundError):
                sidecar_path(part).unlink()
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

    def _download(self, item: FetchItem, url: str, part: Path, started: float, hasher,
                  meter: RateMeter, may_split: bool = False) -> tuple[int, bool, bool]:
        """One HTTP attempt appending to ``part``. Returns (bytes received, resumed?, split?).

        A file of unknown size whose first answer is a large 200 that accepts ranges is
        split there: this response streams the first piece, other connections the rest
        (``split``: ``part`` is then complete but was not fed to ``hasher``)."""
        have = part.stat().st_size if part.exists() else 0
        if item.size is not None and have > item.size:
            part.unlink()
            have = 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = range_header(have)
        with self._slots.hold(url) as slot:
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
                    cr = parse_content_range(resp.headers.get("Content-Range"))
                    if cr is None or cr.first != have:
                        raise _Retry(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                                     f"for resume at {have}", restart=True)
                    mode, resumed = "ab", True
                    expected_len = cr.length
                    _hash_prefix(part, have, hasher)  # the bytes already on disk start the digest
                elif resp.status_code == 206:
                    raise _Retry(f"{url}: unrequested partial content", restart=True)
                elif resp.status_code != 200:
                    raise _Fatal(f"{url}: HTTP {resp.status_code}")
                else:
                    cl = resp.headers.get("Content-Length")
                    # A 200 to a Range request means the server ignored it: restart from zero.
                    expected_len = int(cl) if cl and cl.isascii() and cl.isdigit() and len(cl) < 19 else None
                    if item.size is None and expected_len and not have:
                        self._progress.learn_size(expected_len)
                        if (may_split and expected_len >= self.split_bytes and self.connections_per_host > 1
                                and resp.headers.get("Accept-Ranges", "").strip().lower() == "bytes"):
                            n, _, _ = self._segmented(item, url, part, started, meter, size=expected_len,
                                                      first=resp, slot=slot)
                            return n, False, True
                received = 0
                limit = (item.size - (have if mode == "ab" else 0)) if item.size is not None else None
                sniff = not resumed and not wants_html
                with open(part, mode) as fh:
                    while True:
                        # read1: whatever has arrived (not a full CHUNK), so the bounds are
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
                        meter.add(len(chunk), time.monotonic())
                        self._check_time(started, meter, url)
                if expected_len is not None and received < expected_len:
                    raise _Retry(f"{url}: body ended after {received} of {expected_len} bytes")
                _keep_alive(resp)
                return received, resumed, False

    # -- pieces -----------------------------------------------------------------
    def _segmented(self, item: FetchItem, url: str, part: Path, started: float, meter: RateMeter, *,
                   size: int | None = None, first: requests.Response | None = None,
                   slot: _Held | None = None) -> tuple[int, bool, int]:
        """Fetch ``item`` (``size`` bytes) as pieces over several connections into ``part``.

        ``first``: an open 200 for the whole file (its ``slot`` held by the caller) that
        streams the first piece before it is closed and the slot released.
        Returns (bytes received, resumed?, requests). Raises :class:`_Fallback` when ranges
        are not usable or the file changed, :class:`_Fatal` when a piece gives up (the
        finished pieces stay recorded for the next run).
        """
        size = item.size if size is None else size
        assert size is not None
        pieces = plan_pieces(size, self.piece_bytes, self.connections_per_host)
        state = load_state(part)
        resumed = False
        try:
            on_disk = part.stat().st_size
        except FileNotFoundError:
            on_disk = -1
        if (first is None and state is not None and state.validators.size == size and state.count == len(pieces)
                and state.piece_bytes == self.piece_bytes and on_disk == size):
            resumed = bool(state.done)
        else:
            self._drop_partial(part)
            known = Validators(size=size) if first is None else Validators.from_headers(size, first.headers)
            state = PieceState(known, self.piece_bytes, len(pieces))
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)  # sparse: every piece writes at its own offset
            if not resumed:
                save_state(part, state)
            seg = _Segmented(item=item, url=url, part=part, fd=fd, pieces=pieces, state=state,
                             started=started, meter=meter)
            todo = [p for p in pieces if p.index not in state.done]
            head = todo.pop(0) if first is not None else None
            futures = [self._pieces.submit(self._piece, seg, p) for p in todo]
            errors: list[BaseException] = []
            if head is not None:
                try:
                    self._read_piece(seg, head, first, head.first, head.length)
                    self._piece_done(seg, head)
                except _Retry:  # cut short: fetched again as an ordinary piece
                    futures.append(self._pieces.submit(self._piece, seg, head))
                except BaseException as exc:
                    seg.abort.set()
                    errors.append(exc)
                finally:
                    first.close()  # the rest of its body belongs to the other pieces
                    slot.release()  # never wait for the pieces while holding a socket slot
            for fut in futures:
                try:
                    fut.result()
                except BaseException as exc:  # collected; the first real cause wins below
                    errors.append(exc)
            if errors:
                for kind in (_Fallback, IntegrityError, _Fatal):
                    first = next((e for e in errors if isinstance(e, kind)), None)
                    if first is not None:
                        raise first
                raise errors[0]
        finally:
            os.close(fd)
        return seg.fetched, resumed, seg.requests

    def _piece(self, seg: _Segmented, piece: Piece) -> None:
        """Fetch one piece (retrying from where it stopped) and record it in the sidecar."""
        retry_after: float | None = None
        last = ""
        for attempt in range(self.attempts):
            if seg.abort.is_set():
                raise _Fatal("aborted")
            try:
                self._check_time(seg.started, seg.meter, seg.url)
                if attempt:
                    self.client.sleep_before_retry(attempt - 1, retry_after, limit=self._remaining(seg.started))
                    retry_after = None
                with seg.lock:
                    pos = seg.reached.get(piece.index, piece.first)
                self._piece_request(seg, piece, pos)
                break
            except _Retry as exc:
                last, retry_after = str(exc), exc.retry_after
            except BaseException:
                seg.abort.set()  # the others stop at their next chunk
                raise
        else:
            seg.abort.set()
            raise _Fatal(last or f"{seg.url}: piece {piece.index} failed after {self.attempts} attempts")
        self._piece_done(seg, piece)

    @staticmethod
    def _piece_done(seg: _Segmented, piece: Piece) -> None:
        with seg.lock:
            seg.state.done.add(piece.index)
            save_state(seg.part, seg.state)  # after the bytes: a recorded piece is on disk

    def _piece_request(self, seg: _Segmented, piece: Piece, pos: int) -> int:
        """One range request for ``pos..piece.last``; returns the next offset (past the piece)."""
        url = seg.url
        with self._slots.hold(url):
            if seg.abort.is_set():
                raise _Fatal("aborted")
            with seg.lock:
                seg.requests += 1
            resp = self._open(url, {"Accept-Encoding": "identity", "Range": range_header(pos, piece.last)},
                              seg.started)
            with contextlib.closing(resp):
                if resp.status_code == 200:
                    raise _Fallback(f"{url}: server ignores Range (200 to a piece request)")
                if resp.status_code != 206:
                    raise _Fatal(f"{url}: HTTP {resp.status_code}")
                cr = parse_content_range(resp.headers.get("Content-Range"))
                if cr is None or cr.total is None or cr.first != pos:
                    raise _Fallback(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                                    f"for bytes {pos}-{piece.last}")
                seen = Validators.from_headers(cr.total, resp.headers)
                with seg.lock:
                    why = seg.state.validators.conflicts(seen)
                    if why is None and (seg.state.validators.etag, seg.state.validators.last_modified) == (None, None):
                        seg.state.validators = seen  # the first answer names the version
                if why is not None:
                    raise _Fallback(f"{url}: file changed during the download ({why})")
                pos = self._read_piece(seg, piece, resp, pos, min(piece.last, cr.last) - pos + 1)
                if pos <= piece.last:
                    raise _Retry(f"{url}: piece {piece.index} ended at byte {pos}, before {piece.last + 1}")
                if cr.last == piece.last:
                    _keep_alive(resp)  # body read exactly: the socket goes back to the pool
                return pos


    def _read_piece(self, seg: _Segmented, piece: Piece, resp: requests.Response, pos: int, want: int) -> int:
        """Write up to ``want`` bytes of ``resp`` at ``pos``; returns the offset reached.
        Raises :class:`_Retry` when the connection fails (the bytes so far stay written)."""
        got = 0
        while got < want:
            if seg.abort.is_set():
                raise _Fatal("aborted")
            try:
                chunk = resp.raw.read1(min(CHUNK, want - got))
            except _READ_ERRORS as exc:
                raise _Retry(f"{seg.url}: {describe(exc)} after {got} bytes of piece {piece.index}") from None
            if not chunk:
                break
            os.pwrite(seg.fd, chunk, pos)
            pos += len(chunk)
            got += len(chunk)
            with seg.lock:
                seg.fetched += len(chunk)
                seg.reached[piece.index] = pos  # a retry continues from here
            self._advance(len(chunk))
            seg.meter.add(len(chunk), time.monotonic())
            self._check_time(seg.started, seg.meter, seg.url)
        if got < want:
            raise _Retry(f"{seg.url}: piece {piece.index} ended after {got} of {want} bytes")
        return pos


def _keep_alive(resp: requests.Response) -> None:
    """Hand a fully read response's connection back to the pool (closing it would drop it)."""
    with contextlib.suppress(Exception):
        resp.raw.release_conn()


def _hash_prefix(path: Path, length: int, hasher) -> None:
    with open(path, "rb") as fh:
        left = length
        while left > 0 and (chunk := fh.read(min(CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)


def fetch_items(root: Path, items: list[FetchItem], client: Client, **kwargs) -> FetchReport:
    """Convenience wrapper: ``Fetcher(root, client, **kwargs).run(items)``."""
    return Fetcher(root, client, **kwargs).run(items)
