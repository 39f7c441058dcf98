"""A static file server good enough for a lab, and an nginx config for a real one.

Serving a mirror is serving static files: HTTP Range (206/416), content types for wheels,
metadata and conda files, ``ETag``/``Last-Modified`` with 304s, ``index.html`` for
directories (no listings), short cache lifetimes for indexes and ``immutable`` for
packages. A request can never leave the root: the path is resolved (symlinks followed)
and must stay under the resolved root, so the mirror's own ``whl -> .publish/<gen>/whl``
link works while a link pointing outside is refused. Hidden names (``.torchdepot``) are
not served.

PEP 691: a directory URL answers with ``index.json`` (``application/vnd.pypi.simple.v1+json``)
when the client's Accept header prefers it (q-values; ties go to JSON, wildcards to HTML),
else ``index.html``; both carry ``Vary: Accept``. The nginx config does the same with a map.

Bounds (:class:`ServeLimits`): a connection holds a worker only while a request is being
read or answered. Idle keep-alive connections wait in one selector thread, are closed
after ``idle_timeout`` and, past ``max_idle``, oldest first; so a flood of idle sockets
cannot starve real clients. Requests are answered by a fixed pool of ``workers`` threads.
A bad request gets a status (400/404/414/416/431), never a dropped connection, and the
log gets one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import http.server
import os
import posixpath
import queue
import re
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
PACKAGE_SUFFIXES = (".whl", ".metadata", ".conda", ".tar.bz2")
INDEX_MAX_AGE = 60  # indexes change on every sync: clients revalidate soon
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


def content_type(name: str) -> str:
    if name == JSON_PAGE:
        return JSON_MEDIA_TYPE
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), "application/octet-stream")


def cache_control(name: str) -> str:
    # a package file's name pins its bytes (its hash is in every index), so it never changes
    if name.endswith(PACKAGE_SUFFIXES):
        return "public, max-age=31536000, immutable"
    return f"public, max-age={INDEX_MAX_AGE}, must-revalidate"


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
                           " ".join(str(exc).splitlines())[:200])
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

    def _error(self, code: int, extra: dict[str, str] | None = None) -> None:
        body = f"{code} {http.HTTPStatus(code).phrase}\n".encode()
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
        negotiated: dict[str, str] = {}
        try:
            is_dir = target.is_dir()
        except OSError:
            return self._error(404)
        if is_dir:
            url = urllib.parse.urlsplit(self.path).path
            if not url.endswith("/"):
                self.send_response(301)
                self.send_header("Location", url + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            want = negotiate(self.headers.get("Accept"))
            target = target / (JSON_PAGE if want == "json" and (target / JSON_PAGE).is_file() else HTML_PAGE)
            self._served = target.name
            negotiated["Vary"] = "Accept"
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
                "Cache-Control": cache_control(target.name),
                "Accept-Ranges": "bytes",
                **negotiated,
            }
            if self._not_modified(etag, st.st_mtime):
                self.send_response(304)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                return
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


class _Connection:
    """One client connection and its handler, kept across keep-alive requests."""

    def __init__(self, sock: socket.socket, address, server: MirrorServer):
        self.sock = sock
        handler = server.RequestHandlerClass.__new__(server.RequestHandlerClass)
        handler.request, handler.client_address, handler.server = sock, address, server
        handler.setup()  # socket timeout + rfile/wfile, once per connection
        self.handler = handler
        self.deadline = 0.0

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self) -> bool:
        """Answer the waiting request (and any pipelined behind it); True to keep the connection."""
        h = self.handler
        while True:
            h.close_connection = True
            h.handle_one_request()
            if h.close_connection:
                return False
            if not self._buffered():
                return True

    def _buffered(self) -> bool:
        # bytes already read into rfile's buffer never wake the selector: look without blocking
        timeout = self.sock.gettimeout()
        try:
            self.sock.settimeout(0)
            return bool(self.handler.rfile.peek(1))
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(timeout)

    def close(self, server: MirrorServer) -> None:
        with contextlib.suppress(OSError):
            self.handler.finish()
        server.shutdown_request(self.sock)


class MirrorServer(http.server.HTTPServer):
    """HTTP server with a bounded worker pool and a selector that parks idle connections."""

    request_queue_size = 128

    def __init__(self, address, handler, limits: ServeLimits = ServeLimits()):
        self.limits = limits
        # everything server_close() touches exists before the bind (which may fail and call it)
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="torchdepot-serve")
        self._returned: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self._parker = threading.Thread(target=self._park_loop, name="torchdepot-serve-idle", daemon=True)
        super().__init__(address, handler)
        self._parker.start()

    # the accept loop (serve_forever) hands every new connection to the parking thread
    def process_request(self, request, client_address):
        try:
            conn = _Connection(request, client_address, self)
        except OSError:
            self.shutdown_request(request)
            return
        self._park(conn)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        sys.stderr.write(f"torchdepot serve: {client_address}: {type(exc).__name__}: {exc}\n")

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
            conn.close(self)

    def _park_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        idle: dict[_Connection, None] = {}  # insertion order = oldest first
        while not self._stopping.is_set():
            now = time.monotonic()
            timeout = min([1.0] + [max(0.0, c.deadline - now) for c in list(idle)[:1]])
            for key, _ in sel.select(timeout):
                if key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                conn = key.fileobj
                sel.unregister(conn)
                idle.pop(conn, None)
                self._pool.submit(self._turn, conn)
            while True:
                try:
                    conn = self._returned.get_nowait()
                except queue.Empty:
                    break
                conn.deadline = time.monotonic() + self.limits.idle_timeout
                try:
                    sel.register(conn, selectors.EVENT_READ)
                except (ValueError, OSError):
                    conn.close(self)
                    continue
                idle[conn] = None
            now = time.monotonic()
            while idle:
                oldest = next(iter(idle))
                if len(idle) <= self.limits.max_idle and oldest.deadline > now:
                    break
                del idle[oldest]
                sel.unregister(oldest)
                oldest.close(self)
        for conn in list(idle):
            conn.close(self)
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
                limits: ServeLimits = ServeLimits()) -> MirrorServer:
    root = Path(root).resolve()
    handler = type("BoundMirrorHandler", (MirrorHandler,),
                   {"root": root, "quiet": quiet, "timeout": limits.request_timeout})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("BoundMirrorServer", (MirrorServer,), {"address_family": family})
    return server_cls((host, port), handler, limits)


def server_url(httpd: http.server.HTTPServer) -> str:
    host, port = httpd.server_address[:2]
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


# -- nginx -----------------------------------------------------------------------------
def nginx_types() -> dict[str, list[str]]:
    """CONTENT_TYPES as nginx's ``types { mime ext...; }`` (nginx matches the last suffix;
    charset comes from the ``charset`` directive, not the type)."""
    out: dict[str, list[str]] = {}
    for suffix, mime in CONTENT_TYPES.items():
        out.setdefault(mime.split(";")[0].strip(), []).append(suffix.rsplit(".", 1)[-1])
    return out


# nginx has no q-value parser: JSON whenever the client lists a PEP 691 JSON type without q=0
NGINX_ACCEPT_JSON = r"~*application/vnd\.pypi\.simple\.(v1|latest)\+json(?!\s*;\s*q\s*=\s*0(\.0*)?\s*(,|$))"
NGINX_INDEX_VAR = "$torchdepot_index"


def nginx_config(root: Path, port: int = 80, server_name: str = "_", listen: str | None = None) -> str:
    """An nginx ``map`` and ``server { }`` block serving the mirror at ``root`` (include the
    text inside ``http { }``). Types come from :data:`CONTENT_TYPES`; directory URLs answer
    ``index.json`` to clients asking for PEP 691 JSON, ``index.html`` otherwise."""
    root = Path(root).resolve()
    types = "\n".join(f"        {mime} {' '.join(exts)};" for mime, exts in nginx_types().items())
    json_re, html_re = (re.escape(name) for name in (JSON_PAGE, HTML_PAGE))
    index_cache = f'add_header Cache-Control "public, max-age={INDEX_MAX_AGE}, must-revalidate";'
    return f"""\
# torchdepot mirror: static files only. Generated by `torchdepot serve --nginx-config`.
# PEP 691: clients that ask for JSON get index.json, everyone else index.html.
map $http_accept {NGINX_INDEX_VAR} {{
    default {HTML_PAGE};
    "{NGINX_ACCEPT_JSON}" {JSON_PAGE};
}}
server {{
    listen {listen or port};
    server_name {server_name};
    root {root};
    index {NGINX_INDEX_VAR} {HTML_PAGE};
    autoindex off;
    # whl/ is a symlink to .publish/<generation>/whl, swapped atomically on publish
    disable_symlinks off;
    charset utf-8;
    types {{
{types}
    }}
    default_type application/octet-stream;

    # state (.torchdepot/) and hidden files are never served; .publish/ is reached via whl/
    location ~ /\\. {{
        return 404;
    }}
    # index pages: one URL, two representations (Accept)
    location ~ /{json_re}$ {{
        types {{ }}
        default_type {JSON_MEDIA_TYPE};
        add_header Vary Accept;
        {index_cache}
    }}
    location ~ /{html_re}$ {{
        add_header Vary Accept;
        {index_cache}
    }}
    # package files are named by content (hash in every index): cache forever
    location ~ \\.(whl|metadata|conda|tar\\.bz2)$ {{
        add_header Cache-Control "public, max-age=31536000, immutable";
    }}
    # indexes change on every sync: short lifetime, then revalidate (ETag / Last-Modified)
    location / {{
        {index_cache}
        try_files $uri $uri/ =404;
    }}
}}
"""
