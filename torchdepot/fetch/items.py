"""What a fetch is asked for and what it answers: :class:`FetchItem` in, one
:class:`FetchResult` per key out, gathered in a :class:`FetchReport`; and the hash cache
that lets a file already in the mirror count as present without reading it again.

Invariants:
- a result's ``status`` is one of ``downloaded``, ``present`` or ``failed``; every
  submitted key gets exactly one result;
- :class:`HashCache` trusts a recorded sha256 only while the file's size and mtime
  (nanoseconds) are what they were when it was recorded: any change means hash again, so a
  no-op re-sync reads no file bytes and a touched file is never trusted blindly;
- a file at its final path counts as present only with the stated size and the claimed
  sha256; one whose hash disagrees stays only under the ``warn`` policy;
- the cache is written atomically, and a missing or unreadable cache is an empty one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.store import layout as L
from torchdepot.store.fsutil import atomic_write_bytes, safe_join, sha256_file

HTML_TYPES = ("text/html", "application/xhtml")
HTML_MAGIC = (b"<!doctype html", b"<html", b"<head", b"<body")


def looks_like_html(head: bytes) -> bool:
    """A challenge/login page served with a binary content type still starts like HTML."""
    return head.lstrip()[:16].lower().startswith(HTML_MAGIC)


@dataclass(frozen=True)
class FetchItem:
    key: str  # POSIX path relative to the mirror root
    urls: tuple[str, ...]  # candidates, tried in order (failover)
    sha256: str | None = None  # what upstream claims; None when it claims nothing
    size: int | None = None  # expected size, when upstream states it
    # bytes this run already holds (a file:// URI: a wheel read whole for its METADATA), copied
    # before any URL is asked; the result names urls[0], where they came from, never this copy
    local: str | None = None


FetchStatus = Literal["downloaded", "present", "failed"]  # fetched now | already stored | not stored


@dataclass
class FetchResult:
    key: str
    status: FetchStatus
    sha256: str | None = None
    size: int = 0
    fetched_bytes: int = 0
    url: str | None = None
    error: str | None = None
    upstream_sha256: str | None = None
    hash_mismatch: bool = False
    resumed: bool = False
    attempts: int = 0
    # (monotonic start, end) of this file's transfer, from its first request to its last byte
    # stored; None for a file that moved no bytes (present) or never started
    span: tuple[float, float] | None = None


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """How long at least one of ``spans`` was in progress (the length of their union)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


@dataclass
class FetchReport:
    results: list[FetchResult] = field(default_factory=list)
    seconds: float = 0.0  # from the fetcher's start to its close (it may idle in between)

    @property
    def moving_seconds(self) -> float:
        """The time bytes were moving: the union of the downloads' spans. A fetcher started
        early (the pinned torch while its closure resolves) idles between its files, which
        :attr:`seconds` counts and this does not."""
        return busy_seconds([r.span for r in self.results if r.span is not None])

    @property
    def failed(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def downloaded(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "downloaded"]

    @property
    def present(self) -> list[FetchResult]:
        return [r for r in self.results if r.status == "present"]

    @property
    def fetched_bytes(self) -> int:
        return sum(r.fetched_bytes for r in self.results)

    @property
    def mismatches(self) -> list[FetchResult]:
        return [r for r in self.results if r.hash_mismatch]

    def summary(self, noun: str = "files") -> str:
        moving = self.moving_seconds  # the rate while bytes moved, not diluted by an idle fetcher
        mb = self.fetched_bytes / 1e6
        return (
            f"{len(self.results)} {noun}: {len(self.downloaded)} downloaded, "
            f"{len(self.present)} already present (skipped), {len(self.failed)} failed; "
            f"{mb:.1f} MB in {moving:.1f} s ({mb / max(moving, 1e-9):.1f} MB/s)"
            + (f"; {len(self.mismatches)} upstream hash mismatches" if self.mismatches else "")
        )


class HashCache:
    """``key -> (size, mtime_ns, sha256)`` for files this mirror verified before."""

    def __init__(self, root: Path):
        self.path = Path(root) / L.STATE_DIR / L.HASHES_NAME
        self.lock = threading.Lock()
        self.data: dict[str, list] = {}
        try:
            loaded = load_json(self.path.read_bytes(), str(self.path))
            if isinstance(loaded, dict):
                self.data = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, TorchdepotError):
            pass  # a cache: unreadable means hash again

    def lookup(self, key: str, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        with self.lock:
            entry = self.data.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        return None

    def record(self, key: str, path: Path, sha256: str) -> None:
        st = path.stat()
        with self.lock:
            self.data[key] = [st.st_size, st.st_mtime_ns, sha256]

    def forget(self, key: str) -> None:
        with self.lock:
            self.data.pop(key, None)

    def save(self) -> None:
        """Atomic, not fsynced (as the fetched files are not, unless asked): an unreadable or
        missing cache means hashing again, and an entry is trusted only while its file's size
        and mtime match. An fsync here made the end of every fetch wait on a journal commit
        with the run's freshly written bytes behind it."""
        with self.lock:
            text = json.dumps(self.data, sort_keys=True, indent=0)
        atomic_write_bytes(self.path, text.encode("utf-8"), fsync=False)


def hash_present(root: Path, key: str, cache: HashCache | None = None) -> tuple[str, int] | None:
    """(sha256, size) of a file at its final path, using the cache when stat matches."""
    path = safe_join(root, key)
    if not path.is_file():
        return None
    if cache is not None:
        cached = cache.lookup(key, path)
        if cached:
            return cached, path.stat().st_size
    digest, size = sha256_file(path)
    if cache is not None:
        cache.record(key, path, digest)
    return digest, size


def present_result(root: Path, item: FetchItem, dest: Path, cache: HashCache, policy: str) -> FetchResult | None:
    """The result for ``item`` when the file at ``dest`` can stay as it is (None: fetch it)."""
    if not dest.is_file():
        return None
    got = hash_present(root, item.key, cache)
    if got is None:
        return None
    digest, size = got
    if item.size is not None and size != item.size:
        return None
    if item.sha256 is None or digest == item.sha256:
        return FetchResult(key=item.key, status="present", sha256=digest, size=size, upstream_sha256=item.sha256)
    # Present but different from what upstream now claims: a mismatch accepted
    # under the warn policy before stays; under fail it is refetched.
    if policy == "warn":
        return FetchResult(key=item.key, status="present", sha256=digest, size=size, upstream_sha256=item.sha256,
                           hash_mismatch=True)
    return None
