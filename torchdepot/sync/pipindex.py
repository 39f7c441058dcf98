"""Publish (pip side): PEP 658 metadata, per-target pylock.toml and the index pages.

Input: the :class:`~torchdepot.sync.resolution.Resolution`, the fetch report and the view
(for upstream facts: upload time, size, metadata disagreements). Output:
:class:`PipPublished`, the manifest entries and targets plus the index generation. The
``.metadata`` published beside each wheel is read from the stored wheel itself, so it is
correct even where upstream's was not; a disagreement the view saw is recorded on that
``.metadata`` entry (``upstream_sha256`` + ``hash_mismatch``).

Each file is published at the path the fetch stored it at (:class:`PipFetchReport.paths`:
a name whose bytes changed upstream gets a new path, never new bytes at the old one).
On a re-sync, before the new pages go live, the committed manifest is widened with the
new files (same targets): every state a kill can leave lists every file a live page
links. The per-target ``pylock.toml`` files follow the index swap: every file a live lock
names is linked by the live index. ``manifest.json`` with this run's targets is the commit (``sync/pip.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from torchdepot import __version__
from torchdepot.fetch import FetchReport
from torchdepot.lockfiles.render import pins_for, pylock_toml
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import atomic_write_text, safe_filename, safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.pages import (
    build_pages,
    ensure_metadata,
    page_count,
    publish,
    requires_python_of,
)
from torchdepot.sync.download import PipFetchReport
from torchdepot.sync.reads import Count
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.variants import publish_variants_json
from torchdepot.sync.view import View, write_scratch


@dataclass(frozen=True)
class PipPublished:
    files: tuple[mf.FileEntry, ...]
    targets: tuple[mf.Target, ...]
    generation: str
    changed: bool


def publish_pip(out: Path, resolution: Resolution, report: FetchReport, view: View,
                retained: dict[str, list[IndexFile]] | None = None, progress: bool | None = False) -> PipPublished:
    """``retained``: per accelerator, files of earlier torch versions the mirror keeps (listed too);
    ``progress``: as the fetch's, a bar of the index pages rendered, then one of them written
    (:class:`~torchdepot.sync.reads.Count`)."""
    stored = report.stored if isinstance(report, PipFetchReport) else (lambda key: key)
    read = report.metadata if isinstance(report, PipFetchReport) else {}  # METADATA this run read already
    written = report.written if isinstance(report, PipFetchReport) else {}  # .metadata it wrote as wheels landed
    by_key = {r.key: r for r in report.results}
    records = view.metadata_records()
    live = pub.live_manifest(out)
    listed = live.by_path() if live is not None else {}
    entries: dict[str, mf.FileEntry] = {}
    index_files: dict[str, IndexFile] = {}
    versions: dict[str, str] = {}  # resolution key -> version: one pass, not one scan per file
    for tp in resolution.targets:
        for f in tp.files:
            versions.setdefault(file_key(f), f.version)
    for rkey, vf, _acc in resolution.files:
        key = stored(rkey)
        r = by_key[key]
        assert r.sha256 is not None  # check_fetched stopped the run at any file that did not arrive
        meta_sha, req_py, meta_size = _published_metadata(out, key, r.sha256, listed) \
            or written.get(key) or ensure_metadata(out, key, vf.project, data=read.get(key))
        index_files[key] = IndexFile(project=vf.project, filename=safe_filename(vf.filename), path=key, sha256=r.sha256, requires_python=req_py, metadata_sha256=meta_sha,
                                     size=r.size, upload_time=vf.link.upload_time)  # PEP 700 in the JSON pages
        version = versions[rkey]
        entries[key] = mf.FileEntry(path=key, sha256=r.sha256, size=r.size, kind="wheel", project=vf.project,
                                    version=version, url=r.url or vf.link.url, upstream_sha256=r.upstream_sha256,
                                    hash_mismatch=r.hash_mismatch, upload_time=vf.link.upload_time)
        rec = records.get(vf.filename)  # upstream's .metadata disagreeing with its declared hash
        entries[L.metadata_path(key)] = mf.FileEntry(
            path=L.metadata_path(key), sha256=meta_sha, size=meta_size, kind="metadata", project=vf.project,
            version=version, upstream_sha256=rec.declared if rec is not None else None,
            hash_mismatch=rec is not None and rec.mismatch)
    vj = publish_variants_json(out, resolution, view)  # PEP 825 variants.json, read anew each run
    entries.update(vj.entries)
    variants: dict[str, dict[str, IndexFile]] = {}  # per accelerator, each file once (by path)
    targets = []
    for tp in resolution.targets:
        t = tp.target
        keys = list(dict.fromkeys(stored(file_key(f)) for f in tp.files))
        page_files = variants.setdefault(t.accelerator, {})
        for ix in [*(index_files[k] for k in keys), *vj.links_for(file_key(f) for f in tp.files)]:
            page_files.setdefault(ix.path, ix)
        target = mf.Target(
            id=t.id, kind="pip", accelerator=t.accelerator, python=t.python, platform=t.platform,
            packages=tuple(mf.TargetPackage(name=f.name, version=f.version, path=stored(file_key(f)),
                                            requires_python=index_files[stored(file_key(f))].requires_python,
                                            variants_json=vj.variants_for(file_key(f)))
                           for f in tp.files),
            index=L.pip_index(t.accelerator))
        targets.append(target)
    for acc, kept in (retained or {}).items():
        page_files = variants.setdefault(acc, {})
        for ix in kept:
            page_files.setdefault(ix.path, ix)
    if live is not None:  # a re-sync: the live index is replaced only once its files are listed
        mf.save(out, pub.widened(live, entries.values()))
    index = {acc: list(files.values()) for acc, files in variants.items()}
    generation, changed = publish_index(out, index, progress)
    # Each target's lock names files the index now links: written only after the swap, so a run
    # that fails earlier leaves the old locks over the old index (verify-mirror checks they agree).
    _write_locks(out, targets, entries)
    return PipPublished(files=tuple(sorted(entries.values(), key=lambda e: e.path)), targets=tuple(targets),
                        generation=generation, changed=changed)


def _published_metadata(out: Path, key: str, sha256: str,
                        listed: dict[str, mf.FileEntry]) -> tuple[str, str | None, int] | None:
    """(sha256, Requires-Python, size) of the ``.metadata`` the committed manifest lists beside
    this very wheel, read from that small file (not from the wheel's zip) when its bytes are
    still the listed ones; None: write it from the wheel (:func:`ensure_metadata`)."""
    wheel, meta = listed.get(key), listed.get(key + ".metadata")
    if wheel is None or meta is None or wheel.sha256 != sha256:
        return None
    try:
        data = safe_join(out, key + ".metadata").read_bytes()
    except OSError:
        return None
    if len(data) != meta.size or hashlib.sha256(data).hexdigest() != meta.sha256:
        return None
    return meta.sha256, requires_python_of(data), len(data)


def _lock_keys(out: Path) -> dict:
    try:
        doc = json.loads(safe_join(out, L.LOCK_KEYS).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}  # a cache: unreadable means render again
    return doc if isinstance(doc, dict) else {}


def locks_intact(out: Path, target_ids: list[str]) -> bool:
    """True when each target's pylock.toml still holds the bytes its last rendering wrote."""
    keys = _lock_keys(out)
    for tid in target_ids:
        was = keys.get(tid)
        if not (isinstance(was, list) and len(was) == 2 and _sha256_of(safe_join(out, L.target_lock(tid))) == was[1]):
            return False
    return True


def publish_index(out: Path, index: dict[str, list[IndexFile]], progress: bool | None,
                  desc: str = "index pages") -> tuple[str, bool]:
    """``index`` (accelerator -> files) rendered and published as the live ``whl/`` tree
    (``store.pages``: one generation swap), with a bar of the pages rendered, then one of them
    written (``progress``: as the fetch's, :class:`~torchdepot.sync.reads.Count`). Returns the
    generation and whether the index changed."""
    with Count(progress, page_count(index), desc, "pages") as bar:
        pages = build_pages(index, on_step=bar.step)
    with Count(progress, len(pages), f"{desc} written", "pages") as bar:
        return publish(out, pages, on_step=bar.step)


def _write_locks(out: Path, targets: list[mf.Target], entries: dict[str, mf.FileEntry]) -> None:
    """Each target's pylock.toml. A lock whose inputs (target, pins, this torchdepot) hash to
    what :data:`L.LOCK_KEYS` recorded, and whose file still holds the bytes recorded with them,
    is not rendered again (a no-op re-sync renders none); the record is a cache: unreadable
    means render."""
    keys_path = safe_join(out, L.LOCK_KEYS)
    kept = _lock_keys(out)
    fresh: dict[str, list[str]] = {}
    for target in targets:
        path = safe_join(out, L.target_lock(target.id))
        pins = pins_for(target, entries)
        key = hashlib.sha256(repr((__version__, target, pins)).encode()).hexdigest()
        was = kept.get(target.id)
        if isinstance(was, list) and len(was) == 2 and was[0] == key and _sha256_of(path) == was[1]:
            fresh[target.id] = was
            continue
        text = pylock_toml(target, pins, "../..", location="path")
        _write_if_changed(path, text)
        fresh[target.id] = [key, hashlib.sha256(text.encode()).hexdigest()]
    if fresh != kept:
        write_scratch(keys_path, (json.dumps(fresh, indent=0, sort_keys=True) + "\n").encode())  # a cache: no fsync


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _write_if_changed(path: Path, text: str) -> None:
    """A target's lock rewritten only when its bytes change (a no-op sync writes none)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
