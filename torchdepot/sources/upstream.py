"""The one reader of upstream for a run: index pages (any layout) and metadata files.

Every byte the sync learns about upstream comes through an :class:`UpstreamReader`:

- pages are asked for as PEP 691 JSON first and parsed by their Content-Type (PEP 503
  HTML otherwise; find-links pages and bare directory listings are HTML too);
- redirects are followed by hand and every hop must pass the host policy (host and
  port), so a mirror that redirects to a host nobody allowed is a missing page, counted;
- each URL is requested at most once per run (pages and metadata are cached, with one
  lock per URL so concurrent resolver requests never fetch the same page twice);
- pages kept between runs (:meth:`UpstreamReader.keep_pages`) are re-read conditionally
  (``If-None-Match``/``If-Modified-Since``); a 304 is served from the kept copy, counted as
  ``unchanged``; a kept copy is used only for the URL it was read from;
- a body is bounded in bytes (the caller's limit, a declared Content-Length checked first)
  and in time (the client's ``page_deadline`` for the whole body);
- a page that does not exist (HTTP 404/410 by :attr:`HttpStatusError.status`, or a
  missing ``file://`` path) is ``None``; other failures raise :class:`UpstreamError`;
- a watcher (:meth:`UpstreamReader.watch`, a progress display) is told of every http(s)
  read as its bytes arrive: pages, ``.metadata``, Range reads and wheels read whole.

The three upstream layouts (``model.presets.Layout``) are read by :func:`variant_links`.
A PyTorch-style index as a whole (``torchdepot ls``, ``doctor --mirror``: the aggregate
pages ``<base>/<project>/``, per-variant pages ``<base>/<acc>/<project>/``, the root page
listing projects or ``<acc>/`` directories) is read by :func:`crawl_wheels` and
:func:`root_page`, through the same reader: one request per page, the same policy.

PEP 825 variant channels (``/whl/variant/``, ``/whl/test/variant/``) put every accelerator's
wheels on one project page, told apart by the variant label in the file name (``-cuda12.8``,
``-null`` for CPU) and linked beside ``{name}-{version}-variants.json``. A variant there is
the channel's tree plus the label of the accelerator (:attr:`Variant.label`); its links are
the wheels of that label and the variants.json files (:func:`variant_links`), and
:meth:`UpstreamReader.fresh` reads a variants.json anew on every run, since PEP 825 says it
is not immutable.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal, Protocol

import requests
from packaging.utils import canonicalize_name

from torchdepot import __version__
from torchdepot.errors import ParseError, Reason, UpstreamError
from torchdepot.model.presets import Layout, preset_for
from torchdepot.model.wheelname import WheelFile, parse_wheel
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import (
    Client,
    HttpStatusError,
    cut_connection,
    describe,
    file_url_path,
    stated_length,
)
from torchdepot.sources.links import Link, Page, page_from_json, page_to_json, warnings_summary
from torchdepot.sources.pep691 import ACCEPT, parse_response
from torchdepot.sources.variants import is_variants_json

MISSING_STATUSES = frozenset({404, 410})
MAX_REDIRECTS = 10


class RefusedRedirect(UpstreamError):
    """A redirect to a URL the host policy refuses."""


def body_length(resp: requests.Response) -> int | None:
    """The bytes a response's body will bring, as stated (None: not stated, or encoded)."""
    return stated_length(resp.headers) if "Content-Encoding" not in resp.headers else None


class ReadWatch(Protocol):
    """What the reader tells a progress display about each read as it moves (the methods of
    ``fetch.progress.Progress``, which sync/ attaches): a read starts, its size once a response
    states it, its body bytes as they arrive, its end."""

    def add_file(self, size: int | None, key: str | None = None) -> None: ...

    def learn_size(self, size: int, key: str | None = None) -> None: ...

    def advance(self, n: int) -> None: ...

    def file_done(self, key: str, status: str, size: int | None = None) -> None: ...


class Read:
    """One read shown to a watcher (:meth:`UpstreamReader.reading`): its size once a response
    states it (:meth:`sized`), its body bytes as they arrive (:meth:`moved`), its end."""

    def __init__(self, watch: ReadWatch | None, key: str) -> None:
        self._watch, self._key = watch, key
        self.moved_bytes = 0
        self.ended = False

    def sized(self, resp: requests.Response) -> None:
        if self._watch is not None and (length := body_length(resp)) is not None:
            self._watch.learn_size(length, self._key)

    def moved(self, n: int) -> None:
        self.moved_bytes += n
        if self._watch is not None:
            self._watch.advance(n)

    def end(self) -> None:
        """The read ended well, with the bytes :meth:`moved` told of."""
        self.ended = True
        if self._watch is not None:
            self._watch.file_done(self._key, "downloaded", self.moved_bytes)


@dataclass(frozen=True)
class Body:
    data: bytes
    url: str  # final URL after redirects
    content_type: str | None
    status: int
    headers: dict


class UpstreamReader:
    """Cached, counted, policy-confined reads of upstream (thread-safe)."""

    def __init__(self, client: Client, policy: HostPolicy):
        self.client = client
        self.policy = policy
        self.counts: collections.Counter = collections.Counter()  # pages / metadata / ranges / wheels
        self.refused: collections.Counter = collections.Counter()  # redirect refusals by reason
        self._cache: dict[tuple[str, str], object] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        self._page_dir: Path | None = None  # pages kept between runs (keep_pages)
        self._page_writes = False
        self._fresh_reads = 0  # reads of files that are never kept (fresh): a run with one cannot be replayed
        self._revalidated: set[str] = set()  # pages upstream answered 304 for this run (revalidate)
        self._identities: dict[str, str] = {}  # URL -> what its page was this run (page_identity)
        self._sizes: dict[str, int] = {}  # file URL -> its size as a response stated it this run (note_size)
        self._watch: ReadWatch | None = None  # the progress display of the reads (watch)
        self._reads = 0  # reads started: each read's key for the display is unique

    # -- progress -------------------------------------------------------------------------
    def watch(self, watcher: ReadWatch | None) -> None:
        """Tell ``watcher`` about every http(s) read from now on (None: stop)."""
        with self._lock:
            self._watch = watcher

    @contextlib.contextmanager
    def reading(self, url: str) -> Iterator[Read]:
        """One http(s) read of ``url`` as the watcher sees it (:class:`Read`); it ends as failed
        unless :meth:`Read.end` was called in the block."""
        with self._lock:
            watch = self._watch
            self._reads += 1
            key = f"{self._reads}:{url}"
        read = Read(watch, key)
        if watch is not None:
            watch.add_file(None, key)
        try:
            yield read
        finally:
            if not read.ended and watch is not None:
                watch.file_done(key, "failed")

    # -- one request per URL ------------------------------------------------------------
    def _once(self, kind: str, url: str, load: Callable[[], object]):
        key = (kind, url)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                try:
                    self._cache[key] = load()
                except UpstreamError as exc:
                    self._cache[key] = exc
            got = self._cache[key]
        if isinstance(got, UpstreamError):
            raise got
        return got

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def get(self, url: str, kind: str, headers: dict | None = None, limit: int | None = None) -> Body | None:
        """GET ``url`` following redirects only to URLs the policy allows; None for a missing page.

        Uncached (callers cache): one call is one request per hop."""
        if urllib.parse.urlsplit(url).scheme == "file":
            self._count(kind)
            if not file_url_path(url).exists():
                return None
            data, meta = self.client.get_bytes(url)
            return Body(data, meta.get("url") or url, meta.get("content-type"), 200, meta)
        limit = limit or self.client.config.max_page_bytes
        with self.reading(url) as read:
            resp = self.open(url, kind, headers)
            if resp is None:
                read.end()
                return None
            read.sized(resp)
            return self._body(url, resp, limit, read)

    def _body(self, url: str, resp: requests.Response, limit: int, read: Read) -> Body:
        """``resp``'s whole body, bounded by ``limit`` bytes and the page deadline."""
        total = 0
        # a whole-body deadline: a server dripping a byte per recv never trips the read timeout
        deadline = self.client.config.page_deadline
        expired = threading.Event()
        watchdog = threading.Timer(deadline, cut_connection, args=(resp, expired))
        watchdog.daemon = True
        watchdog.start()
        gave_up = f"page not complete after {deadline:g} s; gave up"
        try:
            declared = stated_length(resp.headers)
            if declared is not None and declared > limit:
                raise UpstreamError.at(url, f"body of {declared} bytes exceeds the {limit}-byte limit",
                                       Reason.REFUSED)
            chunks: list[bytes] = []
            for chunk in resp.iter_content(256 * 1024):
                total += len(chunk)
                read.moved(len(chunk))
                if total > limit:
                    raise UpstreamError.at(url, f"body exceeds the {limit}-byte limit", Reason.REFUSED)
                chunks.append(chunk)
            if expired.is_set():
                raise UpstreamError.at(url, gave_up, Reason.UNREACHABLE)
            hdrs = {k.lower(): v for k, v in resp.headers.items()}
            read.end()
            return Body(b"".join(chunks), resp.url, hdrs.get("content-type"), resp.status_code, hdrs)
        except (OSError, requests.RequestException) as exc:
            if expired.is_set():
                raise UpstreamError.at(url, gave_up, Reason.UNREACHABLE) from None
            raise UpstreamError.at(url, describe(exc), Reason.UNREACHABLE) from None
        finally:
            watchdog.cancel()
            resp.close()

    def open(self, url: str, kind: str, headers: dict | None = None) -> requests.Response | None:
        """A streamed GET of an http(s) URL, every redirect hop checked against the policy;
        None for a missing page (404/410). The caller closes the response."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            why = self.policy.refusal(current)
            if why:
                with self._lock:
                    self.refused[why] += 1
                raise RefusedRedirect.at(url, f"redirect to {current} refused ({why})", Reason.REFUSED)
            self._count(kind)
            try:
                resp = self.client.request("GET", current, headers=headers, stream=True, allow_redirects=False)
            except HttpStatusError as exc:
                if exc.status in MISSING_STATUSES:
                    return None
                raise
            if not resp.is_redirect:
                if kind == "wheels" and resp.status_code == 200 and (length := body_length(resp)) is not None:
                    self.note_size(url, length)
                return resp
            current = urllib.parse.urljoin(current, resp.headers["Location"])
            resp.close()
        raise UpstreamError.at(url, f"more than {MAX_REDIRECTS} redirects", Reason.REFUSED)

    def keep_pages(self, folder: Path, *, write: bool = True) -> None:
        """Keep pages between runs in ``folder`` and re-read them conditionally
        (``If-None-Match``/``If-Modified-Since``): a page upstream answers 304 for costs no body.
        ``write``: False to only read the kept pages (a dry run leaves the mirror as it is)."""
        self._page_dir, self._page_writes = folder, write

    def page(self, url: str) -> Page | None:
        """The parsed page at ``url`` (JSON or HTML by Content-Type), None when it does not exist."""
        def load() -> Page | None:
            kept = self._kept_page(url)
            if kept is not None and url in self._revalidated:  # upstream said 304 this run already
                self._identify(url, kept)
                return self._kept_parse(url, kept) or parse_response(kept.data, kept.content_type, kept.url)
            headers = {"Accept": ACCEPT}
            if kept is not None:
                if kept.headers.get("etag"):
                    headers["If-None-Match"] = kept.headers["etag"]
                if kept.headers.get("last-modified"):
                    headers["If-Modified-Since"] = kept.headers["last-modified"]
            body = self.get(url, "pages", headers=headers)
            if body is None:
                self._identify(url, None)
                return None
            if body.status == 304 and kept is not None:
                self._count("unchanged")
                self._identify(url, kept)
                parsed = self._kept_parse(url, kept)
                if parsed is not None:
                    return parsed
                body = kept
            self._identify(url, body)
            page = parse_response(body.data, body.content_type, body.url)
            if body.status == 200:
                self._keep_page(url, body, page)
            return page

        return self._once("page", url, load)

    # A kept page is one file named by the URL's sha256: a JSON line (final URL, content type,
    # validators), a newline, then the body as upstream sent it.
    def _page_file(self, url: str) -> Path | None:
        if self._page_dir is None or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return None
        return self._page_dir / hashlib.sha256(url.encode()).hexdigest()

    def _kept_page(self, url: str) -> Body | None:
        path = self._page_file(url)
        try:
            raw = path.read_bytes() if path is not None else None
        except OSError:
            return None
        if not raw or b"\n" not in raw:
            return None
        head, _, data = raw.partition(b"\n")
        try:
            meta = json.loads(head)
        except (ValueError, RecursionError):
            return None
        if not isinstance(meta, dict) or meta.get("request") != url or not isinstance(meta.get("url"), str):
            return None
        hdrs = {k: v for k, v in meta.items() if k in ("etag", "last-modified") and isinstance(v, str)}
        ctype = meta.get("content-type") if isinstance(meta.get("content-type"), str) else None
        return Body(data, meta["url"], ctype, 200, hdrs)

    def _is_kept(self, url: str) -> bool:
        return self._kept_validators(url) is not None

    def _kept_validators(self, url: str) -> dict[str, str] | None:
        """The validators ``url``'s page is kept with (only the kept file's first line is read),
        None when it is not kept or kept without one."""
        path = self._page_file(url)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                meta = json.loads(fh.readline(64 * 1024))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(meta, dict) or meta.get("request") != url:
            return None
        got = {k: v for k, v in meta.items() if k in ("etag", "last-modified") and isinstance(v, str)}
        return got or None

    def revalidate(self, url: str) -> Literal["unchanged", "changed", "absent"]:
        """Ask upstream whether the kept page at ``url`` changed: "unchanged" (a 304 to its
        validators; the kept copy is not parsed until :meth:`page` asks for it, with no second
        request), "absent" (404/410), else "changed" (a page that is not kept counts as changed).
        A body that comes back (200) is parsed, kept and served by :meth:`page` as if read there
        (read once); when it is byte for byte the kept one (a server that re-stamps its validators
        without a change) the page is "unchanged" too."""
        kept = self._kept_validators(url)
        headers = {"Accept": ACCEPT}
        if kept is not None:
            if "etag" in kept:
                headers["If-None-Match"] = kept["etag"]
            if "last-modified" in kept:
                headers["If-Modified-Since"] = kept["last-modified"]
        body = self.get(url, "pages", headers=headers)
        if body is None:
            self._identify(url, None)
            self._settle(url, None)
            return "absent"
        if body.status == 304 and kept is not None:
            self._count("unchanged")
            with self._lock:
                self._revalidated.add(url)
            return "unchanged"
        if body.status == 200:
            before = self._kept_page(url) if kept is not None else None
            page = parse_response(body.data, body.content_type, body.url)
            self._keep_page(url, body, page)
            self._identify(url, body)
            self._settle(url, page)
            if before is not None and (before.data, before.url, before.content_type) == \
                    (body.data, body.url, body.content_type):
                return "unchanged"
        return "changed"

    def _settle(self, url: str, page: Page | None) -> None:
        with self._lock:
            self._cache.setdefault(("page", url), page)

    def _identify(self, url: str, body: Body | None) -> None:
        with self._lock:
            self._identities.setdefault(url, "absent" if body is None else _parse_tag(body))

    def page_identity(self, url: str) -> str:
        """What the page at ``url`` is this run, read as :meth:`page` reads it (once): the parser,
        final URL, content type and the body's sha256, or "absent". Equal identities are equal
        pages: what is derived from one page alone may be reused for the other."""
        self.page(url)
        with self._lock:
            got = self._identities.get(url)
        if got is None:
            # read by revalidate (a changed body, settled before page() ran): ask for the kept copy
            kept = self._kept_page(url)
            got = "unidentified" if kept is None else _parse_tag(kept)
        return got

    def _keep_page(self, url: str, body: Body, page: Page) -> None:
        path = self._page_file(url)
        validators = {k: body.headers[k] for k in ("etag", "last-modified") if body.headers.get(k)}
        if "last-modified" in validators and not _settled(validators["last-modified"], body.headers.get("date")):
            del validators["last-modified"]  # changed within the clock's resolution: may change again unseen
        if path is None or not self._page_writes or not validators:
            return  # nothing to revalidate with: the next run reads the page anew anyway
        head = json.dumps({"request": url, "url": body.url, "content-type": body.content_type, **validators})
        _write_kept(path, head.encode() + b"\n" + body.data)
        _write_kept(path.with_name(path.name + PARSED_SUFFIX), page_to_json(page, _parse_tag(body)))

    def _kept_parse(self, url: str, kept: Body) -> Page | None:
        """The parse of a kept page saved beside it, when it is of these very bytes and this parser."""
        path = self._page_file(url)
        try:
            data = path.with_name(path.name + PARSED_SUFFIX).read_bytes() if path is not None else None
        except OSError:
            return None
        return page_from_json(data, _parse_tag(kept)) if data else None

    def kept_page_names(self) -> frozenset[str]:
        """The kept-page file names (and their saved parses) of every page this run asked for:
        the entries of the page cache this run used (the cache sweep keeps them)."""
        with self._lock:
            urls = [url for kind, url in self._cache if kind == "page"]
        names: set[str] = set()
        for url in urls:
            path = self._page_file(url)
            if path is not None:
                names.update((path.name, path.name + PARSED_SUFFIX))
        return frozenset(names)

    def metadata(self, url: str) -> bytes | None:
        """A PEP 658 ``.metadata`` file (None when missing), fetched at most once."""
        def load() -> bytes | None:
            body = self.get(url, "metadata", limit=16 * 1024 * 1024)
            return None if body is None else body.data

        return self._once("metadata", url, load)

    def fresh(self, url: str, limit: int) -> bytes | None:
        """A file read anew (never cached: PEP 825's variants.json is not immutable); None when missing."""
        with self._lock:
            self._fresh_reads += 1
        body = self.get(url, "metadata", limit=limit)
        return None if body is None else body.data

    def revalidation_set(self) -> dict[str, bool] | None:
        """Every page this run read: URL -> True (kept with its validators: the next run asks
        upstream whether it changed) or False (upstream has none). None when a page cannot be
        revalidated so (a failed read, one kept without validators, a local file) or a file was
        read that is never kept (:meth:`fresh`): then only a whole run tells whether anything changed."""
        with self._lock:
            if self._fresh_reads:
                return None
            got = [(url, p) for (kind, url), p in self._cache.items() if kind == "page"]
        out: dict[str, bool] = {}
        for url, page in got:
            if page is None:
                out[url] = False
            elif isinstance(page, Page) and self._is_kept(url):
                out[url] = True
            else:
                return None
        return out

    def pages(self) -> list[Page]:
        """Every page read so far (for the refusal summary: each page's parser warnings)."""
        with self._lock:
            return [p for (kind, _url), p in self._cache.items() if kind == "page" and isinstance(p, Page)]

    def note_size(self, url: str, size: int) -> None:
        """A file's size as upstream stated it this run (a Range probe's ``Content-Range`` total,
        a whole read's ``Content-Length`` or length): the dry run's totals use it where the
        index gave none."""
        with self._lock:
            self._sizes[url] = size

    def learned_sizes(self) -> dict[str, int]:
        """URL -> size of every file :meth:`note_size` was told about this run (a copy)."""
        with self._lock:
            return dict(self._sizes)

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return {k: self.counts.get(k, 0) for k in ("pages", "unchanged", "metadata", "ranges", "wheels")}


PARSED_SUFFIX = ".parsed.json"


def _parse_tag(body: Body) -> str:
    """What a saved parse must match: the parser (this torchdepot), the body and its type."""
    digest = hashlib.sha256(body.data).hexdigest()
    return f"{__version__}:{body.content_type}:{body.url}:{digest}"


def _write_kept(path: Path, data: bytes) -> None:
    """A cache file: atomic, no fsync; a failed write only costs a full read next run."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _settled(last_modified: str, date: str | None) -> bool:
    """True when a page's ``Last-Modified`` is older than the second it was served in (plus
    one): a page written in the same second as it was read may change again within that
    second, and ``If-Modified-Since`` (one-second resolution) would miss it (git's "racily
    clean" rule)."""
    try:
        modified = parsedate_to_datetime(last_modified).timestamp()
        served = parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return modified < served - 1


# -- layouts ------------------------------------------------------------------------------
def layout_of(base: str) -> Layout:
    """A preset's layout, a ``.html`` URL is a find-links page, anything else a PEP 503 tree
    (:func:`variant_links` falls back to a flat listing when the tree has no project pages)."""
    preset = preset_for(base)
    if preset is not None:
        return preset.layout
    path = urllib.parse.urlsplit(base).path
    return Layout.FINDLINKS if path.endswith((".html", ".htm")) else Layout.SIMPLE


def wheels_on(links, project: str | None = None, accelerator: str | None = None,
              warnings: collections.Counter | None = None) -> list[tuple[Link, WheelFile]]:
    """The links that are wheels (of ``project`` when given; for ``accelerator`` when given and
    the file names one), parsed; what is skipped is counted in ``warnings`` by reason."""
    skipped: collections.Counter = warnings if warnings is not None else collections.Counter()
    want = canonicalize_name(project) if project else None
    out = []
    for link in links:
        if not link.filename.endswith(".whl"):
            skipped["not a wheel"] += 1
            continue
        try:
            wheel = parse_wheel(link.url)
        except ParseError:
            skipped["unparseable wheel filename"] += 1
            continue
        if want and wheel.name != want:
            skipped["wheel of another project"] += 1
            continue
        if accelerator and wheel.accelerator is not None and wheel.accelerator.name != accelerator:
            continue
        out.append((link, wheel))
    return out


def _of_project(links: list[Link], project: str, accelerator: str | None) -> list[Link]:
    """Wheels of ``project`` (for ``accelerator`` when the file names one) on a shared page."""
    return [link for link, _ in wheels_on(links, project, accelerator)]


@dataclass(frozen=True)
class Variant:
    """Where one accelerator's PyTorch files are: ``base`` read as ``layout``."""

    base: str  # the upstream as configured
    url: str  # the variant's own URL (tree root, listing, or the find-links page)
    layout: Layout
    accelerator: str
    label: str | None = None  # PEP 825 variant label on a variant channel (``cuda12.8``, ``null``)


def locate_variant(reader: UpstreamReader, base: str, prefix: str, accelerator: str) -> Variant | None:
    """Where ``accelerator`` lives on upstream ``base`` (None: this upstream lacks it).

    Raises UpstreamError when the upstream cannot be read at all."""
    base = base.rstrip("/")
    layout = layout_of(base)
    if is_variant_prefix(prefix) and layout is not Layout.FINDLINKS:
        return _locate_labelled(reader, base, prefix, accelerator)
    if layout is Layout.FINDLINKS:
        page = reader.page(base)
        if page is None or not _of_project(page.links, "torch", accelerator):
            return None
        return Variant(base, base, layout, accelerator)
    url = f"{base}/{prefix}{accelerator}"
    if layout is Layout.SIMPLE and reader.page(f"{url}/torch/") is not None:
        return Variant(base, url, Layout.SIMPLE, accelerator)
    listing = reader.page(f"{url}/")
    if listing is not None and _of_project(listing.links, "torch", accelerator):
        return Variant(base, url, Layout.FLAT, accelerator)
    if urllib.parse.urlsplit(base).scheme == "file" and file_url_path(base).is_dir():
        # a plain folder of wheels (no <accelerator>/ under it): read as find-links, as pip reads it
        folder = reader.page(base)
        if folder is not None and _of_project(folder.links, "torch", accelerator):
            return Variant(base, base, Layout.FINDLINKS, accelerator)
    return None


def is_variant_prefix(prefix: str) -> bool:
    """``variant/`` and ``test/variant/``: a PEP 825 channel (one tree, labels in file names)."""
    return prefix.rstrip("/").rsplit("/", 1)[-1] == "variant"


def label_of(links: list[Link], project: str, accelerator: str) -> str | None:
    """The variant label whose wheels of ``project`` build for ``accelerator`` (cu128 ->
    ``cuda12.8``, cpu -> ``null``), read from the file names; None when none does."""
    want = canonicalize_name(project)
    for link in links:
        if not link.filename.endswith(".whl"):
            continue
        try:
            wheel = parse_wheel(link.filename)
        except ParseError:
            continue
        if wheel.name == want and wheel.variant_label and wheel.accelerator is not None \
                and wheel.accelerator.name == accelerator:
            return wheel.variant_label
    return None


def _locate_labelled(reader: UpstreamReader, base: str, prefix: str, accelerator: str) -> Variant | None:
    url = f"{base}/{prefix.strip('/')}"
    page = reader.page(f"{url}/torch/")
    label = label_of(list(page.links), "torch", accelerator) if page is not None else None
    return None if label is None else Variant(base, url, Layout.SIMPLE, accelerator, label)


def _labelled(links: list[Link], label: str) -> list[Link]:
    """The wheels of one variant label and the variants.json files of a variant page."""
    out = []
    for link in links:
        if is_variants_json(link.filename):
            out.append(link)
            continue
        try:
            if link.filename.endswith(".whl") and parse_wheel(link.filename).variant_label == label:
                out.append(link)
        except ParseError:
            continue
    return out


def variant_links(reader: UpstreamReader, variant: Variant, project: str) -> list[Link] | None:
    """``project``'s links on the variant, None when the variant does not carry the project.

    On a variant channel: the wheels of the variant's label plus the variants.json links; a
    project without any labelled wheel (a plain dependency beside torch) keeps all its links."""
    if variant.label is not None:
        links = _simple_links(reader, variant, project)
        if links is None:
            return None
        labelled = _labelled(links, variant.label)
        has_variants = any(is_variants_json(link.filename) for link in links)
        return labelled if has_variants else links
    if variant.layout is Layout.SIMPLE:
        return _simple_links(reader, variant, project)
    page = reader.page(variant.url if variant.layout is Layout.FINDLINKS else f"{variant.url}/")
    links = _of_project(page.links, project, variant.accelerator) if page is not None else []
    return links or None


def _simple_links(reader: UpstreamReader, variant: Variant, project: str) -> list[Link] | None:
    page = project_page(reader, variant.url, project)
    return None if page is None else list(page.links)


def index_links(reader: UpstreamReader, index: str, project: str) -> list[Link]:
    """``project``'s links on a PEP 503/691 index (the user's dependency index); [] if absent."""
    page = project_page(reader, index, project)
    return [] if page is None else list(page.links)


def findlinks_links(reader: UpstreamReader, url: str, project: str) -> list[Link]:
    """``project``'s wheels on a find-links page or directory listing; [] if absent."""
    page = reader.page(url)
    return [] if page is None else _of_project(page.links, project, None)


# -- a PyTorch-style index as a whole ----------------------------------------------------------
def page_url(index: str, *segments: str) -> str:
    """``page_url("http://h/whl", "cu118", "torch")`` -> ``http://h/whl/cu118/torch/``."""
    quoted = "/".join(urllib.parse.quote(s.strip("/"), safe="") for s in segments if s)
    return f"{index.rstrip('/')}/{quoted}/" if quoted else f"{index.rstrip('/')}/"


def project_page(reader: UpstreamReader, index: str, project: str) -> Page | None:
    """The page ``<index>/<project>/``, None when the index has none.

    The name as given first (a root page's own spelling: the 2023 PyTorch capture keeps
    ``Jinja2/``; a resolver's names are already normalised), then its PEP 503 normalised
    form when that differs: one request when the name is the index's own."""
    page = reader.page(page_url(index, project))
    norm = str(canonicalize_name(project))
    if page is None and norm != project:
        page = reader.page(page_url(index, norm))
    return page


def root_page(reader: UpstreamReader, index: str) -> Page:
    """The root page ``<index>/``: its ``projects`` (project or ``<acc>/`` directories).

    Raises UpstreamError naming the URL when there is none."""
    url = page_url(index)
    page = reader.page(url)
    if page is None:
        raise UpstreamError.at(url, "not found", Reason.NOT_FOUND)
    return page


@dataclass(frozen=True)
class Crawl:
    """The wheels an index offers, with what was skipped on the way (counted by reason)."""

    items: tuple[tuple[Link, WheelFile], ...]
    warnings: collections.Counter
    pages: int  # project pages read

    def summary(self, index: str) -> str | None:
        """One line for everything skipped (None when nothing was)."""
        if not self.warnings:
            return None
        return f"{index}: skipped {sum(self.warnings.values())} entries ({warnings_summary(self.warnings)})"


def crawl_wheels(reader: UpstreamReader, index: str, projects: list[str] | None = None,
                 accelerators: list[str] | None = None) -> Crawl:
    """The wheels of ``projects`` on a PyTorch-style index (``http://host/whl``).

    ``accelerators=None`` reads the aggregate pages ``<index>/<project>/`` (a variant index
    such as ``.../whl/cu118`` is an index of its own); otherwise each ``<index>/<acc>/<project>/``.
    ``projects=None`` takes every project of the root page. A page that is missing or
    unreadable is counted ("page not available"), not fatal, unless it was the one page
    asked for or no page at all could be read: then UpstreamError names the URL. A URL on
    several pages (variant pages repeat the variant-less files) is kept once."""
    warnings: collections.Counter = collections.Counter()
    if projects is None:
        root = root_page(reader, index)
        warnings.update(root.warnings)
        projects = list(root.projects)
    bases = [index] if accelerators is None else [page_url(index, a) for a in accelerators]
    only_one = accelerators is None and len(projects) == 1
    seen: set[str] = set()
    items: list[tuple[Link, WheelFile]] = []
    pages, failures = 0, []
    for base in bases:
        for project in projects:
            try:
                page = project_page(reader, base, project)
                if page is None:
                    raise UpstreamError.at(page_url(base, project), "not found", Reason.NOT_FOUND)
            except UpstreamError as exc:
                if only_one:
                    raise
                failures.append(str(exc))
                warnings["page not available"] += 1
                continue
            pages += 1
            warnings.update(page.warnings)
            for link, wheel in wheels_on(page.links, project, warnings=warnings):
                if link.url not in seen:
                    seen.add(link.url)
                    items.append((link, wheel))
    if pages == 0 and failures:
        raise UpstreamError(failures[0] if len(failures) == 1
                            else f"no index page could be read ({failures[0]}; {len(failures) - 1} more)")
    return Crawl(items=tuple(items), warnings=warnings, pages=pages)
