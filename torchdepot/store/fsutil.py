"""Filesystem safety: atomic writes, paths that cannot escape a root, one writer per mirror.

Invariants: a path :func:`safe_join` returns lies under its root (a symlink on the way is
followed and checked); a path the tool owns under a mirror root is never a symlink
(:func:`refuse_planted_links`, run by :class:`MirrorLock` before any write); the lock file
is opened without following links."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from torchdepot.errors import DiskFullError, LockedError, UnsafePathError
from torchdepot.model.names import (
    safe_filename as safe_filename,  # re-exported: the store's callers use it from here
)
from torchdepot.store.layout import (
    INDEX_LINK,
    LOCK_FILE,
    OWN_PATHS,
    PUBLISH_DIR,
    atomic_temp_affixes,
)

_DRIVE = re.compile(r"^[A-Za-z]:")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Name ``path`` when the disk is full: a failed ``write()`` carries no file name, so
    ENOSPC / EDQUOT inside the block become one :class:`DiskFullError` line naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
        raise DiskFullError(f"{path}: {what}; free some space and re-run") from None


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one, never half.
    ``fsync=False``: a file derived from others (re-made by the next sync if a power loss
    leaves it short) skips the disk flushes, which cost milliseconds each."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix, suffix = atomic_temp_affixes(path.name)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def _lexical_rel(root: Path | str, parts: tuple[str, ...]) -> str:
    """``parts`` joined and normalised, refused when absolute, unsafe or escaping ``root`` by ``..``."""
    rel = posixpath.join(*parts) if parts else ""
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or _DRIVE.match(rel):
        raise UnsafePathError(f"unsafe path {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise UnsafePathError(f"path {rel!r} escapes {root}")
    return norm


def safe_join(root: Path | str, *parts: str) -> Path:
    """Join relative POSIX parts under ``root``; raise if the result would leave it.

    Lexical checks first (no ``..``, nothing absolute), then one ``lstat`` per component
    below ``root`` (stopping at the first that does not exist): while no component is a
    symlink the path cannot leave the root, and the realpath check (two resolves, the
    expensive part) runs only when one is. The root itself is the caller's choice and may
    be a symlink; the result is absolute (``root`` made absolute, symlinks not resolved).
    """
    norm = _lexical_rel(root, parts)
    base = os.path.abspath(root)
    if norm == ".":
        return Path(base)
    cur = base
    for name in norm.split("/"):
        cur = f"{cur}/{name}"
        try:
            mode = os.lstat(cur).st_mode
        except (FileNotFoundError, NotADirectoryError):
            break  # nothing below exists: nothing there can redirect the path
        if stat.S_ISLNK(mode):
            return _resolved_join(Path(base), norm)
    return Path(f"{base}/{norm}")


def _resolved_join(root: Path, norm: str) -> Path:
    """The slow path of :func:`safe_join`: a symlink lies on the way, follow it and check where it lands."""
    real_root = root.resolve()
    out = (real_root / norm).resolve()
    if out != real_root and real_root not in out.parents:
        raise UnsafePathError(f"path {norm!r} escapes {root} (through a symlink)")
    return out


def sha256_file(path: Path, bufsize: int = 1024 * 1024) -> tuple[str, int]:
    """-> (hex sha256, size), streaming (constant memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def refuse_planted_links(root: Path | str) -> None:
    """Raise UnsafePathError (one line naming it) when a path the tool writes under ``root``
    is a symlink: ``.torchdepot`` and what lies in it, ``.publish`` and its generations,
    ``packages``, ``targets``, ``manifest.json``, the lock file... (:data:`layout.OWN_PATHS`),
    or when ``whl`` is a symlink that does not name a generation ``.publish/<gen>/whl``.

    Every writer (and ``verify-mirror``) runs it before its first write, under the lock, so
    no state, staging, partial download or index is ever written through a planted link.
    Only reads (lstat, readlink, one listing of ``.publish``)."""
    base = os.path.abspath(root)
    for rel in OWN_PATHS:
        path = f"{base}/{rel}"
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISLNK(mode):
            raise UnsafePathError(f"{path}: a symlink where torchdepot keeps its own {rel}; refusing to follow "
                                  "it (remove the link and re-run)")
    pub = f"{base}/{PUBLISH_DIR}"
    if os.path.isdir(pub):
        with os.scandir(pub) as entries:
            for entry in entries:
                if entry.is_symlink():
                    raise UnsafePathError(f"{entry.path}: a symlink among the index generations; refusing to "
                                          "follow it (remove the link and re-run)")
    link = f"{base}/{INDEX_LINK}"
    if os.path.islink(link):
        to = os.readlink(link)
        parts = to.split("/")
        if not (len(parts) == 3 and parts[0] == PUBLISH_DIR and parts[2] == INDEX_LINK
                and parts[1] not in ("", ".", "..")):
            raise UnsafePathError(f"{link}: a symlink to {to!r}, not to an index generation "
                                  f"{PUBLISH_DIR}/<gen>/{INDEX_LINK}; refusing to follow it (remove the link)")


def _open_nofollow(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: a symlink where torchdepot keeps its lock file; refusing to follow "
                                  "it (remove the link and re-run)") from None
        raise


class MirrorLock:
    """An exclusive ``flock`` on ``<root>/.torchdepot.lock``: never two writers.

    ``wait=None`` fails at once with :class:`LockedError`; a number waits that long.
    The kernel drops the lock when the process dies, so a SIGKILLed run never wedges it.
    The lock file is opened without following symlinks, and the root's own paths are checked
    for planted links first (:func:`refuse_planted_links`). ``read_only``: a check that
    writes nothing (``verify-mirror`` without ``--repair``) runs on a full or read-only disk:
    it takes the lock on the existing file without writing its pid, and goes on unlocked
    when the file cannot even be created (no writer can be at work there).
    """

    def __init__(self, root: Path, wait: float | None = None, *, read_only: bool = False):
        self.path = Path(root) / LOCK_FILE
        self.wait = wait
        self.read_only = read_only
        self.fd: int | None = None

    def __enter__(self) -> MirrorLock:
        refuse_planted_links(self.path.parent)
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = _open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if not (self.read_only and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)):
                raise
            try:
                fd = _open_nofollow(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return self  # nothing can be writing a mirror on a disk that cannot take an empty file
        deadline = None if self.wait is None else time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if deadline is None or time.monotonic() >= deadline:
                    holder = ""
                    with contextlib.suppress(OSError):
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    hint = f" (pid {holder})" if holder else ""
                    waited = "" if self.wait is None else f" after waiting {self.wait:g}s"
                    raise LockedError(
                        f"{self.path.parent}: another torchdepot run is writing this mirror{hint}{waited}; "
                        "use --wait SECONDS to queue behind it"
                    ) from None
                time.sleep(0.1)
        if not self.read_only:
            # The pid is a hint for the "locked" message only: a full disk must not stop the run here.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            if not self.read_only:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
