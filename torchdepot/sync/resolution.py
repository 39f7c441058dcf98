"""Resolve: each target's closure with uv, against the local view only.

Input: a :class:`~torchdepot.sync.plan.Plan` and its :class:`~torchdepot.sync.view.View`.
Output: :class:`Resolution`, the plan's targets with their files, each mapped back to
the screened upstream link it came from. uv never sees an upstream page: its only index
is the view's loopback server, so an odd link upstream cannot stop it and a URL it
returns that is not a view file is refused with one line. A PEP 825 variant wheel comes
back under its own file name (label included), though uv was shown it without the label.

A target whose inputs are unchanged is not resolved again: ``cache`` (the mirror's
``.torchdepot/resolutions.json``) keeps each target's last answer with its key (uv's
version, the requirements, Python, platform, options) and a digest of every view page the
resolver could have read for its accelerator. Each page's digest is of this run's page: built
from this run's upstream reads (a page whose upstream pages are unchanged from its kept
derivation, ``sync/view.py``, without screening them again), or, when that derivation was
reused and nothing the view adds per run changed, the digest kept from the run that built it
(not formatted again); one byte of difference (a new file, hash, yank, upload time) runs uv
again. So a whole run with one changed upstream page runs uv only for the targets that were
shown a page derived from it, and formats only the pages those runs of uv ask for.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from torchdepot.errors import TorchdepotError
from torchdepot.model.platforms import target_platform
from torchdepot.resolve.uv import IndexPlan, ResolvedFile, ResolveError, resolve
from torchdepot.store.fsutil import safe_filename
from torchdepot.store.layout import package_path
from torchdepot.sync.plan import Plan, TargetPlan
from torchdepot.sync.reads import Count
from torchdepot.sync.view import View, ViewFile, write_scratch
from torchdepot.sync.viewserver import serve_view


@dataclass(frozen=True)
class Resolution:
    targets: tuple[TargetPlan, ...]
    files: tuple[tuple[str, ViewFile, str], ...]  # (mirror key, view file, accelerator), each file once
    # (target id, why): targets the resolver found no answer for while others resolved; the run
    # publishes the others, names these and fails at its end (one target does not stop a sync)
    failed: tuple[tuple[str, str], ...] = ()


def file_key(f: ResolvedFile) -> str:
    return package_path(f.name, safe_filename(f.filename))


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


def uv_version() -> str:
    try:
        return importlib.metadata.version("uv")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _inputs_key(tp: TargetPlan, index: IndexPlan, view: View, uv_version: str) -> str:
    t = tp.target
    doc = [uv_version, t.id, list(tp.requirements), t.python, t.platform, index.args(),
           str(view.exclude_newer), view.on_hash_mismatch]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _page_digests(view: View, accelerator: str, projects) -> dict[str, str]:
    return {project: view.page_digest(accelerator, project) for project in sorted(projects)}


def _load_cache(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}  # a cache: unreadable means resolve again
    return doc if isinstance(doc, dict) else {}


def _from_cache(entry, key: str, view: View, accelerator: str) -> list[ResolvedFile] | None:
    """The cached answer when its key and every page it depended on are unchanged; else None."""
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("pages"), dict):
        return None
    try:
        if _page_digests(view, accelerator, entry["pages"]) != entry["pages"]:
            return None
        files = [ResolvedFile(**f) for f in entry["files"]]
    except (TypeError, KeyError, TorchdepotError):
        return None
    shown = [vf for f in files if (vf := view.lookup_shown(accelerator, f.url)) is not None]
    if len(shown) != len(files):
        return None
    for vf in shown:  # the metadata the resolver would have read: checked and recorded as in a run of uv
        if not view.has_metadata(accelerator, vf.shown):
            view.metadata(accelerator, vf.shown)
    if any((accelerator, vf.filename) in view.excluded for vf in shown):
        return None  # a file it picked is excluded now: resolve again
    return None if view.errors else files


MAX_EXCLUSION_ROUNDS = 5  # resolver runs per target after the first, each one with a file fewer


def _resolve_excluding(view: View, tp: TargetPlan, index: IndexPlan) -> list[ResolvedFile]:
    """uv for one target; when the view excluded a file during the run (its bytes are no usable
    wheel: sync/view.py ``exclude``), uv runs again on pages without it, at most
    :data:`MAX_EXCLUSION_ROUNDS` more times."""
    t = tp.target
    for round_ in range(MAX_EXCLUSION_ROUNDS + 1):
        before = len(view.excluded)
        try:
            raw = resolve(t.id, list(tp.requirements), t.python, t.platform, index)
        except ResolveError:
            if view.errors:  # the view refused something (metadata hash, no metadata): that is the cause
                raise TorchdepotError(view.errors[0]) from None
            if len(view.excluded) > before and round_ < MAX_EXCLUSION_ROUNDS:
                continue
            unfit = _without_a_fitting_wheel(view, t)
            if unfit:
                raise ResolveError(unfit) from None
            raise
        picked = [view.lookup(f.url) for f in raw]
        if not any(vf is not None and (t.accelerator, vf.filename) in view.excluded for vf in picked):
            return raw
    raise ResolveError(f"{t.id}: still picking excluded files after {MAX_EXCLUSION_ROUNDS} more resolver runs: "
                       + "; ".join(sorted(fn for _acc, fn in view.excluded)))


def resolve_targets(plan: Plan, view: View, jobs: int = 2, cache: Path | None = None,
                    write_cache: bool = True, progress: bool | None = False) -> Resolution:
    """uv pip compile per target against ``view`` (served for the duration); a target whose
    inputs and pages are unchanged since ``cache`` was written reuses its answer (a dry run
    reads the cache but leaves it as it is: ``write_cache`` False). ``progress``: a bar of
    targets resolved (True; None: on a terminal only; False: none) beside the reads' bar."""
    cached = _load_cache(cache)
    uv = uv_version()  # once per run: a metadata scan per call
    fresh: dict[str, dict] = {}

    def one(base: str, tp: TargetPlan) -> tuple[TargetPlan, list[tuple[ResolvedFile, ViewFile]]]:
        t = tp.target
        index = IndexPlan(index_url=f"{base}/{t.accelerator}", index_strategy="first-index",
                          prereleases=plan.prereleases)
        key = _inputs_key(tp, replace(index, index_url=t.accelerator), view, uv)
        hit = _from_cache(cached.get(t.id), key, view, t.accelerator)
        if hit is not None:
            raw = [replace(f, url=f"{base}/{f.url}") for f in hit]
        else:
            raw = _resolve_excluding(view, tp, index)
        mapped = [_upstream_file(view, t.id, f) for f in raw]
        fresh[t.id] = {"key": key, "files": [asdict(replace(f, url=f.url[len(base) + 1:])) for f in raw]}
        return replace(tp, files=tuple(f for f, _ in mapped)), mapped

    def counted(base: str, tp: TargetPlan, bar: Count):
        try:
            return _outcome(one, base, tp)
        finally:
            bar.step()

    with serve_view(view) as base, ThreadPoolExecutor(max_workers=max(1, min(jobs, len(plan.targets) or 1))) as pool, \
            Count(progress, len(plan.targets), "resolve", "targets") as bar:
        outcomes = list(pool.map(lambda tp: counted(base, tp, bar), plan.targets))
    if view.errors:
        raise TorchdepotError(view.errors[0])
    done = [o for o in outcomes if not isinstance(o, TorchdepotError)]
    failed = [(tp.target.id, o) for tp, o in zip(plan.targets, outcomes, strict=True)
              if isinstance(o, TorchdepotError)]
    if failed and not done:
        raise failed[0][1]  # nothing resolved: the run fails as it always did
    if cache is not None and write_cache:
        for tp, _ in done:  # every page the resolvers read for the accelerator, as of now
            entry = fresh[tp.target.id]
            entry["pages"] = _page_digests(view, tp.target.accelerator, view.served(tp.target.accelerator))
        # a cache (unreadable or stale means resolve again): replaced atomically, not fsynced, and
        # only when an answer or a page digest changed
        write_scratch(cache, (json.dumps({**cached, **fresh}, indent=1, sort_keys=True) + "\n").encode())
    files: dict[str, tuple[str, ViewFile, str]] = {}
    for tp, mapped in done:
        for f, vf in mapped:
            files.setdefault(file_key(f), (file_key(f), vf, tp.target.accelerator))
    return Resolution(targets=tuple(tp for tp, _ in done), files=tuple(files.values()),
                      failed=tuple((tid, str(exc)) for tid, exc in failed))


def _outcome(one, base: str, tp: TargetPlan):
    """``one(base, tp)``, or the one-line error that target ended in."""
    try:
        return one(base, tp)
    except TorchdepotError as exc:
        return exc
