"""A loopback HTTP forward proxy that gives loopback test servers a LAN host name.

pip decides whether a plain-HTTP index is trusted from the HOST STRING in the URL
(localhost and 127.0.0.0/8 are trusted by default), not from the address it resolves to.
A test that serves its mirror on ``http://127.0.0.1:PORT`` therefore never sees the
failure a lab sees on ``http://torchlab:8000``. With this proxy the installer is run with
``HTTP_PROXY`` pointing here (and ``NO_PROXY`` cleared); it then asks for
``http://torchlab:8000/...`` exactly as on a LAN, and the proxy forwards the request to the
loopback server that the test mapped to that name.

Invariants:
- Only names in the map are forwarded, and only to loopback addresses (checked when the
  map is built); any other host gets ``403`` and no connection is made anywhere.
- ``CONNECT`` (HTTPS tunnelling) is refused: the mirror under test is plain HTTP.
- Bodies are streamed (the torch wheel is ~190 MB), never buffered whole.

Usage::

    with Server(root) as s, LanProxy({"torchlab:8000": s.httpd.server_address[:2]}) as proxy:
        subprocess.run([...pip install --index-url http://torchlab:8000/whl/cpu/ ...],
                       env=proxy.env(hermetic_env()))
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import ipaddress
import urllib.parse
from collections.abc import Mapping

from tests.kit.serving import ThreadedServer

# Hop-by-hop headers (RFC 9110 7.6.1) are for one connection and are not forwarded.
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
                  "te", "trailer", "transfer-encoding", "upgrade"})
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
               "no_proxy", "NO_PROXY")


def _key(host: str, port: int | None) -> str:
    return f"{host.lower()}:{port or 80}"


def _normalise(routes: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for name, (addr, port) in routes.items():
        if not ipaddress.ip_address(addr).is_loopback:
            raise ValueError(f"LanProxy forwards only to loopback, not {addr!r} (route {name!r})")
        parsed = urllib.parse.urlsplit(f"//{name}")
        out[_key(parsed.hostname or "", parsed.port)] = (addr, int(port))
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: dict[str, tuple[str, int]] = {}
    seen: list[str]

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _refuse(self, status: int, why: str) -> None:
        body = (why + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_CONNECT(self):
        self._refuse(405, f"LanProxy: CONNECT {self.path} refused (plain HTTP only)")
        self.close_connection = True

    def _forward(self):
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:
            return self._refuse(400, f"LanProxy: not an absolute http URL: {self.path}")
        target = self.routes.get(_key(url.hostname, url.port))
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        if target is None:
            return self._refuse(403, f"LanProxy: host {url.netloc} is not routed (refused, nothing forwarded)")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(*target, timeout=60)
        try:
            path = url.path or "/"
            conn.request(self.command, path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            chunked = not no_body and resp.getheader("Content-Length") is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if no_body:
                return
            while chunk := resp.read(1 << 20):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError as exc:
            if not self.wfile.closed:
                with contextlib.suppress(OSError):
                    self._refuse(502, f"LanProxy: {url.netloc} -> {target}: {exc}")
            self.close_connection = True
        finally:
            conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = _forward


class LanProxy(ThreadedServer):
    """``with LanProxy({"torchlab:8000": ("127.0.0.1", port)}) as p: p.url, p.env(base)``.

    A route name without a port means port 80 (``"torchlab"`` serves ``http://torchlab/``).
    ``seen`` lists the requests the proxy received (``"GET http://torchlab:8000/..."``), so a
    test can assert the installer really went through the LAN name.
    """

    def __init__(self, routes: Mapping[str, tuple[str, int]]):
        handler = type("_RoutedHandler", (_Handler,), {"routes": _normalise(routes)})
        self._serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
        self.httpd.seen = []  # type: ignore[attr-defined]

    @property
    def seen(self) -> list[str]:
        return list(self.httpd.seen)  # type: ignore[attr-defined]

    def env(self, base_env: Mapping[str, str]) -> dict[str, str]:
        """``base_env`` with every proxy variable replaced: plain HTTP goes through this proxy,
        nothing bypasses it (NO_PROXY removed), and HTTPS has no proxy (nothing to reach)."""
        env = {k: v for k, v in base_env.items() if k not in _PROXY_VARS}
        env.update(http_proxy=self.url, HTTP_PROXY=self.url)
        return env
