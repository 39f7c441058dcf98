"""A loopback server of fixed routes (path -> body, headers, ETag, drip): answers
``If-None-Match`` with 304 and can send a body one byte at a time, for the bounded readers'
tests and the attack bench. Every request is recorded with its headers."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field

from tests.kit.serving import ThreadedServer


@dataclass
class Route:
    body: bytes
    headers: dict = field(default_factory=dict)
    drip: float = 0.0  # seconds between single bytes
    etag: str | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        owner: Upstream = self.server.owner  # type: ignore[attr-defined]
        owner.requests.append((self.path, dict(self.headers)))
        route = owner.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.etag and self.headers.get("If-None-Match") == route.etag:
            self.send_response(304)
            self.send_header("ETag", route.etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(route.body)))
        if route.etag:
            self.send_header("ETag", route.etag)
        for k, v in route.headers.items():
            self.send_header(k, v)
        self.end_headers()
        try:
            if route.drip:
                for i in range(len(route.body)):
                    if owner.stop.is_set():
                        return
                    self.wfile.write(route.body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(route.drip)
            else:
                self.wfile.write(route.body)
        except OSError:
            pass


class Upstream(ThreadedServer):
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self  # type: ignore[attr-defined]
        self._serve(httpd)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        super().__exit__(*exc)
