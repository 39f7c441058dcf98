"""``sync_conda``: the conda half of ``torchdepot mirror``.

spec -> repodata per channel/subdir (CEP-16 shards of the closure, or repodata.json(.zst);
bounded, cached, failover) read lazily by py-rattler -> one solve per target -> the chosen
records validated -> the union of solutions downloaded through :class:`~torchdepot.fetch.Fetcher`
-> ``<out>/conda/<channel>/<subdir>/`` indexed by rattler (repodata.json, .zst, shard index)
with exactly those records, plus upstream's channeldata.json / run_exports.json subset.

Two phases, so that pip and conda commit together (``sync/pip.py``): :func:`prepare_conda`
(everything that can fail on upstream's account: repodata, solves, downloads) runs before
the pip side publishes anything; :func:`publish_conda` (the index) after. Nothing is indexed
under ``<out>/conda`` until every target solved and every record chosen has a sha256; repodata
is written only after all its packages are in place. A failure leaves the previous channel
as it was.

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

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import IntegrityError, UpstreamError
from torchdepot.fetch import Fetcher, FetchItem, FetchReport, FetchResult
from torchdepot.model.condabuild import CondaRecord
from torchdepot.net.http import Client, HttpConfig
from torchdepot.resolve.conda import Solution, SubdirSource, open_sources, solve_target
from torchdepot.sources.channel import (
    SHARD_INDEX,
    RepodataCache,
    RepodataRefused,
    fetch_optional,
    fetch_repodata,
    fetch_sharded,
)
from torchdepot.sources.repodata import chosen_record, require_hashes
from torchdepot.spec.conda import CondaConfig, parse_conda_section
from torchdepot.spec.mirror import pip_side
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.channel import index_channel, subset_channeldata, subset_run_exports
from torchdepot.store.fsutil import atomic_write_bytes, safe_join, sha256_file
from torchdepot.store.layout import STATE_DIR, is_conda_index_file

CACHE_DIR = L.CONDA_CACHE_DIR


@dataclass
class CondaSyncResult:
    files: list[mf.FileEntry] = field(default_factory=list)
    targets: list[mf.Target] = field(default_factory=list)
    summary: str = ""
    solutions: list[Solution] = field(default_factory=list)


def channel_path(name: str, subdir: str, filename: str | None = None) -> str:
    return "/".join(p for p in ("conda", name, subdir, filename) if p)


def _load_all(config: CondaConfig, client: Client, cache: RepodataCache) -> list[SubdirSource]:
    """Each channel/subdir's repodata fetched (bounded, cached); its records stay on disk,
    read lazily per package name by py-rattler, never parsed one by one in Python."""
    sources: list[SubdirSource] = []
    for ch in config.channels:
        specs = tuple(dict.fromkeys((*config.specs, "python")))
        sharded = None
        for mirror in ch.mirrors:  # CEP-16: only the closure's shards are fetched
            try:
                paths = fetch_sharded(client, ch.name, mirror, config.all_subdirs, specs, cache)
            except RepodataRefused:
                raise
            except UpstreamError:
                paths = None  # this mirror is down: the next one, or the full repodata below
            if paths is not None:
                sharded = (mirror.rstrip("/"), paths)
                break
        if sharded is not None:
            base, paths = sharded
            sources += [SubdirSource(ch.name, sd, base, paths[sd].path, where=f"{base}/{sd}/{SHARD_INDEX}",
                                     packages_url=paths[sd].packages_url) for sd in config.all_subdirs]
            continue
        for sd in config.all_subdirs:
            got = fetch_repodata(client, ch.name, ch.mirrors, sd, cache)
            sources.append(SubdirSource(ch.name, sd, got.base_url, got.path, where=got.url))
    return sources


Chosen = dict[tuple[str, str, str], CondaRecord]  # (channel, subdir, filename) -> record, over every target


def _config(spec) -> CondaConfig | None:
    config = spec.conda  # validated by the spec loader; hand-built specs may carry the raw mapping
    if config is not None and not isinstance(config, CondaConfig):
        config = parse_conda_section(config, pip_side(spec))
    return config


@dataclass(frozen=True)
class _Solved:
    """Where each channel/subdir's repodata came from, each target's solution, and the union of
    the records they chose (each stored once)."""

    sources: list[SubdirSource]
    solutions: list[Solution]
    chosen: Chosen


def _solve(config: CondaConfig, client: Client, cache: RepodataCache) -> _Solved:
    sources = _load_all(config, client, cache)
    sparse = open_sources(sources)
    solutions = [solve_target(list(config.specs), sources, t, sparse) for t in config.targets]
    where = {(s.channel, s.subdir): s.where for s in sources}
    chosen: Chosen = {}
    for sol in solutions:
        for r in sol.records:
            ch, sd, fname = sol.origin[str(r.url)]
            if (ch, sd, fname) in chosen:
                continue
            rec = chosen_record(ch, sd, fname, r.to_json(), where[(ch, sd)])
            require_hashes(where[(ch, sd)], rec)
            chosen[(ch, sd, fname)] = rec
    return _Solved(sources=sources, solutions=solutions, chosen=chosen)


def _fetch_items(config: CondaConfig, solved: _Solved) -> list[FetchItem]:
    # The mirror that served a channel's repodata is alive: try it first for its packages.
    served = {src.channel: src.base_url for src in solved.sources}
    mirrors = {c.name: tuple(dict.fromkeys((served[c.name], *c.mirrors))) for c in config.channels}
    # A shard index may keep its packages elsewhere in the channel (CEP-16 base_url): asked first.
    packages = {(src.channel, src.subdir): src.packages_url for src in solved.sources if src.packages_url}
    return [FetchItem(key=channel_path(ch, sd, fn), sha256=rec.sha256, size=rec.size, urls=tuple(dict.fromkeys(
        ([packages[ch, sd] + fn] if (ch, sd) in packages else []) + [f"{m}/{sd}/{fn}" for m in mirrors[ch]])))
            for (ch, sd, fn), rec in sorted(solved.chosen.items())]


def _channel_metadata(config: CondaConfig, solved: _Solved, client: Client, cache: Path):
    """Upstream's ``channeldata.json`` and each subdir's ``run_exports.json``, where it has them,
    from the mirror that served the channel's repodata."""
    served = {src.channel: src.base_url.rstrip("/") for src in solved.sources}
    run_exports, channeldata = [], []
    for ch in config.channels:
        base = served.get(ch.name)
        if base is None:
            continue
        d = safe_join(cache, ch.name)
        got = fetch_optional(client, f"{base}/channeldata.json", d / "channeldata.json")
        if got is not None:
            channeldata.append((ch.name, got))
        for sd in config.all_subdirs:
            got = fetch_optional(client, f"{base}/{sd}/run_exports.json", safe_join(d, sd) / "run_exports.json")
            if got is not None:
                run_exports.append(((ch.name, sd), got))
    return tuple(run_exports), tuple(channeldata)


def _publish_metadata(out: Path, prepared: CondaPrepared) -> list[mf.FileEntry]:
    """The mirrored subset of upstream's run_exports.json / channeldata.json, next to the repodata."""
    assert prepared.solved is not None
    chosen = prepared.solved.chosen
    files: list[mf.FileEntry] = []
    for (ch, sd), path in prepared.run_exports:
        data = subset_run_exports(path, {fn for (c, s, fn) in chosen if (c, s) == (ch, sd)})
        if data is not None:
            target = safe_join(out, "conda", ch, sd, "run_exports.json")
            atomic_write_bytes(target, data)
            digest, size = sha256_file(target)
            files.append(mf.FileEntry(channel_path(ch, sd, "run_exports.json"), digest, size, "conda"))
    for ch, path in prepared.channeldata:
        names = {rec.name for (c, _s, _f), rec in chosen.items() if c == ch}
        subdirs = {s for (c, s, _f) in chosen if c == ch} | {"noarch"}
        data = subset_channeldata(path, names, subdirs)
        if data is not None:
            target = safe_join(out, "conda", ch, "channeldata.json")
            atomic_write_bytes(target, data)
            digest, size = sha256_file(target)
            files.append(mf.FileEntry(f"conda/{ch}/channeldata.json", digest, size, "conda"))
    return files


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
    for ch in sorted({ch for ch, _ in per_subdir}):
        channel_dir = safe_join(out, "conda", ch)
        of_channel = {sd: records for (c, sd), records in per_subdir.items() if c == ch}
        for index in index_channel(channel_dir, of_channel, out / STATE_DIR):
            for rel in index.files:
                digest, size = sha256_file(channel_dir / rel)
                files.append(mf.FileEntry(path=f"{L.conda_channel(ch)}/{rel}", sha256=digest, size=size, kind="conda"))
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


@dataclass(frozen=True)
class CondaPrepared:
    """The conda side solved and its packages fetched (new paths journaled, no index written):
    what :func:`publish_conda` commits. A run with nothing to publish carries only a summary."""

    config: CondaConfig | None
    solved: _Solved | None = None
    items: tuple[FetchItem, ...] = ()
    fetched: _Fetched | None = None
    live: mf.Manifest | None = None
    summary: str = ""
    # upstream's optional channel files, fetched (bounded) into the cache: (channel, subdir or "") -> path
    run_exports: tuple[tuple[tuple[str, str], Path], ...] = ()
    channeldata: tuple[tuple[str, Path], ...] = ()


def prepare_conda(spec, out: Path, *, client: Client | None = None, jobs: int = 4, on_hash_mismatch: str = "fail",
                  dry_run: bool = False, progress: bool | None = None,
                  say: Callable[[str], None] | None = None) -> CondaPrepared:
    """Repodata, one solve per target and the packages' downloads: every step that can fail on
    upstream's account. Runs before the pip side publishes anything (one transaction: a conda
    failure leaves the live mirror as it was); nothing under ``<out>/conda`` is indexed yet.
    ``say`` gets the legacy-channel notice (once per run, per legacy channel)."""
    config = _config(spec)
    if config is None:
        return CondaPrepared(config=None, summary="no conda section")
    for ch in config.channels:
        if ch.legacy_pytorch:
            (say or _stderr)(ch.legacy_notice())
    out = Path(out)
    own_client = client is None
    client = client or Client(HttpConfig())
    tmp = tempfile.TemporaryDirectory(prefix="td-conda-") if dry_run else None
    try:
        solved = _solve(config, client, RepodataCache(Path(tmp.name) if tmp else out / CACHE_DIR))
        items = _fetch_items(config, solved)
        if dry_run:
            return CondaPrepared(config=config, solved=solved, items=tuple(items),
                                 summary=_dry_run(solved, items).summary)
        live = pub.live_manifest(out)
        fetched = _fetch(out, spec, client, items, live, jobs=jobs, on_hash_mismatch=on_hash_mismatch,
                         progress=progress)
        run_exports, channeldata = _channel_metadata(config, solved, client, out / CACHE_DIR)
        return CondaPrepared(config=config, solved=solved, items=tuple(items), fetched=fetched, live=live,
                             run_exports=run_exports, channeldata=channeldata)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if own_client:
            client.close()


def publish_conda(prepared: CondaPrepared, out: Path) -> CondaSyncResult:
    """Index the prepared packages (repodata, .zst, shards) and describe them for the manifest."""
    if prepared.config is None or prepared.solved is None:
        return CondaSyncResult(summary=prepared.summary)
    if prepared.fetched is None:  # a dry run
        return CondaSyncResult(summary=prepared.summary, solutions=prepared.solved.solutions)
    config, solved, items, fetched = prepared.config, prepared.solved, list(prepared.items), prepared.fetched
    files = _publish(Path(out), config, solved.chosen, fetched, items, prepared.live)
    files += _publish_metadata(Path(out), prepared)
    targets = _targets(config, solved.solutions)
    return CondaSyncResult(files, targets, _summary(config, targets, items, fetched), solved.solutions)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync_conda(spec, out: Path, *, client: Client | None = None, jobs: int = 4, on_hash_mismatch: str = "fail",
               dry_run: bool = False, progress: bool | None = None,
               say: Callable[[str], None] | None = None) -> CondaSyncResult:
    """Solve every conda target, fetch the union of the solutions, publish the channels."""
    prepared = prepare_conda(spec, out, client=client, jobs=jobs, on_hash_mismatch=on_hash_mismatch,
                             dry_run=dry_run, progress=progress, say=say)
    return publish_conda(prepared, out)
