"""The mirror's lifecycle: which targets a sync covers, which torch versions it keeps, what goes.

Pure: manifests and spec values in, decisions out; the orchestrator (``sync/pip.py``) does the
I/O. The rules (issue 14 part 1):

- **Targets accumulate.** A mirror records every pip target it holds
  (:class:`~torchdepot.store.manifest.RecordedTarget`, with who asked: the spec or
  ``tools/fetch``). A sync covers what it was asked for plus every recorded target; only
  ``prune=True`` (``torchdepot mirror --prune``) narrows it to what was asked for, and the
  targets that go are listed with their sizes.
- **Versions accumulate, or ``keep: N``.** Per target, each torch version published is a
  :class:`~torchdepot.store.manifest.Release` (its wheels, unioned over the runs that
  published that version, so a lock written yesterday still finds its files). Without ``keep``
  every release stays listed and indexed; with ``keep: N`` the version just resolved and the
  newest others up to N stay, and older ones go at this sync, listed like a prune.
- **Nothing goes silently, nothing is orphaned.** A file leaves the manifest only when no kept
  release needs it; the orchestrator deletes exactly those files (they are the mirror's own),
  so the sync ends verify-clean. Conda files are never touched here.
- **Removals are journaled before the commit.** :func:`removed_paths` is what the orchestrator
  records in the publication journal (:func:`torchdepot.store.publication.record`) before it
  saves the manifest that unlists them: a run killed between that commit and the deletion
  leaves ``staged`` leftovers (not ``orphan`` files), which ``verify-mirror`` accepts and the
  next sync removes. A pruned target's folder (``targets/<id>/``, its pylock.toml) is journaled
  too: :func:`stale_target_dirs` finds one a killed run left, and the next sync removes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torchdepot.model.sizes import format_size
from torchdepot.model.wheelname import version_sort_key
from torchdepot.spec.mirror import PipTarget
from torchdepot.store import manifest as mf
from torchdepot.store.layout import PACKAGES_DIR, TARGETS_DIR, metadata_path, target_dir


@dataclass(frozen=True)
class TargetSet:
    run: tuple[PipTarget, ...]  # the targets this sync resolves, in order
    recorded: tuple[mf.RecordedTarget, ...]  # what the manifest records after it
    dropped: tuple[mf.RecordedTarget, ...]  # recorded targets --prune removes
    # targets run only because the mirror recorded them: when one cannot be pinned now it keeps
    # what the mirror published for it (said in one line), instead of failing the run
    tolerate: frozenset[str] = frozenset()
    prune: bool = False  # --prune: the user lets go (what no asked-for target needs, tombstones too)


# --prune dropped the target | keep: N dropped the release | no kept release lists the files
RemovalKind = Literal["prune", "keep", "superseded"]


@dataclass(frozen=True)
class Removal:
    """What leaves the mirror, grouped for one line each (a pruned target, a dropped version)."""
    reason: str  # "--prune: cu118-py311-linux-x86_64" | "keep 2: cpu-py311-linux-x86_64 torch 2.11.0+cpu"
    paths: tuple[str, ...]  # files (wheels and .metadata) that go
    size: int
    kind: RemovalKind = "superseded"  # why, for code (``reason`` is for people)

    def line(self) -> str:
        return f"{self.reason}: removing {len(self.paths)} files, {format_size(self.size)}"


def removed_paths(removals: tuple[Removal, ...] | list[Removal]) -> frozenset[str]:
    """Every file the ``removals`` delete: what is journaled before the commit that unlists them."""
    return frozenset(p for r in removals for p in r.paths)


def target_dirs(targets: tuple[mf.RecordedTarget, ...]) -> frozenset[str]:
    """The per-target folders (``targets/<id>``) of ``targets``, as journal paths."""
    return frozenset(target_dir(t.id) for t in targets)


def stale_target_dirs(journal: frozenset[str], live: set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(remove, forget): journaled target folders whose target is not ``live`` (pruned, maybe by
    a killed run) go; those of live targets (a killed prune was not repeated) leave the journal."""
    dirs = {p for p in journal if p.startswith(TARGETS_DIR + "/") and p.count("/") == 1}
    stale = frozenset(p for p in dirs if p.split("/", 1)[1] not in live)
    return stale, frozenset(dirs) - stale


def as_pip_target(r: mf.RecordedTarget) -> PipTarget:
    return PipTarget(accelerator=r.accelerator, python=r.python, platform=r.platform, id=r.id, torch=r.torch)


def _record(t: PipTarget, origin: mf.Origin) -> mf.RecordedTarget:
    return mf.RecordedTarget(id=t.id, accelerator=t.accelerator, python=t.python, platform=t.platform,
                             origin=origin, torch=t.torch)


def recorded_of(previous: mf.Manifest | None) -> tuple[mf.RecordedTarget, ...]:
    """The previous manifest's recorded targets; a manifest from before they were recorded
    gives its pip targets (torch constraint from its stored spec's ``targets``)."""
    if previous is None:
        return ()
    if previous.recorded:
        return tuple(previous.recorded)
    constraints = {}
    for entry in previous.spec.get("targets") or []:
        if isinstance(entry, dict) and entry.get("torch"):
            key = f"{entry.get('accelerator')}-py{str(entry.get('python', '')).replace('.', '')}-{entry.get('platform')}"
            constraints[key] = str(entry["torch"])
    return tuple(mf.RecordedTarget(id=t.id, accelerator=t.accelerator, python=t.python, platform=t.platform,
                                   origin="spec", torch=constraints.get(t.id))
                 for t in previous.targets if t.kind == "pip")


def target_set(asked: list[PipTarget], origin: mf.Origin, previous: mf.Manifest | None, prune: bool) -> TargetSet:
    """``asked`` (by the spec or tools/fetch, per ``origin``) plus every recorded target, unless ``prune``."""
    before = {r.id: r for r in recorded_of(previous)}
    run: dict[str, PipTarget] = {}
    recorded: dict[str, mf.RecordedTarget] = {}
    for t in asked:
        run[t.id] = t
        # a target the spec names is the spec's; one tools/fetch or a lock re-adds keeps its first origin
        kept_origin = "spec" if origin == "spec" else (before[t.id].origin if t.id in before else origin)
        recorded[t.id] = _record(t, kept_origin)
    dropped = []
    for r in before.values():
        if r.id in run:
            continue
        if prune:
            dropped.append(r)
        else:
            run[r.id] = as_pip_target(r)
            recorded[r.id] = r
    asked_ids = {t.id for t in asked}
    return TargetSet(run=tuple(run.values()), recorded=tuple(recorded.values()), dropped=tuple(dropped),
                     tolerate=frozenset(run) - asked_ids, prune=prune)


def releases_of(previous: mf.Manifest | None) -> tuple[mf.Release, ...]:
    """The previous manifest's releases; an older manifest gives one per pip target (its torch)."""
    if previous is None:
        return ()
    if previous.releases:
        return tuple(previous.releases)
    out = []
    for t in previous.targets:
        torch = t.torch
        if t.kind == "pip" and torch:
            out.append(mf.Release(target=t.id, torch=torch, paths=tuple(sorted({p.path for p in t.packages}))))
    return tuple(out)


def retain(previous: tuple[mf.Release, ...], current: tuple[mf.Release, ...], live: set[str],
           keep: int | None) -> tuple[tuple[mf.Release, ...], tuple[mf.Release, ...]]:
    """(kept, dropped) releases after a sync that resolved ``current`` for targets ``live``.

    A current release absorbs the previous paths of its (target, torch); per target the
    current version and the newest others up to ``keep`` stay (all without ``keep``); releases
    of targets no longer live are dropped."""
    merged: dict[tuple[str, str], mf.Release] = {}
    dropped: list[mf.Release] = []
    for r in previous:
        if r.target not in live:
            dropped.append(r)
        else:
            merged[(r.target, r.torch)] = r
    current_keys = set()
    for r in current:
        key = (r.target, r.torch)
        current_keys.add(key)
        old = merged.get(key)
        # a file name this run stored anew (its bytes changed upstream) replaces the old path
        names = {p.rsplit("/", 1)[-1] for p in r.paths}
        paths = set(r.paths) | ({p for p in old.paths if p.rsplit("/", 1)[-1] not in names} if old else set())
        merged[key] = mf.Release(target=r.target, torch=r.torch, paths=tuple(sorted(paths)))
    by_target: dict[str, list[mf.Release]] = {}
    for r in merged.values():
        by_target.setdefault(r.target, []).append(r)
    kept: list[mf.Release] = []
    for _target, rels in sorted(by_target.items()):
        # the version just resolved first, then the others newest first
        cur = [r for r in rels if (r.target, r.torch) in current_keys]
        others = sorted((r for r in rels if (r.target, r.torch) not in current_keys),
                        key=lambda r: version_sort_key(r.torch), reverse=True)
        ordered = cur + others
        n = len(ordered) if keep is None else max(keep, len(cur))
        kept += ordered[:n]
        dropped += ordered[n:]
    return tuple(kept), tuple(dropped)


def needed_paths(releases: tuple[mf.Release, ...]) -> set[str]:
    """Every wheel a release lists and its ``.metadata``."""
    return {q for r in releases for p in r.paths for q in (p, metadata_path(p))}


def is_pip_file(path: str) -> bool:
    return path.startswith(PACKAGES_DIR + "/")


def removals(previous: mf.Manifest | None, keep_paths: set[str], dropped_targets: tuple[mf.RecordedTarget, ...],
             dropped_releases: tuple[mf.Release, ...], keep: int | None) -> tuple[Removal, ...]:
    """The previous manifest's pip files not in ``keep_paths``, one :class:`Removal` per
    dropped target or release (a file shared by several is named under the first), and any
    rest (files no release recorded) under one more line."""
    if previous is None:
        return ()
    sizes = {f.path: f.size for f in previous.files if is_pip_file(f.path)}
    going = {p for p in sizes if p not in keep_paths}
    out: list[Removal] = []
    pruned = {t.id for t in dropped_targets}
    groups: list[tuple[RemovalKind, str, set[str]]] = []
    for t in dropped_targets:
        paths = needed_paths(tuple(r for r in dropped_releases if r.target == t.id))
        groups.append(("prune", f"--prune: {t.id}", paths))
    for r in dropped_releases:
        if r.target not in pruned:
            groups.append(("keep", f"keep {keep}: {r.target} torch {r.torch}", needed_paths((r,))))
    for kind, reason, paths in groups:
        mine = tuple(sorted(p for p in paths if p in going))
        going -= set(mine)
        out.append(Removal(kind=kind, reason=reason, paths=mine, size=sum(sizes[p] for p in mine)))
    if going:
        rest = tuple(sorted(going))
        out.append(Removal(kind="superseded", reason="superseded (no kept release lists them)", paths=rest,
                           size=sum(sizes[p] for p in rest)))
    return tuple(out)


@dataclass(frozen=True)
class RemovalPlan:
    """Retention's decision for one sync: the releases kept (each without the wheels ``lost``)
    and dropped, and the files that leave the mirror, grouped for one line each."""

    kept: tuple[mf.Release, ...]
    dropped: tuple[mf.Release, ...]
    removals: tuple[Removal, ...]
    lost: tuple[tuple[mf.Release, str], ...]  # (kept release, its wheel no longer on disk): dropped from it


def plan_removals(previous: mf.Manifest | None, current: tuple[mf.Release, ...], live: frozenset[str],
                  dropped_targets: tuple[mf.RecordedTarget, ...], keep: int | None, *,
                  listed: frozenset[str], missing: frozenset[str] = frozenset()) -> RemovalPlan:
    """What a sync keeps and removes; the dry run and the real run both call this.

    ``current``: the releases resolved now (``live``: every target the run serves, resolved or
    kept as published); ``listed``: the pip paths this run publishes itself (its wheels, their
    ``.metadata``, variants.json files); ``missing``: previously published wheels that are gone
    from disk (they leave their release). Every previous pip file neither ``listed`` nor needed
    by a kept release is removed."""
    kept, dropped = retain(releases_of(previous), current, set(live), keep)
    lost = tuple((r, p) for r in kept for p in r.paths if p in missing and p not in listed)
    gone = {p for _r, p in lost}
    kept = tuple(replace(r, paths=tuple(p for p in r.paths if p not in gone)) for r in kept)
    stay = set(listed) | needed_paths(kept)
    return RemovalPlan(kept=kept, dropped=dropped, removals=removals(previous, stay, dropped_targets, dropped, keep),
                       lost=lost)
