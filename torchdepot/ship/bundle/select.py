"""Which files of a mirror go into a bundle (targets, envs, ``--since``)."""

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


def plan_bundle(root: Path, targets: list[str] | None = None, envs: Path | None = None,
                since: Path | None = None) -> BundlePlan:
    """Choose what goes in: the targets' files + their indexes + conda repodata + locks."""
    root = Path(root)
    m = mf.load(root)
    known = sorted({t.id for t in m.targets})
    if targets:
        missing = [t for t in targets if t not in known]
        if missing:
            raise BundleError(f"target {missing[0]!r} is not in {root / mf.MANIFEST_NAME} (has: {', '.join(known) or 'none'})")
        chosen = [t for t in m.targets if t.id in set(targets)]
    else:
        chosen = list(m.targets)
    ids = sorted({t.id for t in chosen})
    by_path = m.by_path()
    if targets:
        wanted: set[str] = set()
        for t in chosen:
            for p in t.packages:
                wanted.add(p.path)
                if p.path + ".metadata" in by_path:
                    wanted.add(p.path + ".metadata")
        entries = [by_path[p] for p in sorted(wanted) if p in by_path]
        lost = sorted(wanted - set(by_path))
        if lost:
            raise BundleError(f"{root / mf.MANIFEST_NAME}: target file {lost[0]!r} is not listed in files")
    else:
        entries = sorted(m.files, key=lambda f: f.path)
    have: dict[str, str] = {}
    if since is not None:
        other = mf.Manifest.from_json(Path(since).read_text(encoding="utf-8"), str(since))
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
        files.append(PlannedFile(e.path, src, role_of(e.path) or "file", e.sha256))

    index: list[tuple[str, Path]] = []
    pip_indexes = sorted({t.index for t in chosen if t.kind == "pip" and t.index})
    if targets:
        for ix in pip_indexes:
            index += _walk_files(safe_join(root, ix), ix)
        for page in (HTML_PAGE, JSON_PAGE):  # the root project list and its PEP 691 twin
            if (root / L.INDEX_LINK / page).is_file():
                index.append((f"{L.INDEX_LINK}/{page}", root / L.INDEX_LINK / page))
    else:
        index += _walk_files(root / L.INDEX_LINK, L.INDEX_LINK)
    for t in chosen:
        if t.kind == "conda" and t.channel:
            for subdir in sorted({t.subdir or "noarch", "noarch"}):
                d = safe_join(root, t.channel, subdir)
                for name in sorted(os.listdir(d)) if d.is_dir() else []:
                    if L.is_conda_index_file(name):  # repodata(.zst), shard index, run_exports, ...
                        index.append((f"{t.channel}/{subdir}/{name}", d / name))
                if (d / "shards").is_dir():  # the CEP-16 shard index names these
                    index += _walk_files(d / "shards", f"{t.channel}/{subdir}/shards")
            ch = safe_join(root, t.channel)
            if (ch / "channeldata.json").is_file():
                index.append((f"{t.channel}/channeldata.json", ch / "channeldata.json"))
    for tid in ids:
        index += _walk_files(safe_join(root, "targets", tid), f"targets/{tid}")
    locks: list[tuple[str, Path]] = []
    if envs is not None:
        for tid in ids:
            locks += _walk_files(Path(envs) / tid, f"envs/{tid}")
    seen: set[str] = {f.path for f in files}
    by_role: tuple[tuple[Role, list[tuple[str, Path]]], ...] = (("lock", locks), ("index", index))
    for role, group in by_role:
        for rel, src in group:
            if rel not in seen:
                seen.add(rel)
                files.append(PlannedFile(rel, src, role))
    subset = mf.Manifest(files=entries, targets=chosen, spec=m.spec)
    return BundlePlan(files=files, manifest=subset, target_ids=ids,
                      since=str(since) if since else None, skipped=skipped)


