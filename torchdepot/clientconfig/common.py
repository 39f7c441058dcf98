"""Shared I/O and checks for the config writers: read, diff, back up, replace atomically.

Invariants, for a user's config file (pip.conf, uv.toml, .condarc):

- **Nothing is lost.** The previous bytes go to ``<name>.bak-<stamp>`` (never overwriting an
  earlier backup); the new file replaces the old atomically (a crash leaves one or the other).
- **The file stays the user's.** Owner, group and mode of the file carry over to the new file
  and to its backup, so ``sudo torchdepot config ...`` with HOME kept never hands a user's
  pip.conf to root. A new file (and any directory made for it) takes the owner of the nearest
  existing directory above it.
- **Symlinks are written through** (a dotfiles repo's link stays a link; its target changes);
  the backup sits next to the name the user gave.
- **A read-only file is refused** with one line, even for root.
- **Line endings and a UTF-8 BOM are kept**: writers see LF text; CRLF files get CRLF back
  (the backup is the old bytes, untouched).
- **Every value written is checked first** (:func:`check_value`, :func:`check_url`,
  :func:`check_name`): no control characters or whitespace, so nothing a user passes can add a
  line (a setting) to the file.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import stat
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError


class ConfigFileError(TorchdepotError):
    """An existing client config file we cannot parse or may not write; it is left untouched."""


class ConfigValueError(TorchdepotError):
    """A value for a config file (URL, variant, channel) that is malformed or not on the mirror."""


@dataclass(frozen=True)
class FileChange:
    """One file a writer wants: its exact text before (None: absent) and after."""

    path: Path  # as the user names it (may be a symlink)
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class Plan:
    """What a ``config`` command would do: files to write, equivalent env vars, notes."""

    changes: tuple[FileChange, ...]
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)


# --- reading and text transforms --------------------------------------------------------

def read_existing(path: Path) -> str | None:
    """The file's exact text (no newline translation), or None when it does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text; left untouched") from None


_BOM = "\ufeff"


def _style(old: str | None) -> tuple[str, bool, str]:
    """(BOM, all-CRLF?, LF body) of a file's text."""
    text = old or ""
    bom = _BOM if text.startswith(_BOM) else ""
    body = text[len(bom):]
    crlf = "\r\n" in body and body.count("\r\n") == body.count("\n")
    return bom, crlf, body.replace("\r\n", "\n") if crlf else body


def logical(old: str | None) -> str:
    """The text a writer sees: no BOM, LF line endings when the file is all CRLF."""
    return _style(old)[2]


def edit_text(old: str | None, fn: Callable[[str], str]) -> str:
    """Apply a writer ``fn`` (LF text in, LF text out) to ``old``, keeping its BOM and, for a
    file whose every line ends in CRLF, its CRLF line endings."""
    bom, crlf, body = _style(old)
    out = fn(body)
    if crlf:
        out = out.replace("\r\n", "\n").replace("\n", "\r\n")
    return bom + out


def unified_diff(c: FileChange) -> str:
    old = (c.old or "").splitlines(keepends=True)
    new = c.new.splitlines(keepends=True)
    label = str(c.path)
    lines = difflib.unified_diff(old, new, fromfile=label if c.old is not None else "/dev/null", tofile=label)
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


# --- writing ------------------------------------------------------------------------------

def backup_path(path: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now if now is not None else time.time()))
    cand = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while cand.exists() or cand.is_symlink():  # two runs in one second must not overwrite the first backup
        cand = path.with_name(f"{path.name}.bak-{stamp}.{n}")
        n += 1
    return cand


@dataclass(frozen=True)
class _Owner:
    uid: int
    gid: int
    mode: int


def _existing_ancestor(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _target_and_owner(path: Path, exists: bool) -> tuple[Path, _Owner]:
    """The real file to write (symlinks followed) and whose it must stay; refuses read-only files."""
    target = Path(os.path.realpath(path))
    if exists:
        try:
            st = os.stat(target)
        except OSError as exc:
            raise ConfigFileError(f"{path}: cannot stat ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigFileError(f"{path}: not a regular file; left untouched")
        # Write bits all off means the user made it read-only on purpose: root would ignore it.
        if not st.st_mode & 0o222 or not os.access(target, os.W_OK):
            raise ConfigFileError(f"{path}: read-only; left untouched (make it writable to let torchdepot edit it)")
        return target, _Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    st = os.stat(_existing_ancestor(target))
    return target, _Owner(st.st_uid, st.st_gid, 0o644)


def _chown(fd_or_path, owner: _Owner) -> None:
    if (owner.uid, owner.gid) == (os.geteuid(), os.getegid()):
        return
    with contextlib.suppress(PermissionError):  # not root: a file we can write is kept as it is
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, owner.uid, owner.gid)
        else:
            os.chown(fd_or_path, owner.uid, owner.gid)


def _makedirs(d: Path, owner: _Owner) -> None:
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        p.mkdir()
        _chown(str(p), owner)


def _write(path: Path, text: str, owner: _Owner) -> None:
    """Atomic replace with the owner and mode set on the temp file before it goes live
    (fsutil.atomic_write_* cannot chown, and a chown after the rename leaves a window)."""
    _makedirs(path.parent, owner)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fchmod(fh.fileno(), owner.mode)
            _chown(fh.fileno(), owner)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def commit_one(c: FileChange, backup: bool = True) -> Path | None:
    """Write ``c.new`` (old or new on disk, never half). Returns the backup path, if any."""
    if not c.changed:
        return None
    target, owner = _target_and_owner(c.path, c.old is not None)
    bak = None
    try:
        if c.old is not None and backup:
            bak = backup_path(Path(c.path))
            _write(bak, c.old, owner)
        _write(target, c.new, owner)
    except OSError as exc:
        raise ConfigFileError(f"{c.path}: cannot write ({exc.strerror or exc}); left untouched") from None
    return bak


def commit(plan: Plan, backup: bool = True) -> list[tuple[FileChange, Path | None]]:
    """Check every file is writable first (so a refusal writes nothing), then write each."""
    for c in plan.changes:
        if c.changed:
            _target_and_owner(c.path, c.old is not None)
    return [(c, commit_one(c, backup)) for c in plan.changes if c.changed]


# --- values --------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\ufeff]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_value(option: str, value: str) -> str:
    """Refuse control characters and whitespace: a value must stay on its line."""
    if not value or _CTRL.search(value):
        raise ConfigValueError(f"{option} {value!r}: empty, or holds whitespace or control characters")
    return value


def check_name(option: str, value: str) -> str:
    """A variant or channel name: letters, digits, ``.``, ``_``, ``-``."""
    check_value(option, value)
    if not _NAME.fullmatch(value):
        raise ConfigValueError(f"{option} {value!r}: expected a name like cu126, cpu, rocm6.4")
    return value


def check_url(url: str, option: str = "--url") -> str:
    """An http(s) or file mirror URL that parses; an existing local directory becomes file://."""
    if url and not _CTRL.search(url) and "://" not in url and Path(url).expanduser().is_dir():
        return Path(url).expanduser().resolve().as_uri()
    check_value(option, url)
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigValueError(f"{option} {url!r}: not a valid URL") from None
    if u.scheme not in ("http", "https", "file") or (u.scheme != "file" and not u.hostname):
        raise ConfigValueError(f"{option} {url!r}: expected an http://, https:// or file:// mirror URL, or a local directory")
    if u.query or u.fragment:
        raise ConfigValueError(f"{option} {url!r}: a mirror URL has no ?query or #fragment")
    return url.rstrip("/")


def join_url(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(s.strip("/") for s in parts if s)])


def plain_http_host(url: str) -> str | None:
    """``host[:port]`` for plain-HTTP URLs (pip wants them trusted); None for https/file."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        return None
    return u.netloc.rpartition("@")[2].lower()  # pip matches host[:port] as written ([::1]:8000 too)
