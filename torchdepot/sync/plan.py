"""Plan: where each accelerator's PyTorch files come from, and what each target requires.

Input: the spec, the user's pip sources and the run's :class:`UpstreamReader`. Output: a
:class:`Plan` (frozen) naming, per accelerator, the first reachable PyTorch upstream that
carries it (failover in the spec's order, whatever its layout), and per target the pinned
``torch*`` requirements (pinned against the screened view, so a hostile link cannot be
pinned) plus the spec's extra packages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from packaging.requirements import Requirement

from torchdepot.errors import ParseError, TorchdepotError, UpstreamError
from torchdepot.model.wheelname import parse_wheel
from torchdepot.net.hostpolicy import HostPolicy, default_policy
from torchdepot.net.pipconfig import PipSources
from torchdepot.resolve.pin import matches_target, no_pin_reason, pin
from torchdepot.resolve.uv import ResolvedFile
from torchdepot.sources.upstream import UpstreamReader, Variant, locate_variant
from torchdepot.spec.mirror import TORCH_PROJECTS, Channel, MirrorSpec, PipTarget
from torchdepot.sync.view import MetadataMismatchError, View, ViewSources

Say = Callable[[str], None]
PIN_JOBS = 8  # targets pinned at once (page reads; the view and the reader are thread-safe)


@dataclass(frozen=True)
class TargetPlan:
    target: PipTarget
    requirements: tuple[str, ...]
    variant_url: str | None  # the PyTorch variant used; None when from the pip configuration alone
    files: tuple[ResolvedFile, ...] = ()  # filled by the resolve step
    warnings: tuple[str, ...] = ()  # said once by the run (a variant provider no source carries)


@dataclass(frozen=True)
class Plan:
    targets: tuple[TargetPlan, ...]
    sources: ViewSources
    prereleases: bool
    skipped: tuple[tuple[PipTarget, str], ...] = ()  # (target, why): tolerated targets that could not be pinned
    # (target, why): asked-for targets that could not be pinned while others could (a Python
    # upstream lacks): the run syncs and publishes the others, names these, and exits non-zero
    failed: tuple[tuple[PipTarget, str], ...] = ()


def channel_prefix(channel: Channel) -> str:
    return "" if channel is Channel.STABLE else f"{channel}/"


def dependency_sources(pip: PipSources, default_index: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(indexes, find-links) the user's pip configuration reads, pip's default index last."""
    indexes = pip.indexes
    if not pip.no_index and not pip.index_url and default_index:
        indexes += (default_index,)
    return tuple(i.rstrip("/") for i in indexes), pip.find_links


def host_policy(spec: MirrorSpec, pip: PipSources, default_index: str | None, file_host: str | None) -> HostPolicy:
    """The upstreams, hosts the PyTorch index links to, the pip configuration's hosts (for
    pip's default index also its file host), and the spec's ``allow_hosts``; ``file:``
    only when the user configured a local source."""
    indexes, find_links = dependency_sources(pip, default_index)
    deps = list(indexes) + list(find_links) + ([file_host] if default_index and file_host else [])
    local = any(u.startswith("file:") for u in list(spec.upstreams) + list(indexes) + list(find_links))
    return default_policy(spec.upstreams, deps, getattr(spec, "allow_hosts", ()), allow_file=local)


def locate_variants(spec: MirrorSpec, reader: UpstreamReader, accelerators: list[str], pip: PipSources,
                    say: Say) -> tuple[tuple[str, Variant | None], ...]:
    """Per accelerator, the first upstream (spec order) that carries it; each failure said once."""
    dead: set[str] = set()
    out = []
    for acc in accelerators:
        found = None
        for i, base in enumerate(spec.upstreams):
            if base in dead:
                continue
            more = "; trying next" if i + 1 < len(spec.upstreams) else ""
            try:
                found = locate_variant(reader, base, channel_prefix(spec.channel), acc)
            except UpstreamError as exc:
                dead.add(base)
                say(f"upstream {base} unreachable: {exc.detail}{more}")
                continue
            if found is not None:
                break
            say(f"upstream {base} has no {acc} torch index{more}")
        if found is None:
            say(f"no PyTorch upstream reachable for {acc}; continuing from the pip configuration alone "
                f"({pip.describe()})")
        out.append((acc, found))
    return tuple(out)


def plan_targets(spec: MirrorSpec, view: View, pip: PipSources, targets: Sequence[PipTarget] | None = None,
                 tolerate: frozenset[str] = frozenset()) -> Plan:
    """Pin torch / torchvision / torchaudio per target (``targets``, else the spec's) against
    the screened view; pre-releases only on a channel that publishes them. A target in
    ``tolerate`` (one the mirror holds but this run was not asked for) that cannot be pinned
    lands in ``Plan.skipped`` instead of failing the run; an asked-for one in ``Plan.failed``
    (the run goes on with the others, and fails at its end) unless none could be pinned."""
    prerelease = spec.channel.prerelease
    todo = list(spec.targets() if targets is None else targets)

    def one(t: PipTarget) -> TargetPlan | TorchdepotError:
        try:
            return _plan_target(spec, view, pip, t, prerelease)
        except TorchdepotError as exc:
            return exc

    # Targets pin concurrently: each accelerator's pages are read once (the view caches), in parallel.
    with ThreadPoolExecutor(max_workers=max(1, min(PIN_JOBS, len(todo)))) as pool:
        outcomes = list(pool.map(one, todo))
    plans, skipped, failed = [], [], []
    for t, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, TargetPlan):
            plans.append(outcome)
        elif t.id in tolerate:
            skipped.append((t, str(outcome)))
        elif isinstance(outcome, MetadataMismatchError):
            raise outcome  # on_hash_mismatch: fail is the spec's word for the whole run
        else:
            failed.append((t, outcome))
    if failed and not plans:
        raise failed[0][1]  # nothing to sync: the run fails as it always did
    return Plan(targets=tuple(plans), sources=view.sources, prereleases=prerelease, skipped=tuple(skipped),
                failed=tuple((t, str(exc)) for t, exc in failed))


def _for_target(filename: str, t: PipTarget) -> bool:
    try:
        return matches_target(parse_wheel(filename), t.accelerator, t.python, t.platform)
    except ParseError:
        return False


def _pinned_files_usable(view: View, t: PipTarget, files: list, version: str) -> bool:
    """Read the METADATA of the pinned version's wheels for ``t`` (the resolver would read it
    next); False when one of them was excluded for bytes that are no usable wheel."""
    for f in files:
        try:
            w = view.wheels.get(f.link.url) or parse_wheel(f.filename)  # parsed once per run, not per target
        except ParseError:
            continue
        if w.version == version and matches_target(w, t.accelerator, t.python, t.platform):
            view.metadata(t.accelerator, f.shown)
            if (t.accelerator, f.filename) in view.excluded:
                return False
    return True


def _plan_target(spec: MirrorSpec, view: View, pip: PipSources, t: PipTarget, prerelease: bool) -> TargetPlan:
    """One target's pins (torch first: torchvision / torchaudio pair with its version)."""
    pins: list[str] = []
    torch_version = None
    for project in TORCH_PROJECTS:
        pkg = spec.package(project)
        if pkg is None:
            continue
        constraint = (t.torch or pkg.constraint) if project == "torch" else pkg.constraint
        while True:  # a pinned build whose bytes fail is excluded by the view: pin again without it
            files = [f for f in view.project(t.accelerator, project) if (t.accelerator, f.filename) not in view.excluded]
            links = [f.link for f in files]
            p = pin(links, project, t.accelerator, t.python, t.platform, constraint,
                    prereleases=prerelease, torch_version=torch_version, parsed=view.wheels)
            if p is None or _pinned_files_usable(view, t, files, p.version):
                break
        if p is None:
            want = f" {constraint}" if constraint else ""
            gone = [view.excluded[(t.accelerator, f.filename)] for f in view.project(t.accelerator, project)
                    if (t.accelerator, f.filename) in view.excluded and _for_target(f.filename, t)]
            why = (f"{len(gone)} candidate(s) excluded, none left: {gone[0]}" if gone else
                   no_pin_reason(links, project, t.accelerator, t.python, t.platform, constraint))
            if why:
                raise TorchdepotError(f"{t.id}: no {project}{want} wheel for {t.accelerator}, Python {t.python}, "
                                      f"{t.platform}: {why}")
            raise TorchdepotError(
                f"{t.id}: no {project}{want} wheel for {t.accelerator}, Python {t.python}, {t.platform} in "
                f"{len(links)} links from the reachable sources ({pip.describe()})")
        if project == "torch":
            torch_version = p.version
        pins.append(p.requirement)
    variant = view.sources.variant(t.accelerator)
    providers, warnings = _provider_requires(view, t, variant.label, torch_version) \
        if variant is not None and variant.label and torch_version else ((), ())
    return TargetPlan(target=t, requirements=tuple(pins) + tuple(spec.extra_packages) + providers,
                      variant_url=variant.url if variant else None, warnings=warnings)


def _provider_requires(view: View, t: PipTarget, label: str,
                       torch_version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(requirements, warnings): the variant provider plugins (PEP 817) a variant-aware
    installer runs to select ``label``, mirrored with the target's closure so an air-gapped
    install finds them. A plugin no allowed source carries is said, not fatal: the null variant
    and installers with a built-in provider need none."""
    got = view.variants_json(t.accelerator, "torch", torch_version)
    reqs, warnings = [], []
    for req in got[1].provider_requires(label) if got is not None else ():
        name = Requirement(req).name
        if view.project(t.accelerator, name):
            reqs.append(req)
        else:
            warnings.append(f"warning: {t.id}: variant provider {req} (named by torch {torch_version}'s "
                            "variants.json) is on no allowed source; offline installers that run it will miss "
                            "it (add its index to your pip configuration or allow_hosts)")
    return tuple(reqs), tuple(warnings)
