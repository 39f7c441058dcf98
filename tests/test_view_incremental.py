"""A whole run's cost follows what changed (issue 21): when one upstream page changes, only the
view page derived from it is screened again (the others are taken from the previous run's
derivations, ``sync/view.py`` ``_screened``), only the targets whose pages changed run the
resolver, and the mirror and view are byte for byte those of a sync from scratch. Counted at a
real loopback server with two accelerators (cpu and cu121), one target each."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.faultserver import FaultServer
from tests.kit.upstream import TORCH, padded_wheel, pep503, populate
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.sources.links import Link, Page
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import layout as L
from torchdepot.sync import resolution
from torchdepot.sync.pip import sync
from torchdepot.sync.view import SCREENS_DIR, View, _at

CU121 = ("torch", "2.5.0+cu121", *TORCH[2:])


@contextlib.contextmanager
def cpu_and_cu121():
    """A loopback upstream with cpu's torch and its dependencies, and a cu121 torch."""
    with FaultServer(validators=True) as server:
        up = populate(server, payload=2_000)
        pep503([padded_wheel(*CU121, payload=2_000, seed=7)], pages=["/whl/cu121"], files="/whl/files").serve(server)
        yield up


@pytest.fixture
def upstream():
    with cpu_and_cu121() as up:
        yield up


def first_sync(up, out: Path, seen: list[tuple[str, str]]):
    """The first sync of ``up`` into ``out`` (it must pass) and the view pages ``seen`` counted in
    it: torch's of both accelerators and their dependencies'."""
    first, _ = _sync(up, out)
    assert first.verify == "ok"
    pages = set(seen)
    assert {("cpu", "torch"), ("cu121", "torch")} <= pages
    assert len(pages) >= 6, pages
    return first, pages


def from_scratch_again(out: Path, tmp_path: Path) -> None:
    """The incremental mirror at ``out`` moved to ``tmp_path/incremental``, and the copy made
    before its run (``tmp_path/before``) put back at ``out`` without its view, derivations, kept
    pages and resolutions: the same sync then runs from scratch."""
    shutil.move(str(out), str(tmp_path / "incremental"))
    shutil.move(str(tmp_path / "before"), str(out))
    for gone in (L.VIEW_DIR, L.PAGE_CACHE):
        shutil.rmtree(out / gone)
    (out / L.RESOLUTIONS).unlink()


def counting(monkeypatch, method: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(acc, project) of every call of ``View.<method>``; every target resolved."""
    calls: list[tuple[str, str]] = []
    resolved: list[str] = []
    real, resolve = getattr(View, method), resolution._resolve_excluding

    def counting_view(self, accelerator, project, *args):
        calls.append((accelerator, project))
        return real(self, accelerator, project, *args)

    def counting_resolve(view, tp, index):
        resolved.append(tp.target.id)
        return resolve(view, tp, index)

    monkeypatch.setattr(View, method, counting_view)
    monkeypatch.setattr(resolution, "_resolve_excluding", counting_resolve)
    return calls, resolved


@pytest.fixture
def counted(monkeypatch):
    """(acc, project) of every view page screened from upstream's links; every target resolved."""
    return counting(monkeypatch, "_derive")


def _sync(up, out: Path, accelerators: tuple[str, ...] = ("cpu", "cu121"), dry_run: bool = False):
    spec = parse_spec({"accelerators": list(accelerators), "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "upstreams": [up.url + "/whl"], "out": str(out), "jobs": 2},
                      "test spec")
    msgs: list[str] = []
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=up.url + "/simple"), dry_run=dry_run)
    return res, msgs


def _new_cpu_torch(up) -> str:
    """torch 2.5.1+cpu on upstream: the one page that changes is ``/whl/cpu/torch/``."""
    newer = padded_wheel(TORCH[0], "2.5.1+cpu", *TORCH[2:], payload=2_000, seed=9)
    old = padded_wheel(*TORCH, payload=2_000, seed=0)
    tree = pep503([old, newer], pages=["/whl/cpu"], files="/whl/files", indexes=False)
    for path, content in tree.files.items():
        if "/torch/" in path or newer.filename in path:
            up.server.add(path, content)
    return newer.filename


def _published(out: Path) -> dict[str, bytes]:
    """Every file of the mirror and of the view (state files, caches and the derivations aside),
    with manifest.json and the landing page without the run's time."""
    state, view = L.STATE_DIR + "/", L.VIEW_DIR + "/"
    got: dict[str, bytes] = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if not p.is_file() or (rel.startswith(state) and not rel.startswith(view)) or f"/{SCREENS_DIR}/" in rel \
                or rel in (L.LANDING_NAME, L.LOCK_FILE) or rel.startswith(L.PUBLISH_DIR + "/"):
            continue  # index generations: the live one is compared below, under its link's name
        got[rel] = p.read_bytes()
    live = (out / "whl").resolve()
    for p in sorted(live.rglob("*")):
        if p.is_file():
            got["whl/" + p.relative_to(live).as_posix()] = p.read_bytes()
    doc = json.loads(got.pop(L.MANIFEST_NAME))
    doc.pop("last_sync")
    got[L.MANIFEST_NAME] = json.dumps(doc, sort_keys=True).encode()
    return got


def test_one_changed_page_rebuilds_one_view_page_and_resolves_one_target(upstream, tmp_path, counted):
    derived, resolved = counted
    out = tmp_path / "out"
    first, pages = first_sync(upstream, out, derived)
    assert sorted(resolved) == sorted(tp.target.id for tp in first.plans)
    assert len(list((out / L.VIEW_DIR / SCREENS_DIR).glob("*.json"))) == len(pages)
    shutil.copytree(out, tmp_path / "before", symlinks=True)

    derived.clear()
    resolved.clear()
    newer = _new_cpu_torch(upstream)
    again, _ = _sync(upstream, out)
    assert again.verify == "ok"
    assert derived == [("cpu", "torch")]  # 1 of the len(pages) view pages derived again
    assert resolved == ["cpu-py311-linux-x86_64"]  # cu121's pages are unchanged: its answer is reused
    assert again.torch_versions == {"cpu-py311-linux-x86_64": "2.5.1+cpu", "cu121-py311-linux-x86_64": "2.5.0+cu121"}
    incremental = _published(out)
    assert any(rel.endswith(newer) for rel in incremental)

    # the same sync from the same mirror, at the same path (the spec names it), with the view,
    # its derivations, the kept pages and the resolutions gone: the same bytes
    from_scratch_again(out, tmp_path)
    derived.clear()
    resolved.clear()
    scratch, _ = _sync(upstream, out)
    assert scratch.verify == "ok"
    assert set(derived) == pages
    assert len(resolved) == 2
    fresh = _published(out)
    # the view's work dir keeps the METADATA earlier runs wrote (torch 2.5.0's): never served
    # again while no page lists it, and rewritten only when its bytes change
    stale = {rel for rel in incremental.keys() - fresh.keys() if rel.startswith(L.VIEW_DIR + "/")}
    assert stale == {f"{L.VIEW_DIR}/cpu/files/{padded_wheel(*TORCH, payload=2_000, seed=0).filename}.metadata"}
    assert fresh == {rel: data for rel, data in incremental.items() if rel not in stale}
    assert any(rel.endswith("/index.html") and rel.startswith(L.VIEW_DIR) for rel in fresh)


def test_an_added_target_derives_and_resolves_only_its_own(upstream, tmp_path, counted):
    """A target added (a whole run: the spec changed) reads every page again by conditional
    request (304); the pages already derived are reused, only the new accelerator's are derived."""
    derived, resolved = counted
    out = tmp_path / "out"
    _sync(upstream, out, ("cpu",))
    cpu_pages = set(derived)
    assert {acc for acc, _ in cpu_pages} == {"cpu"}
    derived.clear()
    resolved.clear()
    res, _ = _sync(upstream, out)
    assert res.verify == "ok"
    assert derived
    assert {acc for acc, _ in derived} == {"cu121"}  # none of cpu's derived again
    assert resolved == ["cu121-py311-linux-x86_64"]
    assert res.requests["unchanged"] >= len(cpu_pages)  # cpu's pages: 304s, their derivations reused


def test_a_dry_run_reads_the_mirrors_derivations_and_writes_none(upstream, tmp_path, counted):
    derived, resolved = counted
    out = tmp_path / "out"
    _sync(upstream, out)
    screens = out / L.VIEW_DIR / SCREENS_DIR
    kept = {p.name: p.read_bytes() for p in screens.iterdir()}
    _new_cpu_torch(upstream)
    derived.clear()
    resolved.clear()
    dry, msgs = _sync(upstream, out, dry_run=True)
    assert derived == [("cpu", "torch")]
    assert resolved == ["cpu-py311-linux-x86_64"]
    assert {p.name: p.read_bytes() for p in screens.iterdir()} == kept
    assert any("2.5.1+cpu" in m for m in msgs), msgs


@pytest.mark.slow  # 1.5-2.2 s: keeps make test under 2 minutes
def test_a_changed_input_besides_pages_derives_again(upstream, tmp_path, counted):
    """The host policy, sources or cutoff a derivation depended on changed: nothing is reused."""
    derived, _ = counted
    out = tmp_path / "out"
    _sync(upstream, out)
    n = len(set(derived))
    for entry in (out / L.VIEW_DIR / SCREENS_DIR).glob("*.json"):  # as if written under other inputs
        doc = json.loads(entry.read_bytes())
        doc["key"] = "0" * 64
        entry.write_text(json.dumps(doc))
    _new_cpu_torch(upstream)  # a whole run (the replay's page is changed)
    derived.clear()
    _sync(upstream, out)
    assert len(set(derived)) == n


@pytest.mark.parametrize("damage", [b"", b"{", b"[]", b'{"key": 1}', b"\xff" * 10])
def test_a_damaged_derivation_is_derived_again(upstream, tmp_path, counted, damage):
    derived, _ = counted
    out = tmp_path / "out"
    first, _ = _sync(upstream, out)
    entries = sorted((out / L.VIEW_DIR / SCREENS_DIR).glob("*.json"))
    assert len(entries) == len(set(derived))
    for entry in entries:
        entry.write_bytes(damage)
    _new_cpu_torch(upstream)
    derived.clear()
    again, _ = _sync(upstream, out)
    assert again.verify == "ok"
    assert len(set(derived)) == len(entries)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 5) | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=12)


@given(refs=_json)
def test_kept_positions_are_taken_as_they_are_or_not_at_all(refs):
    """Any JSON where a derivation keeps its links' positions: the links at those positions on
    the pages read, or None; never an exception, never a link from elsewhere."""
    pages = [Page(url="u0", links=[Link(url=f"https://h/{i}.whl", filename=f"{i}.whl") for i in range(3)]), None,
             Page(url="u2")]
    got = _at(pages, refs)
    if got is not None:
        assert isinstance(refs, list)
        assert len(got) == len(refs)
        assert all(link in pages[0].links for link in got)
