"""The local view: the only index the resolver ever sees.

Per accelerator, a PEP 503 + PEP 658 index built from screened upstream links and
verified metadata, written under the run's work dir (``<acc>/<project>/index.html``,
``<acc>/files/<wheel>.metadata``) and served by a loopback HTTP server the run starts
(:meth:`View.serve`). Pages are built on demand as the resolver asks for them, so only the
closure's pages are read, each once (the :class:`UpstreamReader` caches).

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
import datetime as dt
import hashlib
import html
import http.server
import os
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from packaging.utils import canonicalize_name

from torchdepot.errors import ParseError, TorchdepotError, UpstreamError
from torchdepot.model.wheelname import parse_wheel, split_variant_label
from torchdepot.net.hostpolicy import HostPolicy, screen_links
from torchdepot.net.http import file_url_path
from torchdepot.sources.links import Link, warnings_summary
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
from torchdepot.sources.wheelmeta import remote_metadata
from torchdepot.store.fsutil import atomic_write_bytes, safe_filename, safe_join, sha256_file

Say = Callable[[str], None]


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
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- links -------------------------------------------------------------------------
    def dependency_links(self, project: str) -> list[Link]:
        """``project``'s links on every dependency source; an unreachable source is skipped (said once)."""
        out: list[Link] = []
        for kind, url in [("index", u) for u in self.sources.indexes] + [("find-links", u) for u in self.sources.find_links]:
            if url in self._dead:
                continue
            try:
                out += index_links(self.reader, url, project) if kind == "index" else findlinks_links(self.reader, url, project)
            except UpstreamError as exc:
                with self._lock:
                    if url not in self._dead:
                        self._dead.add(url)
                        self.say(f"dependency source {url} unreachable: {str(exc).split(': ', 1)[-1]}; skipping it")
        return out

    def _screen(self, links: list[Link], project: str, keep: list[Link] | None = None) -> list[Link]:
        """The wheels of ``project`` that pass the screen; ``keep`` collects its variants.json links."""
        want = canonicalize_name(project)
        if keep is not None:  # variants.json links: the host policy and a safe name, like any file
            for link in links:
                if is_variants_json(link.filename) and (vkey := variants_json_key(link.filename)) \
                        and vkey[0] == want and not self.policy.refusal(link.url) \
                        and _safe_name(link.filename):
                    keep.append(link)
        links = [link for link in links if not is_variants_json(link.filename)]
        screened = screen_links(links, self.policy)
        with self._lock:  # pages are shared between accelerators: count each refused URL once
            for link, why in screened.refused:
                if (link.url, why) not in self._refused_urls:
                    self._refused_urls.add((link.url, why))
                    self.refused[why] += 1
        out = []
        for link in screened.kept:
            if not link.filename.endswith(".whl"):
                continue  # sdists and other files: the mirror serves wheels only
            if self.exclude_newer is not None and _uploaded_after(link.upload_time, self.exclude_newer):
                continue
            try:
                if parse_wheel(link.url).name != want:
                    continue
            except ParseError:
                continue
            out.append(link)
        return out

    def project(self, accelerator: str, project: str) -> list[ViewFile]:
        """The screened files of ``project`` for ``accelerator`` (computed once)."""
        project = str(canonicalize_name(project))
        key = (accelerator, project)
        with self._lock:
            if key in self._projects:
                return self._projects[key]
        variant = self.sources.variant(accelerator)
        links = variant_links(self.reader, variant, project) if variant else None
        vjson: list[Link] = []
        kept = self._screen(links, project, vjson) if links else []
        if not kept:  # not on the PyTorch variant (or nothing usable there): the user's sources
            vjson = []
            kept = self._screen(self.dependency_links(project), project)
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

    def _build_page(self, accelerator: str, project: str) -> bytes | None:
        files = self.project(accelerator, project)
        if not files:
            return None
        anchors = []
        for f in files:
            link = f.link
            sha256 = link.sha256 or self._hash_of(link)
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
        atomic_write_bytes(safe_join(self.workdir, f"{accelerator}/{project}/index.html"), body)
        return body

    def metadata(self, accelerator: str, filename: str) -> bytes | None:
        """Verified METADATA for a view file (None: unknown file, or refused under fail)."""
        vf = self._files.get((accelerator, filename))
        if vf is None:
            return None
        filename = vf.filename  # the record is the wheel's own; the page showed vf.shown
        path = safe_join(self.workdir, f"{accelerator}/files/{safe_filename(vf.shown)}.metadata")
        with self._lock:
            if (accelerator, filename) in self._metadata:
                return path.read_bytes()
        link = vf.link
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
                return None
            self.say(f"warning: {filename}.metadata: upstream declares sha256 {declared} but its .metadata hashes "
                     f"to {served}; using the wheel's own METADATA (on_hash_mismatch: warn; recorded in manifest.json)")
            data = None
        source: Literal["upstream", "wheel"] = "upstream"
        if data is None:
            source = "wheel"
            data = self._from_wheel(accelerator, vf)
            if data is None:
                return None
        record = MetadataRecord(filename, hashlib.sha256(data).hexdigest(), declared, served, source)
        if vf.label is not None:  # the resolver sees the label's view of the variant markers
            data = evaluate_variant_markers(data, vf.label, self._properties(accelerator, vf))
        atomic_write_bytes(path, data)
        with self._lock:
            self._metadata[(accelerator, filename)] = record
        return data

    def _from_wheel(self, accelerator: str, vf: ViewFile) -> bytes | None:
        """METADATA from the wheel itself, then from the same file on another source."""
        errors: list[str] = []

        def candidates() -> Iterator[Link]:  # alternates are looked up only when the link itself fails
            yield vf.link
            yield from self.alternates(accelerator, vf.filename)

        for link in candidates():
            if link is not vf.link and link.metadata_url:  # set exactly when the link offers core metadata
                try:
                    data = self.reader.metadata(link.metadata_url)
                    if data is not None and (link.metadata_sha256 in (None, hashlib.sha256(data).hexdigest())):
                        return data
                except UpstreamError as exc:
                    errors.append(str(exc))
            try:
                return remote_metadata(self.reader, link.url, vf.project)
            except UpstreamError as exc:
                errors.append(str(exc))
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

    def relay(self, accelerator: str, filename: str, handler: http.server.BaseHTTPRequestHandler) -> None:
        """Stream a view file's bytes to the resolver. uv reads a wheel only when the index
        gave no sha256 for it (it hashes it for the lock): nightly pages, find-links dirs."""
        vf = self._files.get((accelerator, filename))
        if vf is None:
            handler.send_error(404)
            return
        if urllib.parse.urlsplit(vf.link.url).scheme == "file":
            with open(file_url_path(vf.link.url), "rb") as src:
                self._send(handler, src, os.fstat(src.fileno()).st_size)
            return
        resp = self.reader.open(vf.link.url, "wheels")
        if resp is None:
            handler.send_error(404)
            return
        try:
            length = resp.headers.get("Content-Length")
            self._send(handler, resp.raw, int(length) if length and length.isdigit() else None)
        finally:
            resp.close()

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, src, length: int | None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            handler.send_header("Content-Length", str(length))
        else:
            handler.close_connection = True
        handler.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            shutil.copyfileobj(src, handler.wfile, 1024 * 1024)

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

    def refusal_summary(self) -> str | None:
        """One line: every link refused by the page parsers or the screen, by reason."""
        counts = collections.Counter(self.refused)
        for page in self.reader.pages():
            counts.update(page.warnings)
        if not counts:
            return None
        return f"upstream: refused {sum(counts.values())} links ({warnings_summary(counts)})"

    # -- the loopback server ----------------------------------------------------------------
    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve the view on 127.0.0.1 (a free port) for the duration; yields its base URL."""
        view = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # the resolver's requests are not news
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
                        body = b"<!DOCTYPE html><html><body></body></html>\n"
                except TorchdepotError as exc:
                    view._error(str(exc))
                    self.send_error(502)
                    return
                except Exception as exc:  # never a traceback from a server thread: one line, then 502
                    view._error(f"local view: {type(exc).__name__}: {exc}")
                    self.send_error(502)
                    return
                if body is None and len(parts) == 3 and parts[1] == "files":
                    view.relay(parts[0], parts[2], self)
                    return
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the resolver hung up (it had what it needed)
                    self.wfile.write(body)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self.base_url
        finally:
            server.shutdown()
            server.server_close()


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
