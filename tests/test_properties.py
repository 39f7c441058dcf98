"""Property tests: the parsers take arbitrary text/bytes and only ever raise torchdepot's
own errors; wheel filenames built from valid parts round-trip.

The example count comes from the hypothesis profile (tests/conftest.py): 200 in `dev`, the
full 2,000 under CI. The repodata property runs against the live parser (sources.repodata)."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdepot.errors import TorchdepotError
from torchdepot.model.accel import accelerator_from_dir, accelerator_from_local, parse_accelerator
from torchdepot.model.condabuild import (
    parse_build_string,
    record_from_repodata,
    split_conda_filename,
)
from torchdepot.model.wheelname import parse_wheel
from torchdepot.sources.findlinks import parse_findlinks
from torchdepot.sources.links import Page
from torchdepot.sources.pep503 import parse_html
from torchdepot.sources.pep691 import parse_json
from torchdepot.sources.repodata import RepodataError, parse_repodata

# max_examples is left to the loaded profile (dev: fast; ci: 2,000).
MANY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text biased toward the characters these formats are made of, so examples get deep.
ALPHABET = st.sampled_from(list("torchcu118rocm6.2xpupy3_-+%2B/.:#=whlcondatar.bz2hmanylinux_2_28x86_64<>\"' &;") + ["\x00", "é", "\n"])
textish = st.one_of(st.text(), st.text(alphabet=ALPHABET, max_size=80))


def test_example_count_comes_from_the_profile():
    """CI (or HYPOTHESIS_PROFILE=ci) runs the full 2,000 examples; the dev profile fewer."""
    import os

    from tests.conftest import CI_EXAMPLES, DEV_EXAMPLES, NO_SKIP

    ci = (os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if NO_SKIP else "dev")) == "ci"
    assert settings().max_examples == (CI_EXAMPLES if ci else DEV_EXAMPLES)
    assert DEV_EXAMPLES < CI_EXAMPLES == 2000


def _only_ours(fn, *args):
    with contextlib.suppress(TorchdepotError):
        fn(*args)


@MANY
@given(textish)
def test_parse_wheel_total(text):
    _only_ours(parse_wheel, text)


@MANY
@given(textish)
def test_build_string_total(text):
    _only_ours(parse_build_string, text)
    _only_ours(split_conda_filename, text)


@MANY
@given(textish)
def test_accelerator_parsers_total(text):
    _only_ours(parse_accelerator, text)
    accelerator_from_dir(text)
    accelerator_from_local(text)


html_piece = st.one_of(
    textish,
    st.builds(lambda h, a, t: f'<a href="{h}" {a}>{t}</a>', textish, st.sampled_from(
        ["", "data-yanked", 'data-core-metadata="sha256=ab"', "data-requires-python='&gt;=3'", "data-x=1 y"]), textish),
    st.sampled_from(["<!--", "-->", "<base href=", "<script>", "</script>", "<a", ">", "&amp;", "&#0;", "&#x110000;"]),
)


@MANY
@given(st.lists(html_piece, max_size=12), st.sampled_from(["http://h/whl/torch/", "https://h/x", "file:///tmp/"]))
def test_parse_html_total(pieces, base):
    body = "".join(pieces).encode("utf-8", "surrogatepass")
    page = parse_html(body, base)
    assert isinstance(page, Page)
    for link in page.links:
        assert link.filename
        assert "/" not in link.filename
    parse_findlinks(body, base)


@MANY
@given(st.binary(max_size=300))
def test_parse_html_bytes_total(body):
    parse_html(body, "http://h/whl/")


# Small JSON values: generation, not parsing, is the cost of these tests.
scalar = st.none() | st.booleans() | st.integers() | st.text(alphabet=ALPHABET, max_size=12)
json_value = st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(st.sampled_from(["sha256", "a", ""]), scalar, max_size=2))
file_entry = st.fixed_dictionaries({}, optional={
    "filename": json_value, "url": st.one_of(textish, json_value), "hashes": st.one_of(json_value, st.fixed_dictionaries({"sha256": textish})),
    "requires-python": json_value, "core-metadata": json_value, "dist-info-metadata": json_value,
    "yanked": json_value, "size": json_value, "upload-time": json_value})


@MANY
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda files, projects: json.dumps({"meta": {}, "files": files, "projects": projects}).encode(),
              st.one_of(st.lists(file_entry, max_size=5), json_value), st.one_of(json_value, st.lists(json_value, max_size=3))),
))
def test_parse_json_total(body):
    parse_json(body, "http://h/simple/torch/")


record = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.just("pytorch"), json_value), "version": st.one_of(st.just("2.0.0"), json_value),
    "build": st.one_of(st.just("py3.10_cuda11.8_cudnn8.7.0_0"), json_value), "build_number": json_value,
    "depends": json_value, "constrains": json_value, "sha256": json_value, "md5": json_value,
    "size": json_value, "timestamp": json_value})


@MANY
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda pk, pc: json.dumps({"info": {"subdir": "linux-64"}, "packages": pk, "packages.conda": pc}).encode(),
              st.one_of(st.dictionaries(st.one_of(st.just("pytorch-2.0.0-py3.10_cuda11.8_cudnn8.7.0_0.tar.bz2"), textish), record, max_size=4), json_value),
              st.one_of(st.dictionaries(textish, record, max_size=3), json_value)),
))
def test_parse_repodata_total(body):
    error = None
    try:
        rd = parse_repodata(body, "ch", "linux-64", "ch/linux-64")
    except RepodataError as exc:
        error = str(exc)
    if error is not None:
        assert error.startswith("ch/linux-64: ")
        assert "\n" not in error
        return
    for filename, r in rd.records.items():
        assert isinstance(r.build_number, int)
        assert r.filename == filename
        assert "/" not in filename
        assert ".." not in filename
        assert r.channel == "ch"
        assert r.subdir == "linux-64"
    for fn in ("pytorch-2.0.0-py3.10_cuda11.8_cudnn8.7.0_0.tar.bz2", "x"):
        _only_ours(record_from_repodata, "ch", "linux-64", fn, {"name": "pytorch"})


# --- round trip -----------------------------------------------------------------
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
name_part = st.builds(lambda a, b, c: a + b + (f"_{c}" if c else ""), st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                      st.text(alphabet=_ALNUM, max_size=7), st.text(alphabet=_ALNUM, max_size=4))
release = st.lists(st.integers(0, 30), min_size=1, max_size=4).map(lambda p: ".".join(map(str, p)))
local = st.sampled_from([None, "cpu", "cu118", "cu92", "cu130", "rocm6.2.4", "rocm5.7", "xpu", "cpu.cxx11.abi", "e437e35"])
pytag = st.sampled_from(["cp310", "cp311", "cp313", "py3", "py2.py3", "cp36"])
abitag = st.sampled_from(["cp310", "cp313t", "none", "abi3", "cp36m"])
plat = st.sampled_from(["manylinux_2_28_x86_64", "manylinux2014_aarch64", "manylinux1_x86_64", "win_amd64",
                        "macosx_11_0_arm64", "linux_x86_64", "any", "macosx_10_9_x86_64.macosx_11_0_arm64"])
accdir = st.sampled_from([None, "cpu", "cu80", "cu121", "rocm5.4.2", "nightly/cu126"])


@MANY
@given(name_part, release, local, pytag, abitag, plat, accdir, st.booleans())
def test_wheel_round_trip(name, rel, loc, py, abi, pl, d, encode):
    version = rel + (f"+{loc}" if loc else "")
    filename = f"{name}-{version}-{py}-{abi}-{pl}.whl"
    text = filename.replace("+", "%2B") if encode else filename
    if d:
        text = f"https://h.test/whl/{d}/{text}"
    w = parse_wheel(text)
    assert w.filename == filename
    assert w.name == name.replace("_", "-")
    assert w.local == loc
    assert w.version.split("+")[0] == w.public_version
    assert ".".join(w.python_tags) == py
    assert w.abi_tags == (abi,)
    assert ".".join(w.platform_tags) == pl
    stated = accelerator_from_local(loc) if loc else None
    expected = stated.name if stated else (d.rsplit("/", 1)[-1] if d else None)
    assert (w.accelerator.name if w.accelerator else None) == expected
