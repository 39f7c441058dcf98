"""Conda locks: a channel built from wheels with py-rattler-build, a conda + pip target sharing
one id -> lock -> verify installs the explicit lock with py-rattler into a throwaway prefix and
smoke-tests it; a CPU build in a CUDA lock and a tampered conda hash are failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kit.lockmirror import (
    build_mirror,
    cli,
    fake_torch_wheels,
    private_tmp_fixture,  # noqa: F401 (autouse)
)
from torchdepot.ship.recipes import build_wheels, index_channel
from torchdepot.store.fsutil import sha256_file
from torchdepot.store.manifest import FileEntry, Target, TargetPackage, save
from torchdepot.verify.conda import CondaPin, build_check

CPU = "cpu-py311-linux-x86_64"


@pytest.fixture
def mirror(tmp_path) -> Path:
    wheels = fake_torch_wheels(tmp_path / "w")
    root = tmp_path / "m"
    m = build_mirror(root, wheels)
    built = build_wheels(wheels, root / "conda" / "td", python="3.11", subdirs=("linux-64",))
    index_channel(root / "conda" / "td")
    pkgs = []
    for b in built:
        rel = b.path.resolve().relative_to(root.resolve()).as_posix()
        sha, size = sha256_file(b.path)
        m.files.append(FileEntry(rel, sha, size, "conda", b.name, b.version))
        pkgs.append(TargetPackage(b.name, b.version, rel, build=b.build))
    m.targets.append(Target(CPU, "conda", "cpu", "3.11", "linux-x86_64", tuple(pkgs), channel="conda/td", subdir="linux-64"))
    save(root, m)
    assert cli("lock", "--mirror", root, "--out", tmp_path / "envs").exit_code == 0
    return root


def test_conda_lock_installs_with_rattler_and_runs(mirror, tmp_path, private_tmp):
    d = tmp_path / "envs" / CPU
    assert sorted(p.name for p in d.iterdir()) == ["conda-linux-64.lock", "environment.yml", "pylock.toml",
                                                   "requirements.lock", "variant.json"]
    res = cli("verify", d, "--mirror", mirror, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)["results"][0]
    st = {c["name"]: c["status"] for c in r["checks"]}
    assert st["conda hashes vs mirror manifest"] == "pass"
    assert st["conda build = variant"] == "pass"
    assert st["conda install (py-rattler, mirror only)"] == "pass"
    assert st["conda installed records = lock"] == "pass"
    assert st["conda import torch"] == "pass"
    assert st["conda version"] == "pass"
    assert st["conda torch.version.cuda"] == "pass"
    assert st["import torch"] == "pass"  # the pip lock of the same id was verified too
    assert list(private_tmp.iterdir()) == []


def test_conda_tampered_hash_named(mirror, tmp_path):
    lock = tmp_path / "envs" / CPU / "conda-linux-64.lock"
    text = lock.read_text()
    sha = text.split("pytorch-2.13.0-cpu_py311_0.conda#sha256:")[1][:64]
    lock.write_text(text.replace(sha, "1" * 64))
    res = cli("verify", lock.parent, "--mirror", mirror)
    assert res.exit_code == 1
    assert f"{lock}: pytorch-2.13.0-cpu_py311_0.conda hash sha256:111111111111... != mirror's" in res.stdout


def test_conda_tampered_hash_without_manifest_fails_install(mirror, tmp_path):
    lock = tmp_path / "envs" / CPU / "conda-linux-64.lock"
    text = lock.read_text()
    sha = text.split("filelock-3.0.0-py311_0.conda#sha256:")[1][:64]
    lock.write_text(text.replace(sha, "2" * 64))
    (mirror / "manifest.json").unlink()
    res = cli("verify", lock.parent, "--mirror", mirror)
    assert res.exit_code == 1
    assert "conda install (py-rattler, mirror only): fail" in res.stdout
    assert str(lock) in res.stdout


@pytest.mark.parametrize(("fname", "acc", "status"), [
    ("pytorch-2.5.1-py3.11_cpu_0.tar.bz2", "cpu", "pass"),
    ("pytorch-2.5.1-py3.11_cpu_0.tar.bz2", "cu121", "fail"),  # a solver silently picked the CPU build
    ("pytorch-2.5.1-py3.11_cuda12.1_cudnn9.1.0_0.tar.bz2", "cu121", "pass"),
    ("pytorch-2.6.0-cuda126_mkl_py311_h0123456_302.conda", "cu126", "pass"),
    ("pytorch-2.6.0-cpu_mkl_py311_h0123456_102.conda", "cu126", "fail"),
    ("numpy-2.0.0-py311_0.conda", "cpu", "not run"),
])
def test_build_check(fname, acc, status):
    assert build_check((CondaPin(f"http://m/conda/c/linux-64/{fname}", "0" * 64),), acc).status == status


@pytest.mark.e2e  # builds a ~10 MB conda python from this machine's interpreter
def test_conda_env_with_its_own_python_imports_torch_inside_the_prefix(tmp_path, private_tmp):
    """The channel carries a runnable conda ``python`` (tests/kit/condapython.build_host_python: the
    Debian interpreter and stdlib under the conda layout), so verify runs the smoke test with the
    prefix's own interpreter, not a host Python on its site-packages."""
    from tests.kit.condapython import build_host_python, host_python_available

    assert host_python_available("3.11"), "this test needs /usr/bin/python3.11 (Debian's python3.11 package)"
    wheels = fake_torch_wheels(tmp_path / "w")
    root = tmp_path / "m"
    m = build_mirror(root, wheels)
    chan = root / "conda" / "td"
    built = [b.path for b in build_wheels(wheels, chan, python="3.11", subdirs=("linux-64",))]
    built.append(build_host_python(chan, "3.11"))
    index_channel(chan)
    pkgs = []
    for path in built:
        rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
        sha, size = sha256_file(Path(path))
        name, version, build = Path(path).name[: -len(".conda")].rsplit("-", 2)
        m.files.append(FileEntry(rel, sha, size, "conda", name, version))
        pkgs.append(TargetPackage(name, version, rel, build=build))
    m.targets.append(Target(CPU, "conda", "cpu", "3.11", "linux-x86_64", tuple(pkgs), channel="conda/td",
                            subdir="linux-64"))
    save(root, m)
    assert cli("lock", "--mirror", root, "--out", tmp_path / "envs").exit_code == 0
    res = cli("verify", tmp_path / "envs" / CPU, "--mirror", root, "--json")
    assert res.exit_code == 0, res.output
    checks = {c["name"]: c for c in json.loads(res.stdout)["results"][0]["checks"]}
    assert checks["conda installed records = lock"]["status"] == "pass"
    assert checks["conda import torch"]["status"] == "pass"
    assert "[prefix python]" in checks["conda import torch"]["detail"]
