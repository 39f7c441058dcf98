"""A fault-injecting upstream for tests: a real threaded HTTP/1.1 server on 127.0.0.1.

Files are served from memory (``server.add(path, data)``) with Range support. Each path
can carry a *schedule* of faults, one per request, after which it is served normally
("fail the first 2 attempts, then serve")::

    with FaultServer() as up:
        up.add("/whl/a.whl", data)
        up.schedule("/whl/a.whl", Fault("status", status=503), Fault("close_after", n=1000))
        ...
        assert up.hits["/whl/a.whl"] == 3

``always`` sets a fault for every request (after the schedule runs out). Counters
(``hits``, ``body_bytes``, ``ranges``) are per path, for assertions. Not a mock: the
fetcher talks TCP to it exactly as to a real upstream.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_FLIP = bytes(b ^ 0x5A for b in range(256))

MODES = (
    "ok",  # serve normally (Range honoured)
    "close_after",  # full Content-Length, then an abrupt reset after n body bytes
    "truncate",  # full Content-Length, n body bytes, then a clean close
    "status",  # answer `status` (optionally with Retry-After)
    "drip",  # serve at `rate` bytes per second (Range honoured)
    "stall",  # n body bytes then hang for `seconds` without closing
    "wrong_bytes",  # right length, wrong content
    "ignore_range",  # 200 with the whole body even when Range was asked
    "bad_content_range",  # 206 with a Content-Range that does not match the request
    "html",  # a text/html challenge page with status 200
    "html_disguised",  # a challenge page labelled application/octet-stream
    "redirect",  # 302 to `location`
    "redirect_loop",  # 302 to itself forever
    "oversize",  # the right body followed by extra bytes (Content-Length says so)
    "chunked",  # no Content-Length: chunked transfer encoding (size unknown up front)
    "range_reset",  # Range honoured (206), n body bytes, then an abrupt reset (a dropped piece)
    "corrupt_range",  # Range honoured (206), right length, wrong content (a corrupt piece)
)


@dataclass(frozen=True)
class Fault:
    mode: str = "ok"
    n: int = 0  # byte count for close_after / truncate / stall
    status: int = 503
    retry_after: str | None = None
    rate: float = 50_000.0  # bytes per second for drip
    seconds: float = 5.0  # stall length
    location: str = ""  # redirect target

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}")


def flaky_faults(size: int) -> list[Fault]:
    """What a flaky upstream does most: bodies cut short and retryable statuses."""
    return [
        Fault("close_after", n=size // 3),
        Fault("truncate", n=size // 2),
        Fault("status", status=500),
        Fault("status", status=502),
        Fault("status", status=503),
        Fault("status", status=429, retry_after="0"),
    ]


def leave_partial(fetcher, key: str, data: bytes):
    """Put ``data`` where ``fetcher`` keeps the partial download of ``key``, as a crashed run
    would leave it; returns that path."""
    part = fetcher._partial_path(key)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    return part


CHALLENGE = (b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
             b"<body>Checking your browser before accessing the site.</body></html>")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, fmt, *args):  # quiet tests
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # -- helpers ---------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream",
              extra: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self._write(body)

    def _write(self, body: bytes) -> None:
        self.wfile.write(body)
        self.wfile.flush()
        self.server.owner._count_bytes(self._path, len(body))

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client sees "connection reset".
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        owner._active(+1, self.client_address)
        try:
            self._serve_counted(head)
        finally:
            owner._active(-1, self.client_address)

    def _serve_counted(self, head: bool) -> None:
        owner = self.server.owner
        self._path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        data, ctype = owner._lookup(self._path)
        fault = owner._next_fault(self._path, self.headers.get("Range"))
        if data is None and fault.mode not in ("status", "redirect", "redirect_loop", "html"):
            self._send(404, b"not found", "text/plain", head=head)
            return
        mode = fault.mode
        try:
            if mode == "status":
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send(fault.status, f"error {fault.status}".encode(), "text/plain", extra, head)
            elif mode == "redirect":
                self._send(302, b"", "text/plain", {"Location": fault.location}, head)
            elif mode == "redirect_loop":
                self._send(302, b"", "text/plain", {"Location": self.path}, head)
            elif mode == "html":
                self._send(200, CHALLENGE, "text/html; charset=utf-8", head=head)
            elif mode == "html_disguised":
                self._send(200, CHALLENGE, "application/octet-stream", head=head)
            elif mode == "wrong_bytes":
                self._send(200, bytes(b ^ 0x5A for b in data), ctype, head=head)
            elif mode == "oversize":
                self._send(200, data + b"\0" * 1000, ctype, head=head)
            elif mode == "chunked":
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if not head:
                    step = 256 * 1024
                    for i in range(0, len(data), step):
                        piece = data[i: i + step]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                        self.server.owner._count_bytes(self._path, len(piece))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            elif mode == "ignore_range":
                self._send(200, data, ctype, {"Accept-Ranges": "bytes"}, head)
            elif mode == "bad_content_range":
                start = self._range_start(len(data))
                lie = 0 if start else min(len(data) // 2, 10)
                body = data[lie:]
                self._send(206, body, ctype, {"Content-Range": f"bytes {lie}-{len(data) - 1}/{len(data)}"}, head)
            elif mode in ("close_after", "truncate", "stall"):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if head:
                    return
                self._write(data[: fault.n])
                if mode == "close_after":
                    self._reset()
                elif mode == "truncate":
                    self.close_connection = True
                else:
                    time.sleep(fault.seconds)
                    self.close_connection = True
            elif mode in ("range_reset", "corrupt_range"):
                self._serve_ok(data, ctype, head, None, fault)
            else:  # ok / drip: Range honoured
                self._serve_ok(data, ctype, head, fault.rate if mode == "drip" else None)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _range_start(self, size: int) -> int:
        return self._range(size)[0]

    def _range(self, size: int) -> tuple[int, int]:
        """(first, last) asked for, clipped to the body; (0, size - 1) when none."""
        m = _RANGE.fullmatch((self.headers.get("Range") or "").strip())
        if m and int(m.group(1)) < size:
            last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if last >= int(m.group(1)):
                return int(m.group(1)), last
        return 0, size - 1

    def _serve_ok(self, data: bytes, ctype: str, head: bool, rate: float | None, fault: Fault | None = None) -> None:
        validators = self.server.owner._validator_headers(self._path)
        if validators and self.headers.get("If-None-Match") == validators["ETag"]:
            self.send_response(304)  # a conditional re-read of an unchanged file: no body
            for k, v in validators.items():
                self.send_header(k, v)
            self.end_headers()
            return
        start, last = self._range(len(data))
        if self.headers.get("Range") and (start or last < len(data) - 1 or self.server.owner.validators):
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{last}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:last + 1]
        if fault is not None and fault.mode == "corrupt_range":
            body = body.translate(_FLIP)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in self.server.owner._validator_headers(self._path).items():
            self.send_header(k, v)
        self.end_headers()
        if fault is not None and fault.mode == "range_reset":
            if not head:
                self._write(body[: fault.n])
            self._reset()
            return
        if head:
            return
        if rate is None:
            self._write(body)
            return
        step = max(1, int(rate / 20))  # 20 writes a second
        for i in range(0, len(body), step):
            self._write(body[i: i + step])
            time.sleep(step / rate)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultServer

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-body (by design, in these tests) is not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FaultServer:
    """In-memory files with per-path fault schedules and request counters."""

    def __init__(self, host: str = "127.0.0.1", default: Fault | None = None, validators: bool = False):
        # validators: send ETag and Last-Modified (they change when ``add`` replaces a file),
        # answer a matching If-None-Match with 304, and every Range with 206, as a CDN does.
        self.validators = validators
        self._versions: dict[str, int] = collections.Counter()
        self._lock = threading.Lock()
        self.files: dict[str, tuple[bytes, str]] = {}
        self._schedules: dict[str, collections.deque] = {}
        self._always: dict[str, Fault] = {}
        self.default = default or Fault()
        self.hits: collections.Counter = collections.Counter()
        self.body_bytes: collections.Counter = collections.Counter()
        self.ranges: dict[str, list] = collections.defaultdict(list)
        self.peers: set = set()  # client (host, port)s seen: one per TCP connection
        self.active = 0  # requests being served now, and the most at once
        self.peak_active = 0
        self.httpd = _HTTPServer((host, 0), _Handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    # -- configuration ------------------------------------------------------------
    def add(self, path: str, data: bytes, ctype: str | None = None) -> str:
        """Serve ``data`` at ``path``; returns its absolute URL."""
        if ctype is None:
            ctype = "text/html" if path.endswith(("/", ".html")) else (
                "application/json" if path.endswith(".json") else "application/octet-stream")
        with self._lock:
            self.files[path] = (data, ctype)
            self._versions[path] += 1
        return self.url + path

    def schedule(self, path: str, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests of ``path``, one each, then serve normally."""
        with self._lock:
            self._schedules.setdefault(path, collections.deque()).extend(faults)

    def always(self, path: str, fault: Fault) -> None:
        with self._lock:
            self._always[path] = fault

    def reset_counters(self) -> None:
        with self._lock:
            self.hits.clear()
            self.body_bytes.clear()
            self.ranges.clear()
            self.peers.clear()
            self.peak_active = self.active

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- used by the handler ---------------------------------------------------------
    def _lookup(self, path: str) -> tuple[bytes | None, str]:
        with self._lock:
            if path in self.files:
                return self.files[path]
            if path.endswith("/") and path + "index.html" in self.files:
                return self.files[path + "index.html"]
        return None, "text/plain"

    def _validator_headers(self, path: str) -> dict:
        if not self.validators:
            return {}
        with self._lock:
            if path not in self.files and path.endswith("/"):
                path += "index.html"  # a page served for its directory changes with that file
            version = self._versions.get(path, 0)
        day = 1 + version % 28
        return {"ETag": f'"v{version}"', "Last-Modified": f"Mon, {day:02d} Jan 2024 00:00:00 GMT"}

    def _next_fault(self, path: str, rng: str | None) -> Fault:
        with self._lock:
            self.hits[path] += 1
            self.ranges[path].append(rng)
            queue = self._schedules.get(path)
            if queue:
                return queue.popleft()
            return self._always.get(path, self.default)

    def _active(self, delta: int, peer) -> None:
        with self._lock:
            self.active += delta
            self.peak_active = max(self.peak_active, self.active)
            self.peers.add(peer)

    def _count_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self.body_bytes[path] += n

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        with contextlib.suppress(Exception):
            self.httpd.server_close()
