"""Retention's I/O around :func:`torchdepot.sync.lifecycle.plan_removals` (which decides).

The publish step (:func:`publish_with_retention`): the releases resolved now, the kept older
releases' wheels listed and indexed again, then the pip side published; and the removal step
(:func:`remove`): the files the committed manifest no longer lists deleted, and the journaled
folders of pruned targets. The dry run (``sync/dryrun.py``) calls the same ``plan_removals``
with what this run would publish, so it lists exactly what the real run removes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.fetch import FetchReport
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.store.fsutil import safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.pages import ensure_metadata
from torchdepot.sync import lifecycle, pulled, tombstones
from torchdepot.sync.download import PipFetchReport, chosen_paths
from torchdepot.sync.pipindex import publish_pip
from torchdepot.sync.plan import Plan
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.variants import KIND as VARIANTS_JSON
from torchdepot.sync.view import View

Echo = Callable[[str], None]
Stored = Callable[[str], str]  # resolution key -> the path the fetch stored it at


def current_releases(resolution: Resolution, stored: Stored) -> tuple[mf.Release, ...]:
    """Per target, the torch version resolved now and the stored paths of its closure."""
    out = []
    for tp in resolution.targets:
        torch = next((f.version for f in tp.files if f.name == "torch"), None)
        if torch:
            out.append(mf.Release(target=tp.target.id, torch=torch,
                                  paths=tuple(sorted({stored(file_key(f)) for f in tp.files}))))
    return tuple(out)


def resolved_paths(resolution: Resolution, stored: Stored) -> frozenset[str]:
    """Every wheel the resolution stores and its ``.metadata``."""
    return frozenset(p for key, _vf, _acc in resolution.files
                     for p in (stored(key), L.metadata_path(stored(key))))


def missing_paths(out: Path, previous: mf.Manifest | None) -> frozenset[str]:
    """Wheels a previous release lists that the manifest does not, or that are gone from disk."""
    if previous is None:
        return frozenset()
    before = previous.by_path()
    return frozenset(p for r in lifecycle.releases_of(previous) for p in r.paths
                     if p not in before or not (out / p).is_file())


def plan(out: Path, previous: mf.Manifest | None, resolution: Resolution, stored: Stored,
         live: frozenset[str], dropped_targets: tuple[mf.RecordedTarget, ...], keep: int | None,
         listed: frozenset[str]) -> lifecycle.RemovalPlan:
    """:func:`lifecycle.plan_removals` for this run's resolution (``listed``: what it publishes)."""
    return lifecycle.plan_removals(previous, current_releases(resolution, stored), live, dropped_targets, keep,
                                   listed=listed, missing=missing_paths(out, previous))


def carried_failed(ids: list[str], previous: mf.Manifest | None) -> list[mf.Target]:
    """The published state of targets that failed this run after planning (it stays as it was)."""
    before = {t.id: t for t in (previous.targets if previous else []) if t.kind == "pip"}
    return [before[i] for i in ids if i in before]


def carried_targets(plan: Plan, previous: mf.Manifest | None, say: Echo) -> list[mf.Target]:
    """The published state of each target the plan skipped (it could not be pinned now)."""
    before = {t.id: t for t in (previous.targets if previous else []) if t.kind == "pip"}
    out = []
    for t, why in plan.skipped:
        if t.id not in before:
            raise TorchdepotError(why)  # nothing published to keep
        torch = before[t.id].torch or "?"
        say(f"warning: {t.id}: kept as published (torch {torch}); not updated: {why}")
        out.append(before[t.id])
    # an asked-for target that failed this run keeps what it had (it is named as failed at the end)
    out += [before[t.id] for t, _why in plan.failed if t.id in before]
    return out


def _retained(out: Path, previous: mf.Manifest | None, resolution: Resolution, stored: Stored,
              kept: tuple[mf.Release, ...], carried: list[mf.Target]
              ) -> tuple[list[mf.FileEntry], dict[str, list[IndexFile]]]:
    """Manifest entries and index files (per accelerator) of the kept releases' wheels that this
    run did not resolve."""
    if previous is None:
        return [], {}
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
    for rel in kept:
        for path in rel.paths:
            if path in current:
                continue
            wheel = before[path]
            if path not in index:
                meta_sha, req_py, meta_size = ensure_metadata(out, path, wheel.project or "")
                index[path] = IndexFile(project=wheel.project or "", filename=path.rsplit("/", 1)[-1], path=path, sha256=wheel.sha256, requires_python=req_py,
                                        metadata_sha256=meta_sha, size=wheel.size, upload_time=wheel.upload_time)
                meta = before.get(L.metadata_path(path))
                entries[path] = wheel
                entries[L.metadata_path(path)] = mf.FileEntry(
                    path=L.metadata_path(path), sha256=meta_sha, size=meta_size, kind="metadata",
                    project=wheel.project, version=wheel.version,
                    upstream_sha256=meta.upstream_sha256 if meta else None,
                    hash_mismatch=bool(meta and meta.hash_mismatch))
            acc = acc_of[rel.target]
            if path not in current_of.get(acc, set()):
                pages.setdefault(acc, {})[path] = index[path]
    return list(entries.values()), {acc: list(files.values()) for acc, files in pages.items()}


@dataclass(frozen=True)
class PipPublication:
    """What the publish step listed: files and targets (kept releases and carried targets
    included), retention's plan over them, and the index generation."""

    files: list[mf.FileEntry]
    targets: list[mf.Target]
    plan: lifecycle.RemovalPlan
    generation: str
    changed: bool


def retire(out: Path, previous: mf.Manifest | None, keeper: tombstones.Keeper | None, resolution: Resolution,
           stored: Stored, live: frozenset[str], prune: bool, first: lifecycle.RemovalPlan) -> frozenset[str]:
    """:func:`tombstones.retire` over this run (``first``: the plan before publishing): the
    paths of the retired copies listed again and their ``.metadata``; the real and dry runs alike."""
    resolved = [stored(key) for key, _vf, _acc in resolution.files] + [p for r in first.kept for p in r.paths]
    kept = tombstones.retire(out, previous, keeper, live=live, prune=prune, removals=first.removals,
                             resolved=resolved)
    return frozenset(q for p in kept for q in (p, L.metadata_path(p)))


def plan_dry(out: Path, previous: mf.Manifest | None, resolution: Resolution, live: frozenset[str],
             tset: lifecycle.TargetSet, keep: int | None, keeper: tombstones.Keeper | None) -> lifecycle.RemovalPlan:
    """The dry run's :func:`plan`: at the paths the real run would store at (nothing journaled),
    listing what it lists (its wheels, the variants.json files it reads anew, retired copies)."""
    chosen = chosen_paths(out, resolution, previous.by_path() if previous is not None else None)

    def stored(key: str) -> str:
        return chosen.get(key, key)

    listed = resolved_paths(resolution, stored) | {
        f.path for f in (previous.files if previous else ()) if f.kind == VARIANTS_JSON}
    first = plan(out, previous, resolution, stored, live, tset.dropped, keep, listed)
    kept = retire(out, previous, keeper, resolution, stored, live, tset.prune, first)
    return plan(out, previous, resolution, stored, live, tset.dropped, keep, listed | kept) if kept else first


def publish_with_retention(out: Path, previous: mf.Manifest | None, resolution: Resolution, report: FetchReport,
                           view: View, carried: list[mf.Target], tset: lifecycle.TargetSet, keep: int | None,
                           say: Echo, keeper: tombstones.Keeper | None = None,
                           progress: bool | None = False) -> PipPublication:
    """Retention (``keep: N``) over the previous and current releases, the retired copies of
    names upstream changed (``sync/tombstones.py``), then metadata, locks and pages."""
    stored: Stored = report.stored if isinstance(report, PipFetchReport) else (lambda key: key)
    live = frozenset(tp.target.id for tp in resolution.targets) | {t.id for t in carried}
    # the pages need the kept releases before publishing; the removals need every path the
    # publication lists (variants.json paths are chosen while publishing): plan, publish, plan again
    before = plan(out, previous, resolution, stored, live, tset.dropped, keep, resolved_paths(resolution, stored))
    for rel, path in before.lost:
        say(f"warning: {rel.target} torch {rel.torch}: {path} is no longer on disk; dropped from the mirror")
    retained, pages = _retained(out, previous, resolution, stored, before.kept, carried)
    current: dict[str, set[str]] = {}
    for tp in resolution.targets:
        current.setdefault(tp.target.accelerator, set()).update(stored(file_key(f)) for f in tp.files)
    pages = tombstones.yank_kept(pages, keeper, current)
    retire(out, previous, keeper, resolution, stored, live, tset.prune, before)
    accelerators = {tp.target.id: tp.target.accelerator for tp in resolution.targets}
    accelerators.update((t.id, t.accelerator) for t in carried)
    shown = tombstones.listing(out, previous, keeper, accelerators)
    for acc, anchors in shown.pages.items():
        pages.setdefault(acc, []).extend(anchors)
    published = publish_pip(out, resolution, report, view, retained=pages, progress=progress)
    listed = frozenset(e.path for e in [*published.files, *shown.entries])
    return PipPublication(files=sorted([*published.files, *retained, *shown.entries], key=lambda e: e.path),
                          targets=[*published.targets, *carried],
                          plan=plan(out, previous, resolution, stored, live, tset.dropped, keep, listed),
                          generation=published.generation, changed=published.changed)


def remove(out: Path, removals: list[lifecycle.Removal], live: set[str]) -> None:
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


@dataclass(frozen=True)
class Settled:
    """What a sync commits after the tombstone rules and the pull-through carry."""

    files: list[mf.FileEntry]
    removals: list[lifecycle.Removal]
    tombstones: list[mf.Tombstone]
    pulled: list[str]


def settle(out: Path, previous: mf.Manifest | None, keeper: tombstones.Keeper | None, files: list[mf.FileEntry],
           targets: list[mf.Target], releases: list[mf.Release], removals: list[lifecycle.Removal],
           live: set[str]) -> Settled:
    """The tombstone rules (``sync/tombstones.py``), then the files ``serve --pull-through``
    published carried over (``sync/pulled.py``), over what a sync is about to commit. The real
    run passes its new files; the dry run, which has none, passes what stays of the previous
    manifest, so it lists the removals the real run then makes."""
    kept = tombstones.settle(previous, keeper, files, targets, releases, removals, live)
    held = pulled.carry(out, previous, kept.files, kept.removals)
    return Settled(files=held.files, removals=held.removals, tombstones=kept.tombstones, pulled=held.pulled)


def staying(previous: mf.Manifest | None, removals: list[lifecycle.Removal]) -> list[mf.FileEntry]:
    """The previous manifest's entries that no removal takes: the dry run's stand-in for the
    files the real run lists."""
    going = lifecycle.removed_paths(removals)
    return [f for f in (previous.files if previous else ()) if f.path not in going]


def settle_dry(out: Path, previous: mf.Manifest | None, keeper: tombstones.Keeper | None, tset: lifecycle.TargetSet,
               releases: list[mf.Release], removals: list[lifecycle.Removal]) -> Settled:
    """:func:`settle` for a dry run: what stays of the previous manifest stands for the new
    files, its targets still served for the new targets."""
    before = list(previous.targets) if previous else []
    live = {t.id for t in tset.run} | {t.id for t in before if t.kind == "conda"}
    return settle(out, previous, keeper, staying(previous, removals), [t for t in before if t.id in live],
                  releases, removals, live)
