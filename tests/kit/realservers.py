"""Real upstream servers for end-to-end tests: Debian's nginx and ``python -m http.server``.

Both serve a directory on a free loopback port and write an access log that the tests read:
nginx a line per request with its method, path, status, body bytes and the request's
``Range``/``If-None-Match``/``If-Modified-Since``; http.server is run as a user runs it (its
handler unchanged: no Range, no ETag, only Last-Modified and If-Modified-Since) with one wrap
that logs the body bytes each response carried (its own log prints ``-`` for a file's size).

Invariants: loopback only (127.0.0.1); each server is a child process stopped (terminate, then
kill) when its context exits, whatever the test did; the log is read back whole each time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Hit:
    """One logged request."""

    method: str
    path: str  # decoded URL path, no query
    status: int
    body: int  # body bytes sent
    range: str = ""
    if_none_match: str = ""
    if_modified_since: str = ""


@dataclass
class Served:
    """A running server: its base URL and its access log."""

    url: str
    log: Path

    def hits(self) -> list[Hit]:
        out = []
        for line in self.log.read_text().splitlines():
            f = line.split("\t")
            if len(f) >= 4:
                path = urllib.parse.unquote(f[1].split("?", 1)[0])
                out.append(Hit(f[0], path, int(f[2]), int(f[3]) if f[3].isdigit() else 0,
                               *(v if v != "-" else "" for v in f[4:7])))
        return out

    def mark(self) -> int:
        """How many requests the log holds now: pass it to :meth:`since`."""
        return len(self.hits())

    def since(self, mark: int) -> list[Hit]:
        return self.hits()[mark:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited: {proc.stdout.read() if proc.stdout else ''}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    assert found, "nginx not installed: apt-get install -y nginx-light (.ci/run installs it)"
    return found


@contextlib.contextmanager
def nginx(root: Path, work: Path, limit_rate: str = "0", conns_per_file: int = 0) -> Iterator[Served]:
    """Debian's nginx serving ``root`` as static files (``index.html`` for a directory, ETag,
    Last-Modified, Range and conditional requests as nginx answers them); ``limit_rate``:
    nginx's per-connection cap (``4m``: 4 MB/s; ``0``: none); ``conns_per_file``: nginx's
    ``limit_conn`` keyed on client and URI (``1``: a second connection to the same file while
    one is open is answered 503, as a server that refuses parallel ranges does; ``0``: off)."""
    port = free_port()
    conf = work / "nginx"
    log = conf / "logs" / "access.log"
    conf_file = nginx_conf(conf, f"""
    log_format counted '$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t$http_range\\t$http_if_none_match\\t$http_if_modified_since';
    access_log {log} counted;
    limit_conn_zone $binary_remote_addr$uri zone=perfile:1m;
    limit_conn_status 503;
    types {{ text/html html; application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
        limit_rate {limit_rate};
        {f"limit_conn perfile {conns_per_file};" if conns_per_file else ""}
    }}""")
    with nginx_running(conf_file, port, log) as up:
        yield up


def nginx_conf(conf: Path, http: str, worker_connections: int = 512) -> Path:
    """``conf/nginx.conf`` for Debian's nginx in the foreground, unprivileged where it can be, its
    pid, error log and temporary folders under ``conf``; ``http``: the directives of its http block."""
    (conf / "logs").mkdir(parents=True, exist_ok=True)
    path = conf / "nginx.conf"
    path.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {conf}/nginx.pid;
error_log {conf}/logs/error.log;
events {{ worker_connections {worker_connections}; }}
http {{
    client_body_temp_path {conf}/body;
    proxy_temp_path {conf}/proxy;
    fastcgi_temp_path {conf}/fastcgi;
    uwsgi_temp_path {conf}/uwsgi;
    scgi_temp_path {conf}/scgi;
{http}
}}
""")
    return path


@contextlib.contextmanager
def nginx_running(conf_file: Path, port: int, log: Path) -> Iterator[Served]:
    """nginx run with ``conf_file`` (:func:`nginx_conf`), once it listens on ``port``; always stopped."""
    with _served([nginx_binary(), "-c", str(conf_file), "-p", str(conf_file.parent)], port, log, "nginx") as up:
        yield up


# http.server exactly as `python -m http.server --bind 127.0.0.1 --directory ROOT PORT` runs
# it; the one change is a log line per response with the body bytes its copyfile sent.
_HTTP_SERVER = r"""
import http.server, sys, threading
log = open(sys.argv[3], "a", buffering=1)
lock = threading.Lock()

class Counted(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def send_response(self, code, message=None):
        self._status = code
        super().send_response(code, message)

    def copyfile(self, source, outputfile):
        start = source.tell()
        try:
            super().copyfile(source, outputfile)
        finally:  # a client that closes early: what was read for it (one 64 KB chunk may not have left)
            self._sent = source.tell() - start

    def log_request(self, code="-", size="-"):
        pass

    def handle_one_request(self):
        self._status, self._sent = 0, 0
        try:
            super().handle_one_request()
        finally:
            self._log()

    def _log(self):
        if getattr(self, "command", None):
            h = self.headers
            with lock:  # int(): on Python 3.10 str() of an HTTPStatus is 'HTTPStatus.NOT_FOUND'
                log.write("\t".join([self.command, self.path, str(int(self._status)), str(self._sent), h.get("Range", "-"),
                                     h.get("If-None-Match", "-"), h.get("If-Modified-Since", "-")]) + "\n")

handler = lambda *a, **kw: Counted(*a, directory=sys.argv[2], **kw)
http.server.test(HandlerClass=handler, ServerClass=http.server.ThreadingHTTPServer, port=int(sys.argv[1]),
                 bind="127.0.0.1")
"""


@contextlib.contextmanager
def http_server(root: Path, work: Path) -> Iterator[Served]:
    """``python -m http.server`` serving ``root``: directory listings for folders, no Range,
    no ETag, Last-Modified with If-Modified-Since."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "http-server.log"
    log.touch()
    with _served([sys.executable, "-c", _HTTP_SERVER, str(port), str(root), str(log)], port, log,
                 "http.server") as up:
        yield up


@contextlib.contextmanager
def _served(cmd: list[str], port: int, log: Path, what: str) -> Iterator[Served]:
    """A server process started from ``cmd``, once it listens on ``port``; always stopped."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_listening(proc, port, what)
        yield Served(f"http://127.0.0.1:{port}", log)
    finally:
        stop(proc)
