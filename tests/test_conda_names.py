"""Conda names: conda's own rule (a leading ``_`` is valid), file names checked as paths,
hostile names refused; every package file name in the real lock files in shared/data/conda passes.
Also the parsers of upstream's optional channel files (channeldata.json, run_exports.json)."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchdepot.errors import UnsafePathError
from torchdepot.model.names import conda_filename, conda_package_name, safe_filename, safe_path_name
from torchdepot.net.hostpolicy import filename_refusal
from torchdepot.sources.repodata import parse_repodata

REAL = ["_libgcc_mutex-0.1-conda_forge.tar.bz2", "_openmp_mutex-4.5-2_gnu.tar.bz2",
        "_openmp_mutex-4.5-7_kmp_llvm.conda", "python_abi-3.11-8_cp311.conda",
        "cuda-version-12.6-h7480c83_3.conda", "pytorch-2.7.1-cuda126_py311_h2b5a4e6_300.conda",
        "pytorch-2.7.1-cpu_generic_py311_h4e3b4a1_0.conda", "pytorch-gpu-2.7.1-cuda126_ha999a5f_300.conda",
        "libgcc-ng-15.1.0-h69a702a_2.conda", "ca-certificates-2025.1.31-hbcca054_0.conda"]

HOSTILE = ["../evil-1.0-0.conda", "a/b-1.0-0.conda", "a\\b-1.0-0.conda", "..", ".", "",
           "x-1.0-0\x00.conda", "x\n-1.0-0.conda", "x-1.0-0\x1b.conda", "%2e%2e%2fx-1.0-0.conda",
           "a" * 300 + "-1.0-0.conda", "-x-1.0-0.conda", " x-1.0-0.conda", "X\x7f-1.0-0.conda"]


def lockfile_names(data_dir: Path) -> list[str]:
    names = set()
    for p in sorted((data_dir / "conda" / "lockfiles").iterdir()):
        for url in re.findall(r"https?://\S+?\.(?:conda|tar\.bz2)\b", p.read_text(errors="replace")):
            names.add(urllib.parse.unquote(url.rsplit("/", 1)[1]))
    return sorted(names)


@pytest.mark.parametrize("fn", REAL)
def test_real_conda_names_pass(fn):
    assert conda_filename(fn) == fn
    assert filename_refusal(fn) is None
    conda_package_name(fn.rsplit("-", 2)[0])


def test_every_package_in_the_real_lockfiles_passes(data_dir):
    names = lockfile_names(data_dir)
    assert len(names) > 100
    assert any(n.startswith("_libgcc_mutex-") for n in names)
    assert any(n.startswith("_openmp_mutex-") for n in names)
    for n in names:
        assert conda_filename(n) == n, n
        assert filename_refusal(n) is None, n


@pytest.mark.parametrize("fn", HOSTILE)
def test_hostile_conda_file_names_refused(fn):
    with pytest.raises(UnsafePathError) as exc:
        conda_filename(fn)
    assert "\n" not in str(exc.value)
    assert filename_refusal(fn) is not None


@pytest.mark.parametrize("name", ["", "..", "a/b", "Pytorch", "a b", "x\x00", "-" * 0 + "a" * 256, "a..b"])
def test_hostile_package_names_refused(name):
    with pytest.raises(UnsafePathError):
        conda_package_name(name)


def test_pip_rule_unchanged_for_wheels():
    with pytest.raises(UnsafePathError):
        safe_filename("_private-1.0-py3-none-any.whl")
    assert filename_refusal("_private-1.0-py3-none-any.whl") is not None


def test_repodata_with_leading_underscore_names_parses():
    doc = {"info": {"subdir": "linux-64"}, "packages": {
        "_libgcc_mutex-0.1-conda_forge.tar.bz2": {"name": "_libgcc_mutex", "version": "0.1", "build": "conda_forge",
                                                  "build_number": 0, "depends": []}}}
    rd = parse_repodata(json.dumps(doc), "conda-forge", "linux-64", "here")
    assert list(rd.records) == ["_libgcc_mutex-0.1-conda_forge.tar.bz2"]


@given(st.text(max_size=300))
def test_safe_path_name_is_total_and_never_yields_a_path(text):
    try:
        out = safe_path_name(text)
    except UnsafePathError as exc:
        message = str(exc)
        out = None
    if out is None:
        assert "\n" not in message
        return
    assert out not in ("", ".", "..")
    assert "/" not in out
    assert "\\" not in out
    assert not any(ord(c) < 0x20 for c in out)
    assert len(out.encode("utf-8", "surrogatepass")) <= 255


@given(st.text(max_size=80))
def test_conda_filename_is_total(text):
    try:
        out = conda_filename(text)
    except UnsafePathError:
        return
    assert out.endswith((".conda", ".tar.bz2"))
    assert "/" not in out
    assert ".." not in out.rsplit("-", 2)[0]


@given(st.from_regex(r"[a-z0-9_][a-z0-9_\-]{0,30}", fullmatch=True), st.from_regex(r"[0-9][0-9a-z.]{0,8}", fullmatch=True),
       st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True), st.sampled_from([".conda", ".tar.bz2"]))
def test_valid_conda_filenames_pass(name, version, build, ext):
    fn = f"{name}-{version}-{build}{ext}"
    if ".." in fn:
        return
    assert conda_filename(fn) == fn


# -- upstream's optional channel files: any bytes give the subset or nothing, never an exception --

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                     max_leaves=20)


@given(st.one_of(st.binary(max_size=200), _json.map(lambda d: json.dumps(d).encode())),
       st.sets(st.text(max_size=12), max_size=3))
def test_channel_metadata_subsets_are_total(tmp_path_factory, body, names):
    from torchdepot.store.channel import subset_channeldata, subset_run_exports

    path = tmp_path_factory.getbasetemp() / "channel-meta.json"  # one file, rewritten per example
    path.write_bytes(body)
    for out in (subset_run_exports(path, names), subset_channeldata(path, names, {"noarch"})):
        if out is not None:
            doc = json.loads(out)
            assert isinstance(doc, dict)
