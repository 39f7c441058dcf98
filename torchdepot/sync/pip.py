"""Build or update an offline pip mirror from a :class:`~torchdepot.spec.mirror.MirrorSpec`.

The pipeline, one function per step, each leaving the previous mirror valid if it fails:

1. plan (``sync/plan.py``): which PyTorch upstream serves each accelerator (failover, any
   layout) and the pinned ``torch*`` requirements per target;
2. resolve (``sync/resolution.py``): uv against the local view (``sync/view.py``) of
   screened upstream links and verified metadata, never against upstream itself;
3. fetch (``sync/download.py``): verified downloads with per-file failover;
4. publish (``sync/pipindex.py``): PEP 658 metadata, pylock.toml per target, index pages
   (atomic swap); then conda (if configured), the landing page and manifest.json last;
5. check: re-verify what was published (``sync/check.py``), recorded in the manifest's
   ``last_sync``.

The target set and retention follow ``sync/lifecycle.py``: a sync covers what it is asked
for plus every target the mirror recorded (``prune`` narrows it), keeps every torch version
published per target unless the spec says ``keep: N``, and deletes exactly the files no kept
release needs, each group listed with its size first, so a sync ends verify-clean.

Every upstream read goes through one :class:`~torchdepot.sources.upstream.UpstreamReader`,
so a run requests each page and each metadata file at most once; the counts are in
:attr:`MirrorResult.requests`.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import InvalidVersion, Version

from torchdepot.errors import TorchdepotError
from torchdepot.fetch import Fetcher, FetchItem, FetchReport
from torchdepot.fetch.progress import ProgressCallback
from torchdepot.model.sizes import format_size
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import Client, HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources, pip_default_index, pip_file_host, read_pip_config
from torchdepot.resolve.pin import candidates
from torchdepot.resolve.uv import ResolvedFile
from torchdepot.site.landing import write_landing
from torchdepot.sources.upstream import UpstreamReader
from torchdepot.spec.mirror import TORCH_PROJECTS, MirrorSpec, PipTarget
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.store.fsutil import MirrorLock, safe_join
from torchdepot.store.layout import MANIFEST_NAME
from torchdepot.store.pages import IndexFile, ensure_metadata
from torchdepot.sync import lifecycle
from torchdepot.sync.check import verify_mirror
from torchdepot.sync.download import (
    PipFetchReport,
    fetch_files,
    make_fetcher,
    same_path_elsewhere,
    whole_into_store,
)
from torchdepot.sync.locked import LockedEnv, locked_resolution
from torchdepot.sync.pipindex import publish_pip
from torchdepot.sync.plan import (
    Plan,
    TargetPlan,
    dependency_sources,
    host_policy,
    locate_variants,
    plan_targets,
)
from torchdepot.sync.resolution import Resolution, file_key, resolve_targets
from torchdepot.sync.view import View, ViewSources

Echo = Callable[[str], None]
# Upstream pages fail fast: an unreachable PyTorch index must not stall the run.
PROBE_CONFIG = HttpConfig(connect_timeout=5.0, read_timeout=30.0, retries=1, backoff=0.2, max_backoff=1.0)
RESOLVE_JOBS = 4  # targets resolved at once (uv waits mostly on the view's loopback server)

__all__ = ["MirrorResult", "TargetPlan", "file_key", "sync", "sync_pip"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class MirrorResult:
    out: Path
    plans: list[TargetPlan] = field(default_factory=list)
    files: list[mf.FileEntry] = field(default_factory=list)
    targets: list[mf.Target] = field(default_factory=list)
    report: FetchReport | None = None
    generation: str | None = None
    index_changed: bool = False
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: mf.Manifest | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step (bench/diagnostics)
    requests: dict[str, int] = field(default_factory=dict)  # upstream requests: pages, metadata, ranges, wheels
    refused: int = 0  # upstream links refused by the screen (summarised in one message)
    releases: list[mf.Release] = field(default_factory=list)  # kept, per target and torch version
    removals: list[lifecycle.Removal] = field(default_factory=list)  # what this run removed (pruned, keep: N)
    dropped_releases: list[mf.Release] = field(default_factory=list)
    target_set: lifecycle.TargetSet | None = None
    verify: str = "unchecked"  # the closing check: "ok" | "NOT OK" | "unchecked"

    @property
    def torch_versions(self) -> dict[str, str]:
        """target id -> the torch version it serves after this run (resolved now, or kept as published)."""
        out = {t.id: p.version for t in self.targets for p in t.packages if p.name in ("torch", "pytorch")}
        out.update((tp.target.id, f.version) for tp in self.plans for f in tp.files if f.name == "torch")
        return out

    @property
    def size(self) -> int:
        """Bytes of every file the manifest lists after this run."""
        return sum(f.size for f in (self.manifest.files if self.manifest else self.files))

    @property
    def summary(self) -> str:
        if self.report is None:
            return "dry run: nothing fetched"
        return self.report.summary()

    def to_json(self) -> dict:
        """The run's figures for ``--json`` output."""
        return {"out": str(self.out), "targets": [t.id for t in self.targets], "generation": self.generation,
                "index_changed": self.index_changed, "seconds": round(self.seconds, 3),
                "requests": dict(self.requests), "links_refused": self.refused,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "torch": self.torch_versions, "size": self.size, "verify": self.verify,
                "files": self.report.summary() if self.report else None,
                "removed": [{"reason": r.reason, "files": list(r.paths), "size": r.size} for r in self.removals],
                "releases": [{"target": r.target, "torch": r.torch, "files": len(r.paths)} for r in self.releases]}


def _print_plan(resolution: Resolution, previous: mf.Manifest | None, say: Echo) -> None:
    """Each target's files and sizes as the index gave them (PEP 700 ``size``, uv's lock, the
    mirror's manifest for a file it holds): no request per file; a size nobody gave is '?'."""
    held = {e.url: e.size for e in (previous.files if previous else ()) if e.url and e.kind == "wheel"}
    resolved = {file_key(f): f.size for tp in resolution.targets for f in tp.files if f.size is not None}
    sizes = {key: vf.link.size if vf.link.size is not None else resolved.get(key, held.get(vf.link.url))
             for key, vf, _acc in resolution.files}
    urls = {key: vf.link.url for key, vf, _acc in resolution.files}
    for p in resolution.targets:
        keys = {file_key(f) for f in p.files}
        total = sum(sizes[k] or 0 for k in keys)
        unknown = sum(1 for k in keys if sizes[k] is None)
        names = {f.name for f in p.files}
        say(f"{p.target.id}: {len(names)} packages, {len(keys)} files, {format_size(total)}"
            + (f" (+{unknown} of unknown size)" if unknown else "")
            + f" [{' '.join(p.requirements)}] via {p.variant_url or 'pip configuration'}")
        for f in p.files:
            k = file_key(f)
            say(f"  {f.name}=={f.version}  {f.filename}  {format_size(sizes[k]) if sizes[k] else '?'}  <- {urls[k]}")
    total = sum(v or 0 for v in sizes.values())
    say(f"plan: {len(resolution.targets)} targets, {len(sizes)} unique files, {format_size(total)}; "
        "nothing written (dry run)")


class _Log:
    """A run's messages (kept in its result and echoed) and its seconds per step."""

    def __init__(self, result: MirrorResult, echo: Echo, mark: float) -> None:
        self.result, self.echo, self.mark = result, echo, mark

    def say(self, msg: str) -> None:
        self.result.messages.append(msg)
        self.echo(msg)

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.result.phases[name] = self.result.phases.get(name, 0.0) + now - self.mark
        self.mark = now


@dataclass(frozen=True)
class _Edge:
    """Where a run reads from: the user's pip sources, pip's default index (None when the user
    configured an index or none at all), the host policy, and the one upstream reader."""

    pip: PipSources
    default_index: str | None
    policy: HostPolicy
    reader: UpstreamReader


def _edge(spec: MirrorSpec, probe: Client, pip_sources: PipSources | None) -> _Edge:
    pip = pip_sources if pip_sources is not None else read_pip_config()
    default_index = None if (pip.index_url or pip.no_index) else pip_default_index()
    policy = host_policy(spec, pip, default_index, pip_file_host() if default_index else None)
    return _Edge(pip=pip, default_index=default_index, policy=policy, reader=UpstreamReader(probe, policy))


@dataclass
class _Held:
    """What a run holds open (set as it opens); :meth:`close` releases it however the run ends."""

    client: Client
    own_client: bool
    probe: Client
    scratch: tempfile.TemporaryDirectory | None = None
    view: View | None = None
    fetcher: Fetcher | None = None  # early downloads, until the fetch step takes it over

    def close(self, result: MirrorResult, reader: UpstreamReader, say: Echo) -> None:
        if self.view is not None:
            line = self.view.refusal_summary()
            result.refused = int(line.split()[2]) if line else 0
            if line:
                say(line)
        if self.fetcher is not None:  # the run stopped before its fetch step: let early downloads finish
            self.fetcher.close()
        result.requests = reader.request_counts()
        self.probe.close()
        if self.own_client:
            self.client.close()
        if self.scratch is not None:
            self.scratch.cleanup()


def _accelerators(run_targets: list[PipTarget], locks: tuple[LockedEnv, ...]) -> list[str]:
    """The run's accelerators, each once, in target order."""
    return list(dict.fromkeys([*(t.accelerator for t in run_targets), *(env.target.accelerator for env in locks)]))


def _open_view(spec: MirrorSpec, edge: _Edge, accelerators: list[str], workdir: Path,
               previous: mf.Manifest | None, say: Echo, out: Path, dry_run: bool) -> View:
    """The screened local index uv reads: each accelerator from the first upstream carrying it,
    dependencies from the user's pip sources, hashes the mirror already holds reused."""
    indexes, find_links = dependency_sources(edge.pip, edge.default_index)
    sources = ViewSources(variants=locate_variants(spec, edge.reader, accelerators, edge.pip, say),
                          indexes=indexes, find_links=find_links)
    held = [e for e in (previous.files if previous else ()) if e.url and e.kind == "wheel" and not e.hash_mismatch]
    return View(reader=edge.reader, policy=edge.policy, sources=sources, workdir=workdir,
                on_hash_mismatch=spec.on_hash_mismatch, say=say, exclude_newer=spec.exclude_newer,
                known_hashes={e.url: e.sha256 for e in held if e.url},
                local_wheels={e.url: safe_join(out, e.path) for e in held if e.url},
                metadata_cache=out / L.METADATA_CACHE, cache_writes=not dry_run)


def _resolve(plan: Plan, view: View, locks: tuple[LockedEnv, ...], cache: Path | None,
             write_cache: bool = True) -> Resolution:
    """uv for the planned targets (unchanged inputs reuse ``cache``), plus the locked targets' files."""
    resolution = resolve_targets(plan, view, jobs=RESOLVE_JOBS, cache=cache, write_cache=write_cache) \
        if plan.targets else Resolution(targets=(), files=())
    if not locks:
        return resolution
    locked = locked_resolution(locks, view)
    merged: dict[str, tuple] = {}
    for entry in locked.files + resolution.files:  # each file once, whoever needs it
        merged.setdefault(entry[0], entry)
    return Resolution(targets=locked.targets + resolution.targets, files=tuple(merged.values()))


def _check_fetched(report: FetchReport, spec: MirrorSpec, say: Echo) -> None:
    """Each accepted upstream hash mismatch said; any failed file stops the run (index unchanged)."""
    if spec.on_hash_mismatch == "warn":
        for r in report.mismatches:
            say(f"warning: {r.key}: upstream sha256 {r.upstream_sha256} but the bytes hash to {r.sha256} "
                "(accepted: on_hash_mismatch warn; recorded in manifest.json)")
    if report.failed:
        first = report.failed[0]
        raise TorchdepotError(f"{len(report.failed)} of {len(report.results)} files failed (index not updated); "
                              f"first: {first.key}: {first.error}")


@dataclass(frozen=True)
class _PipPublication:
    """What the publish step listed: files and targets (kept releases and carried targets
    included), the releases kept and dropped, and the index generation."""

    files: list[mf.FileEntry]
    targets: list[mf.Target]
    releases: list[mf.Release]
    dropped: list[mf.Release]
    generation: str
    changed: bool


def _publish(out: Path, spec: MirrorSpec, previous: mf.Manifest | None, resolution: Resolution,
             report: FetchReport, view: View, carried: list[mf.Target], say: Echo) -> _PipPublication:
    """Retention (``keep: N``) over the previous and current releases, then metadata, locks and pages."""
    stored = report.stored if isinstance(report, PipFetchReport) else (lambda key: key)
    current = _current_releases(resolution, stored)
    kept, dropped = lifecycle.retain(lifecycle.releases_of(previous), current,
                                     {tp.target.id for tp in resolution.targets} | {t.id for t in carried},
                                     spec.keep)
    retained, pages, kept = _retained(out, previous, resolution, stored, kept, carried, say)
    published = publish_pip(out, resolution, report, view, retained=pages)
    return _PipPublication(files=sorted([*published.files, *retained], key=lambda e: e.path),
                           targets=[*published.targets, *carried], releases=list(kept), dropped=list(dropped),
                           generation=published.generation, changed=published.changed)


def sync_pip(spec: MirrorSpec, *, out: Path | None = None, dry_run: bool = False, client: Client | None = None,
             progress: bool | None = None, pip_sources: PipSources | None = None, echo: Echo = _stderr,
             targets: Sequence[PipTarget] | None = None, previous: mf.Manifest | None = None,
             locks: tuple[LockedEnv, ...] = (), tolerate: frozenset[str] = frozenset(),
             on_progress: ProgressCallback | None = None) -> MirrorResult:
    """The pip side: plan, resolve, fetch, publish metadata, locks and index pages (no manifest).

    ``targets``: what to resolve (default: the spec's); ``previous``: the mirror's manifest
    before this run, whose kept releases (:func:`lifecycle.retain`) stay listed and indexed;
    ``locks``: targets taken exactly from lock folders (``sync/locked.py``), not resolved;
    ``tolerate``: targets that, when they cannot be pinned now (upstream dropped or lost their
    variant), keep what ``previous`` published for them, said in one line each."""
    started = time.monotonic()
    out = Path(out or spec.out)
    result = MirrorResult(out=out)
    log = _Log(result, echo, mark=started)
    held = _Held(client=client or make_session(), own_client=client is None, probe=Client(PROBE_CONFIG))
    edge = _edge(spec, held.probe, pip_sources)
    edge.reader.keep_pages(out / L.PAGE_CACHE, write=not dry_run)
    held.scratch = tempfile.TemporaryDirectory(prefix="torchdepot-view-") if dry_run else None
    workdir = Path(held.scratch.name) if held.scratch else out / L.VIEW_DIR
    early: set[str] = set()
    try:
        run_targets = list(spec.targets() if targets is None else targets)
        locked_ids = {env.target.id for env in locks}
        held.view = view = _open_view(spec, edge, _accelerators(run_targets, locks), workdir, previous, log.say,
                                           out, dry_run)
        plan = plan_targets(spec, view, edge.pip, [t for t in run_targets if t.id not in locked_ids], tolerate)
        carried = _carried(plan, previous, log.say)
        log.phase("upstreams")
        if not dry_run:  # the pinned torch wheels download while their closures resolve
            held.fetcher = make_fetcher(out, spec, held.client, edge.policy, progress, on_progress)
            early = _submit_pinned(out, plan, view, spec, held.fetcher, previous)
            view.whole, relayed = whole_into_store(out, spec, held.fetcher)
        resolution = _resolve(plan, view, locks, out / L.RESOLUTIONS, write_cache=not dry_run)
        early |= set() if dry_run else relayed
        result.plans = list(resolution.targets)
        log.phase("resolve")
        if dry_run:
            _print_plan(resolution, previous, log.say)
            return result
        report = fetch_files(out, resolution, view, spec, held.client, edge.policy, progress, fetcher=held.fetcher)
        held.fetcher = None
        result.report = report = _drop_unused(out, report, early, resolution)
        log.phase("fetch")
        _check_fetched(report, spec, log.say)
        done = _publish(out, spec, previous, resolution, report, view, carried, log.say)
        result.files, result.targets, result.generation = done.files, done.targets, done.generation
        result.releases, result.dropped_releases, result.index_changed = done.releases, done.dropped, done.changed
        log.phase("publish")
        return result
    finally:
        held.close(result, edge.reader, log.say)
        result.seconds = time.monotonic() - started


def _carried(plan, previous: mf.Manifest | None, say: Echo) -> list[mf.Target]:
    """The published state of each target the plan skipped (it could not be pinned now)."""
    before = {t.id: t for t in (previous.targets if previous else []) if t.kind == "pip"}
    out = []
    for t, why in plan.skipped:
        if t.id not in before:
            raise TorchdepotError(why)  # nothing published to keep
        torch = next((p.version for p in before[t.id].packages if p.name == "torch"), "?")
        say(f"warning: {t.id}: kept as published (torch {torch}); not updated: {why}")
        out.append(before[t.id])
    return out


def _submit_pinned(out: Path, plan, view: View, spec: MirrorSpec, fetcher: Fetcher,
                   previous: mf.Manifest | None) -> set[str]:
    """Start downloading each pinned torch / torchvision / torchaudio wheel now (issue 15: torch
    is known before its closure resolves). Only a pin with exactly one wheel for its target is
    submitted, and only when that file is new to the mirror (neither listed nor on disk); its
    path is journaled first (immutable publication), as the fetch step would. Returns the keys."""
    listed = previous.by_path() if previous is not None else {}
    items: dict[str, FetchItem] = {}
    for tp in plan.targets:
        t = tp.target
        for req in tp.requirements:
            project, _, version = req.partition("==")
            if project not in TORCH_PROJECTS or not version:
                continue
            links = [vf.link for vf in view.project(t.accelerator, project)]
            wheels = {w.filename for w in candidates(links, project, t.accelerator, t.python, t.platform, view.wheels)
                      if _same_version(w.version, version)}
            if len(wheels) != 1:
                continue
            (filename,) = wheels
            vf = next(vf for vf in view.project(t.accelerator, project) if vf.filename == filename)
            key = file_key(ResolvedFile(name=project, version=version, url=vf.link.url, filename=filename,
                                        sha256=vf.link.sha256, size=vf.link.size))
            if key in listed or safe_join(out, key).exists() or not vf.link.sha256:
                continue
            items[key] = FetchItem(key, same_path_elsewhere(vf.link.url, spec.upstreams), vf.link.sha256, vf.link.size)
    if items:
        publication.record(out, {p for key in items for p in (key, key + lifecycle.METADATA_SUFFIX)})
        fetcher.start()
        for item in sorted(items.values(), key=lambda i: -(i.size or 0)):
            fetcher.submit(item)
    return set(items)


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _drop_unused(out: Path, report, early: set[str], resolution: Resolution):
    """An early download the resolver did not choose after all: removed, and out of the report."""
    used = {report.stored(key) if isinstance(report, PipFetchReport) else key for key, _vf, _acc in resolution.files}
    unused = early - used
    if not unused:
        return report
    for key in unused:
        safe_join(out, key).unlink(missing_ok=True)
    return replace(report, results=[r for r in report.results if r.key not in unused])


def _current_releases(resolution: Resolution, stored: Callable[[str], str]) -> tuple[mf.Release, ...]:
    """Per target, the torch version resolved now and the stored paths of its closure."""
    out = []
    for tp in resolution.targets:
        torch = next((f.version for f in tp.files if f.name == "torch"), None)
        if torch:
            out.append(mf.Release(target=tp.target.id, torch=torch,
                                  paths=tuple(sorted({stored(file_key(f)) for f in tp.files}))))
    return tuple(out)


def _retained(out: Path, previous: mf.Manifest | None, resolution: Resolution, stored: Callable[[str], str],
              kept: tuple[mf.Release, ...], carried: list[mf.Target], say: Echo) -> tuple[list[mf.FileEntry], dict[str, list[IndexFile]], tuple[mf.Release, ...]]:
    """Manifest entries and index files (per accelerator) of the kept releases' wheels that this
    run did not resolve; a wheel no longer on disk leaves its release (said once)."""
    if previous is None:
        return [], {}, kept
    before = previous.by_path()
    current = {stored(key) for key, _vf, _acc in resolution.files}
    acc_of = {tp.target.id: tp.target.accelerator for tp in resolution.targets}
    acc_of.update((t.id, t.accelerator) for t in carried)
    current_of: dict[str, set[str]] = {}
    for tp in resolution.targets:
        current_of.setdefault(tp.target.accelerator, set()).update(stored(file_key(f)) for f in tp.files)
    entries: dict[str, mf.FileEntry] = {}
    index: dict[str, IndexFile] = {}
    pages: dict[str, dict[str, IndexFile]] = {}
    fixed = []
    for rel in kept:
        paths = []
        for path in rel.paths:
            wheel = before.get(path)
            if path not in current and (wheel is None or not (out / path).is_file()):
                say(f"warning: {rel.target} torch {rel.torch}: {path} is no longer on disk; dropped from the mirror")
                continue
            paths.append(path)
            if path in current:
                continue
            if path not in index:
                meta_sha, req_py, meta_size = ensure_metadata(out, path, wheel.project or "")
                index[path] = IndexFile(wheel.project or "", path.rsplit("/", 1)[-1], path, wheel.sha256, req_py,
                                        meta_sha, size=wheel.size, upload_time=wheel.upload_time)
                meta = before.get(path + lifecycle.METADATA_SUFFIX)
                entries[path] = wheel
                entries[path + lifecycle.METADATA_SUFFIX] = mf.FileEntry(
                    path=path + lifecycle.METADATA_SUFFIX, sha256=meta_sha, size=meta_size, kind="metadata",
                    project=wheel.project, version=wheel.version,
                    upstream_sha256=meta.upstream_sha256 if meta else None,
                    hash_mismatch=bool(meta and meta.hash_mismatch))
            acc = acc_of[rel.target]
            if path not in current_of.get(acc, set()):
                pages.setdefault(acc, {})[path] = index[path]
        fixed.append(replace(rel, paths=tuple(paths)))
    return list(entries.values()), {acc: list(files.values()) for acc, files in pages.items()}, tuple(fixed)


def _conda(spec: MirrorSpec, out: Path, client: Client | None, dry_run: bool, result: MirrorResult,
           echo: Echo) -> tuple[list[mf.FileEntry], list[mf.Target]]:
    """Run the conda side when the spec has a ``conda:`` section."""
    if spec.conda is None:
        return [], []
    from torchdepot.sync.conda import sync_conda

    cres = sync_conda(spec, out, client=client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch,
                      dry_run=dry_run)
    if cres.summary:
        result.messages.append(f"conda: {cres.summary}")
        echo(f"conda: {cres.summary}")
    return list(cres.files), list(cres.targets)


def _previous(out: Path) -> mf.Manifest | None:
    return mf.load(out) if (out / MANIFEST_NAME).is_file() else None


def sync(spec: MirrorSpec, *, dry_run: bool = False, client: Client | None = None, progress: bool | None = None,
         out: Path | None = None, wait: float | None = None, pip_sources: PipSources | None = None,
         echo: Echo = _stderr, add: Sequence[PipTarget] = (), spec_targets: bool = True,
         prune: bool = False, locks: tuple[LockedEnv, ...] = (),
         on_progress: ProgressCallback | None = None) -> MirrorResult:
    """A whole mirror run under the mirror lock: pip, conda, landing page, manifest last.

    Targets: the spec's (``spec_targets``) plus ``add`` (tools/fetch) plus every target the
    mirror recorded before, unless ``prune``: then the recorded ones not asked for go, listed
    with their sizes. Files no kept release needs are deleted after the new index and manifest
    are in place, each group listed first; the closing check is recorded in ``last_sync``.
    ``locks``: lock folders whose exact files are mirrored for their targets (``--from-locks``)."""
    started = time.monotonic()
    out = Path(out or spec.out)
    asked = [*(spec.targets() if spec_targets else []), *add, *(env.target for env in locks)]
    origin = "locks" if locks else "spec" if spec_targets else "fetch"
    if dry_run:
        previous = _previous(out) if out.is_dir() else None
        tset = lifecycle.target_set(asked, origin, previous, prune)
        result = sync_pip(spec, out=out, dry_run=True, client=client, progress=progress, pip_sources=pip_sources,
                          echo=echo, targets=tset.run, previous=previous, locks=locks,
                          tolerate=frozenset(t.id for t in tset.run) - {t.id for t in asked})
        result.target_set = tset
        if tset.dropped:
            gone = {t.id for t in tset.dropped}
            releases = lifecycle.releases_of(previous)
            stay = lifecycle.needed_paths(tuple(r for r in releases if r.target not in gone))
            for r in lifecycle.removals(previous, stay, tset.dropped,
                                        tuple(r for r in releases if r.target in gone), spec.keep):
                result.messages.append(f"would remove ({r.line()})")
                echo(f"would remove ({r.line()})")
        _conda(spec, out, client, True, result, echo)
        return result
    out.mkdir(parents=True, exist_ok=True)
    with MirrorLock(out, wait):
        previous = _previous(out)
        tset = lifecycle.target_set(asked, origin, previous, prune)
        result = sync_pip(spec, out=out, client=client, progress=progress, pip_sources=pip_sources, echo=echo,
                          targets=tset.run, previous=previous, locks=locks, on_progress=on_progress,
                          tolerate=frozenset(t.id for t in tset.run) - {t.id for t in asked})
        result.target_set = tset
        files, targets = list(result.files), list(result.targets)
        conda_files, conda_targets = _conda(spec, out, client, False, result, echo)
        files += conda_files
        targets += conda_targets
        result.removals = list(lifecycle.removals(previous, {f.path for f in files}, tset.dropped,
                                                  tuple(result.dropped_releases), spec.keep))
        for r in result.removals:
            result.messages.append(r.line())
            echo(r.line())
        manifest = mf.Manifest(files=files, targets=targets, spec=spec.to_data(), recorded=list(tset.recorded),
                               releases=list(result.releases),
                               last_sync=_sync_record(started, "unchecked", ""))
        # journaled before the commit: a kill before _remove leaves staged leftovers, not orphans
        publication.record(out, lifecycle.removed_paths(result.removals) | lifecycle.target_dirs(tset.dropped))
        write_landing(out, manifest)
        mf.save(out, manifest)
        _remove(out, result.removals, {t.id for t in targets})
        check = _verify_published(out, result, echo)
        result.verify = "ok" if check.ok else "NOT OK"
        manifest = replace(manifest, last_sync=_sync_record(started, result.verify, check.summary()))
        mf.save(out, manifest)
        result.manifest = manifest
        result.seconds = time.monotonic() - started
        return result


def _sync_record(started: float, verify: str, detail: str) -> mf.SyncRecord:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return mf.SyncRecord(finished=now, seconds=round(time.monotonic() - started, 3), verify=verify, detail=detail)


def _remove(out: Path, removals: list[lifecycle.Removal], live: set[str]) -> None:
    """Delete what the new manifest no longer lists (the mirror's own files, already unlisted
    and unindexed), and the journaled per-target folders of targets not ``live`` (pruned now
    or by a killed run)."""
    for r in removals:
        for path in r.paths:
            safe_join(out, path).unlink(missing_ok=True)
    stale, forget = lifecycle.stale_target_dirs(publication.load_journal(out), live)
    for rel in sorted(stale):
        folder = safe_join(out, rel)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
    publication.forget(out, forget)


def _verify_published(out: Path, result: MirrorResult, echo: Echo):
    """Re-check what was just published: every manifest file hash-valid, every index link
    resolving. The fetcher's hash cache spares re-reading unchanged files."""
    check = verify_mirror(out, trust_cache=True, clean=True)  # drops leftovers of killed runs
    if check.ok:
        return check
    serious = [p for p in check.unrepaired if p.kind in ("missing", "corrupt", "dangling-link", "bad-json-page")]
    for p in check.unrepaired[:10]:
        msg = f"verify-mirror: {p.kind}: {p.path}: {p.detail}"
        result.messages.append(msg)
        echo(msg)
    if serious:
        raise TorchdepotError(f"{check.summary()}; first: {serious[0].path}: {serious[0].detail}")
    msg = f"{check.summary()} (run 'torchdepot verify-mirror {out} --repair' to clean up)"
    result.messages.append(msg)
    echo(msg)
    return check
