"""One HTTP client for every crawler and the fetcher: timeouts, bounded retries with
backoff and jitter honouring ``Retry-After``, and errors that name the URL.

Only ``http``/``https`` URLs go over the network; ``file://`` URLs (pip configs point
at local indexes this way) are read from disk by :func:`get_bytes`.
"""

from __future__ import annotations

import errno
import http.client
import math
import os
import random
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path

import requests
import urllib3.exceptions

from torchdepot import __version__
from torchdepot.errors import ParseError, Reason, UpstreamError, one_line

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpStatusError(UpstreamError):
    """An HTTP error status; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, status: int, retry_after: float | None = None, *,
                 detail: str | None = None) -> None:
        super().__init__(message, detail=detail, reason=Reason.NOT_FOUND if status in (404, 410) else Reason.STATUS)
        self.status = status
        self.retry_after = retry_after

    @classmethod
    def at_status(cls, url: str, detail: str, status: int, retry_after: float | None = None) -> HttpStatusError:
        """``<url>: <detail>`` for HTTP ``status``."""
        return cls(f"{url}: {detail}", status, retry_after, detail=detail)

    @property
    def retryable(self) -> bool:
        return self.status in RETRY_STATUSES


@dataclass(frozen=True)
class HttpConfig:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4  # attempts after the first
    backoff: float = 0.5  # first delay; doubles each retry, with jitter
    max_backoff: float = 30.0
    max_page_bytes: int = 64 * 1024 * 1024  # refuse index pages larger than this
    page_deadline: float = 120.0  # seconds for a whole page: a server dripping bytes never hits the read timeout


# Interactive queries (ls, conda ls, doctor --mirror): a person is waiting, so an unreachable
# host fails in seconds (two attempts, short timeouts) instead of a sync's patient retries.
QUERY_HTTP = HttpConfig(connect_timeout=3.0, read_timeout=10.0, retries=1, backoff=0.2, max_backoff=1.0)


# TORCHDEPOT_CONNECT_TIMEOUT=SECONDS caps every connect timeout above: for a network where an
# unreachable host should fail sooner, and for the tests' host that drops packets (they need not
# wait out 3 s per attempt to see how many attempts a command makes).
CONNECT_TIMEOUT_ENV = "TORCHDEPOT_CONNECT_TIMEOUT"
MAX_CONNECT_TIMEOUT = 600.0


def with_connect_cap(config: HttpConfig, environ: Mapping[str, str]) -> HttpConfig:
    """``config`` with its connect timeout capped by ``environ[CONNECT_TIMEOUT_ENV]`` when set."""
    raw = environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not raw:
        return config
    try:
        cap = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        cap = math.nan
    if not 0 < cap <= MAX_CONNECT_TIMEOUT:  # NaN fails too
        raise ParseError(f"{CONNECT_TIMEOUT_ENV}={raw[:32]!r}: not a number of seconds in (0, {MAX_CONNECT_TIMEOUT:g}]")
    return replace(config, connect_timeout=min(config.connect_timeout, cap))


def make_session(config: HttpConfig | None = None) -> Client:
    return Client(config or HttpConfig())


# Header numbers are bounded: a 5,000-digit value must not reach int() (it raises past
# Python's digit limit) nor make a sleep or a seek absurd.
_MAX_DIGITS = 19  # fits an int64 offset: far beyond any real file
MAX_RETRY_AFTER = 24 * 3600.0  # seconds; callers cap further (HttpConfig.max_backoff)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After`` (delay-seconds or an HTTP date) into seconds from now, in
    ``[0, MAX_RETRY_AFTER]``; None when absent or unparseable (never raises)."""
    if not value or len(value) > 64:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone accepts "²", which float() refuses
        return min(float(value), MAX_RETRY_AFTER) if len(value) <= _MAX_DIGITS else MAX_RETRY_AFTER
    try:
        dt = parsedate_to_datetime(value)
        return min(MAX_RETRY_AFTER, max(0.0, dt.timestamp() - time.time()))
    except (TypeError, ValueError, OverflowError, IndexError, OSError):
        return None


@dataclass(frozen=True)
class ContentRange:
    """A satisfied ``Content-Range: bytes first-last/total`` (``total`` None for ``*``)."""

    first: int
    last: int
    total: int | None

    @property
    def length(self) -> int:
        return self.last - self.first + 1


_CONTENT_RANGE = re.compile(r"bytes[ \t]+(\d{1,19})-(\d{1,19})/(\d{1,19}|\*)", re.ASCII)
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d{1,19})?[ \t]*-[ \t]*(\d{1,19})?", re.ASCII)


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a 206's ``Content-Range``; None when absent, malformed or inconsistent
    (first > last, or last beyond total). Never raises."""
    if not value or len(value) > 128:
        return None
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if first > last or (total is not None and last >= total):
        return None
    return ContentRange(first=first, last=last, total=total)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=a-b`` / ``a-`` / ``-n`` against a body of ``size`` bytes ->
    inclusive (first, last) clipped to the body; None when absent, malformed, multi-range
    or unsatisfiable (a server then answers 200 or 416). Never raises."""
    if not value or len(value) > 128 or size <= 0:
        return None
    m = _RANGE.fullmatch(value.strip())
    if not m or (m.group(1) is None and m.group(2) is None):
        return None
    if m.group(1) is None:  # suffix: the last n bytes
        n = int(m.group(2))
        return None if n == 0 else (max(0, size - n), size - 1)
    first = int(m.group(1))
    last = size - 1 if m.group(2) is None else min(int(m.group(2)), size - 1)
    if first >= size or first > last:
        return None
    return first, last


def stated_length(headers: Mapping[str, str]) -> int | None:
    """The body length a response's ``Content-Length`` states; None when it is absent or not a
    plain decimal number (a hostile server may send anything: ``int()`` also takes "²" or " 1_0")."""
    value = headers.get("Content-Length") or ""
    return int(value) if value.isascii() and value.isdigit() else None


def range_header(first: int, last: int | None = None) -> str:
    """``Range`` for bytes ``first..last`` inclusive (open-ended when ``last`` is None)."""
    return f"bytes={first}-" if last is None else f"bytes={first}-{last}"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: requests wraps urllib3's errors (in ``args``), which keep the
    socket error as ``reason`` or ``__cause__``. Bounded (a chain is short; a cycle stops)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [c for c in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(c, BaseException)]
    return seen


# (exception type, reason), most specific first: read from the exception's type and its causes,
# never from its message text
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (socket.gaierror, "DNS lookup failed"),
    (urllib3.exceptions.NameResolutionError, "DNS lookup failed"),
    (ConnectionRefusedError, "connection refused"),
    (http.client.RemoteDisconnected, "connection closed by server"),
    (ConnectionResetError, "connection reset"),
    (http.client.IncompleteRead, "body cut short by the server"),
    (urllib3.exceptions.IncompleteRead, "body cut short by the server"),
    (requests.Timeout, "timed out"),
    (TimeoutError, "timed out"),
)


def describe(exc: BaseException) -> str:
    """A short reason for a network failure (DNS, refused, timeout...)."""
    causes = _causes(exc)
    if any(isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) for e in causes):
        return "network unreachable"
    for kind, reason in _REASONS:
        if any(isinstance(e, kind) for e in causes):
            return reason
    return one_line(exc, 200)


class Client:
    """A thin wrapper over one :class:`requests.Session` (connection pooling)."""

    def __init__(self, config: HttpConfig):
        self.config = with_connect_cap(config, os.environ)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"torchdepot/{__version__}"
        # Sized for parallel downloads: one pool per host, enough connections for --jobs.
        self.size_pools(hosts=16, per_host=32)

    def size_pools(self, *, hosts: int, per_host: int) -> None:
        """Keep-alive pools for ``hosts`` hosts of ``per_host`` connections each (the fetcher
        sizes them to its connection caps so no socket is opened and thrown away)."""
        adapter = requests.adapters.HTTPAdapter(pool_connections=max(1, hosts), pool_maxsize=max(1, per_host),
                                                max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.config.connect_timeout, self.config.read_timeout)

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): exponential, jittered, capped;
        a server's ``Retry-After`` wins when longer, but never beyond ``max_backoff``."""
        delay = min(self.config.max_backoff, self.config.backoff * (2**attempt))
        delay = delay * (0.5 + random.random() / 2)  # jitter: spread retries of parallel jobs
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff))
        return delay

    def sleep_before_retry(self, attempt: int, retry_after: float | None = None, limit: float | None = None) -> None:
        delay = self.backoff_delay(attempt, retry_after)
        if limit is not None:
            delay = min(delay, max(0.0, limit))  # never sleep past a caller's deadline
        time.sleep(delay)

    def request(self, method: str, url: str, *, headers: dict | None = None, stream: bool = False,
                allow_redirects: bool = True, retries: int | None = None,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        """Send with bounded retries on connection errors and retryable statuses.

        Returns the final response (status < 400). Raises :class:`UpstreamError` naming
        the URL once retries are exhausted, :class:`HttpStatusError` for a status >= 400.
        ``retries`` overrides the config (the fetcher runs its own attempt loop).
        """
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise UpstreamError.at(url, "refusing non-HTTP URL", Reason.REFUSED)
        retries = self.config.retries if retries is None else max(0, retries)
        last = ""
        for attempt in range(retries + 1):
            try:
                resp = self.session.request(method, url, headers=headers, stream=stream,
                                            timeout=timeout or self.timeout, allow_redirects=allow_redirects)
            except requests.TooManyRedirects:
                raise UpstreamError.at(url, "too many redirects", Reason.REFUSED) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = describe(exc)
                if attempt < retries:
                    self.sleep_before_retry(attempt)
                    continue
                raise UpstreamError.at(url, f"{last} (after {attempt + 1} attempts)", Reason.UNREACHABLE) from None
            except requests.RequestException as exc:
                raise UpstreamError.at(url, describe(exc), Reason.UNREACHABLE) from None
            ra = retry_after_seconds(resp.headers.get("Retry-After"))
            if resp.status_code in RETRY_STATUSES and attempt < retries:
                last = f"HTTP {resp.status_code}"
                resp.close()
                self.sleep_before_retry(attempt, ra)
                continue
            if resp.status_code >= 400:
                status = resp.status_code
                resp.close()
                raise HttpStatusError.at_status(
                    url, f"HTTP {status}" + (f" (after {attempt + 1} attempts)" if attempt else ""), status, ra)
            return resp
        raise UpstreamError.at(url, last, Reason.UNREACHABLE)  # pragma: no cover - loop always returns/raises

    def get_bytes(self, url: str, *, headers: dict | None = None) -> tuple[bytes, dict]:
        """GET a whole (index-sized) body, capped at ``max_page_bytes``.

        ``file://`` URLs and directories are read from disk. Returns (body, headers)
        where headers carry ``content-type`` and the final ``url``.
        """
        if urllib.parse.urlsplit(url).scheme == "file":
            return read_file_url(url, self.config.max_page_bytes)
        resp = self.request("GET", url, headers=headers, stream=True)
        expired = threading.Event()
        watchdog = threading.Timer(self.config.page_deadline, cut_connection, args=(resp, expired))
        watchdog.daemon = True
        watchdog.start()
        try:
            declared = stated_length(resp.headers)
            if declared is not None and declared > self.config.max_page_bytes:
                raise UpstreamError.at(url, f"page of {declared} bytes exceeds the {self.config.max_page_bytes}-byte limit",
                                      Reason.REFUSED)
            chunks, total = [], 0
            for chunk in resp.iter_content(256 * 1024):
                total += len(chunk)
                if total > self.config.max_page_bytes:
                    raise UpstreamError.at(url, f"page exceeds the {self.config.max_page_bytes}-byte limit", Reason.REFUSED)
                chunks.append(chunk)
            meta = {k.lower(): v for k, v in resp.headers.items()}
            meta["url"] = resp.url
            meta["status"] = str(resp.status_code)
            if expired.is_set():
                raise UpstreamError.at(url, f"page not complete after {self.config.page_deadline:g} s; gave up",
                                       Reason.UNREACHABLE)
            return b"".join(chunks), meta
        except (requests.RequestException, OSError) as exc:
            if expired.is_set():
                raise UpstreamError.at(url, f"page not complete after {self.config.page_deadline:g} s; gave up",
                                       Reason.UNREACHABLE) from None
            raise UpstreamError.at(url, describe(exc), Reason.UNREACHABLE) from None
        finally:
            watchdog.cancel()
            resp.close()


def cut_connection(resp: requests.Response, expired: threading.Event) -> None:
    """Past the page deadline: shut the connection down, so the read blocked in the other
    thread returns (closing the response object alone does not wake a blocked recv)."""
    expired.set()
    try:
        # http.client.HTTPResponse -> the socket's descriptor; None (closed) raises AttributeError, caught below
        fd = resp.raw._fp.fileno()  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as sock:  # shutdown acts on the connection, not the fd
            sock.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError, ValueError):
        pass


def file_url_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    return Path(urllib.request.url2pathname(parts.path))


def read_file_url(url: str, limit: int) -> tuple[bytes, dict]:
    """Read a ``file://`` index page. A directory is listed as a find-links page."""
    path = file_url_path(url)
    try:
        if path.is_dir():
            index = path / "index.html"
            if index.is_file():
                path = index
            else:
                links = "".join(
                    f'<a href="{urllib.parse.quote(p.name)}">{p.name}</a>\n' for p in sorted(path.iterdir()) if p.is_file()
                )
                return f"<html><body>\n{links}</body></html>".encode(), {"content-type": "text/html", "url": path.as_uri() + "/"}
        size = path.stat().st_size
        if size > limit:
            raise UpstreamError.at(url, f"page of {size} bytes exceeds the {limit}-byte limit", Reason.REFUSED)
        return path.read_bytes(), {"content-type": "text/html", "url": url}
    except OSError as exc:
        raise UpstreamError.at(url, one_line(exc.strerror or exc),
                               Reason.NOT_FOUND if isinstance(exc, FileNotFoundError) else Reason.OTHER) from None
