"""Put rendered lockfiles on disk: one folder per target, atomic writes, unchanged files untouched.

Next to the rendered texts, a conda target with a concrete ``base`` URL also gets ``pixi.lock``:
a rattler lock (``rattler.LockFile``, pixi's format) of exactly the target's packages, whose
records are read from the mirror's own published repodata (the ``${TORCHDEPOT_MIRROR}``
placeholder is no URL, so the placeholder form has none).
"""

from __future__ import annotations

import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.lockfiles import DEFAULT_BASE
from torchdepot.lockfiles.render import render, url
from torchdepot.store.fsutil import atomic_write_text, safe_filename, safe_join
from torchdepot.store.manifest import Manifest, Target, load

RATTLER_LOCK = "pixi.lock"


@dataclass(frozen=True)
class LockResult:
    written: tuple[str, ...]  # relative paths that changed
    unchanged: tuple[str, ...]
    targets: tuple[str, ...]


def write_locks(rendered: dict[str, dict[str, str]], out: Path) -> LockResult:
    written, unchanged = [], []
    for tid, docs in sorted(rendered.items()):
        folder = safe_join(out, safe_filename(tid))
        for name, text in sorted(docs.items()):
            path = safe_join(folder, safe_filename(name))
            rel = f"{tid}/{name}"
            try:
                same = path.read_text(encoding="utf-8") == text
            except (FileNotFoundError, UnicodeDecodeError):
                same = False
            if same:
                unchanged.append(rel)
            else:
                atomic_write_text(path, text)
                written.append(rel)
    return LockResult(tuple(written), tuple(unchanged), tuple(sorted(rendered)))


def rattler_lock(mirror: Path, target: Target, base: str) -> str:
    """``pixi.lock`` text for one conda target: its records from the mirror's published repodata,
    with URLs under ``base``, the target's virtual packages listed for its platform."""
    import rattler
    from rattler import LockChannel, LockFile, LockPlatform, PackageName, SparseRepoData

    by_subdir: dict[tuple[str, str], list[str]] = {}
    for p in target.packages:
        parts = p.path.split("/")
        if len(parts) != 4 or parts[0] != "conda":
            raise TorchdepotError(f"manifest.json: target {target.id}: {p.path} is not a conda channel path")
        by_subdir.setdefault((parts[1], parts[2]), []).append(parts[3])
    records = []
    for (ch, sd), files in sorted(by_subdir.items()):
        repodata = safe_join(mirror, "conda", ch, sd, "repodata.json")
        if not repodata.is_file():
            raise TorchdepotError(f"{repodata}: missing; run `torchdepot verify-mirror --repair` or re-sync")
        sparse = SparseRepoData(rattler.Channel(url(base, f"conda/{ch}")), sd, str(repodata))
        wanted = set(files)
        names = {f.rsplit("-", 2)[0] for f in files}
        for name in sorted(names):
            records += [r for r in sparse.load_records(PackageName(name)) if r.file_name in wanted]
    missing = {f for fs in by_subdir.values() for f in fs} - {r.file_name for r in records}
    if missing:
        raise TorchdepotError(f"target {target.id}: {sorted(missing)[0]} is not in the mirror's repodata")
    if not target.subdir:
        raise TorchdepotError(f"manifest.json: conda target {target.id} names no subdir")
    platform = LockPlatform(target.subdir)
    lock = LockFile([platform])
    channels = sorted({url(base, f"conda/{ch}") for ch, _ in by_subdir})
    lock.set_channels("default", [LockChannel(c) for c in channels])
    for r in sorted(records, key=lambda r: r.file_name):
        lock.add_conda_package("default", platform, r)
    with tempfile.TemporaryDirectory(prefix="td-lock-") as tmp:
        path = Path(tmp) / RATTLER_LOCK
        lock.to_path(path)
        return path.read_text(encoding="utf-8")


def _concrete(base: str) -> bool:
    return urllib.parse.urlsplit(base).scheme in ("http", "https", "file")


def render_with_rattler(mirror: Path, manifest: Manifest, base: str) -> dict[str, dict[str, str]]:
    rendered = render(manifest, base)
    if _concrete(base):
        for t in manifest.targets:
            if t.kind == "conda" and t.id in rendered:
                rendered[t.id][RATTLER_LOCK] = rattler_lock(mirror, t, base)
    return rendered


def lock_mirror(mirror: Path, out: Path, base: str = DEFAULT_BASE) -> LockResult:
    return write_locks(render_with_rattler(Path(mirror), load(Path(mirror)), base), Path(out))
