"""One transaction (issue 20 item 7): a sync whose conda side fails publishes nothing. The conda
solve and downloads run before the pip side publishes, so a first sync with a failing conda
solve leaves no ``whl/`` and no manifest, and a re-sync leaves the live mirror as it was
(``status`` and ``verify-mirror`` exit 0, the same tree). Then the per-target locks of such a
mirror: ``environment.yml``, ``@EXPLICIT`` with sha256 and a rattler/pixi ``pixi.lock``, installed
with py-rattler from the mirror alone and checked against the installed records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.kit.cli import td
from tests.kit.condaforge import build_forge_channel
from tests.mirror_upstream import build_upstreams, make_wheel
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.resolve.conda import SolveError
from torchdepot.spec.mirror import parse_spec
from torchdepot.sync.pip import sync

TAG = "cp311-cp311-manylinux_2_28_x86_64"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    return [make_wheel(d, "torch", "2.13.0+cpu", TAG, ("filelock",), ">=3.10", payload=os.urandom(20_000))], \
        [make_wheel(d, "filelock", "3.20.0", requires_python=">=3.9"),
         make_wheel(d, "numpy", "2.3.0", TAG, requires_python=">=3.11")]


@pytest.fixture
def site(tmp_path, wheels):
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    a.mkdir()
    b.mkdir()
    build_forge_channel(c / "conda-forge")
    with Server(b) as sb, Server(a) as sa, Server(c) as sc:
        build_upstreams(a, b, sb.url, *wheels)
        yield sa.url + "/whl", sb.url + "/simple", sc.url + "/conda-forge", tmp_path


def run(site, out: Path, conda_specs: list[str] | None):
    a, b, c, _ = site
    data = {"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"], "upstreams": [a],
            "out": str(out)}
    if conda_specs is not None:
        data["conda"] = {"channels": [{"name": "conda-forge", "mirrors": [c]}], "specs": conda_specs}
    return sync(parse_spec(data), client=make_session(HttpConfig(retries=0)), progress=False,
                pip_sources=PipSources(index_url=b), echo=lambda _m: None)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".torchdepot" not in p.parts}


def test_first_sync_with_a_failing_conda_solve_publishes_nothing(site):
    out = site[3] / "M"
    with pytest.raises(SolveError) as exc:
        run(site, out, ["no-such-package"])
    assert "\n" not in str(exc.value)
    assert not (out / "whl").exists()
    assert not (out / "manifest.json").exists()
    assert not (out / "index.html").exists()


def test_resync_with_a_failing_conda_solve_leaves_the_live_mirror_as_it_was(site):
    out = site[3] / "M"
    first = run(site, out, ["pytorch"])
    assert first.verify == "ok"
    assert (out / "conda/conda-forge/linux-64/repodata_shards.msgpack.zst").is_file()
    before = tree(out)
    with pytest.raises(SolveError):
        run(site, out, ["pytorch", "no-such-package"])
    assert tree(out) == before
    status = td("status", out)
    assert status.returncode == 0, status.stdout + status.stderr
    check = td("verify-mirror", out)
    assert check.returncode == 0, check.stdout + check.stderr


# -- locks: environment.yml, @EXPLICIT with sha256, and a rattler/pixi lock, installed from the mirror alone


def test_locks_install_from_the_mirror_alone_and_match_the_installed_records(site, tmp_path):
    import asyncio

    import rattler

    from torchdepot.verify.conda import installed_problems, parse_explicit

    out = site[3] / "M"
    assert run(site, out, ["pytorch"]).verify == "ok"
    envs = tmp_path / "envs"
    base = out.resolve().as_uri()
    res = td("lock", "--mirror", out, "--out", envs, "--base-url", base)
    assert res.returncode == 0, res.stdout + res.stderr
    folder = envs / "cpu-py311-linux-x86_64"
    names = sorted(p.name for p in folder.iterdir())
    assert {"environment.yml", "conda-linux-64.lock", "pixi.lock"} <= set(names)
    pins = parse_explicit((folder / "conda-linux-64.lock").read_text(), "lock")
    assert all(len(p.sha256) == 64 for p in pins)
    assert any(p.filename.startswith("_libgcc_mutex-") for p in pins)
    lock = rattler.LockFile.from_path(folder / "pixi.lock")
    env = lock.default_environment()
    records = env.conda_repodata_records()["linux-64"]
    assert sorted(r.file_name for r in records) == sorted(p.filename for p in pins)
    assert all(str(r.url).startswith(base + "/conda/conda-forge/") for r in records)  # the mirror, nothing else
    prefix = tmp_path / "prefix"
    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=tmp_path / "pkgs", show_progress=False,
                                execute_link_scripts=False))
    assert installed_problems(prefix, pins) == []
    assert (prefix / "share" / "td-forge" / "pytorch.txt").read_text().startswith("pytorch 2.7.1 cpu_generic")
    # a record that is not what the lock says is named
    meta = next((prefix / "conda-meta").glob("python_abi-*.json"))
    meta.write_text(meta.read_text().replace(next(p.sha256 for p in pins if p.filename.startswith("python_abi")),
                                             "f" * 64))
    assert [p for p in installed_problems(prefix, pins) if p.startswith("python_abi-")]


def test_bundle_carries_the_shards_and_the_channel_metadata(site, tmp_path):
    out = site[3] / "M"
    assert run(site, out, ["pytorch"]).verify == "ok"
    archive = tmp_path / "m.tar"
    res = td("bundle", "--mirror", out, "--out", archive)
    assert res.returncode == 0, res.stdout + res.stderr
    dest = tmp_path / "lab"
    res = td("unbundle", archive, "--to", dest)
    assert res.returncode == 0, res.stdout + res.stderr
    for rel in ("conda/conda-forge/linux-64/repodata_shards.msgpack.zst", "conda/conda-forge/linux-64/run_exports.json",
                "conda/conda-forge/channeldata.json"):
        assert (dest / rel).read_bytes() == (out / rel).read_bytes(), rel
    shards = sorted(p.name for p in (out / "conda/conda-forge/linux-64/shards").iterdir())
    assert sorted(p.name for p in (dest / "conda/conda-forge/linux-64/shards").iterdir()) == shards
    check = td("verify-mirror", dest)
    assert check.returncode == 0, check.stdout + check.stderr
