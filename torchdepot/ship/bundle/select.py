"""Which files of a mirror go into a bundle (targets, envs, ``--since``).

:func:`plan_bundle` in named steps: the targets chosen, their manifest entries, the package
files (less what ``--since`` already has), the pip index pages, the conda channel index files
(by :func:`torchdepot.store.layout.is_conda_index_file`, the store's one rule for them) and the
lock folders. Reads the mirror; writes nothing.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from torchdepot.ship.bundle.model import BundleError, BundlePlan, PlannedFile, Role, role_of
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import safe_join
from torchdepot.store.simple_json import HTML_PAGE, JSON_PAGE

# ---------------------------------------------------------------- selection

def _walk_files(top: Path, rel_prefix: str) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    if not top.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(top):  # follows the top symlink (whl/), not inner ones
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if not p.is_file():
                continue
            rel = posixpath.normpath(posixpath.join(rel_prefix, "" if rel_dir == "." else rel_dir.replace(os.sep, "/"), name))
            out.append((rel, p))
    return out


def _chosen(root: Path, m: mf.Manifest, targets: list[str] | None) -> list[mf.Target]:
    """The targets asked for (all when none is named); a name the manifest lacks is an error."""
    if not targets:
        return list(m.targets)
    known = sorted({t.id for t in m.targets})
    missing = [t for t in targets if t not in known]
    if missing:
        raise BundleError(f"target {missing[0]!r} is not in {root / mf.MANIFEST_NAME} (has: {', '.join(known) or 'none'})")
    return [t for t in m.targets if t.id in set(targets)]


def _entries(root: Path, m: mf.Manifest, chosen: list[mf.Target], subset: bool) -> list[mf.FileEntry]:
    """The manifest entries of the chosen targets' packages and their ``.metadata`` (every
    entry when the whole mirror goes)."""
    if not subset:
        return sorted(m.files, key=lambda f: f.path)
    by_path = m.by_path()
    wanted: set[str] = set()
    for t in chosen:
        for p in t.packages:
            wanted.add(p.path)
            if L.metadata_path(p.path) in by_path:
                wanted.add(L.metadata_path(p.path))
    lost = sorted(wanted - set(by_path))
    if lost:
        raise BundleError(f"{root / mf.MANIFEST_NAME}: target file {lost[0]!r} is not listed in files")
    return [by_path[p] for p in sorted(wanted)]


def _package_files(root: Path, entries: list[mf.FileEntry], since: Path | None) -> tuple[list[PlannedFile], int]:
    """The entries' files, less those ``since`` (an earlier bundle's manifest) already has with
    the same bytes; and how many were skipped."""
    have: dict[str, str] = {}
    if since is not None:
        other = mf.Manifest.from_json(Path(since).read_bytes(), str(since))
        have = {f.path: f.sha256 for f in other.files}
    files: list[PlannedFile] = []
    skipped = 0
    for e in entries:
        if have.get(e.path) == e.sha256:
            skipped += 1
            continue
        src = safe_join(root, e.path)
        if not src.is_file():
            raise BundleError(f"{e.path}: listed in {mf.MANIFEST_NAME} but missing from {root}")
        # a conda channel's index files (repodata, shards, run_exports...) are listed in the manifest
        # too: their role is the one their path allows, as unbundle checks it
        files.append(PlannedFile(path=e.path, source=src, role=role_of(e.path) or "file", expect_sha256=e.sha256))
    return files, skipped


def _pip_index_files(root: Path, chosen: list[mf.Target], subset: bool) -> list[tuple[str, Path]]:
    """The chosen pip targets' index pages and the root project list (the whole ``whl/``
    when the whole mirror goes)."""
    if not subset:
        return _walk_files(root / L.INDEX_LINK, L.INDEX_LINK)
    out: list[tuple[str, Path]] = []
    for ix in sorted({t.index for t in chosen if t.kind == "pip" and t.index}):
        out += _walk_files(safe_join(root, ix), ix)
    for page in (HTML_PAGE, JSON_PAGE):  # the root project list and its PEP 691 twin
        if (root / L.INDEX_LINK / page).is_file():
            out.append((f"{L.INDEX_LINK}/{page}", root / L.INDEX_LINK / page))
    return out


def _conda_index_files(root: Path, chosen: list[mf.Target]) -> list[tuple[str, Path]]:
    """Each chosen conda target's channel index files (repodata in every form, run_exports,
    channeldata, index.html), by the store's one predicate for them."""
    out: list[tuple[str, Path]] = []
    for t in chosen:
        if t.kind != "conda" or not t.channel:
            continue
        for subdir in sorted({t.subdir or "noarch", "noarch"}):
            d = safe_join(root, t.channel, subdir)
            for name in sorted(os.listdir(d)) if d.is_dir() else []:
                if L.is_conda_index_file(name) and (d / name).is_file():  # repodata(.zst), shard index, run_exports, ...
                    out.append((f"{t.channel}/{subdir}/{name}", d / name))
            if (d / "shards").is_dir():  # the CEP-16 shard index names these
                out += _walk_files(d / "shards", f"{t.channel}/{subdir}/shards")
        ch = safe_join(root, t.channel)
        if (ch / "channeldata.json").is_file():
            out.append((f"{t.channel}/channeldata.json", ch / "channeldata.json"))
    return out


def _lock_files(root: Path, ids: list[str], envs: Path | None) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(lock folders from ``envs``, the per-target folders the sync wrote) of the chosen targets."""
    written: list[tuple[str, Path]] = []
    for tid in ids:
        written += _walk_files(safe_join(root, L.target_dir(tid)), L.target_dir(tid))
    locks: list[tuple[str, Path]] = []
    if envs is not None:
        for tid in ids:
            locks += _walk_files(Path(envs) / tid, L.env_dir(tid))
    return locks, written


def plan_bundle(root: Path, targets: list[str] | None = None, envs: Path | None = None,
                since: Path | None = None) -> BundlePlan:
    """Choose what goes in: the targets' files + their indexes + conda repodata + locks."""
    root = Path(root)
    m = mf.load(root)
    subset = bool(targets)
    chosen = _chosen(root, m, targets)
    ids = sorted({t.id for t in chosen})
    entries = _entries(root, m, chosen, subset)
    files, skipped = _package_files(root, entries, since)
    locks, written = _lock_files(root, ids, envs)
    index = _pip_index_files(root, chosen, subset) + _conda_index_files(root, chosen) + written
    seen: set[str] = {f.path for f in files}
    groups: tuple[tuple[Role, list[tuple[str, Path]]], ...] = (("lock", locks), ("index", index))
    for role, group in groups:
        for rel, src in group:
            if rel not in seen:
                seen.add(rel)
                files.append(PlannedFile(path=rel, source=src, role=role))
    subset_manifest = mf.Manifest(files=entries, targets=chosen, spec=m.spec)
    return BundlePlan(files=files, manifest=subset_manifest, target_ids=ids,
                      since=str(since) if since else None, skipped=skipped)
