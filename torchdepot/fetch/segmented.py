"""One large file fetched as byte-range pieces over several connections into its partial
file (the layout and the resume sidecar are :mod:`torchdepot.fetch.pieces`).

Invariants:
- there is no size threshold beyond the smallest piece: a file large enough for two pieces
  (``split_bytes``, by default twice ``piece_bytes``, about 1 MB) is split when more than
  one connection per host is allowed and its host has not refused parallel ranges; its size
  comes from the index, else from its first 200's Content-Length;
- a file starts as one run per connection its host has free at that moment, at least one
  (:func:`~torchdepot.fetch.pieces.plan_runs`, staggered in length so that they do not all
  end, and ask again, at once; or the whole file for that first 200, which
  keeps streaming from byte 0): while other work holds or waits for the connections, no
  request is spent cutting a file that would only wait; a connection whose run is done,
  when no piece task and no whole file waits for a socket, takes the second half of the
  run with the most bytes left (aria2's rule), in its own file first, else in any file in
  flight (a connection freed by a one-stream file too), cut on a block boundary, never
  leaving either side under one block, and a run being read only while it has
  ``MIN_STEAL_SECONDS`` or more left at its own rate (a cut costs what is in flight);
  when no run anywhere is left for that rule (the end of the run), the tail rule: it cuts
  the run being read that would end last (by its own rate) where the owner and the new
  request (which first waits a measured first-byte time) end together, down to
  ``tail_piece_bytes`` (64 KiB) and only where the new run reads for ``TAIL_PAYS`` first-byte
  waits or more, so a cut never costs more than it saves; the owner stops at the new boundary (checked under
  the file's lock before each write, so no byte is written by both), and only what was in
  flight past it crossed the link for nothing; a file's own thread waits for every run of
  its file, those another file's connection took included, before it closes the file;
- a waiting file never holds a socket: the first 200's slot is released once its run ends;
- a host that answers a piece request with 429 or 503 while another piece of the same file
  is in flight refuses parallel ranges: the file restarts over one connection
  (:class:`~torchdepot.fetch.pool.Fallback`) and no later file from that host is split;
- each run is written at its own offset (``pwrite`` into a sparse file); each block is
  done once all its bytes are there (counted per block, whichever runs wrote them: a tail
  cut may fall inside a block) and listed in the sidecar by the next write (outside the
  file's lock, at most every ``SIDECAR_SECONDS`` and when the file fails), so a killed run
  resumes with the unfinished blocks and those done since that write only; a cut run
  retries from the byte it reached;
- a sidecar is reused only for the same size, block size and an unchanged file on disk;
- a server that ignores Range (200 to a piece request), a wrong ``Content-Range``, or a
  file that changes during the download (ETag, Last-Modified or size differ between
  responses or from the sidecar) raises :class:`~torchdepot.fetch.pool.Fallback`: the
  caller drops the pieces and restarts over one connection;
- the first piece to fail for good stops the others at their next chunk; the error
  raised is the most telling one (fallback, then integrity, then fatal);
- the file is hashed once, in order, while its pieces arrive: whichever connection records
  a block hashes the finished prefix from there (read back from the page cache), and what
  is left when the last piece ends is hashed then, so the digest never waits for a second
  pass over the whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from torchdepot.errors import IntegrityError
from torchdepot.fetch.bounds import RateMeter
from torchdepot.fetch.items import FetchItem
from torchdepot.fetch.pieces import (
    PieceState,
    Validators,
    block_count,
    drop_partial,
    load_state,
    plan_runs,
    save_state,
    save_text,
)
from torchdepot.fetch.pool import CHUNK, READ_ERRORS, Fallback, Fatal, Held, Pool, Retry, keep_alive
from torchdepot.net.http import describe, parse_content_range, range_header

MB = 1_000_000
DEFAULT_PIECE_BYTES = 1 * MB  # the smallest piece (aria2's -k is 1M too)
DEFAULT_SPLIT_BYTES = 2 * DEFAULT_PIECE_BYTES  # no threshold of its own: any file that makes two pieces
# A whole-file 200 (size unknown until it answered) is cut only while this much is left: the
# server keeps sending past the cut until the connection closes, so every cut costs what is in
# flight (on a fast link, socket buffers of a few MB) and is worth it only for a large rest.
DEFAULT_HEAD_STEAL_BYTES = 4 * DEFAULT_PIECE_BYTES
# A run in flight is split only while its owner has at least this long left at its own rate:
# the server sends on past a cut until the owner stops reading there, so a cut costs what is
# in flight (on a fast link, whole socket buffers), and a run that ends soon gains nothing.
MIN_STEAL_SECONDS = 0.2
RATE_SECONDS = MIN_STEAL_SECONDS / 4  # how long a run is read before its rate is judged
HASH_CHUNK = CHUNK  # what the digest reads back at a time (one buffer per file being hashed)
SIDECAR_SECONDS = 0.2  # the resume sidecar is rewritten at most this often while blocks finish
# Near the end (no run left with two blocks' worth, or with MIN_STEAL_SECONDS left), a free
# connection still takes part of the run that would end last, in pieces down to this size,
# when that pays for the request's first-byte wait (:func:`_tail_cut`).
DEFAULT_TAIL_PIECE_BYTES = 64 * 1024
TAIL_GRANULE = 16 * 1024  # tail cuts fall on multiples of this (they need not match the sidecar's blocks)
TAIL_PAYS = 0.25  # a tail cut only when the new run's own reading time is this many first-byte waits or more
FIRST_BYTE_GUESS = 0.05  # seconds from a request to its first body byte, until one is measured
REFUSALS = frozenset({429, 503})  # an extra connection refused: the host wants one stream per file


@dataclass
class _Run:
    """One connection's share of a file: bytes ``[pos, end)`` still to write. ``end`` only
    shrinks (a free connection took the second half), under the file's lock."""

    index: int
    first: int
    pos: int
    end: int
    unbounded: bool = False  # a 200 for the whole file: the server sends on past any cut
    since: float | None = None  # when its current request began reading (None: none in flight)
    base: int = 0  # pos then


class _InOrderDigest:
    """sha256 of a file whose blocks finish out of order: the run that writes right at the end
    of the hashed prefix hashes its bytes from memory as they arrive (:meth:`take`); past a
    gap, it follows the prefix of finished blocks (read back from the page cache into one
    reused buffer) once the gap is filled. One thread hashes at a time, the others go on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hasher = hashlib.sha256()
        self.pos = 0  # bytes hashed so far
        self.buf: bytearray | None = None  # read back into this one buffer (no allocation per read)

    def take(self, data: bytes | memoryview, pos: int) -> None:
        """Hash ``data``, the bytes at ``pos`` just written, from memory when they continue
        the hashed prefix and no other thread is hashing (else a later :meth:`follow` reads
        them back)."""
        if self.pos != pos or not self.lock.acquire(blocking=False):
            return
        try:
            if self.pos == pos:
                self.hasher.update(data)
                self.pos += len(data)
        finally:
            self.lock.release()

    def follow(self, seg: _Segmented, wait: bool = False) -> None:
        """Hash the finished blocks from :attr:`pos` on; ``wait``: even if another thread is
        at it (the last call, once every piece has ended)."""
        if not self.lock.acquire(blocking=wait):
            return  # another thread is hashing; a later record (or the last call) goes on
        try:
            while True:
                with seg.lock:
                    upto = self.pos
                    while upto < seg.size and upto // seg.block in seg.state.done:
                        upto = min((upto // seg.block + 1) * seg.block, seg.size)  # (pos may be inside a block)
                if upto == self.pos:
                    return
                if self.buf is None:
                    self.buf = bytearray(HASH_CHUNK)
                view = memoryview(self.buf)
                while self.pos < upto:
                    n = os.preadv(seg.fd, [view[:min(HASH_CHUNK, upto - self.pos)]], self.pos)
                    if not n:  # the file is shorter than its recorded blocks: the check fails later
                        return
                    self.hasher.update(view[:n])
                    self.pos += n
        finally:
            self.lock.release()


@dataclass
class _Segmented:
    """One file's piece download in flight (shared by its piece tasks)."""

    item: FetchItem
    url: str
    part: Path
    fd: int
    size: int
    block: int
    state: PieceState
    started: float
    meter: RateMeter
    runs: list[_Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: threading.Event = field(default_factory=threading.Event)
    fetched: int = 0
    requests: int = 0
    steals: int = 0
    active: int = 0  # piece requests holding a connection now
    tail_steals: int = 0  # cuts below a block (near the end)
    # bytes written so far of each block not yet recorded: a block is done once all its bytes
    # are, whichever runs wrote them (a tail cut may fall inside a block)
    filled: dict[int, int] = field(default_factory=dict)
    saved_at: float = 0.0  # when the sidecar was last written
    dirty: bool = False  # blocks done since then
    save_lock: threading.Lock = field(default_factory=threading.Lock)
    digest: _InOrderDigest = field(default_factory=_InOrderDigest)
    # the piece tasks of this file, a connection lent by another file's included; closed
    # (under ``lock``) once the file's own thread has waited for them all: no more are added
    futures: list[Future] = field(default_factory=list)
    closed: bool = False

    def add_run(self, first: int, end: int, unbounded: bool = False) -> _Run:
        run = _Run(index=len(self.runs), first=first, pos=first, end=end, unbounded=unbounded)
        self.runs.append(run)
        return run


class _InFlight:
    """The files whose pieces are in flight (to lend a free connection to another file)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.segs: list[_Segmented] = []

    def add(self, seg: _Segmented) -> None:
        with self.lock:
            self.segs.append(seg)

    def remove(self, seg: _Segmented) -> None:
        with self.lock:
            self.segs = [s for s in self.segs if s is not seg]

    def others(self, seg: _Segmented | None) -> list[_Segmented]:
        with self.lock:
            return [s for s in self.segs if s is not seg]


class _FirstByte:
    """How long a range request waits for its first body byte (a moving average of the last
    few): what a tail cut must pay for (:func:`_tail_cut`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: float | None = None

    def add(self, seconds: float) -> None:
        with self.lock:
            self.value = seconds if self.value is None else 0.75 * self.value + 0.25 * seconds

    def get(self) -> float:
        with self.lock:
            return FIRST_BYTE_GUESS if self.value is None else self.value


class _Backlog:
    """Piece tasks submitted but not started: work that waits for a connection."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n


@dataclass(frozen=True)
class Segmenter:
    """Fetches files as pieces; ``executor`` runs the piece tasks (never the file tasks)."""

    pool: Pool
    executor: ThreadPoolExecutor
    split_bytes: int
    piece_bytes: int
    connections_per_host: int
    attempts: int
    head_steal_bytes: int = DEFAULT_HEAD_STEAL_BYTES
    tail_piece_bytes: int = DEFAULT_TAIL_PIECE_BYTES  # >= piece_bytes: no cut below a block
    refused: set[str] = field(default_factory=set)  # hosts that refused parallel ranges this run
    backlog: _Backlog = field(default_factory=_Backlog)
    in_flight: _InFlight = field(default_factory=_InFlight)
    first_byte: _FirstByte = field(default_factory=_FirstByte)

    def worth_splitting(self, size: int, url: str = "") -> bool:
        return (size >= self.split_bytes and self.connections_per_host > 1
                and urllib.parse.urlsplit(url).netloc not in self.refused)

    def fetch(self, item: FetchItem, url: str, part: Path, started: float, meter: RateMeter, *,
              size: int | None = None, first: requests.Response | None = None,
              slot: Held | None = None) -> tuple[int, bool, int, str | None]:
        """Fetch ``item`` (``size`` bytes) as pieces over several connections into ``part``.

        ``first``: an open 200 for the whole file (its ``slot`` held by the caller) that
        owns the whole file until free connections take the second halves of what is left.
        Returns (bytes received, resumed?, requests, sha256 of the ``size`` bytes on disk, or
        None where they are not all there to hash). Raises :class:`Fallback` when ranges
        are not usable or the file changed, :class:`Fatal` when a piece gives up (the
        finished blocks stay recorded for the next run).
        """
        size = item.size if size is None else size
        assert size is not None
        count = block_count(size, self.piece_bytes)
        state, resumed = self._state(part, size, count, first)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)  # sparse: every piece writes at its own offset
            if not resumed:
                save_state(part, state)
            seg = _Segmented(item=item, url=url, part=part, fd=fd, size=size, block=self.piece_bytes,
                             state=state, started=started, meter=meter)
            # as many runs as the host has connections free now (at least one, plus the open
            # 200's own): a file that would wait for busy connections starts as one run and
            # is split later by the connections that free up (aria2's rule), so no request
            # is spent cutting it while other files still wait
            # (runs submitted but not yet asking for a connection are not idle ones)
            spare = max(0, self.pool.slots.idle(url) - self.backlog.count) + (first is not None)
            want = max(1, min(self.connections_per_host, count - len(state.done), spare))
            if first is not None:  # the open response owns the file; the others take halves of it
                head: _Run | None = seg.add_run(0, size, unbounded=True)
                todo: list[_Run] = []
            else:
                head = None
                todo = [seg.add_run(a, b) for a, b in plan_runs(size, self.piece_bytes, state.done, want, stagger=True)]
            stealers = max(0, want - len(todo) - (head is not None))
            self.backlog.add(len(todo) + stealers)
            seg.futures += [self.executor.submit(self._work, seg, r, True) for r in todo]
            seg.futures += [self.executor.submit(self._work, seg, None, True) for _ in range(stealers)]
            errors: list[BaseException] = []
            self.in_flight.add(seg)
            try:
                if head is not None and first is not None:
                    self._stream_head(seg, head, first, slot, errors)
                self._wait(seg, errors)
            finally:
                self.in_flight.remove(seg)
            if errors:
                self._save(seg, force=True)  # every block done so far, for the next run to resume
            _raise_first(errors)
            seg.digest.follow(seg, wait=True)  # what the pieces left unhashed (often nothing)
            digest = seg.digest.hasher.hexdigest() if seg.digest.pos == size else None
        finally:
            os.close(fd)
        return seg.fetched, resumed, seg.requests, digest

    def _state(self, part: Path, size: int, count: int,
               first: requests.Response | None) -> tuple[PieceState, bool]:
        """The sidecar's state when it describes this file and layout (resumed), else a fresh
        one (the partial dropped), named by ``first``'s validators when there is one."""
        state = load_state(part)
        try:
            on_disk = part.stat().st_size
        except FileNotFoundError:
            on_disk = -1
        if (first is None and state is not None and state.validators.size == size and state.count == count
                and state.piece_bytes == self.piece_bytes and on_disk == size):
            return state, bool(state.done)
        drop_partial(part)
        known = Validators(size=size) if first is None else Validators.from_headers(size, first.headers)
        return PieceState(known, self.piece_bytes, count), False

    def _wait(self, seg: _Segmented, errors: list[BaseException]) -> None:
        """Wait for every piece task of ``seg``, those added while waiting included (a head's
        retry, a connection lent by another file), then close it to new ones: once this
        returns, no thread writes into its file."""
        i = 0
        while True:
            with seg.lock:
                if i == len(seg.futures):
                    seg.closed = True
                    return
                fut = seg.futures[i]
            i += 1
            try:
                fut.result()
            except BaseException as exc:  # collected; the first real cause wins
                errors.append(exc)
                seg.abort.set()  # (already set by the failing piece; a lent one stops too)

    def _stream_head(self, seg: _Segmented, head: _Run, first: requests.Response, slot: Held | None,
                     errors: list[BaseException]) -> None:
        """Read the head run from the whole-file response ``first``, then let it go and, as
        a free connection, take the second halves of the others' runs."""
        go_on = False
        try:
            with _connected(seg), _reading(seg, head):
                self._read_run(seg, head, first, seg.size)
            go_on = True
        except Retry:  # cut short: the rest of its run is fetched as an ordinary piece
            self.backlog.add(1)
            with seg.lock:
                seg.futures.append(self.executor.submit(self._work, seg, head, True))
        except BaseException as exc:
            seg.abort.set()
            errors.append(exc)
        finally:
            first.close()  # what it sent past the head's end belongs to the other runs
            if slot is not None:
                slot.release()  # never wait for the pieces while holding a socket slot
        if go_on and (run := self._next(seg)) is not None:
            try:
                self._work(seg, run, False)
            except BaseException as exc:
                errors.append(exc)

    def _free(self, url: str | None) -> bool:
        """Whether a connection that just finished (holding no slot now) may stay with the file
        at ``url``: no whole file or piece waits for a connection (aria2's rule: a free
        connection takes the second half of the largest remaining piece only when no new work
        waits), neither blocked on a cap nor submitted and not started yet, unless the host
        has a slot free for each of those besides this one (a sibling run whose thread has
        not started yet does not need this connection)."""
        if self.pool.slots.waiting:
            return False
        return self.backlog.count < (self.pool.slots.idle(url) if url is not None else 1)

    def _next(self, seg: _Segmented) -> _Run | None:
        """What a connection free after a run of ``seg`` does next: the second half of the
        largest run of ``seg`` (aria2's rule), else of another file (handed to that file's
        tasks: None here), else a tail cut anywhere (:meth:`_lend`); while the runs that
        could be split are too young for their rate to tell, it waits for them a little."""
        give_up = time.monotonic() + 4 * RATE_SECONDS
        while True:
            if seg.abort.is_set() or not self._free(seg.url):
                return None
            with seg.lock:
                run = _steal(seg, self.piece_bytes, self.head_steal_bytes)
            if run is not None:
                return run
            wait = _rate_wait([seg], self.piece_bytes, self.head_steal_bytes)
            if not wait:  # nothing in this file for aria2's rule, now or soon
                run, handed = self._lend(seg)
                if run is not None or handed:
                    return run
                wait = self._tail_wait(seg)
            if not wait or time.monotonic() + wait > give_up:
                return None
            time.sleep(max(wait, 0.005))  # (holding no socket) until the young runs' rates tell

    def _tail_wait(self, seg: _Segmented) -> float:
        """The longest a free connection waits for the rate of a run of ``seg`` being read
        that the tail rule might cut (0: none is too young to judge, or the rule is off).
        Only its own file's: a file's thread waits for all of its piece tasks, so one that
        waited for another file's young runs would hold back its own file's end."""
        if self.tail_piece_bytes >= self.piece_bytes:
            return 0.0
        return _rate_wait([seg], self.tail_piece_bytes, 0)  # its runs with two tail pieces' worth left

    def _work(self, seg: _Segmented, run: _Run | None, queued: bool) -> None:
        """Fetch ``run`` (or a stolen half when None), then keep stealing while free."""
        if queued:
            self.backlog.add(-1)
        if run is None:
            with seg.lock:
                run = _steal(seg, self.piece_bytes, self.head_steal_bytes)
            if run is None:
                run = self._next(seg)
        while run is not None:
            self._piece(seg, run)
            run = self._next(seg)

    def lend(self) -> None:
        """A connection just freed by a one-stream file: when no other work waits, it takes
        the second half of the largest run in flight (see :meth:`_lend`)."""
        self._lend(None)

    def _save(self, seg: _Segmented, force: bool = False) -> None:
        """Write the sidecar with the blocks done so far, outside ``seg.lock`` (a write is a
        file and a rename: the other runs of the file go on meanwhile), at most every
        :data:`SIDECAR_SECONDS` unless ``force`` (a failed file, whose blocks the next run
        resumes). One writer at a time; a write skipped because another is under way is
        covered by the next one; blocks a write skipped are written by the first chunk any
        run of the file reads after the interval. It lists only blocks already written, so a
        killed process re-fetches at most what arrived since the last write."""
        if not force and (not seg.dirty or time.monotonic() - seg.saved_at < SIDECAR_SECONDS):
            return
        if not seg.save_lock.acquire(blocking=force):
            return
        try:
            with seg.lock:
                seg.saved_at, seg.dirty = time.monotonic(), False
                text = seg.state.to_json()
            save_text(seg.part, text)
        finally:
            seg.save_lock.release()

    def _lend(self, seg: _Segmented | None) -> tuple[_Run | None, bool]:
        """aria2's rule across files: a connection free after ``seg`` has nothing left to
        split takes the second half of the largest run of another file in flight (a new
        piece task of that file, which waits for it), rather than sit idle; when no run
        anywhere is worth that, the tail rule (:func:`_tail_cut`) on the run that would end
        last, of any file. Returns (the new run when it is ``seg``'s, for this thread to
        fetch; whether one was handed to another file)."""
        if (seg is not None and seg.abort.is_set()) or not self._free(None if seg is None else seg.url):
            return None, False
        block, head_min = self.piece_bytes, self.head_steal_bytes
        found = self._cut_best(seg, self.in_flight.others(seg), lambda o: _stealable(o, block, head_min),
                               lambda o: _steal(o, block, head_min))
        return found if found is not None else self._tail(seg)

    def _tail(self, seg: _Segmented | None) -> tuple[_Run | None, bool]:
        """Under no lock: the tail rule over every file in flight (see :meth:`_lend`)."""
        if self.tail_piece_bytes >= self.piece_bytes:
            return None, False
        wait, now = self.first_byte.get(), time.monotonic()
        floor, head_min = self.tail_piece_bytes, self.head_steal_bytes

        def measure(other: _Segmented) -> float | None:
            found = _tail_cut(other, now, wait, floor, head_min)
            return None if found is None else found[0]

        found = self._cut_best(seg, self.in_flight.others(None), measure,
                               lambda o: _tail_steal(o, now, wait, floor, head_min))
        return (None, False) if found is None else found

    def _cut_best(self, seg: _Segmented | None, others: list[_Segmented],
                  measure: Callable[[_Segmented], float | None], cut: Callable[[_Segmented], _Run | None],
                  ) -> tuple[_Run | None, bool] | None:
        """Under no lock: the file of ``others`` that ``measure`` (under its lock; 0 or None:
        nothing to cut) rates highest, cut by ``cut`` under its lock again (its runs moved
        meanwhile; it may have closed). The new run is this thread's when the file is ``seg``,
        else a new piece task of that file, which its file thread waits for. Returns (the run
        for this thread, whether one was handed to another file); None: no file rated."""
        best: tuple[float, _Segmented] | None = None
        for other in others:
            with other.lock:
                score = measure(other)
            if score and (best is None or score > best[0]):
                best = (score, other)
        if best is None:
            return None
        other = best[1]
        with other.lock:
            run = None if other.closed or other.abort.is_set() else cut(other)
            if run is None:
                return None, False
            if other is seg:
                return run, False
            self.backlog.add(1)
            other.futures.append(self.executor.submit(self._work, other, run, True))
            return None, True

    def _piece(self, seg: _Segmented, run: _Run) -> None:
        """Fetch one run to its (possibly moving) end, retrying from where it stopped."""
        retry_after: float | None = None
        last = ""
        for attempt in range(self.attempts):
            if seg.abort.is_set():
                raise Fatal("aborted")
            with seg.lock:
                if run.pos >= run.end:
                    return
            try:
                self.pool.check_time(seg.started, seg.meter, seg.url)
                if attempt:
                    self.pool.backoff(attempt, retry_after, seg.started)
                    retry_after = None
                self._piece_request(seg, run)
                return
            except Retry as exc:
                last, retry_after = str(exc), exc.retry_after
            except BaseException:
                seg.abort.set()  # the others stop at their next chunk
                raise
        seg.abort.set()
        raise Fatal(last or f"{seg.url}: piece {run.index} failed after {self.attempts} attempts")

    def _piece_request(self, seg: _Segmented, run: _Run) -> None:
        """One range request for the rest of ``run``; returns once it reached its end."""
        url = seg.url
        with self.pool.hold(url), _connected(seg):
            if seg.abort.is_set():
                raise Fatal("aborted")
            with seg.lock:  # (asked for from now on: a cut costs what the server sends past it)
                seg.requests += 1
                pos, last = run.pos, run.end - 1
                run.since, run.base = time.monotonic(), pos
            try:
                if pos <= last:
                    self._range_request(seg, run, pos, last)
            finally:
                with seg.lock:
                    run.since = None

    def _range_request(self, seg: _Segmented, run: _Run, pos: int, last: int) -> None:
        """Ask for bytes ``pos``-``last`` of ``run`` and read them (see :meth:`_piece_request`)."""
        url = seg.url
        asked = time.monotonic()
        try:
            resp = self.pool.open(url, {"Accept-Encoding": "identity", "Range": range_header(pos, last)},
                                  seg.started)
        except Retry as exc:
            with seg.lock:
                parallel = seg.active > 1
            if exc.status in REFUSALS and parallel:  # refused as an extra connection: one stream
                self.refused.add(urllib.parse.urlsplit(url).netloc)
                raise Fallback(f"{url}: server refuses parallel ranges ({exc})") from None
            raise
        with contextlib.closing(resp):
            if resp.status_code == 200:
                raise Fallback(f"{url}: server ignores Range (200 to a piece request)")
            if resp.status_code != 206:
                raise Fatal(f"{url}: HTTP {resp.status_code}")
            cr = parse_content_range(resp.headers.get("Content-Range"))
            if cr is None or cr.total is None or cr.first != pos:
                raise Fallback(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                               f"for bytes {pos}-{last}")
            _same_version(seg, Validators.from_headers(cr.total, resp.headers))
            self._read_run(seg, run, resp, min(last, cr.last) + 1, asked)
            with seg.lock:
                whole = run.end - 1 == last == cr.last  # nobody took a part: body read exactly
            if whole:
                keep_alive(resp)  # the socket goes back to the pool

    def _read_run(self, seg: _Segmented, run: _Run, resp: requests.Response, stop: int,
                  asked: float | None = None) -> None:
        """Write ``resp``'s bytes at ``run.pos`` until the run's end (it may move closer) or
        ``stop`` (``asked``: when the request went out, to time its first byte); raises :class:`Retry` when the connection fails or ends short (the bytes so
        far stay written and recorded by whole blocks)."""
        raw, fd = resp.raw, seg.fd
        with seg.lock:
            want = min(run.end, stop) - run.pos
            pos = run.pos
        while want > 0:
            if seg.abort.is_set():
                raise Fatal("aborted")
            try:
                chunk = raw.read1(min(CHUNK, want))
            except READ_ERRORS as exc:
                raise Retry(f"{seg.url}: {describe(exc)} at byte {pos} of piece {run.index}") from None
            if not chunk:
                break
            if asked is not None:
                self.first_byte.add(time.monotonic() - asked)
                asked = None
            with seg.lock:
                # the end may have moved while this chunk was read: what lies past it is another
                # run's; claiming the bytes here (pos) is what a steal splits after
                n = min(len(chunk), max(0, run.end - pos))
                run.pos = pos + n
                seg.fetched += n
            if n:
                data = chunk if n == len(chunk) else memoryview(chunk)[:n]
                os.pwrite(fd, data, pos)  # outside the lock: only this thread writes these bytes
                if seg.digest.pos == pos:  # right at the hashed prefix: hash it now, from memory
                    seg.digest.take(data, pos)
            with seg.lock:  # the bytes are on disk: record them, and see what is left to read
                grew = n > 0 and _record(seg, pos, pos + n)
                pos = run.pos
                want = min(run.end, stop) - pos
            if seg.dirty:
                self._save(seg)
            if grew:
                seg.digest.follow(seg)
            if n:
                self.pool.advance(n)
                seg.meter.add(n, time.monotonic())
            self.pool.check_time(seg.started, seg.meter, seg.url)
        with seg.lock:
            short = run.pos < run.end
            at = run.pos
        if short:
            raise Retry(f"{seg.url}: piece {run.index} ended at byte {at}, before {run.end}")


def _live(seg: _Segmented, block: int, head_min: int) -> list[_Run]:
    """Under ``seg.lock``: the runs worth splitting: two blocks' worth left (``head_min`` for
    a whole-file 200, whose server sends on past the cut), and, for one being read, at least
    :data:`MIN_STEAL_SECONDS` left at the rate it has been read so far."""
    now = time.monotonic()
    return [r for r in seg.runs
            if r.end - r.pos >= max(2 * block, head_min if r.unbounded else 0) and _slow(r, now) is True]


def _slow(run: _Run, now: float) -> bool | float:
    """Whether ``run`` has :data:`MIN_STEAL_SECONDS` left at its rate; while that rate is not
    known yet (a first burst says nothing of it), the seconds until it is."""
    if run.since is None:
        return True  # not being read: nothing in flight to lose
    got, took = run.pos - run.base, now - run.since
    if took < RATE_SECONDS:
        return RATE_SECONDS - took
    return (run.end - run.pos) * took >= MIN_STEAL_SECONDS * got


def _rate_wait(segs: list[_Segmented], block: int, head_min: int) -> float:
    """The longest a free connection waits for the rate of a run large enough to split
    (0: none is too young to judge)."""
    now, wait = time.monotonic(), 0.0
    for seg in segs:
        with seg.lock:
            for r in seg.runs:
                if r.end - r.pos >= max(2 * block, head_min if r.unbounded else 0):
                    left = _slow(r, now)
                    if left is not True and left is not False:
                        wait = max(wait, left)
    return wait


@contextlib.contextmanager
def _reading(seg: _Segmented, run: _Run) -> Iterator[None]:
    """Note when ``run``'s response began and from where (its rate for :func:`_slow`), until it ends."""
    with seg.lock:
        run.since, run.base = time.monotonic(), run.pos
    try:
        yield
    finally:
        with seg.lock:
            run.since = None


def _stealable(seg: _Segmented, block: int, head_min: int) -> int:
    """Under ``seg.lock``: the bytes left in the run :func:`_steal` would split (0: none)."""
    return max((r.end - r.pos for r in _live(seg, block, head_min)), default=0)


def _steal(seg: _Segmented, block: int, head_min: int = DEFAULT_HEAD_STEAL_BYTES) -> _Run | None:
    """aria2's rule, under ``seg.lock``: split the run with the most bytes left at a block
    boundary near the middle of what it has left; its owner stops there, and the second
    half is a new run. None when no run has two blocks' worth left (``head_min`` for a
    whole-file 200, whose server sends on past the cut)."""
    live = _live(seg, block, head_min)
    if not live:
        return None
    big = max(live, key=lambda r: r.end - r.pos)
    mid = -(-(big.pos + (big.end - big.pos) // 2) // block) * block
    if not big.pos < mid < big.end:
        return None
    end, big.end = big.end, mid
    seg.steals += 1
    return seg.add_run(mid, end)


def _tail_cut(seg: _Segmented, now: float, wait: float, floor: int,
              head_min: int) -> tuple[float, _Run, int] | None:
    """Under ``seg.lock``, the tail rule: the run being read that would end last, (its
    seconds left at its own rate, the run, where to cut it). The cut leaves the owner ``x``
    of its ``left`` bytes and a new request the rest, which waits ``wait`` s for its first
    byte and then reads at the owner's rate ``r``: both end together at ``x = (left + wait
    r) / 2``. It pays only where the new run's reading time is :data:`TAIL_PAYS` first-byte
    waits or more (so a run with under ``(1 + 2 TAIL_PAYS) wait`` s left is never cut), and
    the new run is at least ``floor`` bytes. A run whose rate is not known yet is skipped:
    the tail's runs have been read for a while."""
    best: tuple[float, _Run, int] | None = None
    for r in seg.runs:
        if r.since is None or (r.unbounded and r.end - r.pos < head_min):
            continue
        got, took = r.pos - r.base, now - r.since
        if took < RATE_SECONDS or got <= 0:
            continue
        rate = got / took
        left = r.end - r.pos
        share = (left - wait * rate) / 2  # what the new request reads
        if share < max(floor, TAIL_PAYS * wait * rate):
            continue
        cut = -(-(r.end - int(share)) // TAIL_GRANULE) * TAIL_GRANULE
        if not r.pos < cut <= r.end - floor:
            continue
        if best is None or left / rate > best[0]:
            best = (left / rate, r, cut)
    return best


def _tail_steal(seg: _Segmented, now: float, wait: float, floor: int, head_min: int) -> _Run | None:
    """The tail rule's cut, under ``seg.lock``: the run :func:`_tail_cut` picks stops at its
    cut, and the rest is a new run (None: no run to cut)."""
    found = _tail_cut(seg, now, wait, floor, head_min)
    if found is None:
        return None
    _, owner, cut = found
    end, owner.end = owner.end, cut
    seg.steals += 1
    seg.tail_steals += 1
    return seg.add_run(cut, end)


def _record(seg: _Segmented, first: int, end: int) -> bool:
    """Under ``seg.lock``: note bytes ``[first, end)`` written (by this thread, just now) and
    mark done each block whose every byte now is (the sidecar follows: :meth:`Segmenter._save`);
    True when one was."""
    grew = False
    b = first // seg.block
    while b * seg.block < end:
        lo, hi = b * seg.block, min((b + 1) * seg.block, seg.size)
        got = seg.filled.get(b, 0) + min(hi, end) - max(lo, first)
        if got >= hi - lo:
            seg.filled.pop(b, None)
            seg.state.done.add(b)
            grew = seg.dirty = True
        else:
            seg.filled[b] = got
        b += 1
    return grew


@contextlib.contextmanager
def _connected(seg: _Segmented) -> Iterator[None]:
    """Count a request of ``seg`` as in flight for the duration (the parallel-range refusal rule)."""
    with seg.lock:
        seg.active += 1
    try:
        yield
    finally:
        with seg.lock:
            seg.active -= 1


def _same_version(seg: _Segmented, seen: Validators) -> None:
    """Raise :class:`Fallback` when ``seen`` names another version than the pieces so far;
    the first answer with an ETag or Last-Modified names the version."""
    with seg.lock:
        why = seg.state.validators.conflicts(seen)
        if why is None and (seg.state.validators.etag, seg.state.validators.last_modified) == (None, None):
            seg.state.validators = seen
    if why is not None:
        raise Fallback(f"{seg.url}: file changed during the download ({why})")


def _raise_first(errors: list[BaseException]) -> None:
    """Raise the most telling of the pieces' errors, if any."""
    if not errors:
        return
    for kind in (Fallback, IntegrityError, Fatal):
        found = next((e for e in errors if isinstance(e, kind)), None)
        if found is not None:
            raise found
    raise errors[0]
