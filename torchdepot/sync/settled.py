"""The no-op shortcut: a re-sync whose inputs and upstream pages are what the last clean run
saw commits only a new ``last_sync``, without planning, resolving or publishing again.

Invariants:

- A record (``.torchdepot/settled.json``, :data:`L.SETTLED`) is written only at the end of a
  real run that checked ok, failed no target, removed nothing and said nothing from its pip
  side, and whose every upstream page can be revalidated (kept with a validator, or absent).
  It names the sha256 of the ``manifest.json`` bytes that run committed, a digest of the run's
  inputs (this torchdepot and uv, the spec, the target set, the pip sources and host policy),
  the live index generation, the fetch results and every page URL.
- A later run replays it only when ``manifest.json`` is byte for byte that one, the inputs
  digest is the same, every listed file is present with its size and hash (the fetcher's hash
  cache: no file bytes read), every target's pylock.toml holds the bytes last rendered, the
  generation is live, and every page answers 304 or the very bytes kept (an absent one is
  still absent). Anything else removes the record and the whole run goes on (a whole
  run removes it before it starts, and writes a new one when it ends clean).
- A replay removes the record before it asks upstream; a changed page it reads is kept and
  handed to the whole run that follows through the same reader (read once), so a kill at any
  point leaves either no record or one whose pages are all unchanged. It writes
  ``manifest.json`` (its ``last_sync``), the landing page and the record, then sweeps the caches
  keeping what the recorded run used (as the whole no-op would), and says what a whole no-op
  says: the tombstone lines and the sweep's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torchdepot import __version__
from torchdepot.errors import TorchdepotError
from torchdepot.fetch import FetchResult
from torchdepot.site.landing import write_landing
from torchdepot.sources.upstream import UpstreamReader
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.store import cachefiles
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import atomic_write_text, safe_join
from torchdepot.store.pages import current_generation
from torchdepot.sync import lifecycle, session
from torchdepot.sync.check import verify_mirror
from torchdepot.sync.download import PipFetchReport
from torchdepot.sync.pipindex import locks_intact
from torchdepot.sync.reads import Count
from torchdepot.sync.resolution import uv_version
from torchdepot.sync.result import Echo, MirrorResult, RunLog, sync_record

REVALIDATE_JOBS = 16  # conditional page requests in flight at once (the probe client's pool is sized to it)
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a record larger than this is not read (a cache: the whole run goes on)
_RESULT_FIELDS = ("key", "sha256", "size", "url", "upstream_sha256", "hash_mismatch")


@dataclass(frozen=True)
class Record:
    inputs: str
    manifest: str
    generation: str
    pages: dict[str, bool]  # URL -> kept (revalidated by a conditional request) | absent (404)
    results: tuple[dict, ...]  # the fetch report's results (_RESULT_FIELDS): all present on a replay
    cache: dict[str, list[str]]  # cache folder -> the entries the run used (a replay keeps them, as it would)


def inputs_digest(spec: MirrorSpec, tset: lifecycle.TargetSet, prune: bool, edge: session.Edge) -> str:
    """What the pip side's outcome depends on besides upstream's pages and the mirror's manifest."""
    doc = {"torchdepot": __version__, "uv": uv_version(), "spec": spec.to_data(), "prune": prune,
           "run": [repr(t) for t in tset.run], "recorded": [repr(r) for r in tset.recorded],
           "dropped": [repr(r) for r in tset.dropped], "tolerate": sorted(tset.tolerate),
           "pip": repr(edge.pip), "default_index": edge.default_index,
           "hosts": sorted(edge.policy.hosts), "allow_file": edge.policy.allow_file}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _manifest_sha256(out: Path) -> str | None:
    try:
        return hashlib.sha256((out / L.MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return None


def forget(out: Path) -> None:
    """Remove the record: a whole run is about to change what it describes."""
    with contextlib.suppress(OSError):
        safe_join(out, L.SETTLED).unlink(missing_ok=True)


def _load(out: Path) -> Record | None:
    try:
        path = safe_join(out, L.SETTLED)
        if path.stat().st_size > MAX_RECORD_BYTES:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
        rec = Record(inputs=doc["inputs"], manifest=doc["manifest"], generation=doc["generation"],
                     pages=doc["pages"], results=tuple(doc["results"]), cache=doc["cache"])
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None  # a cache: unreadable means the whole run
    ok = (all(isinstance(v, str) for v in (rec.inputs, rec.manifest, rec.generation))
          and isinstance(rec.pages, dict) and all(isinstance(v, bool) for v in rec.pages.values())
          and all(isinstance(r, dict) and set(r) == set(_RESULT_FIELDS) for r in rec.results)
          and isinstance(rec.cache, dict) and all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                                  for v in rec.cache.values()))
    return rec if ok else None


def record(out: Path, inputs: str, result: MirrorResult, pages: dict[str, bool] | None) -> None:
    """Write the record of the run that just committed ``result`` (see the module's rules;
    the caller checked the run's own conditions)."""
    sha = _manifest_sha256(out)
    if pages is None or sha is None or result.generation is None or not isinstance(result.report, PipFetchReport) \
            or result.cache_used is None:
        forget(out)
        return
    results = [{k: getattr(r, k) for k in _RESULT_FIELDS} for r in result.report.results]
    cache = {rel: sorted(names) for rel, names in result.cache_used.items()}
    _save(out, Record(inputs=inputs, manifest=sha, generation=result.generation, pages=pages, results=tuple(results),
                      cache=cache))


def _save(out: Path, rec: Record) -> None:
    doc = asdict(rec)
    doc["results"] = list(rec.results)
    atomic_write_text(safe_join(out, L.SETTLED), json.dumps(doc, sort_keys=True) + "\n")


def _unchanged(reader: UpstreamReader, pages: dict[str, bool], progress: bool | None = False) -> bool:
    """True when every kept page answers 304 (or its kept bytes) and every absent one is still absent.
    ``progress``: a bar of pages asked (True; None: on a terminal only; False: none); a far link
    answers a few hundred conditional requests in seconds, not the few ms of loopback."""
    def one(item: tuple[str, bool], bar: Count) -> bool:
        url, kept = item
        try:
            got = reader.revalidate(url)
        except TorchdepotError:  # unreachable, refused, unparseable: the whole run says it
            return False
        finally:
            bar.step()
        return got == ("unchanged" if kept else "absent")

    if not pages:
        return False
    with Count(progress, len(pages), "pages revalidated", "pages") as bar, \
            ThreadPoolExecutor(max_workers=min(REVALIDATE_JOBS, len(pages))) as pool:
        return all(pool.map(lambda item: one(item, bar), pages.items()))


def replay(out: Path, previous: mf.Manifest, tset: lifecycle.TargetSet, inputs: str, edge: session.Edge,
           started: float, wall_started: float, echo: Echo, progress: bool | None = False) -> MirrorResult | None:
    """The no-op, committed from the record when everything it names is unchanged; None (and
    the record removed) when the whole run must go on. Like a whole sync it ends with the cache
    sweep (``store/cachefiles.py``), keeping what the recorded run used."""
    rec = _load(out)
    if rec is None or rec.inputs != inputs or rec.manifest != _manifest_sha256(out) \
            or current_generation(out) != rec.generation:
        forget(out)
        return None
    check = verify_mirror(out, trust_cache=True, clean=True, check_index=False, manifest=previous)
    if not check.ok or not (out / L.INDEX_LINK / "index.html").is_file() \
            or not locks_intact(out, [t.id for t in previous.targets if t.kind == "pip"]):
        forget(out)
        return None
    # From here the kept pages may change (a changed page is kept as read, once): the record
    # goes first, and comes back below only once every page proved unchanged.
    forget(out)
    edge.reader.keep_pages(out / L.PAGE_CACHE)
    if not _unchanged(edge.reader, rec.pages, progress):
        return None  # the whole run goes on with this reader: what it read is not read again
    result = MirrorResult(out=out, target_set=tset)
    log = RunLog(result, echo, mark=started)
    log.phase("upstreams")  # the follow step, the local check and the revalidation
    result.requests = edge.reader.request_counts()
    result.files, result.targets = list(previous.files), list(previous.targets)
    result.releases, result.tombstones = list(lifecycle.releases_of(previous)), list(previous.tombstones)
    result.report = PipFetchReport(results=[FetchResult(status="present", **r) for r in rec.results])
    result.generation, result.index_changed = rec.generation, False
    for t in result.tombstones:
        log.say(t.line())
    result.verify = "ok"
    manifest = replace(previous, last_sync=sync_record(started, "ok", check.summary()))
    write_landing(out, manifest)
    mf.save(out, manifest)
    sha = _manifest_sha256(out)
    if sha is not None:
        _save(out, replace(rec, manifest=sha))
    result.manifest = manifest
    result.cache_used = {rel: frozenset(names) for rel, names in rec.cache.items()}
    swept = cachefiles.sweep(out, result.cache_used, wall_started)
    if (line := swept.line()) is not None:
        log.say(line)
    log.phase("publish")
    result.seconds = time.monotonic() - started
    return result

