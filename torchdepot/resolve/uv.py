"""Resolve one target's full dependency closure with uv (a real resolver).

``uv pip compile --python-version X.Y --python-platform <uv platform>`` resolves for the
target, not this machine, reading dependencies from PEP 658 ``.metadata`` files when an
index offers them (so no multi-GB wheel is downloaded to learn its dependencies), and
``--format pylock.toml`` gives exactly one file per package with its URL and sha256.

Invariants: uv reads no configuration (``--no-config``, no ``UV_*`` of the user's but its cache
dir), downloads no Python, is named its interpreter (``--python``: it never probes PATH, which
cost up to 0.6 s a target), and sends its loopback requests past any proxy of the user's.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError
from torchdepot.model.platforms import target_platform

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - Python 3.10
    import tomli as _toml


class ResolveError(TorchdepotError):
    """uv found no solution (or could not run); the message names the target."""


@dataclass(frozen=True)
class IndexPlan:
    """Where uv looks, highest priority first."""

    extra_index_urls: tuple[str, ...] = ()
    index_url: str | None = None  # None: uv's default index (same as pip's default)
    no_index: bool = False
    find_links: tuple[str, ...] = ()
    index_strategy: str = "first-index"  # "unsafe-best-match" behaves like pip (merge all indexes)
    prereleases: bool = False

    def args(self) -> list[str]:
        out: list[str] = []
        for url in self.extra_index_urls:
            out += ["--extra-index-url", url]
        if self.no_index:
            out.append("--no-index")
        elif self.index_url:
            out += ["--index-url", self.index_url]
        for url in self.find_links:
            out += ["--find-links", url]
        out += ["--index-strategy", self.index_strategy]
        if self.prereleases:
            out += ["--prerelease", "allow"]
        return out


@dataclass(frozen=True)
class ResolvedFile:
    name: str  # canonical project name
    version: str
    url: str
    filename: str
    sha256: str | None
    size: int | None


_UV_BIN_LOCK = threading.Lock()


def uv_bin() -> str:
    """The uv binary of the ``uv`` package, else one on PATH: looked up once per process.

    Under a lock: targets resolve in parallel threads, and ``find_uv_bin`` reads
    ``sysconfig.get_config_var("EXE")``, whose lazy first fill is not thread-safe (a second
    thread read ``None`` while the first filled it: "can only concatenate str (not NoneType)")."""
    with _UV_BIN_LOCK:
        return _uv_bin()


@functools.cache
def _uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise TorchdepotError("uv not found (pip install uv)") from None
        return found


def uv_env() -> dict[str, str]:
    # uv must not pick up a user's UV_INDEX_URL etc.; its cache stays where the user keeps it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k == "UV_CACHE_DIR"}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    # uv talks only to the run's loopback view: a user's HTTP(S)_PROXY / ALL_PROXY must not get
    # those requests (a proxy cannot reach this machine's loopback; the resolution would fail)
    kept = [v for v in (env.get("NO_PROXY"), env.get("no_proxy")) if v]
    env["NO_PROXY"] = env["no_proxy"] = ",".join([*kept, *LOOPBACK])
    return env


LOOPBACK = ("127.0.0.1", "localhost", "::1")  # where the view listens (127.0.0.1 today)


def compile_command(requirements_file: Path, output: Path, python: str, platform: str, plan: IndexPlan) -> list[str]:
    return [
        uv_bin(), "pip", "compile", str(requirements_file),
        "--no-config", "--quiet",
        # the interpreter uv would otherwise look for on PATH, probing each candidate (a pyenv
        # shim costs a shell, 0.4-0.6 s, per target): nothing is built (--only-binary), and the
        # target is --python-version and --python-platform, so this one is as good as any
        "--python", sys.executable,
        "--python-version", python,
        "--python-platform", target_platform(platform).uv_platform,
        "--only-binary", ":all:",  # the mirror serves wheels: nothing is built offline
        "--format", "pylock.toml", "-o", str(output), "--no-header",
        *plan.args(),
    ]


def _short_error(stderr: str) -> str:
    lines = [ln.strip(" ╰─▶×│") .strip() for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln and not ln.startswith("hint:")]
    return "; ".join(lines[:4])[:600] or "uv failed without a message"


def resolve(target_id: str, requirements: list[str], python: str, platform: str, plan: IndexPlan,
            timeout: float = 900, env: dict[str, str] | None = None) -> list[ResolvedFile]:
    """uv pip compile for one target; ``env`` adds variables (e.g. the host guard's proxy)."""
    with tempfile.TemporaryDirectory(prefix="torchdepot-resolve-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("".join(r + "\n" for r in requirements))
        out = Path(tmp) / "pylock.toml"
        cmd = compile_command(req, out, python, platform, plan)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**uv_env(), **(env or {})},
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ResolveError(f"{target_id}: uv pip compile took longer than {timeout:g}s") from None
        except OSError as exc:
            raise ResolveError(f"{target_id}: cannot run uv ({exc})") from None
        if proc.returncode != 0 or not out.is_file():
            raise ResolveError(f"{target_id}: no resolution for {' '.join(requirements)}: {_short_error(proc.stderr)}")
        return parse_pylock(out.read_text(encoding="utf-8"), base=Path(tmp), where=target_id)


def parse_pylock(text: str, base: Path, where: str = "pylock.toml") -> list[ResolvedFile]:
    """Every wheel uv lists, one :class:`ResolvedFile` each.

    uv lists every wheel of the chosen version that fits the target (compiled and pure, or
    several manylinux tags): the target's installer picks among them, so all are kept."""
    doc = _toml.loads(text)
    files: list[ResolvedFile] = []
    for pkg in doc.get("packages", []):
        name = canonicalize_name(str(pkg.get("name", "")))
        version = str(pkg.get("version", ""))
        wheels = pkg.get("wheels") or []
        if not wheels:
            raise ResolveError(f"{where}: {name} {version}: no wheel for this target (sdists are not mirrored)")
        for w in wheels:
            if "url" in w:
                url = str(w["url"])
            elif "path" in w:
                url = (base / str(w["path"])).resolve().as_uri()
            else:
                raise ResolveError(f"{where}: {name}: wheel entry without url or path")
            filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
            sha = (w.get("hashes") or {}).get("sha256")
            size = w.get("size")
            files.append(ResolvedFile(name, version, url, filename,
                                      str(sha).lower() if sha else None, int(size) if size is not None else None))
    return sorted(files, key=lambda f: (f.name, f.filename))
