"""Fetch: every resolved file into the mirror, verified, with per-file failover.

Input: a :class:`~torchdepot.sync.resolution.Resolution`. Output: the fetcher's
:class:`~torchdepot.fetch.FetchReport`, in which each result's ``url`` is the source the
file actually came from. A file is identified by name + sha256: its candidates are its
screened link, the same path on the spec's other PyTorch upstreams (regional mirrors
share the layout) and, when all of those fail, the same name and hash on the user's
dependency sources (say, the ``nvidia-*`` host is down but the dependency index has them).

Immutable publication (:mod:`torchdepot.store.publication`): before anything is fetched,
each file gets its stored path (its usual ``packages/<project>/<file>``, or a new
``packages/<project>/<digest16>/<file>`` when the committed manifest has other bytes under
that name), and every path this run may write, or supersedes, is journaled. The report's
:attr:`PipFetchReport.paths` maps each resolution key to its stored path; the results
are keyed by stored path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.fetch import (
    DEFAULT_CONNECTIONS,
    DEFAULT_CONNECTIONS_PER_HOST,
    Fetcher,
    FetchItem,
    FetchReport,
)
from torchdepot.fetch.progress import ProgressCallback
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import Client
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import safe_join
from torchdepot.sync.resolution import Resolution
from torchdepot.sync.view import View


def same_path_elsewhere(url: str, upstreams: tuple[str, ...]) -> tuple[str, ...]:
    """The same file on every configured PyTorch upstream (regional mirrors share the layout)."""
    for base in upstreams:
        if url.startswith(base + "/"):
            rest = url[len(base):]
            return tuple(dict.fromkeys([url] + [b + rest for b in upstreams]))
    return (url,)


@dataclass
class PipFetchReport(FetchReport):
    """The fetch report plus where each resolution key is stored (results are keyed by that)."""
    paths: dict[str, str] = field(default_factory=dict)

    def stored(self, key: str) -> str:
        return self.paths.get(key, key)


def stored_paths(out: Path, resolution: Resolution) -> dict[str, str]:
    """Resolution key -> stored path (immutable publication), journaled before any write."""
    live = pub.live_manifest(out)
    listed = live.by_path() if live is not None else {}
    journal = pub.load_journal(out)
    retired = pub.load_retired(out)
    paths: dict[str, str] = {}
    for key, vf, _acc in resolution.files:
        if key not in paths:
            paths[key] = pub.choose_path(key, pub.Claim(vf.link.sha256, vf.link.size), listed, journal,
                                         lambda rel: safe_join(out, rel).exists(), retired)
    touched: set[str] = set()
    superseded: dict[str, str] = {}
    for key, path in paths.items():
        if path not in listed:
            touched.update((path, path + ".metadata"))  # staged by this run
        if key != path:
            touched.update((key, key + ".metadata"))  # superseded: removed once no manifest lists it
        superseded.update(pub.superseded(key, path, listed))  # those URLs served these bytes: never others
    pub.retire(out, superseded)
    pub.record(out, touched)
    return paths


def make_fetcher(out: Path, spec: MirrorSpec, client: Client, policy: HostPolicy, progress: bool | None,
                 on_progress: ProgressCallback | None = None) -> Fetcher:
    """The run's one downloader configuration (jobs, hash policy, host and socket caps from the spec);
    ``on_progress`` receives progress events (``mirror --json`` prints them as JSON lines)."""
    return Fetcher(out, client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch, progress=progress,
                   on_progress=on_progress, fsync=spec.fsync, allowed_hosts=set(policy.hostnames),
                   connections=spec.connections or DEFAULT_CONNECTIONS,
                   connections_per_host=spec.connections_per_host or DEFAULT_CONNECTIONS_PER_HOST)


def fetch_files(out: Path, resolution: Resolution, view: View, spec: MirrorSpec, client: Client,
                policy: HostPolicy, progress: bool | None, fetcher: Fetcher | None = None) -> PipFetchReport:
    """``fetcher``: one already started by :func:`make_fetcher` with files submitted early (pinned
    before the closure resolved); a file submitted again joins its download in flight."""
    paths = stored_paths(out, resolution)
    fetcher = fetcher or make_fetcher(out, spec, client, policy, progress)
    items = {key: FetchItem(paths[key], same_path_elsewhere(vf.link.url, spec.upstreams), vf.link.sha256,
                            vf.link.size)
             for key, vf, _acc in resolution.files}
    report = fetcher.run(list(items.values()))
    retry = []
    failed = {r.key for r in report.failed}
    for key, vf, acc in resolution.files:
        if paths[key] in failed:
            alternates = tuple(link.url for link in view.alternates(acc, vf.filename))
            if alternates:
                retry.append(FetchItem(paths[key], alternates, vf.link.sha256, vf.link.size))
    if not retry:
        return PipFetchReport(results=report.results, seconds=report.seconds, paths=paths)
    again = fetcher.run(retry)
    redone = {r.key for r in again.results}
    return PipFetchReport(results=[r for r in report.results if r.key not in redone] + list(again.results),
                          seconds=report.seconds + again.seconds, paths=paths)


def check_fetched(report: FetchReport, spec: MirrorSpec, say: Callable[[str], None]) -> None:
    """Each accepted upstream hash mismatch said; any failed file stops the run (index unchanged)."""
    if spec.on_hash_mismatch == "warn":
        for r in report.mismatches:
            say(f"warning: {r.key}: upstream sha256 {r.upstream_sha256} but the bytes hash to {r.sha256} "
                "(accepted: on_hash_mismatch warn; recorded in manifest.json)")
    if report.failed:
        first = report.failed[0]
        raise TorchdepotError(f"{len(report.failed)} of {len(report.results)} files failed (index not updated); "
                              f"first: {first.key}: {first.error}")
