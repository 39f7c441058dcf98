"""Shared I/O for the config writers: read, diff, back up, replace atomically."""

from __future__ import annotations

import difflib
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.store.fsutil import atomic_write_text


class ConfigFileError(TorchdepotError):
    """An existing client config file we cannot parse; it is left untouched."""


@dataclass(frozen=True)
class Planned:
    """What a writer wants: the file, its text before/after, env vars, notes for the user."""

    path: Path
    old: str | None  # None: the file does not exist yet
    new: str
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return self.old != self.new


def read_existing(path: Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text; left untouched") from None


def unified_diff(p: Planned) -> str:
    old = (p.old or "").splitlines(keepends=True)
    new = p.new.splitlines(keepends=True)
    label = str(p.path)
    lines = difflib.unified_diff(old, new, fromfile=label if p.old is not None else "/dev/null", tofile=label)
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


def backup_path(path: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now if now is not None else time.time()))
    cand = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while cand.exists():  # two runs in one second must not overwrite the first backup
        cand = path.with_name(f"{path.name}.bak-{stamp}.{n}")
        n += 1
    return cand


def commit(p: Planned, backup: bool = True) -> Path | None:
    """Write ``p.new`` atomically (old or new on disk, never half). Returns the backup path."""
    if not p.changed:
        return None
    mode = 0o644
    bak = None
    if p.old is not None:
        mode = os.stat(p.path).st_mode & 0o7777
        if backup:
            bak = backup_path(p.path)
            atomic_write_text(bak, p.old, mode)
    atomic_write_text(p.path, p.new, mode)
    return bak


def join_url(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(s.strip("/") for s in parts if s)])


def check_url(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https", "file") or (u.scheme != "file" and not u.hostname):
        raise TorchdepotError(f"--url {url!r}: expected http://, https:// or file:// mirror URL")
    return url.rstrip("/")


def plain_http_host(url: str) -> str | None:
    """``host[:port]`` for plain-HTTP URLs (pip wants them trusted); None for https/file."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        return None
    return f"{u.hostname}:{u.port}" if u.port else u.hostname
