"""A static file server good enough for a lab, and an nginx config for a real one.

Serving a mirror is serving static files: HTTP Range (206/416), content types for wheels,
metadata and conda files, ``ETag``/``Last-Modified`` with 304s, ``index.html`` for
directories (no listings), short cache lifetimes for indexes and ``immutable`` for
packages. A request can never leave the root: the path is resolved (symlinks followed)
and must stay under the resolved root, so the mirror's own ``whl -> .publish/<gen>/whl``
link works while a link pointing outside is refused. Hidden names (``.torchdepot``) are
not served.
"""

from __future__ import annotations

import email.utils
import http.server
import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

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
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def content_type(name: str) -> str:
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


def resolve_under(root: Path, url_path: str) -> Path | None:
    """URL path -> file under ``root`` (resolved), or None if it escapes or names a hidden entry."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in ("..", ".") or p.startswith(".") for p in parts):
        return None
    root = root.resolve()
    target = (root.joinpath(*parts)).resolve()
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

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

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
        if target.is_dir():
            url = urllib.parse.urlsplit(self.path).path
            if not url.endswith("/"):
                self.send_response(301)
                self.send_header("Location", url + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = target / "index.html"
        try:
            fh = open(target, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
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


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    root = Path(root).resolve()
    handler = type("BoundMirrorHandler", (MirrorHandler,), {"root": root, "quiet": quiet})
    httpd = http.server.ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd


def server_url(httpd: http.server.HTTPServer) -> str:
    host, port = httpd.server_address[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


_NGINX_TYPES = {
    "text/html": "html",
    "application/json": "json",
    "application/zstd": "zst",
    "application/x-bzip2": "bz2",
    "application/octet-stream": "whl metadata conda",
    "text/plain": "toml lock txt yml yaml",
    "image/png": "png",
    "text/css": "css",
    "application/javascript": "js",
}


def nginx_config(root: Path, port: int = 80, server_name: str = "_", listen: str | None = None) -> str:
    """An nginx ``server { }`` block serving the mirror at ``root`` (include it in ``http { }``)."""
    root = Path(root).resolve()
    types = "\n".join(f"        {mime} {exts};" for mime, exts in _NGINX_TYPES.items())
    return f"""\
# torchdepot mirror: static files only. Generated by `torchdepot serve --nginx-config`.
server {{
    listen {listen or port};
    server_name {server_name};
    root {root};
    index index.html;
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
    # package files are named by content (hash in every index): cache forever
    location ~ \\.(whl|metadata|conda|tar\\.bz2)$ {{
        add_header Cache-Control "public, max-age=31536000, immutable";
    }}
    # indexes change on every sync: short lifetime, then revalidate (ETag / Last-Modified)
    location / {{
        add_header Cache-Control "public, max-age={INDEX_MAX_AGE}, must-revalidate";
        try_files $uri $uri/ =404;
    }}
}}
"""
