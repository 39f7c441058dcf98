"""The view's loopback HTTP server: what the resolver (uv) talks to during resolution.

:func:`serve_view` serves a :class:`~torchdepot.sync.view.View` on ``127.0.0.1`` (a free
port) for the duration of a ``with`` block, read-only:

- ``/<acc>/<project>/``: the project's view page (:meth:`View.page`: formatted on the first
  request; the resolution cache's check before it may have taken the page's kept digest);
- ``/<acc>/files/<wheel>.metadata``: verified METADATA (:meth:`View.metadata`);
- ``/<acc>/files/<wheel>``: the wheel's bytes from its one local copy
  (:meth:`View.local_copy`: downloaded once per run, so uv hashing a wheel upstream gave no
  hash for never pulls it across the far link again).

Invariants: a request never raises out of a server thread (a failure is one recorded line
on the view and a 502); nothing is served that is not a view file; every answer is
``Cache-Control: no-store`` (the port is new each run: the user's uv cache keeps none of it);
the server is shut down when the block ends, however it ends, within its 20 ms poll.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from typing import BinaryIO

from torchdepot.errors import TorchdepotError
from torchdepot.sync.view import View

EMPTY_ROOT = b"<!DOCTYPE html><html><body></body></html>\n"
# The view's port is new each run, so nothing uv could cache from it is ever read again: it
# stores none of it (a 64-target sync used to leave 11 MB under the user's uv cache, each run)
NO_STORE = "no-store"
POLL_S = 0.02  # serve_forever's poll interval: how long shutdown() may wait


def _relay(view: View, accelerator: str, filename: str, handler: http.server.BaseHTTPRequestHandler) -> None:
    """Send a view file's bytes to the resolver. uv reads a wheel only when the index gave no
    sha256 for it (it hashes it for the lock; twice, in fact): nightly pages, flat listings,
    find-links dirs."""
    vf = view.file(accelerator, filename)
    if vf is None or (accelerator, vf.filename) in view.excluded:  # excluded: its bytes are no usable wheel
        handler.send_error(404)
        return
    local = view.local_copy(accelerator, vf)
    if local is None:
        handler.send_error(502)
        return
    with open(local, "rb") as src:
        _send(handler, src, os.fstat(src.fileno()).st_size)


def _send(handler: http.server.BaseHTTPRequestHandler, src: BinaryIO, length: int) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(length))
    handler.send_header("Cache-Control", NO_STORE)
    handler.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        shutil.copyfileobj(src, handler.wfile, 1024 * 1024)


def _handler(view: View) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # the resolver's requests are not news
            pass

        def do_GET(self) -> None:
            parts = [urllib.parse.unquote(p) for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
            body, ctype = None, "text/html"
            try:
                if len(parts) == 2:
                    body = view.page(parts[0], parts[1])
                elif len(parts) == 3 and parts[1] == "files" and parts[2].endswith(".metadata"):
                    body, ctype = view.metadata(parts[0], parts[2][: -len(".metadata")]), "text/plain"
                elif len(parts) == 1:
                    body = EMPTY_ROOT
                elif len(parts) == 3 and parts[1] == "files":
                    _relay(view, parts[0], parts[2], self)
                    return
            except TorchdepotError as exc:
                view.error(str(exc))
                self.send_error(502)
                return
            except Exception as exc:  # never a traceback from a server thread: one line, then 502
                view.error(f"local view: {type(exc).__name__}: {exc}")
                self.send_error(502)
                return
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", NO_STORE)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the resolver hung up
                self.wfile.write(body)

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    # uv opens a connection per page it wants, dozens at once: the default backlog of 5 drops
    # the rest of the SYNs, and each dropped one costs the resolver a 1 s retransmit
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        # the resolver hanging up on a connection is no error of the view's, and a server
        # thread never prints a traceback; what the handler can fail at, it records itself
        pass


@contextlib.contextmanager
def serve_view(view: View) -> Iterator[str]:
    """Serve ``view`` on 127.0.0.1 (a free port) for the duration; yields its base URL (also
    set as ``view.base_url``, which :meth:`View.lookup` maps resolver URLs back with)."""
    server = _Server(("127.0.0.1", 0), _handler(view))
    server.daemon_threads = True
    # a short poll: shutdown() waits up to one interval (the default 0.5 s is a no-op's largest wait)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_S}, daemon=True)
    thread.start()
    view.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield view.base_url
    finally:
        server.shutdown()
        server.server_close()
