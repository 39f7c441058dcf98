"""A spec that follows PyTorch's release matrix (issue 24, item 2): ``accelerators: [current]``
expands to what upstream ships for the selected torch, each sync says what appeared or
disappeared, and an accelerator upstream stops shipping is kept, never silently dropped.
Loopback upstreams laid out like download.pytorch.org, with its aggregate ``/whl/torch/``."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kit.upstream import link, page
from tests.kit.wheels import sha256
from tests.mirror_upstream import build_upstreams, make_wheel
from tests.test_lifecycle import cli, torch_of, verify_clean
from torchdepot.model.release_matrix import Matrix, current_matrix, matrix_changes
from torchdepot.model.wheelname import parse_wheel
from torchdepot.spec.mirror import SpecError, parse_spec

TAG = "cp311-cp311-manylinux_2_28_x86_64"


def _aggregate(a: Path, wheels: dict[str, list[Path]]) -> None:
    """``/whl/torch/``: every variant's torch wheels on one page, as download.pytorch.org has it."""
    anchors = [link(f"/whl/{acc}/{urllib.parse.quote(w.name)}", w.name, sha256(w))
               for acc, ws in sorted(wheels.items()) for w in ws]
    (a / "whl" / "torch").mkdir(parents=True, exist_ok=True)
    (a / "whl" / "torch" / "index.html").write_bytes(page(anchors))


@pytest.fixture
def release(tmp_path):
    """(A url, B url, tmp, publish(release: {acc: [versions]})) over two loopback servers."""
    from tests.httpserver import Server

    wheels_dir = tmp_path / "wheels"
    wheels_dir.mkdir()
    dep = [make_wheel(wheels_dir, "filelock", "3.20.0", requires_python=">=3.9")]
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    made: dict[str, list[Path]] = {}

    with Server(b) as sb, Server(a) as sa:
        def publish(matrix: dict[str, list[str]]) -> None:
            for acc, versions in matrix.items():
                have = {w.name for w in made.get(acc, [])}
                for v in versions:
                    w = make_wheel(wheels_dir, "torch", f"{v}+{acc}", TAG, ("filelock",), ">=3.10",
                                   payload=os.urandom(2_000))
                    if w.name not in have:
                        made.setdefault(acc, []).append(w)
                build_upstreams(a, b, sb.url, made[acc], dep, acc=acc)
            _aggregate(a, made)

        yield sa.url + "/whl", sb.url + "/simple", tmp_path, publish


def _spec(tmp: Path, a: str, accelerators: str) -> Path:
    path = tmp / "follow.yaml"
    path.write_text(f"accelerators: {accelerators}\npythons: ['3.11']\nplatforms: [linux-x86_64]\n"
                    f"upstreams: [{a}]\nextra_packages: [filelock]\nout: {tmp / 'm'}\n")
    return path


def test_current_follows_releases_and_keeps_what_upstream_drops(release):
    a, b, tmp, publish = release
    publish({"cpu": ["2.14.0"], "cu126": ["2.14.0"], "cu130": ["2.14.0"]})
    spec = _spec(tmp, a, "[current]")
    first = cli(tmp, b, "mirror", "--spec", str(spec))
    assert first.returncode == 0, first.stderr
    m = tmp / "m"
    assert torch_of(m) == {f"{acc}-py311-linux-x86_64": f"2.14.0+{acc}" for acc in ("cpu", "cu126", "cu130")}
    assert "upstream now ships" not in first.stderr  # nothing to compare with on a first sync

    # 2.15: cu132 appears, cu126 is gone (Maxwell/Pascal/Volta have no newer build)
    publish({"cpu": ["2.15.0"], "cu130": ["2.15.0"], "cu132": ["2.15.0"]})
    second = cli(tmp, b, "mirror", "--spec", str(spec))
    assert second.returncode == 0, second.stderr
    lines = second.stderr.splitlines()
    appeared = [ln for ln in lines if ln.startswith("upstream now ships")]
    gone = [ln for ln in lines if ln.startswith("upstream no longer ships")]
    assert appeared == ["upstream now ships cu132 for linux-x86_64 (torch 2.15.0; last sync saw torch 2.14.0 "
                        "without it): added"]
    assert gone == ["upstream no longer ships cu126 for linux-x86_64 in torch 2.15.0 (last sync: torch 2.14.0): "
                    "its targets stay, pinned to the newest torch that has it"]
    assert torch_of(m) == {"cpu-py311-linux-x86_64": "2.15.0+cpu", "cu126-py311-linux-x86_64": "2.14.0+cu126",
                           "cu130-py311-linux-x86_64": "2.15.0+cu130", "cu132-py311-linux-x86_64": "2.15.0+cu132"}
    verify_clean(tmp, b, m)

    # unchanged upstream: no change lines at all
    third = cli(tmp, b, "mirror", "--spec", str(spec))
    assert third.returncode == 0, third.stderr
    assert not [ln for ln in third.stderr.splitlines() if ln.startswith("upstream ")]
    assert (m / ".torchdepot" / "matrix.json").is_file()


def test_explicit_accelerator_upstream_lacks_is_kept_with_a_warning(release):
    a, b, tmp, publish = release
    publish({"cpu": ["2.15.0"], "cu118": ["2.7.0"]})
    proc = cli(tmp, b, "mirror", "--spec", str(_spec(tmp, a, "[current, cu118]")))
    assert proc.returncode == 0, proc.stderr
    assert ("warning: cu118 is not in upstream's torch 2.15.0 matrix for linux-x86_64; kept (pinned to the "
            "newest torch that has it)") in proc.stderr
    assert torch_of(tmp / "m") == {"cpu-py311-linux-x86_64": "2.15.0+cpu", "cu118-py311-linux-x86_64": "2.7.0+cu118"}


def test_no_matrix_anywhere_is_one_line(release):
    a, b, tmp, _publish = release  # nothing published: no /whl/torch/ page
    proc = cli(tmp, b, "mirror", "--spec", str(_spec(tmp, a, "[current]")))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("torchdepot: error: current: no upstream listed")
    assert "Traceback" not in proc.stderr


# --- the pure core -------------------------------------------------------------------
def _w(name: str):
    return parse_wheel(name)


def test_current_matrix_picks_newest_release_per_constraint():
    wheels = [_w(n) for n in (
        "torch-2.14.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.14.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.14.0+cu126-cp313-cp313t-manylinux_2_28_x86_64.whl",  # free-threaded: not a matrix Python
        "torch-2.15.0+cu130-cp312-cp312-manylinux_2_28_x86_64.whl",
        "torch-2.15.0+cu130-cp312-cp312-win_amd64.whl",
        "torch-2.16.0.dev20260101+cu132-cp312-cp312-manylinux_2_28_x86_64.whl",  # a pre-release
        "torchvision-0.30.0+cu130-cp312-cp312-manylinux_2_28_x86_64.whl",
    )]
    m = current_matrix(wheels, None, False, ["linux-x86_64"])
    assert m == Matrix("2.15.0", frozenset({("cu130", "3.12", "linux-x86_64")}))
    m = current_matrix(wheels, "<2.15", False, ["linux-x86_64"])
    assert m is not None
    assert m.torch == "2.14.0"
    assert m.accelerators() == ("cu126", "cpu")
    assert m.pythons() == ("3.11",)
    assert current_matrix(wheels, None, True, ["linux-x86_64"]).torch == "2.16.0.dev20260101"
    assert current_matrix(wheels, None, False, ["macos-arm64"]) is None
    assert Matrix.from_data(m.to_data()) == m


def test_matrix_changes_lines():
    old = Matrix("2.14.0", frozenset({("cu126", "3.11", "linux-x86_64"), ("cpu", "3.11", "linux-x86_64")}))
    new = Matrix("2.15.0", frozenset({("cu130", "3.12", "linux-x86_64"), ("cpu", "3.12", "linux-x86_64")}))
    kinds = [(c.kind, c.value, c.appeared) for c in matrix_changes(old, new, ["linux-x86_64"])]
    assert kinds == [("accelerator", "cu130", True), ("accelerator", "cu126", False),
                     ("python", "3.12", True), ("python", "3.11", False)]
    assert matrix_changes(None, new, ["linux-x86_64"]) == ()
    assert matrix_changes(new, new, ["linux-x86_64"]) == ()


_CELL = st.tuples(st.sampled_from(["cpu", "cu126", "cu130", "rocm7.1"]), st.sampled_from(["3.10", "3.11", "3.12"]),
                  st.sampled_from(["linux-x86_64", "windows-amd64"]))


@given(st.frozensets(_CELL), st.frozensets(_CELL))
def test_changes_account_for_every_difference(a, b):
    old, new = Matrix("1", a), Matrix("2", b)
    changes = matrix_changes(old, new, ["linux-x86_64", "windows-amd64"])
    for plat in ("linux-x86_64", "windows-amd64"):
        for kind, of in (("accelerator", Matrix.accelerators), ("python", Matrix.pythons)):
            up = {c.value for c in changes if c.kind == kind and c.appeared and f" {plat} " in c.text}
            down = {c.value for c in changes if c.kind == kind and not c.appeared and f" {plat} " in c.text}
            assert up == set(of(new, plat)) - set(of(old, plat))
            assert down == set(of(old, plat)) - set(of(new, plat))
    assert Matrix.from_data(new.to_data()) == new
    assert Matrix.from_data({"torch": 1}) is None


def test_spec_current_round_trips_and_needs_expanding():
    spec = parse_spec({"accelerators": ["current", "cu118"], "pythons": ["current"], "platforms": ["linux-x86_64"]})
    assert spec.follow == {"accelerators", "pythons"}
    assert spec.accelerators == ("cu118",)
    assert spec.pythons == ()
    assert parse_spec(spec.to_data()) == spec
    with pytest.raises(SpecError, match="must be expanded"):
        spec.targets()
