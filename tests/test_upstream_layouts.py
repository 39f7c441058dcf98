"""Each upstream layout a regional PyTorch mirror uses gives the same mirror (issue 12):

- a PEP 503 tree (USTC/NJU style, ``<base>/<variant>/<project>/``) whose pages link back
  to the origin's absolute URLs; the origin is the second upstream (``[ustc, official]``);
- a find-links page (SJTU's ``torch_stable.html``), relative links ``cpu/torch-...%2Bcpu...``;
- a flat directory listing of ``<base>/<variant>/`` (Aliyun), ``+`` written as ``&#43;``.

Dependencies come from the pip configuration's index in every case."""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.mirror_upstream import build_upstreams, make_wheel, sha256
from torchdepot.model.presets import UPSTREAM_PRESETS, Layout
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.sources.upstream import layout_of
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

TAG = "cp311-cp311-manylinux_2_28_x86_64"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """The origin (/whl/cpu/torch/ with hashes and .metadata) and the dependency index."""
    root = tmp_path_factory.mktemp("layouts")
    torch = [make_wheel(root / "w", "torch", "2.13.0+cpu", TAG, ("filelock",), ">=3.10"),
             make_wheel(root / "w", "torch", "2.12.0+cpu", TAG, ("filelock",), ">=3.10")]
    deps = [make_wheel(root / "w", "filelock", "3.20.0")]
    o, b = root / "O", root / "B"
    o.mkdir()
    b.mkdir()
    with Server(b) as sb, Server(o) as so:
        build_upstreams(o, b, sb.url, torch, deps)
        yield root, so.url, sb.url + "/simple", torch


def _mirror(upstreams: list[str], out: Path, index: str) -> tuple[dict[str, str], object, float]:
    spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "upstreams": upstreams, "out": str(out), "jobs": 2}, "test spec")
    msgs: list[str] = []
    t = time.monotonic()
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=index))
    took = time.monotonic() - t
    print(f"\nFIGURES {upstreams[0]}: links_refused={res.refused} requests={res.requests} seconds={took:.2f}")
    files = {e.path: e.sha256 for e in mf.load(out).files}
    pages = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "whl").rglob("*.html"))}
    return files, pages, res


@pytest.mark.slow
def test_every_layout_gives_the_same_mirror(origin, tmp_path):
    root, o_url, index, torch = origin
    # USTC/NJU: a PEP 503 tree at another base whose links are absolute to the origin
    tree = tmp_path / "tree" / "pytorch" / "whl" / "cpu" / "torch"
    tree.mkdir(parents=True)
    anchors = "".join(f'<a href="{o_url}/whl/cpu/{urllib.parse.quote(w.name)}#sha256={sha256(w)}">{w.name}</a>\n'
                      for w in torch)
    (tree / "index.html").write_text(f"<html><body>\n{anchors}</body></html>\n")
    # SJTU: one find-links page, files under <variant>/
    fl = tmp_path / "fl" / "pytorch-wheels"
    (fl / "cpu").mkdir(parents=True)
    # Aliyun: a bare listing of <base>/cpu/ with '+' escaped as &#43;
    flat = tmp_path / "flat" / "pytorch-wheels" / "cpu"
    flat.mkdir(parents=True)
    fl_links, flat_links = [], []
    for w in torch:
        (fl / "cpu" / w.name).write_bytes(w.read_bytes())
        (flat / w.name).write_bytes(w.read_bytes())
        fl_links.append(f'<a href="cpu/{w.name.replace("+", "%2B")}">cpu/{w.name}</a><br>')
        escaped = w.name.replace("+", "&#43;")
        flat_links.append(f'<a href="{escaped}">{escaped}</a>          2025-01-01 00:00  1M')
    (fl / "torch_stable.html").write_text("<html><body>\n" + "\n".join(fl_links) + "\n</body></html>\n")
    (flat / "index.html").write_text("<html><head><title>Index of /pytorch-wheels/cpu/</title></head><body><pre>"
                                     '<a href="../">../</a>\n' + "\n".join(flat_links) + "\n</pre></body></html>\n")

    with Server(tmp_path / "tree") as st, Server(tmp_path / "fl") as sf, Server(tmp_path / "flat") as sl:
        results = {
            "origin": _mirror([o_url + "/whl"], tmp_path / "out-origin", index),
            "tree": _mirror([st.url + "/pytorch/whl", o_url + "/whl"], tmp_path / "out-tree", index),
            "findlinks": _mirror([sf.url + "/pytorch-wheels/torch_stable.html"], tmp_path / "out-fl", index),
            "flat": _mirror([sl.url + "/pytorch-wheels"], tmp_path / "out-flat", index),
        }
    files, pages, _ = results["origin"]
    assert f"packages/torch/{torch[0].name}" in files
    assert "packages/filelock/filelock-3.20.0-py3-none-any.whl" in files
    for name, (f, p, res) in results.items():
        assert f == files, name
        assert p == pages, name
        assert res.refused == 0, name
    # the tree's absolute links were followed to the origin, which is the second upstream
    tree_entry = mf.load(tmp_path / "out-tree").by_path()[f"packages/torch/{torch[0].name}"]
    assert tree_entry.url.startswith(o_url + "/whl/cpu/")


def test_layouts_of_presets_and_urls():
    assert {p.name: p.layout for p in UPSTREAM_PRESETS.values()} == {
        "official": Layout.SIMPLE, "ustc": Layout.SIMPLE, "nju": Layout.SIMPLE, "sjtu": Layout.FINDLINKS,
        "aliyun": Layout.FLAT}
    for preset in UPSTREAM_PRESETS.values():
        assert preset.base.startswith("https://")
        assert layout_of(preset.base) is preset.layout
    assert layout_of("http://mirror.lan/whl/torch_stable.html") is Layout.FINDLINKS
    assert layout_of("http://mirror.lan/whl") is Layout.SIMPLE  # a flat listing is detected when read
