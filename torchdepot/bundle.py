"""Bundles for sneakernet: part of a mirror + its indexes + lockfiles in one tar (or zstd tar),
optionally split into parts, and the checked, atomic way back in.

Archive layout (tar, PAX): package files first, then indexes/locks, then the bundle manifest
``torchdepot-bundle.json`` LAST (its hashes are computed while the files stream in, so nothing
is read twice and the archive is never held in memory). The bundle manifest lists every
member's path, size, sha256 and role, the mirror spec, and the subset of ``manifest.json``
the bundle describes.

Unbundle never trusts the archive: members must be regular files with safe relative names
(no absolute paths, ``..``, links or devices); everything is extracted into a staging dir
inside the destination and EVERY hash is checked before the first file becomes visible.
Then files move in by ``os.replace`` (packages first, indexes and ``manifest.json`` last;
``whl/`` as a fresh ``.publish/<gen>/whl`` generation swapped in by one symlink rename), so
a reader never sees an index pointing at a missing file.
"""

from __future__ import annotations

import contextlib
import glob
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import __version__
from . import manifest as mf
from .errors import IntegrityError, TorchdepotError, UnsafePathError
from .fsutil import MirrorLock, fsync_dir, safe_join, sha256_file

BUNDLE_MANIFEST = "torchdepot-bundle.json"
FORMAT = "torchdepot-bundle"
VERSION = 1
CHUNK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ROLES = ("file", "lock", "index")  # publish order on unbundle
_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*")


class BundleError(TorchdepotError):
    """A bundle that cannot be written or read (truncated, tampered, unsafe)."""


@dataclass(frozen=True)
class BundleFile:
    path: str  # archive path == path under the mirror root (envs/<id>/... for locks)
    size: int
    sha256: str
    role: str  # "file" (packages, conda packages) | "lock" (envs/) | "index" (whl/, repodata, targets/)


@dataclass(frozen=True)
class PlannedFile:
    path: str
    source: Path
    role: str
    expect_sha256: str | None = None  # manifest.json's record, checked while streaming


@dataclass
class BundlePlan:
    files: list[PlannedFile]
    manifest: mf.Manifest  # the subset of manifest.json this bundle carries
    target_ids: list[str]
    since: str | None = None
    skipped: int = 0  # files the other side already has (--since)

    @property
    def total_bytes(self) -> int:
        return sum(f.source.stat().st_size for f in self.files)


@dataclass
class UnbundleReport:
    published: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    incremental: bool = False
    targets: list[str] = field(default_factory=list)


def parse_size(text: str) -> int:
    """``4G`` / ``700M`` / ``4GiB`` / ``1000`` -> bytes (binary multiples)."""
    m = _SIZE.fullmatch(text or "")
    if not m:
        raise BundleError(f"--split {text!r}: not a size (e.g. 4G, 700M, 1048576)")
    n = float(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())
    if n < 1:
        raise BundleError(f"--split {text!r}: must be at least 1 byte")
    return int(n)


# ---------------------------------------------------------------- selection

def _walk_files(top: Path, rel_prefix: str) -> list[tuple[str, Path]]:
    out = []
    if not top.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(top):  # follows the top symlink (whl/), not inner ones
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if not p.is_file():
                continue
            rel = posixpath.normpath(posixpath.join(rel_prefix, "" if rel_dir == "." else rel_dir.replace(os.sep, "/"), name))
            out.append((rel, p))
    return out


def plan_bundle(root: Path, targets: list[str] | None = None, envs: Path | None = None,
                since: Path | None = None) -> BundlePlan:
    """Choose what goes in: the targets' files + their indexes + conda repodata + locks."""
    root = Path(root)
    m = mf.load(root)
    known = sorted({t.id for t in m.targets})
    if targets:
        missing = [t for t in targets if t not in known]
        if missing:
            raise BundleError(f"target {missing[0]!r} is not in {root / mf.MANIFEST_NAME} (has: {', '.join(known) or 'none'})")
        chosen = [t for t in m.targets if t.id in set(targets)]
    else:
        chosen = list(m.targets)
    ids = sorted({t.id for t in chosen})
    by_path = m.by_path()
    if targets:
        wanted: set[str] = set()
        for t in chosen:
            for p in t.packages:
                wanted.add(p.path)
                if p.path + ".metadata" in by_path:
                    wanted.add(p.path + ".metadata")
        entries = [by_path[p] for p in sorted(wanted) if p in by_path]
        lost = sorted(wanted - set(by_path))
        if lost:
            raise BundleError(f"{root / mf.MANIFEST_NAME}: target file {lost[0]!r} is not listed in files")
    else:
        entries = sorted(m.files, key=lambda f: f.path)
    have: dict[str, str] = {}
    if since is not None:
        other = mf.Manifest.from_json(Path(since).read_text(encoding="utf-8"), str(since))
        have = {f.path: f.sha256 for f in other.files}
    files: list[PlannedFile] = []
    skipped = 0
    for e in entries:
        if have.get(e.path) == e.sha256:
            skipped += 1
            continue
        src = safe_join(root, e.path)
        if not src.is_file():
            raise BundleError(f"{e.path}: listed in {mf.MANIFEST_NAME} but missing from {root}")
        files.append(PlannedFile(e.path, src, "file", e.sha256))

    index: list[tuple[str, Path]] = []
    pip_indexes = sorted({t.index for t in chosen if t.kind == "pip" and t.index})
    if targets:
        for ix in pip_indexes:
            index += _walk_files(safe_join(root, ix), ix)
        if (root / "whl" / "index.html").is_file():
            index.append(("whl/index.html", root / "whl" / "index.html"))
    else:
        index += _walk_files(root / "whl", "whl")
    for t in chosen:
        if t.kind == "conda" and t.channel:
            for subdir in sorted({t.subdir or "noarch", "noarch"}):
                d = safe_join(root, t.channel, subdir)
                for name in sorted(os.listdir(d)) if d.is_dir() else []:
                    if name.startswith(("repodata", "channeldata")) or name == "index.html":
                        index.append((f"{t.channel}/{subdir}/{name}", d / name))
            ch = safe_join(root, t.channel)
            if (ch / "channeldata.json").is_file():
                index.append((f"{t.channel}/channeldata.json", ch / "channeldata.json"))
    for tid in ids:
        index += _walk_files(safe_join(root, "targets", tid), f"targets/{tid}")
    locks: list[tuple[str, Path]] = []
    if envs is not None:
        for tid in ids:
            locks += _walk_files(Path(envs) / tid, f"envs/{tid}")
    seen: set[str] = {f.path for f in files}
    for role, group in (("lock", locks), ("index", index)):
        for rel, src in group:
            if rel not in seen:
                seen.add(rel)
                files.append(PlannedFile(rel, src, role))
    subset = mf.Manifest(files=entries, targets=chosen, spec=m.spec)
    return BundlePlan(files=files, manifest=subset, target_ids=ids,
                      since=str(since) if since else None, skipped=skipped)


# ---------------------------------------------------------------- writing

class _PartWriter(io.RawIOBase):
    """A write-only stream into ``out`` or, with ``split``, ``out.000``, ``out.001``...

    Parts are written as ``*.part`` and renamed only when the whole bundle succeeded.
    """

    def __init__(self, out: Path, split: int | None):
        self.out, self.split = Path(out), split
        self.parts: list[Path] = []
        self.fh = None
        self.left = 0
        self._open_next()

    def writable(self) -> bool:
        return True

    def _final(self, i: int) -> Path:
        return self.out if self.split is None else self.out.with_name(f"{self.out.name}.{i:03d}")

    def _open_next(self) -> None:
        if self.fh:
            self.fh.close()
        final = self._final(len(self.parts))
        tmp = final.with_name(final.name + ".part")
        self.parts.append(tmp)
        self.fh = open(tmp, "wb")
        self.left = self.split or -1

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        while len(view):
            if self.split is not None and self.left == 0:
                self._open_next()
            take = len(view) if self.split is None else min(len(view), self.left)
            self.fh.write(view[:take])
            view = view[take:]
            if self.split is not None:
                self.left -= take
        return n

    def commit(self) -> list[Path]:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        finals = []
        for i, tmp in enumerate(self.parts):
            final = self._final(i)
            os.replace(tmp, final)
            finals.append(final)
        if self.split is not None:  # stale parts of an older, bigger bundle would be joined in
            for stale in self.out.parent.glob(f"{glob.escape(self.out.name)}.[0-9][0-9][0-9]"):
                if int(stale.name[-3:]) >= len(self.parts):
                    stale.unlink()
        fsync_dir(self.out.parent)
        return finals

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.fh.close()
        for tmp in self.parts:
            with contextlib.suppress(OSError):
                tmp.unlink()


class _HashingReader(io.RawIOBase):
    def __init__(self, fh, bar):
        self.fh, self.bar = fh, bar
        self.h = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def read(self, size=-1) -> bytes:
        data = self.fh.read(size)
        self.h.update(data)
        self.n += len(data)
        self.bar.update(len(data))
        return data


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.type = size, int(mtime), 0o644, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_bundle(plan: BundlePlan, out: Path, zstd: bool = False, split: int | None = None,
                 level: int = 3) -> tuple[list[Path], dict]:
    """Stream the plan into ``out`` (parts if ``split``); -> (files written, bundle manifest)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink = _PartWriter(out, split)
    records: list[BundleFile] = []
    try:
        comp = None
        stream = sink
        if zstd:
            import zstandard

            comp = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True).stream_writer(sink, closefd=False)
            stream = comp
        with tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc="bundle", disable=None) as bar:
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for pf in plan.files:
                    with open(pf.source, "rb") as fh:
                        st = os.fstat(fh.fileno())
                        reader = _HashingReader(fh, bar)
                        tar.addfile(_tarinfo(pf.path, st.st_size, st.st_mtime), reader)
                    sha = reader.h.hexdigest()
                    if pf.expect_sha256 and sha != pf.expect_sha256:
                        raise IntegrityError(f"{pf.path}: sha256 {sha} differs from {mf.MANIFEST_NAME} "
                                             f"({pf.expect_sha256}); the mirror is damaged, re-run 'torchdepot mirror'")
                    records.append(BundleFile(pf.path, reader.n, sha, pf.role))
                doc = {
                    "format": FORMAT,
                    "version": VERSION,
                    "created_by": f"torchdepot {__version__}",
                    "created": int(time.time()),
                    "targets": plan.target_ids,
                    "incremental": plan.since is not None,
                    "spec": plan.manifest.spec,
                    "files": [asdict(r) for r in records],
                    "manifest": json.loads(plan.manifest.to_json()),
                }
                data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
                tar.addfile(_tarinfo(BUNDLE_MANIFEST, len(data), time.time()), io.BytesIO(data))
        if comp is not None:
            comp.flush(zstandard.FLUSH_FRAME)
            comp.close()
        return sink.commit(), doc
    except BaseException:
        sink.abort()
        raise


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


def _parse_doc(data: bytes) -> dict:
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise BundleError(f"{BUNDLE_MANIFEST}: not a torchdepot bundle v{VERSION}")
        for f in doc["files"]:
            BundleFile(**f)
        mf.Manifest.from_json(json.dumps(doc["manifest"]), f"{BUNDLE_MANIFEST}: manifest")
        return doc
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{BUNDLE_MANIFEST}: malformed ({exc})") from None


def _extract(parts: list[Path], staging: Path) -> tuple[dict, dict[str, tuple[str, int]]]:
    """Stream the archive into ``staging``; -> (bundle manifest, {path: (sha256, size)})."""
    received: dict[str, tuple[str, int]] = {}
    doc = None
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
                        doc = _parse_doc(tar.extractfile(member).read())
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
    return doc, received


def _same_file(path: Path, sha: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
    except OSError:
        return False
    return sha256_file(path)[0] == sha


def _verify(doc: dict, received: dict[str, tuple[str, int]], dest: Path, existing: mf.Manifest | None) -> None:
    listed = {f["path"]: f for f in doc["files"]}
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
    sub = mf.Manifest.from_json(json.dumps(doc["manifest"]), BUNDLE_MANIFEST)
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
    tree = dest / ".publish" / gen / "whl"
    if link.is_dir():
        shutil.copytree(link.resolve(), tree, symlinks=False)
    tree.mkdir(parents=True, exist_ok=True)
    for p in paths:
        _move(staging / p, safe_join(tree, p[len("whl/"):]))
    tmp = dest / f".whl.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f".publish/{gen}/whl", tmp)
    os.replace(tmp, link)
    fsync_dir(dest)


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
            doc, received = _extract(parts, staging)
            existing = mf.load(dest) if (dest / mf.MANIFEST_NAME).exists() else None
            _verify(doc, received, dest, existing)
            report = UnbundleReport(incremental=bool(doc.get("incremental")), targets=list(doc.get("targets", [])))
            listed = {f["path"]: f for f in doc["files"]}
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
            merged = merge_manifests(existing, mf.Manifest.from_json(json.dumps(doc["manifest"]), BUNDLE_MANIFEST))
            mf.save(dest, merged)
            _write_landing(dest, merged)
            return report
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _write_landing(root: Path, manifest: mf.Manifest) -> None:
    try:
        from .landing import write_landing
    except ImportError:
        return
    write_landing(root, manifest)
