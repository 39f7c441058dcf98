"""Byte-range pieces of one segmented download, and their resume state (pure, plus one
sidecar file).

Invariants:
- the pieces of a file tile ``[0, size)`` exactly, in order, without overlap; the sidecar
  counts fixed blocks of ``piece_bytes`` (aria2's bitfield), while the ranges the
  connections fetch (:func:`plan_runs`) start as runs of whole blocks whose ends move when
  a free connection takes the second half of one (:mod:`torchdepot.fetch.segmented`; on a
  block boundary, or inside a block near the end, where the tail rule cuts finer);
- the sidecar (``<partial>.pieces.json``) lists only blocks whose every byte is already in
  the partial file; it is written atomically after the blocks' bytes (by the first chunk read
  0.2 s or more after the last write, and when the file fails), so a killed process leaves
  the old list or the new one, never a block claimed done that is not written;
- a partial file is dropped together with its sidecar (:func:`drop_partial`), so no
  sidecar outlives the bytes it describes;
- a sidecar is trusted only for its own version, the same size, block size and validators
  (ETag, Last-Modified): anything else means the upstream file changed (or an older
  layout), and the partial is discarded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from torchdepot.errors import TorchdepotError, load_json

SIDECAR_SUFFIX = ".pieces.json"
SIDECAR_VERSION = 2  # 2: done lists fixed blocks of piece_bytes (1 listed the pieces of a per-file layout)


@dataclass(frozen=True)
class Piece:
    index: int
    first: int  # inclusive byte offsets
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Validators:
    """What identifies one upstream version of a file: a change in any means new bytes."""

    size: int
    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, size: int, headers) -> Validators:
        etag = headers.get("ETag")
        modified = headers.get("Last-Modified")
        return cls(size=size, etag=etag[:256] if etag else None, last_modified=modified[:64] if modified else None)

    def conflicts(self, other: Validators) -> str | None:
        """Why ``other`` is a different version than ``self`` (None: same, as far as known)."""
        if self.size != other.size:
            return f"Content-Length changed from {self.size} to {other.size}"
        if self.etag and other.etag and self.etag != other.etag:
            return f"ETag changed from {self.etag} to {other.etag}"
        if self.last_modified and other.last_modified and self.last_modified != other.last_modified:
            return f"Last-Modified changed from {self.last_modified} to {other.last_modified}"
        return None


def plan_pieces(size: int, piece_bytes: int, connections: int) -> tuple[Piece, ...]:
    """Split ``size`` bytes into pieces of at least ``piece_bytes`` (the last may be shorter),
    about two per connection, never more than needed (the fixed layout before the runs of
    :func:`plan_runs`; kept for its property test)."""
    if size <= 0:
        return ()
    target = max(piece_bytes, -(-size // max(1, 2 * connections)))
    count = max(1, -(-size // target))
    step = -(-size // count)
    return tuple(Piece(index=i, first=i * step, last=min(size, (i + 1) * step) - 1)
                 for i in range(count) if i * step < size)


def block_count(size: int, block: int) -> int:
    return -(-size // block)


def plan_runs(size: int, block: int, done: set[int], connections: int,
              stagger: bool = False) -> list[tuple[int, int]]:
    """The byte ranges ``[first, end)`` still to fetch: each gap between finished blocks,
    the gaps cut on block boundaries into about ``connections`` runs in all (each gap its
    share by length, at least one run), the runs of one gap of about equal length; with
    ``stagger``, run k of p gets one block plus a share of the rest weighted ``p + k`` (the
    last about twice the first), so runs that start together end apart and their
    connections' next requests do not all wait out the first-byte latency at once."""
    count = block_count(size, block)
    gaps: list[tuple[int, int]] = []  # [first block, end block)
    start: int | None = None
    for i in range(count + 1):
        if i < count and i not in done:
            start = i if start is None else start
        elif start is not None:
            gaps.append((start, i))
            start = None
    left = sum(b - a for a, b in gaps)
    runs: list[tuple[int, int]] = []
    for a, b in gaps:
        parts = max(1, min(b - a, round(max(1, connections) * (b - a) / left)))
        if stagger and parts > 1:
            weights = list(itertools.accumulate((parts + k for k in range(parts)), initial=0))
            extra = b - a - parts  # blocks beyond one per run
            cuts = [a + k + extra * w // weights[-1] for k, w in enumerate(weights)]
        else:
            cuts = [a + (b - a) * k // parts for k in range(parts + 1)]
        runs += [(x * block, min(size, y * block)) for x, y in itertools.pairwise(cuts)]
    return runs


@dataclass
class PieceState:
    """The sidecar's content: layout, validators and the finished pieces."""

    validators: Validators
    piece_bytes: int
    count: int
    done: set[int] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps({"version": SIDECAR_VERSION, "size": self.validators.size, "etag": self.validators.etag,
                           "last_modified": self.validators.last_modified, "piece_bytes": self.piece_bytes,
                           "count": self.count, "done": sorted(self.done)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PieceState | None:
        """None for anything that is not a sidecar this version wrote (never raises)."""
        try:
            doc = load_json(text, "sidecar")
        except TorchdepotError:
            return None
        if not isinstance(doc, dict) or doc.get("version") != SIDECAR_VERSION:
            return None
        size, piece, count, done = doc.get("size"), doc.get("piece_bytes"), doc.get("count"), doc.get("done")
        etag, modified = doc.get("etag"), doc.get("last_modified")
        if not (_positive_int(size) and _positive_int(piece) and _positive_int(count)):
            return None
        if not isinstance(done, list) or not all(isinstance(i, int) and 0 <= i < count for i in done):
            return None
        if not all(v is None or isinstance(v, str) for v in (etag, modified)):
            return None
        return cls(Validators(size, etag, modified), piece, count, set(done))


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + SIDECAR_SUFFIX)


def load_state(part: Path) -> PieceState | None:
    try:
        return PieceState.from_json(sidecar_path(part).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def save_state(part: Path, state: PieceState) -> None:
    """Atomic (temp + rename) but not fsynced: it is rewritten while blocks finish, and it
    only has to survive a killed process, as the piece bytes it describes do (page cache).
    After a power loss the assembled file's hash check still refuses a hole."""
    save_text(part, state.to_json())


def save_text(part: Path, text: str) -> None:
    """:func:`save_state` of a state already serialised (``PieceState.to_json``); one writer
    at a time per file (the temp file's name is fixed)."""
    path = sidecar_path(part)
    tmp = _sidecar_tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _sidecar_tmp(side: Path) -> Path:
    return side.with_name(side.name + ".tmp")


def drop_partial(part: Path) -> None:
    """Remove a partial file with its sidecar (and a sidecar write a kill left behind)."""
    side = sidecar_path(part)
    for p in (part, side, _sidecar_tmp(side)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
