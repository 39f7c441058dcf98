"""Publish step for PEP 825 variant wheels: each mirrored ``{name}-{version}-variants.json``.

Input: the resolution and the view (which read each variants.json from upstream anew this
run: PEP 825 says it is not immutable). Output: :class:`VariantsPublished`: the manifest
entries (kind ``variants-json``, sha256 of the bytes stored), the index files to link beside
the variant wheels on every page that lists them (PEP 825 requires the link there), and per
wheel the label plus the variants data for the locks.

Storage never changes a published file in place: the file lives at
``packages/<project>/<name>-<version>-variants.json`` until upstream changes it; changed
bytes go to ``packages/<project>/<digest16>/<name>`` (:func:`store.layout.changed_bytes_path`,
the digest of the new bytes), and the next generation's pages and manifest point there.
The bytes stored are upstream's, unmodified (their hash is what upstream's link declares),
when the mirror holds every label the file lists; otherwise ``variants`` is narrowed to the
labels the mirror holds (every other key kept), since PEP 825 says the file MUST list the
variants available on the index, and ``upstream_sha256`` keeps upstream's claim.

Every file this step writes is recorded in the publication journal
(:func:`torchdepot.store.publication.record`) before its first byte is written, so a run
killed before its commit leaves a ``staged`` leftover (not an ``orphan``) that the next sync
removes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.model.wheelname import parse_wheel
from torchdepot.sources.links import Link
from torchdepot.sources.variants import VariantsJson
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.store.fsutil import atomic_write_bytes, safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.layout import PACKAGES_DIR, changed_bytes_path
from torchdepot.sync.resolution import Resolution
from torchdepot.sync.view import View

KIND: mf.FileKind = "variants-json"


@dataclass(frozen=True)
class VariantsPublished:
    entries: dict[str, mf.FileEntry] = field(default_factory=dict)  # path -> manifest entry
    index_files: dict[str, IndexFile] = field(default_factory=dict)  # path -> page link
    by_wheel: dict[str, str] = field(default_factory=dict)  # wheel key -> its variants.json path
    labels: dict[str, str] = field(default_factory=dict)  # wheel key -> variant label
    texts: dict[str, str] = field(default_factory=dict)  # variants.json path -> its text

    def links_for(self, wheel_keys) -> list[IndexFile]:
        """The variants.json links a page listing ``wheel_keys`` must carry."""
        paths = dict.fromkeys(self.by_wheel[k] for k in wheel_keys if k in self.by_wheel)
        return [self.index_files[p] for p in paths]

    def variants_for(self, wheel_key: str) -> str | None:
        """The pylock ``variants-json`` data of one wheel (JSON text: the standard keys, PEP 850's
        ``providers`` among them so a lock keeps static properties, and its label only)."""
        path = self.by_wheel.get(wheel_key)
        if path is None:
            return None
        doc = json.loads(self.texts[path])
        label = self.labels[wheel_key]
        out = {"$schema": doc["$schema"], "default-priorities": doc["default-priorities"],
               "variants": {label: doc["variants"].get(label, {})}}
        if isinstance(doc.get("providers"), dict):
            out["providers"] = doc["providers"]
        return json.dumps(out, sort_keys=True, separators=(",", ":"))


def _published(out: Path) -> dict[tuple[str, str], str]:
    """(file name, sha256) -> path of every variants.json the live manifest lists."""
    try:
        files = mf.load(out).files
    except TorchdepotError:
        return {}
    return {(f.path.rsplit("/", 1)[-1], f.sha256): f.path for f in files if f.kind == KIND}


def store_path(out: Path, project: str, filename: str, sha256: str,
               published: dict[tuple[str, str], str] | None = None,
               pending: dict[str, bytes] | None = None) -> str:
    """Where bytes hashing to ``sha256`` live: where the manifest already lists them, else the
    plain path if free or holding the same bytes, else a path named by their digest.
    ``pending``: paths this run is about to write (journaled, not yet on disk), and their bytes."""
    if published and (filename, sha256) in published:
        return published[(filename, sha256)]
    default = f"{PACKAGES_DIR}/{project}/{filename}"
    path, n = default, 0
    while True:
        if pending and path in pending:
            current = pending[path]
        else:
            try:
                current = safe_join(out, path).read_bytes()
            except FileNotFoundError:
                return path
        if hashlib.sha256(current).hexdigest() == sha256:
            return path
        path = changed_bytes_path(default, sha256, None, n)
        n += 1


@dataclass
class _Held:
    """One upstream variants.json and what the mirror holds of its release."""

    link: Link
    doc: VariantsJson
    data: bytes  # upstream's bytes
    project: str
    version: str
    labels: set[str] = field(default_factory=set)  # the labels the mirror holds
    keys: list[tuple[str, str]] = field(default_factory=list)  # (wheel key, its label)


def publish_variants_json(out: Path, resolution: Resolution, view: View) -> VariantsPublished:
    """Store the variants.json of every variant wheel in the resolution; see the module docstring.

    A file lists only the labels the mirror holds for its release (PEP 825: the variants
    available on the index); when the mirror holds them all, upstream's bytes are kept as they
    are. The paths are chosen first, journaled together, and only then written."""
    result = VariantsPublished()
    published = _published(out)
    writes: dict[str, bytes] = {}
    held: dict[str, _Held] = {}  # variants.json URL -> the release it describes and the labels held
    for key, vf, acc in resolution.files:
        if vf.label is None:
            continue
        version = parse_wheel(vf.filename).version
        got = view.variants_json(acc, vf.project, version)
        if got is None:
            continue  # upstream lists none: PEP 825 says it must; the wheel is still served
        link, doc, data = got
        entry = held.setdefault(link.url, _Held(link, doc, data, vf.project, version))
        entry.labels.add(vf.label)
        entry.keys.append((key, vf.label))
    for h in held.values():
        link, project, version = h.link, h.project, h.version
        data = h.data if h.labels >= set(h.doc.variants) else h.doc.subset_text(h.labels).encode()
        upstream_sha = hashlib.sha256(h.data).hexdigest()
        sha = hashlib.sha256(data).hexdigest()
        path = store_path(out, project, link.filename, sha, published, writes)
        if path not in writes and not safe_join(out, path).exists():
            writes[path] = data
        result.entries[path] = mf.FileEntry(path=path, sha256=sha, size=len(data), kind=KIND, project=project,
                                            version=version, url=link.url, upstream_sha256=link.sha256,
                                            hash_mismatch=link.sha256 is not None and link.sha256 != upstream_sha,
                                            upload_time=link.upload_time)
        result.index_files[path] = IndexFile(project=project, filename=link.filename, path=path, sha256=sha, size=len(data),
                                             upload_time=link.upload_time)
        result.texts[path] = data.decode("utf-8")
        for key, label in h.keys:
            result.by_wheel[key] = path
            result.labels[key] = label
    if writes:
        publication.record(out, writes)
        for path, data in writes.items():
            atomic_write_bytes(safe_join(out, path), data)
    return result
