"""Resolve: each target's closure with uv, against the local view only.

Input: a :class:`~torchdepot.sync.plan.Plan` and its :class:`~torchdepot.sync.view.View`.
Output: :class:`Resolution`, the plan's targets with their files, each mapped back to
the screened upstream link it came from. uv never sees an upstream page: its only index
is the view's loopback server, so an odd link upstream cannot stop it and a URL it
returns that is not a view file is refused with one line. A PEP 825 variant wheel comes
back under its own file name (label included), though uv was shown it without the label.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from torchdepot.errors import TorchdepotError
from torchdepot.model.platforms import target_platform
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
    # filename: a variant wheel was shown to the resolver without its label (sync/view.py)
    return replace(f, url=link.url, filename=vf.filename, sha256=link.sha256 or f.sha256,
                   size=link.size if link.size is not None else f.size), vf


def _without_a_fitting_wheel(view: View, t) -> str | None:
    """One line naming a project the resolver was shown that has no wheel for target ``t``."""
    major, minor = (int(x) for x in t.python.split(".")[:2])
    plats = list(target_platform(t.platform).pip_tags)
    supported = set(tags.cpython_tags((major, minor), platforms=plats))
    supported |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", plats))
    for project, files in sorted(view.served(t.accelerator).items()):
        fits, versions = False, set()
        for f in files:
            try:
                _name, version, _build, wheel_tags = parse_wheel_filename(f.filename)
            except InvalidWheelFilename:
                continue
            versions.add(version)
            fits = fits or bool(wheel_tags & supported)
        if versions and not fits:
            newest = max(versions)
            return (f"{t.id}: {project} {newest}: no wheel for this target (Python {t.python}, {t.platform}); "
                    f"its {len(files)} wheel(s) are for other platforms or Pythons (sdists are not mirrored)")
    return None


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
            unfit = _without_a_fitting_wheel(view, t)
            if unfit:
                raise ResolveError(unfit) from None
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
