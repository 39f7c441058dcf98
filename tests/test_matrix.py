"""torchdepot matrix: jobs from manifest targets + envs locks; github/gitlab/json renderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.mirror_fixture import CPU_ID, make_mirror
from torchdepot.cli import main
from torchdepot.site.matrix import runner_for


@pytest.fixture
def site(tmp_path):
    make_mirror(tmp_path / "mirror", envs=tmp_path / "envs")
    r = CliRunner().invoke(main, ["lock", "--mirror", str(tmp_path / "mirror"), "--out", str(tmp_path / "envs")])
    assert r.exit_code == 0, r.output
    return tmp_path


def invoke(site, fmt, envs=None):
    r = CliRunner().invoke(
        main, ["matrix", "--mirror", str(site / "mirror"), "--envs", str(envs or site / "envs"), "--format", fmt])
    assert r.exit_code == 0, r.output
    return r.stdout


def test_every_printed_lock_exists_and_unlocked_targets_are_named(site, tmp_path):
    import shutil

    rows = json.loads(invoke(site, "json"))
    assert len(rows) == 4
    assert all((tmp_path / r["lock"]).is_file() or Path(r["lock"]).is_file() for r in rows)
    shutil.rmtree(site / "envs" / "cu126-py311-linux-x86_64")
    r = CliRunner().invoke(main, ["matrix", "--mirror", str(site / "mirror"), "--envs",
                                                  str(site / "envs"), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 3
    assert all(Path(x["lock"]).is_file() for x in rows)
    assert "cu126-py311-linux-x86_64" not in r.stdout
    assert r.stderr.startswith("matrix: left out 1 target(s)")
    assert "pip cu126-py311-linux-x86_64" in r.stderr
    assert "torchdepot lock --mirror" in r.stderr
    # no locks at all: one line, exit 1, nothing on stdout
    r = CliRunner().invoke(main, ["matrix", "--mirror", str(site / "mirror"), "--envs",
                                                  str(tmp_path / "none"), "--format", "github"])
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.startswith("torchdepot: error: ")
    assert "no lock for any of the mirror's 4 target(s)" in r.stderr
    assert r.stderr.count("\n") == 1


def test_json(site):
    rows = json.loads(invoke(site, "json"))
    assert all({"accelerator", "python", "platform", "runner", "lock"} <= set(r) for r in rows)
    cpu = [r for r in rows if r["id"] == CPU_ID and r["kind"] == "pip"][0]
    assert cpu == {**cpu, "accelerator": "cpu", "python": "3.11", "platform": "linux-x86_64", "runner": "ubuntu-latest",
                   "lock": f"{site / 'envs'}/{CPU_ID}/requirements.lock"}
    cu = [r for r in rows if r["accelerator"] == "cu126"][0]
    assert cu["runner"] == ["self-hosted", "linux", "x64", "gpu", "cuda-12.6"]
    win = [r for r in rows if r["accelerator"] == "cu118"][0]
    assert win["runner"] == ["self-hosted", "windows", "x64", "gpu", "cuda-11.8"]
    assert win["python"] == "3.10"
    assert rows[-1]["accelerator"] == "cpu"  # GPU variants first, cpu last


def test_github_is_one_line_include(site):
    out = invoke(site, "github")
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert set(doc) == {"include"}
    assert len(doc["include"]) == 4


def test_gitlab_parallel_matrix(site):
    doc = yaml.safe_load(invoke(site, "gitlab"))
    entries = doc["parallel"]["matrix"]
    assert len(entries) == 4
    assert all(isinstance(v, str) for e in entries for v in e.values())
    assert {"ACCELERATOR": "cu126", "RUNNER": "self-hosted,linux,x64,gpu,cuda-12.6"}.items() <= [e for e in entries if e["ACCELERATOR"] == "cu126"][0].items()


@pytest.mark.parametrize(("acc", "platform", "expected"), [
    ("cpu", "linux-x86_64", "ubuntu-latest"),
    ("cpu", "linux-aarch64", "ubuntu-24.04-arm"),
    ("cpu", "windows-amd64", "windows-latest"),
    ("cpu", "macos-arm64", "macos-14"),
    ("cpu", "macos-x86_64", "macos-13"),
    ("cu128", "linux-aarch64", ["self-hosted", "linux", "arm64", "gpu", "cuda-12.8"]),
    ("rocm6.2.4", "linux-x86_64", ["self-hosted", "linux", "x64", "gpu", "rocm-6.2.4"]),
    ("xpu", "windows-amd64", ["self-hosted", "windows", "x64", "gpu", "xpu"]),
])
def test_runner_labels(acc, platform, expected):
    assert runner_for(acc, platform) == expected


def test_missing_mirror_is_one_line_error(tmp_path):
    r = CliRunner().invoke(main, ["matrix", "--mirror", str(tmp_path / "none")])
    assert r.exit_code == 1
    assert r.output.startswith("torchdepot: error:")
    assert "no manifest" in r.output
