"""CI matrices from a mirror: one job per (variant, Python, platform) the mirror can serve.

Runner labels: hosted runners for CPU builds on each platform; GPU variants need a machine
with the GPU, so they get self-hosted label sets (``[self-hosted, linux, x64, gpu, cuda-12.6]``,
``[self-hosted, linux, x64, gpu, rocm-6.2]``) that a lab assigns to its runners.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from torchdepot.lockfiles.render import PYLOCK, REQUIREMENTS, conda_lock_name
from torchdepot.model.accel import accelerator_from_dir, accelerator_sort_key
from torchdepot.store.manifest import Manifest

HOSTED = {
    "linux-x86_64": "ubuntu-latest",
    "linux-aarch64": "ubuntu-24.04-arm",
    "windows-amd64": "windows-latest",
    "macos-arm64": "macos-14",
    "macos-x86_64": "macos-13",
}
_SELF_HOSTED_OS = {"linux": "linux", "windows": "windows", "macos": "macos"}
_SELF_HOSTED_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class Job:
    accelerator: str
    python: str
    platform: str
    runner: str | list[str]
    lock: str
    kind: str
    id: str


def runner_for(accelerator: str, platform: str) -> str | list[str]:
    acc = accelerator_from_dir(accelerator)
    if acc is None or acc.kind == "cpu":
        if platform in HOSTED:
            return HOSTED[platform]
        acc_label = "cpu"
    elif acc.kind == "cuda":
        acc_label = f"cuda-{acc.cuda_version}"
    elif acc.kind == "rocm":
        acc_label = "rocm-" + ".".join(str(p) for p in acc.version)
    else:
        acc_label = acc.kind
    os_name, _, arch = platform.partition("-")
    labels = ["self-hosted", _SELF_HOSTED_OS.get(os_name, os_name), _SELF_HOSTED_ARCH.get(arch, arch)]
    if acc is not None and acc.is_gpu:
        labels.append("gpu")
    return labels + [acc_label]


def _lock_path(envs: Path, tid: str, kind: str, subdir: str | None, envs_label: str) -> str | None:
    """The lock `torchdepot lock` wrote for this kind (for pip the first that exists wins), as
    ``<envs_label>/<id>/<name>``; None when there is none: a matrix never names a missing file."""
    if kind == "pip":
        names: tuple[str, ...] = (REQUIREMENTS, PYLOCK)
    else:
        names = (conda_lock_name(subdir),) if subdir else ()
    for name in names:
        if (envs / tid / name).is_file():
            return f"{envs_label}/{tid}/{name}"
    return None


@dataclass(frozen=True)
class MatrixJobs:
    jobs: tuple[Job, ...]  # one per target that has its lock, GPU variants first
    unlocked: tuple[str, ...]  # "<kind> <target id>" of targets left out: no lock in envs/ yet


def jobs(manifest: Manifest, envs: Path, envs_label: str = "envs") -> MatrixJobs:
    """A job per manifest target whose lock exists under ``envs``; the others are listed in
    ``unlocked`` (run ``torchdepot lock`` to write them), never given a path that does not exist."""
    out, unlocked = [], []
    for t in manifest.targets:
        lock = _lock_path(envs, t.id, t.kind, t.subdir, envs_label)
        if lock is None:
            unlocked.append(f"{t.kind} {t.id}")
            continue
        out.append(Job(accelerator=t.accelerator, python=t.python, platform=t.platform,
                       runner=runner_for(t.accelerator, t.platform), lock=lock, kind=t.kind, id=t.id))

    def key(j: Job):
        acc = accelerator_from_dir(j.accelerator)
        py = tuple(int(p) for p in j.python.split(".") if p.isdigit())
        return (accelerator_sort_key(acc) if acc else (9,), j.platform, py, j.kind)

    return MatrixJobs(jobs=tuple(sorted(out, key=key)), unlocked=tuple(sorted(unlocked)))


def render(js: Sequence[Job], fmt: str) -> str:
    rows = [asdict(j) for j in js]
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "github":
        # one line: usable as `matrix: ${{ fromJSON(needs.x.outputs.matrix) }}` or pasted under strategy
        return json.dumps({"include": rows}, separators=(",", ":")) + "\n"
    if fmt == "gitlab":
        # GitLab wants string values in parallel:matrix; a runner label list becomes a tags list
        entries = []
        for r in rows:
            e = {k.upper(): (",".join(v) if isinstance(v, list) else str(v)) for k, v in r.items()}
            entries.append(e)
        doc = {"parallel": {"matrix": entries}}
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    raise ValueError(fmt)
