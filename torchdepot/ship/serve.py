"""A static file server good enough for a lab (the nginx config for a real one is :mod:`.nginx`).

Serving a mirror is serving static files: HTTP Range (206/416), content types for wheels,
metadata and conda files, ``ETag``/``Last-Modified`` with 304s, ``index.html`` for
directories (no listings), ``immutable`` for wheels under ``packages/`` (a path there never
receives other bytes) and revalidation (``no-cache`` + ETag) for everything else. A request can never leave the root: the path is resolved (symlinks followed)
and must stay under the resolved root, so the mirror's own ``whl -> .publish/<gen>/whl``
link works while a link pointing outside is refused. Hidden names (``.torchdepot``) are
not served.

PEP 691: a directory URL answers with ``index.json`` (``application/vnd.pypi.simple.v1+json``)
when the client's Accept header prefers it (q-values; ties go to JSON, wildcards to HTML),
else ``index.html``; both carry ``Vary: Accept``.

Bounds (:class:`ServeLimits`): a connection holds a worker only while a request is being
answered. Idle keep-alive connections, and connections still sending their request head,
wait in one selector thread that reads heads without blocking: a head not complete within
``header_timeout`` is closed, an idle connection after ``idle_timeout`` and, past
``max_idle``, oldest first. Connections are capped in total (fitted to the descriptor
limit) and per client address. So neither a flood of idle sockets nor connections
dribbling a header byte at a time can hold the workers real clients need. Requests are answered by a fixed pool of ``workers`` threads.
A bad request gets a status (400/404/414/416/431), never a dropped connection, and the
log gets one line, never a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http
import http.server
import io
import os
import posixpath
import queue
import re
import resource
import selectors
import socket
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchdepot.errors import one_line
from torchdepot.store.layout import PACKAGES_DIR
from torchdepot.store.simple_json import HTML_MEDIA_TYPE, HTML_PAGE, JSON_MEDIA_TYPE, JSON_PAGE

CONTENT_TYPES = {
    ".whl": "application/octet-stream",
    ".metadata": "application/octet-stream",
    ".conda": "application/octet-stream",
    ".bz2": "application/x-bzip2",
    ".json": "application/json",
    ".zst": "application/zstd",
    ".html": "text/html; charset=utf-8",
    ".toml": "text/plain; charset=utf-8",
    ".lock": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".yml": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".css": "text/css",
    ".js": "text/javascript",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # may be stored, but revalidated (ETag / If-Modified-Since) before each use
# 18 digits is an exabyte: longer numbers are not a file we hold (and int() of 5,000 digits raises)
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
RANGE_HEADER_MAX = 64
NAME_MAX = 255  # longest path component any filesystem we serve from accepts


@dataclass(frozen=True)
class ServeLimits:
    """How much a client may hold. Defaults suit a lab of a few hundred machines."""

    workers: int = 32  # requests answered at once
    idle_timeout: float = 30.0  # seconds a keep-alive connection may sit idle between requests
    request_timeout: float = 15.0  # seconds a socket read/write may stall inside a request
    max_idle: int = 512  # idle connections kept; beyond this the oldest is closed
    header_timeout: float = 10.0  # seconds from a request head's first byte to its blank line
    max_connections: int = 1024  # connections held at once (lowered to fit the descriptor limit)
    max_per_client: int = 64  # connections one client address may hold at once


def content_type(name: str) -> str:
    if name == JSON_PAGE:
        return JSON_MEDIA_TYPE
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


IMMUTABLE_SUFFIX = ".whl"  # a wheel under packages/: one path, one set of bytes


def cache_control(url_path: str) -> str:
    """The Cache-Control of a file by its URL path: ``immutable`` only for a wheel under
    ``packages/``, whose path never receives other bytes (new bytes get a new path and a
    retired path is never reused, docs/publication.md). Everything else may change: pages,
    the manifest, locks, conda files, ``.metadata`` (rewritten if its extraction changes) and
    ``variants.json`` (narrowed to the labels held), so clients revalidate (ETag)."""
    parts = [p for p in urllib.parse.unquote(urllib.parse.urlsplit(url_path).path).split("/") if p]
    if len(parts) >= 3 and parts[0] == PACKAGES_DIR and parts[-1].endswith(IMMUTABLE_SUFFIX):
        return IMMUTABLE
    return REVALIDATE


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive


def parse_range(header: str, size: int) -> ByteRange | None:
    """One ``bytes=`` range -> ByteRange; None when unsatisfiable or malformed (-> 416).

    Multiple ranges are not supported (pip and fetchers ask for one); they get a 416.
    """
    if len(header) > RANGE_HEADER_MAX:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix range: last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return None
        return ByteRange(max(0, size - n), size - 1)
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return ByteRange(start, min(end, size - 1))


Representation = Literal["json", "html"]
_JSON_TYPES = (JSON_MEDIA_TYPE, "application/vnd.pypi.simple.latest+json")
_HTML_TYPES = (HTML_MEDIA_TYPE, "application/vnd.pypi.simple.latest+html", "text/html", "text/*", "*/*")
ACCEPT_MAX = 4096  # longer Accept headers are read no further (clients send ~100 characters)


def _quality(params: list[str]) -> float:
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip()[:8])
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def negotiate(accept: str | None) -> Representation:
    """PEP 691 content negotiation for an index page: "json" when the client asks for the
    JSON type at least as strongly as for any HTML type (wildcards count as HTML), else "html"."""
    if not accept:
        return "html"
    best = {"json": 0.0, "html": 0.0}
    for item in accept[:ACCEPT_MAX].split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        kind = "json" if media in _JSON_TYPES else "html" if media in _HTML_TYPES else None
        if kind:
            best[kind] = max(best[kind], _quality(params))
    return "json" if best["json"] > 0 and best["json"] >= best["html"] else "html"


class RequestRefused(Exception):
    """A request answered with ``status`` and nothing else (internal to the handler)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


def resolve_under(root: Path, url_path: str) -> Path | None:
    """URL path -> file under ``root`` (resolved), or None if it escapes, names a hidden
    entry or cannot be resolved (a symlink loop). A component longer than any file name
    raises :class:`RequestRefused` (414)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
        raise RequestRefused(414)
    if any(p in ("..", ".") or p.startswith(".") for p in parts):
        return None
    root = root.resolve()
    try:
        target = (root.joinpath(*parts)).resolve()
    except (OSError, RuntimeError, ValueError):  # RuntimeError: pathlib's "Symlink loop"
        return None
    if target != root and root not in target.parents:
        return None
    return target


def etag_of(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    root: Path = Path(".")
    protocol_version = "HTTP/1.1"
    server_version = "torchdepot-serve"
    quiet = False
    timeout = ServeLimits.request_timeout  # per socket read/write inside a request
    _headers_done = False
    _served = ""  # which file answered a directory URL (index.json / index.html), for the log

    def log_message(self, fmt, *args):
        if not self.quiet:
            # one line per event: a hostile request line must not forge extra log lines
            sys.stderr.write(f"{self.address_string()} - - [{self.log_date_time_string()}] "
                             + " ".join((fmt % args).splitlines()) + "\n")

    def log_request(self, code="-", size="-"):
        code = getattr(code, "value", code)
        extra = f" {self._served}" if self._served else ""
        self.log_message('"%s" %s %s%s', self.requestline, str(code), str(size), extra)

    def end_headers(self):
        self._headers_done = True
        super().end_headers()

    def handle_one_request(self):
        """One request; any failure becomes a status (or a closed connection) and one log line."""
        self._headers_done = False
        self._served = ""
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug or an unforeseen input: answer, log one line, go on serving
            self.close_connection = True
            self.log_error("error answering %r: %s: %s", getattr(self, "path", "?"), type(exc).__name__,
                           one_line(exc, 200))
            if not self._headers_done:
                with contextlib.suppress(OSError):
                    self._error(500)

    def do_GET(self):
        self._answer(body=True)

    def do_HEAD(self):
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        try:
            self._serve(body)
        except RequestRefused as exc:
            self._error(exc.status)

    def _error(self, code: int, extra: dict[str, str] | None = None, why: str = "") -> None:
        body = f"{code} {http.HTTPStatus(code).phrase}{': ' + why if why else ''}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, body: bool) -> None:
        target = resolve_under(self.root, self.path)
        if target is None:
            return self._error(404)
        try:
            is_dir = target.is_dir()
        except OSError:
            return self._error(404)
        if is_dir:
            if self._redirect_to_slash():
                return None
            want = negotiate(self.headers.get("Accept"))
            target = target / (JSON_PAGE if want == "json" and (target / JSON_PAGE).is_file() else HTML_PAGE)
            self._served = target.name
            return self._send_file(target, body, {"Vary": "Accept"})
        return self._send_file(target, body)

    def _redirect_to_slash(self) -> bool:
        """A directory URL without its slash: 301 to it (True when sent)."""
        url = urllib.parse.urlsplit(self.path).path
        if url.endswith("/"):
            return False
        self.send_response(301)
        self.send_header("Location", url + "/")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _send_file(self, target: Path, body: bool, negotiated: dict[str, str] | None = None) -> None:
        """Answer with the file at ``target`` (validators, 304, Range), or 404 when it cannot be opened."""
        try:
            fh = open(target, "rb")  # noqa: SIM115 - closed by the with below; only open() errors are a 404
        except OSError:  # missing, a directory, unreadable, a symlink loop, a name too long
            return self._error(404)
        with fh:
            st = os.fstat(fh.fileno())
            etag = etag_of(st)
            last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
            headers = {
                "ETag": etag,
                "Last-Modified": last_modified,
                "Cache-Control": cache_control(self.path),
                "Accept-Ranges": "bytes",
                **(negotiated or {}),
            }
            if self._not_modified(etag, st.st_mtime):
                self.send_response(304)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                return None
            size = st.st_size
            rng_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng_header and if_range and if_range.strip() not in (etag, last_modified):
                rng_header = None  # the client's partial copy is stale: send it all
            if rng_header:
                rng = parse_range(rng_header, size)
                if rng is None:
                    return self._error(416, {"Content-Range": f"bytes */{size}", **headers})
                self.send_response(206)
                headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
                start, length = rng.start, rng.end - rng.start + 1
            else:
                self.send_response(200)
                start, length = 0, size
            self.send_header("Content-Type", content_type(target.name))
            self.send_header("Content-Length", str(length))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if body:
                fh.seek(start)
                _copy(fh, self.wfile, length)
        return None

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or etag in tags or f"W/{etag}" in tags
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return False
            return int(mtime) <= int(since)
        return False


def _copy(src, dst, length: int) -> None:
    left = length
    try:
        while left > 0:
            chunk = src.read(min(left, 1024 * 1024))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # client went away (e.g. pip cancelled): nothing to do


class _PrefixedSocketIO(io.RawIOBase):
    """A socket's byte stream with the bytes the selector thread already read in front."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.prefix = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.prefix:
            n = min(len(buf), len(self.prefix))
            buf[:n] = self.prefix[:n]
            del self.prefix[:n]
            return n
        return self.sock.recv_into(buf)


class _Connection:
    """One client connection and its handler, kept across keep-alive requests.

    Between requests it is parked in the selector thread, which also reads the next
    request's head (non-blocking) until the blank line: a worker only ever gets a
    connection whose request head is complete (or too long to be one, answered 414/431)."""

    def __init__(self, sock: socket.socket, address, server: MirrorServer):
        self.sock = sock
        self.client = address[0] if isinstance(address, tuple) else str(address)
        cls: type[MirrorHandler] = server.RequestHandlerClass  # type: ignore[assignment]
        handler = cls.__new__(cls)
        handler.request, handler.client_address, handler.server = sock, address, server
        handler.setup()  # socket timeout + rfile/wfile, once per connection
        handler.rfile.close()  # setup()'s socket file: its reference would keep the fd open after close
        self.stream = _PrefixedSocketIO(sock)
        self.reader = io.BufferedReader(self.stream, 64 * 1024)
        handler.rfile = self.reader
        self.handler = handler
        self.deadline = 0.0  # when the selector thread gives up on it (idle or head deadline)
        self.parked_at = 0.0  # when it last came back to the selector thread
        self.head_started: float | None = None  # first byte of a request head seen at

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_head(self) -> bool | None:
        """Read what the client sent (without blocking): True when a request head is complete
        (or too long to be one), False to keep waiting, None when the client closed."""
        try:
            data = self.sock.recv(HEAD_READ, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        if not data:
            return None
        self.stream.prefix += data
        head = self.stream.prefix
        # a request head ends at a blank line; an HTTP/0.9 line at its first line end
        return b"\r\n\r\n" in head or b"\n\n" in head or len(head) > HEAD_MAX \
            or (b"\n" in head and b" HTTP/" not in head.split(b"\n", 1)[0])

    def serve(self) -> bool:
        """Answer the waiting request (and any pipelined behind it); True to keep the connection."""
        h = self.handler
        self.head_started = None
        while True:
            h.close_connection = True
            h.handle_one_request()
            if h.close_connection:
                return False
            if not self._buffered():
                return True

    def _buffered(self) -> bool:
        # bytes already read into rfile's buffer never wake the selector: look without blocking
        if self.stream.prefix:
            return True
        timeout = self.sock.gettimeout()
        try:
            self.sock.settimeout(0)
            return bool(self.reader.peek(1))
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(timeout)

    def close(self, server: MirrorServer) -> None:
        with contextlib.suppress(OSError):
            self.handler.finish()
        server.shutdown_request(self.sock)


HEAD_READ = 16 * 1024
HEAD_MAX = 65_536 + 1024  # the handler's own line limit (65,536) plus a margin: past it, 414/431
EVICT_GRACE = 1.0  # seconds a new or just-answered connection is spared by the caps' eviction
EVICT_HEADROOM = 8  # connections accepted past a cap while the oldest parked ones are closed
FD_RESERVE = 16  # descriptors kept free for the listener, files being served and upstream sockets


def connection_cap(limits: ServeLimits) -> int:
    """Connections held at once: ``limits.max_connections``, lowered to fit the process's
    descriptor limit (each connection is one fd; each busy worker may open a file and a socket)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = resource.RLIM_INFINITY
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    spare = soft - FD_RESERVE - 2 * min(limits.workers, soft // 4)
    return max(EVICT_HEADROOM + 4, min(limits.max_connections, spare))


class MirrorServer(http.server.HTTPServer):
    """HTTP server with a bounded worker pool and a selector thread that holds every
    connection that is not being answered: idle ones, and ones still sending their request
    head (read there without blocking, under ``header_timeout``). Connections are capped in
    total (:func:`connection_cap`) and per client address (``max_per_client``): past a cap
    the holder's oldest parked connection is closed; past the total and its headroom, the
    new one is."""

    request_queue_size = 128

    def __init__(self, address, handler, limits: ServeLimits = ServeLimits()):
        self.limits = limits
        self.max_connections = connection_cap(limits)
        # everything server_close() touches exists before the bind (which may fail and call it)
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="torchdepot-serve")
        self._returned: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self._count_lock = threading.Lock()
        self._open = 0  # connections held (parked or answered)
        self._per_client: collections.Counter[str] = collections.Counter()
        self._evict: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # a client (None: anyone) over its cap
        self._parker = threading.Thread(target=self._park_loop, name="torchdepot-serve-idle", daemon=True)
        super().__init__(address, handler)
        self._parker.start()

    # the accept loop (serve_forever) hands every new connection to the parking thread
    def process_request(self, request, client_address):
        client = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        with self._count_lock:
            # past a cap, the holder's oldest parked connection makes room and the new one is
            # taken (a client over its own cap only ever cycles its own connections); only the
            # descriptor-fitted total, headroom spent, refuses a connection
            over_client = self._per_client[client] >= self.limits.max_per_client
            if over_client or self._open >= self.max_connections - EVICT_HEADROOM:
                self._evict.put(client if over_client else None)
            refuse = self._open >= self.max_connections
            if not refuse:
                self._open += 1
                self._per_client[client] += 1
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if refuse:
            self.shutdown_request(request)
            return
        try:
            conn = _Connection(request, client_address, self)
        except OSError:
            self._release(client)
            self.shutdown_request(request)
            return
        self._park(conn)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        sys.stderr.write(f"torchdepot serve: {client_address}: {type(exc).__name__}: {exc}\n")

    def _handle_request_noblock(self):
        with contextlib.suppress(OSError):
            super()._handle_request_noblock()
        # out of descriptors: the listener stays readable, so do not spin on accept()
        if self._open >= self.max_connections:
            time.sleep(0.01)

    def _release(self, client: str) -> None:
        with self._count_lock:
            self._open -= 1
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]

    def _close(self, conn: _Connection) -> None:
        conn.close(self)
        self._release(conn.client)

    def _park(self, conn: _Connection) -> None:
        self._returned.put(conn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _turn(self, conn: _Connection) -> None:
        try:
            keep = conn.serve()
        except Exception as exc:  # never lose a worker to a connection
            sys.stderr.write(f"torchdepot serve: {type(exc).__name__}: {exc}\n")
            keep = False
        if keep and not self._stopping.is_set():
            self._park(conn)
        else:
            self._close(conn)

    def _park_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        parked: dict[_Connection, None] = {}  # insertion order = oldest first
        limits = self.limits

        def drop(conn: _Connection) -> None:
            parked.pop(conn, None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                sel.unregister(conn)
            self._close(conn)

        while not self._stopping.is_set():
            for key, _ in sel.select(0.25):
                if key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                conn = key.fileobj
                assert isinstance(conn, _Connection)
                got = conn.read_head()
                if got is None:
                    drop(conn)
                elif got:
                    sel.unregister(conn)
                    parked.pop(conn, None)
                    self._pool.submit(self._turn, conn)
                elif conn.head_started is None:  # the first bytes of a head: its deadline starts
                    conn.head_started = time.monotonic()
                    conn.deadline = conn.head_started + limits.header_timeout
            while True:
                try:
                    conn = self._returned.get_nowait()
                except queue.Empty:
                    break
                conn.parked_at = time.monotonic()
                conn.deadline = conn.parked_at + limits.idle_timeout
                try:
                    sel.register(conn, selectors.EVENT_READ)
                except (ValueError, OSError):
                    self._close(conn)
                    continue
                parked[conn] = None
            while True:  # a cap was hit: close the oldest parked connection of that client (or anyone's)
                try:
                    who = self._evict.get_nowait()
                except queue.Empty:
                    break
                # a connection parked for less than EVICT_GRACE is a client about to send: spared
                since = time.monotonic() - EVICT_GRACE
                victim = next((c for c in parked if (who is None or c.client == who) and c.parked_at <= since), None)
                if victim is not None:
                    drop(victim)
            now = time.monotonic()
            settled = [c for c in parked if c.parked_at <= now - EVICT_GRACE]
            while settled and self._open > self.max_connections - EVICT_HEADROOM:  # keep the headroom free
                drop(settled.pop(0))
            for conn in [c for c in parked if c.deadline <= now]:
                drop(conn)
            while len(parked) > limits.max_idle:
                drop(next(iter(parked)))
        for conn in list(parked):
            drop(conn)
        sel.close()

    def server_close(self):
        super().server_close()
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        if self._parker.is_alive():
            self._parker.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake_r.close()
        self._wake_w.close()


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                limits: ServeLimits = ServeLimits(), handler_class: type[MirrorHandler] = MirrorHandler,
                **handler_attrs: object) -> MirrorServer:
    """The server for ``root``; ``handler_class`` (a :class:`MirrorHandler`) with ``handler_attrs``
    set on it answers the requests (the pull-through cache passes its own)."""
    root = Path(root).resolve()
    handler = type("BoundMirrorHandler", (handler_class,),
                   {"root": root, "quiet": quiet, "timeout": limits.request_timeout, **handler_attrs})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("BoundMirrorServer", (MirrorServer,), {"address_family": family})
    return server_cls((host, port), handler, limits)


def server_url(httpd: http.server.HTTPServer) -> str:
    address, port = httpd.server_address[:2]
    host = address.decode() if isinstance(address, bytes) else str(address)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# -- what clients should type ------------------------------------------------------------
_WILDCARDS = ("", "0.0.0.0", "::")


def client_host(bound_host: str) -> str:
    """The host name clients on the LAN should use for a server bound to ``bound_host``."""
    return socket.gethostname() if bound_host in _WILDCARDS else bound_host


def client_url(httpd: http.server.HTTPServer, bound_host: str) -> str:
    host = client_host(bound_host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{httpd.server_address[1]}"
