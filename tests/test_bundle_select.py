"""plan_bundle's steps on a small on-disk mirror: a conda target's channel index files are
chosen by the store's one predicate (run_exports.json included), nothing else of the channel."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from torchdepot.ship.bundle.model import BundleError
from torchdepot.ship.bundle.select import plan_bundle
from torchdepot.store import manifest as mf

CONDA = mf.Target(id="conda-cpu-py311-linux-64", kind="conda", accelerator="cpu", python="3.11",
                  platform="linux-x86_64", channel="conda/pytorch", subdir="linux-64")


def _mirror(root: Path) -> Path:
    pkg = "conda/pytorch/linux-64/pytorch-2.5.1-py3.11_cpu_0.conda"
    data = b"not really a conda package"
    (root / pkg).parent.mkdir(parents=True)
    (root / pkg).write_bytes(data)
    target = replace(CONDA, packages=(mf.TargetPackage(name="pytorch", version="2.5.1", path=pkg),))
    entry = mf.FileEntry(path=pkg, sha256=hashlib.sha256(data).hexdigest(), size=len(data), kind="conda")
    for sub in ("linux-64", "noarch"):
        d = root / "conda" / "pytorch" / sub
        d.mkdir(parents=True, exist_ok=True)
        for name in ("repodata.json", "repodata.json.zst", "run_exports.json", "current_repodata.json"):
            (d / name).write_text("{}")
        (d / "notes.txt").write_text("the user's")
    (root / "conda" / "pytorch" / "channeldata.json").write_text("{}")
    mf.save(root, mf.Manifest(files=[entry], targets=[target], spec={}))
    return root


def test_conda_channel_index_files_follow_the_store_predicate(tmp_path):
    plan = plan_bundle(_mirror(tmp_path), targets=[CONDA.id])
    index = sorted(f.path for f in plan.files if f.role == "index")
    assert index == sorted([*(f"conda/pytorch/{sub}/{name}" for sub in ("linux-64", "noarch")
                              for name in ("current_repodata.json", "repodata.json", "repodata.json.zst",
                                           "run_exports.json")),
                            "conda/pytorch/channeldata.json"])
    assert [f.path for f in plan.files if f.role == "file"] == ["conda/pytorch/linux-64/pytorch-2.5.1-py3.11_cpu_0.conda"]
    assert plan.target_ids == [CONDA.id]


def test_an_unknown_target_is_one_error_naming_what_the_mirror_has(tmp_path):
    with pytest.raises(BundleError, match=rf"target 'cu118-py311-linux-x86_64' is not in .*manifest\.json \(has: {CONDA.id}\)"):
        plan_bundle(_mirror(tmp_path), targets=["cu118-py311-linux-x86_64"])
