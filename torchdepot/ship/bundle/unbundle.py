"""Reading a bundle back: refuse unsafe members, stage, check every hash, then publish atomically."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from torchdepot.store import manifest as mf
from torchdepot.errors import IntegrityError, UnsafePathError
from torchdepot.store.fsutil import MirrorLock, safe_join, sha256_file
from torchdepot.store.pages import INDEX_LINK, install_generation, new_build_dir
from torchdepot.ship.bundle.model import (BUNDLE_MANIFEST, BundleError, BundleFile, CHUNK, FORMAT, ROLES, UnbundleReport, VERSION, ZSTD_MAGIC)


# ---------------------------------------------------------------- reading

def bundle_parts(path: Path) -> list[Path]:
    """``FILE`` -> [FILE], or its split parts [FILE.000, FILE.001, ...] (also given FILE.000)."""
    path = Path(path)
    m = re.fullmatch(r"(.*)\.(\d{3})", path.name)
    if path.is_file() and not m:
        return [path]
    base = path.with_name(m.group(1)) if m else path
    parts = []
    i = 0
    while (p := base.with_name(f"{base.name}.{i:03d}")).is_file():
        parts.append(p)
        i += 1
    if not parts:
        if path.is_file():
            return [path]
        raise BundleError(f"{path}: no such bundle (nor {base.name}.000 parts)")
    return parts


class _JoinedReader(io.RawIOBase):
    def __init__(self, parts: list[Path], bar):
        self.parts = list(parts)
        self.fh = None
        self.bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self.fh is None:
                if not self.parts:
                    return 0
                self.fh = open(self.parts.pop(0), "rb")
            n = self.fh.readinto(b)
            if n:
                self.bar.update(n)
                return n
            self.fh.close()
            self.fh = None

    def close(self) -> None:
        if self.fh:
            self.fh.close()
        super().close()


def _check_member_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        raise UnsafePathError(f"bundle member {name!r}: absolute or unsafe path refused")
    norm = posixpath.normpath(name)
    parts = norm.split("/")
    if ".." in parts or norm.startswith("."):
        raise UnsafePathError(f"bundle member {name!r}: path outside the destination refused")
    if parts[0] in (".torchdepot", ".publish") or any(p.startswith(".") for p in parts):
        raise UnsafePathError(f"bundle member {name!r}: hidden/state path refused")
    return norm


def _kind(m: tarfile.TarInfo) -> str:
    return {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}.get(m.type, f"type {m.type!r}")


def _parse_doc(data: bytes) -> tuple[dict, mf.Manifest]:
    """-> (bundle manifest, the mirror-manifest subset it carries), both checked."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise BundleError(f"{BUNDLE_MANIFEST}: not a torchdepot bundle v{VERSION}")
        for f in doc["files"]:
            BundleFile(**f)
        return doc, mf.Manifest.from_json(json.dumps(doc["manifest"]), f"{BUNDLE_MANIFEST}: manifest")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{BUNDLE_MANIFEST}: malformed ({exc})") from None


def _extract(parts: list[Path], staging: Path) -> tuple[dict, mf.Manifest, dict[str, tuple[str, int]]]:
    """Stream the archive into ``staging``; -> (bundle manifest, its manifest subset, {path: (sha256, size)})."""
    received: dict[str, tuple[str, int]] = {}
    doc = sub = None
    total = sum(p.stat().st_size for p in parts)
    with tqdm(total=total, unit="B", unit_scale=True, desc="unbundle", disable=None) as bar:
        raw = io.BufferedReader(_JoinedReader(parts, bar), CHUNK)
        src = raw
        if raw.peek(4)[:4] == ZSTD_MAGIC:
            import zstandard

            src = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            with tarfile.open(fileobj=src, mode="r|") as tar:
                for member in tar:
                    if member.isdir():
                        _check_member_name(member.name)
                        continue
                    if not member.isreg():
                        raise UnsafePathError(f"bundle member {member.name!r}: {_kind(member)} refused (regular files only)")
                    if member.name == BUNDLE_MANIFEST:
                        doc, sub = _parse_doc(tar.extractfile(member).read())
                        continue
                    if doc is not None:
                        raise BundleError(f"{member.name}: member after {BUNDLE_MANIFEST} (bundle altered)")
                    name = _check_member_name(member.name)
                    if name in received:
                        raise BundleError(f"{name}: appears twice in the bundle")
                    dest = safe_join(staging, name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    n = 0
                    fin = tar.extractfile(member)
                    with open(dest, "wb") as out:
                        while chunk := fin.read(CHUNK):
                            h.update(chunk)
                            n += len(chunk)
                            out.write(chunk)
                    received[name] = (h.hexdigest(), n)
        except tarfile.TarError as exc:
            raise BundleError(f"{parts[0]}: not a readable bundle ({exc}); truncated or a part missing?") from None
        except Exception as exc:
            if type(exc).__module__.startswith("zstd") or "zstd" in type(exc).__name__.lower():
                raise BundleError(f"{parts[0]}: corrupt zstd stream ({exc})") from None
            raise
    if doc is None:
        raise BundleError(f"{parts[0]}: no {BUNDLE_MANIFEST} at the end (truncated bundle or missing part?)")
    return doc, sub, received


def _same_file(path: Path, sha: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
    except OSError:
        return False
    return sha256_file(path)[0] == sha


def _verify(listed: dict[str, dict], sub: mf.Manifest, received: dict[str, tuple[str, int]], dest: Path,
            existing: mf.Manifest | None) -> None:
    for path in sorted(received):
        if path not in listed:
            raise IntegrityError(f"{path}: in the bundle but not in its manifest (bundle altered); nothing published")
    for path, f in sorted(listed.items()):
        if path not in received:
            raise IntegrityError(f"{path}: listed in the bundle manifest but missing from the archive; nothing published")
        sha, size = received[path]
        if size != f["size"] or sha != f["sha256"]:
            raise IntegrityError(f"{path}: sha256 {sha} (size {size}) does not match the bundle manifest "
                                 f"({f['sha256']}, size {f['size']}): bundle tampered or corrupted; nothing published")
    have = existing.by_path() if existing else {}
    for e in sub.files:
        if e.path in listed:
            if listed[e.path]["sha256"] != e.sha256:
                raise IntegrityError(f"{e.path}: bundle manifest and mirror manifest disagree; nothing published")
            continue
        # incremental bundle: the destination must already hold this exact file
        old = have.get(e.path)
        target = safe_join(dest, e.path)
        if old is None or old.sha256 != e.sha256 or not target.is_file() or target.stat().st_size != e.size:
            raise IntegrityError(f"{e.path}: the bundle is incremental and expects this file in {dest}, "
                                 "which lacks it (bundle again with --since <this mirror's manifest.json>)")
    for path, f in listed.items():
        if f["role"] == "file":
            target = safe_join(dest, path)
            if target.exists() and not _same_file(target, f["sha256"], f["size"]):
                raise IntegrityError(f"{path}: {dest} already has a different file under this name; "
                                     "refusing to replace a mirrored package (nothing published)")


def merge_manifests(old: mf.Manifest | None, new: mf.Manifest) -> mf.Manifest:
    """Union: files by path and targets by (kind, id); the bundle's entries win."""
    if old is None:
        return new
    files = {f.path: f for f in old.files}
    files.update({f.path: f for f in new.files})
    targets = {(t.kind, t.id): t for t in old.targets}
    targets.update({(t.kind, t.id): t for t in new.targets})
    return mf.Manifest(files=list(files.values()), targets=list(targets.values()), spec=new.spec or old.spec)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _publish_whl(staging: Path, dest: Path, paths: list[str]) -> None:
    """Overlay the bundle's whl/ pages on the current ones as a new generation; one rename swaps it."""
    link = dest / "whl"
    if link.exists() and not link.is_symlink():  # a plain directory: replace page by page
        for p in paths:
            _move(staging / p, safe_join(dest, p))
        return
    gen = f"unbundle-{time.time_ns()}"
    build = new_build_dir(dest, gen)
    tree = build / INDEX_LINK
    if link.is_dir():
        shutil.copytree(link.resolve(), tree, symlinks=False)
    tree.mkdir(parents=True, exist_ok=True)
    for p in paths:
        _move(staging / p, safe_join(tree, p[len("whl/"):]))
    install_generation(dest, build, gen)


def unbundle(bundle: Path, dest: Path) -> UnbundleReport:
    """Check and merge a bundle into ``dest`` (created if needed). Nothing is visible unless all checks pass."""
    parts = bundle_parts(bundle)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with MirrorLock(dest):
        state = dest / ".torchdepot"
        state.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="unbundle-", dir=state))
        try:
            doc, sub, received = _extract(parts, staging)
            existing = mf.load(dest) if (dest / mf.MANIFEST_NAME).exists() else None
            listed = {f["path"]: f for f in doc["files"]}
            _verify(listed, sub, received, dest, existing)
            report = UnbundleReport(incremental=bool(doc.get("incremental")), targets=list(doc.get("targets", [])))
            # files first, then locks, then indexes (repodata, targets/, whl/ swap), manifest last
            for role in ROLES:
                whl_pages = []
                for path in sorted(p for p, f in listed.items() if f["role"] == role):
                    target = safe_join(dest, path)
                    if role == "file" and target.exists():
                        report.unchanged.append(path)  # identical (checked in _verify)
                        continue
                    if role == "index" and path.startswith("whl/"):
                        whl_pages.append(path)
                        continue
                    _move(staging / path, target)
                    report.published.append(path)
                if whl_pages:
                    _publish_whl(staging, dest, whl_pages)
                    report.published += whl_pages
            merged = merge_manifests(existing, sub)
            mf.save(dest, merged)
            _write_landing(dest, merged)
            return report
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _write_landing(root: Path, manifest: mf.Manifest) -> None:
    from torchdepot.site.landing import write_landing

    write_landing(root, manifest)
