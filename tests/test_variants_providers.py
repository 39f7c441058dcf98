"""Variant providers for an air-gapped lab (issue 24, item 1): PEP 850 static properties are
published so a client with no plugin selects, and a GPU variant installs on a machine without
the GPU when the user overrides the detected properties. Loopback upstream only
(tests/kit/variantindex.py), installs from the mirror alone with the venv's uv.

What uv 0.13.9 does, as these tests pin it down:
- it runs no provider plugin package; it has built-in providers (the NVIDIA one answers to
  ``requires: nvidia-variant-provider`` with ``plugin-api:
  nvidia_variant_provider.plugin:NvidiaVariantPlugin``) and reads static providers, written
  ``providers.{ns}.static-properties`` plus ``providers.{ns}.feature-order`` when there are
  several features;
- its NVIDIA provider takes the plugin's override variables
  ``NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION`` and ``NV_VARIANT_PROVIDER_FORCE_SM_ARCH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from tests.httpserver import Server
from tests.kit.variantindex import write_variant_upstream
from tests.test_variants import mirror
from tests.venvs import hermetic_env
from torchdepot.resolve.uv import uv_bin
from torchdepot.sources.variants import VariantsJsonError, parse_variants_json
from torchdepot.store import manifest as mf
from torchdepot.verify.run import gpu_present

SCHEMA = "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"
CUDA = {"nvidia": {"cuda_version_lower_bound": ["12.8"], "sm_arch": ["100_real", "120_real", "80_real", "90_real"]}}
PLUGIN = {"nvidia": {"requires": ["nvidia-variant-provider>=0.0.1,<1.0.0"],
                     "plugin-api": "nvidia_variant_provider.plugin:NvidiaVariantPlugin"}}
# a lab's homogeneous cluster (driver for CUDA 12.8, sm_90), stated once by whoever built the index
STATIC = {"nvidia": {"static-properties": {"cuda_version_lower_bound": ["12.8"], "sm_arch": ["90_real"]},
                     "feature-order": ["cuda_version_lower_bound", "sm_arch"]}}
OVERRIDE = {"NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION": "12.8", "NV_VARIANT_PROVIDER_FORCE_SM_ARCH": "9.0"}


def doc(providers: dict, variants: dict | None = None, namespaces=("nvidia",)) -> dict:
    return {"$schema": SCHEMA, "default-priorities": {"namespace": list(namespaces)}, "providers": providers,
            "variants": variants if variants is not None else {"null": {}, "cuda12.8": CUDA}}


def parse(d: dict):
    return parse_variants_json(json.dumps(d).encode(), "torch-2.10.0-variants.json")


# -- pure: the providers section --------------------------------------------------------------
def test_static_and_plugin_providers_are_told_apart():
    static = parse(doc(STATIC)).providers["nvidia"]
    assert static.static == {"cuda_version_lower_bound": ("12.8",), "sm_arch": ("90_real",)}
    assert static.feature_order == ("cuda_version_lower_bound", "sm_arch")
    assert static.requires == ()
    plugin = parse(doc(PLUGIN)).providers["nvidia"]
    assert plugin.static is None
    assert plugin.requires == ("nvidia-variant-provider<1.0.0,>=0.0.1",)
    assert plugin.plugin_api == "nvidia_variant_provider.plugin:NvidiaVariantPlugin"


def test_a_static_provider_needs_no_plugin_and_selects_its_labels():
    v = parse(doc(STATIC, {"null": {}, "cuda12.8": CUDA,
                           "cuda12.9": {"nvidia": {"cuda_version_lower_bound": ["12.9"], "sm_arch": ["90_real"]}},
                           "sm80": {"nvidia": {"cuda_version_lower_bound": ["12.8"], "sm_arch": ["80_real"]}}}))
    assert v.provider_requires("cuda12.8") == ()  # nothing to mirror, nothing to warn about
    assert v.static_selects("cuda12.8")  # one of its sm_arch values (90_real) is static
    assert not v.static_selects("cuda12.9")  # 12.9 is not among the static values
    assert not v.static_selects("sm80")
    assert not v.static_selects("rocm7.0")  # not listed at all
    assert v.static_labels() == ("null", "cuda12.8")
    plugin = parse(doc(PLUGIN))
    assert plugin.static_labels() == ("null",)  # a plugin namespace: no static selection
    assert plugin.provider_requires("cuda12.8") == ("nvidia-variant-provider<1.0.0,>=0.0.1",)
    assert plugin.provider_requires("null") == ()


def test_static_provider_shapes_a_client_cannot_use_are_not_static():
    two = {"cuda_version_lower_bound": ["12.8"], "sm_arch": ["90_real"]}
    unusable = [
        {"static-properties": two},  # several features, no order (uv 0.13.9 refuses the file)
        {"static-properties": two, "feature-order": ["sm_arch"]},  # incomplete order
        {"static-properties": two, "feature-order": ["sm_arch", "sm_arch"]},
        {"static-properties": {"sm_arch": ["90_real"]}, "requires": ["x"]},  # PEP 850: exclusive
        {"static-properties": {"sm_arch": ["90_real"]}, "plugin-api": "x:Y"},
        {"static-properties": {"sm_arch": ["Bad Value"]}},
        {"static-properties": ["sm_arch"]},
        {"static-properties": {"sm_arch": ["90_real"]}, "optional": "yes"},
    ]
    for entry in unusable:
        v = parse(doc({"nvidia": entry}))
        assert "nvidia" not in v.providers, entry
        assert v.static_labels() == ("null",), entry
    # an optional static provider is off unless the user enables it (PEP 850 step 1)
    optional = parse(doc({"nvidia": {**STATIC["nvidia"], "optional": True}}))
    assert optional.providers["nvidia"].optional
    assert not optional.static_selects("cuda12.8")
    # the PEP 850 draft orders the features in default-priorities.feature instead
    draft = doc({"nvidia": {"static-properties": two}})
    draft["default-priorities"]["feature"] = {"nvidia": ["sm_arch", "cuda_version_lower_bound"]}
    assert parse(draft).providers["nvidia"].feature_order == ("sm_arch", "cuda_version_lower_bound")


def test_locked_variants_keep_the_providers():
    v = parse(doc(STATIC))
    assert v.for_labels({"cuda12.8"}) == {"$schema": SCHEMA, "default-priorities": {"namespace": ["nvidia"]},
                                          "providers": STATIC, "variants": {"cuda12.8": CUDA}}
    narrowed = json.loads(v.subset_text({"cuda12.8"}))
    assert narrowed["providers"] == STATIC
    assert list(narrowed["variants"]) == ["cuda12.8"]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.sampled_from(["nvidia", "sm_arch", "90_real", "x:Y"])
                     | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.sampled_from(["static-properties", "feature-order", "requires", "plugin-api", "optional",
                                          "nvidia", "sm_arch", "cuda_version_lower_bound"]) | st.text(max_size=5),
                         c, max_size=4),
                     max_leaves=16)


@given(_json, _json)
def test_providers_section_never_breaks_the_parser(providers, feature):
    d = doc({})
    d["providers"] = providers
    d["default-priorities"]["feature"] = feature
    with contextlib.suppress(VariantsJsonError):
        v = parse(d)
        for label in v.variants:  # whatever was read answers without raising
            v.static_selects(label)
            v.provider_requires(label)
        v.for_labels(set(v.variants))


# -- the mirror and uv ------------------------------------------------------------------------
def _install(index: str, venv: Path, **env: str) -> str:
    """``uv pip install torch`` from ``index`` alone into ``venv``; the label installed."""
    e = hermetic_env(**env)
    if not venv.exists():
        subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, venv], check=True, env=e)
    proc = subprocess.run([uv_bin(), "pip", "install", "--preview-features", "wheel-variants", "--no-cache",
                           "--reinstall", "--python", venv / "bin/python", "--index-url", index, "torch"],
                          capture_output=True, text=True, env=e)
    assert proc.returncode == 0, proc.stderr
    got = subprocess.run([venv / "bin/python", "-c", "import torch; print(torch.LABEL)"], capture_output=True,
                         text=True)
    return got.stdout.strip() or got.stderr


def _served(up: Path, tmp_path: Path, accelerators: tuple[str, ...]):
    with Server(up) as s:
        res, msgs = mirror(s.url, tmp_path / "m", accelerators=accelerators)
    return tmp_path / "m", res, msgs


def test_static_properties_are_published_and_locked(tmp_path):
    up = write_variant_upstream(tmp_path / "up", doc(STATIC))
    out, res, msgs = _served(up, tmp_path, ("cu128",))
    assert not [m for m in msgs if "variant provider" in m], msgs  # a static namespace needs no plugin
    (vj,) = [f for f in mf.load(out).files if f.kind == "variants-json"]
    published = json.loads((out / vj.path).read_text())
    assert published["providers"] == STATIC
    assert list(published["variants"]) == ["cuda12.8"]
    assert parse_variants_json((out / vj.path).read_bytes(), vj.path).static_labels() == ("cuda12.8",)
    lock = tomllib.loads((out / "targets/cu128-py311-linux-x86_64/pylock.toml").read_text())
    torch = next(p for p in lock["packages"] if p["name"] == "torch")
    assert torch["variants-json"]["providers"] == STATIC
    assert torch["variants-json"]["variants"] == {"cuda12.8": CUDA}


def test_client_with_no_plugin_selects_the_static_gpu_variant(tmp_path):
    """No GPU here, no provider package anywhere, no override: the static properties alone select
    cuda12.8 from the mirror, on the target's index and on the index of every label."""
    up = write_variant_upstream(tmp_path / "up", doc(STATIC))
    out, _, _ = _served(up, tmp_path, ("cpu", "cu128"))
    assert not [f for f in mf.load(out).files if "variant_provider" in f.path]
    with Server(out) as s:
        assert _install(f"{s.url}/whl/cu128", tmp_path / "v") == "cuda12.8"
        assert _install(f"{s.url}/whl", tmp_path / "v") == "cuda12.8"  # null is there too: static wins


def test_gpu_variant_with_overridden_properties_and_the_null_variant(tmp_path):
    """A plugin namespace on a machine with no GPU: the null variant without an override, the
    cuda12.8 variant with the NVIDIA provider's override of the detected driver and SM, from the
    mirror alone; an override that does not fit (driver 12.6) still gets null."""
    up = write_variant_upstream(tmp_path / "up", doc(PLUGIN))
    out, _, msgs = _served(up, tmp_path, ("cpu", "cu128"))
    assert any("variant provider nvidia-variant-provider" in m for m in msgs), msgs  # not on this upstream
    with Server(out) as s:
        everything = f"{s.url}/whl"
        plain = _install(everything, tmp_path / "v")
        assert plain == "null" if not gpu_present() else plain in ("null", "cuda12.8")  # uv detects a real GPU
        assert _install(everything, tmp_path / "v", **OVERRIDE) == "cuda12.8"
        assert _install(f"{s.url}/whl/cu128", tmp_path / "v", **OVERRIDE) == "cuda12.8"
        assert _install(everything, tmp_path / "v", **{**OVERRIDE,
                        "NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION": "12.6"}) == "null"


def test_a_plugin_namespace_cannot_be_made_static_beside_the_wheels(tmp_path):
    """Why the mirror relays providers and never rewrites them: uv 0.13.9 selects by the index's
    variants.json but checks the wheel it installs against the providers in the wheel's own
    variant.json, so static properties that only the index states fail the install."""
    up = write_variant_upstream(tmp_path / "up", doc(STATIC), labels=["cuda12.8"], wheel_doc=doc(PLUGIN))
    e = hermetic_env(NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION="12.6")  # as if no fitting GPU, on any host
    venv = tmp_path / "v"
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, venv], check=True, env=e)
    with Server(up) as s:
        proc = subprocess.run([uv_bin(), "pip", "install", "--preview-features", "wheel-variants", "--no-cache",
                               "--python", venv / "bin/python", "--index-url", f"{s.url}/whl/variant",
                               "--extra-index-url", f"{s.url}/simple", "torch"], capture_output=True, text=True, env=e)
    assert proc.returncode != 0
    assert "Wheel variant `cuda12.8` requires unsupported properties" in proc.stderr, proc.stderr


# -- the README's variant offline commands, as printed ------------------------------------------
def _readme_block() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**Variant wheels offline.**"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _run_block(script: str, s: Server, venv: Path) -> str:
    host = s.url.removeprefix("http://")
    script = script.replace("http://torchlab:8000", s.url).replace("torchlab:8000", host).replace(
        "/tmp/torch-env", str(venv))
    env = hermetic_env(PATH=f"{Path(uv_bin()).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = subprocess.run([venv / "bin/python", "-c", "import torch; print(torch.LABEL)"], capture_output=True,
                         text=True)
    return got.stdout.strip() or got.stderr


def test_readme_variant_commands_work_as_printed(tmp_path):
    block = _readme_block()
    lines = block.splitlines(keepends=True)
    first = next(i for i, ln in enumerate(lines) if ln.startswith("uv pip install"))
    assert "NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION=12.8" in block
    up = write_variant_upstream(tmp_path / "up", doc(PLUGIN))
    out, _, _ = _served(up, tmp_path, ("cpu", "cu128"))
    with Server(out) as s:
        plain = _run_block("".join(lines[:first + 1]), s, tmp_path / "a")
        assert plain == "null" if not gpu_present() else plain in ("null", "cuda12.8")
        assert _run_block(block, s, tmp_path / "b") == "cuda12.8"


def test_doctor_env_selects_the_variant_it_decided(tmp_path):
    """`eval "$(torchdepot doctor --format env)"` on a recorded H200 with driver 580 (sm_90; doctor
    decides cu130) then a variant install with no GPU here: the printed NVIDIA provider overrides
    make uv take the cuda12.8 build, the newest label the mirror holds up to that decision."""
    import shlex

    from tests.test_doctor import FIX, doctor, fake_tool

    fake_tool(tmp_path / "bin", "nvidia-smi", FIX / "smi_h200x2_580.csv")
    exports = doctor(tmp_path, "--format", "env").stdout
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in exports.splitlines())
    assert env["NV_VARIANT_PROVIDER_FORCE_CUDA_DRIVER_VERSION"] == env["CONDA_OVERRIDE_CUDA"]
    assert env["NV_VARIANT_PROVIDER_FORCE_SM_ARCH"] == "9.0"
    up = write_variant_upstream(tmp_path / "up", doc(PLUGIN))
    out, _, _ = _served(up, tmp_path, ("cpu", "cu128"))
    nv = {k: v for k, v in env.items() if k.startswith("NV_VARIANT_PROVIDER_")}
    with Server(out) as s:
        assert _install(f"{s.url}/whl", tmp_path / "v", **nv) == "cuda12.8"
