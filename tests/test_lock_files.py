"""`torchdepot lock`: contents of each file, byte-identical re-runs, conda targets, drivers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from tests.kit.lockmirror import build_mirror, fake_torch_wheels
from torchdepot.cli import main
from torchdepot.lockfiles.render import render
from torchdepot.model.accel import parse_accelerator
from torchdepot.model.gpu_tables import min_driver, min_nvidia_driver
from torchdepot.store.manifest import FileEntry, Manifest, Target, TargetPackage
from torchdepot.verify.locks import parse_requirements


def lock(mirror: Path, out: Path, *extra: str):
    res = CliRunner().invoke(main, ["lock", "--mirror", str(mirror), "--out", str(out), *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def mirror(tmp_path) -> Path:
    build_mirror(tmp_path / "m", fake_torch_wheels(tmp_path / "w"), extra_targets=(("cu126", "3.10"),))
    return tmp_path / "m"


def test_lock_twice_identical_bytes_and_no_local_paths(tmp_path, mirror):
    lock(mirror, tmp_path / "e1")
    first = snapshot(tmp_path / "e1")
    assert sorted(first) == sorted(
        f"{t}/{n}" for t in ("cpu-py311-linux-x86_64", "cu126-py310-linux-x86_64")
        for n in ("environment.yml", "pylock.toml", "requirements.lock", "variant.json"))
    res = lock(mirror, tmp_path / "e1")
    assert snapshot(tmp_path / "e1") == first
    assert "0 file(s) written" in res.output
    # a second mirror copy elsewhere gives the very same bytes: nothing machine-specific inside
    import shutil
    shutil.copytree(mirror, tmp_path / "elsewhere" / "m2")
    lock(tmp_path / "elsewhere" / "m2", tmp_path / "e2")
    assert snapshot(tmp_path / "e2") == first
    for rel, data in first.items():
        text = data.decode()
        assert str(tmp_path) not in text, rel
        assert "file://" not in text, rel
        assert not re.search(r"20\d\d-\d\d-\d\d", text), rel  # no timestamps


def test_requirements_lock_pins_and_hashes(tmp_path, mirror):
    lock(mirror, tmp_path / "e")
    d = tmp_path / "e" / "cpu-py311-linux-x86_64"
    text = (d / "requirements.lock").read_text()
    assert "--index-url ${TORCHDEPOT_MIRROR}/whl/cpu\n" in text
    m = json.loads((mirror / "manifest.json").read_text())
    sha = {f["project"]: f["sha256"] for f in m["files"]}
    pins = parse_requirements(text, "x")
    assert [(p.name, p.version, p.sha256) for p in pins] == [
        ("filelock", "3.0.0", (sha["filelock"],)), ("torch", "2.13.0+cpu", (sha["torch"],))]


def test_pylock_is_pep751(tmp_path, mirror):
    lock(mirror, tmp_path / "e", "--base-url", "http://mirror.lab:8080/")
    doc = tomllib.loads((tmp_path / "e" / "cpu-py311-linux-x86_64" / "pylock.toml").read_text())
    assert doc["lock-version"] == "1.0"
    assert doc["created-by"] == "torchdepot"
    assert doc["requires-python"] == "==3.11.*"
    assert "sys_platform == 'linux'" in doc["environments"][0]
    torch = next(p for p in doc["packages"] if p["name"] == "torch")
    w = torch["wheels"][0]
    assert torch["version"] == "2.13.0+cpu"
    assert torch["index"] == "http://mirror.lab:8080/whl/cpu"
    assert w["url"] == "http://mirror.lab:8080/packages/torch/torch-2.13.0%2Bcpu-py3-none-any.whl"
    assert len(w["hashes"]["sha256"]) == 64
    assert w["size"] > 0


def test_pylock_for_the_mirror_itself_uses_relative_paths():
    """The mirror's targets/<id>/pylock.toml comes from the same writer, with file paths."""
    from torchdepot.lockfiles.render import pins_for, pylock_toml

    m = _conda_manifest()
    pip = next(t for t in m.targets if t.kind == "pip")
    doc = tomllib.loads(pylock_toml(pip, pins_for(pip, m.by_path()), "../..", location="path"))
    assert [p["name"] for p in doc["packages"]] == ["numpy", "torch"]
    torch = doc["packages"][1]
    assert "index" not in torch
    assert torch["wheels"] == [{"name": "torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl", "size": 7,
                                "path": "../../packages/torch/torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl",
                                "hashes": {"sha256": "c" * 64}}]
    url_doc = tomllib.loads(pylock_toml(pip, pins_for(pip, m.by_path()), "http://m"))
    assert url_doc["packages"][1]["wheels"][0]["url"] == "http://m/packages/torch/torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl"
    assert {k: v for k, v in doc.items() if k != "packages"} == {k: v for k, v in url_doc.items() if k != "packages"}


def test_environment_yml_and_variant(tmp_path, mirror):
    lock(mirror, tmp_path / "e")
    d = tmp_path / "e" / "cu126-py310-linux-x86_64"
    env = yaml.safe_load((d / "environment.yml").read_text())
    assert env["name"] == "torchdepot-cu126-py310-linux-x86_64"
    assert env["channels"][-1] == "nodefaults"
    pip = env["dependencies"][-1]["pip"]
    assert pip[0] == "--index-url ${TORCHDEPOT_MIRROR}/whl/cu126"
    assert "torch==2.13.0+cpu" in pip
    v = json.loads((d / "variant.json").read_text())
    assert v["accelerator"] == "cu126"
    assert v["cuda"] == "12.6"
    assert v["python"] == "3.10"
    assert v["min_nvidia_driver"] == "525.60.13"
    assert v["torch"] == "2.13.0+cpu"


def _conda_manifest() -> Manifest:
    files = [
        FileEntry("conda/pytorch/linux-64/pytorch-2.5.1-py3.11_cpu_0.tar.bz2", "a" * 64, 10, "conda", "pytorch", "2.5.1"),
        FileEntry("conda/pytorch/noarch/pytorch-mutex-1.0-cpu.tar.bz2", "b" * 64, 5, "conda", "pytorch-mutex", "1.0"),
        FileEntry("packages/torch/torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl", "c" * 64, 7, "wheel", "torch", "2.5.1+cpu"),
        FileEntry("packages/numpy/numpy-2.0.0-cp311-cp311-linux_x86_64.whl", "d" * 64, 7, "wheel", "numpy", "2.0.0"),
    ]
    conda = Target("cpu-py311-linux-x86_64", "conda", "cpu", "3.11", "linux-x86_64", (
        TargetPackage("pytorch-mutex", "1.0", files[1].path, build="cpu"),
        TargetPackage("pytorch", "2.5.1", files[0].path, build="py3.11_cpu_0"),
    ), channel="conda/pytorch", subdir="linux-64")
    pip = Target("cpu-py311-linux-x86_64", "pip", "cpu", "3.11", "linux-x86_64", (
        TargetPackage("torch", "2.5.1+cpu", files[2].path), TargetPackage("numpy", "2.0.0", files[3].path)), index="whl/cpu")
    return Manifest(files=files, targets=[conda, pip])


def test_conda_and_pip_targets_share_a_folder():
    out = render(_conda_manifest(), "http://m")
    docs = out["cpu-py311-linux-x86_64"]
    assert sorted(docs) == ["conda-linux-64.lock", "environment.yml", "pylock.toml", "requirements.lock", "variant.json"]
    explicit = docs["conda-linux-64.lock"].splitlines()
    assert "@EXPLICIT" in explicit
    assert "# platform: linux-64" in explicit
    assert "http://m/conda/pytorch/linux-64/pytorch-2.5.1-py3.11_cpu_0.tar.bz2#sha256:" + "a" * 64 in explicit
    env = yaml.safe_load(docs["environment.yml"])
    assert env["channels"] == ["http://m/conda/pytorch", "nodefaults"]
    deps = env["dependencies"]
    assert "pytorch=2.5.1=py3.11_cpu_0" in deps
    assert "pytorch-mutex=1.0=cpu" in deps
    assert deps[0] == "python=3.11"  # pinned even when the solve's pins do not list python
    pip = next(d for d in deps if isinstance(d, dict))["pip"]
    # torch comes from conda, not twice; "m" is a plain-HTTP LAN host, so pip is told to trust it
    assert pip == ["--index-url http://m/whl/cpu", "--trusted-host m", "numpy==2.0.0"]
    v = json.loads(docs["variant.json"])
    assert v["kinds"] == ["conda", "pip"]
    assert v["torch"] == "2.5.1+cpu"
    assert v["conda_subdir"] == "linux-64"


def test_missing_file_in_manifest_is_an_error(tmp_path):
    m = _conda_manifest()
    m.files.pop()  # numpy's file vanished
    from torchdepot.errors import TorchdepotError

    with pytest.raises(TorchdepotError, match="numpy"):
        render(m)


def test_lock_without_manifest_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["lock", "--mirror", str(tmp_path), "--out", str(tmp_path / "e")])
    assert res.exit_code == 1
    assert res.output.startswith("torchdepot: error: ")
    assert "manifest.json" in res.output


@pytest.mark.parametrize(("acc", "os_name", "want"), [
    ("cu130", "linux", "580"), ("cu128", "linux", "525.60.13"), ("cu126", "windows", "528.33"),
    ("cu118", "linux", "450.80.02"), ("cu110", "linux", "450.36.06"), ("cu102", "linux", "440.33"),
    ("cu92", "linux", "396.26"), ("cpu", "linux", None), ("rocm6.2", "linux", None),
])
def test_driver_table(acc, os_name, want):
    assert min_nvidia_driver(parse_accelerator(acc), os_name) == want


def test_driver_table_matches_shared_compat(data_dir):
    rows = yaml.safe_load((data_dir / "compat.yaml").read_text())["nvidia_driver_minimums"]["minor_version_compatibility"]["rows"]
    assert len(rows) > 10
    for r in rows:
        assert min_driver(r["cuda"]) == str(r["linux_min_driver"]), r
        assert min_driver(r["cuda"], "windows") == str(r["windows_min_driver"]), r


# --- parsers of our own lock formats: round trip + only project errors on junk -------------

import contextlib

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from torchdepot.errors import TorchdepotError
from torchdepot.lockfiles.render import Pinned, conda_explicit, requirements_lock
from torchdepot.verify.conda import parse_explicit

_names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
_versions = st.from_regex(r"[0-9]{1,2}(\.[0-9]{1,2}){0,2}(\+cu1[0-9]{2}|\+cpu)?", fullmatch=True)
_sha = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, st.tuples(_versions, _sha), min_size=1, max_size=8))
def test_requirements_lock_round_trip(pkgs):
    from packaging.utils import canonicalize_name

    pkgs = {str(canonicalize_name(n)): v for n, v in pkgs.items()}
    pins = [Pinned(n, v, f"packages/{n}/{n}-{v}-py3-none-any.whl", sha, 1) for n, (v, sha) in sorted(pkgs.items())]
    t = Target("cpu-py311-linux-x86_64", "pip", "cpu", "3.11", "linux-x86_64", index="whl/cpu")
    parsed = parse_requirements(requirements_lock(t, pins, "${TORCHDEPOT_MIRROR}"), "x")
    assert {(p.name, p.version, p.sha256) for p in parsed} == {(n, v, (sha,)) for n, (v, sha) in pkgs.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_names, _versions, _sha), min_size=1, max_size=8))
def test_conda_explicit_round_trip(items):
    pins = [Pinned(n, v, f"conda/c/linux-64/{n}-{v}-0.conda", sha, 1, "0") for n, v, sha in items]
    t = Target("cpu-py311-linux-x86_64", "conda", "cpu", "3.11", "linux-x86_64", channel="conda/c", subdir="linux-64")
    parsed = parse_explicit(conda_explicit(t, pins, "http://m"), "x")
    assert [(p.filename, p.sha256) for p in parsed] == [(p.filename, p.sha256) for p in pins]


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_lock_parsers_raise_only_project_errors(text):
    for parse in (parse_requirements, parse_explicit):
        with contextlib.suppress(TorchdepotError):
            parse(text, "x")
