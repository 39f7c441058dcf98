"""The wheel model's fast path (per-part caches) against its reference path (the whole name
through packaging at once): the same model, or the same error, for every wheel name in the
real captures (../shared/data) and for generated names, odd, old and variant-labelled ones
included. Also: the fast path is taken for every name packaging accepts, and the quick ``%2B``
decoding equals ``urllib.parse.unquote``."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from torchdepot.errors import ParseError
from torchdepot.model.wheelname import (
    _parse_fast,
    _split,
    _unquote,
    parse_wheel,
    parse_wheel_reference,
)

# Every token that ends in .whl in the captures: bare names, relative paths, absolute URLs.
WHL_TOKEN = re.compile(r"""[^\s"'<>()\[\]|,;`]*\.whl""")


def outcome(parse, text: str) -> tuple[object, ...]:
    """What a parser makes of ``text``: the model (with what ``==`` leaves out: accelerator
    flags) or the error message."""
    try:
        w = parse(text)
    except ParseError as exc:
        return ("error", str(exc))
    return ("ok", w, w.accelerator.flags if w.accelerator else None, w.to_json())


def agree(text: str) -> tuple[object, ...]:
    fast = outcome(parse_wheel, text)
    assert fast == outcome(parse_wheel_reference, text), text
    if fast[0] == "ok":  # each part packaging accepts is cached: a name it accepts never takes the slow path
        assert _parse_fast(*_split(text)) is not None, text
    return fast


def real_names(data: Path) -> list[str]:
    found: set[str] = set()
    for path in data.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".txt", ".tsv", ".nix", ".md", ".yaml", ".json", ""):
            found.update(WHL_TOKEN.findall(path.read_text(encoding="utf-8", errors="replace")))
    return sorted(found)


def test_every_real_wheel_name_agrees_and_takes_the_fast_path(data_dir):
    names = real_names(data_dir)
    assert len(names) > 10_000  # the 2021/2023/2024 index pages, the URL lists, the nix hashes
    ok = errors = 0
    for text in names:
        got = agree(text)
        for variant in (text.replace("%2B", "+"), text.rsplit("/", 1)[-1]):  # decoded, bare name
            agree(variant)
        if got[0] == "ok":
            ok += 1
        else:
            errors += 1
    assert ok > 10_000
    assert errors  # the captures hold names packaging refuses (torchrec_cpu-0.1.1-3.7-none-any.whl)


VARIANT_LABELS = ["cuda12.8", "cuda13.0", "rocm7.1", "xpu", "null", "fancy_gpu", "CUDA13.0", "cu+da", "", "a.b"]


@st.composite
def wheel_names(draw: st.DrawFn) -> str:
    """Names shaped like wheels, with parts drawn from valid and invalid spellings."""
    part = st.text(alphabet="abcXYZ019_.+!-~ \u0661\u00b2\u00e9", max_size=8)
    name = draw(st.sampled_from(["torch", "Torch_Vision", "a.b", "a__b", "", "_x", "\u00e9t\u00e9", "x y"]) | part)
    version = draw(st.sampled_from([
        "2.1.0", "2.1.0+cu118", "2.1.0+CPU.cxx11.abi", "0.3.0.post4", "1.0+01", "01.02",
        "2.2.0.dev20231010+cpu", "1.0-1", "v1.0", "1.0rc1", "1!2.0", "1.0+cu.12.8.torch.2.11",
        "1.0+", "not.a.version", "1.0+rocm5.4.2", "1.0+\u0661",
    ]) | part)
    build = draw(st.none() | st.sampled_from(["1", "0001", "1abc", "\u0661", "\u00b2", "x1", ""]) | part)
    py = draw(st.sampled_from(["cp311", "py2.py3", "cp37.cp38", "3.7", "", "py3.", "pp39", "_x"]) | part)
    abi = draw(st.sampled_from(["cp311", "none", "cp314t", "abi3", "cp27mu", ""]) | part)
    plat = draw(st.sampled_from([
        "linux_x86_64", "manylinux_2_28_x86_64", "manylinux2014_aarch64", "win_amd64",
        "macosx_10_9_x86_64.macosx_11_0_arm64", "any", "MANYLINUX1_X86_64", "",
    ]) | part)
    label = draw(st.none() | st.sampled_from(VARIANT_LABELS) | part)
    parts = [name, version] + ([build] if build is not None else []) + [py, abi, plat]
    parts += [label] if label is not None else []
    stem = "-".join(parts)
    prefix = draw(st.sampled_from(["", "cu118/", "https://h.example/whl/nightly/rocm6.2/", "/whl/xpu/", "cpu/%2B/"]))
    encode = draw(st.booleans())
    return prefix + (urllib.parse.quote(stem) if encode else stem) + ".whl"


@given(wheel_names())
@example("torch-2.10.0-1-cp314-cp314t-manylinux_2_28_x86_64-cuda12.8.whl")
@example("torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-null.whl")
@example("torchrec_cpu-0.1.1-3.7-none-any.whl")
@example("foo-1.0-\u00b2x-py3-none-any.whl")
@example("foo-1.0-\u06611-py3-none-any.whl")
@example("https://h/whl/cu80/torch-0.3.0.post4-cp36-cp36m-linux_x86_64.whl#sha256=00")
def test_generated_names_agree(text):
    agree(text)


@given(st.text(max_size=60).map(lambda t: t + ".whl"))
def test_any_text_agrees(text):
    agree(text)


@given(st.lists(st.sampled_from(["%2B", "%2b", "%25", "%", "%2", "%C3%A9", "%FF", "+", "a", "/", "%2B2B"]),
                max_size=12).map("".join))
def test_quick_unquote_is_unquote(path):
    assert _unquote(path) == urllib.parse.unquote(path)
