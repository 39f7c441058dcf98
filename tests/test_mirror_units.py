"""Pure parts of the mirror: choosing torch builds per target, index pages, atomic swap."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from torchdepot.resolve.pin import paired_prefix, pin
from torchdepot.sources.links import Link
from torchdepot.sources.pep503 import parse_html
from torchdepot.store.pages import (
    IndexFile,
    build_pages,
    current_generation,
    generation_of,
    publish,
)

BASE = "https://download.pytorch.org/whl"


def links(*names: str, base: str = f"{BASE}/cpu") -> list[Link]:
    return [Link(url=f"{base}/{n.replace('+', '%2B')}", filename=n) for n in names]


def test_linux_unlabelled_torch_is_never_cpu_but_macos_and_windows_are():
    # the default index's files live under hash directories, and its Linux torch is a CUDA build
    ls = links("torch-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.14.0-cp311-none-macosx_11_0_arm64.whl",
               "torch-2.14.0-cp311-cp311-win_amd64.whl", base="https://index.invalid/packages/ab/cd")
    ls += links("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert pin(ls, "torch", "cpu", "3.11", "linux-x86_64", None).version == "2.13.0+cpu"
    assert pin(ls, "torch", "cpu", "3.11", "macos-arm64", None).version == "2.14.0"
    assert pin(ls, "torch", "cpu", "3.11", "windows-amd64", None).version == "2.14.0"
    assert pin(ls, "torch", "cu126", "3.11", "linux-x86_64", None) is None


def test_target_python_platform_glibc_and_constraint():
    ls = links("torch-2.7.0+cu128-cp310-cp310-manylinux_2_28_x86_64.whl",
               "torch-2.7.0+cu128-cp310-cp310-manylinux_2_28_aarch64.whl",
               "torch-2.8.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl",
               "torch-2.9.0+cu128-cp310-cp310-manylinux_2_34_x86_64.whl",   # too new a glibc for 2_28 targets
               "torch-2.6.0+cu128-cp313-cp313t-manylinux_2_28_x86_64.whl",  # free-threaded
               "torch-2.10.0.dev20250102+cu128-cp310-cp310-manylinux_2_28_x86_64.whl")
    p = pin(ls, "torch", "cu128", "3.10", "linux-x86_64", None)
    assert p.requirement == "torch==2.7.0+cu128"
    assert pin(ls, "torch", "cu128", "3.10", "linux-aarch64", None).version == "2.7.0+cu128"
    assert pin(ls, "torch", "cu128", "3.10", "linux-x86_64", "<2.7") is None
    assert pin(ls, "torch", "cu128", "3.10", "linux-x86_64", "==2.7.0+cu128").version == "2.7.0+cu128"
    assert pin(ls, "torch", "cu128", "3.10", "linux-x86_64", None, prereleases=True).version.startswith("2.10.0.dev")
    assert pin(ls, "torch", "cu128", "3.13", "linux-x86_64", None) is None


def test_old_unlabelled_files_take_the_accelerator_from_the_directory():
    ls = links("torch-0.3.0.post4-cp36-cp36m-linux_x86_64.whl", base=f"{BASE}/cu80")
    assert pin(ls, "torch", "cu80", "3.6", "linux-x86_64", None).version == "0.3.0.post4"


def test_torchvision_pairs_with_torch():
    assert paired_prefix("torchvision", "2.13.0+cpu") == "0.28"
    assert paired_prefix("torchvision", "2.5.1") == "0.20"
    assert paired_prefix("torchvision", "1.13.1") == "0.14"
    assert paired_prefix("torchaudio", "2.8.0+cu128") == "2.8"
    ls = links("torchvision-0.29.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
               "torchvision-0.28.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
               "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    got = pin(ls, "torchvision", "cpu", "3.11", "linux-x86_64", None, torch_version="2.13.0+cpu")
    assert got.version == "0.28.1+cpu"


def _files() -> dict[str, list[IndexFile]]:
    torch_cpu = IndexFile("torch", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                          "packages/torch/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "a" * 64,
                          ">=3.10,<4", "b" * 64)
    torch_cu = IndexFile("torch", "torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",
                         "packages/torch/torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl", "c" * 64)
    numpy = IndexFile("numpy", "numpy-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                      "packages/numpy/numpy-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl", "d" * 64, ">=3.11", "e" * 64)
    return {"cpu": [torch_cpu, numpy], "cu126": [torch_cu, numpy]}


def test_pages_layout_links_and_attributes():
    pages = build_pages(_files())
    # the HTML pages (PEP 691 JSON twins, where written, are store/simple_json's to test)
    assert sorted(p for p in pages if p.endswith(".html")) == ["cpu/index.html", "cpu/numpy/index.html", "cpu/torch/index.html", "cu126/index.html",
                             "cu126/numpy/index.html", "cu126/torch/index.html", "index.html", "numpy/index.html",
                             "torch/index.html"]
    page = parse_html(pages["cpu/torch/index.html"], "http://m/sub/whl/cpu/torch/")
    (link,) = page.links
    assert link.url == "http://m/sub/packages/torch/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert link.sha256 == "a" * 64
    assert link.requires_python == ">=3.10,<4"
    assert link.metadata_sha256 == "b" * 64
    assert b'data-requires-python="&gt;=3.10,&lt;4"' in pages["cpu/torch/index.html"]
    agg = parse_html(pages["torch/index.html"], "http://m/whl/torch/")
    assert [lk.url.rsplit("/", 1)[1] for lk in agg.links] == [
        "torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.13.0%2Bcu126-cp311-cp311-manylinux_2_28_x86_64.whl"]
    assert agg.links[1].core_metadata is None  # no metadata attributes when there is no .metadata
    assert parse_html(pages["index.html"], "http://m/whl/").projects == ["cpu", "cu126", "numpy", "torch"]
    assert parse_html(pages["cu126/index.html"], "http://m/whl/cu126/").projects == ["numpy", "torch"]
    assert build_pages(_files()) == pages  # deterministic


def test_publish_swaps_atomically_keeps_previous_and_prunes(tmp_path: Path):
    first = build_pages(_files())
    gen1, changed = publish(tmp_path, first)
    assert changed
    assert os.readlink(tmp_path / "whl") == f".publish/{gen1}/whl"
    assert gen1 == generation_of(first)
    assert publish(tmp_path, first) == (gen1, False)
    second = build_pages({"cpu": _files()["cpu"]})
    gen2, _ = publish(tmp_path, second)
    assert current_generation(tmp_path) == gen2
    assert (tmp_path / ".publish" / gen1).is_dir()
    assert not (tmp_path / "whl" / "cu126").exists()
    gen3, _ = publish(tmp_path, build_pages({"cu126": _files()["cu126"]}))
    assert sorted(p.name for p in (tmp_path / ".publish").iterdir()) == sorted([gen2, gen3])
    assert not list(tmp_path.glob(".whl.tmp-*"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["cpu", "cu118", "rocm6.2"]),
                          st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
                          st.from_regex(r"[0-9]\.[0-9]{1,2}(\+cpu)?", fullmatch=True),
                          st.text(alphabet="<>=!,.0123456789 &\"'", max_size=10)), max_size=6))
def test_pages_round_trip_through_the_parser(entries):
    variants: dict[str, list[IndexFile]] = {}
    seen: set[tuple[str, str]] = set()
    for acc, name, version, req_py in entries:
        fn = f"{name}-{version}-py3-none-any.whl"
        if (acc, fn) in seen:  # one file has one metadata: a second entry for it is not a real input
            continue
        seen.add((acc, fn))
        variants.setdefault(acc, []).append(IndexFile(name, fn, f"packages/{name}/{fn}", "0" * 64, req_py or None))
    pages = build_pages(variants)
    for acc, files in variants.items():
        for f in files:
            page = parse_html(pages[f"{acc}/{f.project}/index.html"], f"http://h/whl/{acc}/{f.project}/")
            match = [lk for lk in page.links if lk.filename == f.filename]
            assert match
            assert match[0].url.startswith("http://h/packages/")
            assert any(lk.requires_python == (f.requires_python or None) for lk in match)
