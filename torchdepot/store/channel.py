"""Write a channel's ``<subdir>/repodata.json`` (+ ``.zst``), reproducibly and atomically.

The records are upstream's own (only what was mirrored), serialised with sorted keys
and no wall-clock field (``indexed_timestamp`` is dropped), so the same inputs give
the same bytes. Package files are published before the repodata that names them, and
``repodata.json.zst`` before ``repodata.json``: a reader never sees a record whose
file is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import zstandard

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
        doc = json.loads(rd.read_bytes())
        records = {**(doc.get("packages") or {}), **(doc.get("packages.conda") or {})}
        write_repodata(Path(channel_dir), rd.parent.name, records)
