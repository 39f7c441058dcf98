"""A real HTTP server on 127.0.0.1 for tests: static files from a directory, with HTTP
Range support (pip and our fetcher resume with it). Not a mock: requests go over TCP."""

from __future__ import annotations

import functools
import http.server
import os
import re
import socket
from pathlib import Path

from tests.kit.serving import ThreadedServer
from torchdepot.ship.serve import CONTENT_TYPES

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        **CONTENT_TYPES,  # what torchdepot serve sends, so tests see the same types
    }
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out as separate small writes; with Nagle + delayed ACK each
        # keep-alive response would stall ~40 ms. Real servers set TCP_NODELAY too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if rng and os.path.isfile(path):
            m = _RANGE.fullmatch(rng.strip())
            size = os.path.getsize(path)
            if m and int(m.group(1)) < size:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
                end = min(end, size - 1)
                f = open(path, "rb")  # noqa: SIM115 - send_head() returns it open; the base handler closes it
                f.seek(start)
                self.send_response(206)
                self.send_header("Content-Type", self.guess_type(path))
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self._range_left = end - start + 1
                return f
        self._range_left = None
        return super().send_head()

    def copyfile(self, source, outputfile):
        left = getattr(self, "_range_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            chunk = source.read(min(left, 1024 * 1024))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)


class Server(ThreadedServer):
    """``with Server(root) as s: s.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, handler=RangeHandler):
        self.root = Path(root)
        self._serve(http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(root))))
