"""One large file fetched as byte-range pieces over several connections into its partial
file (the layout and the resume sidecar are :mod:`torchdepot.fetch.pieces`).

Invariants:
- there is no size threshold beyond the smallest piece: a file large enough for two pieces
  (``split_bytes``, by default twice ``piece_bytes``, about 1 MB) is split when more than
  one connection per host is allowed and its host has not refused parallel ranges; the
  pieces of every file share one queue of connections, so a free connection always takes
  the next piece and a large file's tail is one piece, not the whole file; its size comes
  from the index, else from its first 200's Content-Length, and that response then streams
  the first piece (its slot released before the file waits for the other pieces, so a
  waiting file never holds a socket);
- a host that answers a piece request with 429 or 503 while another piece of the same file
  is in flight refuses parallel ranges: the file restarts over one connection
  (:class:`~torchdepot.fetch.pool.Fallback`) and no later file from that host is split;
- each piece is written at its own offset (``pwrite`` into a sparse file) and recorded in
  the sidecar only once all its bytes are there, so a killed run resumes with the
  unfinished pieces only; a cut piece retries from the byte it reached;
- a sidecar is reused only for the same size, piece layout and an unchanged file on disk;
- a server that ignores Range (200 to a piece request), a wrong ``Content-Range``, or a
  file that changes during the download (ETag, Last-Modified or size differ between
  responses or from the sidecar) raises :class:`~torchdepot.fetch.pool.Fallback`: the
  caller drops the pieces and restarts over one connection;
- the first piece to fail for good stops the others at their next chunk; the error
  raised is the most telling one (fallback, then integrity, then fatal).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from torchdepot.errors import IntegrityError
from torchdepot.fetch.bounds import RateMeter
from torchdepot.fetch.items import FetchItem
from torchdepot.fetch.pieces import (
    Piece,
    PieceState,
    Validators,
    drop_partial,
    load_state,
    plan_pieces,
    save_state,
)
from torchdepot.fetch.pool import CHUNK, READ_ERRORS, Fallback, Fatal, Held, Pool, Retry, keep_alive
from torchdepot.net.http import describe, parse_content_range, range_header

MB = 1_000_000
DEFAULT_PIECE_BYTES = 1 * MB  # the smallest piece (aria2's -k is 1M too)
DEFAULT_SPLIT_BYTES = 2 * DEFAULT_PIECE_BYTES  # no threshold of its own: any file that makes two pieces
REFUSALS = frozenset({429, 503})  # an extra connection refused: the host wants one stream per file


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
    active: int = 0  # piece requests holding a connection now
    reached: dict[int, int] = field(default_factory=dict)  # piece -> next offset to write


@dataclass(frozen=True)
class Segmenter:
    """Fetches files as pieces; ``executor`` runs the piece tasks (never the file tasks)."""

    pool: Pool
    executor: ThreadPoolExecutor
    split_bytes: int
    piece_bytes: int
    connections_per_host: int
    attempts: int
    refused: set[str] = field(default_factory=set)  # hosts that refused parallel ranges this run

    def worth_splitting(self, size: int, url: str = "") -> bool:
        return (size >= self.split_bytes and self.connections_per_host > 1
                and urllib.parse.urlsplit(url).netloc not in self.refused)

    def fetch(self, item: FetchItem, url: str, part: Path, started: float, meter: RateMeter, *,
              size: int | None = None, first: requests.Response | None = None,
              slot: Held | None = None) -> tuple[int, bool, int]:
        """Fetch ``item`` (``size`` bytes) as pieces over several connections into ``part``.

        ``first``: an open 200 for the whole file (its ``slot`` held by the caller) that
        streams the first piece before it is closed and the slot released.
        Returns (bytes received, resumed?, requests). Raises :class:`Fallback` when ranges
        are not usable or the file changed, :class:`Fatal` when a piece gives up (the
        finished pieces stay recorded for the next run).
        """
        size = item.size if size is None else size
        assert size is not None
        pieces = plan_pieces(size, self.piece_bytes, self.connections_per_host)
        state, resumed = self._state(part, size, len(pieces), first)
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, size)  # sparse: every piece writes at its own offset
            if not resumed:
                save_state(part, state)
            seg = _Segmented(item=item, url=url, part=part, fd=fd, pieces=pieces, state=state,
                             started=started, meter=meter)
            todo = [p for p in pieces if p.index not in state.done]
            head = todo.pop(0) if first is not None else None
            futures = [self.executor.submit(self._piece, seg, p) for p in todo]
            errors: list[BaseException] = []
            if head is not None and first is not None:
                self._stream_head(seg, head, first, slot, futures, errors)
            for fut in futures:
                try:
                    fut.result()
                except BaseException as exc:  # collected; the first real cause wins below
                    errors.append(exc)
            _raise_first(errors)
        finally:
            os.close(fd)
        return seg.fetched, resumed, seg.requests

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

    def _stream_head(self, seg: _Segmented, head: Piece, first: requests.Response, slot: Held | None,
                     futures: list[Future], errors: list[BaseException]) -> None:
        """Read the first piece from the whole-file response ``first``, then let it go."""
        try:
            with _connected(seg):
                self._read_piece(seg, head, first, head.first, head.length)
            self._piece_done(seg, head)
        except Retry:  # cut short: fetched again as an ordinary piece
            futures.append(self.executor.submit(self._piece, seg, head))
        except BaseException as exc:
            seg.abort.set()
            errors.append(exc)
        finally:
            first.close()  # the rest of its body belongs to the other pieces
            if slot is not None:
                slot.release()  # never wait for the pieces while holding a socket slot

    def _piece(self, seg: _Segmented, piece: Piece) -> None:
        """Fetch one piece (retrying from where it stopped) and record it in the sidecar."""
        retry_after: float | None = None
        last = ""
        for attempt in range(self.attempts):
            if seg.abort.is_set():
                raise Fatal("aborted")
            try:
                self.pool.check_time(seg.started, seg.meter, seg.url)
                if attempt:
                    self.pool.backoff(attempt, retry_after, seg.started)
                    retry_after = None
                with seg.lock:
                    pos = seg.reached.get(piece.index, piece.first)
                self._piece_request(seg, piece, pos)
                break
            except Retry as exc:
                last, retry_after = str(exc), exc.retry_after
            except BaseException:
                seg.abort.set()  # the others stop at their next chunk
                raise
        else:
            seg.abort.set()
            raise Fatal(last or f"{seg.url}: piece {piece.index} failed after {self.attempts} attempts")
        self._piece_done(seg, piece)

    @staticmethod
    def _piece_done(seg: _Segmented, piece: Piece) -> None:
        with seg.lock:
            seg.state.done.add(piece.index)
            save_state(seg.part, seg.state)  # after the bytes: a recorded piece is on disk

    def _piece_request(self, seg: _Segmented, piece: Piece, pos: int) -> int:
        """One range request for ``pos..piece.last``; returns the next offset (past the piece)."""
        url = seg.url
        with self.pool.hold(url), _connected(seg):
            if seg.abort.is_set():
                raise Fatal("aborted")
            with seg.lock:
                seg.requests += 1
            try:
                resp = self.pool.open(url, {"Accept-Encoding": "identity", "Range": range_header(pos, piece.last)},
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
                                   f"for bytes {pos}-{piece.last}")
                _same_version(seg, Validators.from_headers(cr.total, resp.headers))
                pos = self._read_piece(seg, piece, resp, pos, min(piece.last, cr.last) - pos + 1)
                if pos <= piece.last:
                    raise Retry(f"{url}: piece {piece.index} ended at byte {pos}, before {piece.last + 1}")
                if cr.last == piece.last:
                    keep_alive(resp)  # body read exactly: the socket goes back to the pool
                return pos

    def _read_piece(self, seg: _Segmented, piece: Piece, resp: requests.Response, pos: int, want: int) -> int:
        """Write up to ``want`` bytes of ``resp`` at ``pos``; returns the offset reached.
        Raises :class:`Retry` when the connection fails (the bytes so far stay written)."""
        got = 0
        while got < want:
            if seg.abort.is_set():
                raise Fatal("aborted")
            try:
                chunk = resp.raw.read1(min(CHUNK, want - got))
            except READ_ERRORS as exc:
                raise Retry(f"{seg.url}: {describe(exc)} after {got} bytes of piece {piece.index}") from None
            if not chunk:
                break
            os.pwrite(seg.fd, chunk, pos)
            pos += len(chunk)
            got += len(chunk)
            with seg.lock:
                seg.fetched += len(chunk)
                seg.reached[piece.index] = pos  # a retry continues from here
            self.pool.advance(len(chunk))
            seg.meter.add(len(chunk), time.monotonic())
            self.pool.check_time(seg.started, seg.meter, seg.url)
        if got < want:
            raise Retry(f"{seg.url}: piece {piece.index} ended after {got} of {want} bytes")
        return pos


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
