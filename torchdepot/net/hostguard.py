"""A loopback HTTP proxy that lets a child process reach only the hosts a policy allows.

uv follows every link an index page gives it while resolving (pages, PEP 658 metadata,
range requests into wheels). The fetcher enforces the host policy on our own downloads;
this guard enforces it on uv's traffic too: uv runs with ``HTTP(S)_PROXY`` pointing here,
``CONNECT host:443`` is tunnelled only for allowed hosts (TLS stays end to end: nothing is
decrypted), plain-HTTP requests are forwarded only to allowed hosts, and everything else
gets ``403`` and is counted in :attr:`HostGuard.refused`.
"""

from __future__ import annotations

import collections
import select
import socket
import socketserver
import threading
import urllib.parse

_MAX_HEADER = 64 * 1024
_IDLE = 120.0  # seconds a tunnel may sit silent before it is closed
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_HOP_HEADERS = {b"proxy-connection", b"connection", b"keep-alive", b"proxy-authorization", b"te", b"upgrade"}


def _split_hostport(text: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit("//" + text)
    return (parts.hostname or "").rstrip(".").lower(), parts.port or default_port


class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        try:
            head = self._read_head()
            if head is None:
                return
            request_line, headers = head
            method, target, _version = request_line.split(b" ", 2)
            if method == b"CONNECT":
                host, port = _split_hostport(target.decode("latin-1"), 443)
                if not self._allowed(host):
                    return
                self._tunnel(host, port)
            else:
                url = urllib.parse.urlsplit(target.decode("latin-1"))
                host = (url.hostname or "").rstrip(".").lower()
                if url.scheme != "http":
                    self._refuse(host or target.decode("latin-1", "replace")[:80])
                elif self._allowed(host):
                    self._forward(method, url, headers, host)
        except (OSError, ValueError):
            pass  # the client or upstream went away; nothing to clean up beyond the sockets

    # -- pieces ---------------------------------------------------------------
    def _read_head(self) -> tuple[bytes, list[bytes]] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.connection.recv(4096)
            if not chunk:
                return None
            data += chunk
            if len(data) > _MAX_HEADER:
                return None
        head, _, self._rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        return lines[0], lines[1:]

    def _allowed(self, host: str) -> bool:
        if host and host in self.server.allowed:
            return True
        self._refuse(host)
        return False

    def _refuse(self, host: str) -> None:
        with self.server.lock:
            self.server.refused[host or "?"] += 1
        self.connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _tunnel(self, host: str, port: int) -> None:
        upstream = socket.create_connection((host, port), timeout=30)
        with upstream:
            self.connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if self._rest:
                upstream.sendall(self._rest)
            self._relay(self.connection, upstream)

    def _forward(self, method: bytes, url: urllib.parse.SplitResult, headers: list[bytes], host: str) -> None:
        upstream = socket.create_connection((host, url.port or 80), timeout=30)
        with upstream:
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
            # One request per connection keeps the relay trivial: no request framing needed.
            out = [method + b" " + path.encode("latin-1") + b" HTTP/1.1", *kept, b"Connection: close", b"", b""]
            upstream.sendall(b"\r\n".join(out) + self._rest)
            self._relay(self.connection, upstream)

    @staticmethod
    def _relay(a: socket.socket, b: socket.socket) -> None:
        socks = [a, b]
        while True:
            ready, _, _ = select.select(socks, [], [], _IDLE)
            if not ready:
                return
            for s in ready:
                data = s.recv(256 * 1024)
                if not data:
                    return
                (b if s is a else a).sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, allowed: frozenset[str]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.allowed = allowed
        self.refused: collections.Counter = collections.Counter()
        self.lock = threading.Lock()


class HostGuard:
    """``with HostGuard(hosts) as g: run(cmd, env={**env, **g.env()})``; then ``g.refused``."""

    def __init__(self, allowed_hosts: set[str] | frozenset[str]):
        self._server = _Server(frozenset(h.lower() for h in allowed_hosts))
        # A short poll: shutdown() waits up to one interval, and every sync stops the guard.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="hostguard", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def refused(self) -> collections.Counter:
        with self._server.lock:
            return collections.Counter(self._server.refused)

    def env(self) -> dict[str, str]:
        """Proxy variables for a child (both spellings; NO_PROXY cleared so nothing bypasses it)."""
        return {**dict.fromkeys(PROXY_VARS, self.url), "NO_PROXY": "", "no_proxy": ""}

    def __enter__(self) -> "HostGuard":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

