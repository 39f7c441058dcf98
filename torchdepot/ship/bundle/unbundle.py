"""Reading a bundle back: refuse unsafe members, stage (bounded by what the bundle declares),
check everything, then publish in one transaction.

Order: (1) every member is streamed into ``.torchdepot/stage-unbundle-*`` under the mirror
lock, never more bytes than the head declares (or ``MAX_EXPANSION`` x the archive without a
head); (2) every check runs: hashes, roles against paths, conflicts with the mirror, the
incremental base, and the new manifest, landing page and ``whl/`` generation are built in
staging; (3) only then the commit, journaled like a sync's (``docs/publication.md``): the new
package paths are recorded in ``.torchdepot/publish.json`` first, then each goes in with
``os.replace`` (a file it replaces kept as a hard link in staging); the manifest is widened
with them before any index changes; then the index files (``whl`` swapped by one symlink
rename), the locks, the landing page and the merged ``manifest.json`` last. A SIGKILL at any
point leaves a mirror whose manifest lists every file a live page names: the old state plus
journaled ("staged") leftovers, or the new one; the next unbundle or ``verify-mirror
--repair`` converges. Any failure during the commit rolls every step back, so a late
failure publishes nothing. The next run removes the staging dir of a killed one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO

from tqdm import tqdm

from torchdepot.errors import IntegrityError, TorchdepotError, UnsafePathError
from torchdepot.ship.bundle.model import (
    BUNDLE_HEAD,
    BUNDLE_MANIFEST,
    CHUNK,
    EXPANSION_SLACK,
    MAX_DOC_BYTES,
    MAX_EXPANSION,
    ROLES,
    ZSTD_MAGIC,
    BundleDoc,
    BundleError,
    BundleFile,
    UnbundleReport,
    parse_doc,
    parse_head,
    role_of,
)
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import MirrorLock, fsync_dir, safe_join, sha256_file, writing
from torchdepot.store.outdir import check_out_dir

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
        self.fh: io.BufferedReader | None = None
        self.bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self.fh is None:
                if not self.parts:
                    return 0
                self.fh = open(self.parts.pop(0), "rb")  # noqa: SIM115 - read across readinto() calls, closed at its end
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
    if parts[0] in (L.STATE_DIR, L.PUBLISH_DIR) or any(p.startswith(".") for p in parts):
        raise UnsafePathError(f"bundle member {name!r}: hidden/state path refused")
    return norm


def _kind(m: tarfile.TarInfo) -> str:
    return {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}.get(m.type, f"type {m.type!r}")


def _read_doc(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_DOC_BYTES:
        raise BundleError(f"{member.name}: {member.size} bytes, more than a bundle document may hold")
    return _member_reader(tar, member).read()


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    fh = tar.extractfile(member)
    if fh is None:  # only for members that are not regular files, which are refused before
        raise BundleError(f"bundle member {member.name!r}: not a regular file")
    return fh


def _extract(parts: list[Path], staging: Path) -> tuple[BundleDoc, dict[str, tuple[str, int]]]:
    """Stream the archive into ``staging``; -> (bundle manifest, {path: (sha256, size)}).

    Bounded: with a head, a member must be declared there with its exact size before a byte
    of it is written and the members may not exceed the declared total; with or without one,
    they may not exceed the archive's size times ``MAX_EXPANSION`` (plus slack)."""
    received: dict[str, tuple[str, int]] = {}
    doc: BundleDoc | None = None
    declared: dict[str, BundleFile] | None = None
    total = sum(p.stat().st_size for p in parts)
    budget = total * MAX_EXPANSION + EXPANSION_SLACK
    staged = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="unbundle", disable=None) as bar:
        raw = io.BufferedReader(_JoinedReader(parts, bar), CHUNK)
        src: IO[bytes] = raw
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
                    if member.name == BUNDLE_HEAD:
                        if declared is not None or received:
                            raise BundleError(f"{BUNDLE_HEAD}: not the first member (bundle altered)")
                        declared = {f.path: f for f in parse_head(_read_doc(tar, member))}
                        budget = min(budget, sum(f.size for f in declared.values()))
                        continue
                    if member.name == BUNDLE_MANIFEST:
                        doc = parse_doc(_read_doc(tar, member))
                        continue
                    if doc is not None:
                        raise BundleError(f"{member.name}: member after {BUNDLE_MANIFEST} (bundle altered)")
                    name = _check_member_name(member.name)
                    if name in received:
                        raise BundleError(f"{name}: appears twice in the bundle")
                    if declared is not None and (name not in declared or declared[name].size != member.size):
                        raise IntegrityError(f"{name}: not declared with this size ({member.size} bytes) in "
                                             f"{BUNDLE_HEAD} (bundle altered); nothing published")
                    staged += member.size
                    if staged > budget:
                        raise BundleError(f"{parts[0]}: expands past {budget} bytes, more than it declares "
                                          "(decompression bomb?); nothing published")
                    dest = safe_join(staging, name)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    h = hashlib.sha256()
                    n = 0
                    fin = _member_reader(tar, member)
                    with writing(dest), open(dest, "wb") as out:
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
    if declared is not None and {(f.path, f.size, f.role) for f in declared.values()} != \
            {(f.path, f.size, f.role) for f in doc.files}:
        raise IntegrityError(f"{BUNDLE_HEAD} and {BUNDLE_MANIFEST} disagree (bundle altered); nothing published")
    return doc, received


def _same_file(path: Path, sha: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
    except OSError:
        return False
    return sha256_file(path)[0] == sha


def _verify(doc: BundleDoc, received: dict[str, tuple[str, int]], dest: Path, existing: mf.Manifest | None) -> None:
    listed = {f.path: f for f in doc.files}
    for path in sorted(received):
        if path not in listed:
            raise IntegrityError(f"{path}: in the bundle but not in its manifest (bundle altered); nothing published")
    for path, f in sorted(listed.items()):
        if path not in received:
            raise IntegrityError(f"{path}: listed in the bundle manifest but missing from the archive; nothing published")
        sha, size = received[path]
        if size != f.size or sha != f.sha256:
            raise IntegrityError(f"{path}: sha256 {sha} (size {size}) does not match the bundle manifest "
                                 f"({f.sha256}, size {f.size}): bundle tampered or corrupted; nothing published")
        if role_of(path) != f.role:
            raise IntegrityError(f"{path}: labelled {f.role!r} but only a {role_of(path) or 'no'!r} member may live "
                                 "there (bundle altered); nothing published")
    have = existing.by_path() if existing else {}
    carried = {e.path for e in doc.manifest.files}
    for path, f in listed.items():
        if f.role == "file" and path not in carried:
            raise IntegrityError(f"{path}: a package the bundle's manifest does not describe (bundle altered); "
                                 "nothing published")
        if f.role != "file" and path in have:
            raise IntegrityError(f"{path}: the mirror lists it as a package; a bundle's {f.role} file may not "
                                 "replace it (nothing published)")
    for e in doc.manifest.files:
        if e.path in listed:
            if listed[e.path].sha256 != e.sha256 or listed[e.path].size != e.size:
                raise IntegrityError(f"{e.path}: bundle manifest and mirror manifest disagree; nothing published")
            continue
        # incremental bundle: the destination must already hold this exact file
        old = have.get(e.path)
        target = safe_join(dest, e.path)
        if old is None or old.sha256 != e.sha256 or not target.is_file() or target.stat().st_size != e.size:
            raise IntegrityError(f"{e.path}: the bundle is incremental and expects this file in {dest}, "
                                 "which lacks it (bundle again with --since <this mirror's manifest.json>)")
    for path, f in listed.items():
        if f.role == "file":
            target = safe_join(dest, path)
            if (target.exists() or target.is_symlink()) and not _same_file(target, f.sha256, f.size):
                raise IntegrityError(f"{path}: {dest} already has a different file under this name; "
                                     "refusing to replace a mirrored package (nothing published)")


def merge_manifests(old: mf.Manifest | None, new: mf.Manifest) -> mf.Manifest:
    """Union: files by path and targets by (kind, id); the bundle's entries win. The
    destination's own spec stays (its upstreams decide what ``verify-mirror --repair`` may
    fetch); a new mirror takes the bundle's."""
    if old is None:
        return new
    files = {f.path: f for f in old.files}
    files.update({f.path: f for f in new.files})
    targets = {(t.kind, t.id): t for t in old.targets}
    targets.update({(t.kind, t.id): t for t in new.targets})
    return mf.Manifest(files=list(files.values()), targets=list(targets.values()), spec=old.spec or new.spec)


def _without_local_urls(sub: mf.Manifest) -> mf.Manifest:
    """A bundle's ``file:`` URLs name paths of another machine: never kept (repair would read them)."""
    files = [dataclasses.replace(f, url=None) if f.url and f.url.lower().startswith("file:") else f for f in sub.files]
    return mf.Manifest(files=files, targets=sub.targets, spec=sub.spec)


class _Commit:
    """The publish step as a transaction: ``put`` moves a staged file in (what it replaces is
    kept as a hard link under ``<staging>/.undo``), ``link`` swaps a symlink; ``rollback``
    undoes every step in reverse, so a failure anywhere leaves the mirror as it was."""

    def __init__(self, dest: Path, staging: Path):
        self.dest, self.undo_dir = dest, staging / ".undo"
        self.steps: list[tuple[Path, Path | None, str | None]] = []  # (target, backup, old link target)

    def put(self, src: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = None
        if target.exists() and not target.is_symlink():
            backup = self.undo_dir / str(len(self.steps))
            backup.parent.mkdir(parents=True, exist_ok=True)
            os.link(target, backup)
        self.steps.append((target, backup, None))
        os.replace(src, target)

    def link(self, link: Path, to: str) -> None:
        old = os.readlink(link) if link.is_symlink() else None
        tmp = link.with_name(L.build_temp_name(link.name))
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(to, tmp)
        self.steps.append((link, None, old or ""))
        os.replace(tmp, link)

    def rollback(self) -> None:
        for target, backup, old_link in reversed(self.steps):
            with contextlib.suppress(OSError):
                if old_link is not None:
                    if old_link:
                        tmp = target.with_name(L.build_temp_name(target.name))
                        with contextlib.suppress(FileNotFoundError):
                            tmp.unlink()
                        os.symlink(old_link, tmp)
                        os.replace(tmp, target)
                    else:
                        target.unlink()
                elif backup is not None:
                    os.replace(backup, target)
                elif target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()

    def sync(self) -> None:
        for d in sorted({t.parent for t, _b, _l in self.steps}):
            fsync_dir(d)


def _prepare_whl(staging: Path, dest: Path, paths: list[str]) -> tuple[Path, str] | None:
    """Build the next ``whl/`` generation in staging: the live pages overlaid with the
    bundle's. -> (built tree, generation name), or None when ``whl`` is a plain directory
    (pages then go in one by one)."""
    link = dest / L.INDEX_LINK
    if link.exists() and not link.is_symlink():
        return None
    gen = f"unbundle-{time.time_ns()}"
    tree = staging / ".whl-build" / L.INDEX_LINK
    if link.is_dir():
        try:
            shutil.copytree(link.resolve(), tree, symlinks=False)
        except shutil.Error as exc:  # its message is a list of every (src, dst, why): say the first
            src_, dst_, why = exc.args[0][0]
            raise BundleError(f"{dst_}: cannot copy the live index page {src_} ({why}); nothing published") from None
    tree.mkdir(parents=True, exist_ok=True)
    for p in paths:
        target = safe_join(tree, p[len(L.INDEX_LINK) + 1:])
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / p, target)
    return tree.parent, gen


def _clean_stale_staging(dest: Path) -> None:
    """Staging dirs of killed runs (we hold the lock: no other run is using one)."""
    state = dest / L.STATE_DIR
    if state.is_dir():
        for p in state.iterdir():
            if L.stage_pid(p.name) is not None and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def unbundle(bundle: Path, dest: Path) -> UnbundleReport:
    """Check and merge a bundle into ``dest`` (created if needed). Nothing is visible unless all checks pass."""
    from torchdepot.site.landing import render as render_landing

    parts = bundle_parts(bundle)
    dest = Path(dest)
    check_out_dir(dest, what="unbundle --to")  # mirror's rules: never into $HOME or a dir of other files
    dest.mkdir(parents=True, exist_ok=True)
    with MirrorLock(dest):
        state = dest / L.STATE_DIR
        state.mkdir(exist_ok=True)
        _clean_stale_staging(dest)
        staging = Path(tempfile.mkdtemp(prefix=L.stage_prefix("unbundle"), dir=state))
        try:
            doc, received = _extract(parts, staging)
            existing = mf.load(dest) if (dest / mf.MANIFEST_NAME).exists() else None
            _verify(doc, received, dest, existing)
            report = UnbundleReport(incremental=doc.incremental, targets=list(doc.targets))
            # prepare everything that can fail before the first visible change
            moves: dict[str, list[tuple[Path, Path, str]]] = {role: [] for role in ROLES}  # (staged, target, path)
            whl_pages: list[str] = []
            for role in ROLES:
                for f in sorted((f for f in doc.files if f.role == role), key=lambda f: f.path):
                    target = safe_join(dest, f.path)
                    if role == "file" and target.exists():
                        report.unchanged.append(f.path)  # identical (checked in _verify)
                    elif role == "index" and f.path.startswith(L.INDEX_LINK + "/"):
                        whl_pages.append(f.path)
                    elif role == "index" and f.path.startswith(L.TARGETS_DIR + "/"):
                        moves["lock"].append((staging / f.path, target, f.path))  # pylock.toml: after the index
                    else:
                        moves[role].append((staging / f.path, target, f.path))
            whl = _prepare_whl(staging, dest, whl_pages) if whl_pages else None
            if whl_pages and whl is None:  # whl/ is a plain directory: its pages go in like the others
                moves["index"] += [(staging / p, safe_join(dest, p), p) for p in whl_pages]
            carried = _without_local_urls(doc.manifest)
            merged = merge_manifests(existing, carried)
            (staging / ".manifest").write_text(merged.to_json(), encoding="utf-8")
            # The widened manifest: what is live plus the new packages, minus what the bundle's index
            # files replace. Saved before any index goes live, so every state a kill can leave lists
            # every file a live page or repodata names (as a sync does, docs/publication.md).
            replaced = [f.path for f in doc.files if f.role != "file"]
            base = existing if existing is not None else dataclasses.replace(merged, files=[], targets=[])
            widened = pub.widened(base, [e for e in carried.files if role_of(e.path) == "file"], drop=replaced)
            (staging / ".widened").write_text(widened.to_json(), encoding="utf-8")
            (staging / ".landing").write_text(render_landing(merged, dest), encoding="utf-8")
            # Journaled before the first byte lands: a kill leaves them as the mirror's own "staged"
            # leftovers (never orphans), which the next run or verify-mirror --repair removes.
            new_paths = [path for _src, _target, path in moves["file"]]
            pub.record(dest, new_paths)
            commit = _Commit(dest, staging)
            try:
                for src, target, path in moves["file"]:
                    commit.put(src, target)
                    report.published.append(path)
                commit.put(staging / ".widened", dest / mf.MANIFEST_NAME)
                for src, target, path in moves["index"]:  # conda repodata, a plain whl/ dir's pages
                    commit.put(src, target)
                    report.published.append(path)
                if whl is not None:
                    build, gen = whl
                    gen_dir = dest / L.PUBLISH_DIR / gen
                    gen_dir.parent.mkdir(parents=True, exist_ok=True)
                    commit.put(build, gen_dir)
                    commit.link(dest / L.INDEX_LINK, f"{L.PUBLISH_DIR}/{gen}/{L.INDEX_LINK}")
                    report.published += whl_pages
                for src, target, path in moves["lock"]:  # locks name the new files: after the index
                    commit.put(src, target)
                    report.published.append(path)
                commit.put(staging / ".landing", dest / L.LANDING_NAME)
                commit.put(staging / ".manifest", dest / mf.MANIFEST_NAME)  # the commit point
                commit.sync()
            except BaseException:
                commit.rollback()
                with contextlib.suppress(OSError, TorchdepotError):
                    pub.forget(dest, [p for p in new_paths if not os.path.lexists(dest / p)])
                raise
            # listed now, with any a killed run left (found identical above, so "unchanged" this time)
            pub.forget(dest, [f.path for f in doc.files if f.role == "file"])
            return report
        finally:
            shutil.rmtree(staging, ignore_errors=True)
