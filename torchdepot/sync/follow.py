"""The follow step: a spec with ``accelerators: [current]`` / ``pythons: [current]`` gets the
release matrix upstream ships for the selected torch, before any target is planned.

It reads upstream's aggregate ``<base>/<prefix>torch/`` page (download.pytorch.org lists
every variant's wheels there) from the first upstream that answers, in the spec's order,
through the one screened reader, and expands the spec with
:func:`~torchdepot.model.release_matrix.current_matrix`. What changed since the last sync is
said in one line per change, against the record of the last sync's matrix
(``.torchdepot/matrix.json``, written only after a sync that published). What upstream
stopped shipping is kept, never dropped silently: the mirror's recorded targets stay
(sync/lifecycle), re-pinned to the newest torch that still has their accelerator, until
``--prune``.
With every upstream unreachable, the last recorded matrix is followed (said in one line);
with no record either, the run fails in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torchdepot.errors import TorchdepotError, UpstreamError, load_json, one_line
from torchdepot.model.release_matrix import Matrix, current_matrix, matrix_changes, missing_explicit
from torchdepot.net.http import Client
from torchdepot.net.pipconfig import PipSources
from torchdepot.sources.upstream import UpstreamReader, crawl_wheels, page_url
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.store import layout as L
from torchdepot.store.fsutil import atomic_write_text, safe_join
from torchdepot.sync import session
from torchdepot.sync.plan import channel_prefix

Say = Callable[[str], None]
MAX_RECORD = 4 * 1024 * 1024  # the record is ours, but a mirror dir may hold anything


@dataclass(frozen=True)
class FollowRecord:
    """What the last sync followed: upstream's matrix then."""

    upstream: Matrix

    def to_json(self) -> str:
        return json.dumps({"upstream": self.upstream.to_data()}, indent=1, sort_keys=True) + "\n"


def load_record(out: Path) -> FollowRecord | None:
    """The last sync's record; None when there is none or it is not one (never fatal)."""
    path = safe_join(out, L.MATRIX_RECORD)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_RECORD:
            return None
        data = load_json(path.read_bytes(), str(path))
    except (OSError, TorchdepotError):
        return None
    upstream = Matrix.from_data(data.get("upstream")) if isinstance(data, dict) else None
    return FollowRecord(upstream=upstream) if upstream is not None else None


def save_record(out: Path, record: FollowRecord) -> None:
    atomic_write_text(safe_join(out, L.MATRIX_RECORD), record.to_json())


def _read_matrix(spec: MirrorSpec, reader: UpstreamReader, say: Say) -> Matrix | None:
    torch = spec.package("torch")
    constraint = torch.constraint if torch else None
    prefix = channel_prefix(spec.channel).rstrip("/")
    for i, base in enumerate(spec.upstreams):
        index = page_url(base, prefix) if prefix else base.rstrip("/")
        more = "; trying next" if i + 1 < len(spec.upstreams) else ""
        try:
            crawl = crawl_wheels(reader, index, ["torch"])
        except UpstreamError as exc:
            say(f"current: {index}/torch/ not readable ({one_line(exc)}){more}")
            continue
        matrix = current_matrix((w for _, w in crawl.items), constraint, spec.channel.prerelease, spec.platforms)
        if matrix is not None:
            return matrix
        say(f"current: {index}/torch/ lists no torch{constraint or ''} for {', '.join(spec.platforms)}{more}")
    return None


def follow_upstream(spec: MirrorSpec, out: Path, *, pip_sources: PipSources | None = None, prune: bool = False,
                    say: Say) -> tuple[MirrorSpec, FollowRecord | None]:
    """``spec`` with ``current`` expanded (``matrix_cells``), and the record to save once the
    sync has published. A spec that follows nothing comes back unchanged, with no record.
    ``prune`` lets go of what upstream no longer ships instead of keeping it."""
    if not spec.follow:
        return spec, None
    previous = load_record(out) if out.is_dir() else None
    with Client(session.PROBE_CONFIG) as probe:
        matrix = _read_matrix(spec, session.edge(spec, probe, pip_sources).reader, say)
    if matrix is None:
        if previous is None:
            raise TorchdepotError("current: no upstream listed a torch release matrix "
                                  f"({', '.join(spec.upstreams)}) and no earlier sync recorded one; "
                                  "name the accelerators and Pythons instead of 'current'")
        say(f"current: following the last recorded matrix (torch {previous.upstream.torch})")
        matrix = previous.upstream
    if previous is not None:
        for change in matrix_changes(previous.upstream, matrix, spec.platforms):
            say(change.text + ("" if change.appeared or not prune else " (--prune: its targets go)"))
    for of, explicit in (("accelerators", spec.accelerators), ("pythons", spec.pythons)):
        for value, lacking in missing_explicit(explicit, matrix, spec.platforms, of).items():
            say(f"warning: {value} is not in upstream's torch {matrix.torch} matrix for {', '.join(lacking)}; "
                "kept (pinned to the newest torch that has it)")
    return replace(spec, matrix_cells=matrix.cells), FollowRecord(upstream=matrix)
