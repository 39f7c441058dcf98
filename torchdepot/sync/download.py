"""Fetch: every resolved file into the mirror, verified, with per-file failover.

Input: a :class:`~torchdepot.sync.resolution.Resolution`. Output: the fetcher's
:class:`~torchdepot.fetch.FetchReport`, in which each result's ``url`` is the source the
file actually came from. A file is identified by name + sha256: its candidates are its
screened link, the same path on the spec's other PyTorch upstreams (regional mirrors
share the layout) and, when all of those fail, the same name and hash on the user's
dependency sources (say, the ``nvidia-*`` host is down but the dependency index has them).

Immutable publication (:mod:`torchdepot.store.publication`): before anything is fetched,
each file gets its stored path (its usual ``packages/<project>/<file>``, or a new
``packages/<project>/<digest16>/<file>`` when the committed manifest has other bytes under
that name), and every path this run may write, or supersedes, is journaled. The report's
:attr:`PipFetchReport.paths` maps each resolution key to its stored path; the results
are keyed by stored path.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torchdepot.errors import TorchdepotError, UpstreamError
from torchdepot.fetch import FetchItem, FetchReport
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import Client
from torchdepot.resolve.uv import ResolvedFile
from torchdepot.sources.wheelmeta import KeepWhole
from torchdepot.spec.mirror import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, MirrorSpec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import safe_join
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.view import View, ViewFile, WholeFile

if TYPE_CHECKING:  # the engine loads when a fetcher is made (a publish or a no-op reads reports only)
    from concurrent.futures import Future

    from torchdepot.fetch import Fetcher, FetchResult
    from torchdepot.fetch.progress import ProgressCallback


def same_path_elsewhere(url: str, upstreams: tuple[str, ...]) -> tuple[str, ...]:
    """The same file on every configured PyTorch upstream (regional mirrors share the layout)."""
    for base in upstreams:
        if url.startswith(base + "/"):
            rest = url[len(base):]
            return tuple(dict.fromkeys([url] + [b + rest for b in upstreams]))
    return (url,)


@dataclass
class PipFetchReport(FetchReport):
    """The fetch report plus where each resolution key is stored (results are keyed by that),
    and the METADATA :func:`reject_bad_wheels` read from each wheel this run downloaded, by
    stored path: publishing writes ``.metadata`` from it instead of opening the zip again."""
    paths: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, bytes] = field(default_factory=dict)
    # the ``.metadata`` written beside a wheel this run staged, as that wheel landed (EarlyReads):
    # (sha256, Requires-Python, size) as store/pages.ensure_metadata returned them, by stored path
    written: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)

    def stored(self, key: str) -> str:
        return self.paths.get(key, key)


def chosen_paths(out: Path, resolution: Resolution, listed: dict[str, mf.FileEntry] | None = None) -> dict[str, str]:
    """Resolution key -> the path its bytes go to (immutable publication); reads only (the dry
    run's answer too). ``listed``: the committed manifest's files by path, when already read."""
    if listed is None:
        live = pub.live_manifest(out)
        listed = live.by_path() if live is not None else {}
    journal = pub.load_journal(out)
    retired = pub.load_retired(out)
    paths: dict[str, str] = {}
    for key, vf, _acc in resolution.files:
        if key not in paths:
            paths[key] = pub.choose_path(key, pub.Claim(vf.link.sha256, vf.link.size), listed, journal,
                                         lambda rel: safe_join(out, rel).exists(), retired)
    return paths


def stored_paths(out: Path, resolution: Resolution) -> tuple[dict[str, str], set[str]]:
    """Resolution key -> stored path (:func:`chosen_paths`), journaled before any write; and the
    stored paths this run stages (no committed manifest lists them)."""
    live = pub.live_manifest(out)
    listed = live.by_path() if live is not None else {}
    paths = chosen_paths(out, resolution, listed)
    touched: set[str] = set()
    superseded: dict[str, str] = {}
    for key, path in paths.items():
        if path not in listed:
            touched.update((path, L.metadata_path(path)))  # staged by this run
        if key != path:
            touched.update((key, L.metadata_path(key)))  # superseded: removed once no manifest lists it
        superseded.update(pub.superseded(key, path, listed))  # those URLs served these bytes: never others
    pub.retire(out, superseded)
    pub.record(out, touched)
    return paths, {path for path in paths.values() if path not in listed}


def make_fetcher(out: Path, spec: MirrorSpec, client: Client, policy: HostPolicy, progress: bool | None,
                 on_progress: ProgressCallback | None = None) -> Fetcher:
    """The run's one downloader configuration (jobs, hash policy, host and socket caps from the spec);
    ``on_progress`` receives progress events (``mirror --json`` prints them as JSON lines)."""
    from torchdepot.fetch import DEFAULT_CONNECTIONS, DEFAULT_CONNECTIONS_PER_HOST, Fetcher

    return Fetcher(out, client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch, progress=progress,
                   on_progress=on_progress, fsync=spec.fsync, allowed_hosts=set(policy.hostnames),
                   connections=spec.connections or DEFAULT_CONNECTIONS,
                   connections_per_host=spec.connections_per_host or DEFAULT_CONNECTIONS_PER_HOST)


class WholeReads:
    """Wheels that cross the link whole before the fetch step, handed to the run's fetcher at
    once: one read whole for its METADATA (no ``.metadata`` upstream, and a server that ignores
    Range or a wheel no larger than the tail read: :meth:`keep`), or one the resolver must hash
    (no hash upstream: :meth:`fetch`). Each goes to the stored path its fetch step will use
    (the caller's ``plan``, journaled first): a read's bytes as ``FetchItem.local`` (copied and
    hashed, not sent again), else downloaded (progress, pieces, failover, hashed as it
    arrives). The fetch step submits the same path and joins that result.

    Invariants: bytes that disagree with the sha256 the fetch step will claim are never kept
    (that step then asks upstream again, and names upstream's URL); reads kept are bounded by
    the spec's ``max_bytes`` and ``max_files`` (past them a read is dropped and fetched again);
    a file reaches its stored path only through the fetcher (checked, then renamed into place);
    ``dir``, where a caller may write its whole reads (the store's filesystem), is emptied by
    :meth:`open` and :meth:`clear`, so a killed run's reads are never trusted; :meth:`discard`
    removes what this run stored and did not use, never a path the committed manifest lists."""

    def __init__(self, out: Path, spec: MirrorSpec, fetcher: Fetcher) -> None:
        self.out, self.dir = out, out / L.WHOLE_DIR
        self.max_bytes = spec.max_bytes or DEFAULT_MAX_BYTES
        self.max_files = spec.max_files or DEFAULT_MAX_FILES
        self.fetcher = fetcher
        self.paths: set[str] = set()  # stored paths handed to the fetcher
        self.kept_files = self.kept_bytes = 0  # reads kept (not sent again)
        self._lock = threading.Lock()

    def open(self) -> WholeReads:
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        return self

    def keeper(self, plan: Callable[[], FetchItem]) -> KeepWhole:
        """The ``keep`` callback for :func:`~torchdepot.sources.wheelmeta.remote_metadata`."""

        def keep(read: Path, sha256: str) -> None:
            self.keep(plan, read, sha256)

        return keep

    def keep(self, plan: Callable[[], FetchItem], read: Path, sha256: str) -> Path | None:
        """``read`` (hashed ``sha256`` as it arrived) stored where ``plan`` says; None when not
        kept: other bytes than the plan claims, over a cap, or the copy failed. Never raises:
        the METADATA read goes on, and the fetch step downloads what was not kept."""
        try:
            item = plan()
            size = read.stat().st_size
        except (OSError, TorchdepotError):
            return None
        if not pub.Claim(item.sha256, item.size).agrees(sha256, size):
            return None
        with self._lock:
            counted = item.key not in self.paths  # else one stored file already: joined, counted once
            if counted and (self.kept_files >= self.max_files or self.kept_bytes + size > self.max_bytes):
                return None
            self.kept_files += counted
            self.kept_bytes += size if counted else 0
            self.paths.add(item.key)
        try:
            return self._store(dataclasses.replace(item, local=read.as_uri()))
        except (UpstreamError, OSError, TorchdepotError):
            with self._lock:
                self.kept_files -= counted
                self.kept_bytes -= size if counted else 0
            return None

    def fetch(self, plan: Callable[[], FetchItem]) -> Path:
        """The file ``plan`` names, downloaded now (the fetch step joins it); raises
        :class:`UpstreamError` when no URL gives it."""
        return self._store(plan())

    def _store(self, item: FetchItem) -> Path:
        with self._lock:  # one journal writer at a time (reads arrive in parallel)
            pub.record(self.out, {item.key, L.metadata_path(item.key)})
            self.fetcher.start()
            self.paths.add(item.key)
        result = self.fetcher.submit(item).result()
        if result.status == "failed":
            raise UpstreamError(result.error or f"{item.urls[0] if item.urls else item.key}: download failed")
        return safe_join(self.out, item.key)

    def discard(self, used: set[str], listed: Mapping[str, object]) -> None:
        """Remove what this run stored here that it does not use (``used``: stored paths),
        unless the committed manifest lists it (``listed``)."""
        for path in sorted(self.paths - used):
            if path not in listed:
                safe_join(self.out, path).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def whole_into_store(out: Path, spec: MirrorSpec, fetcher: Fetcher) -> tuple[WholeFile, set[str]]:
    """The view's :data:`~torchdepot.sync.view.WholeFile` for a real run (:class:`WholeReads`):
    a wheel the view read whole, or one the resolver must read whole (upstream gave no hash),
    goes to the path the fetch step will store it at, through the run's ``fetcher``. Returns
    the callable and the set of stored paths it handed over (so a file the resolver did not
    choose after all is removed again)."""
    wholes = WholeReads(out, spec, fetcher)

    def whole(_accelerator: str, vf: ViewFile, spooled: Path | None, sha256: str | None) -> Path | None:
        def plan() -> FetchItem:
            key = file_key(ResolvedFile(name=vf.project, version="", url=vf.link.url, filename=vf.filename,
                                        sha256=vf.link.sha256, size=vf.link.size))
            live = pub.live_manifest(out)
            path = pub.choose_path(key, pub.Claim(vf.link.sha256, vf.link.size), live.by_path() if live else {},
                                   pub.load_journal(out), lambda rel: safe_join(out, rel).exists())
            return FetchItem(path, same_path_elsewhere(vf.link.url, spec.upstreams), vf.link.sha256, vf.link.size)

        if spooled is None or sha256 is None:
            return wholes.fetch(plan)
        return wholes.keep(plan, spooled, sha256)

    return whole, wholes.paths


def fetch_files(out: Path, resolution: Resolution, view: View, spec: MirrorSpec, client: Client,
                policy: HostPolicy, progress: bool | None, fetcher: Fetcher | None = None,
                reads: EarlyReads | None = None, meanwhile: Callable[[], None] | None = None) -> PipFetchReport:
    """``fetcher``: one already started by :func:`make_fetcher` with files submitted early (pinned
    before the closure resolved); a file submitted again joins its download in flight.
    ``reads``: each wheel's METADATA is read as it lands, by the fetcher's thread, while the
    others still download (then :func:`reject_bad_wheels` opens none of them again), and for a
    wheel this run stages its ``.metadata`` is written then too (publishing reuses it);
    ``meanwhile``: work for this thread once every file is submitted, while they download."""
    paths, staged = stored_paths(out, resolution)
    fetcher = fetcher or make_fetcher(out, spec, client, policy, progress)
    items = {key: FetchItem(key=paths[key], urls=same_path_elsewhere(vf.link.url, spec.upstreams), sha256=vf.link.sha256,
                            size=vf.link.size)
             for key, vf, _acc in resolution.files}
    if reads is None:
        report = fetcher.run(list(items.values()))
    else:
        fetcher.start()
        try:
            whose: dict[str, tuple[str, str]] = {}
            for key, vf, _acc in resolution.files:
                whose.setdefault(paths[key], (vf.project, vf.link.url))
            for it, fut in fetcher.submit_all(items.values()):
                reads.watch(fut, *whose[it.key], stage=it.key in staged)
            if meanwhile is not None:
                meanwhile()
        finally:
            report = fetcher.close()
    retry = []
    failed = {r.key for r in report.failed}
    for key, vf, acc in resolution.files:
        if paths[key] in failed:
            alternates = tuple(link.url for link in view.alternates(acc, vf.filename))
            if alternates:
                retry.append(FetchItem(key=paths[key], urls=alternates, sha256=vf.link.sha256, size=vf.link.size))
    if not retry:
        return PipFetchReport(results=report.results, seconds=report.seconds, paths=paths)
    again = fetcher.run(retry)
    redone = {r.key for r in again.results}
    return PipFetchReport(results=[r for r in report.results if r.key not in redone] + list(again.results),
                          seconds=report.seconds + again.seconds, paths=paths)


class BadCandidates(TorchdepotError):
    """Downloaded wheels whose bytes are no usable wheel (not a zip, no METADATA): the sync
    runs again with them excluded (``sync/pip.py``); ``excluded``: (accelerator, file name) -> why."""

    def __init__(self, excluded: dict[tuple[str, str], str]) -> None:
        (acc, name), why = next(iter(excluded.items()))
        super().__init__(f"{name} ({acc}): {why}")
        self.excluded = excluded


def _metadata_or_refusal(where: Path, project: str, url: str) -> bytes | str:
    """A downloaded wheel's METADATA, or the one line saying why its bytes are no wheel."""
    import zipfile

    from torchdepot.store.pages import metadata_member

    try:
        with zipfile.ZipFile(where) as zf:
            return metadata_member(zf, project, url)
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{url}: not a readable wheel ({exc})"
    except TorchdepotError as exc:
        return str(exc)


class EarlyReads:
    """The METADATA of downloaded wheels, read by the fetcher's thread as each one lands: the
    early ones (sync/early.py) while the closure still resolves (torch's central directory costs
    ~40 ms), the others while the rest still download (:func:`fetch_files`); then
    :func:`reject_bad_wheels` opens none of them again. Kept with the sha256 of the bytes read."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._read: dict[str, tuple[str, bytes]] = {}  # stored path -> (sha256 of the wheel, METADATA)
        self._watched: set[Future[FetchResult]] = set()  # a download joined again is read once
        self._written: dict[str, tuple[str, tuple[str, str | None, int]]] = {}  # path -> (wheel sha256, .metadata)

    def watch(self, fut: Future[FetchResult], project: str, url: str, *, stage: bool = False) -> None:
        """``stage``: the wheel's path is one this run stages (journaled, listed by no manifest):
        its ``.metadata`` is written beside it once read, as publishing would write it."""
        with self._lock:
            if fut in self._watched:
                return
            self._watched.add(fut)
        fut.add_done_callback(lambda f: self._read_one(f.result(), project, url, stage))

    def _read_one(self, result: FetchResult, project: str, url: str, stage: bool) -> None:
        if result.status != "downloaded" or result.sha256 is None or not result.key.endswith(".whl"):
            return
        from torchdepot.store.pages import ensure_metadata

        try:
            got = _metadata_or_refusal(safe_join(self.out, result.key), project, url)
            written = ensure_metadata(self.out, result.key, project, data=got) \
                if stage and isinstance(got, bytes) else None
        except Exception:  # a callback must not raise: the later steps read and write it themselves
            return
        if isinstance(got, bytes):  # a refusal is left to reject_bad_wheels' own read and message
            with self._lock:
                self._read[result.key] = (result.sha256, got)
                if written is not None:
                    self._written[result.key] = (result.sha256, written)

    def get(self, path: str, sha256: str | None) -> bytes | None:
        with self._lock:
            kept = self._read.get(path)
        return kept[1] if kept is not None and sha256 is not None and kept[0] == sha256 else None

    def written(self, path: str, sha256: str | None) -> tuple[str, str | None, int] | None:
        """The ``.metadata`` written beside ``path`` from these very bytes (same sha256), if any."""
        with self._lock:
            kept = self._written.get(path)
        return kept[1] if kept is not None and sha256 is not None and kept[0] == sha256 else None


def reject_bad_wheels(out: Path, resolution: Resolution, report: PipFetchReport,
                      early: EarlyReads | None = None) -> None:
    """Raise :class:`BadCandidates` for each wheel this run downloaded whose bytes are not a
    wheel (upstream's ``.metadata`` was fine, so only the bytes show it); each such file is
    removed first: nothing this run wrote stays behind unlisted. ``early``: what was read of
    the early downloads already (the same bytes: same path and sha256)."""
    downloaded = {r.key: r.sha256 for r in report.downloaded}
    bad: dict[tuple[str, str], str] = {}
    for key, vf, acc in resolution.files:
        path = report.stored(key)
        if path not in downloaded or not path.endswith(".whl"):
            continue
        kept = early.get(path, downloaded[path]) if early is not None else None
        got = kept if kept is not None else _metadata_or_refusal(safe_join(out, path), vf.project, vf.link.url)
        if isinstance(got, bytes):
            report.metadata[path] = got  # published from these bytes (store/pages.ensure_metadata)
            written = early.written(path, downloaded[path]) if early is not None else None
            if written is not None:
                report.written[path] = written
            continue
        bad[(acc, vf.filename)] = got
        safe_join(out, path).unlink(missing_ok=True)
    if bad:
        raise BadCandidates(bad)


def check_fetched(report: FetchReport, spec: MirrorSpec, say: Callable[[str], None]) -> None:
    """Each accepted upstream hash mismatch said; any failed file stops the run (index unchanged)."""
    if spec.on_hash_mismatch == "warn":
        for r in report.mismatches:
            say(f"warning: {r.key}: upstream sha256 {r.upstream_sha256} but the bytes hash to {r.sha256} "
                "(accepted: on_hash_mismatch warn; recorded in manifest.json)")
    if report.failed:
        first = report.failed[0]
        raise TorchdepotError(f"{len(report.failed)} of {len(report.results)} files failed (index not updated); "
                              f"first: {first.key}: {first.error}")
