"""Filesystem safety: atomic writes, paths that cannot escape a root, one writer per mirror."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import posixpath
import re
import tempfile
import time
from pathlib import Path

from torchdepot.errors import LockedError, UnsafePathError
from torchdepot.model.names import (
    safe_filename as safe_filename,  # re-exported: the store's callers use it from here
)
from torchdepot.store.layout import LOCK_FILE, atomic_temp_affixes


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = atomic_temp_affixes(path.name)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def safe_join(root: Path, *parts: str) -> Path:
    """Join relative POSIX parts under ``root``; raise if the result would leave it."""
    root = Path(root).resolve()
    rel = posixpath.join(*parts) if parts else ""
    if "\\" in rel or "\x00" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise UnsafePathError(f"unsafe path {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise UnsafePathError(f"path {rel!r} escapes {root}")
    out = (root / norm).resolve() if norm != "." else root
    if out != root and root not in out.parents:
        raise UnsafePathError(f"path {rel!r} escapes {root}")
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


class MirrorLock:
    """An exclusive ``flock`` on ``<root>/.torchdepot.lock``: never two writers.

    ``wait=None`` fails at once with :class:`LockedError`; a number waits that long.
    The kernel drops the lock when the process dies, so a SIGKILLed run never wedges it.
    """

    def __init__(self, root: Path, wait: float | None = None):
        self.path = Path(root) / LOCK_FILE
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> MirrorLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
