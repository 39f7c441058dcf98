"""Variant wheels for an air-gapped lab (issue 24, item 1): the provider plugins a target's
variants.json names are mirrored with its closure, and the published variants.json lists only
the variants the mirror holds (PEP 825: the variants available on the index). uv installs the
null variant from the mirror alone. Loopback upstream only (tests/test_variants.py builds it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import test_variants
from tests.httpserver import Server
from tests.mirror_upstream import make_wheel, sha256
from tests.test_variants import _anchor, _page, mirror, uv_bin
from tests.venvs import hermetic_env
from torchdepot.sources.variants import parse_variants_json
from torchdepot.store import manifest as mf

upstream = test_variants.upstream  # the fixture: /whl/variant/ (null, cuda12.8) and /simple/


def _add_provider(root):
    """nvidia-variant-provider on the dependency index (upstream hosts it on another site)."""
    d = root / "simple" / "nvidia-variant-provider"
    w = make_wheel(d, "nvidia-variant-provider", "0.0.3")
    (d / "index.html").write_text(_page([_anchor(w.name, w.name, sha256(w))]))
    return w.name


def _published_variants(out):
    (vj,) = [f for f in mf.load(out).files if f.kind == "variants-json"]
    return vj, json.loads((out / vj.path).read_text())


def test_gpu_target_mirrors_its_provider_and_lists_only_its_label(upstream, tmp_path):
    root, url = upstream
    provider = _add_provider(root)
    out = tmp_path / "m"
    res, msgs = mirror(url, out, accelerators=("cu128",))
    files = {f.path.rsplit("/", 1)[-1] for f in mf.load(out).files}
    assert provider in files, msgs
    assert not [m for m in msgs if "variant provider" in m]
    vj, doc = _published_variants(out)
    assert list(doc["variants"]) == ["cuda12.8"]
    assert doc["providers"]["nvidia"]["requires"] == ["nvidia-variant-provider>=0.0.1,<1.0.0"]  # other keys kept
    parse_variants_json((out / vj.path).read_bytes(), vj.path)  # still PEP 825 variant metadata
    assert vj.upstream_sha256 == sha256(root / "whl/variant/torch/torch-2.10.0-variants.json")
    assert vj.sha256 != vj.upstream_sha256
    assert not vj.hash_mismatch  # narrowed by us, not a lie upstream told


def test_provider_on_no_source_is_one_warning_not_a_failure(upstream, tmp_path):
    root, url = upstream
    res, msgs = mirror(url, tmp_path / "m", accelerators=("cu128",))
    (line,) = [m for m in msgs if "variant provider" in m]
    assert line.startswith("warning: cu128-py311-linux-x86_64: variant provider nvidia-variant-provider<1.0.0,>=0.0.1")
    assert "on no allowed source" in line
    assert res.targets


@pytest.mark.slow  # an install into a venv of this interpreter, from cp311 wheels (test-all runs 3.11)
def test_cpu_only_mirror_lists_null_and_uv_installs_it_offline(upstream, tmp_path):
    root, url = upstream
    out = tmp_path / "m"
    mirror(url, out, accelerators=("cpu",))
    vj, doc = _published_variants(out)
    assert list(doc["variants"]) == ["null"]
    venv = tmp_path / "venv"
    env = hermetic_env()
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, venv], check=True, env=env)
    with Server(out) as s:  # the mirror alone: no other index, no network
        proc = subprocess.run([uv_bin(), "pip", "install", "--preview-features", "wheel-variants", "--no-cache",
                               "--python", venv / "bin/python", "--index-url", f"{s.url}/whl/cpu", "torch"],
                              capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    got = subprocess.run([venv / "bin/python", "-c", "import torch; print(torch.LABEL)"], capture_output=True,
                         text=True)
    assert got.stdout.strip() == "null", got.stderr
