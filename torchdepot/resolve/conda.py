"""Solve one target's closure with ``rattler.solve``, never picking the wrong variant.

A target (accelerator x python x subdir) is solved as if on that machine: its virtual
packages are set explicitly (``__cuda=X.Y`` only for CUDA targets, ``__glibc``,
``__linux``/``__win``/``__osx``, ``__unix``), so a CUDA target solves on a machine
without a GPU and for another OS.

CPU and CUDA builds can tie on version and build number (DOMAIN.md §5; conda#14761,
pixi#1544), so the solver alone may pick either. Three guards:
1. records whose build string states another accelerator or Python are hidden from the
   solver (:func:`keep_record`);
2. torch-family specs are pinned by a build-string glob (a ``MatchSpec`` constraint);
3. the solution is checked: every torch-family record must state the target's
   accelerator (:func:`check_solution`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import rattler
from rattler import GenericVirtualPackage, MatchSpec, PackageName, Version

from torchdepot.errors import ParseError, TorchdepotError, one_line
from torchdepot.model.accel import Accelerator
from torchdepot.model.condabuild import parse_build_string
from torchdepot.sources.repodata import RepodataError
from torchdepot.spec.conda import CondaTarget

# Packages that exist once per accelerator and must match the target's exactly.
TORCH_FAMILY = ("pytorch", "torchvision", "torchaudio", "pytorch-gpu", "pytorch-cpu")
GLIBC = "2.28"  # manylinux_2_28: what current PyTorch builds require
OSX = "11.0"


class SolveError(TorchdepotError):
    """No closure for a target, or one that would install the wrong variant."""


def platform_glibc(platform: str) -> str:
    """The glibc a target platform promises (``linux-x86_64`` -> manylinux_2_28 -> ``2.28``)."""
    from torchdepot.model.platforms import target_platform

    try:
        triple = target_platform(platform).uv_platform
    except ParseError:
        return GLIBC
    m = re.search(r"manylinux_(\d+)_(\d+)", triple)
    return f"{m.group(1)}.{m.group(2)}" if m else GLIBC


def virtual_packages(target: CondaTarget, glibc: str | None = None) -> list[GenericVirtualPackage]:
    """The virtual packages a machine of this target has, set explicitly (never detected):
    ``__cuda`` from the accelerator (CPU: none; cu126: 12.6), ``__glibc`` from the platform,
    ``__archspec`` from the subdir, and the OS's own."""
    glibc = glibc or platform_glibc(target.platform)
    os_ = target.subdir.split("-", 1)[0]
    vp: list[tuple[str, str, str]] = []
    if os_ == "linux":
        vp += [("__linux", "5.10", "0"), ("__glibc", glibc, "0"), ("__unix", "0", "0")]
    elif os_ == "win":
        vp += [("__win", "0", "0")]
    elif os_ == "osx":
        vp += [("__osx", OSX, "0"), ("__unix", "0", "0")]
    arch = target.subdir.split("-", 1)[1] if "-" in target.subdir else ""
    archspec = {"64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}.get(arch)
    if archspec:
        vp.append(("__archspec", "1", archspec))
    if target.accelerator.kind == "cuda":
        vp.append(("__cuda", target.accelerator.cuda_version or "0", "0"))
    return [GenericVirtualPackage(PackageName(n), Version(v), rattler.BuildString(b)) for n, v, b in vp]


def _stated(build: str):
    try:
        return parse_build_string(build)
    except ParseError:
        return None


def keep_record(build: str, target: CondaTarget) -> bool:
    """False when the build string states an accelerator or Python other than the target's."""
    parsed = _stated(build)
    if parsed is None:
        return True
    if parsed.accelerator is not None and parsed.accelerator.name != target.accelerator.name:
        return False
    return parsed.python is None or parsed.python == target.python


def build_globs(acc: Accelerator) -> tuple[str, ...]:
    """Build-string globs that state ``acc`` on the channels PyTorch ships on."""
    if acc.kind == "cpu":
        return ("*cpu*",)
    if acc.kind == "cuda":
        x, y = acc.version[0], acc.version[1] if len(acc.version) > 1 else 0
        return (f"*cuda{x}.{y}*", f"*cuda{x}{y}*", f"*cu{x}{y}*")
    return (f"*{acc.name}*",)


@dataclass(frozen=True)
class SubdirSource:
    """One channel's repodata for one subdir, as the solver will see it."""

    channel: str  # our channel name
    subdir: str
    base_url: str  # records' URLs are <base_url>/<subdir>/<file>
    path: Path  # repodata.json on disk
    where: str = ""  # the URL it was fetched from, for messages
    packages_url: str = ""  # where its packages are when not <base_url>/<subdir>/ (CEP-16 base_url)


class _FilteredSource:
    """A ``rattler.RepoDataSource`` hiding records that state the wrong variant."""

    def __init__(self, sparse: dict[str, rattler.SparseRepoData], target: CondaTarget, where: dict[str, str]):
        self.sparse = sparse
        self.target = target
        self.where = where  # subdir -> URL, for messages
        self.seen: dict[str, list[str]] = {}  # name -> kept builds (for pins)
        self.errors: list[str] = []  # records py-rattler refused (bad name, bad JSON), one line each

    async def fetch_package_records(self, platform, name):
        sp = self.sparse.get(str(platform))
        if sp is None:
            return []
        try:
            loaded = sp.load_records(name)
        except Exception as exc:  # rattler's InvalidPackageNameError, ParseError...: upstream's fault
            self.errors.append(f"{self.where.get(str(platform), platform)}: unsafe or invalid record for "
                               f"{str(name)[:100]!r}: {one_line(exc, 300)}")
            raise
        recs = [r for r in loaded if keep_record(str(r.build), self.target)]
        self.seen.setdefault(str(name.normalized if hasattr(name, "normalized") else name), []).extend(
            str(r.build) for r in recs)
        return recs

    def package_names(self, platform):
        sp = self.sparse.get(str(platform))
        return sp.package_names() if sp is not None else []


@dataclass(frozen=True)
class Solution:
    target: CondaTarget
    records: tuple  # rattler.RepoDataRecord, sorted by name
    origin: dict  # record url -> (channel name, subdir, filename)


def _pins(specs: list[str], sources: list[SubdirSource], sparse_by_channel: dict, target: CondaTarget) -> list[MatchSpec]:
    """A build-glob constraint per torch-family package, chosen so every kept build matches."""
    out = []
    names = {str(MatchSpec(s).name.normalized) for s in specs} | set(TORCH_FAMILY)
    for name in sorted(names & set(TORCH_FAMILY)):
        builds = []
        for src in sources:
            sp = sparse_by_channel[src.channel].get(src.subdir)
            if sp is not None and name in sp.package_names():
                builds += [str(r.build) for r in sp.load_records(PackageName(name)) if keep_record(str(r.build), target)]
        if not builds:
            continue
        for glob in build_globs(target.accelerator):
            if all(fnmatch.fnmatchcase(b, glob) for b in builds):
                out.append(MatchSpec(f"{name} * {glob}"))
                break
    return out


def check_solution(records, target: CondaTarget) -> None:
    for r in records:
        name = str(r.name.normalized)
        if name not in TORCH_FAMILY:
            continue
        parsed = _stated(str(r.build))
        acc = parsed.accelerator if parsed else None
        if acc is None or acc.name != target.accelerator.name:
            raise SolveError(f"target {target.id}: solver picked {name} {r.version} {r.build}, "
                             f"which is {acc.name if acc else 'an unlabelled build'}, not {target.accelerator.name}")
        if parsed.python is not None and parsed.python != target.python:
            raise SolveError(f"target {target.id}: solver picked {name} {r.build} for Python {parsed.python}")


def open_sources(sources: list[SubdirSource]) -> dict[str, dict[str, rattler.SparseRepoData]]:
    """channel -> subdir -> SparseRepoData (records load lazily, per package name; the file is
    memory-mapped and indexed by name without building a Python object per record)."""
    out: dict[str, dict[str, rattler.SparseRepoData]] = {}
    for src in sources:
        chan = rattler.Channel(src.base_url)
        try:
            out.setdefault(src.channel, {})[src.subdir] = rattler.SparseRepoData(chan, src.subdir, str(src.path))
        except Exception as exc:  # truncated or malformed JSON: serde's message names line and column
            raise RepodataError(f"{src.where or src.path}: not valid repodata JSON ({one_line(exc, 300)}; "
                                "truncated download?)") from None
    return out


def solve_target(specs: list[str], sources: list[SubdirSource], target: CondaTarget,
                 sparse: dict[str, dict[str, rattler.SparseRepoData]] | None = None) -> Solution:
    """Solve ``specs`` for ``target`` over ``sources`` (channel order = priority)."""
    sparse = sparse if sparse is not None else open_sources(sources)
    channels = list(dict.fromkeys(s.channel for s in sources))
    where = {c: {s.subdir: s.where or str(s.path) for s in sources if s.channel == c} for c in channels}
    filtered = [_FilteredSource(sparse[c], target, where[c]) for c in channels]
    match_specs = [MatchSpec(s) for s in specs]
    has_python = any("python" in sp.package_names() for c in channels for sp in sparse[c].values())
    if has_python and not any(str(m.name.normalized) == "python" for m in match_specs):
        match_specs.append(MatchSpec(f"python {target.python}.*"))
    constraints = _pins(specs, sources, sparse, target)
    try:
        records = asyncio.run(rattler.solve(
            # target.subdir is a validated conda subdir; rattler types the names as a Literal
            filtered, match_specs, platforms=[target.subdir, "noarch"],  # type: ignore[list-item]
            virtual_packages=virtual_packages(target), constraints=constraints,
            channel_priority=rattler.ChannelPriority.Strict, timestamp_policy="allow-missing",
        ))
    except Exception as exc:  # rattler.exceptions.SolverError and friends
        bad = [e for f in filtered for e in f.errors]
        if bad:
            raise RepodataError(bad[0]) from None
        first = one_line(exc, 400)
        raise SolveError(f"target {target.id} ({target.subdir}): no solution for {', '.join(specs)}: {first}") from None
    check_solution(records, target)
    origin = {}
    by_base = {f"{s.base_url.rstrip('/')}/{s.subdir}/": (s.channel, s.subdir) for s in sources}
    for r in records:
        url = str(r.url)
        base, _, fname = url.rpartition("/")
        key = by_base.get(base + "/")
        if key is None:
            raise SolveError(f"target {target.id}: solver returned {url}, which is in no configured channel")
        origin[url] = (key[0], key[1], fname)
    return Solution(target, tuple(sorted(records, key=lambda r: str(r.name.normalized))), origin)
