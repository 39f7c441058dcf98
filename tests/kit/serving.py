"""The lifecycle every loopback test server shares: a ThreadingHTTPServer run on a daemon
thread, ``with`` starts it and stops it, ``url`` is where it listens. Also ``torchdepot
serve``'s own server run the same way (:func:`serve_mirror`) and one plain request
(:func:`request`).

Invariants: daemon request threads (a test never waits on a stuck client); a short poll
interval, since ``shutdown()`` waits up to one interval and tests stop many servers; a
listen backlog of 128, as a real server has.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from torchdepot.ship.serve import MirrorServer, ServeLimits, make_server

_S = TypeVar("_S", bound="ThreadedServer")


class ThreadedServer:
    """Subclasses call :meth:`_serve` with their server from ``__init__``."""

    httpd: http.server.ThreadingHTTPServer
    thread: threading.Thread

    def _serve(self, httpd: http.server.ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.httpd.daemon_threads = True
        # a backlog like a real server's (the class default is 5): a client opening dozens of
        # connections at once (uv, the fetcher's pieces) otherwise loses SYNs and waits 1 s for
        # each retransmit. Linux takes the new backlog on a listening socket
        self.httpd.socket.listen(128)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self: _S) -> _S:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        with contextlib.suppress(Exception):
            self.httpd.server_close()


@contextlib.contextmanager
def serve_mirror(root: Path, limits: ServeLimits | None = None, quiet: bool = True) -> Iterator[MirrorServer]:
    """``torchdepot serve``'s own server for ``root`` on a loopback port, for as long as the block runs."""
    httpd = make_server(root, "127.0.0.1", 0, quiet=quiet, limits=limits or ServeLimits())
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def request(httpd, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    """One request on a fresh connection: ``(response, body)``."""
    conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body
