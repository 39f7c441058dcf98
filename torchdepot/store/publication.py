"""Immutable publication: where new bytes go, and what a run may remove after its commit.

Invariants (see ``docs/publication.md``):

- a path the mirror ever published never receives other bytes: when upstream changes
  the bytes behind a name, :func:`choose_path` gives the new bytes a new path
  (``packages/<project>/<digest16>/<filename>``), the pages and manifest of the next
  generation point there, and the old path is remembered with its sha256
  (``.torchdepot/retired.json``) so it is never given other bytes after its file is removed;
  bytes already published at such a path stay there (one sync settles a re-publication);
- every path a run may create (and every path it supersedes) is recorded in the
  journal (``.torchdepot/publish.json``) *before* the first byte is written, so
  ``verify-mirror`` recognises an uncommitted run's files as its own leftovers
  (``staged``), never as the user's;
- after the commit (``manifest.json`` saved), journaled paths the manifest does not list
  are removed, and nothing else: a file the mirror did not create is never deleted.

Pure helpers plus the journal's small JSON I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import atomic_write_text
from torchdepot.store.layout import PUBLISH_JOURNAL, RETIRED, changed_bytes_path

# Enough for any real history of one name: upstream re-publishing it this often is an attack.
MAX_CANDIDATES = 8


@dataclass(frozen=True)
class Claim:
    """What upstream says the bytes behind a name are (either may be unknown)."""
    sha256: str | None = None
    size: int | None = None

    def agrees(self, sha256: str, size: int) -> bool:
        return (self.sha256 is None or self.sha256 == sha256) and (self.size is None or self.size == size)


def choose_path(default: str, claim: Claim, live: dict[str, mf.FileEntry], journal: frozenset[str],
                exists: Callable[[str], bool], retired: Mapping[str, str] | None = None) -> str:
    """The path new bytes for ``default`` are stored at. Pure but for ``exists``.

    The candidates are ``default`` then ``<dir>/<digest16>[-n]/<file>``. A candidate the
    committed manifest (``live``) already lists with the claimed bytes wins outright, so bytes
    that moved once stay where they are (a re-publication settles in one sync). Otherwise the
    first candidate that is free: not listed with other bytes, never published with other
    bytes (``retired``: path -> the sha256 it held, kept after its file is removed, so a URL
    that served X never serves Z), and either the mirror's own (journaled) or absent. With no
    claim at all there is nothing to disagree with: the fetcher keeps what is there, so
    ``default`` is returned, unless it is retired (its bytes are unknown until downloaded: a
    free ``z<hash>`` path, or the live copy already there, takes them).
    """
    retired = retired or {}
    if claim.sha256 is None and claim.size is None and default not in retired:
        return default
    candidates = [default, *(changed_bytes_path(default, claim.sha256, claim.size, n) for n in range(MAX_CANDIDATES))]
    for path in candidates:
        entry = live.get(path)
        if entry is not None and claim.agrees(entry.sha256, entry.size):
            return path
    for path in candidates:
        if path in live:
            continue  # listed with other bytes
        held = retired.get(path)
        if held is not None and (claim.sha256 is None or held != claim.sha256):
            continue  # served other bytes once (or bytes we cannot tell apart): never reused
        if path in journal or not exists(path):
            return path  # free, or the mirror's own unpublished copy (the fetcher may replace it)
    raise TorchdepotError(f"{default}: upstream changed the bytes behind this name more than "
                          f"{MAX_CANDIDATES} times; refusing to store another copy")


def superseded(default: str, chosen: str, live: Mapping[str, mf.FileEntry]) -> dict[str, str]:
    """Path -> sha256 of every listed copy of ``default`` (its own path and its
    ``<dir>/<digest>/<file>`` moves, each with its ``.metadata``) other than ``chosen``: what
    the run supersedes, to :func:`retire` before anything is written."""
    head, name = posixpath.split(default)
    out = {}
    for path, entry in live.items():
        base = path[:-len(".metadata")] if path.endswith(name + ".metadata") else path
        d, n = posixpath.split(base)
        if n == name and base != chosen and (d == head or posixpath.dirname(d) == head):
            out[path] = entry.sha256
    return out


def load_retired(root: Path) -> dict[str, str]:
    """Path -> sha256 of every path a run superseded (empty if none); see :func:`retire`."""
    path = Path(root) / RETIRED
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        raise TorchdepotError(f"{path}: unreadable list of retired paths; restore it or remove it") from None
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in paths.items()):
        raise TorchdepotError(f"{path}: not a torchdepot list of retired paths")
    return {k: v for k, v in paths.items() if _safe_rel(k)}


def retire(root: Path, held: Mapping[str, str]) -> None:
    """Remember that each path in ``held`` served the bytes with that sha256 (before any run
    supersedes it): the path may hold those bytes again, never others. Grows only when
    upstream re-publishes a name, at most ``MAX_CANDIDATES`` + 1 paths per name."""
    have = load_retired(root)
    new = {k: v for k, v in held.items() if have.get(k) != v}
    if not new:
        return
    atomic_write_text(Path(root) / RETIRED, json.dumps({"paths": dict(sorted({**have, **new}.items()))},
                                                       indent=0) + "\n")


# -- the journal ----------------------------------------------------------------------
def load_journal(root: Path) -> frozenset[str]:
    """Paths recorded as created or superseded by runs not yet cleaned up (empty if none)."""
    path = Path(root) / PUBLISH_JOURNAL
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError, RecursionError):
        raise TorchdepotError(f"{path}: unreadable publication journal; remove it and run verify-mirror") from None
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise TorchdepotError(f"{path}: not a torchdepot publication journal")
    return frozenset(p for p in paths if _safe_rel(p))


def _safe_rel(rel: str) -> bool:
    norm = posixpath.normpath(rel)
    return bool(rel) and not rel.startswith("/") and norm == rel and not norm.startswith("..")


def record(root: Path, paths: Iterable[str]) -> frozenset[str]:
    """Add ``paths`` to the journal (atomically, before they are written); returns it whole."""
    have = load_journal(root)
    new = frozenset(paths) - have
    if not new:
        return have
    merged = have | new
    atomic_write_text(Path(root) / PUBLISH_JOURNAL,
                      json.dumps({"paths": sorted(merged)}, indent=0) + "\n")
    return merged


def forget(root: Path, paths: Iterable[str]) -> None:
    """Drop ``paths`` from the journal (deleting it when nothing is left)."""
    have = load_journal(root)
    left = have - frozenset(paths)
    if left == have:
        return
    if left:
        atomic_write_text(Path(root) / PUBLISH_JOURNAL, json.dumps({"paths": sorted(left)}, indent=0) + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            (Path(root) / PUBLISH_JOURNAL).unlink()


# -- the committed manifest -----------------------------------------------------------
def live_manifest(root: Path) -> mf.Manifest | None:
    """The committed manifest, or None on a first run (no mirror to keep valid yet)."""
    if not (Path(root) / mf.MANIFEST_NAME).is_file():
        return None
    return mf.load(root)


def widened(live: mf.Manifest, add: Iterable[mf.FileEntry], drop: Iterable[str] = ()) -> mf.Manifest:
    """``live`` plus ``add`` (minus the index files in ``drop``); everything else as ``live``.

    Saved before an index that links ``add`` goes live, so every intermediate state lists
    every file a live index points to. Paths are immutable, so an entry of ``add`` at a
    path ``live`` lists describes the same bytes.
    """
    gone = frozenset(drop)
    files = {f.path: f for f in live.files if f.path not in gone}
    files.update((f.path, f) for f in add)
    return dataclasses.replace(live, files=sorted(files.values(), key=lambda f: f.path))
