"""What one mirror run returns (:class:`MirrorResult`) and the log that fills it.

A result is built up by the orchestrator (``sync/pip.py``) step by step; every message a run
says is kept in :attr:`MirrorResult.messages` in the order it was echoed, and every step's
seconds in :attr:`MirrorResult.phases`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torchdepot.fetch import FetchReport
from torchdepot.store import manifest as mf
from torchdepot.sync import lifecycle
from torchdepot.sync.plan import TargetPlan
from torchdepot.sync.tombstones import Keeper

Echo = Callable[[str], None]
Verdict = Literal["ok", "NOT OK", "unchecked"]  # a sync's closing check, as last_sync records it


@dataclass(frozen=True)
class TargetFailure:
    """A target this run could not sync: its id (what callers act on) and the one line said
    about it (what a person reads). Nothing is ever parsed back out of ``line``."""

    target: str
    line: str


@dataclass
class MirrorResult:
    out: Path
    plans: list[TargetPlan] = field(default_factory=list)
    files: list[mf.FileEntry] = field(default_factory=list)
    targets: list[mf.Target] = field(default_factory=list)
    report: FetchReport | None = None
    generation: str | None = None
    index_changed: bool = False
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: mf.Manifest | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step (bench/diagnostics)
    requests: dict[str, int] = field(default_factory=dict)  # upstream requests: pages, metadata, ranges, wheels
    refused: int = 0  # upstream links refused by the screen (summarised in one message)
    keeper: Keeper | None = None  # what the view saw of the files the mirror holds (sync/tombstones.py)
    tombstones: list[mf.Tombstone] = field(default_factory=list)  # kept files upstream deleted or changed
    releases: list[mf.Release] = field(default_factory=list)  # kept, per target and torch version
    removals: list[lifecycle.Removal] = field(default_factory=list)  # what this run removes (pruned, keep: N)
    dropped_releases: list[mf.Release] = field(default_factory=list)
    target_set: lifecycle.TargetSet | None = None
    verify: Verdict = "unchecked"  # the closing check
    failed: list[TargetFailure] = field(default_factory=list)  # each target this run could not sync
    # every upstream page the run read: URL -> kept (revalidated next run) | absent; None: not revalidatable
    pages_seen: dict[str, bool] | None = None
    # cache folder -> the entries this run read or wrote (store/cachefiles.py sweeps the rest)
    cache_used: dict[str, frozenset[str]] | None = None

    @property
    def torch_versions(self) -> dict[str, str]:
        """target id -> the torch version it serves after this run (resolved now, or kept as published)."""
        out = {t.id: t.torch for t in self.targets if t.torch}
        out.update((tp.target.id, f.version) for tp in self.plans for f in tp.files if f.name == "torch")
        return out

    @property
    def size(self) -> int:
        """Bytes of every file the manifest lists after this run."""
        return sum(f.size for f in (self.manifest.files if self.manifest else self.files))

    @property
    def summary(self) -> str:
        if self.report is None:
            return "dry run: nothing fetched"
        return self.report.summary()

    def to_json(self) -> dict[str, Any]:
        """The run's figures for ``--json`` output."""
        return {"out": str(self.out), "targets": [t.id for t in self.targets], "generation": self.generation,
                "index_changed": self.index_changed, "seconds": round(self.seconds, 3),
                "requests": dict(self.requests), "links_refused": self.refused,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "torch": self.torch_versions, "size": self.size, "verify": self.verify,
                "files": self.report.summary() if self.report else None,
                "removed": [{"reason": r.reason, "files": list(r.paths), "size": r.size} for r in self.removals],
                "tombstones": [t.to_json() for t in self.tombstones],
                "releases": [{"target": r.target, "torch": r.torch, "files": len(r.paths)} for r in self.releases],
                "failed": [f.line for f in self.failed], "failed_targets": [f.target for f in self.failed]}


class RunLog:
    """A run's messages (kept in its result and echoed) and its seconds per step."""

    def __init__(self, result: MirrorResult, echo: Echo, mark: float) -> None:
        self.result, self.echo, self.mark = result, echo, mark

    def say(self, msg: str) -> None:
        self.result.messages.append(msg)
        self.echo(msg)

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.result.phases[name] = self.result.phases.get(name, 0.0) + now - self.mark
        self.mark = now


def sync_record(started: float, verify: str, detail: str) -> mf.SyncRecord:
    """The manifest's ``last_sync``: when the run finished, how long it took, its closing check."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return mf.SyncRecord(finished=now, seconds=round(time.monotonic() - started, 3), verify=verify, detail=detail)
