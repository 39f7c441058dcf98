"""Mirror spec validation: one-line errors naming the key; hypothesis: only SpecError escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchdepot.errors import SpecError
from torchdepot.model.platforms import host_platform
from torchdepot.spec.mirror import load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
W = "mirror/mirror.yaml"


def err(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, W)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{W}: ")
    return msg


def test_committed_default_spec_is_newest_stable_cpu_for_the_host():
    spec = load_spec(ROOT / "mirror" / "mirror.yaml")
    import sys

    host_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert [p.name for p in spec.packages] == ["torch"]
    assert spec.packages[0].constraint is None
    assert spec.extra_packages == ("numpy",)
    assert spec.channel == "stable"
    assert [t.id for t in spec.targets()] == [f"cpu-py{host_py.replace('.', '')}-{host_platform()}"]
    assert spec.upstreams == ("https://download.pytorch.org/whl",)
    assert spec.out == Path("mirror/out")
    assert spec.to_data()["pythons"] == [host_py]
    assert spec.conda is None


def test_full_spec_and_targets():
    spec = parse_spec({
        "packages": ["torch>=2.5", {"name": "torchvision"}], "accelerators": ["cpu", "cu126", "rocm6.2"],
        "pythons": ["3.10", "3.12"], "platforms": ["linux-x86_64"], "channel": "nightly",
        "upstreams": ["https://mirror.example/whl/", "https://download.pytorch.org/whl"],
        "on_hash_mismatch": "warn", "jobs": 8, "conda": {"channels": ["pytorch"]},
        "targets": [{"accelerator": "cu118", "python": "3.9", "platform": "windows-amd64", "torch": "2.1.0"}],
    }, W)
    assert [(p.name, p.constraint) for p in spec.packages] == [("torch", ">=2.5"), ("torchvision", None)]
    ids = [t.id for t in spec.targets()]
    assert len(ids) == 7
    assert ids[0] == "cpu-py310-linux-x86_64"
    assert ids[-1] == "cu118-py39-windows-amd64"
    assert spec.targets()[-1].torch == "==2.1.0"
    assert spec.upstreams[0] == "https://mirror.example/whl"
    assert spec.jobs == 8
    assert [c.name for c in spec.conda.channels] == ["pytorch"]
    assert parse_spec(spec.to_data(), "round trip") == spec


@pytest.mark.parametrize(("data", "expected"), [
    ({"accelerators": ["cpu", "cu11"]}, "accelerators[1]: 'cu11' is not an accelerator (cpu, cuXYZ, rocmX.Y, xpu)"),
    ({"accelerators": ["cuda"]}, "accelerators[0]: 'cuda' is not an accelerator"),
    ({"pythons": [3.10]}, "pythons[0]: write Python versions as strings"),
    ({"pythons": ["3"]}, "pythons[0]: '3' is not a Python version"),
    ({"pythons": ["2.7"]}, "pythons[0]: '2.7' is not a Python version"),
    ({"platforms": ["solaris-sparc"]}, "platforms[0]: unknown platform 'solaris-sparc'"),
    ({"accelerators": ["cu118"], "platforms": ["macos-arm64"]}, "accelerators: 'cu118' is impossible on macos-arm64"),
    ({"accelerators": ["rocm6.2"], "platforms": ["windows-amd64"]}, "'rocm6.2' is impossible on windows-amd64"),
    ({"accelerators": ["xpu"], "platforms": ["linux-aarch64"]}, "'xpu' is impossible on linux-aarch64"),
    ({"packages": ["numpy"]}, "packages[0]: 'numpy' is not one of torch, torchvision, torchaudio"),
    ({"packages": ["torchvision"]}, "packages: must include torch"),
    ({"packages": ["torch>>2"]}, "packages[0]: 'torch>>2' is not a requirement"),
    ({"packages": {"torch": "~~1"}}, "packages.torch: '~~1' is not a version constraint"),
    ({"channel": "beta"}, "channel: 'beta' is not one of stable, test, nightly, variant, test/variant"),
    ({"upstreams": ["download.pytorch.org/whl"]}, "upstreams[0]: 'download.pytorch.org/whl' is not an http(s)://"),
    ({"on_hash_mismatch": "ignore"}, "on_hash_mismatch: 'ignore' is not one of fail, warn"),
    ({"jobs": 0}, "jobs: 0 is not a whole number from 1 to 64"),
    ({"conda": ["x"]}, "conda: expected a mapping"),
    ({"acelerators": ["cpu"]}, "acelerators: unknown key"),
    ({"targets": [{"accelerator": "cu118", "platform": "macos-arm64"}]}, "targets[0]: 'cu118' is impossible on macos-arm64"),
    ({"targets": [{"python": "3.x"}]}, "targets[0].python: '3.x' is not a Python version"),
    ([1, 2], "expected a mapping at the top level"),
])
def test_errors_name_the_key(data, expected):
    assert expected in err(data)


def test_bad_yaml_is_one_line(tmp_path):
    p = tmp_path / "mirror.yaml"
    p.write_text("accelerators: [cpu\npythons: ['3.11']\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert str(info.value).startswith(f"{p}: invalid YAML at line ")
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_spec(tmp_path / "empty.yaml").accelerators == ("cpu",)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["cpu", "cu118", "3.11", "host", "linux-x86_64", "macos-arm64", "torch>=2", "fail", "nightly",
                      "test/variant", "ustc", "2026-06-01T00:00:00Z", "a.example", "conda-forge"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(["packages", "extra_packages", "accelerators", "pythons", "platforms", "channel", "out",
                        "upstreams", "on_hash_mismatch", "jobs", "conda", "targets", "keep", "allow_hosts",
                        "exclude_newer", "fsync", "connections", "connections_per_host"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=5))
def test_any_input_gives_a_spec_or_a_one_line_spec_error(data):
    error = None
    try:
        spec = parse_spec(data, W)
    except SpecError as exc:
        error = str(exc)
    if error is not None:
        assert "\n" not in error
        assert error.startswith(W)
        return
    assert spec.targets()
    assert parse_spec(spec.to_data(), "again") == spec
