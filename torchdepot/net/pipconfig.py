"""The user's pip configuration: where dependencies come from.

Read with the interpreter's own pip (``python -m pip config list``) so every config file
pip would read (global, user, site, ``PIP_CONFIG_FILE``) counts, plus the environment
variables ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` / ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX``.
No index host is hard-coded: when no index-url is configured, pip's own default applies
(:func:`pip_default_index` asks pip for it at run time).

Importing pip's configuration module costs ~0.1 s (it pulls in pip's exceptions, logging and
vendored libraries), a quarter of a no-op re-sync. A :class:`ConfigSnapshot` keeps what pip read
together with what decides it (pip's version, this interpreter, the ``PIP_*`` and config-location
environment variables) and the signature of every file pip looked at (its bytes' digest); a caller may keep it
(the mirror's state dir) and replay it without importing pip while all of that is unchanged.
pip still decides which files count and how they combine: nothing here re-implements that.

A command that will need the read starts it at once (:meth:`PendingRead.start`), in a forked
copy of this process (same interpreter, modules, ``sys.path``, environment and working directory,
so the same pip reads the same files; on Linux, while no other thread runs), which runs
:func:`snapshot_in_process` on another core while the command imports its modules. Its snapshot
is used only when its key equals this process's at the join; otherwise (and when the copy fails
or exceeds its time) pip is read in process as before. No copy starts while a valid snapshot is
kept, so a re-sync starts none.

A pip ``constraint`` setting is deliberately not applied to mirroring: it caps what this
machine installs, not what a mirror for other machines must hold.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import hashlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torchdepot.errors import TorchdepotError, load_json

# pip option sections that apply to ``pip install``/``pip download``, lowest priority first.
_SECTIONS = ("global", "download", "install")
_LIST_KEYS = ("extra-index-url", "find-links")


@dataclass(frozen=True)
class PipSources:
    index_url: str | None = None  # None: pip's default index (unless no_index)
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()  # URLs (local paths turned into file:// URLs)
    no_index: bool = False
    note: str = ""  # how they were found (for messages)

    @property
    def indexes(self) -> tuple[str, ...]:
        """Configured index URLs (extra ones first: they take priority in uv)."""
        return self.extra_index_urls + ((self.index_url,) if self.index_url else ())

    def describe(self) -> str:
        parts = []
        if self.no_index:
            parts.append("no-index")
        parts.append(f"index-url={self.index_url or '(pip default)'}")
        if self.extra_index_urls:
            parts.append("extra-index-url=" + " ".join(self.extra_index_urls))
        if self.find_links:
            parts.append("find-links=" + " ".join(self.find_links))
        return ", ".join(parts)


def _to_url(item: str, cwd: Path) -> str:
    if "://" in item:
        return item.rstrip("/") if not item.startswith("file:") else item
    return (cwd / os.path.expanduser(item)).resolve().as_uri()


def _split(value: str) -> list[str]:
    return value.split()  # pip splits list options on any whitespace


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_config_list(text: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> PipSources:
    """Parse ``pip config list`` output (``section.key='value'`` lines) plus PIP_* env vars.

    pip's precedence: environment > command section (install/download) > global.
    """
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    found: dict[str, tuple[int, str]] = {}  # key -> (priority, value)
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.strip().rpartition(".")
        section = section.strip()
        value = value.strip()
        try:
            # pip prints each value as a Python literal ('a\nb' for multi-line values)
            literal = ast.literal_eval(value)
            value = literal if isinstance(literal, str) else value
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = value.strip("'\"")
        if section in _SECTIONS:
            prio = _SECTIONS.index(section)
        elif section == ":env:":
            prio = 10  # pip lists PIP_* variables it saw as ":env:.<key>"
        else:
            continue
        if key not in found or found[key][0] <= prio:
            found[key] = (prio, value)
    for key, var in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("find-links", "PIP_FIND_LINKS"), ("no-index", "PIP_NO_INDEX")):
        if env.get(var) is not None:
            found[key] = (20, env[var])

    def get(key: str) -> str | None:
        return found[key][1] if key in found else None

    index = get("index-url")
    extra = _split(get("extra-index-url") or "")
    links = _split(get("find-links") or "")
    return PipSources(
        index_url=index.rstrip("/") if index else None,
        extra_index_urls=tuple(dict.fromkeys(u.rstrip("/") for u in extra)),
        find_links=tuple(dict.fromkeys(_to_url(u, cwd) for u in links)),
        no_index=_truthy(get("no-index") or ""),
        note="pip config list",
    )


def _config_list_in_process() -> str | None:
    """What ``pip config list`` prints, from this interpreter's pip without a subprocess
    (pip's CLI start-up costs ~0.5 s; a no-op re-sync should take less than a second)."""
    try:
        from pip._internal.configuration import Configuration

        conf = Configuration(isolated=False)
        conf.load()
        return "".join(f"{k}={v!r}\n" for k, v in conf.items())
    except Exception:  # pip internals moved or config unreadable: ask the CLI instead
        return None


# Besides PIP_*, the variables pip's config locations depend on (platformdirs, virtualenvs).
_LOCATION_ENV = ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "APPDATA", "LOCALAPPDATA", "PROGRAMDATA",
                 "ALLUSERSPROFILE", "USERPROFILE", "VIRTUAL_ENV")
MAX_SNAPSHOT_FILES = 64  # pip looks at a handful; more means a record that is not ours
MAX_HASHED_CONFIG = 1 << 20  # config files up to this size are compared by content, larger ones by stat


@dataclass(frozen=True)
class ConfigSnapshot:
    """What this interpreter's pip read (``pip config list`` lines, its default index and file
    host), the digest of what decides where pip looks (:func:`config_key`) and each file pip
    looked at with its signature (:func:`_signature`; "" when absent). Valid while both are unchanged."""

    key: str
    files: tuple[tuple[str, str], ...]
    text: str
    default_index: str | None = None
    file_host: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {"key": self.key, "files": [list(f) for f in self.files], "text": self.text,
                "default_index": self.default_index, "file_host": self.file_host}

    @classmethod
    def from_data(cls, data: object) -> ConfigSnapshot | None:
        """The snapshot a record holds, or None when it is not one (a malformed record is re-read)."""
        if not isinstance(data, dict):
            return None
        key, files, text = data.get("key"), data.get("files"), data.get("text")
        default_index, file_host = data.get("default_index"), data.get("file_host")
        if not (isinstance(key, str) and isinstance(text, str) and isinstance(files, list)
                and len(files) <= MAX_SNAPSHOT_FILES
                and all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in files)
                and all(v is None or isinstance(v, str) for v in (default_index, file_host))):
            return None
        return cls(key=key, files=tuple((f[0], f[1]) for f in files), text=text, default_index=default_index,
                   file_host=file_host)

    def valid(self) -> bool:
        """Whether pip would read the same now: same key, every file's signature unchanged."""
        return self.key == config_key() and all(_signature(name) == sig for name, sig in self.files)

    def sources(self) -> PipSources:
        return replace(parse_config_list(self.text, os.environ), note="pip configuration")


def _pip_version() -> str:
    try:
        import pip  # its __init__ alone: a version string, no pip internals

        return str(pip.__version__)
    except Exception:
        return ""


def config_key(env: Mapping[str, str] | None = None) -> str:
    """Digest of what decides which files pip reads and which variables it adds: pip's version,
    this interpreter and its prefixes, and the environment variables pip and its locations use."""
    env = os.environ if env is None else env
    data = {"pip": _pip_version(), "python": sys.executable, "prefix": sys.prefix, "base": sys.base_prefix,
            "platform": sys.platform,
            "env": sorted((k, v) for k, v in env.items() if k.startswith("PIP_") or k in _LOCATION_ENV)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _signature(name: str) -> str:
    """A file's signature ("" when absent): the digest of a config file's bytes (a few hundred;
    an edit within one timestamp tick keeping the size still shows), its stat for a huge one."""
    try:
        st = os.stat(name)
        if not stat.S_ISREG(st.st_mode):
            return f"mode:{stat.S_IFMT(st.st_mode)}"  # /dev/null, a directory: its times mean nothing here
        if st.st_size > MAX_HASHED_CONFIG:
            return f"stat:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"
        with open(name, "rb") as fh:
            return "sha256:" + hashlib.sha256(fh.read(MAX_HASHED_CONFIG + 1)).hexdigest()
    except OSError:
        return ""  # absent (or unreadable: pip's own read then fails, and no snapshot is kept)


def snapshot_in_process() -> ConfigSnapshot | None:
    """Read this interpreter's pip configuration in process (pip's own ``Configuration``),
    noting every file it looks at; None when pip's internals are not what this expects."""
    try:
        from pip._internal.configuration import Configuration
        from pip._internal.models.index import PyPI

        conf = Configuration(isolated=False)
        names = list(dict.fromkeys(n for _variant, group in conf.iter_config_files() for n in group))
        # signatures before the read: a file changed meanwhile differs at the next run, and is re-read
        files = tuple((n, _signature(n)) for n in names)
        key = config_key()
        conf.load()
        # the environment's own values are not kept (a URL there may carry a token): the four that
        # count are read from the environment again at each parse (parse_config_list)
        text = "".join(f"{k}={v!r}\n" for k, v in conf.items() if not k.startswith(":env:."))
        url, host = str(PyPI.simple_url).rstrip("/"), str(PyPI.file_storage_domain).lower()
    except Exception:  # pip internals moved or config unreadable: the caller asks the CLI instead
        return None
    return ConfigSnapshot(key=key, files=files, text=text, default_index=url if "://" in url else None,
                          file_host=host if host and "/" not in host else None)


def kept_snapshot(path: Path) -> ConfigSnapshot | None:
    """The snapshot kept at ``path``; None when absent, unreadable or not one (pip is read again)."""
    try:
        return ConfigSnapshot.from_data(load_json(path.read_bytes(), str(path)))
    except (OSError, TorchdepotError):
        return None


CHILD_TIMEOUT = 60.0  # seconds; pip's read takes ~0.1 s
MAX_CHILD_OUTPUT = 1 << 20  # bytes; a snapshot is a few hundred


def _can_fork() -> bool:
    """A copy of this process may read pip: Linux (fork without exec is what multiprocessing's
    default there does) and no other thread running, whose locks a copy could inherit held."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


class PendingRead:
    """A fresh read of pip's configuration running in a forked copy of this process (see the
    module's docstring), or nothing to wait for. :meth:`snapshot` joins it; :meth:`close` ends
    it unread. Where no copy can be made (not Linux, other threads running), the caller reads
    in process as before."""

    def __init__(self, pid: int | None = None, fd: int | None = None) -> None:
        self._pid, self._fd = pid, fd

    @classmethod
    def start(cls, kept_at: Path | None) -> PendingRead:
        """Starts the copy unless the snapshot kept at ``kept_at`` is valid now (then the run
        replays it and needs no read); ``None``: where it is kept is not known yet."""
        kept = kept_snapshot(kept_at) if kept_at is not None else None
        if (kept is not None and kept.valid()) or not _can_fork():
            return cls()
        try:
            rfd, wfd = os.pipe()
        except OSError:
            return cls()
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            return cls()
        if pid == 0:  # the copy: read, write one JSON document, leave without running the parent's exit code
            code = 1
            try:
                gc.disable()  # short-lived: pip's ~0.07 s of imports without the collector's rescans
                os.close(rfd)
                snap = snapshot_in_process()
                data = json.dumps(None if snap is None else snap.to_data()).encode()
                view = memoryview(data)
                while view:
                    view = view[os.write(wfd, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        return cls(pid, rfd)

    @property
    def started(self) -> bool:
        return self._pid is not None

    def snapshot(self) -> ConfigSnapshot | None:
        """The copy's snapshot, once; None when there is no copy, or it failed, ran past
        :data:`CHILD_TIMEOUT` or read under another key than this process's now (the caller
        then reads in process)."""
        pid, fd = self._pid, self._fd
        self._pid = self._fd = None
        if pid is None or fd is None:
            return None
        chunks: list[bytes] = []
        size, deadline = 0, time.monotonic() + CHILD_TIMEOUT
        try:
            while size <= MAX_CHILD_OUTPUT:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            else:
                chunks = []
        finally:
            os.close(fd)
            _end(pid)
        try:
            snap = ConfigSnapshot.from_data(load_json(b"".join(chunks), "pip configuration read"))
        except TorchdepotError:  # none, cut short or over the cap
            return None
        return snap if snap is not None and snap.key == config_key() else None

    def close(self) -> None:
        """Ends a copy whose read is not needed (idempotent)."""
        pid, fd = self._pid, self._fd
        self._pid = self._fd = None
        if fd is not None:
            os.close(fd)
        if pid is not None:
            _end(pid)


def _end(pid: int) -> None:
    """Kills (a no-op once it exited) and reaps the copy."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def read_pip_config_kept(kept: ConfigSnapshot | None,
                         pending: PendingRead | None = None) -> tuple[PipSources, ConfigSnapshot | None]:
    """This interpreter's pip configuration: ``kept`` replayed when still valid (pip not imported),
    else read again (``pending``'s read in a copy of this process when it gives one). Returns the sources and the
    snapshot to keep (None: nothing to keep)."""
    if kept is not None and kept.valid():
        if pending is not None:
            pending.close()
        return kept.sources(), kept
    snap = pending.snapshot() if pending is not None else None
    if snap is None:
        snap = snapshot_in_process()
    if snap is None:
        return read_pip_config(), None
    return snap.sources(), snap


def read_pip_config(python: str | None = None, env: dict[str, str] | None = None) -> PipSources:
    """Ask the interpreter's pip for its configuration (falls back to env vars alone)."""
    if python is None and env is None:
        text = _config_list_in_process()
        if text is not None:
            return replace(parse_config_list(text, os.environ), note="pip configuration")
    env = dict(os.environ if env is None else env)
    cmd = [python or sys.executable, "-m", "pip", "config", "list"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        text = proc.stdout if proc.returncode == 0 else ""
        note = "pip config list" if proc.returncode == 0 else "environment only (pip config list failed)"
    except (OSError, subprocess.TimeoutExpired):
        text, note = "", "environment only (pip not runnable)"
    return replace(parse_config_list(text, env), note=note)


def _ask_pip(attr: str, python: str | None, env: dict[str, str] | None) -> str | None:
    """``PyPI.<attr>`` from the interpreter's own pip (its defaults are never hard-coded here)."""
    code = f"from pip._internal.models.index import PyPI; print(PyPI.{attr})"
    try:
        proc = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ if env is None else env), timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def pip_default_index(python: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """pip's built-in default index URL, asked from pip itself (never hard-coded here)."""
    url = _ask_pip("simple_url", python, env) or ""
    return url.rstrip("/") if "://" in url else None


def pip_file_host(python: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """The file host behind pip's built-in default index, asked from pip (never hard-coded):
    its pages link there, so the host policy must allow it when that index is used."""
    host = (_ask_pip("file_storage_domain", python, env) or "").lower()
    return host if host and "/" not in host else None
