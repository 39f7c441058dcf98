"""The pull-through cache behind ``torchdepot serve --pull-through``: what a client asks for
and the mirror lacks is fetched once from upstream, checked, published into the mirror, and
served from there.

Pages. ``/whl/<variant>/<project>/`` (and the aggregate ``/whl/<project>/``) is built by
merging the mirror's own page (it wins for a file name it has) with the project's links on
the upstreams (the PyTorch index bases, then the dependency indexes and find-links of the
user's pip configuration; a hashless wheel in a local find-links folder is hashed from disk,
a hashless remote one is not offered), read through the one :class:`~torchdepot.sources.upstream.UpstreamReader`
and screened by the same host policy and file-name rules as a sync. Only wheels whose link
declares a sha256 and that are not yanked are offered. Every link is relative (``../../../packages/<project>/<file>``):
no page ever names an upstream host. The merged page (HTML and its PEP 691 JSON twin, the
store's own writers) and what it offers (URL, sha256, size per path) are written under
``.torchdepot/pullthrough/`` and served until ``page_ttl`` passes or the mirror's own page
changes; an upstream that cannot be read then leaves the last page (or the mirror's own) in
service, and a page with neither is a 404.

Files. A miss under ``packages/`` that a served page offered is fetched by the sync's
:class:`~torchdepot.fetch.Fetcher` (partial file, size and sha256 check, rename into place):
journaled first, then its PEP 658 metadata written and both added to ``manifest.json`` under
the mirror's writer lock, as a sync publishes. Concurrent requests for one path share one
download (coalescing), which runs on its own thread, in one connection: a slow or vanished client
never holds it. Bytes that fail the check are never published.

A client waiting for a download is sent the bytes as they arrive (chunked); the response is
completed only when the download passed its check and the bytes sent hash to the declared
sha256, otherwise the connection closes without the last chunk. A failed file is answered
with its status (502 bad bytes, 503 unreachable) for ``down_for`` seconds without asking
upstream again.

Conda. ``conda/<channel>/<subdir>/repodata.json`` of a spec's channel is upstream's, fetched by
the sync's bounded reader (streamed; size, inflation and time capped; conditional on the cached
copy) at most once per ``page_ttl``, its ``info.base_url`` dropped and the mirror's own records
that upstream lacks spliced in as bytes: upstream's records are never parsed in Python, and the
result is checked by py-rattler's native reader before it is served. A package miss is looked up
in that file by package name (``SparseRepoData``, one name's records) and fetched like a wheel.

Degraded. ``offline`` serves only the mirror. An upstream failure marks upstream down for
``down_for`` seconds, during which misses are answered at once (503 for a file, the last
page for a page) instead of waiting on it again.

Misses. Every request the mirror could not answer from what it held (a page built or
refreshed from upstream, a file fetched or not available) is one JSON line in
``.torchdepot/misses.jsonl`` (bounded): time, kind, project, file, variant, outcome.
:func:`publish_misses` (``mirror --from-misses``) turns the files asked for into the
mirror's own index, so the next bundle carries them.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import rattler
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from torchdepot.errors import TorchdepotError, UpstreamError, load_json, one_line
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.fetch.engine import partial_path
from torchdepot.model.accel import accelerator_from_dir
from torchdepot.model.wheelname import split_variant_label
from torchdepot.net.hostpolicy import HostPolicy, screen_links
from torchdepot.net.http import Client, HttpConfig, file_url_path
from torchdepot.ship.serve import MirrorHandler, cache_control, content_type, negotiate
from torchdepot.sources.channel import RepodataCache, RepodataRefused, fetch_repodata
from torchdepot.sources.links import Link
from torchdepot.sources.pep691 import parse_response
from torchdepot.sources.repodata import RepodataError, parse_repodata, splice_repodata
from torchdepot.sources.upstream import UpstreamReader, findlinks_links, page_url, project_page
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import pages as pg
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import MirrorLock, atomic_write_bytes, safe_join, sha256_file
from torchdepot.store.simple_json import HTML_PAGE, JSON_MEDIA_TYPE, JSON_PAGE

# Pull-through answers a person's pip: an unreachable upstream must fail in seconds, not retry.
PULL_HTTP = HttpConfig(connect_timeout=2.0, read_timeout=20.0, retries=0, backoff=0.2, max_backoff=1.0,
                       page_deadline=60.0)
MISSES_MAX_BYTES = 32 * 1024 * 1024  # the miss log stops growing here (one line says so)
OFFERS_NAME = "offers.json"
CONDA_SOURCE_NAME = "source.json"  # the upstream mirror a served repodata came from; its time is the refresh's
REPODATA_NAME = "repodata.json"
SEQUENTIAL = 1 << 62  # split_bytes no file reaches: pull-through downloads are never in pieces
STREAM_CHUNK = 256 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_CONDA_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")  # conda-forge's ``_libgcc_mutex``
Outcome = Literal["fetched", "refreshed", "built", "missing", "offline", "upstream-down", "refused"]


@dataclass(frozen=True)
class Sources:
    """Where misses are read from: PyTorch index bases (failover order) with the channel's
    prefix (``""``, ``nightly/``), the dependency indexes of the pip configuration, and the
    host policy every URL and redirect must pass."""

    upstreams: tuple[str, ...]
    indexes: tuple[str, ...]
    policy: HostPolicy
    prefix: str = ""
    find_links: tuple[str, ...] = ()  # pip's find-links pages and folders (file:// URLs for local ones)
    conda: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (channel name, its mirrors) of the spec's conda section


@dataclass(frozen=True)
class Settings:
    page_ttl: float = 600.0  # seconds a built page is served before upstream is asked again
    offline: bool = False  # serve only what the mirror holds
    down_for: float = 30.0  # after an upstream failure, misses are answered at once for this long
    file_wait: float = 3600.0  # longest a request waits for its file's download
    downloads: int = 8  # files downloaded at once


@dataclass(frozen=True)
class Offer:
    """A file a served page lists that the mirror may not hold yet."""

    path: str  # packages/<project>/<file> (or the changed-bytes path)
    project: str
    filename: str
    url: str
    sha256: str
    size: int | None = None
    variant: str | None = None
    kind: Literal["wheel", "conda"] = "wheel"


@dataclass(frozen=True)
class Miss:
    time: str
    kind: Literal["page", "file"]
    project: str
    outcome: Outcome
    file: str | None = None
    variant: str | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Refusal:
    status: int
    why: str


@dataclass(frozen=True)
class Download:
    """A file being fetched: its result, where its bytes arrive, and what they must hash to."""

    future: Future[Path | Refusal]
    partial: Path
    sha256: str


def _open_sparse(base_url: str, subdir: str, path: Path, where: str) -> rattler.SparseRepoData:
    """py-rattler's native reader of ``path``: the whole file checked once (JSON depth bounded
    by serde), records then loaded per package name. Raises :class:`RepodataError`."""
    try:
        return rattler.SparseRepoData(rattler.Channel(base_url), subdir, str(path))
    except Exception as exc:  # serde's message names line and column
        raise RepodataError(f"{where}: not valid repodata JSON ({one_line(exc, 300)})") from None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the mirror's own page ------------------------------------------------------------------------
def _page_dir(variant: str | None, project: str) -> str:
    return f"{variant}/{project}" if variant else project


_LOCAL_BASE = "http://mirror.invalid/"  # the mirror's own pages are parsed as if served here


def local_files(root: Path, variant: str | None, project: str) -> list[pg.IndexFile]:
    """The files the mirror's live page ``whl/<variant>/<project>/`` lists (its PEP 691 twin
    when there is one, else the HTML), paths relative to the root; [] when it has none."""
    where = f"{L.INDEX_LINK}/{_page_dir(variant, project)}"
    for name, ctype in ((JSON_PAGE, JSON_MEDIA_TYPE), (HTML_PAGE, "text/html")):
        try:
            data = (root / where / name).read_bytes()
        except OSError:
            continue
        try:
            page = parse_response(data, ctype, f"{_LOCAL_BASE}{where}/")
        except (TorchdepotError, ValueError, RecursionError):
            continue
        out = []
        for link in page.links:
            if not link.url.startswith(_LOCAL_BASE) or not link.sha256:
                continue
            rel = urllib.parse.unquote(link.url[len(_LOCAL_BASE):])
            if not rel.startswith(f"{L.PACKAGES_DIR}/") or ".." in rel.split("/"):
                continue
            out.append(pg.IndexFile(project=project, filename=link.filename, path=rel, sha256=link.sha256,
                                    requires_python=link.requires_python, metadata_sha256=link.metadata_sha256,
                                    size=link.size, upload_time=link.upload_time, yanked=link.yanked))
        return out
    return []


def _hashed(link: Link) -> Link:
    """A find-links wheel on local disk without ``#sha256=``: its hash read from the file (pip
    reads the same folder); a remote one stays hashless and is not offered."""
    if link.sha256 or urllib.parse.urlsplit(link.url).scheme != "file":
        return link
    try:
        return replace(link, sha256=sha256_file(file_url_path(link.url))[0])
    except OSError:
        return link


def _wheel_of(link: Link, project: str) -> bool:
    if not link.filename.endswith(".whl") or not link.sha256:
        return False
    try:
        name = parse_wheel_filename(split_variant_label(link.filename)[0])[0]
    except (InvalidWheelFilename, TorchdepotError, ValueError):
        return False
    return canonicalize_name(name) == project


# -- the cache --------------------------------------------------------------------------------------
class PullThrough:
    """Pages and files of one mirror root, pulled from ``sources`` on a miss (thread-safe)."""

    def __init__(self, root: Path, sources: Sources, settings: Settings = Settings(), client: Client | None = None):
        self.root = Path(root).resolve()
        self.sources = sources
        self.settings = settings
        self.client = client or Client(PULL_HTTP)
        self.state = self.root / L.PULLTHROUGH_DIR
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._page_locks: dict[tuple[str, str], threading.Lock] = {}
        self._inflight: dict[str, Future[Path | Refusal]] = {}
        self._failed: dict[str, tuple[float, Refusal]] = {}  # path -> (until, why): recent failures
        self._downloads = ThreadPoolExecutor(max_workers=settings.downloads, thread_name_prefix="pullthrough")
        self._down_until = 0.0
        self._log_full = False
        self._sparse_lock = threading.Lock()
        # (channel, subdir) -> (mtime of the served repodata, its sparse reader): opened once per refresh
        self._sparse: dict[tuple[str, str], tuple[int, rattler.SparseRepoData]] = {}
        self.upstream_files = Counter[str]()  # downloads started per path (for tests and the bench)

    def close(self) -> None:
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- upstream health ----------------------------------------------------------------
    def _upstream_usable(self) -> bool:
        return not self.settings.offline and time.monotonic() >= self._down_until

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self.settings.down_for

    # -- pages --------------------------------------------------------------------------
    def page(self, variant: str | None, project: str, want: str) -> Path | None:
        """The page file to answer ``whl/<variant>/<project>/`` with (``want``: "json" or
        "html"), built or refreshed from upstream when due; None when there is none."""
        name = JSON_PAGE if want == "json" else HTML_PAGE
        built = self.state / L.INDEX_LINK / _page_dir(variant, project)
        own = self.root / L.INDEX_LINK / _page_dir(variant, project)
        with self._lock:
            lock = self._page_locks.setdefault((variant or "", project), threading.Lock())
        with lock:
            if self._due(built, own):
                self._build(variant, project, built)
        for d in (built, own):
            if (d / name).is_file():
                return d / name
        return None

    def _due(self, built: Path, own: Path, marker: str = OFFERS_NAME) -> bool:
        try:
            made = (built / marker).stat().st_mtime
        except OSError:
            return True
        for name in (JSON_PAGE, HTML_PAGE, REPODATA_NAME):
            with contextlib.suppress(OSError):
                if (own / name).stat().st_mtime > made:
                    return True  # the mirror's own page changed (a sync): merge again
        return time.time() - made > self.settings.page_ttl

    def _build(self, variant: str | None, project: str, dest: Path) -> None:
        local = local_files(self.root, variant, project)
        if not self._upstream_usable():
            if not (dest / OFFERS_NAME).is_file() and not local:
                self._record(Miss(time=_now(), kind="page", project=project, variant=variant,
                                  outcome="offline" if self.settings.offline else "upstream-down"))
            return
        try:
            links = self._upstream_links(variant, project)
        except UpstreamError:
            self._mark_down()
            if not (dest / OFFERS_NAME).is_file() and not local:
                self._record(Miss(time=_now(), kind="page", project=project, variant=variant, outcome="upstream-down"))
            return
        if links is None and not local:
            self._record(Miss(time=_now(), kind="page", project=project, variant=variant, outcome="missing"))
            return
        offers, files = self._merge(variant, project, local, links or [])
        acc = variant or "_"
        pages = pg.build_pages({acc: files})
        rel = _page_dir(variant, project)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (HTML_PAGE, JSON_PAGE):
            atomic_write_bytes(dest / name, pages[f"{rel}/{name}"] if variant else pages[f"{project}/{name}"])
        doc = {"offers": [asdict(o) for o in offers]}
        atomic_write_bytes(dest / OFFERS_NAME, (json.dumps(doc, indent=0, sort_keys=True) + "\n").encode())
        if offers:
            self._record(Miss(time=_now(), kind="page", project=project, variant=variant, outcome="built"))

    def _upstream_links(self, variant: str | None, project: str) -> list[Link] | None:
        """The project's links on every source (PyTorch bases first); None when no source has
        a page for it. Raises UpstreamError when no source could be read at all."""
        reader = UpstreamReader(self.client, self.sources.policy)  # one per build: pages are re-read per TTL
        bases = [page_url(b, self.sources.prefix.strip("/"), variant or "") for b in self.sources.upstreams]
        links: list[Link] | None = None
        errors: list[UpstreamError] = []
        for base in [*bases, *self.sources.indexes]:
            try:
                page = project_page(reader, base, project)
            except UpstreamError as exc:
                errors.append(exc)
                continue
            if page is not None:
                links = [*(links or []), *page.links]
        for url in self.sources.find_links:
            try:
                found = [_hashed(link) for link in findlinks_links(reader, url, project)]
            except UpstreamError as exc:
                errors.append(exc)
                continue
            if found:
                links = [*(links or []), *found]
        if links is None and errors and len(errors) == len(bases) + len(self.sources.indexes) + len(self.sources.find_links):
            raise errors[0]
        return links

    def _merge(self, variant: str | None, project: str, local: list[pg.IndexFile],
               links: list[Link]) -> tuple[list[Offer], list[pg.IndexFile]]:
        live = pub.live_manifest(self.root)
        by_path = live.by_path() if live is not None else {}
        journal = pub.load_journal(self.root)
        have = {f.filename for f in local}
        files = list(local)
        offers: list[Offer] = []
        screened = screen_links(links, self.sources.policy)
        for link in screened.kept:
            # a yanked file is left out: the store's pages cannot mark it yanked, and pip would then pick it
            if link.filename in have or not _wheel_of(link, project) or link.yanked is not None:
                continue
            have.add(link.filename)
            assert link.sha256 is not None
            default = f"{L.PACKAGES_DIR}/{project}/{link.filename}"
            try:
                path = pub.choose_path(default, pub.Claim(link.sha256, link.size), by_path, journal,
                                       lambda rel: (self.root / rel).exists())
            except TorchdepotError:
                continue
            held = by_path.get(path)
            meta = by_path.get(L.metadata_path(path)) if held is not None else None
            files.append(pg.IndexFile(project=project, filename=link.filename, path=path, sha256=link.sha256,
                                      requires_python=link.requires_python,
                                      metadata_sha256=meta.sha256 if meta is not None else None,
                                      size=held.size if held is not None else link.size,
                                      upload_time=link.upload_time))
            if held is None:
                offers.append(Offer(path=path, project=project, filename=link.filename, url=link.url,
                                    sha256=link.sha256, size=link.size, variant=variant))
        return offers, files

    # -- files --------------------------------------------------------------------------
    def offer(self, rel: str) -> Offer | None:
        """What the latest built page offers at ``rel`` (read from disk: a rebuilt page's offer,
        with upstream's current hash, is the one that counts; nothing accumulates in memory)."""
        parts = rel.split("/")
        if len(parts) == 4 and parts[0] == L.CONDA_DIR:
            return self._conda_offer(parts[1], parts[2], parts[3])
        if len(parts) >= 3 and parts[0] == L.PACKAGES_DIR:
            base = self.state / L.INDEX_LINK
            places = [*base.glob(f"*/{parts[1]}/{OFFERS_NAME}"), base / parts[1] / OFFERS_NAME]
        else:
            return None
        for place in places:
            for o in _read_offers(place):
                if o.path == rel:
                    return o
        return None

    def file(self, rel: str) -> Path | Refusal:
        """The published file at ``rel``, fetched now (and waited for) if a served page offered it."""
        got = self.start(rel)
        return self.wait(got) if isinstance(got, Download) else got

    def wait(self, dl: Download) -> Path | Refusal:
        try:
            return dl.future.result(timeout=self.settings.file_wait)
        except FutureTimeout:
            return Refusal(504, "upstream download still running; retry later")

    def start(self, rel: str) -> Path | Refusal | Download:
        """The published file at ``rel``, or its download (started now, or the one already
        running: one per path), or why neither."""
        target = self.root / rel
        if target.is_file():
            return target
        offer = self.offer(rel)
        parts = rel.split("/")
        project = parts[1] if len(parts) > 2 else ""
        if offer is None:
            self._record(Miss(time=_now(), kind="file", project=project, file=parts[-1], outcome="missing"))
            return Refusal(404, "not in this mirror, and no page this server built offers it")
        if not self._upstream_usable():
            outcome: Outcome = "offline" if self.settings.offline else "upstream-down"
            self._record(self._file_miss(offer, outcome))
            if self.settings.offline:
                return Refusal(404, "not in this mirror (serving offline)")
            return Refusal(503, "upstream unreachable; retry later")
        with self._lock:
            failed = self._failed.get(rel)
            if failed is not None and failed[0] > time.monotonic():
                return failed[1]  # failed a moment ago: said again at once, upstream is not asked again
            fut = self._inflight.get(rel)
            if fut is None:
                fut = self._downloads.submit(self._fetch, offer)
                self._inflight[rel] = fut
                self.upstream_files[rel] += 1
                fut.add_done_callback(functools.partial(self._done, rel))
        return Download(future=fut, partial=partial_path(self.root, rel), sha256=offer.sha256)

    def _done(self, rel: str, _fut: Future[Path | Refusal]) -> None:
        with self._lock:
            self._inflight.pop(rel, None)

    def _file_miss(self, offer: Offer, outcome: Outcome) -> Miss:
        return Miss(time=_now(), kind="file", project=offer.project, file=offer.filename, variant=offer.variant,
                    url=offer.url, sha256=offer.sha256, outcome=outcome)

    def _fetch(self, offer: Offer) -> Path | Refusal:
        """Download, check, publish one offered file (runs on the download pool)."""
        try:
            got = fetch_offer(self.root, offer, self.client, self.sources.policy, self._publish_lock)
        except Exception as exc:  # never lose the waiters to a bug: they get a status
            got = Refusal(500, f"pull-through error: {one_line(exc, 300)}")
        if isinstance(got, Refusal):
            now = time.monotonic()
            with self._lock:
                for rel in [r for r, (until, _why) in self._failed.items() if until <= now]:
                    del self._failed[rel]  # only recent failures are kept
                self._failed[offer.path] = (now + self.settings.down_for, got)
        if isinstance(got, Refusal) and got.status == 503:
            self._mark_down()
        elif isinstance(got, Path):
            self._stale(offer.project)
        self._record(self._file_miss(offer, "fetched" if isinstance(got, Path) else "refused"))
        return got

    # -- conda ---------------------------------------------------------------------------
    def repodata(self, channel: str, subdir: str) -> Path | None:
        """``conda/<channel>/<subdir>/repodata.json``: upstream's, with the mirror's own records
        added (refreshed at most once per ``page_ttl``); None when there is neither."""
        mirrors = dict(self.sources.conda).get(channel)
        own = self.root / L.CONDA_DIR / channel / subdir / REPODATA_NAME
        built = self.state / L.CONDA_DIR / channel / subdir / REPODATA_NAME
        if mirrors is not None:
            with self._lock:
                lock = self._page_locks.setdefault((f"conda:{channel}", subdir), threading.Lock())
            with lock:
                if self._due(built.parent, own.parent, CONDA_SOURCE_NAME) and self._upstream_usable():
                    self._build_repodata(channel, subdir, mirrors, own, built)
        for path in (built, own):
            if path.is_file():
                return path
        return None

    def _build_repodata(self, channel: str, subdir: str, mirrors: tuple[str, ...], own: Path, built: Path) -> None:
        """Fetch upstream's repodata through the sync's bounded reader (streamed, size, inflation
        and time capped, conditional on the cached copy), add the mirror's own records that
        upstream lacks (spliced as bytes: upstream's records are never parsed in Python), and
        check the result with py-rattler's native reader, which also bounds its depth."""
        cache = RepodataCache(self.root / L.PULLTHROUGH_CONDA_CACHE)
        try:
            got = fetch_repodata(self.client, channel, mirrors, subdir, cache)
        except RepodataRefused:  # a hostile body (a bomb, past its deadline), not a host that is down
            self._record(Miss(time=_now(), kind="page", project=f"conda:{channel}", variant=subdir,
                              outcome="refused"))
            return
        except UpstreamError:
            self._mark_down()
            self._record(Miss(time=_now(), kind="page", project=f"conda:{channel}", variant=subdir,
                              outcome="upstream-down"))
            return
        try:
            upstream = _open_sparse(got.base_url, subdir, got.path, got.url)
            extra = self._own_records(channel, subdir, own, upstream)
            splice_repodata(got.path, built, subdir, extra, got.url)
            _open_sparse(got.base_url, subdir, built, got.url)
        except RepodataError:
            self._record(Miss(time=_now(), kind="page", project=f"conda:{channel}", variant=subdir,
                              outcome="refused"))
            return
        with self._sparse_lock:
            self._sparse.pop((channel, subdir), None)
        atomic_write_bytes(built.parent / CONDA_SOURCE_NAME,  # last: its time is the refresh's
                           (json.dumps({"base_url": got.base_url, "url": got.url}, sort_keys=True) + "\n").encode())

    @staticmethod
    def _own_records(channel: str, subdir: str, own: Path, upstream: rattler.SparseRepoData) -> dict[str, dict]:
        """The mirror's own records (its published subset, small) whose files upstream does
        not list with the same sha256; those are added to what is served. A file name upstream
        lists with other bytes keeps upstream's record (one key per file name)."""
        try:
            local = parse_repodata(own.read_bytes(), channel, subdir, str(own)).records
        except (OSError, RepodataError):
            return {}
        listed: dict[str, str | None] = {}
        for name in sorted({rec.name for rec in local.values()}):
            with contextlib.suppress(Exception):  # rattler's InvalidPackageNameError: not upstream's
                for r in upstream.load_records(rattler.PackageName(name)):
                    listed[r.file_name] = r.sha256.hex() if r.sha256 is not None else None
        return {fn: dict(rec.raw) for fn, rec in local.items() if fn not in listed}

    def _conda_offer(self, channel: str, subdir: str, filename: str) -> Offer | None:
        """The served repodata's record for ``filename``, looked up by package name through
        py-rattler's sparse reader (one name's records, never the whole file), as an offer."""
        built = self.state / L.CONDA_DIR / channel / subdir / REPODATA_NAME
        try:
            src = load_json((built.parent / CONDA_SOURCE_NAME).read_bytes(), str(built.parent / CONDA_SOURCE_NAME))
            base_url = src["base_url"]
            stamp = built.stat().st_mtime_ns
        except (OSError, TorchdepotError, KeyError, TypeError):
            return None
        if not isinstance(base_url, str):
            return None
        stem = filename.removesuffix(".conda").removesuffix(".tar.bz2")
        name = stem.rsplit("-", 2)[0] if stem.count("-") >= 2 else None
        if name is None:
            return None
        with self._sparse_lock:
            held = self._sparse.get((channel, subdir))
            if held is None or held[0] != stamp:
                try:
                    held = (stamp, _open_sparse(base_url, subdir, built, str(built)))
                except RepodataError:
                    return None
                self._sparse[(channel, subdir)] = held
            try:
                records = held[1].load_records(rattler.PackageName(name))
            except Exception:  # rattler's InvalidPackageNameError: no such record
                return None
        for r in records:
            if r.file_name == filename and r.sha256 is not None:
                return Offer(path=f"{L.CONDA_DIR}/{channel}/{subdir}/{filename}", project=str(r.name.normalized),
                             filename=filename, url=f"{base_url}/{subdir}/{urllib.parse.quote(filename)}",
                             sha256=r.sha256.hex(), size=r.size, variant=f"conda:{channel}/{subdir}", kind="conda")
        return None

    def _stale(self, project: str) -> None:
        """The project's built pages are due: next time they list the file as the mirror's own
        (its stored hash and PEP 658 metadata). Until rebuilt they still serve, links unchanged."""
        base = self.state / L.INDEX_LINK
        for offers in [*base.glob(f"*/{project}/{OFFERS_NAME}"), base / project / OFFERS_NAME]:
            with contextlib.suppress(OSError):
                os.utime(offers, (0, 0))

    # -- the miss log -------------------------------------------------------------------
    def _record(self, miss: Miss) -> None:
        line = json.dumps({k: v for k, v in asdict(miss).items() if v is not None}, sort_keys=True) + "\n"
        path = self.root / L.MISSES_LOG
        with self._lock:
            if self._log_full:
                return
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                try:
                    if os.fstat(fd).st_size > MISSES_MAX_BYTES:
                        self._log_full = True
                        line = json.dumps({"time": miss.time, "kind": "log-full"}) + "\n"
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError:
                self._log_full = True  # a full disk must not fail the request: stop logging


def _read_offers(path: Path) -> list[Offer]:
    try:
        doc = load_json(path.read_bytes(), str(path))
        return [Offer(**o) for o in doc["offers"]]
    except (OSError, TorchdepotError, KeyError, TypeError):
        return []


def fetch_offer(root: Path, offer: Offer, client: Client, policy: HostPolicy,
                publish_lock: threading.Lock) -> Path | Refusal:
    """Fetch ``offer`` into ``root`` as a sync would: journaled, downloaded to a partial file,
    size and sha256 checked, renamed into place, metadata written, added to the manifest."""
    if policy.refusal(offer.url):
        return Refusal(502, f"{offer.url}: not allowed by the host policy")
    rel, meta_rel = offer.path, L.metadata_path(offer.path)
    with publish_lock:
        pub.record(root, [rel, meta_rel])
    # one connection, in order: the partial file is a prefix of the file, which clients may be streamed
    fetcher = Fetcher(root, client, jobs=1, attempts=2, allowed_hosts=set(policy.hostnames), progress=False,
                      split_bytes=SEQUENTIAL)
    result = fetcher.run([FetchItem(key=rel, urls=(offer.url,), sha256=offer.sha256, size=offer.size)]).results[0]
    if result.status == "failed":
        with publish_lock:
            pub.forget(root, [rel, meta_rel])
        why = one_line(result.error or "no detail", 200)
        if result.hash_mismatch or result.fetched_bytes:  # bytes arrived, and were not the declared ones
            return Refusal(502, f"upstream bytes failed the size/sha256 check; not stored ({why})")
        return Refusal(503, f"upstream unreachable ({why})")
    path = safe_join(root, rel)
    entries = [mf.FileEntry(path=rel, sha256=result.sha256 or offer.sha256, size=result.size, kind=offer.kind,
                            project=offer.project, version=_version(offer.filename) if offer.kind == "wheel" else None,
                            url=offer.url, upstream_sha256=offer.sha256)]
    if offer.kind == "wheel":
        try:
            meta_sha, _requires_python, meta_size = pg.ensure_metadata(root, rel, offer.project)
        except TorchdepotError as exc:  # the declared bytes are not a readable wheel: not published
            with publish_lock:
                with contextlib.suppress(OSError):
                    path.unlink()
                pub.forget(root, [rel, meta_rel])
            return Refusal(502, one_line(exc, 300))
        entries.append(mf.FileEntry(path=meta_rel, sha256=meta_sha, size=meta_size, kind="metadata",
                                    project=offer.project, version=_version(offer.filename)))
    with publish_lock:
        try:
            with MirrorLock(root, wait=30):
                live = pub.live_manifest(root) or mf.Manifest()
                # named in ``pulled``: a later sync keeps what pull-through published (sync/pulled.py)
                mf.save(root, replace(pub.widened(live, entries), pulled=sorted({*live.pulled, rel})))
                pub.forget(root, [rel, meta_rel])
        except TorchdepotError:
            pass  # a sync holds the mirror: the checked file is served, journaled; the sync's check settles it
    return path


def _version(filename: str) -> str | None:
    try:
        return str(parse_wheel_filename(split_variant_label(filename)[0])[1])
    except (InvalidWheelFilename, TorchdepotError, ValueError):
        return None


# -- the handler -------------------------------------------------------------------------------------
class PullThroughHandler(MirrorHandler):
    """:class:`MirrorHandler` with the cache in front of ``whl/`` pages and ``packages/`` files."""

    cache: PullThrough

    def _serve(self, body: bool) -> None:
        url = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        parts = [p for p in url.split("/") if p]
        if parts and parts[0] == L.INDEX_LINK and len(parts) in (2, 3) \
                and all(_SEGMENT.fullmatch(p) for p in parts[1:]) and url.endswith("/") \
                and not (len(parts) == 2 and accelerator_from_dir(parts[1]) is not None):
            variant = parts[1] if len(parts) == 3 else None
            project = str(canonicalize_name(parts[-1]))
            page = self.cache.page(variant, project, negotiate(self.headers.get("Accept")))
            if page is None:
                return self._error(404)
            self._served = f"pull-through {page.name}" if self.cache.state in page.parents else page.name
            return self._send_file(page, body, {"Vary": "Accept"})
        if len(parts) == 4 and parts[0] == L.CONDA_DIR and all(_CONDA_SEGMENT.fullmatch(p) for p in parts):
            if parts[3] == "repodata.json":
                path = self.cache.repodata(parts[1], parts[2])
                if path is None:
                    return self._error(404)
                return self._send_file(path, body)
            if parts[3].endswith((".conda", ".tar.bz2")) and not self.root.joinpath(*parts).exists():
                return self._miss("/".join(parts), body)
        if len(parts) >= 3 and parts[0] == L.PACKAGES_DIR and all(_SEGMENT.fullmatch(p) for p in parts) \
                and not self.root.joinpath(*parts).exists():
            return self._miss("/".join(parts), body)
        return super()._serve(body)

    def _miss(self, rel: str, body: bool) -> None:
        got = self.cache.start(rel)
        if isinstance(got, Download):
            if body and self.request_version == "HTTP/1.1" and not self.headers.get("Range"):
                return self._stream(got)
            got = self.cache.wait(got)
        if isinstance(got, Refusal):
            return self._error(got.status, {"Retry-After": "30"} if got.status in (503, 504) else None, got.why)
        return super()._serve(body)

    def _stream(self, dl: Download) -> None:
        """Send the file while it downloads (chunked): the bytes as they arrive, and the last
        chunk only once the download passed its check and what was sent hashes to the declared
        sha256. Otherwise the connection is closed without it, so a client never holds a
        complete response with bytes that failed the check."""
        self.send_response(200)
        self.send_header("Content-Type", content_type(dl.partial.name.removesuffix(".part")))
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", cache_control(self.path))
        self.end_headers()
        digest = hashlib.sha256()
        sent = 0
        fh = None
        try:
            while True:
                if fh is None:
                    with contextlib.suppress(OSError):
                        fh = open(dl.partial, "rb")  # noqa: SIM115 - closed in the finally below
                chunk = fh.read(STREAM_CHUNK) if fh is not None else b""
                if chunk:
                    self._chunk(chunk, digest)
                    sent += len(chunk)
                    continue
                if dl.future.done():
                    break
                if fh is not None and _replaced(fh, dl.partial):
                    raise _Restarted  # the download started over: what was sent may not be its prefix
                time.sleep(0.05)
            result = self.cache.wait(dl)
            if isinstance(result, Path):
                with open(result, "rb") as rest:
                    rest.seek(sent)
                    while chunk := rest.read(STREAM_CHUNK):
                        self._chunk(chunk, digest)
            if isinstance(result, Path) and digest.hexdigest() == dl.sha256:
                self.wfile.write(b"0\r\n\r\n")
                return None
            raise _Restarted
        except (_Restarted, OSError):
            self.close_connection = True  # incomplete: the client retries and finds the file (or the reason)
            return None
        finally:
            if fh is not None:
                fh.close()

    def _chunk(self, data: bytes, digest: hashlib._Hash) -> None:
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        digest.update(data)


class _Restarted(Exception):
    """A streamed response that must end incomplete."""


def _replaced(fh, path: Path) -> bool:
    """True when ``path`` now names another file than the open ``fh`` (a restarted download)."""
    try:
        return os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
    except OSError:
        return False  # renamed into place (or gone): the result says which


# -- miss log: read, summarise, publish -------------------------------------------------------------
def read_misses(root: Path, limit: int = MISSES_MAX_BYTES) -> list[Miss]:
    """The miss log of ``root`` ([] when there is none); malformed lines are skipped."""
    path = Path(root) / L.MISSES_LOG
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1024 * 1024)
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            doc = load_json(line, str(path))
            if isinstance(doc, dict) and doc.get("kind") in ("page", "file"):
                out.append(Miss(**doc))
        except (TorchdepotError, TypeError):
            continue
    return out


@dataclass(frozen=True)
class MissSummary:
    pages: int
    files: int
    fetched: int
    not_served: int
    projects: tuple[tuple[str, int], ...] = field(default=())  # most asked-for first

    def lines(self) -> list[str]:
        if not (self.pages or self.files):
            return []
        top = ", ".join(f"{p} ({n})" for p, n in self.projects[:10])
        return [f"pull-through misses: {self.files} file requests ({self.fetched} fetched from upstream, "
                f"{self.not_served} not served), {self.pages} pages built from upstream",
                f"  most asked for: {top}",
                "  turn them into mirrored content: torchdepot mirror --from-misses <this mirror>"]


def summarize(misses: Iterable[Miss]) -> MissSummary:
    misses = list(misses)
    files = [m for m in misses if m.kind == "file"]
    projects = Counter(m.project for m in misses if m.project)
    return MissSummary(pages=sum(1 for m in misses if m.kind == "page" and m.outcome == "built"),
                       files=len(files), fetched=sum(1 for m in files if m.outcome == "fetched"),
                       not_served=sum(1 for m in files if m.outcome != "fetched"),
                       projects=tuple(projects.most_common()))


@dataclass(frozen=True)
class MissesPublished:
    files: int  # files asked for that the new index lists
    fetched: int  # of them, fetched now (asked for but not yet fetched by serve)
    unknown: int  # file requests no page offered: nothing to mirror them from
    failed: tuple[str, ...]  # one line each
    generation: str | None  # the index generation now live (None: nothing to publish)


def publish_misses(root: Path, client: Client, policy: HostPolicy) -> MissesPublished:
    """``mirror --from-misses``: every file the miss log says was asked for (and a served page
    offered) becomes the mirror's own: fetched now if serve did not, then listed on the mirror's
    index pages (a new generation, swapped atomically), so ``bundle`` carries it."""
    root = Path(root).resolve()
    wanted: dict[str, Offer] = {}
    unknown = 0
    for m in read_misses(root):
        if m.kind != "file":
            continue
        if not (m.url and m.sha256 and m.file):
            unknown += 1
            continue
        project = str(canonicalize_name(m.project))
        path = f"{L.PACKAGES_DIR}/{project}/{m.file}"
        offer = Offer(path=path, project=project, filename=m.file, url=m.url, sha256=m.sha256, variant=m.variant)
        wanted.setdefault(path, offer)
    failed: list[str] = []
    fetched = 0
    lock = threading.Lock()
    live = pub.live_manifest(root) or mf.Manifest()
    held = live.by_path()
    ready: list[Offer] = []
    for offer in wanted.values():
        entry = held.get(offer.path)
        if entry is not None and entry.sha256 == offer.sha256:
            ready.append(offer)
            continue
        got = fetch_offer(root, offer, client, policy, lock)
        if isinstance(got, Refusal):
            failed.append(f"{offer.filename}: {got.why}")
            continue
        fetched += 1
        ready.append(offer)
    if not ready:
        return MissesPublished(files=0, fetched=0, unknown=unknown, failed=tuple(failed), generation=None)
    with MirrorLock(root, wait=30):
        held = (pub.live_manifest(root) or mf.Manifest()).by_path()
        variants = _live_variants(root)
        names = sorted(variants) or ["cpu"]
        for offer in ready:
            entry, meta = held.get(offer.path), held.get(L.metadata_path(offer.path))
            if entry is None:
                continue
            rp = None
            with contextlib.suppress(OSError):
                rp = pg.requires_python_of(safe_join(root, L.metadata_path(offer.path)).read_bytes())
            f = pg.IndexFile(project=offer.project, filename=offer.filename, path=offer.path, sha256=entry.sha256,
                             requires_python=rp, metadata_sha256=meta.sha256 if meta is not None else None,
                             size=entry.size)
            for acc in [offer.variant] if offer.variant else names:
                files = variants.setdefault(acc, [])
                if all(x.filename != f.filename for x in files):
                    files.append(f)
        gen, _changed = pg.publish(root, pg.build_pages(variants))
    return MissesPublished(files=len(ready), fetched=fetched, unknown=unknown, failed=tuple(failed), generation=gen)


def _live_variants(root: Path) -> dict[str, list[pg.IndexFile]]:
    """{variant: files} of the live index (every ``whl/<variant>/<project>/`` page)."""
    out: dict[str, list[pg.IndexFile]] = {}
    index = root / L.INDEX_LINK
    if not index.is_dir():
        return out
    for vdir in sorted(p for p in index.iterdir() if p.is_dir()):
        projects = [p for p in vdir.iterdir() if p.is_dir()]
        if accelerator_from_dir(vdir.name) is None and not projects:
            continue
        for pdir in sorted(projects):
            out.setdefault(vdir.name, []).extend(local_files(root, vdir.name, pdir.name))
    return out
