"""Write a channel's ``<subdir>/`` index: ``repodata.json``, ``.zst`` and a CEP-16 shard index,
reproducibly and atomically.

The records are upstream's own (only what was mirrored: upstream's repodata patches kept),
serialised with sorted keys and no wall-clock field (``indexed_timestamp`` is dropped), so
the same inputs give the same bytes. :func:`index_channel` hands them to
``rattler.index.index_fs`` in a staging directory holding links to exactly the mirrored
packages: rattler keeps every record it is given (``force=False``) and writes the
``.zst`` and the shard index + shards from them; never upstream's index. The shard
index's ``created_at`` is set from the records (the newest timestamp), not the clock.

Publication order: package files before any index naming them; shards (content-addressed,
never rewritten) before ``repodata_shards.msgpack.zst``; ``repodata.json.zst`` before
``repodata.json``. A reader never sees a record whose file is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.store.fsutil import atomic_write_bytes, safe_join

# Fields a re-index stamps with the current time: not reproducible, not needed to install.
VOLATILE = ("indexed_timestamp",)
ZSTD_LEVEL = 19


def repodata_bytes(subdir: str, records: dict[str, dict[str, object]]) -> bytes:
    """Deterministic repodata.json: ``.conda`` under ``packages.conda``, the rest under ``packages``."""
    pkgs: dict[str, dict[str, object]] = {}
    conda: dict[str, dict[str, object]] = {}
    for fname in sorted(records):
        rec = {k: v for k, v in records[fname].items() if k not in VOLATILE}
        (conda if fname.endswith(".conda") else pkgs)[fname] = rec
    doc = {"info": {"subdir": subdir}, "packages": pkgs, "packages.conda": conda, "removed": [], "repodata_version": 1}
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_repodata(channel_dir: Path, subdir: str, records: dict[str, dict[str, object]]) -> tuple[Path, Path]:
    """Write ``repodata.json.zst`` then ``repodata.json`` for one subdir (atomic each)."""
    data = repodata_bytes(subdir, records)
    # one thread, fixed level, no content-size surprises: the same bytes every time
    zst = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, threads=0).compress(data)
    d = safe_join(channel_dir, subdir)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / "repodata.json.zst", zst)
    atomic_write_bytes(d / "repodata.json", data)
    return d / "repodata.json", d / "repodata.json.zst"


def normalize_indexed_channel(channel_dir: Path) -> None:
    """Rewrite what ``rattler.index.index_fs`` wrote without its wall-clock fields."""
    for rd in sorted(Path(channel_dir).glob("*/repodata.json")):
        doc = load_json(rd.read_bytes(), str(rd), what="repodata JSON", error=ChannelIndexError)
        if not isinstance(doc, dict):
            raise ChannelIndexError(f"{rd}: repodata is not a JSON object")
        records = {**(doc.get("packages") or {}), **(doc.get("packages.conda") or {})}
        write_repodata(Path(channel_dir), rd.parent.name, records)


SHARD_INDEX = "repodata_shards.msgpack.zst"
SHARDS_DIR = "shards"


class ChannelIndexError(TorchdepotError):
    """rattler's indexer failed on the staged channel."""


@dataclass(frozen=True)
class SubdirIndex:
    """One subdir's index files, published: paths relative to the channel dir, in publication order."""

    subdir: str
    files: tuple[str, ...]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links refused: a copy is as good for indexing
        shutil.copyfile(src, dst)


def _created_at(records: dict[str, dict[str, object]]) -> str:
    stamps = [r.get("timestamp") for r in records.values()]
    newest = max((t for t in stamps if isinstance(t, int) and not isinstance(t, bool) and t > 0), default=0)
    if newest > 10**11:  # conda timestamps are in milliseconds (older records: seconds)
        newest //= 1000
    newest = min(newest, 253402300799)  # 9999-12-31: a hostile timestamp stays a valid date
    return dt.datetime.fromtimestamp(newest, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalize_shard_index(path: Path, created_at: str) -> None:
    """The shard index re-encoded deterministically: ``created_at`` from the records, shards sorted
    by name (rattler writes the map in hash order and stamps the clock)."""
    import msgpack  # type: ignore[import-untyped]  # no stubs published

    with open(path, "rb") as f:
        doc = msgpack.unpackb(zstandard.ZstdDecompressor().stream_reader(f).read(), raw=False)
    info = doc.get("info") if isinstance(doc, dict) else None
    if isinstance(info, dict) and "created_at" in info:
        info["created_at"] = created_at
    ordered = {k: (dict(sorted(v.items())) if isinstance(v, dict) and k == "shards" else v)
               for k, v in sorted(doc.items())}
    if isinstance(ordered.get("info"), dict):
        ordered["info"] = dict(sorted(ordered["info"].items()))
    data = msgpack.packb(ordered, use_bin_type=True)
    path.write_bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, threads=0).compress(data))


def index_channel(channel_dir: Path, per_subdir: dict[str, dict[str, dict[str, object]]], state_dir: Path) -> list[SubdirIndex]:
    """Index exactly ``per_subdir`` (subdir -> filename -> upstream record) of the packages in
    ``channel_dir`` and publish each subdir's index files there (atomic each, in order).

    The staging directory lives under ``state_dir`` (same file system: packages are hard-linked)
    and is removed afterwards."""
    from rattler.index import index_fs

    channel_dir = Path(channel_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    out: list[SubdirIndex] = []
    with tempfile.TemporaryDirectory(dir=state_dir, prefix=".conda-index-") as tmp:
        stage = Path(tmp)
        subdirs = sorted(set(per_subdir) | {"noarch"})
        for sd in subdirs:
            d = safe_join(stage, sd)
            d.mkdir()
            records = per_subdir.get(sd, {})
            for fn in sorted(records):
                _link_or_copy(safe_join(channel_dir, sd, fn), safe_join(d, fn))
            (d / "repodata.json").write_bytes(repodata_bytes(sd, records))
        try:
            asyncio.run(index_fs(stage, write_zst=True, write_shards=True, force=False))
        except Exception as exc:  # rattler's own exceptions: one line, naming the channel
            raise ChannelIndexError(f"{channel_dir}: indexing the mirrored packages failed: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        for sd in subdirs:
            if sd not in per_subdir:
                continue
            src = stage / sd
            created = _created_at(per_subdir[sd])
            if (src / SHARD_INDEX).is_file():
                _normalize_shard_index(src / SHARD_INDEX, created)
            dst = safe_join(channel_dir, sd)
            (dst / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            files: list[str] = []
            shards = sorted(p.name for p in (src / SHARDS_DIR).iterdir()) if (src / SHARDS_DIR).is_dir() else []
            for name in shards:  # content-addressed: an existing shard already has these bytes
                target = dst / SHARDS_DIR / name
                if not target.is_file():
                    atomic_write_bytes(target, (src / SHARDS_DIR / name).read_bytes())
                files.append(f"{sd}/{SHARDS_DIR}/{name}")
            for name in (SHARD_INDEX, "repodata.json.zst", "repodata.json"):
                if (src / name).is_file():
                    atomic_write_bytes(dst / name, (src / name).read_bytes())
                    files.append(f"{sd}/{name}")
            with contextlib.suppress(OSError):
                (dst / SHARDS_DIR).rmdir()  # only when no shard was written
            out.append(SubdirIndex(sd, tuple(files)))
    return out


def _read_json(path: Path) -> object:
    try:
        return load_json(path.read_bytes(), str(path))
    except (OSError, TorchdepotError):
        return None


def subset_run_exports(path: Path, filenames: set[str]) -> bytes | None:
    """Upstream's ``<subdir>/run_exports.json`` restricted to the mirrored files (sorted, stable);
    None when the file is not the expected shape or lists none of them."""
    doc = _read_json(path)
    if not isinstance(doc, dict):
        return None
    out: dict[str, object] = {"info": doc.get("info") if isinstance(doc.get("info"), dict) else {}}
    found = False
    for key in ("packages", "packages.conda"):
        table = doc.get(key)
        table = table if isinstance(table, dict) else {}
        kept = {fn: table[fn] for fn in sorted(filenames) if fn in table}
        found = found or bool(kept)
        out[key] = kept
    if not found:
        return None
    return (json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def subset_channeldata(path: Path, names: set[str], subdirs: set[str]) -> bytes | None:
    """Upstream's ``channeldata.json`` restricted to the mirrored package names and subdirs."""
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("packages"), dict):
        return None
    pkgs = {n: doc["packages"][n] for n in sorted(names) if n in doc["packages"]}
    if not pkgs:
        return None
    out = {k: v for k, v in doc.items() if k not in ("packages", "subdirs")}
    out["packages"] = pkgs
    out["subdirs"] = sorted(subdirs)
    return (json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
