"""doctor's one decision in every installer's words (issue 24, item 4), on recorded
nvidia-smi outputs of real GPU generations, checked against the researched arch table in
``shared/data/cuda_arch.md`` and against a real conda solver (py-rattler) that reads the
printed ``CONDA_OVERRIDE_CUDA`` / ``CONDA_OVERRIDE_CUDA_ARCH``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_doctor import FIX, doctor, doctor_json, fake_tool
from torchdepot.doctor.installers import installer_facts


def _arch_range(data_dir: Path, torch: str, variant: str) -> tuple[int, int]:
    """(lowest, highest) SASS arch of ``variant`` in cuda_arch.md's Linux x86_64 row for ``torch``."""
    text = (data_dir / "cuda_arch.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {torch} | "))
    m = re.search(rf"{variant} `sm_(\d+)…sm_(\d+)`", row)
    assert m, row
    return int(m.group(1)), int(m.group(2))


def _sm(cap: str) -> int:
    major, minor = cap.split(".")
    return int(major) * 10 + int(minor)


@pytest.mark.parametrize(("fixture", "accelerator", "low_cap", "torch"), [
    ("smi_gtx1080_580.csv", "cu126", "6.1", "2.14"),  # Pascal: driver runs 13.2, arch only in cu126
    ("smi_multi_525.csv", "cu126", "7.0", "2.14"),    # Volta
    ("smi_single_535.csv", "cu126", "8.0", "2.14"),   # Ampere on a 12.x driver
    ("smi_multi_580.csv", "cu132", "8.6", "2.14"),    # RTX 5090 (12.0) + A6000 (8.6): the lowest is CEP-46's
])
def test_recorded_gpu_facts_for_every_installer(tmp_path, data_dir, fixture, accelerator, low_cap, torch):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / fixture)
    r = doctor_json(tmp_path)
    inst = r["installers"]
    caps = sorted({g["compute_cap"] for g in r["gpus"]}, key=_sm)
    assert inst["accelerator"] == r["recommended"] == accelerator
    assert inst["torch"] == torch
    assert inst["pip"] == {"index": f"whl/{accelerator}"}
    assert inst["uv"] == {"torch_backend": accelerator}
    cuda = f"{accelerator[2:-1]}.{accelerator[-1]}"
    assert inst["conda"]["CONDA_OVERRIDE_CUDA"] == cuda
    assert inst["conda"]["CONDA_OVERRIDE_CUDA_ARCH"] == low_cap
    assert f"cuda-version={cuda}" in inst["conda"]["specs"]
    assert inst["variant"]["label"] == f"cuda{cuda}"
    assert inst["variant"]["properties"] == [f"nvidia :: cuda_version_lower_bound :: {cuda}",
                                             *(f"nvidia :: sm_arch :: {_sm(c)}_real" for c in caps)]
    assert inst["variant"]["env"] == {"NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION": cuda,
                                      "NV_VARIANT_PROVIDER_FORCE_SM_ARCH": low_cap}
    assert inst["variant"]["env"].items() <= inst["env"].items()
    # The researched table agrees: the chosen 2.14 build carries every GPU's architecture, and
    # a Pascal/Volta GPU is outside cu130's range, so 12.6 is the newest build it runs.
    if accelerator == "cu126":
        low, high = _arch_range(data_dir, "2.14", "cu126")
        assert all(low <= _sm(c) <= high for c in caps)
        if _sm(low_cap) < 75:
            assert _sm(low_cap) < _arch_range(data_dir, "2.14", "cu130")[0]
            assert not any(c["accelerator"] in ("cu130", "cu132") and c["fits"] == "yes" for c in r["candidates"])


def test_text_names_each_installer(tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_gtx1080_580.csv")
    text = doctor(tmp_path).stdout
    assert "uv          --torch-backend cu126  (or UV_TORCH_BACKEND)" in text
    assert "conda       CONDA_OVERRIDE_CUDA=12.6 CONDA_OVERRIDE_CUDA_ARCH=6.1 pytorch cuda-version=12.6" in text
    assert "variant     cuda12.6 (nvidia :: cuda_version_lower_bound :: 12.6, nvidia :: sm_arch :: 61_real)" in text


def test_cpu_machine_facts(tmp_path):
    r = doctor_json(tmp_path)  # no nvidia-smi on PATH, empty sysroot
    inst = r["installers"]
    assert inst["accelerator"] == "cpu"
    assert inst["conda"]["CONDA_OVERRIDE_CUDA"] == ""  # conda: an empty override removes __cuda
    assert inst["conda"]["CONDA_OVERRIDE_CUDA_ARCH"] is None
    assert inst["variant"] == {"label": "null", "properties": [], "env": {}}
    assert doctor(tmp_path, "--format", "env").stdout.splitlines() == [
        "export UV_TORCH_BACKEND=cpu", "export CONDA_OVERRIDE_CUDA=''"]


def test_rocm_and_xpu_have_no_conda_override():
    for acc in ("rocm7.1", "xpu"):
        f = installer_facts(acc, None)
        assert f.conda_override_cuda is None
        assert f.env() == {"UV_TORCH_BACKEND": acc}
        assert f.variant_label == acc


def _channel(root: Path) -> Path:
    """A conda-forge-shaped repodata (records only: a solve reads no package files)."""
    sub = root / "linux-64"
    sub.mkdir(parents=True)
    (root / "noarch").mkdir()
    (root / "noarch" / "repodata.json").write_text(json.dumps({"info": {"subdir": "noarch"}, "packages": {}}))

    def rec(build: str, number: int, depends: list[str]) -> dict:
        return {"name": "pytorch", "version": "2.9.1", "build": build, "build_number": number,
                "depends": depends, "subdir": "linux-64", "size": 1, "md5": "0" * 32, "sha256": "0" * 64}
    pkgs = {
        "pytorch-2.9.1-cpu_generic_py311_h0_0.conda": rec("cpu_generic_py311_h0_0", 0, []),
        "pytorch-2.9.1-cuda126_py311_h1_300.conda": rec("cuda126_py311_h1_300", 300, ["__cuda >=12.6", "__cuda_arch >=5.0"]),
        "pytorch-2.9.1-cuda130_py311_h2_301.conda": rec("cuda130_py311_h2_301", 301, ["__cuda >=13.0", "__cuda_arch >=7.5"]),
    }
    (sub / "repodata.json").write_text(json.dumps({"info": {"subdir": "linux-64"}, "packages": {},
                                                   "packages.conda": pkgs}))
    return root


@pytest.mark.parametrize(("fixture", "build"), [
    ("smi_gtx1080_580.csv", "cuda126_py311_h1_300"),  # the driver would allow 13.x; the GPU's arch does not
    ("smi_b200_580.csv", "cuda130_py311_h2_301"),
    (None, "cpu_generic_py311_h0_0"),
])
def test_conda_solver_follows_the_printed_env(tmp_path, fixture, build):
    """`eval "$(torchdepot doctor --format env)"` then a conda solve: rattler reads the
    overrides as conda does and picks the build doctor chose."""
    if fixture:
        fake_tool(tmp_path / "bin", "nvidia-smi", FIX / fixture)
    exports = doctor(tmp_path, "--format", "env").stdout
    channel = _channel(tmp_path / "channel")
    solve = (
        "import asyncio, rattler\n"
        "from rattler import VirtualPackage, VirtualPackageOverrides\n"
        "vp = [v.into_generic() for v in VirtualPackage.detect(VirtualPackageOverrides.from_env())]\n"
        f"recs = asyncio.run(rattler.solve([rattler.Channel({str(channel)!r})], ['pytorch'],\n"
        "    platforms=['linux-64', 'noarch'], virtual_packages=vp, timestamp_policy='allow-missing'))\n"
        "print([r.build for r in recs if r.name.normalized == 'pytorch'][0], flush=True)\n"
        "import os; os._exit(0)  # py-rattler 0.28 can abort in its runtime's teardown at exit\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDA_OVERRIDE_")}
    (tmp_path / "solve.py").write_text(solve)
    script = f"{exports}\nexec {shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'solve.py'))}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == build
