"""Tombstones: published wheels upstream no longer serves as the mirror holds them.

Upstream deletes files (the cu124 index once dropped ``nvidia-cudnn-cu12==9.1.0.70``) or
re-publishes a name with other bytes. The mirror keeps its copy:

- **deleted** (upstream's page for the project no longer lists the file): the view offers the
  resolver the mirror's own copy (:class:`Keeper`, a ``file:`` link to the published wheel with
  its sha256 and PEP 658 metadata), so a target that pins it still resolves, the fetch finds it
  present and nothing is downloaded; the path stays listed, indexed and in its release.
- **changed** (upstream lists the name with another sha256): the new bytes go to a new path
  (immutable publication, ``store/publication.py``) and the old path keeps the old bytes: it
  stays in the manifest and on the index pages (:func:`retire`, :func:`listing`) beside the new
  path, as a second anchor of the same file name, PEP 592-yanked and after the new one. A lock
  written before (``--require-hashes``) still installs with pip and uv: both keep only the
  candidate whose hash the lock allows, and a pin ``==`` allows a yanked one; an install
  without that hash gets the new bytes (pip skips a yanked file another file of the version can
  replace, uv takes the first of equal candidates). A kept older release that pins the old
  bytes lists them anyway (retention); on a page beside the new bytes they are yanked alike
  (:func:`yank_kept`). The old path is retired (``.torchdepot/retired.json``): it never
  receives other bytes, so ``immutable`` stays true.

Each is a :class:`~torchdepot.store.manifest.Tombstone` in the manifest, said in one line per
sync (and by ``mirror --dry-run``, which decides with the same functions). A tombstone ends when
upstream lists the file again with the same bytes, when no target it was kept for is recorded
any more, or, for a changed file no kept release lists, at ``--prune`` or when ``keep: N`` drops
its release (how a user lets go). Only the pages a run reads are judged: a project the run did
not read keeps its tombstones as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from torchdepot.sources.links import Link
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.layout import METADATA_SUFFIX
from torchdepot.store.pages import ensure_metadata
from torchdepot.sync import lifecycle

META = METADATA_SUFFIX  # PEP 658, named in store/layout.py
# PEP 592 reason on the retired copy's anchor (pip and uv print it when a lock installs it)
RETIRED_REASON = "upstream re-published this file with other bytes; kept for locks that pin these"


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


def _accelerators(previous: mf.Manifest) -> dict[str, str]:
    """Target id -> accelerator, for the pip targets and recorded targets of ``previous``."""
    acc = {t.id: t.accelerator for t in previous.targets if t.kind == "pip"}
    acc.update((r.id, r.accelerator) for r in previous.recorded)
    return acc


Held = dict[tuple[str, str], list[tuple[mf.FileEntry, mf.FileEntry | None]]]  # (acc, project) -> (wheel, .metadata)


@dataclass
class Keeper:
    """One run's view hook (``View.held``): per (accelerator, project) page it reads, the wheels
    the previous manifest holds for that accelerator's targets are compared with upstream's
    links; a wheel upstream no longer lists is offered from the mirror's own copy. The retired
    copies of earlier changes (``watched``) are only compared: upstream listing their bytes
    again ends their tombstone."""

    root: Path
    held: Held
    watched: Held = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # paths upstream no longer lists
    changed: dict[str, str] = field(default_factory=dict)  # path -> the sha256 upstream now lists
    relisted: set[str] = field(default_factory=set)  # paths upstream lists with the same bytes
    # retired copies this run lists again (retire): path -> where the name's new bytes are
    retired: dict[str, str | None] = field(default_factory=dict)
    # file name -> the path this run lists it at (retire: what it stores first, then kept releases)
    listed_at: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, previous: mf.Manifest | None, root: Path) -> Keeper:
        held: Held = {}
        watched: Held = {}
        if previous is not None:
            by_path = previous.by_path()
            acc = _accelerators(previous)
            carried = {t.path: t.targets for t in previous.tombstones if t.reason == "changed"}
            for into, refs in ((held, references(previous)), (watched, carried)):
                for path, targets in sorted(refs.items()):
                    entry = by_path.get(path)
                    if entry is None or entry.kind != "wheel" or not entry.project or entry.hash_mismatch:
                        continue
                    for a in sorted({acc[t] for t in targets if t in acc}):
                        into.setdefault((a, str(canonicalize_name(entry.project))), []).append(
                            (entry, by_path.get(path + META)))
        return cls(root=Path(root), held=held, watched=watched)

    def __call__(self, accelerator: str, project: str, upstream: list[Link]) -> list[Link]:
        """The links to add to ``project``'s page for ``accelerator``: the mirror's copies of
        wheels it holds there that ``upstream`` (the screened links) no longer lists."""
        listed = {link.filename: link.sha256 for link in upstream}
        key = (accelerator, str(canonicalize_name(project)))
        with self._lock:
            for entry, _meta in self.watched.get(key, ()):
                if listed.get(_name(entry.path)) == entry.sha256:
                    self.relisted.add(entry.path)
        offers: dict[str, Link] = {}
        for entry, meta in self.held.get(key, ()):
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


def _let_go(removals: Iterable[lifecycle.Removal]) -> set[str]:
    """What --prune and keep: N remove: a user letting go (only a superseded copy may stay)."""
    return {p for r in removals if r.kind != "superseded" for p in r.paths}


def retire(root: Path, previous: mf.Manifest | None, keeper: Keeper | None, *, live: Collection[str],
           prune: bool, removals: Iterable[lifecycle.Removal], resolved: Sequence[str]) -> dict[str, str | None]:
    """Which copies of changed names stay published beside the new bytes (recorded in
    ``keeper.retired`` and returned: path -> the path of the name's new bytes, or None).

    One decision for the real run (which lists them: :func:`listing`) and the dry run. A copy
    stays while a ``live`` target it was kept for is recorded, unless the user lets go
    (``prune``, or ``keep: N`` dropping its release among ``removals``) or its file is gone.
    ``resolved``: the wheel paths this run lists itself, those it stores first (not a retired
    copy, whatever its bytes; the first of a name is where its new bytes are)."""
    if previous is None or keeper is None:
        return {}
    before = previous.by_path()
    refs = references(previous)
    carried = {t.path: t for t in previous.tombstones if t.reason == "changed"}
    let_go = _let_go(removals)
    live_ids = set(live)
    now = set(resolved)
    by_name: dict[str, str] = {}
    for p in resolved:
        by_name.setdefault(_name(p), p)
    keeper.listed_at = by_name
    out: dict[str, str | None] = {}
    for path in sorted((set(keeper.changed) | set(carried)) - keeper.relisted - keeper.deleted - now):
        old = before.get(path)
        if old is None or old.kind != "wheel" or not old.project or old.hash_mismatch:
            continue
        kept_for = (refs.get(path, set()) | set(carried[path].targets if path in carried else ())) & live_ids
        if not kept_for or prune or path in let_go or not safe_join(root, path).is_file():
            continue
        out[path] = by_name.get(_name(path))
    keeper.retired = out
    return out


@dataclass(frozen=True)
class Listing:
    """The retired copies as the real run publishes them: manifest entries (wheel and
    ``.metadata``) and, per accelerator, their yanked index records."""

    entries: tuple[mf.FileEntry, ...]
    pages: dict[str, list[IndexFile]]


def listing(root: Path, previous: mf.Manifest | None, keeper: Keeper | None,
            accelerators: Mapping[str, str]) -> Listing:
    """The entries and yanked anchors of ``keeper.retired`` (:func:`retire`), each on the pages
    of the accelerators of the targets it is kept for (``accelerators``: target id -> accelerator)."""
    if previous is None or keeper is None or not keeper.retired:
        return Listing(entries=(), pages={})
    before = previous.by_path()
    refs = references(previous)
    carried = {t.path: t.targets for t in previous.tombstones}
    entries: list[mf.FileEntry] = []
    pages: dict[str, list[IndexFile]] = {}
    for path in sorted(keeper.retired):
        wheel, meta = before[path], before.get(path + META)
        project = wheel.project or ""
        meta_sha, req_py, meta_size = ensure_metadata(root, path, project)  # read back (or rewritten) from the wheel
        entries += [wheel, mf.FileEntry(path=path + META, sha256=meta_sha, size=meta_size, kind="metadata",
                                        project=wheel.project, version=wheel.version,
                                        upstream_sha256=meta.upstream_sha256 if meta else None,
                                        hash_mismatch=bool(meta and meta.hash_mismatch))]
        anchor = IndexFile(project=str(canonicalize_name(project)), filename=_name(path), path=path,
                           sha256=wheel.sha256, requires_python=req_py, metadata_sha256=meta_sha, size=wheel.size,
                           upload_time=wheel.upload_time, yanked=RETIRED_REASON)
        targets = refs.get(path, set()) | set(carried.get(path, ()))
        for acc in sorted({accelerators[t] for t in targets if t in accelerators}):
            pages.setdefault(acc, []).append(anchor)
    return Listing(entries=tuple(entries), pages=pages)


def yank_kept(pages: Mapping[str, list[IndexFile]], keeper: Keeper | None,
              current: Mapping[str, Collection[str]]) -> dict[str, list[IndexFile]]:
    """Kept releases' copies (``pages``: per accelerator) of names upstream re-published, on a
    page that also lists this run's copy of the name (``current``: per accelerator, the paths it
    resolved): yanked like a retired copy, so an install without their hash gets the new bytes.
    A copy alone on its page stays as it is (yanked, the name would be gone there for a range)."""
    if keeper is None or not keeper.changed:
        return dict(pages)
    out: dict[str, list[IndexFile]] = {}
    for acc, files in pages.items():
        names = {_name(p) for p in current.get(acc, ())}
        out[acc] = [replace(f, yanked=RETIRED_REASON) if f.path in keeper.changed and f.filename in names else f
                    for f in files]
    return out


@dataclass(frozen=True)
class Settled:
    """The manifest's files and the removals after tombstones, and the tombstones themselves."""

    files: list[mf.FileEntry]
    removals: list[lifecycle.Removal]
    tombstones: list[mf.Tombstone]


def settle(previous: mf.Manifest | None, keeper: Keeper | None, files: Iterable[mf.FileEntry],
           targets: Iterable[mf.Target], releases: Iterable[mf.Release], removals: Iterable[lifecycle.Removal],
           live: Iterable[str]) -> Settled:
    """The tombstones of what a sync is about to commit (module docstring): every file the view
    found deleted or changed upstream, or carried from the last sync, that this sync still lists
    (a retired copy: listed by :func:`retire`, before the pages were published) for a recorded
    target. Nothing is added or removed here: what stays was decided before."""
    files, removals = list(files), list(removals)
    if previous is None:
        return Settled(files, removals, [])
    live_ids = set(live)
    before = previous.by_path()
    now = {f.path: f for f in files}
    refs_now = references(mf.Manifest(targets=list(targets), releases=list(releases)))
    refs_before = references(previous)
    deleted = keeper.deleted if keeper else set()
    changed = keeper.changed if keeper else {}
    relisted = keeper.relisted if keeper else set()
    retired = keeper.retired if keeper else {}
    by_name = keeper.listed_at if keeper else {}  # where each name's bytes are now (the dry run alike)
    carried = {t.path: t for t in previous.tombstones}
    out: dict[str, mf.Tombstone] = {}

    def kept_for(path: str) -> tuple[str, ...]:
        refs = refs_now.get(path) or refs_before.get(path, set())
        return tuple(sorted((refs | set(carried[path].targets if path in carried else ())) & live_ids))

    for path in sorted(deleted | set(changed) | (set(carried) - relisted) | set(retired)):
        old = before.get(path)
        if old is None or not old.project or path not in now:
            continue  # not listed any more: it goes like any other file (retire decided)
        reason = ("deleted" if path in deleted else "changed" if path in changed or path in retired
                  else carried[path].reason)
        kept_by = kept_for(path)
        if not kept_by:
            continue  # no recorded target needs it: it goes like any other file
        replaced = by_name.get(_name(path)) if reason == "changed" else None
        out[path] = mf.Tombstone(path=path, project=old.project, version=old.version or "?", reason=reason,
                                 targets=kept_by, replaced_by=replaced if replaced != path else None)
    for path in deleted & set(now):  # the view offered a file: URL; the entry keeps where the bytes came from
        if (now[path].url or "").startswith("file:") and path in before and before[path].url:
            now[path] = replace(now[path], url=before[path].url)
    return Settled(sorted(now.values(), key=lambda f: f.path), removals, sorted(out.values(), key=lambda t: t.path))
