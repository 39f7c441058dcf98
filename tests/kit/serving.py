"""The lifecycle every loopback test server shares: a ThreadingHTTPServer run on a daemon
thread, ``with`` starts it and stops it, ``url`` is where it listens.

Invariants: daemon request threads (a test never waits on a stuck client); a short poll
interval, since ``shutdown()`` waits up to one interval and tests stop many servers.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Self


class ThreadedServer:
    """Subclasses call :meth:`_serve` with their server from ``__init__``."""

    httpd: http.server.ThreadingHTTPServer
    thread: threading.Thread

    def _serve(self, httpd: http.server.ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        with contextlib.suppress(Exception):
            self.httpd.server_close()
