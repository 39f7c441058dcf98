"""``sync_conda``: the conda half of ``torchdepot mirror``.

spec -> repodata per channel/subdir (cached, failover) -> validated records -> one solve
per target -> the union of solutions downloaded through :class:`~torchdepot.fetch.Fetcher`
-> ``<out>/conda/<channel>/<subdir>/repodata.json`` with exactly those records.

Nothing is written under ``<out>/conda`` until every repodata file parsed, every target
solved and every record chosen has a sha256; repodata is written only after all its
packages are in place. A failure leaves the previous channel as it was.

Immutable publication (:mod:`torchdepot.store.publication`): a channel serves a package
at ``<subdir>/<filename>``, so a conda file cannot move to a new path. A package the
committed manifest lists is therefore never fetched again: if upstream now declares
other bytes under its name, the published bytes are kept and their repodata record
describes them (sha256 and size of what is served, upstream's md5 dropped), and the
summary says so. New package paths are journaled before the fetch; on a re-sync the
manifest is widened with the new packages (and without the old repodata entries) before
``repodata.json`` is rewritten, so a kill at any point leaves every listed file valid.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import IntegrityError, UpstreamError
from torchdepot.fetch import Fetcher, FetchItem, FetchReport, FetchResult
from torchdepot.model.condabuild import CondaRecord
from torchdepot.net.http import Client, HttpConfig
from torchdepot.resolve.conda import Solution, SubdirSource, open_sources, solve_target
from torchdepot.sources.channel import RepodataCache, fetch_repodata
from torchdepot.sources.repodata import RepodataError, SubdirRepodata, load_repodata, require_hashes
from torchdepot.spec.conda import CondaConfig, parse_conda_section
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.channel import write_repodata
from torchdepot.store.fsutil import safe_join, sha256_file
from torchdepot.store.layout import is_conda_index_file

CACHE_DIR = L.CONDA_CACHE_DIR


@dataclass
class CondaSyncResult:
    files: list[mf.FileEntry] = field(default_factory=list)
    targets: list[mf.Target] = field(default_factory=list)
    summary: str = ""
    solutions: list[Solution] = field(default_factory=list)


def channel_path(name: str, subdir: str, filename: str | None = None) -> str:
    return "/".join(p for p in ("conda", name, subdir, filename) if p)


def _load_all(config: CondaConfig, client: Client, cache: RepodataCache) -> tuple[list[SubdirSource], dict]:
    sources: list[SubdirSource] = []
    parsed: dict[tuple[str, str], SubdirRepodata] = {}
    for ch in config.channels:
        for sd in config.all_subdirs:
            got = fetch_repodata(client, ch.name, ch.mirrors, sd, cache)
            parsed[(ch.name, sd)] = load_repodata(got.path, ch.name, sd, where=got.url)
            sources.append(SubdirSource(ch.name, sd, got.base_url, got.path))
    return sources, parsed


Chosen = dict[tuple[str, str, str], CondaRecord]  # (channel, subdir, filename) -> record, over every target


def _config(spec) -> CondaConfig | None:
    config = spec.conda  # validated by the spec loader; hand-built specs may carry the raw mapping
    if config is not None and not isinstance(config, CondaConfig):
        config = parse_conda_section(config, spec)
    return config


@dataclass(frozen=True)
class _Solved:
    """Where each channel/subdir's repodata came from, each target's solution, and the union of
    the records they chose (each stored once)."""

    sources: list[SubdirSource]
    solutions: list[Solution]
    chosen: Chosen


def _solve(config: CondaConfig, client: Client, cache: RepodataCache) -> _Solved:
    sources, parsed = _load_all(config, client, cache)
    sparse = open_sources(sources)
    solutions = [solve_target(list(config.specs), sources, t, sparse) for t in config.targets]
    chosen: Chosen = {}
    for sol in solutions:
        for r in sol.records:
            ch, sd, fname = sol.origin[str(r.url)]
            rec = parsed[(ch, sd)].records.get(fname)
            if rec is None:
                raise RepodataError(f"channel {ch!r} {sd}: solver chose {fname!r}, which its repodata lacks")
            require_hashes(parsed[(ch, sd)].where, rec)
            chosen[(ch, sd, fname)] = rec
    return _Solved(sources=sources, solutions=solutions, chosen=chosen)


def _fetch_items(config: CondaConfig, solved: _Solved) -> list[FetchItem]:
    # The mirror that served a channel's repodata is alive: try it first for its packages.
    served = {src.channel: src.base_url for src in solved.sources}
    mirrors = {c.name: tuple(dict.fromkeys((served[c.name], *c.mirrors))) for c in config.channels}
    return [FetchItem(key=channel_path(ch, sd, fn), urls=tuple(f"{m}/{sd}/{fn}" for m in mirrors[ch]), sha256=rec.sha256, size=rec.size)
            for (ch, sd, fn), rec in sorted(solved.chosen.items())]


def _dry_run(solved: _Solved, items: list[FetchItem]) -> CondaSyncResult:
    size = sum(r.size or 0 for r in solved.chosen.values())
    return CondaSyncResult(summary=f"dry run: {len(solved.solutions)} targets solved, {len(items)} packages "
                           f"({size / 1e6:.1f} MB) would be mirrored", solutions=solved.solutions)


@dataclass(frozen=True)
class _Fetched:
    """The fetch report (packages kept as published listed as present) and those kept packages:
    published under their name with other bytes than upstream now declares."""

    report: FetchReport
    kept: dict[str, mf.FileEntry]


def _fetch(out: Path, spec, client: Client, items: list[FetchItem], live: mf.Manifest | None, *, jobs: int,
           on_hash_mismatch: str, progress: bool | None) -> _Fetched:
    """New package paths journaled, then fetched; any failure stops the run (channel unchanged)."""
    listed = live.by_path() if live is not None else {}
    kept = {it.key: listed[it.key] for it in items
            if it.key in listed and not pub.Claim(it.sha256, it.size).agrees(listed[it.key].sha256,
                                                                           listed[it.key].size)}
    pub.record(out, [it.key for it in items if it.key not in listed])  # before any byte is written
    report = Fetcher(out, client, jobs=jobs, on_hash_mismatch=on_hash_mismatch, progress=progress,
                     fsync=getattr(spec, "fsync", False)).run([it for it in items if it.key not in kept])
    # Published under this name with other bytes: never replaced in place (the name is the path).
    report.results += [FetchResult(key=key, status="present", sha256=e.sha256, size=e.size, url=e.url, upstream_sha256=e.upstream_sha256)
                       for key, e in kept.items()]
    if report.failed:
        first = report.failed[0]
        cls = IntegrityError if first.hash_mismatch else UpstreamError
        raise cls(f"conda: {len(report.failed)} of {len(items)} packages failed, previous channel kept; "
                  f"first: {first.key}: {first.error}")
    return _Fetched(report=report, kept=kept)


def _package_entries(config: CondaConfig, chosen: Chosen, fetched: _Fetched,
                     items: list[FetchItem]) -> tuple[list[mf.FileEntry], dict[tuple[str, str], dict[str, dict]]]:
    """The manifest entry of each package, and per channel/subdir the repodata records to write."""
    results = {r.key: r for r in fetched.report.results}
    files: list[mf.FileEntry] = []
    per_subdir: dict[tuple[str, str], dict[str, dict]] = {(c.name, sd): {} for c in config.channels
                                                         for sd in config.all_subdirs}
    for (ch, sd, fn), rec in sorted(chosen.items()):
        key = channel_path(ch, sd, fn)
        res = results[key]
        raw = rec.raw_dict()
        if res.hash_mismatch or key in fetched.kept:
            # Accepted under --on-hash-mismatch warn: describe the bytes we serve, not upstream's claim.
            raw = {k: v for k, v in raw.items() if k != "md5"}
            raw.update(sha256=res.sha256, size=res.size)
        per_subdir[(ch, sd)][fn] = raw
        files.append(mf.FileEntry(path=key, sha256=res.sha256 or "", size=res.size, kind="conda", project=rec.name,
                                  version=rec.version, url=res.url or items[0].urls[0],
                                  upstream_sha256=rec.sha256, hash_mismatch=res.hash_mismatch))
    return files, per_subdir


def _publish(out: Path, config: CondaConfig, chosen: Chosen, fetched: _Fetched, items: list[FetchItem],
             live: mf.Manifest | None) -> list[mf.FileEntry]:
    """The manifest widened first (re-sync), then each ``repodata.json``; -> every file's entry."""
    files, per_subdir = _package_entries(config, chosen, fetched, items)
    if live is not None:  # list the new packages, unlist the repodata about to change, then write it
        subdirs = tuple(channel_path(ch, sd) + "/" for ch, sd in per_subdir)
        index_files = [e.path for e in live.files
                       if e.path.startswith(subdirs) and is_conda_index_file(e.path.rsplit("/", 1)[-1])]
        mf.save(out, pub.widened(mf.load(out), files, drop=index_files))
    for (ch, sd), records in sorted(per_subdir.items()):
        channel_dir = safe_join(out, "conda", ch)
        for p in write_repodata(channel_dir, sd, records):
            digest, size = sha256_file(p)
            files.append(mf.FileEntry(path=channel_path(ch, sd, p.name), sha256=digest, size=size, kind="conda"))
    return files


def _targets(config: CondaConfig, solutions: list[Solution]) -> list[mf.Target]:
    targets = []
    primary = config.channels[0].name
    for sol in solutions:
        t = sol.target
        pkgs = tuple(mf.TargetPackage(str(r.name.normalized), str(r.version), channel_path(*sol.origin[str(r.url)]),
                                      build=str(r.build)) for r in sol.records)
        targets.append(mf.Target(t.id, "conda", t.accelerator.name, t.python, t.platform, pkgs,
                                 channel=L.conda_channel(primary), subdir=t.subdir))
    return targets


def _summary(config: CondaConfig, targets: list[mf.Target], items: list[FetchItem], fetched: _Fetched) -> str:
    report, kept = fetched.report, fetched.kept
    if kept:
        summary_kept = (f"; {len(kept)} published package(s) kept although upstream now declares other bytes "
                        f"under the same name (first: {sorted(kept)[0]})")
    else:
        summary_kept = ""
    return (f"{len(targets)} targets solved; {len(items)} packages ({len(report.downloaded)} downloaded, "
            f"{len(report.present)} already present) in {len(config.channels)} channel(s); "
            f"{report.fetched_bytes / 1e6:.1f} MB fetched"
            + (f"; {len(report.mismatches)} upstream hash mismatches accepted" if report.mismatches else "")
            + summary_kept)


def sync_conda(spec, out: Path, *, client: Client | None = None, jobs: int = 4, on_hash_mismatch: str = "fail",
               dry_run: bool = False, progress: bool | None = None) -> CondaSyncResult:
    """Solve every conda target, fetch the union of the solutions, publish the channels."""
    config = _config(spec)
    if config is None:
        return CondaSyncResult(summary="no conda section")
    out = Path(out)
    own_client = client is None
    client = client or Client(HttpConfig())
    tmp = tempfile.TemporaryDirectory(prefix="td-conda-") if dry_run else None
    try:
        solved = _solve(config, client, RepodataCache(Path(tmp.name) if tmp else out / CACHE_DIR))
        items = _fetch_items(config, solved)
        if dry_run:
            return _dry_run(solved, items)
        live = pub.live_manifest(out)
        fetched = _fetch(out, spec, client, items, live, jobs=jobs, on_hash_mismatch=on_hash_mismatch,
                         progress=progress)
        files = _publish(out, config, solved.chosen, fetched, items, live)
        targets = _targets(config, solved.solutions)
        return CondaSyncResult(files, targets, _summary(config, targets, items, fetched), solved.solutions)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if own_client:
            client.close()
