"""Every path and temporary-file name of a mirror root, named once.

Writers build names with the functions here and :mod:`torchdepot.sync.check` recognises
them with the matching predicates, so a leftover is classified by the same rule that made
it (no regex re-spelling a name built elsewhere). Layout of ``<root>``::

    packages/<project>/<file>         wheels + PEP 658 ``.metadata`` (PACKAGES_DIR)
    packages/<project>/<digest16>/<file>  a name whose bytes upstream changed after they were
                                      published (:func:`changed_bytes_path`)
    conda/<channel>/<subdir>/<file>   conda packages + channel index files (CONDA_DIR)
    whl -> .publish/<gen>/whl         the live index generation (INDEX_LINK, PUBLISH_DIR)
    targets/<target-id>/pylock.toml   per-target locks written by a sync (TARGETS_DIR)
    envs/<target-id>/                 lock folders a bundle carries
    manifest.json, index.html         written last, atomically
    .torchdepot.lock                  the writer's flock (LOCK_FILE)
    .torchdepot/                      state (STATE_DIR):
        hashes.json                   the fetcher's hash cache
        publish.json                  the publication journal (PUBLISH_JOURNAL)
        retired.json                  paths that held other bytes once, with their sha256 (RETIRED)
        partial/                      downloads in flight (PARTIAL_DIR)
        whole/                        wheels a regional sync is reading whole for their METADATA (no Range
                                      upstream), until the run's fetcher stores them (WHOLE_DIR;
                                      sync/download.WholeReads; emptied when a sync starts and ends)
        cache/conda/                  repodata a conda sync fetched (CONDA_CACHE_DIR)
        view/                         the local index the resolver reads (VIEW_DIR; rebuilt each run)
            .screens/                 each page's screened links by upstream page identity (sync/view.py)
        resolutions.json              each target's last resolution and its inputs (RESOLUTIONS)
        metadata/                     METADATA by content hash, kept between runs (METADATA_CACHE)
        pages/                        upstream pages with their validators, re-read conditionally (PAGE_CACHE)
        locks.json                    per target, the digest of its lock's inputs and bytes (LOCK_KEYS)
        settled.json                  the last clean sync's inputs, manifest digest and pages (SETTLED)
        pipconfig.json                the user's pip configuration as pip last read it, with what decides
                                      it; replayed while unchanged (PIP_CONFIG, net/pipconfig.py)
        regional.json                 a regional sync's published pages, by digest (REGIONAL_RECORD)
        cache-syncs.json              start times of the last successful syncs; entries of metadata/ and
                                      pages/ none of them used are pruned (CACHE_SYNCS, store/cachefiles.py)
        stage-<kind>-<pid>-<rand>/    staging of an unbundle or repair (one per run)
        aside/<stamp>/                unknown files moved out by ``verify-mirror --repair --move-unknown``
        pullthrough/whl/...           ``serve --pull-through``'s merged pages and what each offers (PULLTHROUGH_DIR)
        misses.jsonl                  what ``serve --pull-through`` was asked for and did not hold (MISSES_LOG)

Immutable publication (``docs/publication.md``, :mod:`torchdepot.store.publication`): a
path the committed ``manifest.json`` lists never receives other bytes. A re-sync stages
every new or changed file at a path no live page or manifest names; when upstream
changes the bytes behind a published name, the new bytes go to
``packages/<project>/<digest16>/<file>`` (``digest16``: the first 16 hex digits of the
sha256 upstream declares for them; ``-<n>`` is appended if even that is taken), the
next generation's pages and manifest point there, and the old path is removed only after
the commit. Every path a run creates or supersedes is written to the journal
``.torchdepot/publish.json`` first, so a killed run's files are recognised (``staged``)
and cleaned up, and a file the mirror did not create is never deleted. Conda packages
keep their names (a channel serves ``<subdir>/<file>``): a published one is never
refetched; its repodata record describes the published bytes.

Temporary names (all dot-prefixed, so nothing serves or bundles them):

- ``.<name>.<random>.tmp`` next to ``<name>``: :func:`atomic_temp_affixes` (fsutil's atomic writes);
- ``.<name>.tmp-<pid>``: :func:`build_temp_name` (an index build under ``.publish/`` or a
  symlink being swapped at the root).

Pure: names and predicates only, no I/O.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from typing import Literal

from torchdepot.model.wheelname import (
    METADATA_SUFFIX as METADATA_SUFFIX,  # re-exported: the mirror's suffix
)

PACKAGES_DIR = "packages"
CONDA_DIR = "conda"
PACKAGE_DIRS = (PACKAGES_DIR, CONDA_DIR)
INDEX_LINK = "whl"
PUBLISH_DIR = ".publish"
TARGETS_DIR = "targets"
ENVS_DIR = "envs"
MANIFEST_NAME = "manifest.json"
LANDING_NAME = "index.html"
LOCK_FILE = ".torchdepot.lock"
STATE_DIR = ".torchdepot"
HASHES_NAME = "hashes.json"
PARTIAL_DIR = f"{STATE_DIR}/partial"
WHOLE_DIR = f"{STATE_DIR}/whole"  # `releases:`: wheels being read whole, until the fetcher stores them
VIEW_DIR = f"{STATE_DIR}/view"
RESOLUTIONS = f"{STATE_DIR}/resolutions.json"
METADATA_CACHE = f"{STATE_DIR}/metadata"
PAGE_CACHE = f"{STATE_DIR}/pages"
LOCK_KEYS = f"{STATE_DIR}/locks.json"  # a no-op re-sync renders no pylock.toml again
SETTLED = f"{STATE_DIR}/settled.json"  # what the last clean sync saw: a no-op replays it (sync/settled.py)
CACHE_SYNCS = f"{STATE_DIR}/cache-syncs.json"  # when the last syncs that swept the caches began
REGIONAL_RECORD = f"{STATE_DIR}/regional.json"  # `releases:`: the digest of the pages the last sync published
MATRIX_RECORD = f"{STATE_DIR}/matrix.json"  # `current`: upstream's release matrix at the last sync
PUBLISH_JOURNAL = f"{STATE_DIR}/publish.json"
PIP_CONFIG = f"{STATE_DIR}/pipconfig.json"  # the user's pip configuration as last read (net/pipconfig.py)
RETIRED = f"{STATE_DIR}/retired.json"
ASIDE_DIR = f"{STATE_DIR}/aside"
PULLTHROUGH_DIR = f"{STATE_DIR}/pullthrough"
PULLTHROUGH_CONDA_CACHE = f"{PULLTHROUGH_DIR}/conda-cache"  # upstream repodata pull-through serves from
MISSES_LOG = f"{STATE_DIR}/misses.jsonl"
STAGE_PREFIX = "stage-"
CONDA_CACHE_DIR = f"{STATE_DIR}/cache/conda"  # repodata fetched by conda syncs
PYLOCK_NAME = "pylock.toml"  # a target's lock under TARGETS_DIR/<id>/
CACHE_DIR = f"{STATE_DIR}/cache"
# Every path under a root the tool itself creates, parents before children. Each must be a real
# file or directory (or absent), never a symlink: a planted link would move state, staging,
# downloads or the next index outside the root (:func:`torchdepot.store.fsutil.refuse_planted_links`).
OWN_PATHS = (STATE_DIR, PARTIAL_DIR, WHOLE_DIR, VIEW_DIR, ASIDE_DIR, CACHE_DIR, CONDA_CACHE_DIR, METADATA_CACHE, PAGE_CACHE,
             PULLTHROUGH_DIR, f"{STATE_DIR}/{HASHES_NAME}", RESOLUTIONS, LOCK_KEYS, SETTLED, MATRIX_RECORD, CACHE_SYNCS,
             REGIONAL_RECORD, PUBLISH_JOURNAL, PIP_CONFIG, RETIRED,
             MISSES_LOG, PUBLISH_DIR, PACKAGES_DIR, CONDA_DIR, TARGETS_DIR, ENVS_DIR, MANIFEST_NAME, LANDING_NAME,
             LOCK_FILE)

StageKind = Literal["unbundle", "repair"]

_ATOMIC_SUFFIX = ".tmp"
_BUILD_MARK = ".tmp-"
# Files a conda channel indexer writes next to packages: part of the channel, never orphans.
_CONDA_INDEX = re.compile(
    r"(current_)?repodata(_from_packages)?\.json(\.zst|\.bz2|\.jlap)?|repodata_shards\.msgpack(\.zst)?"
    r"|channeldata\.json|index\.html|\.?run_exports\.json(\.zst)?"
    r"|[0-9a-f]{64}\.msgpack\.zst"  # a CEP-16 shard (under <subdir>/shards/), content-addressed
)


def package_path(project: str, filename: str) -> str:
    """``packages/<project>/<file>``: where a wheel is stored (``filename`` already safe)."""
    return f"{PACKAGES_DIR}/{project}/{filename}"


def metadata_path(wheel_path: str) -> str:
    """The PEP 658 ``.metadata`` stored next to the wheel at ``wheel_path``."""
    return wheel_path + METADATA_SUFFIX


def is_metadata_path(path: str) -> bool:
    return path.endswith(METADATA_SUFFIX)


def wheel_of_metadata(path: str) -> str:
    """The wheel path a :func:`metadata_path` was made from."""
    return path[: -len(METADATA_SUFFIX)] if is_metadata_path(path) else path


def pip_index(accelerator: str) -> str:
    """``whl/<accelerator>``: a pip target's index, relative to the root."""
    return f"{INDEX_LINK}/{accelerator}"


def target_dir(target_id: str) -> str:
    """``targets/<id>``: the per-target folder a sync writes (its lock)."""
    return f"{TARGETS_DIR}/{target_id}"


def target_lock(target_id: str) -> str:
    return f"{target_dir(target_id)}/{PYLOCK_NAME}"


def env_dir(target_id: str) -> str:
    """``envs/<id>``: a lock folder a bundle carries."""
    return f"{ENVS_DIR}/{target_id}"


def conda_channel(name: str) -> str:
    """``conda/<name>``: a conda channel of the mirror."""
    return f"{CONDA_DIR}/{name}"


def atomic_temp_affixes(name: str) -> tuple[str, str]:
    """(prefix, suffix) for ``tempfile.mkstemp`` when writing ``name`` atomically."""
    return f".{name}.", _ATOMIC_SUFFIX


def is_atomic_temp(name: str) -> bool:
    """A name :func:`atomic_temp_affixes` + mkstemp made: ``.<name>.<random>.tmp``."""
    if not (name.startswith(".") and name.endswith(_ATOMIC_SUFFIX)):
        return False
    body = name[1:-len(_ATOMIC_SUFFIX)]
    target, dot, rand = body.rpartition(".")
    return bool(dot and target and rand) and rand.replace("_", "").isalnum()


def build_temp_name(name: str, pid: int | None = None) -> str:
    """``.<name>.tmp-<pid>``: a directory or symlink being built before one rename installs it."""
    return f".{name}{_BUILD_MARK}{os.getpid() if pid is None else pid}"


def build_temp_of(name: str) -> str | None:
    """The name a :func:`build_temp_name` was for (``whl`` for ``.whl.tmp-42``), else None."""
    if not name.startswith("."):
        return None
    head, mark, pid = name.rpartition(_BUILD_MARK)
    return head[1:] if mark and len(head) > 1 and pid.isdigit() else None


def is_build_temp(name: str) -> bool:
    return build_temp_of(name) is not None


def atomic_temp_of(name: str) -> str | None:
    """The name an atomic-write temp was for (``manifest.json`` for ``.manifest.json.k3j2.tmp``)."""
    return name[1:-len(_ATOMIC_SUFFIX)].rpartition(".")[0] if is_atomic_temp(name) else None


def stage_prefix(kind: StageKind, pid: int | None = None) -> str:
    """Prefix of a run's staging dir under STATE_DIR (``tempfile.mkdtemp(prefix=...)``)."""
    return f"{STAGE_PREFIX}{kind}-{os.getpid() if pid is None else pid}-"


def stage_pid(name: str) -> int | None:
    """The pid that made staging dir ``name``, or None when ``name`` is not one."""
    if not name.startswith(STAGE_PREFIX):
        return None
    parts = name[len(STAGE_PREFIX):].split("-")
    if len(parts) < 3 or parts[0] not in ("unbundle", "repair") or not parts[1].isdigit():
        return None
    return int(parts[1])


def changed_bytes_path(default: str, sha256: str | None, size: int | None, n: int = 0) -> str:
    """``packages/<p>/<digest16>[-n]/<file>`` for new bytes behind ``default`` (``packages/<p>/<file>``).

    ``digest16`` is the declared sha256's first 16 hex digits; without a usable declared
    hash, ``z`` + 15 hex digits of a hash of the claim (size), so equal claims share a path.
    """
    head, name = posixpath.split(default)
    if sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", sha256):
        digest = sha256[:16]
    else:
        digest = "z" + hashlib.sha256(f"{sha256}:{size}".encode()).hexdigest()[:15]
    return f"{head}/{digest}{f'-{n}' if n else ''}/{name}"


_HEX64 = r"[0-9a-f]{64}"
_PAGE_ENTRY = re.compile(_HEX64 + r"(\.parsed\.json)?")  # sha256(url) [+ its saved parse]
_METADATA_ENTRY = re.compile(r"(core|wheel)-" + _HEX64)  # content-addressed METADATA


def is_cache_entry(folder: str, name: str) -> bool:
    """A name the sync itself gives an entry of ``folder`` (PAGE_CACHE or METADATA_CACHE):
    the only files a cache sweep may delete there."""
    rule = _PAGE_ENTRY if folder == PAGE_CACHE else _METADATA_ENTRY if folder == METADATA_CACHE else None
    return rule is not None and rule.fullmatch(name) is not None


def is_conda_index_file(name: str) -> bool:
    return _CONDA_INDEX.fullmatch(name) is not None


def package_top(rel: str) -> str | None:
    """``packages`` / ``conda`` when POSIX path ``rel`` lies in a package dir, else None."""
    top = rel.split("/", 1)[0]
    return top if top in PACKAGE_DIRS and "/" in rel else None
