"""The local view: the only index the resolver ever sees.

Per accelerator, a PEP 503 + PEP 658 index built from screened upstream links and
verified metadata, written under the run's work dir (``<acc>/<project>/index.html``,
``<acc>/files/<wheel>.metadata``) and served by a loopback HTTP server the run starts
(:func:`torchdepot.sync.viewserver.serve_view`). Pages are built on demand as the resolver asks for them, so only the
closure's pages are read, each once (the :class:`UpstreamReader` caches).

A whole run costs what changed: a project's screened links are derived from upstream's pages
once and kept (``<workdir>/.screens/``) with the identity of every page read (parser, URL,
content type, body sha256) and everything else they depend on (the screening code, variant,
dependency sources, host policy, upload cutoff); a later run whose pages have those identities
takes the links from its own reads of them instead of screening again. Anything else (a changed
or unreadable page, an entry that is odd or from other inputs, a source skipped as unreachable)
derives anew. What is added per run (the mirror's held copies, exclusions, known hashes) is
applied to every page as before, so a page's bytes are those a run without the entries builds.
Beside each entry is kept the sha256 of the page last built from it, with a digest of those
per-run additions: a run that reused the derivation under the same additions (and finds that
build's scratch file) takes the sha256 for the resolution cache's check without formatting the
page, which it builds only when the resolver asks for it (:meth:`View.page_digest`).

Invariants:
- a project's links come from the accelerator's PyTorch variant when it carries the
  project (its ``--index-url`` instructions: first index wins), else from the user's
  dependency sources (pip config: indexes and find-links, merged as pip does);
- every link passes one screen (:func:`torchdepot.net.hostpolicy.screen_links`: scheme,
  host and port, traversal, file-name validity, one name with two hashes); refusals are
  counted once per URL and reported in one summary line, never fatal;
- a view file is identified by name + sha256; the same file on another allowed source is
  an alternate (per-file failover for metadata here, for downloads in the fetch step);
- served metadata is the truth: upstream's ``.metadata`` when its declared hash agrees,
  else METADATA read from the wheel (Range reads). A disagreement is recorded; under
  ``on_hash_mismatch: fail`` it is one error line naming the file and both hashes;
- every URL the resolver returns maps back to a view file (:meth:`View.lookup`);
- PEP 825 variant wheels (a variant channel): the view shows the resolver only the target's
  label, under the file name without the label (``torch-2.10.0-cp311-cp311-linux_x86_64.whl``
  for ``...-null.whl``), with the variant markers of its METADATA evaluated for that label
  (:func:`torchdepot.sources.variants.evaluate_variant_markers`), so a resolver that knows
  neither labels nor variant markers resolves the target as the label's own index would;
  the recorded metadata hash stays that of the wheel's own METADATA. The project's
  ``{name}-{version}-variants.json`` links are kept (:meth:`View.variants_json`), read anew
  each run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import html
import json
import os
import shutil
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import requests
from packaging.utils import canonicalize_name

from torchdepot import __version__
from torchdepot.errors import ParseError, TorchdepotError, UpstreamError
from torchdepot.model.wheelname import WheelFile, parse_wheel, split_variant_label
from torchdepot.net.hostpolicy import HostPolicy, screen_links
from torchdepot.net.http import file_url_path
from torchdepot.sources.links import Link, Page, warnings_summary
from torchdepot.sources.upstream import (
    UpstreamReader,
    Variant,
    findlinks_links,
    index_links,
    variant_links,
)
from torchdepot.sources.variants import (
    MAX_VARIANTS_JSON,
    NULL_LABEL,
    VariantsJson,
    VariantsJsonError,
    evaluate_variant_markers,
    is_variants_json,
    parse_variants_json,
    variants_json_key,
)
from torchdepot.sources.wheelmeta import BadWheelError, metadata_refusal, remote_metadata
from torchdepot.store.fsutil import safe_filename, safe_join, sha256_file

Say = Callable[[str], None]
# (accelerator, view file, the file already read whole or None, its sha256) -> the whole file
# on local disk, downloaded once (hashed as it arrived); None when it is not kept or cannot be
# had. A real run's (sync/download.WholeReads) stores it in the mirror, where the fetch step
# joins it; without one, a dry run keeps it in the scratch view.
WholeFile = Callable[[str, "ViewFile", "Path | None", "str | None"], "Path | None"]


class MetadataMismatchError(TorchdepotError):
    """Upstream's .metadata disagrees with its declared hash under on_hash_mismatch: fail."""


def _uploaded_after(upload_time: str | None, cutoff: dt.datetime) -> bool:
    """True when upstream's upload time (ISO 8601) is after ``cutoff``; unknown or unparseable: False."""
    if not upload_time:
        return False
    try:
        when = dt.datetime.fromisoformat(upload_time.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when > cutoff


@dataclass(frozen=True)
class ViewFile:
    project: str  # canonical name
    filename: str
    link: Link  # the screened upstream link the resolver was shown
    label: str | None = None  # PEP 825 variant label, None for a plain wheel

    @property
    def shown(self) -> str:
        """The name the resolver sees: the file name without its variant label."""
        return split_variant_label(self.filename)[0] if self.label else self.filename


@dataclass(frozen=True)
class MetadataRecord:
    filename: str  # the wheel's file name
    sha256: str  # of the metadata the view served (and the mirror publishes)
    declared: str | None  # the hash upstream's page declared for its .metadata
    served: str | None  # the hash of upstream's .metadata bytes; None: missing or unreachable
    source: Literal["upstream", "wheel"]

    @property
    def mismatch(self) -> bool:
        return self.declared is not None and self.served is not None and self.served != self.declared


@dataclass(frozen=True)
class ViewSources:
    variants: tuple[tuple[str, Variant | None], ...]  # accelerator -> its PyTorch variant (None: pip config alone)
    indexes: tuple[str, ...]  # dependency indexes (PEP 503/691), priority order
    find_links: tuple[str, ...]  # find-links pages / directories

    def variant(self, accelerator: str) -> Variant | None:
        return dict(self.variants).get(accelerator)


@dataclass
class View:
    reader: UpstreamReader
    policy: HostPolicy
    sources: ViewSources
    workdir: Path
    on_hash_mismatch: str
    say: Say
    exclude_newer: dt.datetime | None = None  # files uploaded later are left out (those without a time stay)
    # (accelerator, project, screened links) -> the mirror's own copies to add: wheels it
    # published that upstream no longer lists (sync/tombstones.py); None: nothing added
    held: Callable[[str, str, list[Link]], list[Link]] | None = None
    base_url: str = ""
    # upstream URL -> sha256 of the bytes the mirror already holds from it (the previous
    # manifest): a link without a hash gets this one, so the resolver need not download a
    # published wheel again to hash it for the lock (a no-op re-sync stays a no-op)
    known_hashes: dict[str, str] = field(default_factory=dict)
    whole: WholeFile | None = None  # see WholeFile; None: downloaded into the work dir
    # upstream URL -> the wheel the mirror holds from it (the previous manifest): its METADATA
    # is read from local disk, not by Range requests across the link
    local_wheels: dict[str, Path] = field(default_factory=dict)
    metadata_cache: Path | None = None  # content-addressed METADATA kept between runs
    cache_writes: bool = True  # False in a dry run: the mirror is only read
    # the folder holding SCREENS_DIR (kept derivations); None: the work dir. A dry run's work dir
    # is a scratch one: it reads the mirror's (and writes none, as cache_writes says)
    screens: Path | None = None
    refused: collections.Counter = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    _files: dict[tuple[str, str], ViewFile] = field(default_factory=dict)
    _projects: dict[tuple[str, str], list[ViewFile]] = field(default_factory=dict)
    _metadata: dict[tuple[str, str], MetadataRecord] = field(default_factory=dict)
    _refused_urls: set[tuple[str, str]] = field(default_factory=set)
    _variants_links: dict[tuple[str, str], tuple[Link, ...]] = field(default_factory=dict)
    _variants_docs: dict[str, tuple[VariantsJson, bytes] | None] = field(default_factory=dict)
    _dead: set[str] = field(default_factory=set)
    _local_hashes: dict[str, str | None] = field(default_factory=dict)
    _pages: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    _wholes: dict[str, Path | None] = field(default_factory=dict)
    _wheels: dict[str, WheelFile] = field(default_factory=dict)
    _parsed: Mapping[str, WheelFile] = field(init=False)
    _code: str | None = None  # screen_code_digest(), once per run
    _digests: dict[tuple[str, str], str] = field(default_factory=dict)
    _screens: dict[tuple[str, tuple[Link, ...], bool],
                   tuple[tuple[Link, ...], tuple[Link, ...], tuple[tuple[str, str], ...]]] = field(default_factory=dict)
    _whole_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _derived: dict[tuple[str, str], _Derived] = field(default_factory=dict)
    # (accelerator, file name) -> why its bytes failed (not a zip, no METADATA, over a cap): the
    # file leaves the pages and the resolver runs again without it (sync/resolution.py)
    excluded: dict[tuple[str, str], str] = field(default_factory=dict)
    _cache_used: set[str] = field(default_factory=set)  # metadata cache entries read or written
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- links -------------------------------------------------------------------------
    def dependency_links(self, project: str, reader: UpstreamReader | None = None) -> list[Link]:
        """``project``'s links on every dependency source; an unreachable source is skipped (said once)."""
        reader = reader or self.reader
        out: list[Link] = []
        for kind, url in [("index", u) for u in self.sources.indexes] + [("find-links", u) for u in self.sources.find_links]:
            if url in self._dead:
                continue
            try:
                out += index_links(reader, url, project) if kind == "index" else findlinks_links(reader, url, project)
            except UpstreamError as exc:
                with self._lock:
                    if url not in self._dead:
                        self._dead.add(url)
                        self.say(f"dependency source {url} unreachable: {exc.detail}; skipping it")
        return out

    def _screen(self, links: list[Link], project: str, keep: list[Link] | None = None,
                refused: list[tuple[str, str]] | None = None) -> list[Link]:
        """The wheels of ``project`` that pass the screen; ``keep`` collects its variants.json links.

        Computed once per distinct list of links: every accelerator's page of a dependency
        (download.pytorch.org lists numpy under each ``/whl/<acc>/``) resolves to the same links."""
        key = (str(canonicalize_name(project)), tuple(links), keep is not None)
        with self._lock:
            hit = self._screens.get(key)
        if hit is None:
            found: list[Link] = []
            out, why = self._screen_once(links, project, found if keep is not None else None)
            hit = (tuple(out), tuple(found), tuple(why))
            with self._lock:
                self._screens[key] = hit
        self._count_refused(hit[2])
        if keep is not None:
            keep.extend(hit[1])
        if refused is not None:
            refused.extend(hit[2])
        return list(hit[0])

    def _count_refused(self, refused: Iterable[tuple[str, str]]) -> None:
        with self._lock:  # pages are shared between accelerators: count each refused URL once
            for url, why in refused:
                if (url, why) not in self._refused_urls:
                    self._refused_urls.add((url, why))
                    self.refused[why] += 1

    def _screen_once(self, links: list[Link], project: str,
                     keep: list[Link] | None) -> tuple[list[Link], list[tuple[str, str]]]:
        want = canonicalize_name(project)
        if keep is not None:  # variants.json links: the host policy and a safe name, like any file
            for link in links:
                if is_variants_json(link.filename) and (vkey := variants_json_key(link.filename)) \
                        and vkey[0] == want and not self.policy.refusal(link.url) \
                        and _safe_name(link.filename):
                    keep.append(link)
        links = [link for link in links if not is_variants_json(link.filename)]
        screened = screen_links(links, self.policy)
        out = []
        for link in screened.kept:
            if not link.filename.endswith(".whl"):
                continue  # sdists and other files: the mirror serves wheels only
            if self.exclude_newer is not None and _uploaded_after(link.upload_time, self.exclude_newer):
                continue
            wheel = self._wheels.get(link.url)  # the same URL on several accelerators' pages: parsed once
            if wheel is None:
                try:
                    wheel = parse_wheel(link.url)
                except ParseError:
                    continue
                with self._lock:
                    self._wheels[link.url] = wheel
            if wheel.name != want:
                continue
            out.append(link)
        return out, [(link.url, why) for link, why in screened.refused]

    @property
    def wheels(self) -> Mapping[str, WheelFile]:
        """URL -> its parsed file name, for every screened wheel so far (parsed once per run)."""
        return self._parsed

    def __post_init__(self) -> None:
        self._parsed = _Parsed(self._wheels)

    # -- a page's screened links, derived once per upstream page ----------------------------
    # A project's screened links (and variants.json links, and the links the screen refused)
    # depend only on the upstream pages read for it and on the inputs in _derive_key. Each is
    # kept as ``<workdir>/.screens/<sha256 of acc/project>.json``: those pages' identities
    # (UpstreamReader.page_identity: parser, URL, type, body sha256) and each kept link as its
    # position on them. A later run whose pages have the same identities takes the links from
    # its own reads of those pages instead of screening them again; anything else (a changed or
    # unreadable page, an odd file, a source skipped as unreachable) screens them anew.
    def _entry(self, accelerator: str, project: str) -> Path:
        """Where the derivation of ``project``'s page for ``accelerator`` is kept."""
        return (self.screens or self.workdir) / SCREENS_DIR / \
            (hashlib.sha256(f"{accelerator}/{project}".encode()).hexdigest() + ".json")

    def _screened(self, accelerator: str, project: str,
                  variant: Variant | None) -> tuple[list[Link], list[Link], _Derived]:
        with self._lock:
            if self._code is None:
                self._code = screen_code_digest()
        key = _derive_key(self._code, accelerator, project, variant, self.sources, self.policy, self.exclude_newer)
        path = self._entry(accelerator, project)
        got = self._reuse(path, key) if self._code else None
        if got is not None:
            kept, vjson, refused, entry = got
            self._count_refused(refused)
            return kept, vjson, _Derived(entry=entry, reused=True, derived=len(kept))
        kept, vjson, written = self._derive(accelerator, project, variant, key, path)
        return kept, vjson, _Derived(entry=written, reused=False, derived=len(kept))

    def _derive(self, accelerator: str, project: str, variant: Variant | None, key: str,
                path: Path) -> tuple[list[Link], list[Link], str | None]:
        """The screened links of ``project`` for ``accelerator`` from upstream's pages (kept for
        reuse), and the sha256 of the entry kept (None: none written)."""
        reads = _Recording(self.reader)
        reader = cast(UpstreamReader, reads)  # the sources read pages only (reader.page)
        refused: list[tuple[str, str]] = []
        links = variant_links(reader, variant, project) if variant else None
        vjson: list[Link] = []
        kept = self._screen(links, project, vjson, refused) if links else []
        if not kept:  # not on the PyTorch variant (or nothing usable there): the user's sources
            vjson = []
            kept = self._screen(self.dependency_links(project, reader), project, refused=refused)
        written = None
        if self.cache_writes and self._code and not self._dead and reads.complete:
            doc = reads.entry(key, kept, vjson, refused, self.reader)
            if doc is not None:
                with contextlib.suppress(OSError):  # a cache: a failed write costs a screen next run
                    write_scratch(path, doc)
                    written = hashlib.sha256(doc).hexdigest()
        return kept, vjson, written

    def _reuse(self, path: Path, key: str) -> tuple[list[Link], list[Link], list[tuple[str, str]], str] | None:
        """The links kept at ``path`` when its key and every page it was derived from are
        unchanged, and the sha256 of the entry (what a page built from them is kept under)."""
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_SCREENS_BYTES + 1)
            doc = json.loads(data) if len(data) <= MAX_SCREENS_BYTES else None
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key:
            return None
        reads, kept, vjson, refused = (doc.get(k) for k in ("reads", "kept", "vjson", "refused"))
        if not (isinstance(reads, list) and all(isinstance(r, list) and len(r) == 2
                                                 and all(isinstance(x, str) for x in r) for r in reads)
                and isinstance(refused, list) and all(isinstance(r, list) and len(r) == 2
                                                      and all(isinstance(x, str) for x in r) for r in refused)):
            return None
        pages = []
        try:
            for url, identity in reads:
                if self.reader.page_identity(url) != identity:
                    return None
                pages.append(self.reader.page(url))
        except UpstreamError:
            return None  # screened anew, where an unreachable source is said and skipped
        got_kept, got_vjson = _at(pages, kept), _at(pages, vjson)
        if got_kept is None or got_vjson is None:
            return None
        return got_kept, got_vjson, [(url, why) for url, why in refused], hashlib.sha256(data).hexdigest()

    def project(self, accelerator: str, project: str) -> list[ViewFile]:
        """The screened files of ``project`` for ``accelerator`` (computed once)."""
        project = str(canonicalize_name(project))
        key = (accelerator, project)
        with self._lock:
            if key in self._projects:
                return self._projects[key]
        variant = self.sources.variant(accelerator)
        kept, vjson, how = self._screened(accelerator, project, variant)
        if self.held is not None and variant is not None and not self._dead:  # read whole: absent means deleted
            kept = kept + self.held(accelerator, project, kept)
        label = variant.label if variant else None
        files = [ViewFile(project, link.filename, link, label if _label(link.filename) == label else None)
                 for link in kept]
        with self._lock:
            for f in files:
                self._files.setdefault((accelerator, f.filename), f)
                self._files.setdefault((accelerator, f.shown), f)
            self._projects[key] = files
            self._variants_links[key] = tuple(vjson)
            self._derived[key] = how
        return files

    def variants_json(self, accelerator: str, project: str, version: str) -> tuple[Link, VariantsJson, bytes] | None:
        """``{project}-{version}-variants.json`` beside the accelerator's variant wheels: its
        link, parsed content and bytes, read from upstream once per run (never from an
        earlier run: PEP 825 says it may change). None when upstream lists none."""
        project = str(canonicalize_name(project))
        with self._lock:
            links = self._variants_links.get((accelerator, project), ())
        link = next((lk for lk in links if variants_json_key(lk.filename) == (project, version)), None)
        if link is None:
            return None
        with self._lock:
            if link.url in self._variants_docs:
                got = self._variants_docs[link.url]
                return None if got is None else (link, *got)
        try:
            data = self.reader.fresh(link.url, MAX_VARIANTS_JSON + 1)
        except UpstreamError as exc:
            raise TorchdepotError(f"{link.filename}: cannot read it from upstream: {exc}") from None
        got = None
        if data is not None:
            sha = hashlib.sha256(data).hexdigest()
            if link.sha256 and sha != link.sha256:
                line = f"{link.filename}: upstream declares sha256 {link.sha256} but the file hashes to {sha}"
                if self.on_hash_mismatch == "fail":
                    raise MetadataMismatchError(f"{line} (on_hash_mismatch: fail)")
                self.say(f"warning: {line} (accepted: on_hash_mismatch warn; recorded in manifest.json)")
            try:
                got = (parse_variants_json(data, link.filename), data)
            except VariantsJsonError as exc:
                raise TorchdepotError(str(exc)) from None
        with self._lock:
            self._variants_docs[link.url] = got
        return None if got is None else (link, *got)

    def _properties(self, accelerator: str, vf: ViewFile) -> dict:
        """The properties of a view file's label, from the index-level variants.json."""
        if vf.label is None or vf.label == NULL_LABEL:
            return {}
        version = parse_wheel(vf.filename).version
        got = self.variants_json(accelerator, vf.project, version)
        props = got[1].properties(vf.label) if got else None
        if props is None:
            raise TorchdepotError(f"{vf.filename}: its label {vf.label!r} is not in upstream's "
                                  f"{vf.project}-{version}-variants.json")
        return props

    def alternates(self, accelerator: str, filename: str) -> tuple[Link, ...]:
        """The same file (name + sha256) on the dependency sources, for failover."""
        vf = self._files.get((accelerator, filename))
        if vf is None or not vf.link.sha256:
            return ()
        links = self._screen(self.dependency_links(vf.project), vf.project)
        return tuple(link for link in links if link.filename == filename and link.sha256 == vf.link.sha256
                     and link.url != vf.link.url)

    def served(self, accelerator: str) -> dict[str, list[ViewFile]]:
        """Every project page built for ``accelerator`` so far (what the resolver asked for)."""
        with self._lock:
            return {project: files for (acc, project), files in self._projects.items() if acc == accelerator}

    def lookup(self, url: str) -> ViewFile | None:
        """The view file behind a URL the resolver returned; None for anything else."""
        if not self.base_url or not url.startswith(self.base_url + "/"):
            return None
        parts = url[len(self.base_url) + 1:].split("/")
        if len(parts) != 3 or parts[1] != "files":
            return None
        return self._files.get((parts[0], urllib.parse.unquote(parts[2])))

    def lookup_shown(self, accelerator: str, rel: str) -> ViewFile | None:
        """The view file behind ``<acc>/files/<shown>`` (a cached resolution's URL)."""
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] != accelerator or parts[1] != "files":
            return None
        return self._files.get((accelerator, urllib.parse.unquote(parts[2])))

    # -- pages and metadata ---------------------------------------------------------------
    def page(self, accelerator: str, project: str) -> bytes | None:
        """A project's page, built and written once per run (the resolver and the resolution
        cache's digests both read it; its files and hashes do not change within a run)."""
        key = (accelerator, project)
        with self._lock:
            if key in self._pages:
                return self._pages[key]
        body = self._build_page(accelerator, project)
        with self._lock:
            self._pages[key] = body
        return body

    def page_digest(self, accelerator: str, project: str) -> str:
        """sha256 of a project's page ("absent" when it has none), computed once per run: the one
        kept from the run that built it when nothing its bytes depend on changed since
        (:meth:`_kept_digest`), else that of the page built now."""
        key = (accelerator, project)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
            body = self._pages.get(key)
        digest = self._kept_digest(accelerator, project) if body is None else None
        if digest is None:
            body = body if body is not None else self.page(accelerator, project)
            digest = hashlib.sha256(body).hexdigest() if body is not None else "absent"
        with self._lock:
            self._digests[key] = digest
        return digest

    # -- a page's digest, kept beside its derivation -------------------------------------------
    # Beside a derivation entry (``<sha>.json``) is kept ``<sha>.page``: the sha256, size and
    # mtime of the page last built from it, with a digest of everything else that went into
    # those bytes (:meth:`_page_inputs`). A later run that reused the derivation and whose
    # inputs digest and scratch file are the same takes that sha256 without formatting the
    # page; the page is built only when the resolver asks for it. Anything else builds it.
    def _page_rows(self, accelerator: str, files: list[ViewFile]) -> list[tuple[ViewFile, str | None] | None]:
        """Per file of a page: None when excluded this run, else the file and the sha256 its
        anchor shows (upstream's, else :meth:`_hash_of`)."""
        with self._lock:
            gone = [(accelerator, f.filename) in self.excluded for f in files]
        return [None if out else (f, f.link.sha256 or self._hash_of(f.link)) for f, out in zip(files, gone, strict=True)]

    def _page_inputs(self, accelerator: str, project: str, files: list[ViewFile],
                     rows: list[tuple[ViewFile, str | None] | None]) -> str | None:
        """sha256 over everything a page's bytes depend on besides the links of its derivation
        (which its entry's sha256 stands for: they are the links on upstream pages of the same
        identities, screened by the same code under the same inputs): the Python (its html and
        URL quoting), the variant label, the held copies added this run in full, the files
        excluded and the hashes this run supplied for links without one. None: no derivation
        entry, nothing to keep it beside."""
        with self._lock:
            how = self._derived.get((accelerator, project))
        if how is None or how.entry is None:
            return None
        variant = self.sources.variant(accelerator)
        doc = [sys.version, how.entry, variant.label if variant else None, how.derived, len(files),
               [[f.filename, f.label, *dataclasses.astuple(f.link)] for f in files[how.derived:]],
               [i for i, row in enumerate(rows) if row is None],
               [[i, row[1]] for i, row in enumerate(rows) if row is not None and not row[0].link.sha256]]
        return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()

    def _scratch_page(self, accelerator: str, project: str) -> Path:
        return safe_join(self.workdir, f"{accelerator}/{project}/index.html")

    def _kept_digest(self, accelerator: str, project: str) -> str | None:
        """The sha256 kept for the page built from this run's reused derivation under the same
        inputs, whose scratch file is the one that build left; None: build it (when in doubt)."""
        files = self.project(accelerator, project)
        with self._lock:
            how = self._derived.get((accelerator, project))
        if not files or how is None or not how.reused or how.entry is None:
            return None
        inputs = self._page_inputs(accelerator, project, files, self._page_rows(accelerator, files))
        try:
            with open(self._entry(accelerator, project).with_suffix(PAGE_SUFFIX), "rb") as fh:
                data = fh.read(MAX_PAGE_RECORD + 1)
            doc = json.loads(data) if len(data) <= MAX_PAGE_RECORD else None
            st = self._scratch_page(accelerator, project).stat()
        except (OSError, ValueError, RecursionError, TorchdepotError):
            return None
        if not (isinstance(doc, dict) and inputs is not None and doc.get("inputs") == inputs
                and doc.get("size") == st.st_size and doc.get("mtime_ns") == st.st_mtime_ns):
            return None
        sha = doc.get("sha256")
        return sha if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) \
            else None

    def _keep_digest(self, accelerator: str, project: str, inputs: str | None, body: bytes,
                     written: os.stat_result | None) -> None:
        """Keep the digest of a page just built (and written: ``written``) beside its derivation."""
        if inputs is None or written is None or not self.cache_writes:
            return
        doc = {"inputs": inputs, "sha256": hashlib.sha256(body).hexdigest(), "size": written.st_size,
               "mtime_ns": written.st_mtime_ns}
        with contextlib.suppress(OSError):  # a cache: a failed write costs a page built next run
            write_scratch(self._entry(accelerator, project).with_suffix(PAGE_SUFFIX),
                          json.dumps(doc, sort_keys=True).encode())

    def has_metadata(self, accelerator: str, filename: str) -> bool:
        """True once :meth:`metadata` recorded the file's metadata this run."""
        vf = self._files.get((accelerator, filename))
        with self._lock:
            return vf is not None and (accelerator, vf.filename) in self._metadata

    def _build_page(self, accelerator: str, project: str) -> bytes | None:
        files = self.project(accelerator, project)
        if not files:
            return None
        rows = self._page_rows(accelerator, files)  # one reading of the exclusions and hashes: the bytes and
        inputs = self._page_inputs(accelerator, project, files, rows)  # the digest kept for them agree
        anchors = []
        for row in rows:
            if row is None:
                continue
            f, sha256 = row
            link = f.link
            href = f"../files/{urllib.parse.quote(f.shown)}" + (f"#sha256={sha256}" if sha256 else "")
            attrs = f'href="{html.escape(href)}" data-core-metadata="true" data-dist-info-metadata="true"'
            if link.requires_python:
                attrs += f' data-requires-python="{html.escape(link.requires_python)}"'
            if link.yanked is not None:
                attrs += f' data-yanked="{html.escape(link.yanked)}"'
            if link.upload_time:
                attrs += f' data-upload-time="{html.escape(link.upload_time)}"'
            anchors.append(f"<a {attrs}>{html.escape(f.shown)}</a><br/>\n")
        body = ("<!DOCTYPE html>\n<html><body>\n" + "".join(anchors) + "</body></html>\n").encode()
        written = write_scratch(self._scratch_page(accelerator, project), body)
        self._keep_digest(accelerator, project, inputs, body, written)
        return body

    def metadata(self, accelerator: str, filename: str) -> bytes | None:
        """Verified METADATA for a view file (None: unknown file, or refused under fail)."""
        vf = self._files.get((accelerator, filename))
        if vf is None:
            return None
        filename = vf.filename  # the record is the wheel's own; the page showed vf.shown
        path = safe_join(self.workdir, f"{accelerator}/files/{safe_filename(vf.shown)}.metadata")
        with self._lock:
            if (accelerator, filename) in self.excluded:
                return None
            if (accelerator, filename) in self._metadata:
                return path.read_bytes()
        got = self._cached_metadata(vf)
        if got is None:
            fresh, seen = self._fresh_metadata(accelerator, vf)
            if fresh is None or seen is None:
                return None
            got = fresh, seen
        data, record = got
        if vf.label is not None:  # the resolver sees the label's view of the variant markers
            data = evaluate_variant_markers(data, vf.label, self._properties(accelerator, vf))
        write_scratch(path, data)
        with self._lock:
            self._metadata[(accelerator, filename)] = record
        return data

    # The metadata cache (``.torchdepot/metadata/``), content-addressed so an entry can never
    # be stale: ``core-<sha256>`` holds upstream .metadata bytes that hash to the name (checked
    # again on reading); ``wheel-<sha256>`` holds the METADATA inside the wheel of that sha256.
    def _cached_metadata(self, vf: ViewFile) -> tuple[bytes, MetadataRecord] | None:
        link = vf.link
        declared = link.metadata_sha256
        if link.core_metadata and declared:
            data = self._cache_read(f"core-{declared}")
            if data is not None and hashlib.sha256(data).hexdigest() == declared:
                return data, MetadataRecord(vf.filename, declared, declared, declared, "upstream")
            return None
        if link.core_metadata:
            return None  # upstream's .metadata without a hash: read it (it may disagree with the wheel)
        sha = link.sha256 or self.known_hashes.get(link.url)
        if not sha:
            return None
        data = self._cache_read(f"wheel-{sha}")
        local = self.local_wheels.get(link.url)
        if data is None and local is not None and link.sha256 in (None, self.known_hashes.get(link.url)):
            try:  # the mirror holds this very wheel: its central directory is on local disk
                data = remote_metadata(self.reader, local.as_uri(), vf.project)
            except UpstreamError:
                return None
            if metadata_refusal(data):
                return None  # read from upstream instead, where a refusal excludes the file
            self._cache_write(f"wheel-{sha}", data)
        if data is None:
            return None
        return data, MetadataRecord(vf.filename, hashlib.sha256(data).hexdigest(), None, None, "wheel")

    def _cache_read(self, name: str) -> bytes | None:
        if self.metadata_cache is None:
            return None
        try:
            data = (self.metadata_cache / name).read_bytes()
        except OSError:
            return None
        with self._lock:
            self._cache_used.add(name)
        return data

    def _cache_write(self, name: str, data: bytes) -> None:
        if self.metadata_cache is not None and self.cache_writes:
            with contextlib.suppress(OSError):  # a cache: a failed write costs a read next run
                write_scratch(self.metadata_cache / name, data)
                with self._lock:
                    self._cache_used.add(name)

    def metadata_cache_used(self) -> frozenset[str]:
        """The metadata cache entries this run read or wrote (the cache sweep keeps them)."""
        with self._lock:
            return frozenset(self._cache_used)

    def _fresh_metadata(self, accelerator: str, vf: ViewFile) -> tuple[bytes | None, MetadataRecord | None]:
        """METADATA read from upstream (its .metadata, else the wheel's by Range), and what was seen."""
        filename, link = vf.filename, vf.link
        data, served = None, None
        if link.metadata_url:  # set exactly when the link offers core metadata
            try:
                data = self.reader.metadata(link.metadata_url)
            except UpstreamError:
                data = None
            if data is not None:
                served = hashlib.sha256(data).hexdigest()
        declared = link.metadata_sha256
        if data is not None and served != declared and declared is not None:
            if self.on_hash_mismatch == "fail":
                self._error(f"{filename}.metadata: upstream declares sha256 {declared} but its .metadata hashes "
                            f"to {served} (on_hash_mismatch: fail)")
                return None, None
            self.say(f"warning: {filename}.metadata: upstream declares sha256 {declared} but its .metadata hashes "
                     f"to {served}; using the wheel's own METADATA (on_hash_mismatch: warn; recorded in manifest.json)")
            data = None
        source: Literal["upstream", "wheel"] = "upstream"
        if data is None:
            source = "wheel"
            data = self._from_wheel(accelerator, vf)
            if data is None:
                return None, None
        refusal = metadata_refusal(data)
        if refusal:
            self.exclude(accelerator, vf, refusal)
            return None, None
        record = MetadataRecord(filename, hashlib.sha256(data).hexdigest(), declared, served, source)
        if source == "upstream" and declared is not None:
            self._cache_write(f"core-{declared}", data)
        elif declared is None and not link.core_metadata and (link.sha256 or self.known_hashes.get(link.url)):
            self._cache_write(f"wheel-{link.sha256 or self.known_hashes[link.url]}", data)
        return data, record

    def _from_wheel(self, accelerator: str, vf: ViewFile) -> bytes | None:
        """METADATA from the wheel itself, then from the same file on another source."""
        errors: list[str] = []

        def candidates() -> Iterator[Link]:  # alternates are looked up only when the link itself fails
            yield vf.link
            yield from self.alternates(accelerator, vf.filename)

        bad: list[str] = []  # sources whose bytes are no usable wheel (not merely unreachable)
        for link in candidates():
            if link is not vf.link and link.metadata_url:  # set exactly when the link offers core metadata
                try:
                    data = self.reader.metadata(link.metadata_url)
                    if data is not None and (link.metadata_sha256 in (None, hashlib.sha256(data).hexdigest())):
                        return data
                except UpstreamError as exc:
                    errors.append(str(exc))
            try:  # a wheel that must cross whole comes from the run's one download of it
                return remote_metadata(self.reader, link.url, vf.project,
                                       keep=(lambda spooled, sha: self.keep_whole(accelerator, vf, spooled, sha))
                                       if link is vf.link else None)
            except BadWheelError as exc:
                bad.append(str(exc))
            except UpstreamError as exc:
                errors.append(str(exc))
        if bad:
            self.exclude(accelerator, vf, bad[0])
            return None
        self._error(f"{vf.filename}: no metadata from any source ({errors[0] if errors else 'no source'})")
        return None

    def _hash_of(self, link: Link) -> str | None:
        """A hash for a link upstream gave none: what the mirror holds from that URL, or, for a
        local file (a find-links dir), its bytes hashed here once: cheaper than the resolver
        streaming it through the view to hash it."""
        known = self.known_hashes.get(link.url)
        if known or urllib.parse.urlsplit(link.url).scheme != "file":
            return known
        with self._lock:
            if link.url not in self._local_hashes:
                try:
                    self._local_hashes[link.url] = sha256_file(file_url_path(link.url))[0]
                except OSError:
                    self._local_hashes[link.url] = None
            return self._local_hashes[link.url]

    def keep_whole(self, accelerator: str, vf: ViewFile, spooled: Path, sha256: str) -> None:
        """``vf``'s bytes, read whole from upstream anyway (to read its METADATA; ``sha256``
        hashed as they arrived), become its one download this run (:meth:`local_copy`; in a
        real run, the stored file the fetch step joins, unless ``whole`` refuses them: bytes
        that fail upstream's hash are not kept there). A failure keeps nothing: the fetch step
        then meets it, and names it, as it would have."""
        url = vf.link.url
        with self._lock:
            lock = self._whole_locks.setdefault(url, threading.Lock())
        with lock:
            if url in self._wholes:
                return
            try:
                # the real run's hook checks the bytes against the claim itself; a dry run's scratch copy here
                kept = self.whole(accelerator, vf, spooled, sha256) if self.whole else \
                    self._download(vf, spooled) if vf.link.sha256 in (None, sha256) else None
            except (UpstreamError, OSError, requests.RequestException):
                return
            if kept is not None:
                self._wholes[url] = kept

    def local_copy(self, accelerator: str, vf: ViewFile) -> Path | None:
        """The whole file of ``vf`` on local disk: a ``file://`` link's own path, else downloaded
        once per run (concurrent callers wait for the one download)."""
        url = vf.link.url
        if urllib.parse.urlsplit(url).scheme == "file":
            return file_url_path(url)
        with self._lock:
            lock = self._whole_locks.setdefault(url, threading.Lock())
        with lock:
            if url not in self._wholes:
                try:
                    self._wholes[url] = self.whole(accelerator, vf, None, None) if self.whole else self._download(vf)
                except (UpstreamError, OSError, requests.RequestException) as exc:
                    self._error(f"{vf.filename}: cannot download it from upstream: {exc}")
                    self._wholes[url] = None
            return self._wholes[url]

    def _download(self, vf: ViewFile, spooled: Path | None = None) -> Path | None:
        """``vf`` streamed into the work dir (a dry run's scratch view), or copied from ``spooled``."""
        dest = safe_join(self.workdir, f"wheels/{safe_filename(vf.filename)}")
        if spooled is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(spooled, dest)
            return dest
        resp = self.reader.open(vf.link.url, "wheels")
        if resp is None:
            return None
        try:
            with self.reader.reading(vf.link.url) as read:  # shown with the run's other reads
                read.sized(resp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with open(part, "wb") as out:
                    for chunk in resp.iter_content(1024 * 1024):
                        out.write(chunk)
                        read.moved(len(chunk))
                os.replace(part, dest)
                read.end()
        finally:
            resp.close()
        return dest

    def file(self, accelerator: str, filename: str) -> ViewFile | None:
        """The view file shown to the resolver as ``filename`` (None: not a view file)."""
        return self._files.get((accelerator, filename))

    def error(self, line: str) -> None:
        """Record a refusal or failure (each line once); the run reports the first."""
        self._error(line)

    def exclude(self, accelerator: str, vf: ViewFile, reason: str) -> None:
        """Leave ``vf`` out of this run: its page is rebuilt without it (:meth:`exclusion_lines`)."""
        key = (accelerator, vf.filename)
        with self._lock:
            if key in self.excluded:
                return
            self.excluded[key] = reason
            self._pages.pop((accelerator, vf.project), None)

    def exclusion_lines(self) -> list[str]:
        """One line per excluded file: said once the run has resolved without them (a run that
        fails instead names the reason in its one error line)."""
        with self._lock:
            return [f"excluded {fn} ({acc}): {why}; resolved without it" for (acc, fn), why in self.excluded.items()]

    def _error(self, line: str) -> None:
        with self._lock:
            if line not in self.errors:
                self.errors.append(line)

    def metadata_records(self) -> dict[str, MetadataRecord]:
        """Wheel file name -> what the view served for its metadata."""
        with self._lock:
            return {fn: rec for (_acc, fn), rec in self._metadata.items()}

    def labels(self) -> dict[str, str]:
        """Wheel file name -> its PEP 825 variant label, for every labelled view file."""
        with self._lock:
            return {f.filename: f.label for f in self._files.values() if f.label}

    def refusal_summary(self) -> tuple[int, str] | None:
        """(how many, one line): every link refused by the page parsers or the screen, by reason."""
        counts = collections.Counter(self.refused)
        for page in self.reader.pages():
            counts.update(page.warnings)
        if not counts:
            return None
        n = sum(counts.values())
        return n, f"upstream: refused {n} links ({warnings_summary(counts)})"


SCREENS_DIR = ".screens"  # under the work dir: each project page's screened links (View._screened)
MAX_SCREENS_BYTES = 64 * 1024 * 1024  # a larger entry is not read (a cache: the page is screened anew)
PAGE_SUFFIX = ".page"  # beside a derivation entry: the digest of the page built from it (View._kept_digest)
MAX_PAGE_RECORD = 4096  # a larger one is not read (a cache: the page is built)


@dataclass(frozen=True)
class _Derived:
    """How this run came by a project's screened links (:meth:`View._screened`)."""

    entry: str | None  # sha256 of the derivation entry kept for them; None: none kept
    reused: bool  # taken from that entry (upstream's pages unchanged), not screened anew
    derived: int  # how many of the page's files the derivation gave (the rest are held copies)


# The modules whose code decides what a page's screened links are (parsers, screen, names):
# their bytes are part of every derivation's key, so a changed torchdepot derives again.
_SCREEN_CODE = ("torchdepot.sync.view", "torchdepot.net.hostpolicy", "torchdepot.model.wheelname",
                "torchdepot.model.names", "torchdepot.sources.upstream", "torchdepot.sources.links",
                "torchdepot.sources.pep691", "torchdepot.sources.variants")


def screen_code_digest() -> str:
    """sha256 over this torchdepot's version and the source of :data:`_SCREEN_CODE`; "" when one
    of them is not loaded or cannot be read (then nothing is reused or kept: when in doubt, derive)."""
    h = hashlib.sha256(__version__.encode())
    for name in _SCREEN_CODE:
        try:
            h.update(Path(str(sys.modules[name].__file__)).read_bytes())  # loaded by the time a page is read
        except (OSError, KeyError, TypeError):
            return ""
    return h.hexdigest()


def _derive_key(code: str, accelerator: str, project: str, variant: Variant | None, sources: ViewSources,
                policy: HostPolicy, exclude_newer: dt.datetime | None) -> str:
    """Everything a project's screened links depend on besides the upstream pages read: this
    torchdepot's screening code, the accelerator's variant, the dependency sources, every field
    of the host policy and the upload cutoff."""
    rules = {f.name: sorted(v) if isinstance(v := getattr(policy, f.name), frozenset) else v
             for f in dataclasses.fields(policy)}
    doc = [code, accelerator, project, repr(variant), list(sources.indexes), list(sources.find_links),
           rules, str(exclude_newer)]
    return hashlib.sha256(json.dumps(doc, default=str, sort_keys=True).encode()).hexdigest()


class _Recording:
    """A reader that notes every page URL asked for, in order (what a derivation depends on)."""

    def __init__(self, reader: UpstreamReader):
        self.reader = reader
        self.urls: list[str] = []
        self.pages: list[Page | None] = []
        self.complete = True  # False once a read failed: the derivation is not kept

    def page(self, url: str) -> Page | None:
        self.urls.append(url)
        try:
            got = self.reader.page(url)
        except UpstreamError:
            self.complete = False
            raise
        self.pages.append(got)
        return got

    def entry(self, key: str, kept: list[Link], vjson: list[Link], refused: list[tuple[str, str]],
              reader: UpstreamReader) -> bytes | None:
        """The JSON kept for reuse; None when a kept link is not found on the pages read."""
        # by value: the screen's memo may hand back the equal links of another accelerator's page
        where: dict[Link, list[int]] = {}
        for i, page in enumerate(self.pages):
            for j, link in enumerate(page.links if page is not None else ()):
                where.setdefault(link, [i, j])
        try:
            refs = [[where[link] for link in links] for links in (kept, vjson)]
        except KeyError:
            return None
        reads = [[url, reader.page_identity(url)] for url in self.urls]
        if any(identity == "unidentified" for _url, identity in reads):
            return None
        return json.dumps({"key": key, "reads": reads, "kept": refs[0], "vjson": refs[1],
                           "refused": [list(r) for r in refused]}, separators=(",", ":")).encode()


def _at(pages: list[Page | None], refs: object) -> list[Link] | None:
    """The links at ``refs`` ([page, link] positions) on ``pages``; None when one is not there."""
    if not isinstance(refs, list):
        return None
    out = []
    for ref in refs:
        if not (isinstance(ref, list) and len(ref) == 2 and all(type(x) is int and x >= 0 for x in ref)):
            return None
        i, j = ref
        page = pages[i] if i < len(pages) else None
        if page is None or j >= len(page.links):
            return None
        out.append(page.links[j])
    return out


class _Parsed(Mapping[str, WheelFile]):
    """URL -> its parsed wheel file name, parsed on first use (shared by every target)."""

    def __init__(self, parsed: dict[str, WheelFile]):
        self._parsed = parsed

    def __getitem__(self, url: str) -> WheelFile:
        got = self._parsed.get(url)
        if got is None:
            try:
                got = self._parsed.setdefault(url, parse_wheel(url))
            except ParseError:
                raise KeyError(url) from None
        return got

    def get(self, url: str, default: WheelFile | None = None) -> WheelFile | None:  # type: ignore[override]
        try:
            return self[url]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._parsed))

    def __len__(self) -> int:
        return len(self._parsed)


def write_scratch(path: Path, data: bytes) -> os.stat_result:
    """Replace ``path`` atomically (a reader never sees half of it) but without fsync: the view
    and the metadata cache are rebuilt from upstream if a power loss leaves one short, and
    the content-addressed cache is checked on reading. A file that already holds ``data`` is
    left as it is: a no-op re-sync rebuilds only the view pages whose upstream page changed.
    Returns the stat of the file holding ``data`` (its mtime tells a later rewrite apart)."""
    try:
        st = path.stat()
        if st.st_size == len(data) and path.read_bytes() == data:
            return st
    except OSError:
        pass  # not there yet (or unreadable): written below
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    st = tmp.stat()  # kept by the rename
    os.replace(tmp, path)
    return st


def _label(filename: str) -> str | None:
    try:
        return split_variant_label(filename)[1]
    except ParseError:
        return None


def _safe_name(filename: str) -> bool:
    try:
        return safe_filename(filename) == filename
    except TorchdepotError:
        return False
