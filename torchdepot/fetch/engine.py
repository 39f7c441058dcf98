"""The fetch orchestration: :class:`Fetcher` runs files in parallel, tries each file's URLs
in order, checks what arrived and publishes it into the mirror root.

Invariants (the "nothing lost" contract; how the bytes arrive is :mod:`.single` (one
connection, resumed) and :mod:`.segmented` (byte-range pieces), within the caps and
bounds of :mod:`.pool`):
- bytes arrive in ``<root>/.torchdepot/partial/``; a file appears at its final path only
  by ``os.replace`` after its size and sha256 were checked, so a reader (or a crash)
  never sees half a file;
- a file of at least ``split_bytes`` (two pieces: no other threshold) goes out in pieces,
  whose ranges free connections split further while they are in flight (aria2's rule);
  a piece file has holes, so it is never resumed as one stream, and when ranges prove unusable it is dropped and the file
  restarts from zero over one connection;
- the assembled file is hashed once, streamed, before it is published: a corrupt piece
  fails the check like any other wrong byte;
- upstream hashes are claims: what arrived is always hashed; a disagreement is retried
  once from scratch, then handled by the policy (``fail``: not published; ``warn``:
  published and reported);
- a file already present and recorded is not fetched again (hash cache keyed on
  size+mtime, so a no-op re-sync reads no file bytes);
- every submitted key gets one result, even when the code fetching it fails: a bug loses
  that file, never the others' results; ``file_timeout`` covers all of a file's URLs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from torchdepot.errors import IntegrityError, one_line
from torchdepot.fetch.bounds import DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, RateFloor, RateMeter
from torchdepot.fetch.items import FetchItem, FetchReport, FetchResult, HashCache, present_result
from torchdepot.fetch.pieces import drop_partial, sidecar_path
from torchdepot.fetch.pool import (
    DEFAULT_CONNECTIONS,
    DEFAULT_CONNECTIONS_PER_HOST,
    Fallback,
    Fatal,
    Pool,
    Retry,
    Slots,
)
from torchdepot.fetch.progress import Progress, ProgressCallback
from torchdepot.fetch.segmented import (
    DEFAULT_HEAD_STEAL_BYTES,
    DEFAULT_PIECE_BYTES,
    DEFAULT_SPLIT_BYTES,
    DEFAULT_TAIL_PIECE_BYTES,
    Segmenter,
)
from torchdepot.fetch.single import Streamer
from torchdepot.net.http import Client
from torchdepot.store import layout as L
from torchdepot.store.fsutil import fsync_dir, safe_join, sha256_file, writing


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
    ``piece_bytes``: which files are split and the smallest piece (``tail_piece_bytes`` near the
    end, where a cut pays for its first-byte wait; at least ``piece_bytes``: never); ``min_rate`` (bytes/s,
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
        head_steal_bytes: int = DEFAULT_HEAD_STEAL_BYTES,
        tail_piece_bytes: int = DEFAULT_TAIL_PIECE_BYTES,
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
        self.head_steal_bytes = max(0, head_steal_bytes)
        self.tail_piece_bytes = max(16 * 1024, tail_piece_bytes)
        self.floor = RateFloor(min_rate=max(0.0, min_rate), window=rate_window)
        self.on_progress = on_progress
        self.cache = HashCache(self.root)
        self.partial_dir = self.root / L.PARTIAL_DIR
        self.report: FetchReport | None = None
        # set by start() (and kept after close()); used only between the two
        self._progress: Progress
        self._pool: Pool
        self._segments: Segmenter
        self._streams: Streamer
        self._files: ThreadPoolExecutor | None = None
        self._pieces: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._started_at = 0.0

    # -- public -----------------------------------------------------------------
    def run(self, items: list[FetchItem]) -> FetchReport:
        self.start()
        try:
            self.submit_all(items)
        finally:
            report = self.close()
        return report

    def submit_all(self, items: Iterable[FetchItem]) -> list[tuple[FetchItem, Future[FetchResult]]]:
        """:meth:`submit` each stored path once (its first item: several targets may need it), the
        largest first: the long downloads start early and the small ones fill the gaps."""
        unique: dict[str, FetchItem] = {}
        for it in items:
            unique.setdefault(it.key, it)
        self.start()
        return [(it, self.submit(it)) for it in sorted(unique.values(), key=lambda i: -(i.size or 0))]

    def start(self) -> Fetcher:
        """Open the pools and the progress display; the whole-run deadline starts now."""
        if self._files is not None:
            return self
        self._started_at = time.monotonic()
        self.deadline = None if self.deadline_seconds is None else self._started_at + self.deadline_seconds
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.client.size_pools(hosts=max(16, self.connections), per_host=self.connections_per_host)
        self._progress = Progress(self.progress, self.on_progress)
        self._pool = Pool(client=self.client, slots=Slots(self.connections, self.connections_per_host),
                          progress=self._progress, floor=self.floor, deadline=self.deadline,
                          file_timeout=self.file_timeout, allowed_hosts=self.allowed_hosts,
                          max_redirects=self.max_redirects)
        # Files beyond the socket caps just wait for a slot; pieces get their own pool so a
        # file waiting for its pieces never holds a socket.
        self._files = ThreadPoolExecutor(max_workers=max(self.jobs, self.connections), thread_name_prefix="fetch")
        self._pieces = ThreadPoolExecutor(max_workers=self.connections, thread_name_prefix="piece")
        self._segments = Segmenter(pool=self._pool, executor=self._pieces, split_bytes=self.split_bytes,
                                   piece_bytes=self.piece_bytes, connections_per_host=self.connections_per_host,
                                   attempts=self.attempts, head_steal_bytes=self.head_steal_bytes,
                                   tail_piece_bytes=self.tail_piece_bytes)
        self._streams = Streamer(pool=self._pool, segmenter=self._segments)
        self._futures = {}
        self.report = None
        return self

    def submit(self, item: FetchItem) -> Future[FetchResult]:
        """Start fetching ``item`` now; the future never raises (a failure is a result)."""
        if self._files is None:
            raise RuntimeError("Fetcher.submit before start()")
        with self._lock:
            fut = self._futures.get(item.key)
            if fut is None:
                self._progress.add_file(item.size, item.key)
                fut = self._futures[item.key] = self._files.submit(self._guarded, item)
        return fut

    def close(self) -> FetchReport:
        """Wait for every submitted file; return (and keep in ``report``) the results."""
        if self._files is None or self._pieces is None:  # both set by start(), cleared here
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

    def __enter__(self) -> Fetcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one file ---------------------------------------------------------------
    def _guarded(self, item: FetchItem) -> FetchResult:
        try:
            with writing(self.root / item.key):  # a full disk names the file (write() errors carry no name)
                res = self._one(item)
        except Exception as exc:  # a bug must not lose the other files' results
            res = FetchResult(key=item.key, status="failed", error=f"{type(exc).__name__}: {one_line(exc)}")
        if res.status == "downloaded":
            self._segments.lend()  # its connection is free: split a large file in flight
        self._progress.file_done(item.key, res.status, res.size)
        return res

    def _partial_path(self, key: str) -> Path:
        return partial_path(self.root, key)

    def _one(self, item: FetchItem) -> FetchResult:
        dest = safe_join(self.root, item.key)
        present = present_result(self.root, item, dest, self.cache, self.policy)
        if present is not None:
            return present
        errors: list[str] = []
        started = time.monotonic()  # the per-file timeout covers every candidate URL
        meter = RateMeter(self.floor, started)
        attempts = 0
        local = [(item.local, item.urls[0] if item.urls else item.local)] if item.local else []
        for url, named in [*local, *((u, u) for u in item.urls)]:
            try:
                res = self._from_url(item, url, dest, started, meter)
                res.url, res.attempts = named, res.attempts + attempts
                res.span = (started, time.monotonic())
                return res
            except Fatal as exc:
                errors.append(str(exc))
                attempts += 1
            except IntegrityError as exc:
                # Upstream served bytes that disagree with its own claim: do not publish.
                return FetchResult(key=item.key, status="failed", error=str(exc), url=named,
                                   upstream_sha256=item.sha256, hash_mismatch=True)
        if not item.urls and not item.local:
            errors.append("no URL to fetch from")
        return FetchResult(key=item.key, status="failed", error="; ".join(errors), upstream_sha256=item.sha256,
                           attempts=attempts)

    def _splits(self, item: FetchItem, url: str) -> bool:
        return (item.size is not None and self._segments.worth_splitting(item.size, url)
                and urllib.parse.urlsplit(url).scheme in ("http", "https"))

    def _verdict(self, item: FetchItem, url: str, part: Path, digest: str, size: int, mismatches: int) -> str | None:
        """None: publishable. Else why to start over from scratch (the partial is gone).
        Raises :class:`IntegrityError` on a repeated hash mismatch under the fail policy."""
        if item.size is not None and size != item.size:
            drop_partial(part)
            return f"{url}: got {size} bytes, expected {item.size}"
        if item.sha256 is not None and digest != item.sha256:
            if mismatches < 2:
                drop_partial(part)  # maybe a bad resume or a flaky mirror: once more from zero
                return f"{url}: sha256 {digest} != upstream {item.sha256}"
            if self.policy == "fail":
                drop_partial(part)
                raise IntegrityError(
                    f"{item.key}: sha256 mismatch from {url}: got {digest}, upstream says {item.sha256} "
                    "(--on-hash-mismatch warn to accept)"
                )
        return None

    def _from_url(self, item: FetchItem, url: str, dest: Path, started: float, meter: RateMeter) -> FetchResult:
        part = self._partial_path(item.key)
        mismatches = 0
        resumed = False
        fetched = 0
        last_error = ""
        retry_after: float | None = None
        # a one-stream partial (no sidecar) is resumed as one stream: its bytes are a prefix
        split = self._splits(item, url) and not (part.exists() and not sidecar_path(part).exists())
        may_split = True  # an unknown size may still split once the first response states it
        if not split and sidecar_path(part).exists():
            drop_partial(part)  # a piece file has holes: never resume it as one stream
        for attempt in range(self.attempts):
            self._pool.check_time(started, meter, url)
            if attempt:
                # Back off (with jitter) before the next attempt; Retry-After wins if longer.
                self._pool.backoff(attempt, retry_after, started)
                self._pool.check_time(started, meter, url)
                retry_after = None
            try:
                if split:
                    n, was_resumed, digest, size = self._pieces_attempt(item, url, part, started, meter)
                else:
                    n, was_resumed, digest, size = self._stream_attempt(item, url, part, started, meter, may_split)
            except Fallback as exc:
                # Ranges unusable or the file changed: one connection, from zero.
                drop_partial(part)
                if split:
                    split = False
                else:
                    may_split = False
                last_error = str(exc)
                continue
            except Retry as exc:
                if split:  # the pieces retry themselves; only the single stream is retried here
                    raise
                last_error, retry_after = str(exc), exc.retry_after
                if exc.restart:
                    with contextlib.suppress(FileNotFoundError):
                        part.unlink()
                continue
            fetched += n
            resumed = resumed or was_resumed
            if item.sha256 is not None and digest != item.sha256:
                mismatches += 1
            why = self._verdict(item, url, part, digest, size, mismatches)
            if why is not None:
                last_error = why
                continue
            return self._publish(item, url, part, dest, digest=digest, size=size, fetched=fetched,
                                 resumed=resumed, attempts=attempt + 1)
        raise Fatal(last_error or f"{url}: failed after {self.attempts} attempts")

    def _pieces_attempt(self, item: FetchItem, url: str, part: Path, started: float,
                        meter: RateMeter) -> tuple[int, bool, str, int]:
        """(bytes received, resumed?, sha256, size) of one attempt over several connections."""
        n, was_resumed, _requests, digest = self._segments.fetch(item, url, part, started, meter)
        if digest is None:  # not all there (cannot happen once the pieces ended well): read it
            return n, was_resumed, *sha256_file(part)
        return n, was_resumed, digest, part.stat().st_size  # hashed in order as the pieces came

    def _stream_attempt(self, item: FetchItem, url: str, part: Path, started: float, meter: RateMeter,
                        may_split: bool) -> tuple[int, bool, str, int]:
        """(bytes received, resumed?, sha256, size) of one attempt over one connection."""
        hasher = hashlib.sha256()
        assembled: bool | str
        if urllib.parse.urlsplit(url).scheme == "file":
            n, was_resumed, assembled = self._streams.copy_local(url, part, hasher), False, False
        else:
            n, was_resumed, assembled = self._streams.fetch(item, url, part, started, hasher, meter, may_split)
        if isinstance(assembled, str):  # split once its size was known: hashed as the pieces came
            digest, size = assembled, part.stat().st_size
        elif assembled:  # split, but not all of it hashed on the way
            digest, size = sha256_file(part)
        else:  # complete body on disk: hashed while it streamed in, no second read
            digest, size = hasher.hexdigest(), part.stat().st_size
        return n, was_resumed, digest, size

    def _publish(self, item: FetchItem, url: str, part: Path, dest: Path, *, digest: str, size: int,
                 fetched: int, resumed: bool, attempts: int) -> FetchResult:
        """Move the checked partial file to ``dest`` (the one way a file appears) and record it."""
        with contextlib.suppress(FileNotFoundError):
            sidecar_path(part).unlink()
        if self.fsync:
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        if self.fsync:
            fsync_dir(dest.parent)
        self.cache.record(item.key, dest, digest)
        return FetchResult(key=item.key, status="downloaded", sha256=digest, size=size, fetched_bytes=fetched,
                           url=url, error=None, upstream_sha256=item.sha256,
                           hash_mismatch=item.sha256 is not None and digest != item.sha256, resumed=resumed,
                           attempts=attempts)


def partial_path(root: Path, key: str) -> Path:
    """Where the bytes of ``key`` arrive before their check (a reader may follow a
    one-connection download there: the pull-through cache streams it to waiting clients)."""
    name = key.replace("/", "__")
    if len(name) > 200:  # keep under NAME_MAX; a digest keeps it unique and stable for resume
        name = name[:120] + "-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(root) / L.PARTIAL_DIR / (name + ".part")


def fetch_items(root: Path, items: list[FetchItem], client: Client, **kwargs) -> FetchReport:
    """Convenience wrapper: ``Fetcher(root, client, **kwargs).run(items)``."""
    return Fetcher(root, client, **kwargs).run(items)
