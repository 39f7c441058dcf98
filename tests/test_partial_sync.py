"""One target that cannot be synced does not stop the others (issue 22 item 16).

``pythons: ["3.11", "3.12"]`` against an upstream with cp311 wheels only: 3.11 is synced and
published, 3.12 is named in one line, the run exits non-zero. A target published before and
failing now keeps what it had."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
import yaml

from tests.httpserver import Server
from tests.kit.upstream import Tree, link, page, pep503
from tests.kit.wheels import wheel_bytes
from tests.loopback_upstream import mirror_env, run_mirror
from torchdepot.store import manifest as mf

T311 = wheel_bytes("torch", "2.12.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", ("filelock",), ">=3.10")
T312 = wheel_bytes("torch", "2.12.0+cpu", "cp312-cp312-manylinux_2_28_x86_64", ("filelock",), ">=3.10")
FILELOCK = wheel_bytes("filelock", "3.20.0")


def _upstream(root: Path, torch_wheels) -> None:
    tree = Tree()
    for w in torch_wheels:
        tree.add(f"/whl/cpu/{w.filename}", w.data)
    tree.add("/whl/cpu/torch/index.html",
             page(link(f"/whl/cpu/{urllib.parse.quote(w.filename)}", w.filename, w.sha256) for w in torch_wheels))
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(root)


def _spec(path: Path, url: str, out: Path) -> Path:
    path.write_text(yaml.safe_dump({"packages": ["torch"], "extra_packages": [], "accelerators": ["cpu"],
                                    "pythons": ["3.11", "3.12"], "platforms": ["linux-x86_64"],
                                    "upstreams": [url + "/whl"], "out": str(out), "jobs": 2}))
    return path


def test_a_python_upstream_lacks_fails_alone(tmp_path):
    _upstream(tmp_path / "up", [T311])
    out = tmp_path / "out"
    with Server(tmp_path / "up") as srv:
        proc = run_mirror(_spec(tmp_path / "spec.yaml", srv.url, out), mirror_env(srv.url, tmp_path))
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: cpu-py312-linux-x86_64: no torch wheel")
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "torchdepot: error: 1 target(s) not synced: cpu-py312-linux-x86_64 (the others are published)")
    manifest = mf.load(out)
    assert [t.id for t in manifest.targets] == ["cpu-py311-linux-x86_64"]
    assert f"packages/torch/{T311.filename}" in {f.path for f in manifest.files}
    assert "verify-mirror ok" in proc.stdout


@pytest.mark.slow
def test_a_target_published_before_keeps_what_it_had(tmp_path):
    """Both Pythons published with torch 2.12; then the spec asks torch>=2.13, which upstream
    has for 3.11 only: 3.11 moves to 2.13, 3.12 fails (named, exit 1) and keeps its 2.12."""
    out = tmp_path / "out"
    _upstream(tmp_path / "up", [T311, T312])
    with Server(tmp_path / "up") as srv:
        first = run_mirror(_spec(tmp_path / "spec.yaml", srv.url, out), mirror_env(srv.url, tmp_path))
    assert first.returncode == 0, first.stderr
    newer = wheel_bytes("torch", "2.13.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", ("filelock",), ">=3.10")
    _upstream(tmp_path / "up", [T311, T312, newer])
    with Server(tmp_path / "up") as srv:
        spec = _spec(tmp_path / "spec.yaml", srv.url, out)
        spec.write_text(spec.read_text().replace("- torch", "- torch>=2.13"))
        proc = run_mirror(spec, mirror_env(srv.url, tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "torchdepot: error: 1 target(s) not synced: cpu-py312-linux-x86_64 (the others are published)")
    manifest = mf.load(out)
    assert sorted(t.id for t in manifest.targets) == ["cpu-py311-linux-x86_64", "cpu-py312-linux-x86_64"]
    paths = {f.path for f in manifest.files}
    assert f"packages/torch/{T312.filename}" in paths
    assert f"packages/torch/{newer.filename}" in paths
    assert "verify-mirror ok" in proc.stdout


@pytest.mark.slow
def test_a_target_the_resolver_cannot_close_fails_alone(tmp_path):
    """Both Pythons pin torch, but its dependency has a cp311 wheel only: 3.12's resolution
    fails, 3.11 is published, the run names 3.12 and exits 1."""
    dep = wheel_bytes("onlyhere", "1.0", "cp311-cp311-manylinux_2_28_x86_64")
    wheels = [wheel_bytes("torch", "2.12.0+cpu", f"cp{v}-cp{v}-manylinux_2_28_x86_64", ("onlyhere",), ">=3.10")
              for v in (311, 312)]
    tree = Tree()
    for w in wheels:
        tree.add(f"/whl/cpu/{w.filename}", w.data)
    tree.add("/whl/cpu/torch/index.html",
             page(link(f"/whl/cpu/{urllib.parse.quote(w.filename)}", w.filename, w.sha256) for w in wheels))
    tree |= pep503([dep], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    out = tmp_path / "out"
    with Server(tmp_path / "up") as srv:
        proc = run_mirror(_spec(tmp_path / "spec.yaml", srv.url, out), mirror_env(srv.url, tmp_path))
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: cpu-py312-linux-x86_64: ")
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "torchdepot: error: 1 target(s) not synced: cpu-py312-linux-x86_64 (the others are published)")
    assert [t.id for t in mf.load(out).targets] == ["cpu-py311-linux-x86_64"]


def test_failed_targets_are_named_by_id_never_parsed_from_their_line(tmp_path):
    from torchdepot.commands.mirror import _fail_if_partial
    from torchdepot.errors import TorchdepotError
    from torchdepot.sync.result import MirrorResult, TargetFailure

    result = MirrorResult(out=tmp_path, failed=[TargetFailure(target="cu126-py312-linux-x86_64",
                                                              line="no torch wheel: https://host:8443/whl/cu126 has none")])
    with pytest.raises(TorchdepotError, match=r"^1 target\(s\) not synced: cu126-py312-linux-x86_64 \(the others"):
        _fail_if_partial(result)
    assert result.to_json()["failed_targets"] == ["cu126-py312-linux-x86_64"]
    _fail_if_partial(MirrorResult(out=tmp_path))  # nothing failed: no error
