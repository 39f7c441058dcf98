"""Mirror runs against loopback upstreams with small real wheels (fast; the real torch is in test_e2e_pip)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.mirror_upstream import build_upstreams, dead_url, make_wheel, sha256
from tests.venvs import hermetic_env
from torchdepot.errors import LockedError, TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.sources.pep503 import parse_html
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import MirrorLock
from torchdepot.sync.pip import sync

ROOT = Path(__file__).resolve().parent.parent
TAG = "cp311-cp311-manylinux_2_28_x86_64"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    torch = [
        make_wheel(d, "torch", "2.13.0+cpu", TAG, ("filelock", "typing-extensions>=4"), ">=3.10", payload=os.urandom(300_000)),
        make_wheel(d, "torch", "2.12.0+cpu", TAG, ("filelock",), ">=3.10"),
    ]
    deps = [
        make_wheel(d, "filelock", "3.20.0", requires_python=">=3.9"),
        make_wheel(d, "typing-extensions", "4.15.0", requires_python=">=3.9"),
        make_wheel(d, "numpy", "2.3.0", TAG, requires_python=">=3.11"),
    ]
    # The default index's Linux torch has no local label: a CUDA build, never "cpu".
    cuda_like = make_wheel(d / "pypi", "torch", "2.14.0", TAG, ("filelock",))
    return torch, deps, cuda_like


@pytest.fixture
def upstreams(tmp_path, wheels, request):
    torch, deps, cuda_like = wheels
    wrong = getattr(request, "param", frozenset())
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    with Server(b) as sb:
        build_upstreams(a, b, sb.url, torch, deps, wrong_sha=wrong)
        (b / "simple" / "torch").mkdir(parents=True, exist_ok=True)
        (b / "files").mkdir(exist_ok=True)
        (b / "files" / cuda_like.name).write_bytes(cuda_like.read_bytes())
        (b / "simple" / "torch" / "index.html").write_text(
            f'<a href="../../files/{cuda_like.name}#sha256={sha256(cuda_like)}">{cuda_like.name}</a>\n')
        with Server(a) as sa:
            yield sa.url + "/whl", sb.url + "/simple", tmp_path


def make_spec(upstreams: list[str], out: Path, **extra) -> object:
    data = {"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
            "upstreams": upstreams, "out": str(out), "jobs": 3, **extra}
    return parse_spec(data, "test spec")


def run(spec, index_url: str, **kw):
    msgs: list[str] = []
    client = make_session(HttpConfig(retries=1, backoff=0.01))
    res = sync(spec, client=client, progress=False, pip_sources=PipSources(index_url=index_url), echo=msgs.append, **kw)
    return res, msgs


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "whl").rglob("*")) if p.is_file()}


def without_last_sync(root: Path, text: bytes | None = None) -> dict:
    """manifest.json without ``last_sync`` (the one key a no-op re-sync changes)."""
    doc = json.loads(text if text is not None else (root / "manifest.json").read_bytes())
    assert doc.pop("last_sync")["verify"] == "ok"
    return doc


def test_mirror_failover_publish_and_idempotent_rerun(upstreams):
    a, b, tmp = upstreams
    out = tmp / "out"
    dead = dead_url()
    spec = make_spec([dead, a], out)
    res, msgs = run(spec, b)
    # the dead upstream is reported in one line and the next one is used
    assert any(m.startswith(f"upstream {dead} unreachable: ") and m.endswith("; trying next") for m in msgs), msgs
    assert res.report.fetched_bytes > 300_000
    assert not res.report.failed
    names = {f.name: f.version for f in res.plans[0].files}
    assert names == {"torch": "2.13.0+cpu", "filelock": "3.20.0", "typing-extensions": "4.15.0", "numpy": "2.3.0"}
    # index laid out like download.pytorch.org, relative links with our hashes and PEP 658 metadata
    page = out / "whl" / "cpu" / "torch" / "index.html"
    parsed = parse_html(page.read_bytes(), page.as_uri())
    (link,) = parsed.links
    stored = out / "packages" / "torch" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert link.url == stored.as_uri().replace("+", "%2B")
    assert link.sha256 == sha256(stored)
    assert link.requires_python == ">=3.10"
    meta = Path(str(stored) + ".metadata")
    assert link.metadata_sha256 == sha256(meta)
    assert b"Name: torch" in meta.read_bytes()
    assert 'href="../../../packages/' in page.read_text()
    # dependencies appear in the variant index that needs them, and in the aggregate
    for project in ("filelock", "typing-extensions", "numpy"):
        assert (out / "whl" / "cpu" / project / "index.html").is_file()
        assert (out / "whl" / project / "index.html").is_file()
    assert "torch/" in (out / "whl" / "cpu" / "index.html").read_text()
    assert os.readlink(out / "whl").startswith(".publish/")
    # manifest last: every file, with what we hashed and where it came from
    man = mf.load(out)
    files = man.by_path()
    assert files[str(stored.relative_to(out))].sha256 == sha256(stored)
    assert files[str(stored.relative_to(out))].url.startswith(a + "/cpu/")
    assert files[str(stored.relative_to(out)) + ".metadata"].kind == "metadata"
    (t,) = man.targets
    assert t.id == "cpu-py311-linux-x86_64"
    assert t.index == "whl/cpu"
    assert len(t.packages) == 4
    assert man.spec["upstreams"] == [dead, a]
    assert "torch==2.13.0+cpu" in res.plans[0].requirements
    lock = (out / "targets" / t.id / "pylock.toml").read_text()
    assert 'path = "../../packages/torch/torch-2.13.0+cpu' in lock

    before = tree_bytes(out)
    manifest_before = (out / "manifest.json").read_bytes()
    gen = os.readlink(out / "whl")
    res2, _ = run(spec, b)
    assert res2.report.fetched_bytes == 0
    assert len(res2.report.present) == 4
    assert not res2.index_changed
    assert os.readlink(out / "whl") == gen
    assert tree_bytes(out) == before
    assert without_last_sync(out) == without_last_sync(out, manifest_before)


def test_dry_run_writes_nothing(upstreams):
    a, b, tmp = upstreams
    out = tmp / "out-dry"
    res, msgs = run(make_spec([a], out), b, dry_run=True)
    assert not out.exists()
    assert any(m.startswith("cpu-py311-linux-x86_64: 4 packages, 4 files, ") for m in msgs), msgs
    assert msgs[-1].startswith("plan: 1 targets, 4 unique files")


def test_resume_half_written_file(upstreams, wheels):
    a, b, tmp = upstreams
    out = tmp / "out-resume"
    torch = wheels[0][0]
    key = f"packages/torch/{torch.name}"
    part = out / ".torchdepot" / "partial" / (key.replace("/", "__") + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(torch.read_bytes()[:100_000])
    res, _ = run(make_spec([a], out), b)
    r = next(r for r in res.report.results if r.key == key)
    assert r.resumed
    assert r.fetched_bytes == torch.stat().st_size - 100_000
    assert sha256(out / key) == sha256(torch)


@pytest.mark.parametrize("upstreams", [frozenset({"filelock"})], indirect=True)
def test_hash_mismatch_policies(upstreams):
    a, b, tmp = upstreams
    out = tmp / "out-mm"
    with pytest.raises(TorchdepotError, match=r"failed \(index not updated\).*filelock.*sha256 mismatch"):
        run(make_spec([a], out), b)
    assert not (out / "whl").exists()
    assert not (out / "manifest.json").exists()
    assert not list((out / "packages").glob("filelock/*.whl"))
    res, msgs = run(make_spec([a], out, on_hash_mismatch="warn"), b)
    assert any("filelock" in m and "upstream sha256 ffff" in m for m in msgs), msgs
    entry = next(f for f in mf.load(out).files if f.project == "filelock" and f.kind == "wheel")
    assert entry.hash_mismatch
    assert entry.upstream_sha256 == "f" * 64
    assert entry.sha256 == sha256(out / entry.path)
    assert f"#sha256={entry.sha256}" in (out / "whl" / "cpu" / "filelock" / "index.html").read_text()


def test_no_upstream_reachable_continues_from_pip_config(upstreams, wheels, tmp_path):
    _a, b, tmp = upstreams
    out = tmp / "out-pip"
    links = tmp_path / "links"
    links.mkdir()
    torch = wheels[0][0]
    (links / torch.name).write_bytes(torch.read_bytes())
    msgs: list[str] = []
    spec = make_spec([dead_url()], out)
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=b, find_links=(links.as_uri(),)))
    assert any(m.startswith("no PyTorch upstream reachable for cpu; continuing from the pip configuration alone") for m in msgs)
    versions = {f.name: f.version for f in res.plans[0].files}
    # the unlabelled (CUDA) torch 2.14.0 on the pip index is never chosen for a cpu target
    assert versions["torch"] == "2.13.0+cpu"
    assert (out / "whl" / "cpu" / "torch" / "index.html").is_file()


def test_second_writer_is_refused(upstreams):
    a, b, tmp = upstreams
    out = tmp / "out-lock"
    out.mkdir()
    with MirrorLock(out), pytest.raises(LockedError):
        run(make_spec([a], out), b)


def test_cli_subprocess_and_errors(upstreams, tmp_path):
    a, b, tmp = upstreams
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"accelerators: [cpu]\npythons: ['3.11']\nplatforms: [linux-x86_64]\nupstreams: [{a}]\n")
    env = hermetic_env(PIP_INDEX_URL=b)
    out = tmp_path / "cli-out"
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "mirror", "--spec", str(spec_file), "--out", str(out),
                           "--jobs", "2"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "this run: 4 packages fetched: 4 downloaded, 0 already present (skipped), 0 failed" in proc.stdout
    # the files it says the mirror holds are the files `status` counts (issue 22 item 19)
    held = int(re.search(r"targets, (\d+) files \(", proc.stdout).group(1))
    status = subprocess.run([sys.executable, "-m", "torchdepot", "status", str(out), "--json"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert held == json.loads(status.stdout)["files"], (proc.stdout, status.stdout)
    assert json.loads((out / "manifest.json").read_text())["targets"][0]["id"] == "cpu-py311-linux-x86_64"
    spec_file.write_text("accelerators: [cpu, cu11]\n")
    bad = subprocess.run([sys.executable, "-m", "torchdepot", "mirror", "--spec", str(spec_file)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (f"torchdepot: error: {spec_file}: accelerators[1]: 'cu11' is not an accelerator "
                                  "(cpu, cuXYZ, rocmX.Y, xpu)")


def test_tools_fetch_adds_a_target(upstreams, tmp_path):
    a, b, tmp = upstreams
    out = tmp_path / "tf-out"
    env = hermetic_env(PIP_INDEX_URL=b)
    cmd = [ROOT / "tools" / "fetch", "--cpu", "--py", "3.11", "--platform", "linux-x86_64", "--torch", "2.12.0",
           "--out", out, "--upstream", a]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    man = mf.load(out)
    assert [(r.id, r.origin, r.torch) for r in man.recorded] == [("cpu-py311-linux-x86_64", "fetch", "==2.12.0")]
    torch = {t.id: {p.name: p.version for p in t.packages}["torch"] for t in man.targets}
    assert torch["cpu-py311-linux-x86_64"] == "2.12.0+cpu"


def test_allow_hosts_with_port_reaches_the_host_policy(wheels, tmp_path):
    """Dependency links on the PyTorch pages point at a file host (C) no configured source
    names: refused (counted) unless ``allow_hosts`` names it as ``host:port``."""
    torch, deps, _cuda_like = wheels
    a, c, empty = tmp_path / "A", tmp_path / "C", tmp_path / "E"
    for d in (a, c, empty / "simple"):
        d.mkdir(parents=True)
    (empty / "simple" / "index.html").write_text("<html><body></body></html>\n")
    with Server(c) as sc, Server(a) as sa, Server(empty) as se:
        build_upstreams(a, c, sc.url, torch, deps)
        port = sc.url.rsplit(":", 1)[1]
        with pytest.raises(TorchdepotError, match="numpy was not found"):
            run(make_spec([sa.url + "/whl"], tmp_path / "refused"), se.url + "/simple")
        res, msgs = run(make_spec([sa.url + "/whl"], tmp_path / "allowed", allow_hosts=[f"127.0.0.1:{port}"]),
                        se.url + "/simple")
        assert {f.name for f in res.plans[0].files} == {"torch", "filelock", "typing-extensions", "numpy"}
        assert all(f.url.startswith(sc.url) for f in res.manifest.files if f.kind == "wheel" and f.project != "torch")
        # another port on the same host stays refused
        other = make_spec([sa.url + "/whl"], tmp_path / "other", allow_hosts=[f"127.0.0.1:{int(port) % 65535 + 1}"])
        with pytest.raises(TorchdepotError, match="numpy was not found"):
            run(other, se.url + "/simple")


def test_a_no_op_resync_skips_the_resolver_and_a_changed_page_does_not(upstreams, monkeypatch):
    """Issue 15: re-resolution is skipped when its inputs are unchanged (the mirror keeps each
    target's answer and the digests of the view pages it depended on); any page change
    (here upstream drops torch 2.12.0 from its page) runs the resolver again."""
    from torchdepot.sync import resolution

    a, b, tmp = upstreams
    out = tmp / "out"
    spec = make_spec([a], out)
    calls: list[str] = []
    real = resolution.resolve
    monkeypatch.setattr(resolution, "resolve", lambda tid, *args, **kw: calls.append(tid) or real(tid, *args, **kw))
    res1, _ = run(spec, b)
    manifest1 = without_last_sync(out)
    assert calls == ["cpu-py311-linux-x86_64"]
    res2, _ = run(spec, b)
    assert calls == ["cpu-py311-linux-x86_64"], "a no-op re-sync ran the resolver"
    assert without_last_sync(out) == manifest1
    assert res2.report.fetched_bytes == 0
    assert {f.filename for f in res2.plans[0].files} == {f.filename for f in res1.plans[0].files}
    page = tmp / "A" / "whl" / "cpu" / "torch" / "index.html"
    page.write_text("".join(ln for ln in page.read_text().splitlines(keepends=True) if "2.12.0" not in ln))
    run(spec, b)
    assert calls == ["cpu-py311-linux-x86_64"] * 2, "a changed upstream page must be resolved again"
    (out / ".torchdepot" / "resolutions.json").write_text("{not json")
    run(spec, b)  # an unreadable cache is only a cache: resolve again
    assert len(calls) == 3
