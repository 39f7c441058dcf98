"""Bundle format constants, the bundle/plan/report types, the checked parsers of the two
bundle documents (head and manifest), the role rule, and size parsing. Pure.

A bundle starts with ``torchdepot-bundle-head.json`` (every member's path, size and role,
known before the first byte is written) and ends with ``torchdepot-bundle.json`` (the same
plus each sha256). Unbundle stages no member the head does not declare with exactly that
size, so a small compressed bundle cannot expand past what it declares. A bundle without a
head (hand-made, or older) is capped at ``MAX_EXPANSION`` times its archive size.

A member's role must match its path (:func:`role_of`): a bundle cannot replace a package by
labelling it an index or a lock file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf

BUNDLE_MANIFEST = "torchdepot-bundle.json"
BUNDLE_HEAD = "torchdepot-bundle-head.json"
FORMAT = "torchdepot-bundle"
HEAD_FORMAT = "torchdepot-bundle-head"
# Without a head: staged bytes <= archive bytes * this + slack (zstd on wheels ~1x, on pages ~10x).
MAX_EXPANSION = 32
EXPANSION_SLACK = 64 * 1024 * 1024
MAX_DOC_BYTES = 256 * 1024 * 1024  # a bundle document is held in memory: bound it
VERSION = 1
CHUNK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
Role = Literal["file", "lock", "index"]
ROLES: tuple[Role, ...] = get_args(Role)  # publish order on unbundle
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*")


class BundleError(TorchdepotError):
    """A bundle that cannot be written or read (truncated, tampered, unsafe)."""


@dataclass(frozen=True)
class BundleFile:
    path: str  # archive path == path under the mirror root (envs/<id>/... for locks)
    size: int
    sha256: str
    role: Role  # "file" (packages, conda packages) | "lock" (envs/) | "index" (whl/, repodata, targets/)


@dataclass(frozen=True)
class PlannedFile:
    path: str
    source: Path
    role: Role
    expect_sha256: str | None = None  # manifest.json's record, checked while streaming


@dataclass
class BundlePlan:
    files: list[PlannedFile]
    manifest: mf.Manifest  # the subset of manifest.json this bundle carries
    target_ids: list[str]
    since: str | None = None
    skipped: int = 0  # files the other side already has (--since)

    @property
    def total_bytes(self) -> int:
        return sum(f.source.stat().st_size for f in self.files)


@dataclass
class UnbundleReport:
    published: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    incremental: bool = False
    targets: list[str] = field(default_factory=list)


def parse_size(text: str) -> int:
    """``4G`` / ``700M`` / ``4GiB`` / ``1000`` -> bytes (binary multiples)."""
    m = _SIZE.fullmatch(text or "")
    if not m:
        raise BundleError(f"--split {text!r}: not a size (e.g. 4G, 700M, 1048576)")
    n = float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
    if n < 1:
        raise BundleError(f"--split {text!r}: must be at least 1 byte")
    return int(n)




def role_of(path: str) -> Role | None:
    """The only role a member at POSIX ``path`` may have, or None when no member may live there."""
    top, _, rest = path.partition("/")
    if not rest:
        return None
    if top in (L.INDEX_LINK, L.TARGETS_DIR):
        return "index"
    if top == L.ENVS_DIR:
        return "lock"
    if top == L.CONDA_DIR:
        return "index" if L.is_conda_index_file(path.rsplit("/", 1)[1]) else "file"
    if top == L.PACKAGES_DIR:
        return "file"
    return None


@dataclass(frozen=True)
class BundleDoc:
    """``torchdepot-bundle.json``, checked."""
    files: tuple[BundleFile, ...]
    manifest: mf.Manifest  # the subset of the source mirror's manifest.json
    targets: tuple[str, ...] = ()
    incremental: bool = False


def _load(data: bytes, name: str, fmt: str) -> dict:
    doc = load_json(data, name, error=BundleError)
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != VERSION:
        raise BundleError(f"{name}: not a torchdepot bundle v{VERSION}")
    return doc


def _entries(doc: dict, name: str, with_sha: bool) -> tuple[BundleFile, ...]:
    files = doc.get("files")
    if not isinstance(files, list):
        raise BundleError(f"{name}: files: not a list")
    out, seen = [], set()
    for i, f in enumerate(files):
        at = f"{name}: files[{i}]"
        if not isinstance(f, dict):
            raise BundleError(f"{at}: not an object")
        path, size, role, sha = f.get("path"), f.get("size"), f.get("role"), f.get("sha256", "")
        if not isinstance(path, str) or not path:
            raise BundleError(f"{at}: path: not a string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"{at}: size: not a non-negative integer")
        if role not in ROLES:
            raise BundleError(f"{at}: role: not one of {', '.join(ROLES)}")
        if with_sha and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise BundleError(f"{at}: sha256: not a sha256 hex digest")
        if path in seen:
            raise BundleError(f"{at}: {path[:200]!r} listed twice")
        seen.add(path)
        out.append(BundleFile(path, size, sha if with_sha else "", role))
    return tuple(out)


def parse_head(data: bytes) -> tuple[BundleFile, ...]:
    """``torchdepot-bundle-head.json`` -> declared members (sha256 empty: not known yet)."""
    return _entries(_load(data, BUNDLE_HEAD, HEAD_FORMAT), BUNDLE_HEAD, with_sha=False)


def parse_doc(data: bytes) -> BundleDoc:
    """``torchdepot-bundle.json`` -> BundleDoc; anything else is a one-line BundleError."""
    doc = _load(data, BUNDLE_MANIFEST, FORMAT)
    files = _entries(doc, BUNDLE_MANIFEST, with_sha=True)
    targets = doc.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise BundleError(f"{BUNDLE_MANIFEST}: targets: not a list of target ids")
    incremental = doc.get("incremental", False)
    if not isinstance(incremental, bool):
        raise BundleError(f"{BUNDLE_MANIFEST}: incremental: not true/false")
    try:
        sub = mf.Manifest.from_doc(doc.get("manifest"), f"{BUNDLE_MANIFEST}: manifest")
    except BundleError:
        raise
    except TorchdepotError as exc:
        raise BundleError(str(exc)) from None
    return BundleDoc(files=files, manifest=sub, targets=tuple(targets), incremental=incremental)
