"""The mirror's lifecycle through the real CLI (issue 14 part 1): targets accumulate across
``tools/fetch`` and ``torchdepot mirror``, ``--prune`` lists what goes with sizes, an upstream
upgrade keeps the older torch (or ``keep: N`` drops it, listed), every sync ends verify-clean,
and ``torchdepot status`` tells what the mirror holds. Loopback upstreams only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.httpserver import RangeHandler, Server
from tests.mirror_upstream import build_upstreams, make_wheel
from tests.venvs import hermetic_env
from torchdepot.errors import TorchdepotError, UnsafePathError
from torchdepot.model.sizes import format_size
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.sync import lifecycle
from torchdepot.sync.pip import sync

ROOT = Path(__file__).resolve().parent.parent
TAG = "cp311-cp311-manylinux_2_28_x86_64"
CPU = "cpu-py311-linux-x86_64"
CU118 = "cu118-py311-linux-x86_64"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    return {
        "cpu": [make_wheel(d, "torch", "2.13.0+cpu", TAG, ("filelock",), ">=3.10", payload=os.urandom(150_000))],
        "cpu-new": [make_wheel(d, "torch", "2.14.0+cpu", TAG, ("filelock",), ">=3.10", payload=os.urandom(160_000))],
        "cu118": [make_wheel(d, "torch", "2.1.0+cu118", TAG, ("filelock",), ">=3.10", payload=os.urandom(400_000))],
        "deps": [make_wheel(d, "filelock", "3.20.0", requires_python=">=3.9"),
                 make_wheel(d, "numpy", "2.3.0", TAG, requires_python=">=3.11")],
        "deps-new": [make_wheel(d, "filelock", "3.21.0", requires_python=">=3.9")],
    }


@pytest.fixture
def site(tmp_path, wheels):
    """(A: PyTorch-like upstream with cpu and cu118, B: dependency index, tmp, relayout(acc, torch wheels))."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    with Server(b) as sb, Server(a) as sa:
        def layout(acc: str, torch: list[Path], deps: list[Path] = wheels["deps"]) -> None:
            build_upstreams(a, b, sb.url, torch, deps, acc=acc)

        layout("cpu", wheels["cpu"])
        layout("cu118", wheels["cu118"])
        yield sa.url + "/whl", sb.url + "/simple", tmp_path, layout


def cli(tmp: Path, b: str, *args: str) -> subprocess.CompletedProcess:
    env = hermetic_env(PIP_INDEX_URL=b, UV_CACHE_DIR=str(tmp / "uv-cache"), TORCHDEPOT_NO_PROGRESS="1")
    cmd = [str(ROOT / "tools" / "fetch"), *args[1:]] if args[0] == "tools/fetch" else \
        [sys.executable, "-m", "torchdepot", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
    print(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")  # shown with -s: what each command printed
    return proc


def cpu_spec(tmp: Path, a: str, **extra) -> Path:
    path = tmp / "cpu.yaml"
    lines = ["accelerators: [cpu]", "pythons: ['3.11']", "platforms: [linux-x86_64]", f"upstreams: [{a}]",
             "extra_packages: [numpy]", *(f"{k}: {v}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_clean(tmp: Path, b: str, m: Path) -> None:
    proc = cli(tmp, b, "verify-mirror", str(m))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": ok: " in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "orphan" not in proc.stdout + proc.stderr


def torch_of(m: Path) -> dict[str, str]:
    return {t.id: next(p.version for p in t.packages if p.name == "torch") for t in mf.load(m).targets}


def test_fetch_then_cpu_spec_keeps_both_and_prune_lists_sizes(site):
    a, b, tmp, _layout = site
    m = tmp / "M"
    # tools/fetch into a NEW directory mirrors only the target it was asked for
    proc = cli(tmp, b, "tools/fetch", "--cuda", "cu118", "--py", "3.11", "--platform", "linux-x86_64",
               "--out", str(m), "--upstream", a)
    assert proc.returncode == 0, proc.stderr
    assert torch_of(m) == {CU118: "2.1.0+cu118"}
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"ready: torch 2.1.0+cu118 for {CU118}; ")
    assert f"next: torchdepot serve --root {m}" in last
    verify_clean(tmp, b, m)

    # the CPU spec into the same mirror (what `make mirror` runs) keeps cu118
    spec = cpu_spec(tmp, a)
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m))
    assert proc.returncode == 0, proc.stderr
    assert torch_of(m) == {CU118: "2.1.0+cu118", CPU: "2.13.0+cpu"}
    man = mf.load(m)
    assert {(r.id, r.origin) for r in man.recorded} == {(CU118, "fetch"), (CPU, "spec")}
    assert man.last_sync is not None
    assert man.last_sync.verify == "ok"
    assert (m / "whl" / "cu118" / "torch" / "index.html").is_file()
    assert "removing" not in proc.stdout + proc.stderr
    verify_clean(tmp, b, m)

    # status: targets, torch versions, sizes, last sync, verify state
    st = cli(tmp, b, "status", str(m))
    assert st.returncode == 0, st.stderr
    assert re.search(rf"^  {CU118} +fetch +torch 2\.1\.0\+cu118 +\d+ files +[\d.]+ [kM]B$", st.stdout, re.M), st.stdout
    assert re.search(rf"^  {CPU} +spec +torch 2\.13\.0\+cpu ", st.stdout, re.M), st.stdout
    assert "verify: ok" in st.stdout
    doc = json.loads(cli(tmp, b, "status", str(m), "--json").stdout)
    assert {t["id"]: t["torch"] for t in doc["targets"]} == {CU118: ["2.1.0+cu118"], CPU: ["2.13.0+cpu"]}
    assert doc["last_sync"]["verify"] == "ok"
    assert doc["size"] == sum(f.size for f in man.files)

    # upstream drops cu118 (or is unreachable for it): the CPU sync still succeeds, cu118 stays as published
    shutil.rmtree(tmp / "A" / "whl" / "cu118")
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m))
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {CU118}: kept as published (torch 2.1.0+cu118); not updated: {CU118}: no torch wheel" in proc.stderr
    assert torch_of(m) == {CU118: "2.1.0+cu118", CPU: "2.13.0+cpu"}
    assert "removing" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(
        f"ready: torch 2.13.0+cpu for {CPU}; torch 2.1.0+cu118 for {CU118}; ")
    assert "torch-2.1.0" in (m / "whl" / "cu118" / "torch" / "index.html").read_text()
    verify_clean(tmp, b, m)

    # --prune: the recorded target the spec does not ask for goes, listed with its size
    only_cu = [f for f in man.files if f.path.startswith("packages/torch/torch-2.1.0+cu118")]
    size = sum(f.size for f in only_cu)
    dry = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--prune", "--dry-run")
    line = f"--prune: {CU118}: removing {len(only_cu)} files, {format_size(size)}"
    assert dry.returncode == 0, dry.stderr
    assert f"would remove ({line})" in dry.stderr, dry.stderr
    assert torch_of(m) == {CU118: "2.1.0+cu118", CPU: "2.13.0+cpu"}  # a dry run removes nothing
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--prune")
    assert proc.returncode == 0, proc.stderr
    assert f"--prune: {CU118}: removing {len(only_cu)} files, {format_size(size)}" in proc.stderr, proc.stderr
    assert torch_of(m) == {CPU: "2.13.0+cpu"}
    assert not any((m / f.path).exists() for f in only_cu)
    assert not (m / "targets" / CU118).exists()
    assert not (m / "whl" / "cu118").exists()
    assert (m / "packages" / "filelock").is_dir()  # shared with cpu: stays
    verify_clean(tmp, b, m)


def test_upgrade_keeps_old_torch_and_keep_n_drops_it(site, wheels):
    a, b, tmp, layout = site
    m = tmp / "M"
    spec = cpu_spec(tmp, a)
    assert cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m)).returncode == 0
    old = "packages/torch/" + wheels["cpu"][0].name
    # upstream publishes a newer torch: an ordinary upgrade
    layout("cpu", wheels["cpu"] + wheels["cpu-new"])
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["torch"] == {CPU: "2.14.0+cpu"}
    assert doc["verify"] == "ok"
    assert doc["removed"] == []
    assert doc["requests"]
    assert "links_refused" in doc
    man = mf.load(m)
    assert sorted(r.torch for r in man.releases) == ["2.13.0+cpu", "2.14.0+cpu"]
    page = (m / "whl" / "cpu" / "torch" / "index.html").read_text()
    assert "torch-2.13.0" in page
    assert "torch-2.14.0" in page
    assert (m / old).is_file()
    assert old in man.by_path()
    verify_clean(tmp, b, m)

    # keep: 1 -> the older torch goes at this sync, listed with its size
    spec = cpu_spec(tmp, a, keep=1)
    gone = [f for f in man.files if f.path.startswith(old)]
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m))
    assert proc.returncode == 0, proc.stderr
    expect = f"keep 1: {CPU} torch 2.13.0+cpu: removing {len(gone)} files, {format_size(sum(f.size for f in gone))}"
    assert expect in proc.stderr, proc.stderr
    assert not (m / old).exists()
    assert "torch-2.13.0" not in (m / "whl" / "cpu" / "torch" / "index.html").read_text()
    assert [r.torch for r in mf.load(m).releases] == ["2.14.0+cpu"]
    verify_clean(tmp, b, m)


def test_dry_run_lists_exactly_what_keep_n_then_removes(site, wheels):
    """``--dry-run`` and the real run share one removal plan: with ``keep: 1`` the dry run lists
    the older torch (file by file, in --json too) that the real run then removes, and removes nothing."""
    a, b, tmp, layout = site
    m = tmp / "M"
    assert cli(tmp, b, "mirror", "--spec", str(cpu_spec(tmp, a)), "--out", str(m)).returncode == 0
    old = "packages/torch/" + wheels["cpu"][0].name
    layout("cpu", wheels["cpu"] + wheels["cpu-new"])
    spec = cpu_spec(tmp, a, keep=1)
    gone = [f for f in mf.load(m).files if f.path.startswith(old)]
    line = f"keep 1: {CPU} torch 2.13.0+cpu: removing {len(gone)} files, {format_size(sum(f.size for f in gone))}"
    dry = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove ({line})" in dry.stderr, dry.stderr
    assert (m / old).is_file()  # a dry run removes nothing
    dry_json = json.loads(cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--dry-run", "--json").stdout)
    real = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--json")
    assert real.returncode == 0, real.stderr
    assert line in real.stderr
    assert dry_json["removed"] == json.loads(real.stdout)["removed"]
    assert dry_json["removed"][0]["files"] == sorted(f.path for f in gone)
    assert not (m / old).exists()
    # nothing left to remove: a dry run asked to prune says so in one line
    dry = cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m), "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [ln for ln in dry.stderr.splitlines() if "remov" in ln] == ["would remove nothing"], dry.stderr


def test_status_of_a_directory_that_is_no_mirror_is_one_line(tmp_path):
    proc = cli(tmp_path, "http://127.0.0.1:9/simple", "status", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.startswith("torchdepot: error: ")
    assert "no manifest" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_fetch_into_new_dir_when_upstream_has_no_cpu_build(tmp_path, wheels):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    with Server(b) as sb, Server(a) as sa:
        build_upstreams(a, b, sb.url, wheels["cu118"], wheels["deps"], acc="cu118")  # no whl/cpu at all
        m = tmp_path / "M"
        proc = cli(tmp_path, sb.url + "/simple", "tools/fetch", "--cuda", "11.8", "--py", "3.11",
                   "--platform", "linux-x86_64", "--out", str(m), "--upstream", sa.url + "/whl")
        assert proc.returncode == 0, proc.stderr
        assert torch_of(m) == {CU118: "2.1.0+cu118"}
        assert [r.origin for r in mf.load(m).recorded] == ["fetch"]
        verify_clean(tmp_path, sb.url + "/simple", m)


def test_mirror_from_locks_rebuilds_the_locked_files_after_upstream_moved_on(site, wheels):
    a, b, tmp, layout = site
    spec = cpu_spec(tmp, a)
    m1, m2, envs = tmp / "M1", tmp / "M2", tmp / "envs"
    assert cli(tmp, b, "mirror", "--spec", str(spec), "--out", str(m1)).returncode == 0
    assert cli(tmp, b, "lock", "--mirror", str(m1), "--out", str(envs)).returncode == 0
    # later: upstream has a newer torch and a newer filelock; a plain sync would take them
    layout("cpu", wheels["cpu"] + wheels["cpu-new"], wheels["deps"] + wheels["deps-new"])
    proc = cli(tmp, b, "mirror", "--spec", str(spec), "--from-locks", str(envs), "--out", str(m2))
    assert proc.returncode == 0, proc.stderr
    locked = {(p.name, p.version, p.path) for p in mf.load(m1).targets[0].packages}
    (t,) = mf.load(m2).targets
    assert {(p.name, p.version, p.path) for p in t.packages} == locked
    assert ("torch", "2.13.0+cpu") in {(n, v) for n, v, _ in locked}
    assert ("filelock", "3.20.0") in {(n, v) for n, v, _ in locked}
    sha1 = {f.path: f.sha256 for f in mf.load(m1).files}
    assert {f.path: f.sha256 for f in mf.load(m2).files} == sha1  # the very same bytes
    assert [r.origin for r in mf.load(m2).recorded] == ["locks"]
    verify_clean(tmp, b, m2)
    # a lock whose hash upstream does not have: one line naming the lock file, nothing fetched
    lock = envs / CPU / "pylock.toml"
    torch_sha = sha1[next(p for n, _v, p in locked if n == "torch")]
    lock.write_text(lock.read_text().replace(torch_sha, "0" * 64))
    bad = cli(tmp, b, "mirror", "--spec", str(spec), "--from-locks", str(envs), "--out", str(tmp / "M3"))
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        f"torchdepot: error: 1 locked wheel(s) not on any reachable upstream with the locked hash; first: {lock}: torch-2.13.0"), bad.stderr
    assert not (tmp / "M3" / "packages").exists()


class LoggingHandler(RangeHandler):
    log: list[tuple[float, str]] = []  # replaced per test

    def send_head(self):
        type(self).log.append((time.monotonic(), self.path))
        return super().send_head()


def test_pinned_torch_downloads_while_the_closure_resolves(tmp_path, wheels):
    """Issue 15 part 3: torch is known before its closure resolves, so its download starts
    first: the torch GET reaches upstream before the resolver asks for a dependency page."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    handler = type("Log", (LoggingHandler,), {"log": []})
    with Server(b) as sb, Server(a, handler=handler) as sa:
        build_upstreams(a, b, sb.url, wheels["cpu"], wheels["deps"])
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "upstreams": [sa.url + "/whl"], "out": str(tmp_path / "M"), "extra_packages": ["numpy"]})
        res = sync(spec, client=make_session(HttpConfig(retries=1, backoff=0.01)), progress=False,
                   pip_sources=PipSources(index_url=sb.url + "/simple"), echo=lambda _m: None)
    torch_get = [t for t, path in handler.log if path.endswith(".whl") and "/torch-" in path]
    numpy_page = [t for t, path in handler.log if path.startswith("/whl/cpu/numpy/")]
    assert len(torch_get) == 1, handler.log
    assert numpy_page, handler.log
    assert torch_get[0] < numpy_page[0], handler.log
    assert {r.key.split("/")[1] for r in res.report.results} == {"torch", "filelock", "numpy"}
    assert res.report.fetched_bytes > 150_000
    assert res.verify == "ok"


# -- the pure rules ---------------------------------------------------------------------------

def _rel(target: str, torch: str, *paths: str) -> mf.Release:
    return mf.Release(target=target, torch=torch, paths=tuple(paths))


def test_retain_keeps_current_and_newest():
    prev = (_rel("t", "2.11.0", "a"), _rel("t", "2.12.0", "b"), _rel("gone", "2.0", "z"))
    cur = (_rel("t", "2.12.0", "c"),)
    kept, dropped = lifecycle.retain(prev, cur, {"t"}, keep=None)
    assert sorted((r.torch, r.paths) for r in kept) == [("2.11.0", ("a",)), ("2.12.0", ("b", "c"))]
    assert [r.target for r in dropped] == ["gone"]
    # keep 1 while the current version is older than one kept: current wins the slot
    prev = (_rel("t", "2.13.0", "n"),)
    kept, dropped = lifecycle.retain(prev, (_rel("t", "2.12.0", "c"),), {"t"}, keep=1)
    assert [r.torch for r in kept] == ["2.12.0"]
    assert [r.torch for r in dropped] == ["2.13.0"]


def test_manifest_lifecycle_round_trip_and_old_manifests():
    m = mf.Manifest(recorded=[mf.RecordedTarget(id=CPU, accelerator="cpu", python="3.11", platform="linux-x86_64",
                                                origin="fetch", torch="==2.1")],
                    releases=[_rel(CPU, "2.1.0", "packages/torch/t.whl")],
                    last_sync=mf.SyncRecord(finished="2026-12-04T01:40:00Z", seconds=1.5, verify="ok"))
    assert mf.Manifest.from_json(m.to_json()) == m
    assert "recorded" not in mf.Manifest().to_json()  # manifests without a lifecycle stay as they were
    bad = json.loads(m.to_json())
    bad["recorded"][0]["origin"] = "elsewhere"
    with pytest.raises(TorchdepotError, match=r"recorded\[0\]: origin"):
        mf.Manifest.from_doc(bad)
    bad = json.loads(m.to_json())
    bad["releases"][0]["paths"] = ["../../etc/passwd"]
    with pytest.raises(UnsafePathError, match=r"'\.\./\.\./etc/passwd' escapes"):
        mf.Manifest.from_doc(bad)


def test_json_output_is_one_document_with_progress_events_on_stderr(site):
    """Issue 15: `mirror --json` prints one result document on stdout; the download progress
    comes as JSON lines on stderr (one per file at least), each with done/total bytes."""
    a, b, tmp, _layout = site
    m = tmp / "J"
    proc = cli(tmp, b, "mirror", "--spec", str(cpu_spec(tmp, a)), "--out", str(m), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["torch"] == {CPU: "2.13.0+cpu"}
    assert doc["verify"] == "ok"
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    files = [e for e in events if e["event"] == "file"]
    assert len(files) == 3, events
    assert all(e["status"] == "downloaded" for e in files), events
    last = files[-1]
    assert last["files_done"] == last["files_total"] == 3
    assert last["done"] == last["total"] > 150_000
