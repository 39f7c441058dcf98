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

from dataclasses import dataclass
from pathlib import Path

from torchdepot.fetch import FetchReport
from torchdepot.lockfiles.render import pins_for, pylock_toml
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import atomic_write_text, safe_filename, safe_join
from torchdepot.store.pages import IndexFile, build_pages, ensure_metadata, publish
from torchdepot.sync.download import PipFetchReport
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.variants import publish_variants_json
from torchdepot.sync.view import View


@dataclass(frozen=True)
class PipPublished:
    files: tuple[mf.FileEntry, ...]
    targets: tuple[mf.Target, ...]
    generation: str
    changed: bool


def publish_pip(out: Path, resolution: Resolution, report: FetchReport, view: View,
                retained: dict[str, list[IndexFile]] | None = None) -> PipPublished:
    """``retained``: per accelerator, files of earlier torch versions the mirror keeps (listed too)."""
    stored = report.stored if isinstance(report, PipFetchReport) else (lambda key: key)
    by_key = {r.key: r for r in report.results}
    records = view.metadata_records()
    entries: dict[str, mf.FileEntry] = {}
    index_files: dict[str, IndexFile] = {}
    for rkey, vf, _acc in resolution.files:
        key = stored(rkey)
        r = by_key[key]
        assert r.sha256 is not None  # check_fetched stopped the run at any file that did not arrive
        meta_sha, req_py, meta_size = ensure_metadata(out, key, vf.project)
        index_files[key] = IndexFile(vf.project, safe_filename(vf.filename), key, r.sha256, req_py, meta_sha,
                                     size=r.size, upload_time=vf.link.upload_time)  # PEP 700 in the JSON pages
        version = next(f.version for tp in resolution.targets for f in tp.files if file_key(f) == rkey)
        entries[key] = mf.FileEntry(path=key, sha256=r.sha256, size=r.size, kind="wheel", project=vf.project,
                                    version=version, url=r.url or vf.link.url, upstream_sha256=r.upstream_sha256,
                                    hash_mismatch=r.hash_mismatch, upload_time=vf.link.upload_time)
        rec = records.get(vf.filename)  # upstream's .metadata disagreeing with its declared hash
        entries[key + ".metadata"] = mf.FileEntry(
            path=key + ".metadata", sha256=meta_sha, size=meta_size, kind="metadata", project=vf.project,
            version=version, upstream_sha256=rec.declared if rec is not None else None,
            hash_mismatch=rec is not None and rec.mismatch)
    vj = publish_variants_json(out, resolution, view)  # PEP 825 variants.json, read anew each run
    entries.update(vj.entries)
    variants: dict[str, list[IndexFile]] = {}
    targets = []
    for tp in resolution.targets:
        t = tp.target
        keys = list(dict.fromkeys(stored(file_key(f)) for f in tp.files))
        variants.setdefault(t.accelerator, []).extend([*(index_files[k] for k in keys),
                                                       *vj.links_for(file_key(f) for f in tp.files)])
        target = mf.Target(
            id=t.id, kind="pip", accelerator=t.accelerator, python=t.python, platform=t.platform,
            packages=tuple(mf.TargetPackage(name=f.name, version=f.version, path=stored(file_key(f)),
                                            requires_python=index_files[stored(file_key(f))].requires_python,
                                            variants_json=vj.variants_for(file_key(f)))
                           for f in tp.files),
            index=f"whl/{t.accelerator}")
        targets.append(target)
    for acc, kept in (retained or {}).items():
        variants.setdefault(acc, []).extend(kept)
    live = pub.live_manifest(out)
    if live is not None:  # a re-sync: the live index is replaced only once its files are listed
        mf.save(out, pub.widened(live, entries.values()))
    generation, changed = publish(out, build_pages(variants))
    # Each target's lock names files the index now links: written only after the swap, so a run
    # that fails earlier leaves the old locks over the old index (verify-mirror checks they agree).
    for target in targets:
        atomic_write_text(safe_join(out, f"targets/{target.id}/pylock.toml"),
                          pylock_toml(target, pins_for(target, entries), "../..", location="path"))
    return PipPublished(files=tuple(sorted(entries.values(), key=lambda e: e.path)), targets=tuple(targets),
                        generation=generation, changed=changed)
