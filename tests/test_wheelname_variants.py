"""PEP 825 variant wheel names (``...-{plat}-{label}.whl``): the shapes PyTorch serves under
/whl/variant/, the six-part ambiguity (build tag or label), and a round trip over generated
names: build a name from parts, parse it back, get the parts."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name, parse_wheel_filename

from torchdepot.errors import ParseError
from torchdepot.model.accel import accelerator_from_variant_label
from torchdepot.model.wheelname import parse_wheel, split_variant_label

# The real names of PyTorch's variant index (DOMAIN.md §6, test-infra#7667).
REAL = [
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-cuda13.0.whl", "cuda13.0", "cu130"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-cuda12.8.whl", "cuda12.8", "cu128"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-cuda12.6.whl", "cuda12.6", "cu126"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-rocm7.0.whl", "rocm7.0", "rocm7.0"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-rocm7.1.whl", "rocm7.1", "rocm7.1"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-xpu.whl", "xpu", "xpu"),
    ("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-null.whl", "null", "cpu"),
]


@pytest.mark.parametrize(("name", "label", "acc"), REAL)
def test_real_variant_names(name, label, acc):
    w = parse_wheel(f"https://download.pytorch.org/whl/variant/{name}")
    assert (w.name, w.version, w.build, w.local) == ("torch", "2.10.0", None, None)
    assert (w.variant_label, w.accelerator.name, w.accelerator_source) == (label, acc, "variant")
    assert w.python_tags == ("cp314",)
    assert w.abi_tags == ("cp314t",)
    assert w.platform.name == "linux-x86_64"
    assert w.to_json()["variant_label"] == label
    assert w.filename == name


def test_six_parts_build_tag_or_label_and_seven_parts():
    built = parse_wheel("torch-2.10.0-1-cp314-cp314t-manylinux_2_28_x86_64.whl")
    assert (built.build, built.variant_label) == ("1", None)  # third part starts with a digit: a build tag
    both = parse_wheel("torch-2.10.0-1-cp314-cp314t-manylinux_2_28_x86_64-cuda12.8.whl")
    assert (both.build, both.variant_label, both.accelerator.name) == ("1", "cuda12.8", "cu128")
    plain = parse_wheel("torch-2.10.0+cu128-cp314-cp314t-manylinux_2_28_x86_64.whl")
    assert (plain.variant_label, plain.accelerator_source) == (None, "local")
    other = parse_wheel("foo-1.0-py3-none-any-fancy_gpu.whl")  # a label naming no accelerator
    assert other.variant_label == "fancy_gpu"
    assert other.accelerator is None


@pytest.mark.parametrize("bad", [
    "torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-CUDA13.0.whl",  # labels are lower case
    "torch-2.10.0-1-cp314-cp314t-manylinux_2_28_x86_64-cu+da.whl",
    "torch-2.10.0-x-1-cp314-cp314t-manylinux_2_28_x86_64-null.whl",  # eight parts
    "torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-.whl",
    "torch-2.10.0-b1-cp314-cp314t-manylinux_2_28_x86_64-null.whl",  # a build tag must start with a digit
])
def test_invalid_variant_names_are_parse_errors(bad):
    with pytest.raises(ParseError):
        parse_wheel(bad)


def test_label_to_accelerator():
    assert {lbl: (a.name if (a := accelerator_from_variant_label(lbl)) else None)
            for lbl in ("cuda12.8", "cuda13.0", "cuda13.2", "rocm7.1", "rocm6.2.4", "xpu", "null", "cpu", "x86_64_v3")} == {
        "cuda12.8": "cu128", "cuda13.0": "cu130", "cuda13.2": "cu132", "rocm7.1": "rocm7.1", "rocm6.2.4": "rocm6.2.4",
        "xpu": "xpu", "null": "cpu", "cpu": "cpu", "x86_64_v3": None}


def test_cli_parse_variant_name():
    """The issue's command: today's failure was "Invalid build number"."""
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "parse",
                           "torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-cuda13.0.whl"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split("\t")[:2] == ["torch 2.10.0", "cu130"]


# --- round trip ----------------------------------------------------------------------
names = st.from_regex(r"[a-z][a-z0-9]{0,5}(_[a-z0-9]{1,5}){0,2}", fullmatch=True)
versions = st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.integers(0, 30), st.integers(0, 30), st.integers(0, 9))
builds = st.none() | st.from_regex(r"[1-9][0-9]{0,2}[a-z_]{0,3}", fullmatch=True)  # packaging drops leading zeros
pythons = st.sampled_from(["cp310", "cp314", "py3", "cp313"])
abis = st.sampled_from(["cp310", "cp314t", "none", "abi3"])
platforms = st.sampled_from(["manylinux_2_28_x86_64", "win_amd64", "macosx_11_0_arm64", "any", "linux_aarch64"])
labels = st.none() | st.from_regex(r"[0-9a-z_.]{1,16}", fullmatch=True) | st.sampled_from(
    ["null", "cuda12.8", "cuda13.0", "rocm7.1", "xpu"])


@given(names, versions, builds, pythons, abis, platforms, labels)
def test_round_trip(name, version, build, py, abi, plat, label):
    parts = [name, version, *([build] if build else []), py, abi, plat, *([label] if label else [])]
    filename = "-".join(parts) + ".whl"
    w = parse_wheel(filename)
    assert (w.name, w.version, w.build, w.variant_label) == (canonicalize_name(name), version, build, label)
    assert (w.python_tags, w.abi_tags, w.platform_tags) == ((py,), (abi,), (plat,))
    # packaging still parses everything but the label, and agrees
    plain, got = split_variant_label(filename)
    assert got == label
    pname, pversion, pbuild, _ = parse_wheel_filename(plain)
    assert (pname, str(pversion), "".join(map(str, pbuild)) or None) == (w.name, w.version, w.build)
    expected = accelerator_from_variant_label(label) if label else None
    assert w.accelerator == expected
    assert w.accelerator_source == ("variant" if expected else None)


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_parse_error(text):
    with contextlib.suppress(ParseError):
        parse_wheel(text + ".whl")


def test_real_names_parse_as_before(data_dir):
    """Every captured PyTorch wheel URL: packaging's verdict is ours, and none grows a label."""
    import urllib.parse

    from packaging.utils import InvalidWheelFilename

    links = [ln.strip() for ln in (data_dir / "pytorch_wheel_urls.txt").read_text().splitlines() if ln.strip()]
    assert len(links) == 6881
    for href in links:
        filename = urllib.parse.unquote(urllib.parse.urlsplit(href.split("#")[0]).path.rsplit("/", 1)[-1])
        try:
            name, version, build, _ = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            with pytest.raises(ParseError):
                parse_wheel(href)
            continue
        w = parse_wheel(href)
        assert (w.name, w.version, w.variant_label) == (name, str(version), None), href
