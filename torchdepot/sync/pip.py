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

A re-sync whose spec, pip sources and manifest are those of the last clean run, and whose pages
all answer 304, replays that run's record instead (``sync/settled.py``: only ``last_sync`` is
committed); otherwise the whole pipeline runs, with the reader the replay attempt opened.

Every upstream read goes through one :class:`~torchdepot.sources.upstream.UpstreamReader`,
so a run requests each page and each metadata file at most once; the counts are in
:attr:`MirrorResult.requests`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torchdepot.net.http import Client, make_session
from torchdepot.net.pipconfig import PendingRead, PipSources
from torchdepot.site.landing import write_landing
from torchdepot.spec.mirror import MirrorSpec, PipTarget
from torchdepot.store import cachefiles, publication
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import MirrorLock
from torchdepot.sync import (
    conda_side,
    dryrun,
    lifecycle,
    retention,
    session,
    settled,
    tombstones,
)
from torchdepot.sync.check import index_settled, verify_published
from torchdepot.sync.follow import FollowRecord, follow_upstream, save_record
from torchdepot.sync.locked import LockedEnv, with_locked
from torchdepot.sync.plan import TargetPlan, plan_targets
from torchdepot.sync.reads import ReadProgress
from torchdepot.sync.resolution import Resolution, file_key, resolve_targets
from torchdepot.sync.result import Echo, MirrorResult, RunLog, TargetFailure, sync_record

if TYPE_CHECKING:
    from torchdepot.fetch.progress import ProgressCallback

# Not imported here: the fetch side (sync/download.py, sync/early.py: the fetch engine, its pools
# and progress display) loads in sync_pip and _whole_run, and sync/regional.py only for a regional
# mirror, so a no-op re-sync (sync/settled.py) starts without them.

MAX_BAD_WHEEL_PASSES = 3  # a run's passes when downloaded wheels turn out to be no wheels
RESOLVE_JOBS = max(4, os.cpu_count() or 1)  # targets resolved at once: up to the cores, at least 4
# Named here so a test can stop a run at each step of the commit (tests/test_crash_lifecycle.py).
_remove, _verify_published = retention.remove, verify_published

__all__ = ["MirrorResult", "TargetPlan", "file_key", "sync", "sync_pip"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync_pip(spec: MirrorSpec, *, out: Path, target_set: lifecycle.TargetSet, dry_run: bool = False,
             client: Client | None = None, progress: bool | None = None, pip_sources: PipSources | None = None,
             echo: Echo = _stderr, previous: mf.Manifest | None = None, locks: tuple[LockedEnv, ...] = (),
             on_progress: ProgressCallback | None = None,
             excluded: dict[tuple[str, str], str] | None = None, edge: session.Edge | None = None) -> MirrorResult:
    """The pip side: plan, resolve, fetch, publish metadata, locks and index pages (no manifest).

    ``out`` and ``target_set`` (what to resolve, prune and tolerate) are :func:`sync`'s, decided
    there once; ``previous``: the mirror's manifest before this run, whose kept releases
    (:func:`lifecycle.plan_removals`) stay listed and indexed; ``locks``: targets taken exactly
    from lock folders (``sync/locked.py``), not resolved. A dry run writes nothing under ``out``
    and plans the same removals the real run makes. ``edge``: the sources and reader an attempt
    at the no-op shortcut opened (its pages are not read again); else opened here."""
    from torchdepot.sync import early
    from torchdepot.sync.download import (
        EarlyReads,
        check_fetched,
        fetch_files,
        make_fetcher,
        reject_bad_wheels,
        whole_into_store,
    )

    started = time.monotonic()
    tset = target_set
    result = MirrorResult(out=out, target_set=tset)
    log = RunLog(result, echo, mark=started)
    if edge is None:
        held = session.Held(client=client or make_session(), own_client=client is None,
                            probe=Client(session.PROBE_CONFIG))
        edge = session.edge(spec, held.probe, pip_sources)
    else:
        held = session.Held(client=client or make_session(), own_client=client is None, probe=edge.reader.client,
                            own_probe=False)
    edge.reader.keep_pages(out / L.PAGE_CACHE, write=not dry_run)  # pages re-read conditionally
    held.scratch = tempfile.TemporaryDirectory(prefix="torchdepot-view-") if dry_run else None
    workdir = Path(held.scratch.name) if held.scratch else out / L.VIEW_DIR
    early_keys: set[str] = set()
    reads = EarlyReads(out)
    shown = ReadProgress(edge.reader, progress, "pages and METADATA")  # closed before the fetch's wait
    try:
        locked_ids = {env.target.id for env in locks}
        held.view = view = session.open_view(spec, edge, session.accelerators(list(tset.run), locks), workdir,
                                             previous, log.say, out, dry_run)
        view.excluded.update(excluded or {})  # files an earlier pass of this run downloaded and found bad
        view.held = result.keeper = tombstones.Keeper.of(previous, out)  # upstream's deletions: the mirror's copy
        fetcher = None
        if not dry_run:  # before pinning: a wheel it must read whole (no Range upstream) is then fetched once
            held.fetcher = fetcher = make_fetcher(out, spec, held.client, edge.policy, progress, on_progress)
            view.whole, relayed = whole_into_store(out, spec, fetcher)  # a hashless wheel: fetched once
        plan = plan_targets(spec, view, edge.pip, [t for t in tset.run if t.id not in locked_ids], tset.tolerate)
        for warning in dict.fromkeys(w for tp in plan.targets for w in tp.warnings):
            log.say(warning)
        carried = retention.carried_targets(plan, previous, log.say)
        result.failed = [TargetFailure(target=t.id, line=why) for t, why in plan.failed]
        for failure in result.failed:  # said first; the run goes on with the others and fails at its end
            log.say(f"error: {failure.line}")
        log.phase("upstreams")
        if fetcher is not None:  # the pinned torch wheels download while their closures resolve
            early_keys = early.submit_pinned(out, plan, view, spec, fetcher, previous, reads)
        resolved = (resolve_targets(plan, view, jobs=RESOLVE_JOBS, cache=out / L.RESOLUTIONS, write_cache=not dry_run,
                                    progress=progress)
                    if plan.targets else Resolution(targets=(), files=()))
        if not dry_run:
            early_keys |= relayed
        resolution = with_locked(resolved, locks, view)
        for line in view.exclusion_lines():
            log.say(line)
        if resolved.failed:  # each named; what it had published stays (retention.carried_failed)
            carried += retention.carried_failed([tid for tid, _why in resolved.failed], previous)
            for tid, why in resolved.failed:
                result.failed.append(TargetFailure(target=tid, line=why))
                log.say(f"error: {why}")
        result.plans = list(resolution.targets)
        log.phase("resolve")
        live = frozenset(tp.target.id for tp in resolution.targets) | {t.id for t in carried}
        if dry_run:
            dryrun.print_plan(resolution, previous, log.say, edge.reader.learned_sizes())
            removal_plan = retention.plan_dry(out, previous, resolution, live, tset, spec.keep, result.keeper)
        else:
            shown.close()
            fetched = fetch_files(out, resolution, view, spec, held.client, edge.policy, progress,
                                  fetcher=held.fetcher, reads=reads, meanwhile=_load_publish_side)
            held.fetcher = None
            result.report = report = early.drop_unused(out, fetched, early_keys, resolution)
            log.phase("fetch")
            check_fetched(report, spec, log.say)
            reject_bad_wheels(out, resolution, report, reads)  # the caller runs again without them
            done = retention.publish_with_retention(out, previous, resolution, report, view, carried, tset,
                                                    spec.keep, log.say, result.keeper, progress=progress)
            result.files, result.targets, result.generation = done.files, done.targets, done.generation
            result.index_changed, removal_plan = done.changed, done.plan
            result.cache_used = {L.PAGE_CACHE: edge.reader.kept_page_names(), L.METADATA_CACHE: view.metadata_cache_used()}
            log.phase("publish")
        result.releases, result.dropped_releases = list(removal_plan.kept), list(removal_plan.dropped)
        result.removals = list(removal_plan.removals)
        return result
    finally:
        shown.close()
        held.close(result, edge.reader, log.say)
        result.seconds = time.monotonic() - started


def _load_publish_side() -> None:
    """What the publish step loads lazily (tomlkit for the locks, ~0.01 s; a no-op re-sync needs
    none of it), loaded while the files download rather than after the last one."""
    import tomlkit  # noqa: F401


def _previous(out: Path) -> mf.Manifest | None:
    return mf.load(out) if (out / L.MANIFEST_NAME).is_file() else None


def sync(spec: MirrorSpec, *, dry_run: bool = False, client: Client | None = None, progress: bool | None = None,
         out: Path | None = None, wait: float | None = None, pip_sources: PipSources | None = None,
         echo: Echo = _stderr, add: Sequence[PipTarget] = (), spec_targets: bool = True,
         prune: bool = False, locks: tuple[LockedEnv, ...] = (),
         on_progress: ProgressCallback | None = None, pip_config: PendingRead | None = None) -> MirrorResult:
    """A whole mirror run under the mirror lock: pip, conda, landing page, manifest last.

    Targets: the spec's (``spec_targets``) plus ``add`` (tools/fetch) plus every target the
    mirror recorded before, unless ``prune``: then the recorded ones not asked for go, listed
    with their sizes. Files no kept release needs are deleted after the new index and manifest
    are in place, each group listed first; the closing check is recorded in ``last_sync``.
    ``locks``: lock folders whose exact files are mirrored for their targets (``--from-locks``).
    ``pip_config``: the read of the user's pip configuration the command started early
    (:meth:`PendingRead.start` with this mirror's ``L.PIP_CONFIG``); used where the run would read
    it into the mirror's state, ended early otherwise; the caller closes it in any case."""
    started, wall_started = time.monotonic(), time.time()
    out = Path(out or spec.out)
    if spec.releases is not None or (out / L.REGIONAL_RECORD).is_file():  # else regional.py is not loaded
        from torchdepot.sync.regional import refuse_regional_out, sync_regional

        if spec.releases is not None:  # a regional operator's mirror: every matching release, no targets
            return sync_regional(spec, out=out, dry_run=dry_run, prune=prune, client=client, progress=progress,
                                 pip_sources=pip_sources, echo=echo, wait=wait, on_progress=on_progress)
        refuse_regional_out(out)
    spec, followed = follow_upstream(spec, out, pip_sources=pip_sources, prune=prune, say=echo)
    asked = [*(spec.targets() if spec_targets else []), *add, *(env.target for env in locks)]
    origin: mf.Origin = "locks" if locks else "spec" if spec_targets else "fetch"
    if dry_run:
        previous = _previous(out)
        tset = lifecycle.target_set(asked, origin, previous, prune)
        result = sync_pip(spec, out=out, dry_run=True, client=client, progress=progress, pip_sources=pip_sources,
                          echo=echo, target_set=tset, previous=previous, locks=locks)
        log = RunLog(result, echo, mark=started)
        dry = retention.settle_dry(out, previous, result.keeper, tset, list(result.releases), result.removals)
        result.removals, result.tombstones = dry.removals, dry.tombstones
        dryrun.print_tombstones(result.tombstones, log.say)  # the lines the real run prints
        dryrun.print_removals(result.removals, prune or spec.keep is not None, log.say)
        conda_side.publish(conda_side.prepare(spec, out, client, True, log.say), out, log.say)
        return result
    out.mkdir(parents=True, exist_ok=True)
    with MirrorLock(out, wait):
        previous = _previous(out)
        tset = lifecycle.target_set(asked, origin, previous, prune)
        # the no-op shortcut (sync/settled.py): only for the spec's own run of a pip-only mirror
        inputs, edge, probe = None, None, None
        if spec.conda is None and spec_targets and not add and not locks:
            if pip_config is not None and pip_config.started:  # a whole run is likely: its fetch side
                from torchdepot.sync import early  # noqa: F401  loads while pip's configuration is read
            probe = Client(session.PROBE_CONFIG)
            probe.size_pools(hosts=4, per_host=settled.REVALIDATE_JOBS)
            edge = session.edge(spec, probe, pip_sources, keep_in=out, pending=pip_config)
            inputs = settled.inputs_digest(spec, tset, prune, edge)
            done = settled.replay(out, previous, tset, inputs, edge, started, wall_started, echo, progress) \
                if previous is not None else None
            if done is not None:
                probe.close()
                if followed is not None:
                    save_record(out, followed)
                return done
        elif pip_config is not None:  # this run reads pip's configuration without keeping it
            pip_config.close()
        settled.forget(out)
        try:
            return _whole_run(spec, out, started, wall_started, previous, tset, followed, inputs, edge, client=client,
                              progress=progress, pip_sources=pip_sources, echo=echo, locks=locks,
                              on_progress=on_progress)
        finally:
            if probe is not None:
                probe.close()


def _whole_run(spec: MirrorSpec, out: Path, started: float, wall_started: float, previous: mf.Manifest | None,
               tset: lifecycle.TargetSet, followed: FollowRecord | None, inputs: str | None,
               edge: session.Edge | None, *,
               client: Client | None, progress: bool | None, pip_sources: PipSources | None, echo: Echo,
               locks: tuple[LockedEnv, ...], on_progress: ProgressCallback | None) -> MirrorResult:
    """:func:`sync`'s run under the lock when the no-op shortcut did not apply. ``inputs``: its
    digest when the run may leave a record for the next one (``sync/settled.py``); ``edge``: the
    shortcut's sources and reader, whose pages are not read again."""
    from torchdepot.sync.download import BadCandidates

    conda = conda_side.prepare(spec, out, client, False, echo)  # fails before anything is published
    excluded: dict[tuple[str, str], str] = {}
    pip_said = 0
    for attempt in range(MAX_BAD_WHEEL_PASSES):
        try:
            result = sync_pip(spec, out=out, client=client, progress=progress, pip_sources=pip_sources,
                              echo=echo, target_set=tset, previous=previous, locks=locks,
                              on_progress=on_progress, excluded=excluded, edge=edge)
            pip_said = len(result.messages)
            break
        except BadCandidates as exc:  # downloaded bytes that are no wheel: resolve again without them
            if attempt + 1 == MAX_BAD_WHEEL_PASSES:
                raise
            excluded.update(exc.excluded)
    log = RunLog(result, echo, mark=started)
    conda_files, conda_targets = conda_side.publish(conda, out, log.say)
    files, targets = [*result.files, *conda_files], [*result.targets, *conda_targets]
    held = retention.settle(out, previous, result.keeper, files, targets, list(result.releases), result.removals,
                            {t.id for t in targets})
    files, result.removals, result.tombstones = held.files, held.removals, held.tombstones
    for t in result.tombstones:
        log.say(t.line())
    for r in result.removals:
        log.say(r.line())
    manifest = mf.Manifest(files=files, targets=targets, spec=spec.to_data(), recorded=list(tset.recorded),
                           releases=list(result.releases), last_sync=sync_record(started, "unchecked", ""),
                           tombstones=result.tombstones, pulled=held.pulled)
    # journaled before the commit: a kill before _remove leaves staged leftovers, not orphans
    publication.record(out, lifecycle.removed_paths(result.removals) | lifecycle.target_dirs(tset.dropped))
    write_landing(out, manifest)
    mf.save(out, manifest)
    _remove(out, result.removals, {t.id for t in targets})
    check = _verify_published(out, log.say, manifest=manifest, check_index=not index_settled(
        previous, files, result.index_changed, bool(result.removals)), progress=progress)
    result.verify = "ok" if check.ok else "NOT OK"
    manifest = replace(manifest, last_sync=sync_record(started, result.verify, check.summary()))
    mf.save(out, manifest)
    result.manifest = manifest
    if inputs is not None and not excluded and not pip_said and not result.failed and not result.removals \
            and result.verify == "ok":
        settled.record(out, inputs, result, result.pages_seen)
    if followed is not None:
        save_record(out, followed)
    if result.cache_used is not None and not result.failed:  # a complete sync: what it used is current
        swept = cachefiles.sweep(out, result.cache_used, wall_started)
        if (line := swept.line()) is not None:
            log.say(line)
    result.seconds = time.monotonic() - started
    return result
