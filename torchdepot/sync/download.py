"""Fetch: every resolved file into the mirror, verified, with per-file failover.

Input: a :class:`~torchdepot.sync.resolution.Resolution`. Output: the fetcher's
:class:`~torchdepot.fetch.FetchReport`, in which each result's ``url`` is the source the
file actually came from. A file is identified by name + sha256: its candidates are its
screened link, the same path on the spec's other PyTorch upstreams (regional mirrors
share the layout) and, when all of those fail, the same name and hash on the user's
dependency sources (say, the ``nvidia-*`` host is down but the dependency index has them).
"""

from __future__ import annotations

from pathlib import Path

from torchdepot.fetch import Fetcher, FetchItem, FetchReport
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import Client
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.sync.resolution import Resolution
from torchdepot.sync.view import View


def same_path_elsewhere(url: str, upstreams: tuple[str, ...]) -> tuple[str, ...]:
    """The same file on every configured PyTorch upstream (regional mirrors share the layout)."""
    for base in upstreams:
        if url.startswith(base + "/"):
            rest = url[len(base):]
            return tuple(dict.fromkeys([url] + [b + rest for b in upstreams]))
    return (url,)


def fetch_files(out: Path, resolution: Resolution, view: View, spec: MirrorSpec, client: Client,
                policy: HostPolicy, progress: bool | None) -> FetchReport:
    fetcher = Fetcher(out, client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch, progress=progress,
                      fsync=spec.fsync, allowed_hosts=set(policy.hostnames))
    items = {key: FetchItem(key, same_path_elsewhere(vf.link.url, spec.upstreams), vf.link.sha256, vf.link.size)
             for key, vf, _acc in resolution.files}
    report = fetcher.run(list(items.values()))
    retry = []
    for key, vf, acc in resolution.files:
        if key in {r.key for r in report.failed}:
            alternates = tuple(link.url for link in view.alternates(acc, vf.filename))
            if alternates:
                retry.append(FetchItem(key, alternates, vf.link.sha256, vf.link.size))
    if not retry:
        return report
    again = fetcher.run(retry)
    redone = {r.key for r in again.results}
    return FetchReport(results=[r for r in report.results if r.key not in redone] + list(again.results),
                       seconds=report.seconds + again.seconds)
