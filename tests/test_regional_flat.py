"""The regional operator's mode (``releases:``, sync/regional.py) over the layouts regional
mirrors have: a flat listing per accelerator (``python -m http.server`` over ``<acc>/`` folders
of wheels: no ``#sha256=``, no ``.metadata``, no Range, no validators on a generated listing),
an Aliyun-shaped static listing (``pytorch-wheels/<acc>/index.html``, ``+`` written ``&#43;``)
and a find-links page (``torch_stable.html``). Each accelerator is read the way the per-target
path reads it (``sources.upstream.locate_variant``/``variant_links``); the mirror is published as
``whl/<acc>/`` PEP 503 indexes, which pip installs from. Every request is counted at the server
from its access log (tests/kit/realservers.py)."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit.realservers import Served, http_server
from tests.kit.wheels import wheel_bytes
from torchdepot.errors import TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

ACCS = ("cpu", "cu128")
RELEASES = ("1.13.1", "2.0.0", "2.1.0")  # torch>=2.0 selects the last two
TAGS = ("cp311-cp311-manylinux_2_28_x86_64", "py3-none-any")
LINUX = "py3-none-manylinux_2_28_x86_64"
OLD = 946684800  # 2000-01-01: static pages older than any request, so If-Modified-Since gets a 304


def _files() -> dict[str, dict[str, bytes]]:
    """accelerator -> file name -> bytes: what each ``<acc>/`` folder holds (dependencies copied
    into every folder, as a flat regional copy has them)."""
    out: dict[str, dict[str, bytes]] = {}
    for acc in ACCS:
        folder = out.setdefault(acc, {})
        for version in RELEASES:
            for tag in TAGS:
                deps = ["filelock", "sympy", "opt-einsum>=3.3 ; extra == 'opt-einsum'"]
                if acc == "cu128":  # triton is named but listed nowhere: said in one line
                    deps += ["nvidia-cublas-cu12 ; platform_system == 'Linux'", "triton ; platform_system == 'Linux'"]
                w = wheel_bytes("torch", f"{version}+{acc}", tag, tuple(deps))
                folder[w.filename] = w.data
        deps = [("filelock", "3.0.0", "py3-none-any", ()), ("sympy", "1.12", "py3-none-any", ("mpmath<1.4,>=1.1",)),
                ("mpmath", "1.3.0", "py3-none-any", ()), ("mpmath", "1.4.0", "py3-none-any", ()),
                ("opt-einsum", "3.3.0", "py3-none-any", ())]
        if acc == "cu128":
            deps.append(("nvidia-cublas-cu12", "12.8.0", LINUX, ()))
        for project, version, tag, requires in deps:
            w = wheel_bytes(project, version, tag, requires)
            folder[w.filename] = w.data
    return out


def _expected(acc: str) -> set[str]:
    """The file names ``whl/<acc>/`` must carry for torch>=2.0 (from the table, not from pages)."""
    names = {n for n in _files()[acc] if n.startswith(("torch-2.", "filelock-", "sympy-", "mpmath-1.3.0"))}
    return names | ({n for n in _files()[acc] if n.startswith("nvidia_cublas_cu12-")} if acc == "cu128" else set())


def _listing(names: list[str]) -> str:
    """A static listing as Aliyun writes it: bare hrefs, ``+`` as ``&#43;``, no hashes."""
    rows = "".join(f'<a href="{html.escape(n).replace("+", "&#43;")}">{html.escape(n)}</a>\n' for n in names)
    return f"<html><head><title>Index</title></head><body><pre>\n{rows}</pre></body></html>\n"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> tuple[Served, Path]:
    """One http.server over three upstreams: ``/`` (generated listings of ``cpu/`` and ``cu128/``),
    ``/pytorch-wheels/`` (static index.html listings, Aliyun's shape) and ``/torch_stable.html``
    (a find-links page linking ``cpu/...`` and ``cu128/...``); ``/empty/`` lists no folder."""
    root = tmp_path_factory.mktemp("flat-upstream")
    stable = []
    for acc, files in _files().items():
        for sub in (root / acc, root / "pytorch-wheels" / acc):
            sub.mkdir(parents=True)
            for name, data in files.items():
                (sub / name).write_bytes(data)
        (root / "pytorch-wheels" / acc / "index.html").write_text(_listing(sorted(files)))
        stable += [f"{acc}/{n}" for n in sorted(files) if n.startswith("torch-")]
    (root / "pytorch-wheels" / "index.html").write_text(_listing([f"{acc}/" for acc in ACCS]))
    (root / "torch_stable.html").write_text(_listing(stable))
    (root / "empty").mkdir()
    (root / "empty" / "index.html").write_text(_listing(["README.txt"]))
    for page in [*root.rglob("index.html"), root / "torch_stable.html"]:
        os.utime(page, (OLD, OLD))
    with http_server(root, tmp_path_factory.mktemp("flat-server")) as up:
        yield up, root


def _sync(base: str, out: Path, **over):
    data = {"releases": "torch>=2.0", "packages": ["torch"], "extra_packages": [], "accelerators": ["all"],
            "pythons": ["all"], "platforms": ["all"], "upstreams": [base], "out": str(out), "jobs": 4, **over}
    msgs: list[str] = []
    res = sync(parse_spec(data, "regional.yaml"), client=make_session(HttpConfig(retries=0)), progress=False,
               echo=msgs.append, pip_sources=PipSources(no_index=True))
    return res, msgs


def _synced(base: str, out: Path, expected: Callable[[str], set[str]] = _expected) -> list[str]:
    """A sync of ``base`` into ``out`` that must pass its closing check and publish, under each
    ``whl/<acc>/``, exactly ``expected(acc)``; its messages."""
    res, msgs = _sync(base, out)
    assert res.verify == "ok", msgs
    for acc in ACCS:
        assert _page_names(out, acc) == expected(acc), (acc, msgs)
    return msgs


def _page_names(out: Path, acc: str) -> set[str]:
    """The wheel names every project page of the published ``whl/<acc>/`` lists."""
    return {name for page in (out / L.INDEX_LINK / acc).glob("*/index.html")
            for name in re.findall(r">([^<]+\.whl)</a>", page.read_text())}


def _wheel_hits(hits):
    return [h for h in hits if h.path.endswith(".whl")]


def test_a_flat_listing_sends_each_body_once_and_a_no_op_no_file(upstream, tmp_path):
    up, _root = upstream
    out = tmp_path / "out"
    mark = up.mark()
    msgs = _synced(up.url + "/", out)
    assert "releases: dependency triton is not on the cu128 index; not mirrored" in msgs
    sizes = {f"/{acc}/{name}": len(data) for acc, files in _files().items() for name, data in files.items()}
    hits = up.since(mark)
    wheels = _wheel_hits(hits)
    names = [h.path.rsplit("/", 1)[-1] for h in wheels]
    # each name crosses once: filelock, sympy and mpmath sit in both folders, one file to the mirror
    assert len(set(names)) == len(names), sorted(names)
    assert all(h.status == 200 and h.body == sizes[h.path] for h in wheels), wheels
    selected = {f"/{acc}/{n}" for acc in ACCS for n in _expected(acc)}
    assert {h.path for h in wheels} <= selected  # torch 1.13.1, mpmath 1.4.0, opt-einsum: never sent
    stored = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.kind == "wheel"}
    assert stored == _expected("cpu") | _expected("cu128")
    # the accelerators came from the listing of / (no aggregate /torch/ page)
    assert any(h.path == "/" and h.status == 200 for h in hits)

    mark = up.mark()
    again, msgs = _sync(up.url + "/", out)
    hits = up.since(mark)
    assert again.verify == "ok", msgs
    assert not _wheel_hits(hits), hits
    # generated listings carry no validator (http.server), so only they come whole; nothing else has a body
    assert all(h.path.endswith("/") for h in hits), hits
    assert {h.path for h in hits if h.body} <= {"/", "/cpu/", "/cu128/"}
    assert again.report is None or not [r for r in again.report.results if r.status == "downloaded"]


def test_an_aliyun_shaped_static_listing_and_its_no_op_of_304s(upstream, tmp_path):
    up, _root = upstream
    out = tmp_path / "out"
    _synced(up.url + "/pytorch-wheels/", out)
    mark = up.mark()
    again, msgs = _sync(up.url + "/pytorch-wheels/", out)
    hits = up.since(mark)
    assert again.verify == "ok", msgs
    assert hits
    assert all(h.status in (304, 404) and h.body == 0 for h in hits), hits
    assert sum(h.status == 304 for h in hits) == 3  # the listing of pytorch-wheels/ and of each <acc>/


def test_a_find_links_page_gives_the_accelerators_and_names_what_it_lacks(upstream, tmp_path):
    up, _root = upstream
    out = tmp_path / "out"
    msgs = _synced(up.url + "/torch_stable.html", out, lambda acc: {n for n in _expected(acc) if n.startswith("torch-")})
    assert "releases: dependency filelock is not on the cpu, cu128 index; not mirrored" in msgs


def test_all_over_an_upstream_without_aggregate_page_or_folders_is_one_line(upstream, tmp_path):
    up, _root = upstream
    with pytest.raises(TorchdepotError) as err:
        _sync(up.url + "/empty/", tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert f"needs upstream's aggregate page {up.url}/empty/torch/ or a listing of {up.url}/empty/" in message
    _res, msgs = _sync(up.url + "/empty/", tmp_path / "named", accelerators=["cpu"])
    assert "releases: cpu: no torch>=2.0 wheel fits the spec's filters; skipped" in msgs


@pytest.mark.slow  # a venv and a real pip install (about 4 s)
def test_pip_installs_torch_from_the_published_index(upstream, tmp_path):
    from tests.venvs import make_venv, run

    up, _root = upstream
    out = tmp_path / "out"
    res, msgs = _sync(up.url + "/", out, accelerators=["cpu"])
    assert res.verify == "ok", msgs
    with http_server(out, tmp_path / "mirror-server") as mirror:
        py = make_venv(tmp_path / "venv")
        done = run([py, "-m", "pip", "install", "--index-url", f"{mirror.url}/whl/cpu", "torch"], timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert not any(h.path.startswith(("/cpu/", "/cu128/")) for h in mirror.hits())
    check = run([py, "-c", "import torch, sympy, mpmath; print(torch.__version__, mpmath.__version__)"])
    assert check.stdout.split() == ["2.1.0+cpu", "1.3.0"], check.stderr[-2000:]
