"""A regional operator's mirror: every torch release that matches ``releases:``, in one sync.

What Aliyun, SJTU or TUNA run is a copy of ``download.pytorch.org/whl/<acc>/`` for a range of
releases, not one resolved closure per machine. A spec with ``releases: "torch>=2.0"`` (and
``accelerators`` / ``pythons`` / ``platforms`` named, or ``[all]``) is synced here instead of
by the per-target pipeline (``sync/pip.py``):

1. *select* (:func:`select`): the accelerators are the spec's, or with ``[all]`` every one whose
   torch builds upstream's aggregate ``<base>/torch/`` page lists for a matching release (an
   upstream without that page: its find-links page, or the known accelerator folders its
   ``<base>/`` listing names). Per accelerator, from its own index ``<base>/<acc>/``, read as the
   per-target path reads it (``sources.upstream.locate_variant`` / ``variant_links``: a PEP 503
   tree's project pages, else the flat listing or find-links page filtered by project): every
   torch wheel of a matching release,
   every torchvision / torchaudio wheel of the paired release line (``resolve.pin.paired_prefix``),
   the spec's ``extra_packages``, and the dependency closure of all of them: each file's
   ``Requires-Dist`` (every marker but extras: a regional mirror serves every machine) matched
   against the same index's page of that project, all versions the requirement allows,
   transitively. No resolver runs: at thousands of (release x target) combinations uv per
   combination is not affordable, and upstream's per-variant pages already are the curated set
   its users install from. Python and platform filters apply to every file (``py3-none-any``
   and ``abi3`` wheels always fit). Dependencies are read once per (project, version, platform)
   per index, from PEP 658 ``.metadata`` (cached by hash in ``.torchdepot/metadata``) or by
   Range from the wheel's zip; a server that ignores Range sends the whole wheel (written under
   ``.torchdepot/whole/``), which the run's fetcher stores at once where step 4 looks for it
   (:class:`~torchdepot.sync.download.WholeReads`, at the :class:`Placement` item of its URL:
   checked against upstream's sha256, within the caps).
2. *bound*: more than ``max_files`` files, or more known bytes than ``max_bytes``, is one error
   before anything is downloaded (a size is known from the manifest, the index, or this run's
   Range probe or whole read; the others are counted as they arrive and checked again before
   publishing).
3. ``--dry-run`` stops here and prints the counts and bytes per accelerator.
4. *fetch*: files the committed manifest already lists from the same URL with the same claim
   are not requested again; a file step 1 read whole is that file's one download, joined, not
   sent again; new bytes behind a published name go to a new path (``store.publication``),
   journaled before they are written. What step 1 stored and this step does not use (all of
   it, when the run stops before this step) is removed, and ``.torchdepot/whole/`` emptied,
   when the sync ends, whatever the outcome.
5. *publish*: ``.metadata`` beside each wheel, one ``whl/<acc>/`` index per accelerator as
   upstream lays it out (generation swap), the manifest widened first and committed last. A file
   the last sync published that this one no longer selects (upstream stopped listing it, a page
   was missing, the spec narrowed) stays listed and indexed under its accelerator, said in one
   line, until ``--prune``: then it leaves the pages and the manifest, then the disk. Which
   accelerator listed which path is kept in ``.torchdepot/regional.json``.

The next sync re-reads pages conditionally, reads no metadata it has cached, downloads only
what is new, and rewrites nothing when nothing changed: when the files, the spec and the pages
it would build (by digest, ``.torchdepot/regional.json``) are those the last sync published and
its closing check passed, only the manifest's ``last_sync`` is written ("unchanged since the
closing check of ..."); ``verify-mirror`` re-checks on demand. State stays small: links and wheel
names, never file bodies (the bench checks the 300 MB goal).
"""

from __future__ import annotations

import dataclasses
import email.parser
import functools
import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from torchdepot.errors import TorchdepotError, UpstreamError, load_json, one_line
from torchdepot.fetch import FetchItem, FetchReport, FetchResult
from torchdepot.fetch.progress import ProgressCallback
from torchdepot.model.accel import accelerator_from_dir
from torchdepot.model.platforms import target_platform
from torchdepot.model.presets import Layout
from torchdepot.model.sizes import format_size
from torchdepot.model.wheelname import WheelFile
from torchdepot.net.http import Client, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.resolve.pin import paired_prefix
from torchdepot.site.landing import write_landing
from torchdepot.sources.links import Link
from torchdepot.sources.upstream import (
    UpstreamReader,
    layout_of,
    locate_variant,
    page_url,
    project_page,
    variant_links,
    wheels_on,
)
from torchdepot.sources.wheelmeta import (
    MAX_REQUIRES_DIST,
    KeepWhole,
    metadata_refusal,
    remote_metadata,
)
from torchdepot.spec.mirror import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, TORCH_PROJECTS, MirrorSpec
from torchdepot.store import cachefiles
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import MirrorLock, atomic_write_text, safe_filename, safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.pages import (
    build_pages,
    current_generation,
    ensure_metadata,
    page_count,
    publish,
    requires_python_of,
    wheel_metadata,
)
from torchdepot.sync import session
from torchdepot.sync.check import verify_published
from torchdepot.sync.download import WholeReads, check_fetched, make_fetcher
from torchdepot.sync.plan import channel_prefix
from torchdepot.sync.reads import Count, ReadProgress
from torchdepot.sync.result import Echo, MirrorResult, RunLog, sync_record

if TYPE_CHECKING:
    from torchdepot.fetch import Fetcher

ACC_JOBS = 4  # accelerators walked at once
PAGE_JOBS = 4  # pages or METADATA read at once per accelerator
_T = TypeVar("_T")
_R = TypeVar("_R")
MAX_DEPTH = 32  # dependency levels followed (a real closure is under 10)
MAX_PROJECTS = 5_000  # distinct projects per accelerator's closure
MAX_METADATA = 16 * 1024 * 1024


@dataclass(frozen=True)
class Chosen:
    """One file the regional mirror carries: where upstream has it and what it is."""

    project: str
    version: str
    link: Link
    platform: str = ""  # os-arch from the wheel's tags ("linux-x86_64", "any-any"): whose METADATA is read


@dataclass
class Selection:
    """What a regional sync mirrors: each file once (by URL), and per accelerator its URLs."""

    files: dict[str, Chosen] = field(default_factory=dict)
    listed: dict[str, list[str]] = field(default_factory=dict)  # accelerator -> URLs, page order
    missing: dict[str, set[str]] = field(default_factory=dict)  # dependency -> accelerators lacking it
    cache_used: set[str] = field(default_factory=set)  # metadata cache entries read or written


def _spec_set(text: str | None, prereleases: bool) -> SpecifierSet:
    try:
        return SpecifierSet(text or "", prereleases=prereleases or None)
    except InvalidSpecifier:
        return SpecifierSet("")


def _version(w: WheelFile) -> Version | None:
    try:
        return Version(w.public_version)
    except InvalidVersion:
        return None


def _fits(spec: MirrorSpec, w: WheelFile) -> bool:
    """The spec's Python and platform filters (``[all]``: none)."""
    if w.free_threaded and "pythons" not in spec.every:
        return False  # a spec names "3.13", never "3.13t": free-threaded builds come with [all]
    if spec.pythons and "pythons" not in spec.every:
        generic = "abi3" in w.abi_tags or any(not py.count(".") for py in w.pythons)
        if not generic and not any(py in spec.pythons for py in w.pythons):
            return False
    if spec.platforms and "platforms" not in spec.every and "any" not in w.platform_tags:
        tags = {t for p in spec.platforms for t in target_platform(p).pip_tags}
        if not any(t in tags for t in w.platform_tags):
            return False
    return True


def _newer(spec: MirrorSpec, link: Link) -> bool:
    if spec.exclude_newer is None or not link.upload_time:
        return False
    return link.upload_time > spec.exclude_newer.strftime("%Y-%m-%dT%H:%M:%S")


def requires_of(metadata: bytes) -> list[tuple[str, SpecifierSet]]:
    """(canonical name, specifier) of each ``Requires-Dist`` in a METADATA file (upstream's bytes:
    anything unparsable is skipped, never raised), every marker but an extra's followed: a
    regional mirror serves every platform's machines, and ``pip install torch`` takes no extra."""
    try:
        msg = email.parser.BytesParser().parsebytes(metadata[:MAX_METADATA], headersonly=True)
        lines = [str(t) for t in msg.get_all("Requires-Dist") or []]
    except (ValueError, TypeError, LookupError):  # a malformed header or charset
        return []
    out = []
    for text in lines[:MAX_REQUIRES_DIST]:
        try:
            req = Requirement(text)
        except (InvalidRequirement, ValueError):
            continue
        if req.marker is not None and "extra" in str(req.marker):
            continue
        out.append((str(canonicalize_name(req.name)), req.specifier))
    return out


def _audio_line(project: str, torch: str) -> str | None:
    """torchaudio's line for the releases the pin table leaves out: 2.0 -> 2.0, 1.13 -> 0.13."""
    parts = torch.split(".")
    if project != "torchaudio" or len(parts) < 2 or not parts[0].isdigit():
        return None
    return f"{parts[0]}.{parts[1]}" if parts[0] == "2" else f"0.{parts[1]}"


def discover_accelerators(spec: MirrorSpec, reader: UpstreamReader, base: str, prefix: str,
                          say: Echo) -> tuple[str, ...]:
    """``[all]``: every accelerator upstream lists a matching torch release for: read from the
    aggregate ``<index>/torch/`` page of a PEP 503 tree, else (a flat upstream, or a tree without
    that page) from the find-links page, or from each ``<index>/<acc>/`` the listing of
    ``<index>/`` names (known accelerator names only, ``model.accel``), read as the walk reads it."""
    if "accelerators" not in spec.every:
        return spec.accelerators
    releases = _spec_set(spec.releases, spec.channel.prerelease)
    index = _index(base, prefix)
    layout = layout_of(base)
    page = project_page(reader, index, "torch") if layout is Layout.SIMPLE else None
    candidates: list[tuple[str | None, Link, WheelFile]]
    if page is not None:
        where = page_url(index, "torch")
        candidates = [(None, link, w) for link, w in wheels_on(page.links, "torch")]
    else:
        where, candidates = _listed_torch(reader, base, prefix, layout)
    found = set(spec.accelerators)
    for listed_as, link, w in candidates:
        acc = w.accelerator.name if w.accelerator is not None else listed_as
        version = _version(w)
        if acc is None or (w.accelerator is not None and w.accelerator.flags) or version is None \
                or version not in releases:
            continue
        if _fits(spec, w) and not _newer(spec, link):
            found.add(acc)
    if not found:
        say(f"releases: {where} lists no torch{spec.releases} build for the spec's filters")
    return tuple(sorted(found))


def _map(fn: Callable[[_T], _R], items: list[_T]) -> list[_R]:
    """``fn`` over ``items`` with up to PAGE_JOBS at once: upstream is latency-bound, and the
    reader (one request per URL, thread-safe) serves a page to whoever asks first."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(PAGE_JOBS, len(items))) as pool:
        return list(pool.map(fn, items))


def _index(base: str, prefix: str) -> str:
    """The channel's index under an upstream (``<base>/<prefix>``, no trailing slash)."""
    return page_url(base, prefix.rstrip("/")).rstrip("/") if prefix.strip("/") else base.rstrip("/")


def _listed_torch(reader: UpstreamReader, base: str, prefix: str,
                  layout: Layout) -> tuple[str, list[tuple[str | None, Link, WheelFile]]]:
    """Where ``[all]`` read the accelerators of an upstream without an aggregate torch page, and
    the torch wheels found there (with the accelerator folder that listed each)."""
    if layout is Layout.FINDLINKS:
        page = reader.page(base)
        if page is None:
            raise TorchdepotError(f"releases: {base} does not exist, so 'accelerators: [all]' cannot be read "
                                  "from it; name the accelerators")
        return base, [(None, link, w) for link, w in wheels_on(page.links, "torch")]
    root = page_url(_index(base, prefix))
    listing = reader.page(root)
    names = sorted({acc.name for name in (listing.projects if listing is not None else [])
                    if (acc := accelerator_from_dir(name.strip("/"))) is not None and not acc.flags})
    if not names:
        raise TorchdepotError(f"releases: 'accelerators: [all]' needs upstream's aggregate page "
                              f"{page_url(_index(base, prefix), 'torch')} or a listing of {root} naming "
                              "<accelerator>/ folders; upstream has neither: name the accelerators")

    def torch_of(acc: str) -> list[tuple[str | None, Link, WheelFile]]:
        variant = locate_variant(reader, base, prefix, acc)
        links = variant_links(reader, variant, "torch") if variant is not None else None
        return [(acc, link, w) for link, w in wheels_on(links or [], "torch")]

    return root, [c for found in _map(torch_of, names) for c in found]


class Closure:
    """The per-accelerator walk: roots from the torch projects, then Requires-Dist, transitively."""

    def __init__(self, spec: MirrorSpec, reader: UpstreamReader, cache: Path | None, cache_writes: bool,
                 sel: Selection, say: Echo, root: Path, held: dict[str, mf.FileEntry] | None = None,
                 wholes: Wholes | None = None) -> None:
        self.spec, self.reader, self.cache, self.cache_writes, self.sel, self.say = \
            spec, reader, cache, cache_writes, sel, say
        self.wholes = wholes  # where a wheel read whole goes for the fetch step (None: a dry run)
        # stored path -> entry of the wheels the mirror holds (:func:`_held`): a hashless link's
        # METADATA is then cached by that hash and read from local disk, not by Range again
        self.root, self.held = root, held or {}
        self.held_by_url = {e.url: e for e in self.held.values() if e.url}
        # upstream URL -> its requirements, read once per run: a dependency every accelerator's
        # index lists (one URL) would otherwise have its METADATA read once per accelerator
        self._requires_of: dict[str, list[tuple[str, SpecifierSet]]] = {}
        self._url_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def accelerator(self, base: str, prefix: str, acc: str) -> None:
        """``acc``'s files on upstream ``base``, read the way the per-target path reads it
        (``sources.upstream.locate_variant``): a PEP 503 tree's project pages, else the flat
        listing ``<base>/<acc>/`` or a find-links page filtered by project."""
        variant = locate_variant(self.reader, base, prefix, acc)
        urls: list[str] = []
        seen: set[str] = set()
        prerelease = self.spec.channel.prerelease
        releases = _spec_set(self.spec.releases, prerelease)
        torch_versions: set[str] = set()
        todo: list[Chosen] = []

        def take(project: str, link: Link, w: WheelFile) -> None:
            if link.url in seen:
                return
            seen.add(link.url)
            urls.append(link.url)
            chosen = self.sel.files.setdefault(link.url, Chosen(project, w.version, link, f"{w.os}-{w.arch}"))
            todo.append(chosen)

        def links_of(project: str) -> list[Link]:
            return (variant_links(self.reader, variant, project) or []) if variant is not None else []

        def wheels(project: str) -> list[tuple[Link, WheelFile]]:
            return [(link, w) for link, w in wheels_on(links_of(project), project)
                    if (w.accelerator is None or (w.accelerator.name == acc and not w.accelerator.flags))
                    and _fits(self.spec, w) and not _newer(self.spec, link)]

        _map(links_of, [p.name for p in self.spec.packages])  # the pages read at once, then walked in order
        for pkg in self.spec.packages:  # torch first (spec order is TORCH_PROJECTS')
            project = pkg.name
            narrowed = _spec_set(pkg.constraint, prerelease) if pkg.constraint else None
            for link, w in wheels(project):
                version = _version(w)
                if version is None or (narrowed is not None and version not in narrowed):
                    continue
                if project == "torch":
                    if version not in releases:
                        continue
                    torch_versions.add(w.public_version)
                elif not self._paired(project, version, torch_versions):
                    continue
                take(project, link, w)
        if not torch_versions:
            self.say(f"releases: {acc}: no torch{self.spec.releases} wheel fits the spec's filters; skipped")
            return
        wanted: dict[str, list[SpecifierSet]] = {}
        for extra in self.spec.extra_packages:
            req = Requirement(extra)
            wanted.setdefault(str(canonicalize_name(req.name)), []).append(req.specifier)
        done_projects: set[str] = set(TORCH_PROJECTS)
        for _depth in range(MAX_DEPTH):
            for requires in _map(self._requires, self._one_per_version(todo)):
                for name, specifier in requires:
                    if name not in done_projects:
                        wanted.setdefault(name, []).append(specifier)
            todo = []
            fresh = {n: s for n, s in wanted.items() if n not in done_projects}
            if not fresh:
                break
            if len(done_projects) + len(fresh) > MAX_PROJECTS:
                raise TorchdepotError(f"releases: {acc}: the dependency closure names more than {MAX_PROJECTS} projects")
            _map(links_of, sorted(fresh))
            for name, specifiers in sorted(fresh.items()):
                done_projects.add(name)
                found = wheels(name)
                if not found:
                    self.sel.missing.setdefault(name, set()).add(acc)
                    continue
                for link, w in found:
                    version = _version(w)
                    if version is not None and any(version in _spec_set(str(s), prerelease) for s in specifiers):
                        take(name, link, w)
            wanted = {}
        self.sel.listed[acc] = urls

    @staticmethod
    def _paired(project: str, version: Version, torch_versions: set[str]) -> bool:
        line = ".".join(str(p) for p in version.release[:2])
        return any(line == (paired_prefix(project, tv) or _audio_line(project, tv)) for tv in torch_versions)

    @staticmethod
    def _one_per_version(chosen: Iterable[Chosen]) -> list[Chosen]:
        """One file per (project, version, platform) whose METADATA is read: a release's wheels
        for one platform share their Requires-Dist, but not across platforms (torch's Linux CUDA
        wheels name nvidia-* libraries, its Windows ones bundle them)."""
        out: dict[tuple[str, str, str], Chosen] = {}
        for c in chosen:
            key = (c.project, c.version, c.platform)
            if key not in out or (c.link.core_metadata and not out[key].link.core_metadata):
                out[key] = c
        return list(out.values())

    def _requires(self, c: Chosen) -> list[tuple[str, SpecifierSet]]:
        # links without a hash that share a stored path (a flat upstream's copy of filelock in
        # every <acc>/ folder) are one file to the mirror (``publication.choose_path``): read once
        key = c.link.url if c.link.sha256 else _default_path(c)
        with self._lock:
            lock = self._url_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._requires_of:
                data = self._metadata(c)
                self._requires_of[key] = [] if data is None else requires_of(data)
            return self._requires_of[key]

    def _metadata(self, c: Chosen) -> bytes | None:
        """The file's METADATA: the cache by hash, else its ``.metadata``, else by Range."""
        link = c.link
        declared = link.metadata_sha256 if link.core_metadata else None
        held = _held(c, self.held_by_url, self.held)
        sha = link.sha256 or (held.sha256 if held is not None else None)
        name = f"core-{declared}" if declared else f"wheel-{sha}" if sha and not link.core_metadata else None
        if name is not None and self.cache is not None:
            try:
                data = (self.cache / name).read_bytes()
                if declared is None or hashlib.sha256(data).hexdigest() == declared:
                    self.sel.cache_used.add(name)
                    return data
            except OSError:
                pass
        got: bytes | None
        try:
            if link.metadata_url:
                got = self.reader.metadata(link.metadata_url)
            elif held is not None and held.sha256 == sha and (local := safe_join(self.root, held.path)).is_file():
                got = wheel_metadata(local, c.project)  # the mirror's own copy of these bytes
            else:
                got = remote_metadata(self.reader, link.url, c.project,
                                      keep=self.wholes.keeper(c) if self.wholes is not None else None,
                                      spool=self.wholes.reads.dir if self.wholes is not None else None)
        except (UpstreamError, TorchdepotError) as exc:
            self.say(f"warning: {link.filename}: METADATA not readable ({one_line(exc)}); its dependencies are not followed")
            return None
        if got is None or len(got) > MAX_METADATA:
            return None
        data = got
        if (why := metadata_refusal(data)) is not None:
            self.say(f"warning: {link.filename}: {why}; its dependencies are not followed")
            return None
        if declared is not None and hashlib.sha256(data).hexdigest() != declared:
            self.say(f"warning: {link.filename}.metadata does not hash to the sha256 upstream declares; "
                     "its dependencies are not followed")
            return None
        if name is not None and self.cache is not None and self.cache_writes:
            try:
                cachefiles.write_entry(self.cache, name, data)
                self.sel.cache_used.add(name)
            except OSError:
                pass
        return data


def select(spec: MirrorSpec, reader: UpstreamReader, out: Path, dry_run: bool, say: Echo,
           listed: dict[str, mf.FileEntry] | None = None, wholes: Wholes | None = None) -> Selection:
    """Every file the regional mirror carries, from the first upstream (spec order) that answers;
    ``listed``: the committed manifest's files (their hashes and local copies serve hashless links);
    ``wholes``: where a wheel read whole goes (at the fetch item the placement gives it), so
    the fetch step joins it."""
    held = {path: e for path, e in (listed or {}).items() if e.kind == "wheel" and e.url and not e.hash_mismatch}
    prefix = channel_prefix(spec.channel)
    failures = []
    for base in spec.upstreams:
        sel = Selection()
        walk = Closure(spec, reader, out / L.METADATA_CACHE, not dry_run, sel, say, out, held, wholes)
        try:
            accs = discover_accelerators(spec, reader, base, prefix, say)
            with ThreadPoolExecutor(max_workers=max(1, min(ACC_JOBS, len(accs)))) as pool:
                list(pool.map(functools.partial(walk.accelerator, base, prefix), accs))
        except UpstreamError as exc:
            failures.append(one_line(exc))
            say(f"releases: upstream {base} unreachable ({exc.detail}); trying the next")
            continue
        for name, lacking in sorted(sel.missing.items()):
            say(f"releases: dependency {name} is not on the {', '.join(sorted(lacking))} index; not mirrored")
        # the order of a run that walked one accelerator at a time: the same on every run
        sel.listed = {acc: sel.listed[acc] for acc in accs if acc in sel.listed}
        sel.files = {url: sel.files[url] for urls in sel.listed.values() for url in urls}
        return sel
    raise TorchdepotError(f"releases: no upstream could be read ({failures[0] if failures else 'none named'})")


@dataclass(frozen=True)
class Counted:
    files: int
    new: int
    known_bytes: int
    unknown: int  # files whose size neither upstream nor the mirror states


def count(sel: Selection, previous: dict[str, mf.FileEntry], learned: dict[str, int] | None = None) -> Counted:
    """Files, new files and bytes of a selection: each file's size as the mirror holds it, else
    as the index states it, else as this run learned it (``learned``: a Range probe's total or a
    whole read, :meth:`UpstreamReader.learned_sizes`); a file of none of these is ``unknown``."""
    by_url = {e.url: e for e in previous.values() if e.url and e.kind == "wheel"}
    learned = learned or {}
    known = unknown = new = 0
    for url, c in sel.files.items():
        held = _held(c, by_url, previous)
        size = held.size if held is not None else c.link.size if c.link.size is not None else learned.get(url)
        new += held is None
        if size is None:
            unknown += 1
        else:
            known += size
    return Counted(files=len(sel.files), new=new, known_bytes=known, unknown=unknown)


def check_bounds(spec: MirrorSpec, counted: Counted) -> None:
    cap_files = spec.max_files or DEFAULT_MAX_FILES
    cap_bytes = spec.max_bytes or DEFAULT_MAX_BYTES
    if counted.files > cap_files:
        raise TorchdepotError(f"releases: {spec.releases} selects {counted.files:,} files, over max_files "
                              f"({cap_files:,}); narrow releases/accelerators/pythons/platforms or raise max_files")
    total = counted.known_bytes
    if total > cap_bytes:
        raise TorchdepotError(f"releases: {spec.releases} needs at least {format_size(total)}, over max_bytes "
                              f"({format_size(cap_bytes)}); narrow the spec or raise max_bytes")


def refuse_regional_out(out: Path) -> None:
    """A per-target sync into a regional mirror would drop every file no target needs: refused
    (one stat: the record only a regional sync writes)."""
    if (out / L.REGIONAL_RECORD).is_file():
        raise TorchdepotError(f"{out}: holds a regional mirror (releases:); sync it with its own spec, or give "
                              "this spec a new out directory")


@dataclass(frozen=True)
class Options:
    """How one regional sync runs (what :func:`sync_regional` was given)."""

    dry_run: bool
    prune: bool
    client: Client | None
    progress: bool | None
    pip_sources: PipSources | None
    on_progress: ProgressCallback | None
    wall_started: float  # time.time() at the start: the cache sweep's clock


def sync_regional(spec: MirrorSpec, *, out: Path, dry_run: bool = False, prune: bool = False,
                  client: Client | None = None, progress: bool | None = None, pip_sources: PipSources | None = None,
                  echo: Echo, wait: float | None = None, on_progress: ProgressCallback | None = None) -> MirrorResult:
    """One regional sync (see the module docstring); a dry run writes nothing under ``out``;
    ``prune`` removes the files this sync no longer selects (kept and listed otherwise)."""
    opts = Options(dry_run=dry_run, prune=prune, client=client, progress=progress, pip_sources=pip_sources,
                   on_progress=on_progress, wall_started=time.time())
    result = MirrorResult(out=out)
    log = RunLog(result, echo, mark=time.monotonic())
    if dry_run:
        return _run(spec, out, result, log, opts)
    out.mkdir(parents=True, exist_ok=True)
    with MirrorLock(out, wait):
        return _run(spec, out, result, log, opts)


def _run(spec: MirrorSpec, out: Path, result: MirrorResult, log: RunLog, opts: Options) -> MirrorResult:
    started = time.monotonic()
    dry_run, prune, client = opts.dry_run, opts.prune, opts.client
    own = client is None
    client = client or make_session()
    previous = pub.live_manifest(out) if (out / L.MANIFEST_NAME).is_file() else None
    if previous is not None and previous.targets:
        raise TorchdepotError(f"{out}: holds a per-target mirror ({len(previous.targets)} targets); a regional "
                              "mirror (releases:) goes into a new out directory")
    listed = previous.by_path() if previous is not None else {}
    fetcher: Fetcher | None = None
    wholes: WholeReads | None = None
    try:
        with Client(session.PROBE_CONFIG) as probe:
            edge = session.edge(spec, probe, opts.pip_sources)
            edge.reader.keep_pages(out / L.PAGE_CACHE, write=not dry_run)
            placement = Placement(out, listed)
            if not dry_run:  # before the selection: a wheel it reads whole is then stored once, where the fetch looks
                fetcher = make_fetcher(out, spec, client, edge.policy, opts.progress, opts.on_progress)
                wholes = WholeReads(out, spec, fetcher).open()
            reads = ReadProgress(edge.reader, opts.progress, "releases: pages and METADATA")
            try:
                sel = select(spec, edge.reader, out, dry_run, log.say, listed,
                             Wholes(reads=wholes, placement=placement) if wholes is not None else None)
            finally:
                reads.close()
            result.requests = edge.reader.request_counts()
            if wholes is not None and wholes.kept_files:  # what the fetch's bar will not count again
                log.say(f"releases: {wholes.kept_files} wheels ({format_size(wholes.kept_bytes)}) read whole for "
                        "their METADATA; kept for the fetch, not sent again")
            log.phase("select")
            counted = count(sel, listed, edge.reader.learned_sizes())
            for acc, urls in sel.listed.items():
                log.say(f"releases: {acc}: {len(urls)} files")
            log.say(f"releases: {counted.files} files over {len(sel.listed)} accelerators, {counted.new} new; "
                    f"{format_size(counted.known_bytes)} known"
                    + (f" (+{counted.unknown} files of a size upstream does not state)" if counted.unknown else ""))
            check_bounds(spec, counted)
            if fetcher is None:  # a dry run
                return result
            report, paths = _fetch(out, sel, placement, listed, fetcher)
            _release(fetcher, wholes, set(paths.values()), listed)
            fetcher = wholes = None  # its futures (one per file: ~20 MB at 11k files) not held through publish
            result.report = report
            log.phase("fetch")
            check_fetched(report, spec, log.say)
            if counted.unknown:  # every size is known now: the bound again, on what arrived
                check_bounds(spec, dataclasses.replace(counted, known_bytes=sum(r.size for r in report.results),
                                                       unknown=0))
            entries, index = _entries(out, sel, paths, report, listed, spec.fsync, opts.progress)
            if not prune and (kept := _carried(out, listed, entries, index, spec.fsync)):
                log.say(f"releases: kept {kept} files this sync no longer selects (upstream stopped listing them "
                        "or the spec narrowed); --prune removes them")
            unindexed = [p for p, e in listed.items() if p not in entries and e.kind in ("wheel", "metadata")]
            if not prune and unindexed:  # no record of their accelerator: listed, never deleted unasked
                entries.update((p, listed[p]) for p in unindexed)
                log.say(f"releases: kept {len(unindexed)} files the manifest lists but no index page can carry "
                        f"(no record of their accelerator in {L.REGIONAL_RECORD}); --prune removes them")
            manifest = _unchanged(out, spec, previous, entries, index, started) if previous is not None else None
            if manifest is not None:  # nothing to publish: the pages, files and closing check stand
                result.generation, result.verify = current_generation(out), "ok"
                mf.save(out, manifest)
                log.phase("publish")
            else:
                manifest = _publish(out, spec, previous, entries, index, result, log, started, opts.progress)
            result.manifest, result.files = manifest, manifest.files
            result.requests = edge.reader.request_counts()
            swept = cachefiles.sweep(out, {L.PAGE_CACHE: edge.reader.kept_page_names(),
                                           L.METADATA_CACHE: frozenset(sel.cache_used)}, opts.wall_started)
            if (line := swept.line()) is not None:
                log.say(line)
            return result
    finally:
        _release(fetcher, wholes, set(), listed)  # a run stopped before its fetch step: all it stored goes
        if own:
            client.close()
        result.seconds = time.monotonic() - started


def _release(fetcher: Fetcher | None, wholes: WholeReads | None, used: set[str],
             listed: dict[str, mf.FileEntry]) -> None:
    """The run's fetcher closed, and what its whole reads stored that the fetch step did not use
    (``used``: the stored paths it asked for) removed, their folder emptied."""
    if fetcher is not None:
        fetcher.close()
    if wholes is not None:
        wholes.discard(used, listed)
        wholes.clear()


def _publish(out: Path, spec: MirrorSpec, previous: mf.Manifest | None, entries: dict[str, mf.FileEntry],
             index: dict[str, list[IndexFile]], result: MirrorResult, log: RunLog, started: float,
             progress: bool | None) -> mf.Manifest:
    """Pages and manifest: the manifest widened before the new pages go live, committed after
    them; files no longer selected removed after the commit; the closing check recorded.
    ``progress``: as the fetch's, bars of the pages rendered, then written, then of the files checked."""
    listed = previous.by_path() if previous is not None else {}
    gone = sorted(p for p in listed if p not in entries and listed[p].kind in ("wheel", "metadata"))
    pub.record(out, gone)  # journaled before the commit: a kill leaves leftovers, not orphans
    if previous is not None:
        mf.save(out, pub.widened(previous, entries.values()))
    with Count(progress, page_count(index), "releases: index pages", "pages") as bar:
        pages = build_pages(index, on_step=bar.step)
    with Count(progress, len(pages), "releases: index pages written", "pages") as bar:
        result.generation, result.index_changed = publish(out, pages, on_step=bar.step)
    manifest = mf.Manifest(files=sorted(entries.values(), key=lambda e: e.path), spec=spec.to_data(),
                           last_sync=sync_record(started, "unchecked", ""))
    write_landing(out, manifest)
    mf.save(out, manifest)
    for path in gone:
        safe_join(out, path).unlink(missing_ok=True)
    pub.forget(out, [*gone, *entries])
    if gone:
        log.say(f"releases: removed {len(gone)} files no longer selected")
    log.phase("publish")
    check = verify_published(out, log.say, manifest=manifest, progress=progress, desc="releases: verify")
    result.verify = "ok" if check.ok else "NOT OK"
    manifest.last_sync = sync_record(started, result.verify, check.summary())
    mf.save(out, manifest)
    if check.ok:
        atomic_write_text(safe_join(out, L.REGIONAL_RECORD), json.dumps(
            {"index": _digest(index), "generation": result.generation,
             "listed": {acc: [f.path for f in files] for acc, files in index.items()}}) + "\n")
    return manifest


MAX_RECORD = 64 * 1024 * 1024  # the record is ours, but a mirror dir may hold anything


def _load_record(out: Path) -> dict[str, object] | None:
    """The last checked regional sync's record (digest, generation, paths per accelerator); None
    when there is none or it is not one (never fatal: the sync then publishes and writes it anew)."""
    try:
        path = safe_join(out, L.REGIONAL_RECORD)
        record = load_json(path.read_bytes(), str(path)) if path.stat().st_size < MAX_RECORD else None
    except (OSError, TorchdepotError):
        return None
    return record if isinstance(record, dict) else None


def listed_by_accelerator(out: Path) -> dict[str, tuple[str, ...]]:
    """Which paths each accelerator's index listed at the last checked regional sync ({} when
    there is no such record), for ``status``."""
    record = _load_record(out)
    listed = record.get("listed") if record is not None else None
    if not isinstance(listed, dict):
        return {}
    return {acc: tuple(p for p in paths if isinstance(p, str)) for acc, paths in listed.items()
            if isinstance(acc, str) and isinstance(paths, list)}


def _carried(out: Path, listed: dict[str, mf.FileEntry], entries: dict[str, mf.FileEntry],
             index: dict[str, list[IndexFile]], fsync: bool) -> int:
    """Files the last sync published that this one no longer selects (upstream dropped them, a
    page was missing, or the spec narrowed): kept, listed and indexed under their accelerator as
    before, until ``--prune``. Returns how many wheels were carried."""
    record = _load_record(out)
    by_acc = record.get("listed") if record is not None else None
    if not isinstance(by_acc, dict):
        return 0
    carried: set[str] = set()
    for acc, paths in by_acc.items():
        if not isinstance(acc, str) or not isinstance(paths, list):
            continue
        for path in paths:
            entry = listed.get(path) if isinstance(path, str) else None
            meta = listed.get(L.metadata_path(path)) if entry is not None else None
            if entry is None or meta is None or entry.kind != "wheel" or entry.project is None \
                    or (path in entries and path not in carried):
                continue
            facts = _listed_metadata(out, path, entry.sha256, listed) or \
                ensure_metadata(out, path, entry.project, fsync=fsync)
            index.setdefault(acc, []).append(IndexFile(
                project=entry.project, filename=posixpath.basename(path), path=path, sha256=entry.sha256,
                requires_python=facts[1], metadata_sha256=facts[0], size=entry.size, upload_time=entry.upload_time))
            entries[path], entries[meta.path] = entry, meta
            carried.add(path)
    return len(carried)


def _digest(index: dict[str, list[IndexFile]]) -> str:
    """What the pages are built from, as one sha256 (equal digests: equal pages)."""
    h = hashlib.sha256()
    for acc in sorted(index):
        for f in index[acc]:
            h.update(json.dumps([acc, f.project, f.filename, f.path, f.sha256, f.requires_python,
                                 f.metadata_sha256, f.size, f.upload_time]).encode())
    return h.hexdigest()


def _unchanged(out: Path, spec: MirrorSpec, previous: mf.Manifest, entries: dict[str, mf.FileEntry],
               index: dict[str, list[IndexFile]], started: float) -> mf.Manifest | None:
    """The committed manifest with this run's ``last_sync``, when this run would publish exactly
    what the last one did and checked (same spec, files, pages and live generation); else None."""
    last = previous.last_sync
    if last is None or last.verify != "ok" or previous.spec != spec.to_data() or previous.targets:
        return None
    if len(previous.files) != len(entries) or any(entries.get(f.path) != f for f in previous.files):
        return None
    record = _load_record(out)
    if record is None or record.get("generation") != current_generation(out) \
            or record.get("index") != _digest(index):
        return None
    return dataclasses.replace(previous, last_sync=sync_record(
        started, "ok", f"unchanged since the closing check of {last.finished}: {last.detail}"))


def _default_path(c: Chosen) -> str:
    """Where a file's bytes are stored unless other bytes hold that path (store.layout)."""
    return L.package_path(c.project, safe_filename(c.link.filename))


def _held(c: Chosen, by_url: dict[str, mf.FileEntry], listed: dict[str, mf.FileEntry]) -> mf.FileEntry | None:
    """The committed manifest's entry for ``c``'s bytes: the one of its URL, else, for a link with
    no hash, the one at its default path: the fetch keeps that file (``publication.choose_path``:
    no claim, nothing to disagree with), as a flat upstream copies filelock into every ``<acc>/``
    folder and the manifest names one URL."""
    held = by_url.get(c.link.url)
    if held is None and c.link.sha256 is None:
        held = listed.get(_default_path(c))
    return held


class Placement:
    """Upstream URL -> the :class:`FetchItem` its bytes are fetched as (stored path, claim,
    size), each chosen once under a lock: by the whole reads of the selection
    (:class:`~torchdepot.sync.download.WholeReads`, so their bytes land where the fetch step
    looks), then by the fetch step for the rest. The path is the listed one when the committed
    manifest holds this URL with the same claim, else one no published file holds other bytes
    at (``store.publication``); links without a claim whose stored name is the same (a flat
    upstream's copy of filelock in every ``<acc>/`` folder) share one path, so one file."""

    def __init__(self, out: Path, listed: dict[str, mf.FileEntry]) -> None:
        self.out, self.listed = out, listed
        self.by_url = {e.url: e for e in listed.values() if e.url and e.kind == "wheel"}
        self.journal, self.retired = pub.load_journal(out), pub.load_retired(out)
        self.items: dict[str, FetchItem] = {}
        self.taken: set[str] = set()
        self._lock = threading.Lock()

    def item(self, url: str, c: Chosen) -> FetchItem:
        with self._lock:
            if url not in self.items:
                path = self._path(url, c)
                self.taken.add(path)
                held = self.listed.get(path)
                claim = c.link.sha256 or (held.sha256 if held is not None and held.url == url else None)
                size = c.link.size or (held.size if held is not None else None)
                self.items[url] = FetchItem(path, (url,), claim, size)
            return self.items[url]

    def _path(self, url: str, c: Chosen) -> str:
        held = self.by_url.get(url)
        claim = pub.Claim(c.link.sha256, c.link.size)
        if held is not None and claim.agrees(held.upstream_sha256 or held.sha256, held.size) \
                and held.path not in self.taken:
            return held.path
        default, out = _default_path(c), self.out
        path = pub.choose_path(default, claim, self.listed, self.journal, lambda rel: safe_join(out, rel).exists(),
                               self.retired)
        if path in self.taken:  # one name from two URLs (rare): the second takes another free path
            path = pub.choose_path(default, claim, self.listed, self.journal - self.taken,
                                   lambda rel: rel in self.taken or safe_join(out, rel).exists(), self.retired)
        return path


@dataclass(frozen=True)
class Wholes:
    """A real run's wheels read whole (:class:`~torchdepot.sync.download.WholeReads`), each
    stored at its URL's :class:`Placement` item: where the fetch step looks for it."""

    reads: WholeReads
    placement: Placement

    def keeper(self, c: Chosen) -> KeepWhole:
        return self.reads.keeper(functools.partial(self.placement.item, c.link.url, c))


def _fetch(out: Path, sel: Selection, placement: Placement, listed: dict[str, mf.FileEntry],
           fetcher: Fetcher) -> tuple[FetchReport, dict[str, str]]:
    """Every selected file into its stored path; one this run already read whole joins the
    fetcher's result for it (:class:`~torchdepot.sync.download.WholeReads`), not sent again.
    The report holds the selected files only; with it, URL -> stored path."""
    items = [placement.item(url, c) for url, c in sel.files.items()]
    paths = {url: i.key for url, i in zip(sel.files, items, strict=True)}
    pub.record(out, [p for i in items for p in (i.key, L.metadata_path(i.key)) if i.key not in listed])
    report = fetcher.run(items)
    keys = set(paths.values())  # a whole read from an upstream given up on: not this run's
    return dataclasses.replace(report, results=[r for r in report.results if r.key in keys]), paths


def _entries(out: Path, sel: Selection, paths: dict[str, str], report: FetchReport, listed: dict[str, mf.FileEntry],
             fsync: bool, progress: bool | None = False) -> tuple[dict[str, mf.FileEntry], dict[str, list[IndexFile]]]:
    """Each selected wheel's manifest entries and index file; its ``.metadata`` read from the
    one the manifest lists, else written from the wheel's zip (a torch wheel's central directory:
    tens of ms, so thousands of wheels get a bar on a terminal: ``progress``)."""
    by_key = {r.key: r for r in report.results}
    entries: dict[str, mf.FileEntry] = {}
    files: dict[str, IndexFile] = {}
    with Count(progress, len(sel.files), "releases: .metadata", "wheels") as bar:
        for url, c in sel.files.items():
            _entry(out, url, c, paths[url], by_key, listed, fsync, entries, files)
            bar.step()
    index = {acc: [files[u] for u in urls] for acc, urls in sel.listed.items() if urls}
    return entries, index


def _entry(out: Path, url: str, c: Chosen, key: str, by_key: dict[str, FetchResult], listed: dict[str, mf.FileEntry],
           fsync: bool, entries: dict[str, mf.FileEntry], files: dict[str, IndexFile]) -> None:
    """One selected wheel (stored at ``key``) into ``entries`` and ``files``."""
    r = by_key[key]
    assert r.sha256 is not None  # check_fetched stopped the run at any file that did not arrive
    meta_sha, req_py, meta_size = _listed_metadata(out, key, r.sha256, listed) \
        or ensure_metadata(out, key, c.project, fsync=fsync)
    files[url] = IndexFile(project=c.project, filename=safe_filename(c.link.filename), path=key, sha256=r.sha256,
                           requires_python=req_py, metadata_sha256=meta_sha, size=r.size,
                           upload_time=c.link.upload_time)
    entries[key] = mf.FileEntry(path=key, sha256=r.sha256, size=r.size, kind="wheel", project=c.project,
                                version=c.version, url=r.url or url, upstream_sha256=r.upstream_sha256,
                                hash_mismatch=r.hash_mismatch, upload_time=c.link.upload_time)
    entries[L.metadata_path(key)] = mf.FileEntry(path=L.metadata_path(key), sha256=meta_sha, size=meta_size,
                                                 kind="metadata", project=c.project, version=c.version)


def _listed_metadata(out: Path, key: str, sha256: str,
                     listed: dict[str, mf.FileEntry]) -> tuple[str, str | None, int] | None:
    """The ``.metadata`` the committed manifest lists beside this very wheel, read from that
    small file (not the wheel's zip) while its bytes are the listed ones; None: write it anew."""
    wheel, meta = listed.get(key), listed.get(L.metadata_path(key))
    if wheel is None or meta is None or wheel.sha256 != sha256:
        return None
    try:
        data = safe_join(out, L.metadata_path(key)).read_bytes()
    except OSError:
        return None
    if len(data) != meta.size or hashlib.sha256(data).hexdigest() != meta.sha256:
        return None
    return meta.sha256, requires_python_of(data), len(data)

