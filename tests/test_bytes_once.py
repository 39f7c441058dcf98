"""Each byte crosses the far link once per sync (issue 21): a hashless upstream (an
Aliyun-style flat listing of the PyTorch variant, and a dependency index whose pages give
no hashes and no ``.metadata``) is mirrored with every wheel's body sent at most once by
the server (size + 1 MB allows for the few KB of Range reads of each zip's central
directory), counted at a real loopback server."""

from __future__ import annotations

import html

import pytest

from tests.faultserver import FaultServer
from tests.kit.upstream import DEPS, TORCH, padded_wheel, pep503, populate
from torchdepot.model.sizes import format_size
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

MB = 1024 * 1024


def _flat_listing(names: list[str]) -> bytes:
    rows = "\n".join(f'<a href="{html.escape(n.replace("+", "%2B"))}">{html.escape(n)}</a>  2025-01-01 00:00  3M'
                     for n in names)
    return f'<html><body><pre><a href="../">../</a>\n{rows}\n</pre></body></html>\n'.encode()


@pytest.fixture
def hashless(tmp_path):
    torch = padded_wheel(*TORCH, payload=3 * MB, seed=1)
    deps = [padded_wheel(*spec, payload=MB + MB // 2, seed=2 + i) for i, spec in enumerate(DEPS)]
    with FaultServer(validators=True) as up:
        up.add(f"/pytorch-wheels/cpu/{torch.filename}", torch.data)
        up.add("/pytorch-wheels/cpu/", _flat_listing([torch.filename]))
        tree = pep503(deps, pages=["/simple"], files="/files", metadata=False)
        for path, content in tree.files.items():
            if path.endswith("index.html") and "/simple/" in path:  # no hashes on the dependency pages
                content = content.replace(b"#sha256=", b"#nohash=")
            up.add(path, content)
        sizes = {torch.filename: len(torch.data), **{w.filename: len(w.data) for w in deps}}
        paths = {torch.filename: f"/pytorch-wheels/cpu/{torch.filename}",
                 **{w.filename: f"/files/{w.filename}" for w in deps}}
        yield up, sizes, paths, tmp_path


def _sync(up, tmp_path, **kw):
    spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "upstreams": [up.url + "/pytorch-wheels"],
                       "out": str(tmp_path / "out"), "jobs": 2}, "test spec")
    msgs: list[str] = []
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=up.url + "/simple"), **kw)
    return res, msgs


def test_hashless_upstream_sends_each_wheel_once(hashless):
    up, sizes, paths, tmp_path = hashless
    res, msgs = _sync(up, tmp_path)
    sent = {name: up.body_bytes[path] for name, path in paths.items()}
    print(f"\nFIGURES sent={sent} sizes={sizes} requests={res.requests} ranges={dict(up.ranges)}")
    files = {e.path.rsplit("/", 1)[-1]: e for e in mf.load(tmp_path / "out").files if e.kind == "wheel"}
    assert set(files) == set(sizes), msgs
    for name, size in sizes.items():
        assert files[name].size == size
        assert sent[name] <= size + MB, (name, sent[name], size)
    # a no-op re-sync sends no wheel bytes at all
    up.reset_counters()
    _sync(up, tmp_path)
    assert {name: up.body_bytes[path] for name, path in paths.items()} == dict.fromkeys(sizes, 0)


def test_no_op_rereads_pages_conditionally(hashless):
    """Pages are kept with their validators; a re-sync sends If-None-Match and a 304 costs no
    body; a page upstream changed (new ETag) is read in full again."""
    up, _sizes, _paths, tmp_path = hashless
    first, _ = _sync(up, tmp_path)
    assert first.requests["unchanged"] == 0
    up.reset_counters()
    again, msgs = _sync(up, tmp_path)
    print(f"\nFIGURES no-op requests={again.requests} seconds={again.seconds:.2f}")
    assert again.requests["pages"] == first.requests["pages"]
    missing = [path for path in up.hits if up._lookup(path)[0] is None]
    assert missing == ["/pytorch-wheels/cpu/torch/"]  # the layout probe (404): nothing to revalidate
    assert again.requests["unchanged"] == again.requests["pages"] - len(missing), msgs
    assert sum(n for path, n in up.body_bytes.items() if path not in missing) == 0  # only 304s
    assert again.requests["metadata"] == again.requests["ranges"] == again.requests["wheels"] == 0
    changed = "/simple/filelock/index.html"
    up.add(changed, up.files[changed][0])  # same bytes, new ETag: read again, in full
    up.reset_counters()
    third, _ = _sync(up, tmp_path)
    assert third.requests["unchanged"] == third.requests["pages"] - len(missing) - 1
    assert up.body_bytes["/simple/filelock/"] == len(up.files[changed][0])


def test_dry_run_uses_the_caches_and_the_sizes_it_has(hashless):
    """``--dry-run`` after a sync: the resolution cache and the manifest's sizes, no request
    for any wheel (no HEAD per file, no Range read), and the mirror left as it was."""
    up, sizes, paths, tmp_path = hashless
    _sync(up, tmp_path)
    state = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    up.reset_counters()
    res, msgs = _sync(up, tmp_path, dry_run=True)
    assert {name: up.hits[path] for name, path in paths.items()} == dict.fromkeys(sizes, 0)
    assert res.requests["unchanged"] == res.requests["pages"] - 1  # all but the 404 layout probe
    total = sum(sizes.values())
    assert msgs[-1].startswith(f"plan: 1 targets, {len(sizes)} unique files, {format_size(total)}"), msgs
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == state


def test_metadata_is_kept_by_its_hash_and_never_fetched_twice(tmp_path):
    """An upstream with hashes and PEP 658 ``.metadata``: a second sync that must run the
    resolver again (its resolution cache gone) reads every ``.metadata`` from the cache kept by
    its declared hash, not from upstream."""
    with FaultServer(validators=True) as up:
        populate(up, payload=10_000)
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": [], "upstreams": [up.url + "/whl"], "out": str(tmp_path / "out"),
                           "jobs": 2}, "test spec")

        def run():
            return sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lambda m: None,
                        pip_sources=PipSources(index_url=up.url + "/simple"))

        first = run()
        assert first.requests["metadata"] >= 5  # torch and its four dependencies
        (tmp_path / "out" / L.RESOLUTIONS).unlink()  # the resolver runs again and asks for every .metadata
        up.reset_counters()
        again = run()
        assert again.requests["metadata"] == 0, again.requests
        assert not [p for p in up.hits if p.endswith(".metadata")]
        assert again.requests["unchanged"] == again.requests["pages"]
