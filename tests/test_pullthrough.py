"""serve --pull-through: pages merged from the mirror and upstream with relative links only,
files fetched once (coalesced), hash-checked and published like a sync's, an upstream that
lies or vanishes, --offline, the miss log and its way into a mirror and a bundle. Every
upstream is a loopback FaultServer serving real wheels; pip and uv install through it."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.faultserver import Fault, FaultServer
from tests.kit.condaforge import FORGE, build_forge_channel
from tests.kit.upstream import dead_url, padded_wheel, pep503
from tests.kit.wheels import BuiltWheel
from tests.mirror_fixture import make_mirror
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.net.hostpolicy import default_policy
from torchdepot.resolve.uv import uv_bin
from torchdepot.ship.pullthrough import (
    PullThrough,
    PullThroughHandler,
    Settings,
    Sources,
    read_misses,
)
from torchdepot.ship.serve import MirrorServer, make_server
from torchdepot.sources.repodata import RepodataError, check_depth, splice_repodata
from torchdepot.store import manifest as mf

TD = Path(sys.executable).parent / "torchdepot"
TORCH = ("torch", "2.5.0+cpu", "py3-none-any", ("filelock",))
FILELOCK = ("filelock", "3.16.1", "py3-none-any", ())


def _wheels(payload: int = 20_000) -> tuple[BuiltWheel, BuiltWheel]:
    return padded_wheel(*TORCH, payload, 1), padded_wheel(*FILELOCK, payload, 2)


def _upstream(up: FaultServer, torch: BuiltWheel, dep: BuiltWheel, lie: dict[str, str] | None = None) -> None:
    """PyTorch-shaped: torch under /whl/cpu/ (with PEP 658 sidecars); the dependency on the
    pip index /simple/ with its files under /files/."""
    pep503([torch], pages=["/whl/cpu"], files="/whl/cpu", lie=lie).serve(up)
    pep503([dep], pages=["/simple"], files="/files", metadata=False).serve(up)


def _sources(url: str) -> Sources:
    return Sources(upstreams=(f"{url}/whl",), indexes=(f"{url}/simple",), policy=default_policy([url]))


@contextlib.contextmanager
def pull_server(root: Path, sources: Sources, settings: Settings | None = None) -> Iterator[tuple[MirrorServer, PullThrough]]:
    cache = PullThrough(root, sources, settings or Settings())
    httpd = make_server(root, "127.0.0.1", 0, quiet=True, handler_class=PullThroughHandler, cache=cache)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield httpd, cache
    finally:
        httpd.shutdown()
        httpd.server_close()
        cache.close()


def get(httpd, path: str, headers: dict[str, str] | None = None,
        version: str = "HTTP/1.1") -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=30)
    if version == "HTTP/1.0":
        conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def _hrefs(html: bytes) -> list[str]:
    return re.findall(r'href="([^"]+)"', html.decode())


def test_page_then_file_fetched_once_and_published(tmp_path):
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            resp, page = get(httpd, "/whl/cpu/torch/")
            assert resp.status == 200
            assert resp.getheader("Cache-Control") == "no-cache"
            hrefs = _hrefs(page)
            assert hrefs == [f"../../../packages/torch/{torch.filename.replace('+', '%2B')}#sha256={torch.sha256}"]
            resp, data = get(httpd, "/packages/torch/" + torch.filename.replace("+", "%2B"))
            assert resp.status == 200
            assert data == torch.data
            assert "immutable" in resp.getheader("Cache-Control")
            resp, page = get(httpd, "/whl/cpu/filelock/", {"Accept": "application/vnd.pypi.simple.v1+json"})
            doc = json.loads(page)
            assert [f["url"] for f in doc["files"]] == [f"../../../packages/filelock/{dep.filename}"]
            assert get(httpd, f"/packages/filelock/{dep.filename}")[1] == dep.data
            assert up.hits[f"/whl/cpu/{torch.filename}"] == 1
            # the fetched file is now the mirror's: the page advertises its PEP 658 metadata
            resp, page = get(httpd, "/whl/cpu/torch/", {"Accept": "application/vnd.pypi.simple.v1+json"})
            assert json.loads(page)["files"][0]["core-metadata"] != False  # noqa: E712
    listed = mf.load(root).by_path()
    assert listed[f"packages/torch/{torch.filename}"].sha256 == torch.sha256
    assert f"packages/torch/{torch.filename}.metadata" in listed
    assert not (root / ".torchdepot" / "publish.json").exists()
    proc = subprocess.run([TD, "verify-mirror", root], capture_output=True, text=True, env=hermetic_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([TD, "status", root], capture_output=True, text=True, env=hermetic_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pull-through misses: 2 file requests (2 fetched from upstream, 0 not served), 2 pages built" in proc.stdout


def test_spec_gives_the_same_inputs(tmp_path):
    from torchdepot.commands.serve import pull_sources

    spec = tmp_path / "mirror.yaml"
    spec.write_text("upstreams: [http://127.0.0.1:9/whl]\nchannel: nightly\nallow_hosts: [files.lab:8443]\n"
                    "conda:\n  channels: [{name: chan, mirrors: [http://127.0.0.2:9/chan]}]\n  specs: [pytorch]\n")
    sources = pull_sources(spec, ())
    assert sources.upstreams == ("http://127.0.0.1:9/whl",)
    assert sources.prefix == "nightly/"
    assert sources.conda == (("chan", ("http://127.0.0.2:9/chan",)),)
    assert sources.policy.allows("https://files.lab:8443/x.whl")
    assert sources.policy.allows("http://127.0.0.2:9/chan/linux-64/x.conda")
    assert not sources.policy.allows("http://evil.example/x.whl")
    assert pull_sources(spec, ("http://127.0.0.3:9/whl",)).upstreams == ("http://127.0.0.3:9/whl",)  # --upstream wins


def test_forty_clients_share_one_upstream_download(tmp_path):
    torch, dep = _wheels(payload=400_000)
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        up.always(f"/whl/cpu/{torch.filename}", Fault("drip", rate=800_000.0))  # ~0.5 s: the clients overlap
        with pull_server(root, _sources(up.url)) as (httpd, cache):
            assert get(httpd, "/whl/cpu/torch/")[0].status == 200
            url = "/packages/torch/" + torch.filename.replace("+", "%2B")
            bodies: list[tuple[int, bytes]] = []
            lock = threading.Lock()

            def one() -> None:
                resp, body = get(httpd, url)
                with lock:
                    bodies.append((resp.status, body))

            threads = [threading.Thread(target=one) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(bodies) == 40
            assert {s for s, _ in bodies} == {200}
            assert {hashlib.sha256(b).hexdigest() for _, b in bodies} == {torch.sha256}
            assert up.hits[f"/whl/cpu/{torch.filename}"] == 1
            assert up.body_bytes[f"/whl/cpu/{torch.filename}"] == len(torch.data)
            assert sum(cache.upstream_files.values()) == 1


def test_corrupted_upstream_file_is_never_served_nor_stored(tmp_path):
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep, lie={"torch": "0" * 64})  # the page declares other bytes than it serves
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            assert get(httpd, "/whl/cpu/torch/")[0].status == 200
            url = "/packages/torch/" + torch.filename.replace("+", "%2B")
            # the first client is streamed the bytes as they arrive: the response never completes
            with pytest.raises(http.client.IncompleteRead):
                get(httpd, url)
            resp, body = get(httpd, url, version="HTTP/1.0")  # and a client that cannot be streamed
            assert resp.status == 502
            assert b"sha256" in body
            assert torch.data[:100] not in body
            hits = up.hits[f"/whl/cpu/{torch.filename}"]
            resp, body = get(httpd, url)  # said again at once, upstream not asked again
            assert resp.status == 502
            assert up.hits[f"/whl/cpu/{torch.filename}"] == hits
    assert not (root / "packages" / "torch" / torch.filename).exists()
    assert list((root / ".torchdepot" / "partial").iterdir()) == []
    assert not (root / "manifest.json").exists() or f"packages/torch/{torch.filename}" not in mf.load(root).by_path()
    misses = read_misses(root)
    assert any(m.kind == "file" and m.outcome == "refused" for m in misses)


def test_premirrored_root_merges_pages_with_relative_links_only(tmp_path):
    root = tmp_path / "mirror"
    make_mirror(root)  # holds torch 2.13.0+cpu and filelock 3.16.1
    own = (root / "whl/cpu/filelock/index.html").read_bytes()
    torch, dep = _wheels()
    with FaultServer() as up:
        _upstream(up, torch, dep)  # upstream: torch 2.5.0+cpu, and filelock 3.16.1 with other bytes
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            _, page = get(httpd, "/whl/cpu/torch/")
            names = sorted(h.split("/")[-1].split("#")[0] for h in _hrefs(page))
            assert names == ["torch-2.13.0%2Bcpu-py3-none-any.whl", torch.filename.replace("+", "%2B")]
            _, doc = get(httpd, "/whl/cpu/torch/", {"Accept": "application/vnd.pypi.simple.v1+json"})
            for text in (page.decode(), doc.decode()):
                assert "http://" not in text
                assert "127.0.0.1" not in text
            assert all(h.startswith("../../../packages/") for h in _hrefs(page))
            # the mirror wins for a name it has: its filelock, its hash
            _, merged = get(httpd, "/whl/cpu/filelock/")
            assert _hrefs(merged) == _hrefs(own)
            assert dep.sha256 not in merged.decode()
            # a page only the mirror has (no upstream page for it) is still served
            assert get(httpd, "/whl/cu126/torch/")[0].status == 200


def test_offline_serves_only_the_mirror_and_records_misses(tmp_path):
    root = tmp_path / "mirror"
    make_mirror(root)
    settings = Settings(offline=True)
    with pull_server(root, Sources(upstreams=(), indexes=(), policy=default_policy()), settings) as (httpd, _cache):
        assert get(httpd, "/whl/cpu/torch/")[0].status == 200
        started = time.monotonic()
        resp, body = get(httpd, "/whl/cpu/numpy/")
        assert resp.status == 404
        resp, body = get(httpd, "/packages/numpy/numpy-2.0.0-py3-none-any.whl")
        assert resp.status == 404
        assert time.monotonic() - started < 1
    misses = read_misses(root)
    assert [(m.kind, m.project, m.outcome) for m in misses] == [("page", "numpy", "offline"), ("file", "numpy", "missing")]
    proc = subprocess.run([TD, "status", root], capture_output=True, text=True, env=hermetic_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pull-through misses: 1 file requests" in proc.stdout
    assert "numpy (2)" in proc.stdout


def test_upstream_gone_answers_misses_within_three_seconds(tmp_path):
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        sources = _sources(up.url)
        with pull_server(root, sources, Settings(page_ttl=0)) as (httpd, _cache):
            assert get(httpd, "/whl/cpu/torch/")[0].status == 200
    # the upstream is gone (its port closed): pages keep being served, misses answer at once
    with pull_server(root, sources, Settings(page_ttl=0)) as (httpd, _cache):
        started = time.monotonic()
        resp, _ = get(httpd, "/whl/cpu/torch/")  # the last page built stays in service
        assert resp.status == 200
        resp, body = get(httpd, "/packages/torch/" + torch.filename.replace("+", "%2B"))
        assert resp.status == 503
        assert b"upstream unreachable" in body
        assert resp.getheader("Retry-After")
        resp, _ = get(httpd, "/whl/cpu/numpy/")  # a page with no copy anywhere
        assert resp.status == 404
        assert time.monotonic() - started < 3
    dead = Sources(upstreams=(dead_url(),), indexes=(), policy=default_policy())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pull_server(empty, dead) as (httpd, _c):
        started = time.monotonic()
        assert get(httpd, "/whl/cpu/torch/")[0].status == 404
        assert time.monotonic() - started < 3


def test_ttl_refreshes_a_page_from_upstream(tmp_path):
    torch, dep = _wheels()
    newer = padded_wheel("torch", "2.6.0+cpu", "py3-none-any", ("filelock",), 1000, 3)
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        with pull_server(root, _sources(up.url), Settings(page_ttl=3600)) as (httpd, _cache):
            assert len(_hrefs(get(httpd, "/whl/cpu/torch/")[1])) == 1
            pep503([torch, newer], pages=["/whl/cpu"], files="/whl/cpu").serve(up)
            assert len(_hrefs(get(httpd, "/whl/cpu/torch/")[1])) == 1  # within the TTL: the built page
        with pull_server(root, _sources(up.url), Settings(page_ttl=0)) as (httpd, _cache):
            assert len(_hrefs(get(httpd, "/whl/cpu/torch/")[1])) == 2  # past it: upstream read again


def test_hostile_upstream_links_are_screened(tmp_path):
    """Links to hosts outside the policy, traversal names and links without a sha256 never
    reach a page; what a page lists is only what the screen keeps."""
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        evil = (f'<a href="http://evil.example/x/torch-9.0.0-py3-none-any.whl#sha256={"a" * 64}">x</a>'
                f'<a href="{up.url}/whl/cpu/..%2F..%2Fetc%2Ftorch-8.0.0-py3-none-any.whl#sha256={"b" * 64}">y</a>'
                f'<a href="{up.url}/whl/cpu/torch-7.0.0-py3-none-any.whl">no hash</a>'
                f'<a href="{up.url}/whl/cpu/torch-6.0.0-py3-none-any.whl#sha256={"c" * 64}" data-yanked="">yanked</a>')
        up.add("/whl/cpu/torch/", f"<html><body>{evil}</body></html>".encode())
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            resp, page = get(httpd, "/whl/cpu/torch/")
            assert resp.status == 404 or _hrefs(page) == []
            assert b"evil" not in page


@pytest.mark.e2e
def test_pip_and_uv_install_through_an_empty_root_then_with_upstream_gone(tmp_path):
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    root.mkdir()
    venv_dir = tmp_path / "venv"
    py = make_venv(venv_dir)
    with FaultServer() as up:
        _upstream(up, torch, dep)
        sources = _sources(up.url)
        with pull_server(root, sources) as (httpd, _cache):
            url = f"http://127.0.0.1:{httpd.server_address[1]}/whl/cpu"
            proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--no-compile", "--index-url", url, "torch"])
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert run([py, "-c", "import torch, filelock; print(torch.__version__)"]).stdout.strip() == "2.5.0+cpu"
    # upstream gone: uv installs the same set into another environment from the root alone
    venv2 = tmp_path / "venv2"
    run([uv_bin(), "venv", "--python", sys.executable, venv2], env=hermetic_env())
    with pull_server(root, sources, Settings(page_ttl=0)) as (httpd, _cache):
        url = f"http://127.0.0.1:{httpd.server_address[1]}/whl/cpu"
        proc = run([uv_bin(), "pip", "install", "--python", venv2 / "bin" / "python", "--no-cache", "--index-url", url,
                    "torch"], env=hermetic_env(UV_NO_CACHE="1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run([venv2 / "bin" / "python", "-c", "import torch, filelock"]).returncode == 0
    assert os.path.exists(root / "manifest.json")


@pytest.mark.slow
def test_miss_log_to_mirror_to_bundle(tmp_path):
    """What clients pulled through is logged; `mirror --from-misses` lists it on the mirror's
    own index (a new generation); `bundle` carries it; the unbundled copy serves it statically."""
    torch, dep = _wheels()
    root = tmp_path / "mirror"
    make_mirror(root)
    with FaultServer() as up:
        _upstream(up, torch, dep)
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            get(httpd, "/whl/cpu/torch/")
            assert get(httpd, "/packages/torch/" + torch.filename.replace("+", "%2B"))[0].status == 200
            get(httpd, "/whl/cpu/mpmath/")  # asked for, on no source: a page miss, nothing to mirror
        before = os.readlink(root / "whl")
        assert torch.filename not in (root / "whl/cpu/torch/index.html").read_text().replace("%2B", "+")
        env = hermetic_env(PIP_INDEX_URL=f"{up.url}/simple")
        proc = subprocess.run([TD, "mirror", "--from-misses", root, "--upstream", f"{up.url}/whl"],
                              capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 files asked for through pull-through are now in the index (0 fetched now" in proc.stdout
    assert os.readlink(root / "whl") != before  # a new generation, swapped in one rename
    page = (root / "whl/cpu/torch/index.html").read_text()
    assert torch.filename.replace("+", "%2B") in page
    assert "torch-2.13.0%2Bcpu" in page  # the mirror's own files stay listed
    assert torch.filename.replace("+", "%2B") in (root / "whl/torch/index.html").read_text()
    proc = subprocess.run([TD, "verify-mirror", root], capture_output=True, text=True, env=hermetic_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = tmp_path / "b.tar"
    proc = subprocess.run([TD, "bundle", "--mirror", root, "--out", bundle], capture_output=True, text=True,
                          env=hermetic_env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    other = tmp_path / "airgapped"
    proc = subprocess.run([TD, "unbundle", bundle, "--to", other], capture_output=True, text=True,
                          env=hermetic_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (other / "packages/torch" / torch.filename).read_bytes() == torch.data
    assert torch.filename.replace("+", "%2B") in (other / "whl/cpu/torch/index.html").read_text()


def _start_cli(*args: object, env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([TD, "serve", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    banner = [proc.stdout.readline().rstrip("\n") for _ in range(4)]
    return proc, banner


class _At:
    """``get`` against a port (a CLI server)."""

    def __init__(self, port: int):
        self.server_address = ("127.0.0.1", port)


def test_cli_pull_through_and_offline(tmp_path):
    torch, dep = _wheels()
    root = tmp_path / "new-mirror"  # need not exist yet
    env = hermetic_env(PIP_INDEX_URL="")
    with FaultServer() as up:
        _upstream(up, torch, dep)
        env = hermetic_env(PIP_INDEX_URL=f"{up.url}/simple")  # the dependency index, from pip's configuration
        proc, banner = _start_cli("--root", root, "--port", 0, "--quiet", "--pull-through", "--upstream",
                                  f"{up.url}/whl", env=env)
        try:
            assert banner[1] == f"  pull-through: misses fetched from {up.url}/whl", banner
            port = int(re.search(r":(\d+)/", banner[0]).group(1))
            assert get(_At(port), "/whl/cpu/filelock/")[0].status == 200  # from the pip index
            resp, data = get(_At(port), f"/packages/filelock/{dep.filename}")
            assert resp.status == 200
            assert data == dep.data
        finally:
            proc.terminate()
            proc.wait(10)
    proc, banner = _start_cli("--root", root, "--port", 0, "--quiet", "--pull-through", "--offline", env=env)
    try:
        assert banner[1] == "  pull-through: offline, serving only what the mirror holds"
        port = int(re.search(r":(\d+)/", banner[0]).group(1))
        assert get(_At(port), f"/packages/filelock/{dep.filename}")[1] == dep.data
        assert get(_At(port), "/whl/cpu/filelock/")[0].status == 200
        assert get(_At(port), "/whl/cpu/numpy/")[0].status == 404
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([TD, "serve", "--root", root, "--offline"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2
    assert "--pull-through" in bad.stderr


def _conda_channel(up: FaultServer, pkg: bytes, lie: bool = False) -> str:
    fn = "tinypkg-1.0-h0_0.conda"
    sha = "0" * 64 if lie else hashlib.sha256(pkg).hexdigest()
    doc = {"info": {"subdir": "linux-64", "base_url": f"{up.url}/elsewhere"}, "packages": {},
           "packages.conda": {fn: {"name": "tinypkg", "version": "1.0", "build": "h0_0", "build_number": 0,
                                   "depends": [], "sha256": sha, "size": len(pkg)}}}
    up.add("/chan/linux-64/repodata.json", json.dumps(doc).encode())
    up.add(f"/chan/linux-64/{fn}", pkg)
    return fn


def test_conda_repodata_refreshed_per_ttl_and_packages_fetched_once(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    pkg = os.urandom(50_000)
    with FaultServer() as up:
        fn = _conda_channel(up, pkg)
        sources = Sources(upstreams=(), indexes=(), policy=default_policy([up.url]),
                          conda=(("chan", (f"{up.url}/chan",)),))
        with pull_server(root, sources, Settings(page_ttl=3600)) as (httpd, _cache):
            resp, body = get(httpd, "/conda/chan/linux-64/repodata.json")
            assert resp.status == 200
            doc = json.loads(body)
            assert list(doc["packages.conda"]) == [fn]
            assert "base_url" not in doc["info"]  # clients fetch packages from this mirror
            assert get(httpd, "/conda/chan/linux-64/repodata.json")[0].status == 200
            assert up.hits["/chan/linux-64/repodata.json"] == 1  # within the TTL: not asked again
            for _ in range(3):
                resp, data = get(httpd, f"/conda/chan/linux-64/{fn}")
                assert resp.status == 200
                assert data == pkg
            assert up.hits[f"/chan/linux-64/{fn}"] == 1
            assert get(httpd, "/conda/other/linux-64/repodata.json")[0].status == 404
    entry = mf.load(root).by_path()[f"conda/chan/linux-64/{fn}"]
    assert entry.kind == "conda"
    assert entry.sha256 == hashlib.sha256(pkg).hexdigest()


def test_conda_package_with_a_lying_hash_is_not_served(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        fn = _conda_channel(up, os.urandom(10_000), lie=True)
        sources = Sources(upstreams=(), indexes=(), policy=default_policy([up.url]),
                          conda=(("chan", (f"{up.url}/chan",)),))
        with pull_server(root, sources) as (httpd, _cache):
            assert get(httpd, "/conda/chan/linux-64/repodata.json")[0].status == 200
            assert get(httpd, f"/conda/chan/linux-64/{fn}", version="HTTP/1.0")[0].status == 502
            assert get(httpd, f"/conda/chan/linux-64/{fn}")[0].status == 502
    assert not (root / "conda/chan/linux-64" / fn).exists()


@given(st.binary(max_size=2000))
def test_miss_log_reader_never_raises(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("log")
    (root / ".torchdepot").mkdir()
    (root / ".torchdepot" / "misses.jsonl").write_bytes(data)
    for m in read_misses(root):
        assert m.kind in ("page", "file")


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt") / "mirror"
    make_mirror(root)
    (root.parent / "secret.txt").write_text("secret")
    with pull_server(root, Sources(upstreams=(), indexes=(), policy=default_policy()),
                     Settings(offline=True)) as (httpd, _cache):
        yield httpd


_PATH_PART = st.sampled_from(["whl", "cpu", "torch", "packages", "conda", "..", ".", "%2e%2e", ".torchdepot",
                              "pullthrough", "index.json", "misses.jsonl", "secret.txt", "%2F", "a" * 300, ""])


@given(st.lists(_PATH_PART | st.text(min_size=1, max_size=12), max_size=6), st.booleans())
def test_any_path_gets_a_status_and_never_leaves_the_root(offline_server, parts, slash):
    path = "/" + "/".join(urllib.parse.quote(p, safe="%") for p in parts) + ("/" if slash else "")
    resp, body = get(offline_server, path)
    assert resp.status in (200, 301, 404, 414), (path, resp.status)
    assert b"secret" not in body
    if "pullthrough" in path or "misses" in path:
        assert resp.status != 200


@pytest.mark.slow
def test_a_waiting_client_is_streamed_the_bytes_as_they_arrive(tmp_path):
    torch, dep = _wheels(payload=600_000)
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        _upstream(up, torch, dep)
        up.always(f"/whl/cpu/{torch.filename}", Fault("drip", rate=300_000.0))  # ~2 s for the file
        with pull_server(root, _sources(up.url)) as (httpd, _cache):
            get(httpd, "/whl/cpu/torch/")
            conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=30)
            started = time.monotonic()
            conn.request("GET", "/packages/torch/" + torch.filename.replace("+", "%2B"))
            resp = conn.getresponse()
            first = resp.read(1000)
            first_at = time.monotonic() - started
            rest = resp.read()
            done_at = time.monotonic() - started
            conn.close()
    assert resp.status == 200
    assert first + rest == torch.data
    assert first_at < 1.0 < done_at, (first_at, done_at)  # bytes flowed long before the download ended


def test_conda_forge_shaped_channel_through_the_native_reader(tmp_path):
    """A conda-forge-shaped channel (real names, .conda and .tar.bz2, repodata.json and .zst):
    the served repodata is upstream's plus the mirror's own record upstream lacks, read by
    py-rattler; a package is fetched once on first request and kept."""
    import rattler

    channel = build_forge_channel(tmp_path / "up" / "conda-forge", shards=False)
    root = tmp_path / "mirror"
    own_pkg = os.urandom(5_000)
    own_fn = "labtool-1.0-h0_0.conda"
    own_dir = root / "conda" / "conda-forge" / "linux-64"
    own_dir.mkdir(parents=True)
    (own_dir / own_fn).write_bytes(own_pkg)
    (own_dir / "repodata.json").write_text(json.dumps({
        "info": {"subdir": "linux-64"}, "packages": {},
        "packages.conda": {own_fn: {"name": "labtool", "version": "1.0", "build": "h0_0", "build_number": 0,
                                    "depends": [], "subdir": "linux-64", "size": len(own_pkg),
                                    "sha256": hashlib.sha256(own_pkg).hexdigest()}}}))
    upstream_records = json.loads((channel / "linux-64" / "repodata.json").read_bytes())
    with FaultServer() as up:
        for f in channel.rglob("*"):
            if f.is_file():
                up.add(f"/conda-forge/{f.relative_to(channel).as_posix()}", f.read_bytes())
        sources = Sources(upstreams=(), indexes=(), policy=default_policy([up.url]),
                          conda=(("conda-forge", (f"{up.url}/conda-forge",)),))
        with pull_server(root, sources, Settings(page_ttl=3600)) as (httpd, _cache):
            resp, body = get(httpd, "/conda/conda-forge/linux-64/repodata.json")
            assert resp.status == 200
            get(httpd, "/conda/conda-forge/linux-64/repodata.json")
            assert up.hits["/conda-forge/linux-64/repodata.json.zst"] == 1  # the .zst, once per TTL
            served = tmp_path / "served.json"
            served.write_bytes(body)
            sparse = rattler.SparseRepoData(rattler.Channel(f"http://{httpd.server_address[0]}/c"), "linux-64",
                                            str(served))
            names = set(sparse.package_names())
            assert {"_libgcc_mutex", "_openmp_mutex", "pytorch", "python_abi", "labtool"} <= names
            doc = json.loads(body)
            assert "base_url" not in doc["info"]
            assert set(doc["packages"]) == set(upstream_records["packages"])  # the .tar.bz2 ones
            assert set(doc["packages.conda"]) == {*upstream_records["packages.conda"], own_fn}
            cpu = next(p for p in FORGE if p.name == "pytorch" and p.build.startswith("cpu"))
            mutex = next(p for p in FORGE if p.name == "_libgcc_mutex")
            for p in (cpu, mutex):
                want = (channel / p.subdir / p.filename).read_bytes()
                for _ in range(3):
                    resp, data = get(httpd, f"/conda/conda-forge/{p.subdir}/{p.filename}")
                    assert resp.status == 200
                    assert data == want
                assert up.hits[f"/conda-forge/{p.subdir}/{p.filename}"] == 1
            assert get(httpd, "/conda/conda-forge/linux-64/nothere-1.0-h0_0.conda")[0].status == 404
    held = mf.load(root).by_path()
    assert held[f"conda/conda-forge/linux-64/{cpu.filename}"].kind == "conda"


def _splice(tmp_path: Path, upstream: bytes, extra: dict) -> dict:
    src, dest = tmp_path / "up.json", tmp_path / "out.json"
    src.write_bytes(upstream)
    splice_repodata(src, dest, "linux-64", extra, "up.json")
    return json.loads(dest.read_bytes())


def test_splice_drops_base_url_and_handles_empty_and_missing_objects(tmp_path):
    rec = {"name": "a", "version": "1", "build": "0"}
    doc = _splice(tmp_path, b' {"packages": {}, "info": {"subdir": "linux-64", "base_url": "http://x/"}}',
                  {"a-1-0.conda": rec, "a-1-0.tar.bz2": rec})
    assert doc == {"info": {"subdir": "linux-64"}, "packages": {"a-1-0.tar.bz2": rec},
                   "packages.conda": {"a-1-0.conda": rec}}
    assert _splice(tmp_path, b"{}", {}) == {"info": {"subdir": "linux-64"}}
    with pytest.raises(RepodataError):
        _splice(tmp_path, b'{"info": {"packages": {}}}', {"a-1-0.tar.bz2": rec})
    with pytest.raises(RepodataError, match="nested deeper"):  # a client's parser would recurse on it
        _splice(tmp_path, b'{"packages": {"a-1-0.conda": ' + b"[" * 1000 + b"]" * 1000 + b"}}", {})
    with pytest.raises(RepodataError):  # a base_url somewhere else would still send clients away
        _splice(tmp_path, b'{"packages": {"x": {"base_url": "http://x/"}}}', {})
    assert not (tmp_path / "out.json.part").exists()


# a "base_url" key outside ``info`` is refused (its own test above), so the keys here are never it
_KEY = st.text(max_size=8).filter(lambda k: k != "base_url")
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=3),
                     max_leaves=12)
_RECORDS = st.dictionaries(st.text(max_size=8).map(lambda s: s + ".conda"), st.dictionaries(st.text(max_size=4), _JSON,
                                                                                               max_size=2), max_size=3)


@given(_RECORDS, _RECORDS, st.dictionaries(st.sampled_from(["removed", "repodata_version", "x"]), _JSON, max_size=2),
       st.booleans())
def test_splice_adds_exactly_the_extra_records(tmp_path_factory, upstream, extra, other, indent):
    tmp = tmp_path_factory.mktemp("splice")
    extra = {k: v for k, v in extra.items() if k not in upstream}
    data = json.dumps({**other, "packages.conda": upstream, "info": {"subdir": "linux-64"}},
                      indent=1 if indent else None).encode()
    doc = _splice(tmp, data, extra)
    assert doc["packages.conda"] == {**upstream, **extra}
    assert {k: v for k, v in doc.items() if k in other} == other


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_TRICKY = st.text(alphabet='[]{}"\\ab\n', max_size=6)
_NESTED = st.recursive(st.none() | st.integers() | _TRICKY,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
                       max_leaves=30)


@given(_NESTED, st.integers(min_value=1, max_value=8))
def test_depth_check_agrees_with_a_parser(tmp_path_factory, doc, limit):
    """Brackets, quotes and backslashes inside strings never count; the depth is the parser's."""
    path = tmp_path_factory.mktemp("depth") / "r.json"
    path.write_bytes(json.dumps(doc).encode())
    if _depth(doc) <= limit:
        check_depth(path, "r.json", limit)
    else:
        with pytest.raises(RepodataError, match="nested deeper"):
            check_depth(path, "r.json", limit)


def test_conda_hostile_repodata_is_refused_and_upstream_not_marked_down(tmp_path):
    """A nested (or inflating) repodata body is refused with a 404; it is not an upstream that
    is down, so the channel's other subdir is still served at once."""
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        up.add("/chan/linux-64/repodata.json", b'{"info": {}, "packages.conda": {"a-1-0.conda": '
               + b"[" * 100_000 + b"]" * 100_000 + b"}}")
        up.add("/chan/noarch/repodata.json", json.dumps({"info": {"subdir": "noarch"}, "packages": {}}).encode())
        sources = Sources(upstreams=(), indexes=(), policy=default_policy([up.url]),
                          conda=(("chan", (f"{up.url}/chan",)),))
        with pull_server(root, sources) as (httpd, _cache):
            assert get(httpd, "/conda/chan/linux-64/repodata.json")[0].status == 404
            assert get(httpd, "/conda/chan/noarch/repodata.json")[0].status == 200
    assert [m.outcome for m in read_misses(root)] == ["refused"]


def test_local_find_links_wheels_are_offered_hashed_from_disk(tmp_path, monkeypatch):
    """pip's find-links (a local folder, hashless as pip reads it) is a source of misses too:
    its wheel is offered with the sha256 of the file on disk, fetched, checked and published."""
    from torchdepot.commands.serve import pull_sources

    torch, dep = _wheels()
    links = tmp_path / "wheels"
    links.mkdir()
    (links / dep.filename).write_bytes(dep.data)
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {links}\nno-index = true\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    root = tmp_path / "mirror"
    root.mkdir()
    with FaultServer() as up:
        pep503([torch], pages=["/whl/cpu"], files="/whl/cpu").serve(up)
        spec = tmp_path / "mirror.yaml"
        spec.write_text(f"upstreams: [{up.url}/whl]\n")
        sources = pull_sources(spec, ())
        assert sources.find_links == (links.as_uri(),)
        with pull_server(root, sources) as (httpd, _cache):
            resp, page = get(httpd, "/whl/cpu/filelock/")
            assert resp.status == 200
            assert _hrefs(page) == [f"../../../packages/filelock/{dep.filename}#sha256={dep.sha256}"]
            resp, data = get(httpd, f"/packages/filelock/{dep.filename}")
            assert (resp.status, data) == (200, dep.data)
    assert mf.load(root).by_path()[f"packages/filelock/{dep.filename}"].sha256 == dep.sha256
