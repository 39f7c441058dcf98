"""Resolve: each target's closure with uv, against the local view only.

Input: a :class:`~torchdepot.sync.plan.Plan` and its :class:`~torchdepot.sync.view.View`.
Output: :class:`Resolution`, the plan's targets with their files, each mapped back to
the screened upstream link it came from. uv never sees an upstream page: its only index
is the view's loopback server, so an odd link upstream cannot stop it and a URL it
returns that is not a view file is refused with one line.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from torchdepot.errors import TorchdepotError
from torchdepot.resolve.uv import IndexPlan, ResolvedFile, ResolveError, resolve
from torchdepot.store.fsutil import safe_filename
from torchdepot.sync.plan import Plan, TargetPlan
from torchdepot.sync.view import View, ViewFile


@dataclass(frozen=True)
class Resolution:
    targets: tuple[TargetPlan, ...]
    files: tuple[tuple[str, ViewFile, str], ...]  # (mirror key, view file, accelerator), each file once


def file_key(f: ResolvedFile) -> str:
    return f"packages/{f.name}/{safe_filename(f.filename)}"


def _upstream_file(view: View, target_id: str, f: ResolvedFile) -> tuple[ResolvedFile, ViewFile]:
    vf = view.lookup(f.url)
    if vf is None:
        raise ResolveError(f"{target_id}: the resolver returned {f.url}, which is not a screened upstream link; refused")
    link = vf.link
    return replace(f, url=link.url, sha256=link.sha256 or f.sha256, size=link.size if link.size is not None else f.size), vf


def resolve_targets(plan: Plan, view: View, jobs: int = 2) -> Resolution:
    """uv pip compile per target against ``view`` (served for the duration)."""
    def one(base: str, tp: TargetPlan) -> tuple[TargetPlan, list[tuple[ResolvedFile, ViewFile]]]:
        t = tp.target
        index = IndexPlan(index_url=f"{base}/{t.accelerator}", index_strategy="first-index",
                          prereleases=plan.prereleases)
        try:
            raw = resolve(t.id, list(tp.requirements), t.python, t.platform, index)
        except ResolveError:
            if view.errors:  # the view refused something (metadata hash, no metadata): that is the cause
                raise TorchdepotError(view.errors[0]) from None
            raise
        mapped = [_upstream_file(view, t.id, f) for f in raw]
        return replace(tp, files=tuple(f for f, _ in mapped)), mapped

    with view.serve() as base, ThreadPoolExecutor(max_workers=max(1, min(jobs, len(plan.targets) or 1))) as pool:
        done = list(pool.map(lambda tp: one(base, tp), plan.targets))
    if view.errors:
        raise TorchdepotError(view.errors[0])
    files: dict[str, tuple[str, ViewFile, str]] = {}
    for tp, mapped in done:
        for f, vf in mapped:
            files.setdefault(file_key(f), (file_key(f), vf, tp.target.accelerator))
    return Resolution(targets=tuple(tp for tp, _ in done), files=tuple(files.values()))
