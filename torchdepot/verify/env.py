"""``env create``: a persistent environment from a lock, from the mirror only, optionally a Jupyter kernel.

The same steps as ``verify`` (pins checked against the mirror's manifest, a hash-checked
``--no-deps`` install of ``requirements.lock`` with no user configuration, the smoke test),
but into a prefix the user names and keeps. With a kernel name, ipykernel is installed from
the mirror's variant index (constrained to the locked versions, so the locked packages are
never changed) and registered in the user's Jupyter data directory (``jupyter --data-dir``;
``JUPYTER_DATA_DIR`` respected), where ``jupyter kernelspec list`` finds it.

Invariants: nothing the user already has is overwritten: the prefix must not exist or be an
empty directory, and an existing kernel of the same name is an error. Every check that can
fail without installing anything (lock, prefix, Python, kernel name, ipykernel on the
mirror) runs before the prefix is created.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.model.platforms import host_platform
from torchdepot.resolve.uv import uv_bin
from torchdepot.verify.locks import EnvLock, hash_problems, read_env
from torchdepot.verify.run import (
    _run,
    _smoke,
    _tail,
    _venv_python,
    find_python,
    gpu_present,
    load_manifest,
    requirements_for,
    tool_env,
)
from torchdepot.verify.smoke import Check, judge

KERNEL_PACKAGE = "ipykernel"
_KERNEL_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what jupyter_client accepts as a kernel name


class EnvCreateError(TorchdepotError):
    """An environment that cannot be created as asked; one line naming the input."""


@dataclass(frozen=True)
class Kernel:
    name: str
    display_name: str | None = None


@dataclass(frozen=True)
class EnvCreated:
    prefix: Path
    python: Path
    checks: tuple[Check, ...]
    kernel_dir: Path | None  # <jupyter data dir>/kernels/<name> when a kernel was registered
    seconds: float

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)


KERNEL_NAME_RULE = "a kernel name is letters, digits, '.', '_' and '-' only"


def check_kernel_name(name: str) -> str:
    if not _KERNEL_NAME.fullmatch(name):
        raise EnvCreateError(f"--register-kernel {name!r}: {KERNEL_NAME_RULE}")
    return name


def _check_prefix(prefix: Path) -> None:
    if prefix.exists() and (not prefix.is_dir() or any(prefix.iterdir())):
        raise EnvCreateError(f"--prefix {prefix}: already exists and is not an empty directory (nothing is overwritten)")


def _index_has(mirror: str, index: str, project: str) -> bool:
    """Whether the mirror's ``index`` (``whl/cpu``) lists ``project`` (a 200 for its page)."""
    url = f"{mirror.rstrip('/')}/{index.strip('/')}/{project}/"
    if urllib.parse.urlsplit(url).scheme == "file":
        from torchdepot.net.http import file_url_path

        return (file_url_path(url) / "index.html").is_file()
    from torchdepot.errors import UpstreamError
    from torchdepot.net.http import HttpStatusError, make_session

    with make_session() as client:
        try:
            client.request("GET", url).close()
        except HttpStatusError as exc:
            return exc.status not in (403, 404, 410)  # other statuses: the install step says what went wrong
        except UpstreamError:  # unreachable: the install step reports it in its own words
            return True
        return True


def _plan_checks(lock: EnvLock, mirror: str, prefix: Path, kernel: Kernel | None) -> tuple[str, str]:
    """Everything checkable before writing: -> (host python, variant index)."""
    v = lock.variant
    if not lock.requirements.is_file():
        raise EnvCreateError(f"{lock.dir}: no requirements.lock (env create installs pip locks; run torchdepot lock)")
    if v.get("platform") != host_platform():
        raise EnvCreateError(f"{lock.dir}: a {v.get('platform')} environment cannot be created on {host_platform()}")
    _check_prefix(prefix)
    py = find_python(str(v.get("python")))
    if py is None:
        raise EnvCreateError(f"{lock.dir}: needs Python {v.get('python')}, which is not on this machine "
                             f"(install it, e.g. uv python install {v.get('python')})")
    manifest = load_manifest(mirror)
    if manifest is not None:
        problems = hash_problems(lock, manifest)
        if problems:
            raise EnvCreateError(f"{lock.dir}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    index = f"whl/{v.get('accelerator', 'cpu')}"
    if kernel is not None:
        check_kernel_name(kernel.name)
        if not _index_has(mirror, index, KERNEL_PACKAGE):
            raise EnvCreateError(f"{KERNEL_PACKAGE} is not on the mirror ({mirror}/{index}/): add {KERNEL_PACKAGE} to "
                                 f"extra_packages in the mirror spec and run torchdepot mirror, or drop --register-kernel")
    return py, index


def _register(vpy: Path, lock: EnvLock, mirror: str, index: str, kernel: Kernel, env: dict, timeout: float,
              work: Path) -> tuple[Check, Path | None]:
    # ipykernel and its dependencies from the mirror's variant index only; the locked pins are
    # constraints, so adding the kernel never changes a locked package
    constraints = work / "locked.txt"
    constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in lock.pins), encoding="utf-8")
    proc = _run([uv_bin(), "pip", "install", "--no-config", "--python", vpy, "--no-build",
                 "--index-url", f"{mirror.rstrip('/')}/{index}", "-c", constraints, KERNEL_PACKAGE], env, timeout)
    if proc.returncode:
        return Check("install ipykernel (mirror only)", "fail",
                     f"{KERNEL_PACKAGE} or a dependency cannot be installed from {mirror}/{index}: {_tail(proc)}"), None
    where = _run([vpy, "-c", "from jupyter_core.paths import jupyter_data_dir; print(jupyter_data_dir())"], env, timeout)
    if where.returncode:
        return Check("register kernel", "fail", _tail(where)), None
    kernel_dir = Path(where.stdout.strip()) / "kernels" / kernel.name.lower()
    if kernel_dir.exists():
        return Check("register kernel", "fail", f"a kernel named {kernel.name} is already registered at {kernel_dir} "
                     f"(choose another name, or remove it: jupyter kernelspec remove {kernel.name})"), None
    cmd = [vpy, "-m", "ipykernel", "install", "--user", "--name", kernel.name]
    if kernel.display_name:
        cmd += ["--display-name", kernel.display_name]
    proc = _run(cmd, env, timeout)
    if proc.returncode or not (kernel_dir / "kernel.json").is_file():
        return Check("register kernel", "fail", _tail(proc) or f"no kernel.json in {kernel_dir}"), None
    spec = json.loads((kernel_dir / "kernel.json").read_text(encoding="utf-8"))
    return Check("register kernel", "pass", f"{kernel.name} ({spec.get('display_name')}) in {kernel_dir}"), kernel_dir


def create_env(lock_dir: Path, prefix: Path, mirror: str, kernel: Kernel | None = None, *,
               timeout: float = 900.0, env_extra: tuple[tuple[str, str], ...] = ()) -> EnvCreated:
    """Create ``prefix`` from ``lock_dir`` (an ``envs/<id>`` folder) and the mirror at ``mirror``
    (a URL). Raises :class:`EnvCreateError` before writing anything when it cannot start;
    later failures are ``fail`` checks in the result (the prefix is kept for inspection)."""
    t0 = time.monotonic()
    lock = read_env(Path(lock_dir))
    prefix = Path(prefix).absolute()
    py, index = _plan_checks(lock, mirror, prefix, kernel)
    env = tool_env(mirror, env_extra)
    checks: list[Check] = [Check("hashes vs mirror manifest", "pass", f"{len(lock.pins)} pins")]
    with tempfile.TemporaryDirectory(prefix="torchdepot-env-") as tmp:
        req, moved = requirements_for(lock, mirror, Path(tmp))  # before the prefix exists: may refuse
        if moved is not None:
            checks.append(moved)
        return _create(lock, prefix, mirror, kernel, py, index, env, checks, req, timeout, t0)


def _create(lock: EnvLock, prefix: Path, mirror: str, kernel: Kernel | None, py: str, index: str, env: dict,
            checks: list[Check], req: Path, timeout: float, t0: float) -> EnvCreated:
    proc = _run([uv_bin(), "venv", "--no-config", "--quiet", "--python", py, prefix], env, timeout)
    if proc.returncode:
        raise EnvCreateError(f"--prefix {prefix}: cannot create the environment: {_tail(proc)}")
    vpy = _venv_python(prefix)
    kernel_dir = None
    # the lock names its index (--index-url ${TORCHDEPOT_MIRROR}/whl/<acc>, or a --base-url one
    # pointed at --mirror here); nothing else is consulted
    proc = _run([uv_bin(), "pip", "install", "--no-config", "--python", vpy, "--require-hashes", "--no-deps",
                 "--no-build", "-r", req], env, timeout)
    if proc.returncode:
        checks.append(Check("install (hash-checked, mirror only)", "fail", f"{lock.requirements}: {_tail(proc)}"))
        return EnvCreated(prefix, vpy, tuple(checks), None, time.monotonic() - t0)
    checks.append(Check("install (hash-checked, mirror only)", "pass", f"{len(lock.pins)} packages"))
    result, err = _smoke(vpy, env, timeout)
    v = lock.variant
    if result is None:
        checks.append(Check("smoke test", "fail", err))
    else:
        want = next((p.version for p in lock.pins if p.name.lower() == "torch"), v.get("torch"))
        checks.extend(judge(result, want, v.get("cuda"), gpu_present()))
    if kernel is not None and not any(c.status == "fail" for c in checks):
        with tempfile.TemporaryDirectory(prefix="torchdepot-env-") as tmp:
            check, kernel_dir = _register(vpy, lock, mirror, index, kernel, env, timeout, Path(tmp))
        checks.append(check)
    return EnvCreated(prefix, vpy, tuple(checks), kernel_dir, time.monotonic() - t0)
