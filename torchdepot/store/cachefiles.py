"""The sweep of a sync's caches: ``.torchdepot/pages`` and ``.torchdepot/metadata``.

Both caches only grow on their own (a page per URL ever read, a METADATA per file ever
looked at), so a long-lived mirror would keep every release upstream ever listed. At the end
of a successful, non-dry sync, :func:`sweep`:

1. touches (mtime = now) the entries that run read or wrote, so an entry's mtime is the
   start of the last sync that used it, at the latest;
2. appends the run's start time to ``.torchdepot/cache-syncs.json`` (the last
   :data:`KEEP_SYNCS` kept);
3. once :data:`KEEP_SYNCS` syncs are recorded, deletes the entries whose mtime is older than
   the oldest of them: entries none of the last :data:`KEEP_SYNCS` syncs used.

Why "unused for N syncs" and not "unused by this sync": a sync that reuses its resolutions
(nothing changed) reads no metadata at all, and a sync with one changed page re-reads only
that target's; pruning on one run's use would throw away the metadata the next change needs.
Five syncs keep what any recent sync needed and let go of what upstream stopped listing.

Safety: only regular files whose names the sync itself gives cache entries
(:func:`torchdepot.store.layout.is_cache_entry`) are touched or deleted; symlinks, folders
and anything else (a user's file) are left alone, and a symlinked cache folder is not
entered. Entries are written by atomic rename and read whole by name, and every reader
treats a missing entry as a miss (a re-read from upstream), so deleting one while a
concurrent dry run or pull-through reads it costs that reader one request, never a torn
read; writers are serialised by the mirror lock. Bounded: at most :data:`MAX_SCAN` directory
entries are looked at per folder per sync (the rest waits for the next sync).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.model.sizes import format_size
from torchdepot.store import layout as L
from torchdepot.store.fsutil import atomic_write_text, safe_join

KEEP_SYNCS = 5  # an entry no sync of the last five used goes
MAX_SCAN = 1_000_000  # directory entries looked at per folder per sync
MAX_RECORD = 64 * 1024
FOLDERS = (L.PAGE_CACHE, L.METADATA_CACHE)


@dataclass(frozen=True)
class Swept:
    """What one sweep did: entries deleted and their bytes (0 and 0 until enough syncs are recorded)."""

    files: int = 0
    bytes: int = 0
    syncs: int = 0  # syncs recorded, this one included

    def line(self) -> str | None:
        if not self.files:
            return None
        return (f"cache: pruned {self.files} entries ({format_size(self.bytes)}) of .torchdepot/pages and "
                f"metadata that none of the last {KEEP_SYNCS} syncs used")


def _folder(root: Path, rel: str) -> Path | None:
    """The cache folder when it and each folder above it up to ``root`` is a real directory
    (a planted symlink would point the sweep at files elsewhere)."""
    path = Path(root)
    for part in rel.split("/"):
        path = path / part
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        except OSError:
            return None
    return path


def _touch(folder: Path, rel: str, names: Iterable[str]) -> None:
    for name in names:
        if not L.is_cache_entry(rel, name):
            continue
        path = folder / name
        with contextlib.suppress(OSError):  # gone meanwhile: nothing to keep
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.utime(path)


def write_entry(folder: Path, name: str, data: bytes) -> None:
    """Write one cache entry by atomic rename (a reader never sees half of it), without fsync:
    an entry is checked against its name on reading, and a lost one is read from upstream again."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)


def load_syncs(root: Path) -> list[float]:
    """The recorded start times (oldest first); [] when there is no usable record."""
    try:
        path = safe_join(root, L.CACHE_SYNCS)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD:
            return []
        data = load_json(path.read_bytes(), str(path))
    except (OSError, TorchdepotError):
        return []
    if not isinstance(data, dict) or not isinstance(data.get("syncs"), list):
        return []
    return [float(t) for t in data["syncs"] if isinstance(t, (int, float)) and not isinstance(t, bool)]


def sweep(root: Path, used: Mapping[str, Iterable[str]], started: float, *, keep_syncs: int = KEEP_SYNCS) -> Swept:
    """Touch what this sync used (``used``: cache folder -> entry names), record the sync
    (``started``: its wall-clock start), and delete what none of the last ``keep_syncs`` used."""
    for rel in FOLDERS:
        folder = _folder(root, rel)
        if folder is not None:
            _touch(folder, rel, used.get(rel, ()))
    syncs = sorted([*load_syncs(root), started])[-keep_syncs:]
    atomic_write_text(safe_join(root, L.CACHE_SYNCS), json.dumps({"syncs": syncs}) + "\n")
    if len(syncs) < keep_syncs:
        return Swept(syncs=len(syncs))
    cutoff = syncs[0]
    files = size = 0
    for rel in FOLDERS:
        folder = _folder(root, rel)
        if folder is None:
            continue
        with os.scandir(folder) as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_SCAN:
                    break
                if not L.is_cache_entry(rel, entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                        continue
                    os.unlink(entry.path)
                except OSError:
                    continue  # gone meanwhile, or not ours to delete
                files += 1
                size += st.st_size
    return Swept(files=files, bytes=size, syncs=len(syncs))
