"""Build or update an offline pip mirror from a :class:`~torchdepot.spec.mirror.MirrorSpec`.

Order of a run (each step leaves the previous mirror valid if it fails):
probe PyTorch upstreams (failover) -> pin torch* per target -> resolve each target with uv
-> fetch files (verified, temp + rename) -> PEP 658 metadata -> per-target pylock.toml
-> index pages (atomic swap) -> conda (if configured) -> landing page -> manifest.json last.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tomlkit

from torchdepot.store import manifest as mf
from torchdepot.errors import TorchdepotError, UpstreamError
from torchdepot.fetch import Fetcher, FetchItem, FetchReport
from torchdepot.store.fsutil import MirrorLock, atomic_write_text, safe_filename, safe_join
from torchdepot.net.hostguard import PROXY_VARS, HostGuard
from torchdepot.net.http import Client, HttpConfig, make_session
from torchdepot.site.landing import write_landing
from torchdepot.net.hostpolicy import default_policy
from torchdepot.net.pipconfig import PipSources, pip_default_index, pip_file_host, read_pip_config
from torchdepot.store.pages import IndexFile, build_pages, ensure_metadata, publish
from torchdepot.resolve.uv import IndexPlan, ResolvedFile, ResolveError, resolve
from torchdepot.resolve.pin import pin
from torchdepot.model.sizes import format_size
from torchdepot.sources.links import Link
from torchdepot.sources.pep503 import parse_html
from torchdepot.spec.mirror import TORCH_PROJECTS, MirrorSpec, PipTarget
from torchdepot.sync.check import verify_mirror

Echo = Callable[[str], None]
# Upstream probes fail fast: an unreachable PyTorch index must not stall the run.
PROBE_CONFIG = HttpConfig(connect_timeout=5.0, read_timeout=30.0, retries=1, backoff=0.2, max_backoff=1.0)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TargetPlan:
    target: PipTarget
    requirements: tuple[str, ...]
    files: tuple[ResolvedFile, ...]
    variant_url: str | None  # the PyTorch variant index used, None when from pip config alone


@dataclass
class MirrorResult:
    out: Path
    plans: list[TargetPlan] = field(default_factory=list)
    files: list[mf.FileEntry] = field(default_factory=list)
    targets: list[mf.Target] = field(default_factory=list)
    report: FetchReport | None = None
    generation: str | None = None
    index_changed: bool = False
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: mf.Manifest | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step (bench/diagnostics)

    @property
    def summary(self) -> str:
        if self.report is None:
            return "dry run: nothing fetched"
        return self.report.summary()


# -- upstream discovery -------------------------------------------------------------------
def channel_prefix(channel: str) -> str:
    return "" if channel == "stable" else f"{channel}/"


class Sources:
    """Crawls candidate pages once per run; remembers unreachable upstreams."""

    def __init__(self, spec: MirrorSpec, pip: PipSources, probe: Client, echo: Echo, default_index: str | None):
        self.spec = spec
        self.pip = pip
        self.probe = probe
        self.echo = echo
        self.default_index = default_index
        self.dead: set[str] = set()
        self.pages: dict[str, list[Link] | None] = {}
        self.variant: dict[str, str | None] = {}
        self.reported: set[str] = set()

    def _get(self, url: str) -> list[Link] | None:
        """Links on a page; None when the page does not exist (404) or its host is down."""
        if url in self.pages:
            return self.pages[url]
        try:
            body, meta = self.probe.get_bytes(url)
            links = parse_html(body, meta.get("url", url)).links
        except UpstreamError as exc:
            links = None
            if "HTTP 404" not in str(exc) and "No such file" not in str(exc):
                raise
        self.pages[url] = links
        return links

    def report_variant(self, acc: str) -> None:
        """Say (once) that no PyTorch upstream serves ``acc``: the run goes on from pip's config."""
        if self.variant.get(acc, "") is None and acc not in self.reported:
            self.reported.add(acc)
            self.echo(f"no PyTorch upstream reachable for {acc}; continuing from the pip configuration alone "
                      f"({self.pip.describe()})")

    def variant_url(self, acc: str, quiet: bool = False) -> str | None:
        """First reachable PyTorch upstream's variant index for ``acc`` (failover order)."""
        if acc in self.variant:
            return self.variant[acc]
        found = None
        for i, base in enumerate(self.spec.upstreams):
            if base in self.dead:
                continue
            url = f"{base}/{channel_prefix(self.spec.channel)}{acc}"
            more = "; trying next" if i + 1 < len(self.spec.upstreams) else ""
            try:
                links = self._get(url + "/torch/")
            except UpstreamError as exc:
                self.dead.add(base)
                reason = str(exc).split(": ", 1)[-1]
                self.echo(f"upstream {base} unreachable: {reason}{more}")
                continue
            if links is None:
                self.echo(f"upstream {base} has no {url.rsplit('/', 1)[-1]} torch index{more}")
                continue
            found = url
            break
        self.variant[acc] = found
        if not quiet:
            self.report_variant(acc)
        return found

    def pip_pages(self, project: str) -> list[str]:
        urls = [f"{idx}/{project}/" for idx in self.pip.indexes]
        if not self.pip.no_index and not self.pip.index_url and self.default_index:
            urls.append(f"{self.default_index}/{project}/")
        return urls + list(self.pip.find_links)

    def links(self, acc: str, project: str) -> list[Link]:
        out: list[Link] = []
        variant = self.variant_url(acc)
        if variant:
            out += self._get(f"{variant}/{project}/") or []
        for url in self.pip_pages(project):
            try:
                out += self._get(url) or []
            except UpstreamError as exc:
                self.pages[url] = None
                self.echo(f"dependency source {url} unreachable: {str(exc).split(': ', 1)[-1]}; skipping it")
        return out


# -- planning -------------------------------------------------------------------------------
def plan_target(spec: MirrorSpec, t: PipTarget, sources: Sources) -> tuple[list[str], IndexPlan, str | None]:
    prerelease = spec.channel != "stable"
    pins: list[str] = []
    torch_version = None
    for project in TORCH_PROJECTS:
        pkg = spec.package(project)
        if pkg is None:
            continue
        links = sources.links(t.accelerator, project)
        constraint = (t.torch or pkg.constraint) if project == "torch" else pkg.constraint
        p = pin(links, project, t.accelerator, t.python, t.platform, constraint,
                prereleases=prerelease, torch_version=torch_version)
        if p is None:
            want = f" {constraint}" if constraint else ""
            raise TorchdepotError(
                f"{t.id}: no {project}{want} wheel for {t.accelerator}, Python {t.python}, {t.platform} in "
                f"{len(links)} links from the reachable sources ({sources.pip.describe()})")
        if project == "torch":
            torch_version = p.version
        pins.append(p.requirement)
    variant = sources.variant_url(t.accelerator)
    pip = sources.pip
    plan = IndexPlan(
        extra_index_urls=((variant,) if variant else ()) + pip.extra_index_urls,
        index_url=pip.index_url,
        no_index=pip.no_index,
        find_links=pip.find_links,
        # With the PyTorch index first, resolve like its --index-url instructions (first index
        # wins); from pip config alone, merge all indexes as pip itself does.
        index_strategy="first-index" if variant else "unsafe-best-match",
        prereleases=prerelease,
    )
    return pins + list(spec.extra_packages), plan, variant


def _alternates(url: str, upstreams: tuple[str, ...]) -> tuple[str, ...]:
    """The same file on every configured PyTorch upstream (regional mirrors share the layout)."""
    for base in upstreams:
        if url.startswith(base + "/"):
            rest = url[len(base):]
            return tuple(dict.fromkeys([url] + [b + rest for b in upstreams]))
    return (url,)


def _allowed_hosts(spec: MirrorSpec, pip: PipSources, default_index: str | None) -> set[str]:
    """Issue 6 host policy: the upstreams, hosts the PyTorch index links to, and the hosts
    of the pip configuration (for pip's default index, also the file host pip names)."""
    deps = list(pip.indexes) + list(pip.find_links)
    if default_index:
        deps.append(default_index)
        deps.append(pip_file_host() or "")
    return set(default_policy(spec.upstreams, [d for d in deps if d]).hosts)


@contextlib.contextmanager
def _guard(allowed: set[str], say: Callable[[str], None]):
    """Run uv behind the host guard (yields the env to give it). A user who already routes
    through their own proxy keeps it: the guard does not chain proxies, and says so."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        say("host policy: a proxy is configured (HTTP(S)_PROXY), so uv's resolution traffic is not screened; "
            "downloads still are")
        yield {}
        return
    with HostGuard(allowed) as guard:
        try:
            yield guard.env()
        except ResolveError as exc:
            if guard.refused:  # the resolution failed because the policy kept uv off a host: say so
                hosts = ", ".join(sorted(guard.refused))
                raise ResolveError(f"resolver needed {hosts}, not allowed by the mirror's host policy; {exc}") from None
            raise
        finally:
            for host, n in sorted(guard.refused.items()):
                say(f"host policy: refused {n} request(s) from the resolver to {host} (not an upstream, "
                    "a PyTorch-linked host or a pip-config host)")


def file_key(f: ResolvedFile) -> str:
    return f"packages/{f.name}/{safe_filename(f.filename)}"


def _size_of(f: ResolvedFile, probe: Client) -> int | None:
    if f.size is not None:
        return f.size
    parts = urllib.parse.urlsplit(f.url)
    try:
        if parts.scheme == "file":
            return Path(urllib.parse.unquote(parts.path)).stat().st_size
        resp = probe.request("HEAD", f.url)
        resp.close()
        cl = resp.headers.get("Content-Length")
        return int(cl) if cl and cl.isdigit() else None
    except (OSError, UpstreamError):
        return None


# -- the run --------------------------------------------------------------------------------
def sync_pip(spec: MirrorSpec, *, out: Path | None = None, dry_run: bool = False, client: Client | None = None,
             progress: bool | None = None, pip_sources: PipSources | None = None, echo: Echo = _stderr) -> MirrorResult:
    """The pip side: resolve, fetch, write metadata, locks and index pages (no manifest)."""
    started = time.monotonic()
    out = Path(out or spec.out)
    result = MirrorResult(out=out)

    def say(msg: str) -> None:
        result.messages.append(msg)
        echo(msg)

    own_client = client is None
    client = client or make_session()
    probe = Client(PROBE_CONFIG)
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        result.phases[name] = result.phases.get(name, 0.0) + now - mark
        mark = now

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        # pip's config costs a subprocess: read it while the PyTorch upstreams are probed.
        pip_future = pool.submit(lambda: pip_sources if pip_sources is not None else read_pip_config())
        sources = Sources(spec, PipSources(), probe, say, None)
        targets = spec.targets()
        for acc in dict.fromkeys(t.accelerator for t in targets):
            sources.variant_url(acc, quiet=True)
        pip = pip_future.result()
        sources.pip = pip
        sources.default_index = None if (pip.index_url or pip.no_index) else pip_default_index()
        for acc in dict.fromkeys(t.accelerator for t in targets):
            sources.report_variant(acc)
        planned = [(t, *plan_target(spec, t, sources)) for t in targets]
        phase("upstreams")

        allowed = _allowed_hosts(spec, pip, sources.default_index)
        with _guard(allowed, say) as guard_env:
            def run_one(item):
                t, reqs, plan, variant = item
                files = resolve(t.id, reqs, t.python, t.platform, plan, env=guard_env)
                return TargetPlan(t, tuple(reqs), tuple(files), variant)

            result.plans = list(pool.map(run_one, planned))
        phase("resolve")

        unique: dict[str, ResolvedFile] = {}  # targets share most files: each is handled once
        for p in result.plans:
            for f in p.files:
                unique.setdefault(file_key(f), f)

        if dry_run:
            sizes = {k: _size_of(f, probe) for k, f in unique.items()}
            for p in result.plans:
                keys = {file_key(f) for f in p.files}
                total = sum(sizes[k] or 0 for k in keys)
                unknown = sum(1 for k in keys if sizes[k] is None)
                say(f"{p.target.id}: {len(p.files)} packages, {len(keys)} files, {format_size(total)}"
                    + (f" (+{unknown} of unknown size)" if unknown else "")
                    + f" [{' '.join(p.requirements)}] via {p.variant_url or 'pip configuration'}")
                for f in p.files:
                    k = file_key(f)
                    say(f"  {f.name}=={f.version}  {f.filename}  {format_size(sizes[k]) if sizes[k] else '?'}  <- {f.url}")
            total = sum(v or 0 for v in sizes.values())
            say(f"plan: {len(result.plans)} targets, {len(sizes)} unique files, {format_size(total)}; nothing written (dry run)")
            return result

        fetcher = Fetcher(out, client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch, progress=progress,
                          fsync=spec.fsync,
                          allowed_hosts=allowed)
        report = fetcher.run([FetchItem(k, _alternates(f.url, spec.upstreams), f.sha256, f.size)
                              for k, f in unique.items()])
        result.report = report
        phase("fetch")
        for r in report.mismatches:
            say(f"warning: {r.key}: upstream sha256 {r.upstream_sha256} but the bytes hash to {r.sha256} "
                "(accepted: --on-hash-mismatch warn; recorded in manifest.json)")
        if report.failed:
            first = report.failed[0]
            raise TorchdepotError(f"{len(report.failed)} of {len(report.results)} files failed (index not updated); "
                                  f"first: {first.key}: {first.error}")

        by_key = {r.key: r for r in report.results}
        entries: dict[str, mf.FileEntry] = {}
        index_files: dict[str, IndexFile] = {}
        for key, f in unique.items():
            r = by_key[key]
            meta_sha, req_py, meta_size = ensure_metadata(out, key, f.name)
            index_files[key] = IndexFile(f.name, safe_filename(f.filename), key, r.sha256, req_py, meta_sha,
                                        size=r.size)  # size: PEP 700 in the JSON pages
            entries[key] = mf.FileEntry(key, r.sha256, r.size, "wheel", f.name, f.version, f.url,
                                        r.upstream_sha256, r.hash_mismatch)
            entries[key + ".metadata"] = mf.FileEntry(key + ".metadata", meta_sha, meta_size, "metadata",
                                                      f.name, f.version)
        variants: dict[str, list[IndexFile]] = {}
        for p in result.plans:
            acc = p.target.accelerator
            files = [index_files[file_key(f)] for f in p.files]
            variants.setdefault(acc, []).extend(files)
            write_pylock(out, p, index_files)
            result.targets.append(mf.Target(
                id=p.target.id, kind="pip", accelerator=acc, python=p.target.python, platform=p.target.platform,
                packages=tuple(mf.TargetPackage(f.name, f.version, file_key(f),
                                                requires_python=index_files[file_key(f)].requires_python)
                               for f in p.files),
                index=f"whl/{acc}"))
        result.files = sorted(entries.values(), key=lambda e: e.path)
        result.generation, result.index_changed = publish(out, build_pages(variants))
        phase("publish")
        return result
    finally:
        pool.shutdown(wait=False)
        probe.close()
        if own_client:
            client.close()
        result.seconds = time.monotonic() - started


def write_pylock(out: Path, p: TargetPlan, index_files: dict[str, IndexFile]) -> None:
    """``targets/<id>/pylock.toml`` (PEP 751) pointing at the mirror's own files."""
    doc = tomlkit.document()
    doc["lock-version"] = "1.0"
    doc["created-by"] = "torchdepot"
    doc["requires-python"] = f"=={p.target.python}.*"
    pkgs = tomlkit.aot()
    for f in p.files:
        key = file_key(f)
        t = tomlkit.table()
        t["name"] = f.name
        t["version"] = f.version
        wheel = tomlkit.inline_table()
        wheel["name"] = index_files[key].filename
        wheel["path"] = "../../" + key
        wheel["hashes"] = {"sha256": index_files[key].sha256}
        t["wheels"] = [wheel]
        pkgs.append(t)
    doc["packages"] = pkgs
    atomic_write_text(safe_join(out, f"targets/{p.target.id}/pylock.toml"), tomlkit.dumps(doc))


def _conda(spec: MirrorSpec, out: Path, client: Client | None, dry_run: bool, result: MirrorResult,
           echo: Echo) -> tuple[list[mf.FileEntry], list[mf.Target]]:
    """Run the conda side when the spec has a ``conda:`` section."""
    if spec.conda is None:
        return [], []
    from torchdepot.sync.conda import sync_conda

    cres = sync_conda(spec, out, client=client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch,
                                 dry_run=dry_run)
    if cres.summary:
        result.messages.append(f"conda: {cres.summary}")
        echo(f"conda: {cres.summary}")
    return list(cres.files), list(cres.targets)


def sync(spec: MirrorSpec, *, dry_run: bool = False, client: Client | None = None, progress: bool | None = None,
         out: Path | None = None, wait: float | None = None, pip_sources: PipSources | None = None,
         echo: Echo = _stderr) -> MirrorResult:
    """A whole mirror run under the mirror lock: pip, conda, landing page, manifest last."""
    out = Path(out or spec.out)
    if dry_run:
        result = sync_pip(spec, out=out, dry_run=True, client=client, progress=progress, pip_sources=pip_sources,
                          echo=echo)
        _conda(spec, out, client, True, result, echo)
        return result
    out.mkdir(parents=True, exist_ok=True)
    with MirrorLock(out, wait):
        result = sync_pip(spec, out=out, client=client, progress=progress, pip_sources=pip_sources, echo=echo)
        files, targets = list(result.files), list(result.targets)
        conda_files, conda_targets = _conda(spec, out, client, False, result, echo)
        files += conda_files
        targets += conda_targets
        manifest = mf.Manifest(files=files, targets=targets, spec=dict(spec.raw or {}))
        write_landing(out, manifest)
        mf.save(out, manifest)
        result.manifest = manifest
        _verify_published(out, result, echo)
        return result


def _verify_published(out: Path, result: MirrorResult, echo: Echo) -> None:
    """Re-check what was just published (issue 6): every manifest file hash-valid, every
    index link resolving. The fetcher's hash cache spares re-reading unchanged files."""
    check = verify_mirror(out, trust_cache=True, clean=True)  # drops leftovers of killed runs
    if check.ok:
        return
    serious = [p for p in check.unrepaired if p.kind in ("missing", "corrupt", "dangling-link")]
    for p in check.unrepaired[:10]:
        msg = f"verify-mirror: {p.kind}: {p.path}: {p.detail}"
        result.messages.append(msg)
        echo(msg)
    if serious:
        raise TorchdepotError(f"{check.summary()}; first: {serious[0].path}: {serious[0].detail}")
    msg = f"{check.summary()} (run 'torchdepot verify-mirror {out} --repair' to clean up)"
    result.messages.append(msg)
    echo(msg)
