"""The request side of a fetch: capped sockets, one policed GET, and the time bounds every
read is checked against. The single-stream and the piece downloads both go through one
:class:`Pool`, so the caps and bounds hold for all of a run's connections together.

Invariants:
- sockets are capped overall (``connections``) and per host (``connections_per_host``);
  a slot is always taken host first, then total, so two threads cannot deadlock on them;
  each host counts the requests that hold or wait for one of its slots (``idle``: what a
  new file may split itself over);
- every redirect hop is followed by hand and its host checked against the host policy
  before a byte is requested from it;
- one request per hop: the callers' attempt loops do the retrying, so an attempt is
  counted once; a retryable HTTP status is a :class:`Retry` (with its Retry-After), a
  final one (404, 403, 410...) a :class:`Fatal`;
- the read timeout is cut to the time left and to the rate window, so a stalled body
  cannot outlive a bound by more than that; a file under the rate floor, past its
  ``file_timeout`` or past the run's ``deadline`` is a :class:`Fatal` naming why.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import requests
import urllib3

from torchdepot.errors import UpstreamError
from torchdepot.fetch.bounds import RateFloor, RateMeter
from torchdepot.fetch.progress import Progress
from torchdepot.net.http import Client, HttpStatusError

CHUNK = 256 * 1024  # per read: small enough that 32 threads hold little memory
# What a failed read of a response body can raise, below and inside requests.
READ_ERRORS = (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException, OSError)

# Defaults that fit a CDN: it serves each connection a few MB/s and tolerates a handful
# of connections per client host (aria2's -x caps at 16; browsers open 6 per host).
DEFAULT_CONNECTIONS = 32  # sockets open at once, all hosts together
DEFAULT_CONNECTIONS_PER_HOST = 16


class Fatal(Exception):
    """Stop trying this URL (but maybe try the next one)."""


class Retry(Exception):
    """Try this URL again (after ``retry_after`` when the server said so); ``restart``:
    the partial file is unusable and goes first."""

    def __init__(self, reason: str, retry_after: float | None = None, restart: bool = False,
                 status: int | None = None):
        super().__init__(reason)
        self.retry_after = retry_after
        self.restart = restart
        self.status = status  # the HTTP status that asked for the retry (429, 503...), if any


class Fallback(Exception):
    """Stop the pieces: fetch this file over one connection from zero instead."""


class Held:
    """Slots held for one request; :meth:`release` gives them back once."""

    def __init__(self, sems: tuple[threading.BoundedSemaphore, ...],
                 on_release: Callable[[], None] | None = None):
        self.sems = sems
        self.on_release = on_release
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            for sem in self.sems:
                sem.release()
            if self.on_release is not None:
                self.on_release()


class Slots:
    """Connection caps: ``total`` sockets at once, ``per_host`` to any one host."""

    def __init__(self, total: int, per_host: int):
        self.total = threading.BoundedSemaphore(total)
        self.per_host_cap = per_host
        self.hosts: dict[str, threading.BoundedSemaphore] = {}
        self.lock = threading.Lock()
        self.waiting = 0  # requests blocked on a cap now: a free connection goes to them first
        self.busy: dict[str, int] = {}  # per host: requests holding or waiting for a slot

    @contextlib.contextmanager
    def hold(self, url: str):
        """Hold a socket slot for ``url``'s host; ``release()`` on the yielded object gives
        it back early (a file thread must not hold one while it waits for its pieces)."""
        host = urllib.parse.urlsplit(url).netloc
        with self.lock:
            sem = self.hosts.setdefault(host, threading.BoundedSemaphore(self.per_host_cap))
        with self.lock:
            self.busy[host] = self.busy.get(host, 0) + 1
        try:
            self._acquire(sem)  # always host first, then total: no lock-order cycle
            try:
                self._acquire(self.total)
            except BaseException:
                sem.release()
                raise
        except BaseException:
            self._unbusy(host)
            raise
        held = Held((self.total, sem), on_release=lambda: self._unbusy(host))
        try:
            yield held
        finally:
            held.release()

    def _acquire(self, sem: threading.BoundedSemaphore) -> None:
        """Take ``sem``, counted in :attr:`waiting` only while it really blocks: a request that
        gets a free slot at once is not work waiting for a connection, even for an instant."""
        if sem.acquire(blocking=False):
            return
        with self.lock:
            self.waiting += 1
        try:
            sem.acquire()
        finally:
            with self.lock:
                self.waiting -= 1

    def _unbusy(self, host: str) -> None:
        with self.lock:
            self.busy[host] -= 1

    def idle(self, url: str) -> int:
        """Connections to ``url``'s host that no request holds or waits for now."""
        host = urllib.parse.urlsplit(url).netloc
        with self.lock:
            return max(0, self.per_host_cap - self.busy.get(host, 0))


def keep_alive(resp: requests.Response) -> None:
    """Hand a fully read response's connection back to the pool (closing it would drop it)."""
    with contextlib.suppress(Exception):
        resp.raw.release_conn()


@dataclass(frozen=True)
class Pool:
    """One run's connections: the client, the socket caps, the bounds and the progress."""

    client: Client
    slots: Slots
    progress: Progress
    floor: RateFloor
    deadline: float | None  # absolute (monotonic); None: unbounded
    file_timeout: float | None
    allowed_hosts: set[str] | None
    max_redirects: int

    def hold(self, url: str):
        return self.slots.hold(url)

    def advance(self, n: int) -> None:
        self.progress.advance(n)

    def remaining(self, started: float) -> float | None:
        """Seconds left before the per-file or overall timeout (None: unbounded)."""
        now = time.monotonic()
        limits = []
        if self.deadline is not None:
            limits.append(self.deadline - now)
        if self.file_timeout is not None:
            limits.append(started + self.file_timeout - now)
        return min(limits) if limits else None

    def check_time(self, started: float, meter: RateMeter | None = None, url: str = "") -> None:
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise Fatal("overall timeout reached")
        if self.file_timeout is not None and now - started > self.file_timeout:
            raise Fatal(f"per-file timeout of {self.file_timeout:g}s reached")
        if meter is not None:
            got = meter.too_slow(now)
            if got is not None:
                raise Fatal(f"{url}: too slow: {got} bytes in the last {self.floor.window:g} s, under the floor of "
                            f"{self.floor.min_rate:g} B/s; aborted")

    def backoff(self, attempt: int, retry_after: float | None, started: float) -> None:
        """Sleep before retry number ``attempt`` (1, 2, ...), within the time left."""
        self.client.sleep_before_retry(attempt - 1, retry_after, limit=self.remaining(started))

    def _timeout(self, started: float) -> tuple[float, float]:
        connect, read = self.client.timeout
        if self.floor.enabled:
            read = min(read, self.floor.window)
        left = self.remaining(started)
        if left is not None:
            read = min(read, left)
        return connect, max(0.05, read)

    def open(self, url: str, headers: dict, started: float) -> requests.Response:
        """GET following redirects by hand so every hop's host passes the policy."""
        current = url
        timeout = self._timeout(started)
        for _ in range(self.max_redirects + 1):
            host = urllib.parse.urlsplit(current).hostname or ""
            if self.allowed_hosts is not None and host not in self.allowed_hosts:
                raise Fatal(f"{current}: host {host!r} is not allowed by the mirror's host policy")
            try:
                resp = self.client.request("GET", current, headers=headers, stream=True, allow_redirects=False,
                                           retries=0, timeout=timeout)
            except HttpStatusError as exc:
                if exc.retryable:
                    raise Retry(str(exc), exc.retry_after, status=exc.status) from None
                raise Fatal(str(exc)) from None  # 404/403/410...: trying again will not help
            except UpstreamError as exc:
                raise Retry(str(exc)) from None
            if resp.status_code in (301, 302, 303, 307, 308):
                loc = resp.headers.get("Location")
                resp.close()
                if not loc:
                    raise Fatal(f"{current}: redirect without Location")
                current = urllib.parse.urljoin(current, loc)
                continue
            return resp
        raise Fatal(f"{url}: more than {self.max_redirects} redirects")
