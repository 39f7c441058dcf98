"""Files ``serve --pull-through`` published survive a sync.

Pull-through (``ship/pullthrough.py``) adds each file it fetched (a wheel with its ``.metadata``) to the
live manifest and names the file in the manifest's ``pulled`` list. A sync writes a new
manifest from its own files; :func:`carry` puts the pulled entries back (and takes them out of
the removals), so the mirror stays verify-clean and a plain ``serve`` keeps serving them.

Invariant: an entry is carried only while its file is on disk with the listed size and
sha256 (the fetcher's hash cache spares re-hashing an unchanged file); a pulled file that is
gone or changed on disk is dropped from ``pulled`` and from the manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from torchdepot.fetch.items import HashCache, hash_present
from torchdepot.store import manifest as mf
from torchdepot.store.layout import METADATA_SUFFIX
from torchdepot.sync import lifecycle

META = METADATA_SUFFIX  # PEP 658, named in store/layout.py


@dataclass(frozen=True)
class Carried:
    files: list[mf.FileEntry]
    removals: list[lifecycle.Removal]
    pulled: list[str]


def _intact(root: Path, entry: mf.FileEntry, cache: HashCache) -> bool:
    got = hash_present(root, entry.path, cache)
    return got is not None and got == (entry.sha256, entry.size)


def carry(root: Path, previous: mf.Manifest | None, files: Iterable[mf.FileEntry],
          removals: Iterable[lifecycle.Removal]) -> Carried:
    """``files`` plus the previous manifest's pulled entries still intact on disk; ``removals``
    without them; the ``pulled`` list to record."""
    files, removals = list(files), list(removals)
    if previous is None or not previous.pulled:
        return Carried(files, removals, [])
    before = previous.by_path()
    now = {f.path: f for f in files}
    cache = HashCache(root)
    pulled: list[str] = []
    for path in sorted(set(previous.pulled)):
        entry = before.get(path)
        if entry is None or not _intact(root, entry, cache):
            continue
        pulled.append(path)
        now.setdefault(path, entry)
        meta = before.get(path + META)
        if meta is not None and _intact(root, meta, cache):
            now.setdefault(path + META, meta)
    kept = {p for path in pulled for p in (path, path + META) if now.get(p) is not None}
    return Carried(sorted(now.values(), key=lambda f: f.path), spare(removals, kept, previous), pulled)


def spare(removals: Iterable[lifecycle.Removal], kept: set[str], previous: mf.Manifest) -> list[lifecycle.Removal]:
    """``removals`` without the paths in ``kept`` (each group's size recounted; empty groups dropped)."""
    sizes = {f.path: f.size for f in previous.files}
    left = []
    for r in removals:
        paths = tuple(p for p in r.paths if p not in kept)
        if paths:
            left.append(replace(r, paths=paths, size=sum(sizes.get(p, 0) for p in paths)))
    return left
