"""Per-lock verification: throwaway env, mirror-only hashed install, smoke test; or resolve-only."""

from __future__ import annotations

import contextlib
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

from torchdepot.errors import TorchdepotError, UpstreamError, one_line
from torchdepot.lockfiles import BASE_ENV
from torchdepot.model.platforms import host_platform, target_platform
from torchdepot.model.trust import pip_trust_args
from torchdepot.resolve.uv import uv_bin
from torchdepot.sources.served import fetch_manifest
from torchdepot.store.manifest import Manifest
from torchdepot.verify.locks import EnvLock, hash_problems
from torchdepot.verify.smoke import SCRIPT, Check, judge


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


def requirements_for(lock: EnvLock, mirror: str, work: Path) -> tuple[Path, Check | None]:
    """The requirements file to install ``lock`` from ``mirror``. A lock written with the
    placeholder base (``${TORCHDEPOT_MIRROR}``) is used as it is; one written with
    ``lock --base-url URL`` names its own index: when that is not ``mirror``, a copy whose
    ``--index-url`` (and trust) point at ``mirror`` goes under ``work``, and a check says so,
    naming both URLs. The hashes stay the lock's: they were checked against ``mirror``."""
    text = lock.requirements.read_text(encoding="utf-8")
    lines = text.splitlines()
    index = next((ln.split(None, 1)[1].strip() for ln in lines
                  if ln.startswith("--index-url ") and len(ln.split(None, 1)) == 2), None)
    if index is None or index.startswith("${" + BASE_ENV + "}"):
        return lock.requirements, None
    base, sep, rel = index.partition("/whl/")
    if not sep:
        raise TorchdepotError(f"{lock.requirements}: its index {index} is not a mirror's whl/ index; "
                              f"cannot install it from --mirror {mirror}")
    if base.rstrip("/") == mirror.rstrip("/"):
        return lock.requirements, None
    moved = f"{mirror.rstrip('/')}/whl/{rel}"
    kept = [ln for ln in lines if not ln.startswith(("--index-url ", "--trusted-host"))]
    head = [f"--index-url {moved}", *([" ".join(pip_trust_args(moved))] if pip_trust_args(moved) else [])]
    out = work / "requirements.lock"
    out.write_text("\n".join([*head, *kept]) + "\n", encoding="utf-8")
    return out, Check("index", "pass", f"the lock names {index} (lock --base-url); installing from --mirror {moved}")


def load_manifest(url: str) -> Manifest | None:
    """The served mirror's manifest, or None when it cannot be fetched (a malformed one raises)."""
    try:
        return fetch_manifest(url)
    except (UpstreamError, OSError):
        return None


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
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version and not hasattr(sys, "pypy_version_info"):
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
    """Verify the pip lock and/or the conda lock of one envs/<target> folder."""
    t0 = time.monotonic()
    checks: list[Check] = []
    modes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix=f"torchdepot-verify-{lock.name}-", dir=opts.workdir))
    keep = opts.keep
    try:
        if lock.requirements.is_file():
            modes.append(_verify_pip(lock, opts, manifest, checks, work))
        conda = lock.conda_lock()
        if conda is not None:
            modes.append(_verify_conda(lock, conda, opts, manifest, checks, work))
        if not modes:
            checks.append(Check("locks", "fail", f"{lock.dir}: neither requirements.lock nor a conda lock"))
            modes.append("precheck")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = any(c.status == "fail" for c in checks)
    installed = "installed" in modes
    result = "fail" if failed else ("pass" if installed else "resolved")
    mode = "installed" if installed else ("precheck" if "precheck" in modes else "resolve-only")
    return EnvResult(lock.name, result, time.monotonic() - t0, tuple(checks), mode, str(work) if keep else None)


def _smoke(py: Path | str, env: dict, timeout: float) -> tuple[dict | None, str]:
    proc = _run([py, "-c", SCRIPT], env, timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, _tail(proc)


def variant_args(lock: EnvLock) -> list[str]:
    """uv's preview flag for a lock of PEP 825 variant wheels (``variant_labels`` in its
    variant.json): uv then picks the label from the mirror's page and variants.json, and
    ``--require-hashes`` holds it to the locked wheel."""
    return ["--preview-features", "wheel-variants"] if lock.variant.get("variant_labels") else []


def _verify_pip(lock: EnvLock, opts: Options, manifest: Manifest | None, checks: list[Check], work: Path) -> str:
    v = lock.variant
    if manifest is not None:
        problems = hash_problems(lock, manifest)
        if problems:
            checks.extend(Check("hashes vs mirror manifest", "fail", p) for p in problems)
            return "precheck"
        checks.append(Check("hashes vs mirror manifest", "pass", f"{len(lock.pins)} pins"))
    else:
        checks.append(Check("hashes vs mirror manifest", "not run", "mirror has no manifest.json; the installer checks hashes"))
    env = tool_env(opts.mirror_url, opts.env_extra)
    req, moved = requirements_for(lock, opts.mirror_url, work)
    if moved is not None:
        checks.append(moved)
    gpu_labels = sorted({lb for lb in (v.get("variant_labels") or {}).values() if lb != "null"})
    if gpu_labels and not gpu_present():
        # uv picks a variant wheel by this host's hardware: a GPU label is never selected here
        checks.append(Check("install (hash-checked, mirror only)", "not run",
                            f"variant {', '.join(gpu_labels)} needs its accelerator on this host (no GPU here); "
                            "uv selects variant wheels by the hardware it runs on"))
        return "resolve-only"
    py = find_python(v["python"]) if v.get("platform") == host_platform() else None
    if py is None:
        return _resolve_only(lock, opts, env, checks, req)
    venv = work / "venv"
    proc = _run([uv_bin(), "venv", "--no-config", "--quiet", "--python", py, venv], env, opts.timeout)
    if proc.returncode:
        checks.append(Check("create env", "fail", _tail(proc)))
        return "installed"
    vpy = _venv_python(venv)
    # the lock itself names the index (--index-url ${TORCHDEPOT_MIRROR}/whl/<acc>); nothing else is consulted
    proc = _run([uv_bin(), "pip", "install", "--no-config", *variant_args(lock), "--python", vpy,
                 "--require-hashes", "--no-deps", "--no-build", "-r", req], env, opts.timeout)
    if proc.returncode:
        checks.append(Check("install (hash-checked, mirror only)", "fail", f"{lock.requirements}: {_tail(proc)}"))
        return "installed"
    checks.append(Check("install (hash-checked, mirror only)", "pass", f"{len(lock.pins)} packages"))
    result, err = _smoke(vpy, env, opts.timeout)
    if result is None:
        checks.append(Check("smoke test", "fail", err))
        return "installed"
    want = next((p.version for p in lock.pins if p.name.lower() == "torch"), v.get("torch"))
    checks.extend(judge(result, want, v.get("cuda"), gpu_present()))
    return "installed"


def _resolve_only(lock: EnvLock, opts: Options, env: dict, checks: list[Check], req: Path) -> str:
    v = lock.variant
    try:
        plat = target_platform(v["platform"])
    except TorchdepotError as exc:
        checks.append(Check("resolve (dry run)", "fail", str(exc)))
        return "resolve-only"
    # uv evaluates markers for the target, not this host; deps on: the mirror must hold the closure
    proc = _run([uv_bin(), "pip", "compile", "--no-config", *variant_args(lock), "--quiet", "--no-header", "--no-build",
                 "--python-version", v["python"], "--python-platform", plat.uv_platform, req],
                env, opts.timeout)
    why = f"cannot run python {v['python']} on {v['platform']} here (this is {host_platform()})"
    if proc.returncode:
        checks.append(Check("resolve (dry run)", "fail", f"{lock.requirements}: {_tail(proc)}"))
    else:
        checks.append(Check("resolve (dry run)", "pass", f"{why}: resolved against the mirror only, not installed or run"))
    return "resolve-only"


def _verify_conda(lock: EnvLock, path: Path, opts: Options, manifest: Manifest | None, checks: list[Check], work: Path) -> str:
    from torchdepot.verify import conda as cv

    v = lock.variant
    try:
        pins = cv.parse_explicit(path.read_text(encoding="utf-8"), str(path))
    except TorchdepotError as exc:
        checks.append(Check("conda lock", "fail", str(exc)))
        return "precheck"
    if manifest is not None:
        problems = cv.hash_problems(pins, manifest, path)
        if problems:
            checks.extend(Check("conda hashes vs mirror manifest", "fail", p) for p in problems)
            return "precheck"
        checks.append(Check("conda hashes vs mirror manifest", "pass", f"{len(pins)} packages"))
    checks.append(cv.build_check(pins, v.get("accelerator", "")))
    subdir = v.get("conda_subdir")
    host_subdir = None
    with contextlib.suppress(TorchdepotError):
        host_subdir = target_platform(host_platform()).conda_subdir
    if not isinstance(subdir, str) or subdir != host_subdir:
        checks.append(Check("conda install", "not run", f"{subdir} packages cannot be installed on {host_platform()} (checked hashes and build only)"))
        return "resolve-only"
    prefix = work / "conda-prefix"
    try:
        n = cv.install(pins, opts.mirror_url, prefix, work, subdir)
    except Exception as exc:  # rattler raises its own exception types; report, never a traceback
        checks.append(Check("conda install (py-rattler, mirror only)", "fail", f"{path}: {one_line(exc)}"))
        return "installed"
    checks.append(Check("conda install (py-rattler, mirror only)", "pass", f"{n} packages into a throwaway prefix"))
    mismatched = cv.installed_problems(prefix, pins)
    checks.append(Check("conda installed records = lock", "fail" if mismatched else "pass",
                        "; ".join(mismatched[:3]) if mismatched else f"{n} records, sha256 each"))
    env = tool_env(opts.mirror_url, opts.env_extra)
    py = prefix / "bin" / "python"
    how = "prefix python"
    if not py.exists():
        # the channel carries no interpreter: run a matching host python on the prefix's site-packages
        host_py = find_python(v["python"])
        if host_py is None:
            checks.append(Check("conda smoke test", "not run", f"no python {v['python']} in the prefix or on this machine"))
            return "installed"
        py, how = Path(host_py), f"host python {v['python']} + PYTHONPATH"
        env["PYTHONPATH"] = str(prefix / "lib" / f"python{v['python']}" / "site-packages")
        env["PYTHONNOUSERSITE"] = "1"
    result, err = _smoke(py, env, opts.timeout)
    if result is None:
        checks.append(Check("conda smoke test", "fail", err))
        return "installed"
    want = next((p.filename.split("-")[1] for p in pins if p.filename.startswith("pytorch-")), None)
    got = result.get("version")
    if got and want and got.split("+")[0] == want:
        result = {**result, "version": want}  # conda versions carry no local label
    for c in judge(result, want, v.get("cuda"), gpu_present()):
        checks.append(Check(f"conda {c.name}", c.status, (c.detail + f" [{how}]").strip()))
    return "installed"
