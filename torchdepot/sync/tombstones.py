"""Tombstones: published wheels upstream no longer serves as the mirror holds them.

Upstream deletes files (the cu124 index once dropped ``nvidia-cudnn-cu12==9.1.0.70``) or
re-publishes a name with other bytes. The mirror keeps its copy:

- **deleted** (upstream's page for the project no longer lists the file): the view offers the
  resolver the mirror's own copy (:class:`Keeper`, a ``file:`` link to the published wheel with
  its sha256 and PEP 658 metadata), so a target that pins it still resolves, the fetch finds it
  present and nothing is downloaded; the path stays listed, indexed and in its release.
- **changed** (upstream lists the name with another sha256): the new bytes go to a new path
  (immutable publication, ``store/publication.py``) and the old path stays listed in the
  manifest (not on the index pages, which name each file once) while a target that referenced
  it is recorded, so a lock or pylock.toml written before still finds its bytes.

Each is a :class:`~torchdepot.store.manifest.Tombstone` in the manifest, said in one line per
sync. A tombstone ends when upstream lists the file again with the same bytes, when no target
it was kept for is recorded any more, or, for a changed file no kept release lists, at
``--prune`` (how a user lets go). Only the pages a run reads are judged: a project the run did
not read keeps its tombstones as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from torchdepot.sources.links import Link
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import safe_join
from torchdepot.store.layout import METADATA_SUFFIX
from torchdepot.sync import lifecycle
from torchdepot.sync.pulled import spare

META = METADATA_SUFFIX  # PEP 658, named in store/layout.py


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def references(manifest: mf.Manifest) -> dict[str, set[str]]:
    """Wheel path -> the pip targets that list it (current packages or a kept release)."""
    refs: dict[str, set[str]] = {}
    for t in manifest.targets:
        if t.kind == "pip":
            for pkg in t.packages:
                refs.setdefault(pkg.path, set()).add(t.id)
    for r in manifest.releases:
        for path in r.paths:
            refs.setdefault(path, set()).add(r.target)
    return refs


@dataclass
class Keeper:
    """One run's view hook (``View.held``): per (accelerator, project) page it reads, the wheels
    the previous manifest holds for that accelerator's targets are compared with upstream's
    links; a wheel upstream no longer lists is offered from the mirror's own copy."""

    root: Path
    held: dict[tuple[str, str], list[tuple[mf.FileEntry, mf.FileEntry | None]]]  # -> (wheel, its .metadata)
    deleted: set[str] = field(default_factory=set)  # paths upstream no longer lists
    changed: dict[str, str] = field(default_factory=dict)  # path -> the sha256 upstream now lists
    relisted: set[str] = field(default_factory=set)  # paths upstream lists with the same bytes
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, previous: mf.Manifest | None, root: Path) -> Keeper:
        held: dict[tuple[str, str], list[tuple[mf.FileEntry, mf.FileEntry | None]]] = {}
        if previous is not None:
            by_path = previous.by_path()
            acc = {t.id: t.accelerator for t in previous.targets if t.kind == "pip"}
            acc.update((r.id, r.accelerator) for r in previous.recorded)
            for path, targets in sorted(references(previous).items()):
                entry = by_path.get(path)
                if entry is None or entry.kind != "wheel" or not entry.project or entry.hash_mismatch:
                    continue
                for a in sorted({acc[t] for t in targets if t in acc}):
                    held.setdefault((a, str(canonicalize_name(entry.project))), []).append(
                        (entry, by_path.get(path + META)))
        return cls(root=Path(root), held=held)

    def __call__(self, accelerator: str, project: str, upstream: list[Link]) -> list[Link]:
        """The links to add to ``project``'s page for ``accelerator``: the mirror's copies of
        wheels it holds there that ``upstream`` (the screened links) no longer lists."""
        listed = {link.filename: link.sha256 for link in upstream}
        offers: dict[str, Link] = {}
        for entry, meta in self.held.get((accelerator, str(canonicalize_name(project))), ()):
            name = _name(entry.path)
            with self._lock:
                if name in listed:
                    if listed[name] and listed[name] != entry.sha256:
                        self.changed[entry.path] = listed[name] or ""
                    else:
                        self.relisted.add(entry.path)
                    continue
                self.deleted.add(entry.path)
            path = safe_join(self.root, entry.path)
            if name in offers or not path.is_file() or path.stat().st_size != entry.size:
                continue  # gone from disk too: nothing to offer (the run fails as it would have)
            meta_ok = meta is not None and safe_join(self.root, meta.path).is_file()
            offers[name] = Link(url=path.as_uri(), filename=name, sha256=entry.sha256, size=entry.size,
                                core_metadata=f"sha256={meta.sha256}" if meta is not None and meta_ok else None,
                                upload_time=entry.upload_time)
        return list(offers.values())


@dataclass(frozen=True)
class Settled:
    """The manifest's files and the removals after tombstones, and the tombstones themselves."""

    files: list[mf.FileEntry]
    removals: list[lifecycle.Removal]
    tombstones: list[mf.Tombstone]


def settle(root: Path, previous: mf.Manifest | None, keeper: Keeper | None, files: Iterable[mf.FileEntry],
           targets: Iterable[mf.Target], releases: Iterable[mf.Release], removals: Iterable[lifecycle.Removal],
           live: Iterable[str], prune: bool) -> Settled:
    """Apply the tombstone rules (module docstring) to what a sync is about to commit."""
    files, removals = list(files), list(removals)
    if previous is None:
        return Settled(files, removals, [])
    live_ids = set(live)
    before = previous.by_path()
    now = {f.path: f for f in files}
    refs_now = references(mf.Manifest(targets=list(targets), releases=list(releases)))
    refs_before = references(previous)
    by_name = {_name(p): p for p in now if now[p].kind == "wheel"}
    deleted = keeper.deleted if keeper else set()
    changed = keeper.changed if keeper else {}
    relisted = keeper.relisted if keeper else set()
    carried = {t.path: t for t in previous.tombstones}
    out: dict[str, mf.Tombstone] = {}
    restore: set[str] = set()
    # what --prune and keep: N remove is let go; only the superseded copy of a changed name stays
    let_go = {p for r in removals if r.kind != "superseded" for p in r.paths}

    def kept_for(path: str) -> tuple[str, ...]:
        refs = refs_now.get(path) or refs_before.get(path, set())
        return tuple(sorted((refs | set(carried[path].targets if path in carried else ())) & live_ids))

    for path in sorted(deleted | set(changed) | (set(carried) - relisted)):
        old = before.get(path)
        if old is None or not old.project:
            continue
        reason = "deleted" if path in deleted else "changed" if path in changed else carried[path].reason
        kept_by = kept_for(path)
        if not kept_by:
            continue  # no recorded target needs it: it goes like any other file
        if path not in now:
            if reason == "deleted" or prune or path in let_go or not safe_join(root, path).is_file():
                continue  # no kept release lists it, or the user lets go (--prune, keep: N)
            restore.add(path)
        replaced = by_name.get(_name(path)) if reason == "changed" else None
        out[path] = mf.Tombstone(path=path, project=old.project, version=old.version or "?", reason=reason,
                                 targets=kept_by, replaced_by=replaced if replaced != path else None)
    for path in restore:
        now[path] = before[path]
        if path + META in before:
            now[path + META] = before[path + META]
    for path in deleted & set(now):  # the view offered a file: URL; the entry keeps where the bytes came from
        if (now[path].url or "").startswith("file:") and path in before and before[path].url:
            now[path] = replace(now[path], url=before[path].url)
    kept = {p for path in restore for p in (path, path + META)}
    return Settled(sorted(now.values(), key=lambda f: f.path), spare(removals, kept, previous),
                   sorted(out.values(), key=lambda t: t.path))
