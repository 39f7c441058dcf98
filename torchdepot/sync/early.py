"""Early downloads: the pinned torch wheels start downloading while their closures resolve.

Issue 15: torch is known before its closure resolves, and its wheel is most of a run's bytes.
:func:`submit_pinned` submits each pin that has exactly one wheel for its target and is new to
the mirror (neither listed nor on disk), journaling its path first (immutable publication), as
the fetch step would. :func:`drop_unused` removes an early download the resolver did not choose.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from packaging.version import InvalidVersion, Version

from torchdepot.fetch import Fetcher, FetchItem, FetchReport
from torchdepot.resolve.pin import candidates
from torchdepot.resolve.uv import ResolvedFile
from torchdepot.spec.mirror import TORCH_PROJECTS, MirrorSpec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication
from torchdepot.store.fsutil import safe_join
from torchdepot.sync.download import EarlyReads, PipFetchReport, same_path_elsewhere
from torchdepot.sync.plan import Plan
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.view import View

_Report = TypeVar("_Report", bound=FetchReport)  # the report comes back as the type it went in


def submit_pinned(out: Path, plan: Plan, view: View, spec: MirrorSpec, fetcher: Fetcher,
                  previous: mf.Manifest | None, reads: EarlyReads | None = None) -> set[str]:
    """Start downloading each pinned torch / torchvision / torchaudio wheel now. Returns the keys.
    ``reads``: each wheel's METADATA is read as it lands (while the closure resolves)."""
    whose: dict[str, tuple[str, str]] = {}  # key -> (project, upstream URL) for ``reads``
    listed = previous.by_path() if previous is not None else {}
    items: dict[str, FetchItem] = {}
    for tp in plan.targets:
        t = tp.target
        for req in tp.requirements:
            project, _, version = req.partition("==")
            if project not in TORCH_PROJECTS or not version:
                continue
            links = [vf.link for vf in view.project(t.accelerator, project)]
            wheels = {w.filename for w in candidates(links, project, t.accelerator, t.python, t.platform, view.wheels)
                      if _same_version(w.version, version)}
            if len(wheels) != 1:
                continue
            (filename,) = wheels
            vf = next(vf for vf in view.project(t.accelerator, project) if vf.filename == filename)
            key = file_key(ResolvedFile(name=project, version=version, url=vf.link.url, filename=filename,
                                        sha256=vf.link.sha256, size=vf.link.size))
            if key in listed or safe_join(out, key).exists() or not vf.link.sha256:
                continue
            whose[key] = (project, vf.link.url)
            items[key] = FetchItem(key=key, urls=same_path_elsewhere(vf.link.url, spec.upstreams), sha256=vf.link.sha256, size=vf.link.size)
    if items:
        publication.record(out, {p for key in items for p in (key, L.metadata_path(key))})
        fetcher.start()
        for item in sorted(items.values(), key=lambda i: -(i.size or 0)):
            fut = fetcher.submit(item)
            if reads is not None:
                reads.watch(fut, *whose[item.key])
    return set(items)


def _same_version(a: str, b: str) -> bool:
    if a == b:
        return True
    va, vb = _version(a), _version(b)
    return va is not None and va == vb


@functools.lru_cache(maxsize=4096)
def _version(text: str) -> Version | None:
    """A parsed version, once per distinct string (every target compares the same page's versions)."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def drop_unused(out: Path, report: _Report, early: set[str], resolution: Resolution) -> _Report:
    """An early download the resolver did not choose after all: removed, and out of the report."""
    used = {report.stored(key) if isinstance(report, PipFetchReport) else key for key, _vf, _acc in resolution.files}
    unused = early - used
    if not unused:
        return report
    for key in unused:
        safe_join(out, key).unlink(missing_ok=True)
    return replace(report, results=[r for r in report.results if r.key not in unused])
