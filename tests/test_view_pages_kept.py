"""A view page whose derivation is reused is not formatted again (issue 21 item 2): its digest
is the one kept beside its derivation (``<sha>.page``, ``sync/view.py`` ``_kept_digest``) when
nothing else its bytes depend on changed, and the page is built only when the resolver asks for
it. Counted (``View._build_page`` wrapped, not replaced) on whole runs against a real loopback
server, and on views built directly over one; the bytes are always those a build from scratch
makes."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faultserver import FaultServer
from tests.kit.upstream import DEPS, TORCH, padded_wheel, pep503, populate
from tests.test_view_incremental import (
    _new_cpu_torch,
    _published,
    _sync,
    counting,
    cpu_and_cu121,
    first_sync,
    from_scratch_again,
)
from torchdepot.model.presets import Layout
from torchdepot.net.hostpolicy import HostPolicy
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.sources.links import Link
from torchdepot.sources.upstream import UpstreamReader, Variant
from torchdepot.store import layout as L
from torchdepot.sync.view import PAGE_SUFFIX, SCREENS_DIR, View, ViewSources


@pytest.fixture
def upstream():
    with cpu_and_cu121() as up:
        yield up


@pytest.fixture
def counted(monkeypatch):
    """(acc, project) of every view page formatted; every target resolved."""
    return counting(monkeypatch, "_build_page")


def test_a_whole_run_formats_only_the_pages_the_resolver_reads_again(upstream, tmp_path, counted):
    built, resolved = counted
    out = tmp_path / "out"
    first, pages = first_sync(upstream, out, built)
    kept = sorted((out / L.VIEW_DIR / SCREENS_DIR).glob("*" + PAGE_SUFFIX))
    assert len(kept) == len(pages)  # every page built has its digest kept beside its derivation

    built.clear()
    resolved.clear()
    (out / L.SETTLED).unlink()  # a whole run, not the settled no-op's replay (which builds no view)
    noop, _ = _sync(upstream, out)
    assert noop.verify == "ok"
    assert resolved == []
    assert built == []  # every digest the resolution cache compared was a kept one
    shutil.copytree(out, tmp_path / "before", symlinks=True)

    newer = _new_cpu_torch(upstream)
    again, _ = _sync(upstream, out)
    assert again.verify == "ok"
    assert resolved == ["cpu-py311-linux-x86_64"]
    assert ("cpu", "torch") in built
    assert {acc for acc, _ in built} == {"cpu"}  # cu121's pages: their digests kept, not one formatted
    assert len(built) == len(set(built))  # each page formatted once per run
    incremental = _published(out)
    assert any(rel.endswith(newer) for rel in incremental)

    # the same run from the same mirror with the view, its derivations and kept digests, the
    # kept pages and the resolutions gone: the same bytes (the view's pages included)
    from_scratch_again(out, tmp_path)
    built.clear()
    scratch, _ = _sync(upstream, out)
    assert scratch.verify == "ok"
    assert set(built) == pages
    fresh = _published(out)
    stale = {rel for rel in incremental.keys() - fresh.keys() if rel.startswith(L.VIEW_DIR + "/")}
    assert all(rel.endswith(".metadata") for rel in stale), stale  # torch 2.5.0's, from the earlier runs
    assert fresh == {rel: data for rel, data in incremental.items() if rel not in stale}
    assert sum(rel.startswith(L.VIEW_DIR) and rel.endswith("/index.html") for rel in fresh) == len(pages)


def test_a_hash_the_mirror_now_holds_rebuilds_the_page_with_it(tmp_path, counted):
    """A hashless upstream: the first run's pages show no sha256; the next run knows each held
    file's hash from the manifest, a per-run input: the pages are built again, with it."""
    built, _ = counted
    wheels = [padded_wheel(*spec, 2_000, seed) for seed, spec in enumerate((TORCH, *DEPS))]
    tree = pep503(wheels, pages=["/whl/cpu", "/simple"], files="/whl/files")
    with FaultServer(validators=True) as server:
        for path, content in tree.files.items():
            if isinstance(content, bytes) and path.endswith("/index.html"):
                content = re.sub(rb"#sha256=[0-9a-f]{64}", b"", content)
            server.add(path, content)
        up = types.SimpleNamespace(url=server.url)
        out = tmp_path / "out"
        first, _ = _sync(up, out, ("cpu",))
        assert first.verify == "ok"
        view = out / L.VIEW_DIR
        before = {p.relative_to(view): p.read_bytes() for p in view.glob("cpu/*/index.html")}
        assert len(before) >= 4
        assert not any(b"#sha256=" in b for b in before.values())
        built.clear()
        (out / L.SETTLED).unlink()  # a whole run: the settled no-op's replay builds no view
        again, _ = _sync(up, out, ("cpu",))
        assert again.verify == "ok"
        after = {p.relative_to(view): p.read_bytes() for p in view.glob("cpu/*/index.html")}
        assert after.keys() == before.keys()
        assert all(b"#sha256=" in b for b in after.values())
        assert {("cpu", str(rel.parent.name)) for rel in after} <= set(built)

        # from scratch, with the same manifest: the same pages
        for gone in (L.VIEW_DIR, L.PAGE_CACHE):
            shutil.rmtree(out / gone)
        for gone in (L.RESOLUTIONS, L.SETTLED):
            (out / gone).unlink()
        built.clear()
        _sync(up, out, ("cpu",))
        assert {p.relative_to(view): p.read_bytes() for p in view.glob("cpu/*/index.html")} == after
        assert built


# -- views built directly: one per run, over one loopback upstream -----------------------------


@pytest.fixture
def served():
    with FaultServer(validators=True) as server:
        yield populate(server, payload=2_000)


def _view(up, workdir: Path, **kw) -> View:
    """One run's view of ``up``'s cpu accelerator (a fresh reader: every page read anew)."""
    host = up.url.split("//", 1)[1]
    policy = HostPolicy(hosts=frozenset({host}))
    variant = Variant(base=up.url + "/whl", url=up.url + "/whl/cpu", layout=Layout.SIMPLE, accelerator="cpu")
    reader = UpstreamReader(make_session(HttpConfig(retries=0)), policy)
    return View(reader=reader, policy=policy, sources=ViewSources(variants=(("cpu", variant),),
                indexes=(up.url + "/simple",), find_links=()), workdir=workdir, on_hash_mismatch="warn",
                say=lambda _line: None, **kw)


def _digest(view: View, project: str = "torch") -> tuple[str, bytes | None]:
    """The page's digest as the resolution cache reads it, then its bytes as the resolver does."""
    digest = view.page_digest("cpu", project)
    body = view.page("cpu", project)
    assert body is not None
    assert digest == hashlib.sha256(body).hexdigest()
    return digest, body


def test_a_reused_derivation_takes_the_kept_digest_and_builds_the_same_bytes(served, tmp_path, counted):
    built, _ = counted
    work = tmp_path / "view"
    first = _digest(_view(served, work))
    assert built == [("cpu", "torch")]
    built.clear()
    view = _view(served, work)
    assert view.page_digest("cpu", "torch") == first[0]
    assert built == []  # the digest kept beside the reused derivation
    assert (work / "cpu/torch/index.html").read_bytes() == first[1]
    assert view.page("cpu", "torch") == first[1]  # the resolver asks: built, the same bytes
    assert built == [("cpu", "torch")]
    built.clear()
    assert _digest(_view(served, tmp_path / "scratch")) == first  # from scratch: the same
    assert built == [("cpu", "torch")]


def _exclude_first(view: View) -> str:
    vf = view.project("cpu", "torch")[0]
    view.exclude("cpu", vf, "not a zip")
    return vf.shown


@pytest.mark.parametrize("change", ["exclusion", "known hash", "held copy", "scratch gone", "scratch rewritten",
                                    "upstream page"])
def test_a_changed_per_run_input_builds_the_page_again(served, tmp_path, counted, change):
    built, _ = counted
    work = tmp_path / "view"
    base_digest, base_body = _digest(_view(served, work))
    assert base_body is not None
    built.clear()
    kw: dict = {}
    torch = next(f for f in served.wheels if f.startswith("torch-"))
    extra = Link(url=served.url + "/held/" + torch.replace("2.5.0", "2.4.0"),
                 filename=torch.replace("2.5.0", "2.4.0"), sha256="a" * 64, upload_time="2024-01-01T00:00:00Z")
    if change == "held copy":
        kw["held"] = lambda acc, project, links: [extra] if project == "torch" else []
    if change == "scratch gone":
        (work / "cpu/torch/index.html").unlink()
    if change == "scratch rewritten":
        page = work / "cpu/torch/index.html"
        page.write_bytes(base_body.replace(b"torch", b"TORCH"))  # the same size, other bytes
    if change == "upstream page":
        _new_cpu_torch(served)
    if change == "known hash":  # the page declares one already: a link without one, as a held copy
        bare = dataclasses.replace(extra, sha256=None)
        kw["held"] = lambda acc, project, links: [bare] if project == "torch" else []
        _digest(_view(served, work, **kw))
        built.clear()
        kw["known_hashes"] = {bare.url: "b" * 64}
    view = _view(served, work, **kw)
    shown = _exclude_first(view) if change == "exclusion" else None
    digest, body = _digest(view)
    assert built == [("cpu", "torch")]  # formatted once: for the digest, then kept for the resolver
    assert body is not None
    assert (work / "cpu/torch/index.html").read_bytes() == body
    if change in ("scratch gone", "scratch rewritten"):
        assert (digest, body) == (base_digest, base_body)
    else:
        assert digest != base_digest
    if shown is not None:
        assert shown.encode() not in body
    if change == "known hash":
        assert b"#sha256=" + b"b" * 64 in body
    if change == "held copy":
        assert extra.filename.encode() in body
    # and each is the page a view built from scratch under the same inputs makes
    built.clear()
    fresh = _view(served, tmp_path / "scratch", **kw)
    if change == "exclusion":
        _exclude_first(fresh)
    assert _digest(fresh) == (digest, body)
    # the next run under the first run's inputs builds again (the kept digest is of these inputs)
    if change not in ("scratch gone", "scratch rewritten", "upstream page"):
        built.clear()
        assert _digest(_view(served, work)) == (base_digest, base_body)
        assert built == [("cpu", "torch")]


@pytest.mark.parametrize("damage", [b"", b"{", b"[]", b'{"inputs": 1}', b"\xff" * 10, b"{}" + b" " * 5000])
def test_a_damaged_kept_digest_builds_the_page(served, tmp_path, counted, damage):
    built, _ = counted
    work = tmp_path / "view"
    first = _digest(_view(served, work))
    records = list((work / SCREENS_DIR).glob("*" + PAGE_SUFFIX))
    assert records
    for record in records:
        record.write_bytes(damage)
    built.clear()
    assert _digest(_view(served, work)) == first
    assert built == [("cpu", "torch")]


def test_a_kept_digest_of_other_bytes_is_not_taken(served, tmp_path, counted):
    """A record whose inputs match but whose sha256 is not a digest: built (never served as one)."""
    built, _ = counted
    work = tmp_path / "view"
    first = _digest(_view(served, work))
    (record,) = (work / SCREENS_DIR).glob("*" + PAGE_SUFFIX)
    text = record.read_text()
    record.write_text(text.replace(first[0], "G" * 64))
    built.clear()
    assert _digest(_view(served, work)) == first
    assert built == [("cpu", "torch")]


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**70) | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["inputs", "sha256", "size", "mtime_ns", "x"]) | st.text(max_size=3),
                         inner, max_size=5),
                     max_leaves=12)


@pytest.fixture
def reused(served, tmp_path_factory):
    """A run's view whose torch derivation was reused, its record's path and the true digest."""
    work = tmp_path_factory.mktemp("view")
    digest, _ = _digest(_view(served, work))
    view = _view(served, work)
    view.project("cpu", "torch")
    (record,) = (work / SCREENS_DIR).glob("*" + PAGE_SUFFIX)
    assert view._kept_digest("cpu", "torch") == digest  # as kept, it is taken
    return view, record, digest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_json)
def test_any_kept_record_gives_the_true_digest_or_none(reused, doc):
    """Any JSON where a page's digest is kept: that digest when it is the one kept, else None
    (the page is built); never an exception."""
    import json

    view, record, digest = reused
    kept = json.loads(record.read_bytes()) if record.exists() else None
    record.write_text(json.dumps(doc))
    try:
        got = view._kept_digest("cpu", "torch")
    finally:
        if kept is not None:
            record.write_text(json.dumps(kept))
    assert got is None or got == digest
