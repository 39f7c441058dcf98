"""Bundle format constants, the bundle/plan/report types, and size parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


from torchdepot.store import manifest as mf
from torchdepot.errors import TorchdepotError


BUNDLE_MANIFEST = "torchdepot-bundle.json"
FORMAT = "torchdepot-bundle"
VERSION = 1
CHUNK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ROLES = ("file", "lock", "index")  # publish order on unbundle
_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*")


class BundleError(TorchdepotError):
    """A bundle that cannot be written or read (truncated, tampered, unsafe)."""


@dataclass(frozen=True)
class BundleFile:
    path: str  # archive path == path under the mirror root (envs/<id>/... for locks)
    size: int
    sha256: str
    role: str  # "file" (packages, conda packages) | "lock" (envs/) | "index" (whl/, repodata, targets/)


@dataclass(frozen=True)
class PlannedFile:
    path: str
    source: Path
    role: str
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


