"""What one pip run opens and must close: where it reads from (:class:`Edge`), and what it
holds (:class:`Held`: HTTP clients, the scratch folder of a dry run, the view, early downloads).

:meth:`Held.close` runs however the run ends (a ``finally``): it says the screen's refusal
line, lets early downloads finish, records the request counts and closes what the run opened.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchdepot.errors import TorchdepotError
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import Client, HttpConfig
from torchdepot.net.pipconfig import (
    ConfigSnapshot,
    PendingRead,
    PipSources,
    kept_snapshot,
    pip_default_index,
    pip_file_host,
    read_pip_config,
    read_pip_config_kept,
)
from torchdepot.sources.upstream import UpstreamReader
from torchdepot.spec.mirror import MirrorSpec, PipTarget
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import atomic_write_bytes, safe_join
from torchdepot.sync.locked import LockedEnv
from torchdepot.sync.plan import dependency_sources, host_policy, locate_variants
from torchdepot.sync.result import MirrorResult
from torchdepot.sync.view import View, ViewSources

if TYPE_CHECKING:
    from torchdepot.fetch import Fetcher

Echo = Callable[[str], None]
# Upstream pages fail fast: an unreachable PyTorch index must not stall the run.
PROBE_CONFIG = HttpConfig(connect_timeout=5.0, read_timeout=30.0, retries=1, backoff=0.2, max_backoff=1.0)


@dataclass(frozen=True)
class Edge:
    """Where a run reads from: the user's pip sources, pip's default index (None when the user
    configured an index or none at all), the host policy, and the one upstream reader."""

    pip: PipSources
    default_index: str | None
    policy: HostPolicy
    reader: UpstreamReader


def edge(spec: MirrorSpec, probe: Client, pip_sources: PipSources | None, keep_in: Path | None = None,
         pending: PendingRead | None = None) -> Edge:
    """``keep_in``: a mirror (a real run holding its lock) whose state keeps the pip configuration
    as last read, replayed without importing pip while pip would read the same (net/pipconfig.py);
    ``pending``: a fresh read of it the command started early, used when the kept one is not valid."""
    snap: ConfigSnapshot | None = None
    if pip_sources is not None:
        pip = pip_sources
    elif keep_in is not None:
        pip, snap = _kept_pip_config(keep_in, pending)
    else:
        pip = read_pip_config()
    default_index, file_host = None, None
    if not (pip.index_url or pip.no_index):
        default_index = snap.default_index if snap is not None else pip_default_index()
        file_host = (snap.file_host if snap is not None else pip_file_host()) if default_index else None
    policy = host_policy(spec, pip, default_index, file_host)
    return Edge(pip=pip, default_index=default_index, policy=policy, reader=UpstreamReader(probe, policy))


def _kept_pip_config(out: Path, pending: PendingRead | None = None) -> tuple[PipSources, ConfigSnapshot | None]:
    path = out / L.PIP_CONFIG
    kept = kept_snapshot(path)  # absent or unreadable: pip is read again
    pip, snap = read_pip_config_kept(kept, pending)
    if snap is not None and snap != kept:
        # derived state, re-read when lost: no fsync; a failed write only costs the next run the read.
        # Owner-only: a config file's URL may carry a token.
        with contextlib.suppress(OSError, TorchdepotError):
            atomic_write_bytes(path, json.dumps(snap.to_data(), indent=1).encode(), 0o600, fsync=False)
    return pip, snap


@dataclass
class Held:
    """What a run holds open (set as it opens); :meth:`close` releases it however the run ends."""

    client: Client
    own_client: bool
    probe: Client
    own_probe: bool = True  # False: the caller's (sync/settled.py's reader), closed by the caller
    scratch: tempfile.TemporaryDirectory[str] | None = None
    view: View | None = None
    fetcher: Fetcher | None = None  # early downloads, until the fetch step takes it over

    def close(self, result: MirrorResult, reader: UpstreamReader, say: Echo) -> None:
        if self.view is not None:
            refused = self.view.refusal_summary()
            if refused is not None:
                result.refused, line = refused
                say(line)
        if self.fetcher is not None:  # the run stopped before its fetch step: let early downloads finish
            self.fetcher.close()
        result.requests = reader.request_counts()
        result.pages_seen = reader.revalidation_set()
        if self.own_probe:
            self.probe.close()
        if self.own_client:
            self.client.close()
        if self.scratch is not None:
            self.scratch.cleanup()


def accelerators(run_targets: list[PipTarget], locks: tuple[LockedEnv, ...]) -> list[str]:
    """The run's accelerators, each once, in target order."""
    return list(dict.fromkeys([*(t.accelerator for t in run_targets), *(env.target.accelerator for env in locks)]))


def open_view(spec: MirrorSpec, edge: Edge, accelerators: list[str], workdir: Path,
              previous: mf.Manifest | None, say: Echo, out: Path | None = None, dry_run: bool = False) -> View:
    """The screened local index uv reads: each accelerator from the first upstream carrying it,
    dependencies from the user's pip sources, hashes and wheels the mirror already holds reused
    (its METADATA read from local disk), the mirror's metadata cache read (written unless a dry run)."""
    indexes, find_links = dependency_sources(edge.pip, edge.default_index)
    sources = ViewSources(variants=locate_variants(spec, edge.reader, accelerators, edge.pip, say),
                          indexes=indexes, find_links=find_links)
    held = [e for e in (previous.files if previous else ()) if e.url and e.kind == "wheel" and not e.hash_mismatch]
    return View(reader=edge.reader, policy=edge.policy, sources=sources, workdir=workdir,
                on_hash_mismatch=spec.on_hash_mismatch, say=say, exclude_newer=spec.exclude_newer,
                known_hashes={e.url: e.sha256 for e in held if e.url},
                local_wheels={e.url: safe_join(out, e.path) for e in held if e.url} if out is not None else {},
                metadata_cache=out / L.METADATA_CACHE if out is not None else None, cache_writes=not dry_run,
                screens=out / L.VIEW_DIR if out is not None else None)  # a dry run reads the mirror's
