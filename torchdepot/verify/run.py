"""Per-lock verification: throwaway env, mirror-only hashed install, smoke test; or resolve-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TorchdepotError
from ..lockfiles import BASE_ENV
from ..manifest import MANIFEST_NAME, Manifest
from ..platforms import host_platform, target_platform
from .locks import EnvLock, hash_problems
from .smoke import SCRIPT, Check, judge


@dataclass(frozen=True)
class EnvResult:
    env: str
    result: str  # "pass" | "fail" | "resolved" (dry run only) | "error"
    seconds: float
    checks: tuple[Check, ...]
    mode: str  # "installed" | "resolve-only" | "precheck"
    kept: str | None = None

    def to_json(self) -> dict:
        return {
            "env": self.env, "result": self.result, "seconds": round(self.seconds, 2), "mode": self.mode,
            "kept": self.kept, "checks": [c.__dict__ for c in self.checks],
        }


@dataclass(frozen=True)
class Options:
    mirror_url: str
    keep: bool = False
    register_kernel: str | None = None
    workdir: Path | None = None
    timeout: float = 900.0
    env_extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def mirror_url(where: str) -> str:
    """A mirror given as a directory or URL -> URL (``file://`` for directories)."""
    if urllib.parse.urlsplit(where).scheme in ("http", "https", "file"):
        return where.rstrip("/")
    p = Path(where)
    if not p.is_dir():
        raise TorchdepotError(f"--mirror {where}: not a directory or http(s)/file URL")
    return p.resolve().as_uri()


def load_manifest(url: str) -> Manifest | None:
    from ..http import make_session

    murl = url + "/" + MANIFEST_NAME
    try:
        with make_session() as client:
            body, _ = client.get_bytes(murl)
    except (TorchdepotError, OSError):
        return None
    return Manifest.from_json(body.decode("utf-8", "replace"), murl)


def uv_bin() -> str:
    try:
        import uv

        return uv.find_uv_bin()
    except Exception:
        found = shutil.which("uv")
        if not found:
            raise TorchdepotError("uv not found (pip install uv)") from None
        return found


def tool_env(mirror: str, extra=()) -> dict[str, str]:
    """Only the mirror: no user pip/uv/conda config leaks into the throwaway install."""
    keep = ("UV_CACHE_DIR",)  # where uv caches is not a source of packages
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("PIP_", "UV_", "CONDA_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    env[BASE_ENV] = mirror
    env.update(dict(extra))
    return env


def find_python(version: str) -> str | None:
    if "%d.%d" % sys.version_info[:2] == version and not hasattr(sys, "pypy_version_info"):
        return sys.executable
    proc = subprocess.run([uv_bin(), "python", "find", "--no-config", version], capture_output=True, text=True,
                          env=tool_env(""))
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def gpu_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def _tail(proc: subprocess.CompletedProcess) -> str:
    """The installer's error lines (uv/pip print the reason, e.g. "Hash mismatch for `x==1`")."""
    text = (proc.stderr or "") + (proc.stdout or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    key = [ln for ln in lines if ln.lower().startswith(("error", "cause", "hint")) or "mismatch" in ln.lower()
           or "do not match" in ln.lower()]
    picked = list(dict.fromkeys(key + lines[-2:]))
    return " | ".join(picked)[:600]


def _run(cmd: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout:.0f}s")


def _venv_python(d: Path) -> Path:
    return d / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def verify_env(lock: EnvLock, opts: Options, manifest: Manifest | None) -> EnvResult:
    t0 = time.monotonic()
    v = lock.variant
    checks: list[Check] = []

    def done(result: str, mode: str, kept: str | None = None) -> EnvResult:
        return EnvResult(lock.name, result, time.monotonic() - t0, tuple(checks), mode, kept)

    if not lock.requirements.is_file():
        checks.append(Check("pip lock", "not run", f"{lock.requirements} absent (conda-only target)"))
        return _verify_conda(lock, opts, checks, done)
    if manifest is not None:
        problems = hash_problems(lock, manifest)
        if problems:
            checks += [Check("hashes vs mirror manifest", "fail", p) for p in problems]
            return done("fail", "precheck")
        checks.append(Check("hashes vs mirror manifest", "pass", f"{len(lock.pins)} pins"))
    else:
        checks.append(Check("hashes vs mirror manifest", "not run", "mirror has no manifest.json; the installer checks hashes"))
    env = tool_env(opts.mirror_url, opts.env_extra)
    py = find_python(v["python"]) if v.get("platform") == host_platform() else None
    if py is None:
        return _resolve_only(lock, opts, env, checks, done)
    work = Path(tempfile.mkdtemp(prefix=f"torchdepot-verify-{lock.name}-", dir=opts.workdir))
    keep = opts.keep or bool(opts.register_kernel)
    venv = work / "venv"
    try:
        proc = _run([uv_bin(), "venv", "--no-config", "--quiet", "--python", py, venv], env, opts.timeout)
        if proc.returncode:
            checks.append(Check("create env", "fail", _tail(proc)))
            return done("fail", "installed")
        vpy = _venv_python(venv)
        # the lock itself names the index (--index-url ${TORCHDEPOT_MIRROR}/whl/<acc>); nothing else is consulted
        proc = _run([uv_bin(), "pip", "install", "--no-config", "--python", vpy, "--require-hashes", "--no-deps",
                     "--no-build", "-r", lock.requirements], env, opts.timeout)
        if proc.returncode:
            checks.append(Check("install (hash-checked, mirror only)", "fail", f"{lock.requirements}: {_tail(proc)}"))
            return done("fail", "installed", str(venv) if keep else None)
        checks.append(Check("install (hash-checked, mirror only)", "pass", f"{len(lock.pins)} packages"))
        proc = _run([vpy, "-c", SCRIPT], env, opts.timeout)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            checks.append(Check("smoke test", "fail", _tail(proc)))
            return done("fail", "installed", str(venv) if keep else None)
        want = next((p.version for p in lock.pins if p.name.lower() == "torch"), v.get("torch"))
        checks += judge(result, want, v.get("cuda"), gpu_present())
        if opts.register_kernel:
            checks.append(_register_kernel(vpy, venv, opts.register_kernel, v.get("accelerator", "cpu"), env, opts.timeout))
        ok = all(c.status != "fail" for c in checks)
        return done("pass" if ok else "fail", "installed", str(venv) if keep else None)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _resolve_only(lock: EnvLock, opts: Options, env: dict, checks: list[Check], done) -> EnvResult:
    v = lock.variant
    try:
        plat = target_platform(v["platform"])
    except TorchdepotError as exc:
        checks.append(Check("resolve (dry run)", "fail", str(exc)))
        return done("fail", "resolve-only")
    # uv evaluates markers for the target, not this host; --no-deps off: the mirror must hold the closure
    proc = _run([uv_bin(), "pip", "compile", "--no-config", "--quiet", "--no-header", "--no-build",
                 "--python-version", v["python"], "--python-platform", plat.uv_platform, lock.requirements],
                env, opts.timeout)
    why = f"cannot run python {v['python']} on {v['platform']} here (this is {host_platform()})"
    if proc.returncode:
        checks.append(Check("resolve (dry run)", "fail", f"{lock.requirements}: {_tail(proc)}"))
        return done("fail", "resolve-only")
    checks.append(Check("resolve (dry run)", "pass", f"{why}: resolved against the mirror only, not installed or run"))
    return done("resolved", "resolve-only")


def _verify_conda(lock: EnvLock, opts: Options, checks: list[Check], done) -> EnvResult:
    conda = lock.conda_lock()
    if conda is None:
        checks.append(Check("conda lock", "fail", f"{lock.dir}: no requirements.lock and no conda lock"))
        return done("fail", "precheck")
    text = conda.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("#", "@"))]
    bad = [ln for ln in lines if "#sha256:" not in ln]
    if bad:
        checks.append(Check("conda lock hashes", "fail", f"{conda}: {len(bad)} line(s) without #sha256:"))
        return done("fail", "precheck")
    checks.append(Check("conda lock hashes", "pass", f"{len(lines)} packages (conda install not run by this verifier)"))
    return done("resolved", "resolve-only")


def _register_kernel(vpy: Path, venv: Path, name: str, acc: str, env: dict, timeout: float) -> Check:
    have = _run([vpy, "-c", "import ipykernel"], env, timeout)
    if have.returncode:
        # from the mirror's index only; ipykernel's dependencies must be mirrored too
        idx = env[BASE_ENV].rstrip("/") + "/whl/" + acc
        proc = _run([uv_bin(), "pip", "install", "--no-config", "--python", vpy, "--no-build", "--index-url", idx, "ipykernel"],
                    env, timeout)
        if proc.returncode:
            return Check("register kernel", "fail", f"ipykernel cannot be installed from the mirror ({_tail(proc)[:200]})")
    proc = _run([vpy, "-m", "ipykernel", "install", "--prefix", venv, "--name", name], env, timeout)
    if proc.returncode:
        return Check("register kernel", "fail", _tail(proc))
    return Check("register kernel", "pass", f"{name} in {venv}/share/jupyter/kernels")
