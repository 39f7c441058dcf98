"""The attack bench's harness: run the real CLI in a sandbox, then judge what it left behind.

Every attempt gets a :class:`Sandbox` (its own HOME, XDG dirs, TMPDIR, uv cache, working dir,
pip config file), runs ``.venv/bin/torchdepot ...`` as a user would, with a timeout (the whole
process group is SIGKILLed past it), and is judged by :func:`judge`:

- ``corrupt``: files of the LIVE mirror that are bad after the attempt: what
  ``verify-mirror --json`` reports as missing, corrupt or dangling-link, plus every file the
  previously published manifest listed whose bytes changed in place (issue 13: a published
  file's bytes never change in place; verify-mirror cannot see that when the manifest was
  rewritten along with it). Damage the bench planted itself is excluded.
- ``outside``: files created, changed or deleted anywhere in the sandbox outside the paths the
  command may write (its mirror root, its config file and backups, its temp dirs): this is
  also where damage to the user's own files shows.
- ``held``: the command succeeded, or failed with at most one stderr line and a non-zero exit
  (SIGKILLed by the bench on purpose also counts), within its timeout; no traceback; corrupt and
  outside are 0; and the attack's own check (a time, memory or content bound) passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import contextlib

from tests.venvs import hermetic_env  # noqa: E402

TD = str(ROOT / ".venv" / "bin" / "torchdepot")
ATTEMPT_TIMEOUT = 60.0
BAD_KINDS = ("missing", "corrupt", "dangling-link")
PROGRESS = re.compile(r"fetch: .*\(\d+/\d+ files\)$")


@dataclass(frozen=True)
class Run:
    """One finished CLI invocation."""
    rc: int | None  # None: the bench SIGKILLed it (on purpose or past the timeout)
    stdout: str
    stderr: str
    seconds: float
    peak_rss_kib: int  # of the torchdepot process itself (not its children)
    timed_out: bool = False
    killed: bool = False  # by the bench, on purpose (a crash test)


@dataclass(frozen=True)
class Outcome:
    cls: str
    name: str
    held: bool
    corrupt: int
    outside: int
    traceback: bool
    not_one_line: bool  # failed with more than one stderr line
    timed_out: bool
    seconds: float
    rc: int | None
    note: str = ""


@dataclass
class Sandbox:
    """A throwaway user: HOME, XDG dirs, TMPDIR, caches and a working dir under ``base``."""
    base: Path
    extra_env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in ("home", "xdg", "cache", "tmp", "work", "logs"):
            (self.base / d).mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name: str) -> Path:  # home, xdg, cache, tmp, work, logs
        if name in ("home", "xdg", "cache", "tmp", "work", "logs"):
            return self.base / name
        raise AttributeError(name)

    @property
    def scratch(self) -> tuple[Path, ...]:
        """Dirs any command may write (temp, caches, the bench's own logs)."""
        return (self.tmp, self.cache, self.logs, self.xdg / "uv-cache")

    def env(self, **extra: str) -> dict:
        env = hermetic_env(HOME=str(self.home), XDG_CONFIG_HOME=str(self.xdg), XDG_CACHE_HOME=str(self.cache),
                           XDG_DATA_HOME=str(self.base / "cache" / "data"), TMPDIR=str(self.tmp),
                           UV_CACHE_DIR=str(self.cache / "uv"), TORCHDEPOT_NO_PROGRESS="1",
                           PIP_CONFIG_FILE=str(self.xdg / "pip-env.conf"), PYTHONPATH=str(ROOT))
        env.pop("TORCHDEPOT_DEBUG", None)
        env.update(self.extra_env)
        env.update(extra)
        return env


def run_cli(sb: Sandbox, args: list[str], *, env: dict | None = None, timeout: float = ATTEMPT_TIMEOUT,
            kill_when: Callable[[], bool] | None = None, cwd: Path | None = None, stdin: bytes | None = None,
            poll: float = 0.005) -> Run:
    """Run ``torchdepot *args``; SIGKILL its process group when ``kill_when()`` turns true or past
    ``timeout``. Output goes to files (no pipe can fill up while the bench polls)."""
    n = len(list(sb.logs.iterdir()))
    out_p, err_p = sb.logs / f"{n}.out", sb.logs / f"{n}.err"
    t0 = time.monotonic()
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        proc = subprocess.Popen([TD, *args], env=env or sb.env(), cwd=str(cwd or sb.work), stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        rc = None
        rss = 0
        timed_out = killed = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                rss = ru.ru_maxrss
                break
            if kill_when is not None and kill_when():
                killed = True
            elif time.monotonic() - t0 > timeout:
                timed_out = True
            if killed or timed_out:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, ru = os.wait4(proc.pid, 0)
                rss = ru.ru_maxrss
                rc = None
                break
            time.sleep(poll)
        proc.returncode = rc if rc is not None else -9
        _reap_group(proc.pid)
    return Run(rc=rc, stdout=out_p.read_text(errors="replace"), stderr=err_p.read_text(errors="replace"),
               seconds=time.monotonic() - t0, peak_rss_kib=rss, timed_out=timed_out, killed=killed)


def _reap_group(pgid: int) -> None:
    """Kill what the command left running in its own session (uv children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# -- snapshots: what changed outside the allowed paths --------------------------------------------

def _digest(p: Path, st: os.stat_result) -> str:
    if st.st_size > 8 << 20:
        return f"big:{st.st_mtime_ns}"
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as e:
        return f"err:{e.errno}"


def snapshot(base: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """path -> (kind, mode, uid, gid, size, digest or link target) for files and links under base."""
    snap: dict[str, tuple] = {}
    skip_s = {str(s) for s in skip}
    if not base.exists():
        return snap
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip_s]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            if str(p) in skip_s:
                continue
            st = p.lstat()
            if p.is_symlink():
                snap[str(p)] = ("link", st.st_uid, st.st_gid, os.readlink(p))
            else:
                snap[str(p)] = ("file", st.st_mode, st.st_uid, st.st_gid, st.st_size, _digest(p, st))
    return snap


def changed(before: dict, after: dict, allowed: tuple[Path, ...]) -> list[str]:
    """Paths created, changed or deleted outside ``allowed`` (each a dir or a file)."""
    allowed_s = [str(a) for a in allowed]

    def ok(p: str) -> bool:
        return any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed_s)

    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not ok(p))


# -- the live mirror ------------------------------------------------------------------------------

def manifest_files(root: Path) -> dict[str, str]:
    """path -> sha256 of what ``root/manifest.json`` lists ({} when unreadable)."""
    try:
        doc = json.loads((root / "manifest.json").read_text())
        return {f["path"]: f["sha256"] for f in doc["files"]}
    except Exception:
        return {}


def sha256_of(p: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def verify_bad(sb: Sandbox, root: Path) -> set[str]:
    """Paths verify-mirror reports as missing, corrupt or dangling (the bench's own damage, before)."""
    r = run_cli(sb, ["verify-mirror", str(root), "--json"], timeout=ATTEMPT_TIMEOUT)
    try:
        return {p["path"] for p in json.loads(r.stdout)["problems"] if p["kind"] in BAD_KINDS}
    except Exception:
        return set()


def live_corrupt(sb: Sandbox, root: Path, published: dict[str, str], planted: set[str] = frozenset()) -> tuple[int, str]:
    """(bad files in the live mirror at ``root``, a note) by verify-mirror plus the in-place check."""
    if not published and not (root / "manifest.json").exists():
        return 0, ""
    r = run_cli(sb, ["verify-mirror", str(root), "--json"], timeout=ATTEMPT_TIMEOUT)
    bad: set[str] = set()
    notes = []
    try:
        report = json.loads(r.stdout)
        bad |= {p["path"] for p in report["problems"] if p["kind"] in BAD_KINDS}
    except Exception:
        first = (r.stderr.strip().splitlines() or ["no output"])[-1]
        notes.append(f"verify-mirror: {first[:120]}")
        bad.add("<verify-mirror failed>")
    in_place = {p for p, sha in published.items()
                if (root / p).is_file() and not (root / p).is_symlink() and sha256_of(root / p) != sha}
    reported = bad - set(planted)
    if reported:
        notes.append("verify-mirror bad: " + ", ".join(sorted(Path(p).name for p in reported))[:200])
    if in_place:
        notes.append(f"changed in place{' (verify-mirror: ok)' if not reported else ''}: "
                     + ", ".join(sorted(Path(p).name for p in in_place)))
    bad = (bad | in_place) - set(planted)
    return len(bad), "; ".join(notes)


def judge(cls: str, name: str, r: Run, *, corrupt: int = 0, outside: list[str] = (), check: bool = True,
          note: str = "", expect_kill: bool = False) -> Outcome:
    text = r.stdout + r.stderr
    tb = "Traceback" in text
    # The downloader's periodic progress lines (printed when stderr is not a TTY) are not error output.
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    ended_ok = (r.killed and expect_kill) or r.rc == 0 or (r.rc not in (None, 0) and len(lines) <= 1)
    not_one_line = r.rc not in (None, 0) and len(lines) > 1
    held = ended_ok and not r.timed_out and not tb and corrupt == 0 and not outside and check
    bits = [f"rc={'kill' if r.killed else 'timeout' if r.timed_out else r.rc}", f"{r.seconds:.1f}s"]
    if r.rc not in (None, 0) and lines:
        bits.append(f"err={lines[-1][:140]!r}")
    if not_one_line:
        bits.append(f"{len(lines)} stderr lines")
    if outside:
        bits.append(f"outside: {', '.join(Path(p).name for p in outside[:5])}")
    if note:
        bits.append(note)
    return Outcome(cls=cls, name=name, held=held, corrupt=corrupt, outside=len(outside), traceback=tb,
                   not_one_line=not_one_line, timed_out=r.timed_out, seconds=r.seconds, rc=r.rc,
                   note="; ".join(bits))


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
