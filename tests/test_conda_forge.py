"""A conda-forge-shaped upstream (tests/kit/condaforge.py: real names, both formats, repodata as
json, zst and CEP-16 shards) mirrored for a CPU and a CUDA target; the published channel is a
real channel: per subdir repodata.json, .zst and a shard index generated for the subset, and a
client that reads only the shards (py-rattler's Gateway) finds every package and solves."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import rattler
from rattler import Gateway, GenericVirtualPackage, MatchSpec, PackageName, SourceConfig, Version

from tests.httpserver import RangeHandler, Server
from tests.kit.condaforge import FORGE, build_forge_channel
from torchdepot.net.http import Client, HttpConfig
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.sync.conda import sync_conda

CUDA_BUILD = next(p.build for p in FORGE if p.name == "pytorch" and p.build.startswith("cuda"))
CPU_BUILD = next(p.build for p in FORGE if p.name == "pytorch" and p.build.startswith("cpu"))


@pytest.fixture(scope="module")
def forge(tmp_path_factory) -> Path:
    return build_forge_channel(tmp_path_factory.mktemp("up") / "conda-forge")


@pytest.fixture(scope="module")
def mirrored(forge, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirror")
    with Server(forge.parent) as s, Client(HttpConfig(retries=0, connect_timeout=2, read_timeout=10)) as c:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "conda-forge", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        res = sync_conda(spec, out, client=c)
    return out, res


def test_cuda_build_through_cuda_version_and_cpu_build_pulls_no_cuda(mirrored):
    _, res = mirrored
    by_acc = {t.accelerator: {p.name: p for p in t.packages} for t in res.targets}
    assert by_acc["cu126"]["pytorch"].build == CUDA_BUILD
    assert "cuda-version" in by_acc["cu126"]
    assert "cuda-cudart" in by_acc["cu126"]
    assert by_acc["cpu"]["pytorch"].build == CPU_BUILD
    assert not [n for n in by_acc["cpu"] if n.startswith("cuda")]
    for names in by_acc.values():  # conda-forge's real names made it through
        assert {"_libgcc_mutex", "_openmp_mutex", "python_abi", "libgcc"} <= set(names)


def test_published_channel_has_every_index_form_for_the_subset(mirrored):
    out, res = mirrored
    sd = out / "conda/conda-forge/linux-64"
    doc = json.loads((sd / "repodata.json").read_text())
    listed = set(doc["packages"]) | set(doc["packages.conda"])
    chosen = {Path(p.path).name for t in res.targets for p in t.packages if "/linux-64/" in p.path}
    assert listed == chosen  # exactly the subset: pytorch-gpu was not asked for
    assert "pytorch-gpu-2.7.1-cuda126_ha999a5f_300.conda" not in listed
    assert {f for f in listed if f.endswith(".tar.bz2")} == {"_libgcc_mutex-0.1-conda_forge.tar.bz2",
                                                               "_openmp_mutex-4.5-2_gnu.tar.bz2"}
    for name in ("repodata.json.zst", "repodata_shards.msgpack.zst"):
        assert (sd / name).is_file()
    shards = sorted((sd / "shards").iterdir())
    assert len(shards) == len({doc["packages.conda"].get(f, doc["packages"].get(f))["name"] for f in listed})
    paths = {f.path for f in res.files}
    assert {f"conda/conda-forge/linux-64/shards/{p.name}" for p in shards} <= paths
    assert "conda/conda-forge/linux-64/repodata_shards.msgpack.zst" in paths


def _shards_only(out: Path, dest: Path) -> Path:
    """The mirror's channel without repodata.json / .zst: only the shard index and shards."""
    shutil.copytree(out / "conda/conda-forge", dest)
    for p in list(dest.rglob("repodata.json*")):
        p.unlink()
    return dest


def test_a_shard_only_client_finds_every_package_and_solves(mirrored, tmp_path):
    out, res = mirrored
    chan = _shards_only(out, tmp_path / "srv" / "conda-forge")
    with Server(tmp_path / "srv") as s:
        gw = Gateway(cache_dir=tmp_path / "gw-cache", default_config=SourceConfig(sharded_enabled=True))
        channel = rattler.Channel(f"{s.url}/conda-forge")
        for t in res.targets:
            names = [p.name for p in t.packages]
            found = asyncio.run(gw.query([channel], ["linux-64", "noarch"], names, recursive=False))
            files = {r.file_name for recs in found for r in recs}
            assert {Path(p.path).name for p in t.packages} <= files
            vp = [GenericVirtualPackage(PackageName("__glibc"), Version("2.28"), rattler.BuildString("0")),
                  GenericVirtualPackage(PackageName("__unix"), Version("0"), rattler.BuildString("0")),
                  GenericVirtualPackage(PackageName("__linux"), Version("5.10"), rattler.BuildString("0"))]
            if t.accelerator == "cu126":
                vp.append(GenericVirtualPackage(PackageName("__cuda"), Version("12.6"), rattler.BuildString("0")))
            solved = asyncio.run(rattler.solve([channel], [MatchSpec("pytorch")], gateway=gw,
                                               platforms=["linux-64", "noarch"], virtual_packages=vp))
            torch = next(r for r in solved if r.name.normalized == "pytorch")
            assert str(torch.build) == (CUDA_BUILD if t.accelerator == "cu126" else CPU_BUILD)
    assert not list(chan.rglob("repodata.json*"))


def test_shard_index_is_reproducible(forge, mirrored, tmp_path):
    out, _ = mirrored
    again = tmp_path / "again"
    with Server(forge.parent) as s, Client(HttpConfig(retries=0)) as c:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "conda-forge", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        sync_conda(spec, again, client=c)
    for sd in ("linux-64", "noarch"):
        for name in ("repodata.json", "repodata.json.zst", "repodata_shards.msgpack.zst"):
            a = out / "conda/conda-forge" / sd / name
            b = again / "conda/conda-forge" / sd / name
            assert a.read_bytes() == b.read_bytes(), f"{sd}/{name}"


class _Logged(RangeHandler):
    log: list[str] = []  # replaced per test

    def send_head(self):
        type(self).log.append(self.path)
        return super().send_head()


def _shard_of(channel: Path, subdir: str, name: str) -> str:
    import msgpack
    import zstandard

    with open(channel / subdir / "repodata_shards.msgpack.zst", "rb") as f:
        index = msgpack.unpackb(zstandard.ZstdDecompressor().stream_reader(f).read())
    return index["shards"][name].hex()


def test_sharded_upstream_fetches_only_the_closure_shards(forge, tmp_path):
    handler = type("Log", (_Logged,), {"log": []})
    with Server(forge.parent, handler=handler) as s, Client(HttpConfig(retries=0)) as c:
        spec = MirrorSpec(accelerators=("cpu",), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "conda-forge", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        res = sync_conda(spec, tmp_path / "out", client=c)
    log = handler.log
    assert not [p for p in log if "/repodata.json" in p]  # neither repodata.json nor its .zst
    assert "/conda-forge/linux-64/repodata_shards.msgpack.zst" in log
    shards = {p.rsplit("/", 1)[1] for p in log if "/shards/" in p}
    assert f"{_shard_of(forge, 'linux-64', 'pytorch')}.msgpack.zst" in shards
    assert f"{_shard_of(forge, 'linux-64', 'pytorch-gpu')}.msgpack.zst" not in shards  # outside the closure
    torch = next(p for t in res.targets for p in t.packages if p.name == "pytorch")
    assert torch.build == CPU_BUILD


# -- per-variant targets: explicit virtual packages, the legacy channel's notice ---------------

def _vp(target) -> dict[str, tuple[str, str]]:
    from torchdepot.resolve.conda import virtual_packages

    return {str(v.name.normalized): (str(v.version), str(v.build_string)) for v in virtual_packages(target)}


@pytest.mark.parametrize(("acc", "platform", "subdir", "cuda", "glibc", "arch"), [
    ("cpu", "linux-x86_64", "linux-64", None, "2.28", "x86_64"),
    ("cu126", "linux-x86_64", "linux-64", "12.6", "2.28", "x86_64"),
    ("cu130", "linux-aarch64", "linux-aarch64", "13.0", "2.28", "aarch64"),
    ("cu126", "windows-amd64", "win-64", "12.6", None, "x86_64"),
])
def test_virtual_packages_are_explicit_per_target(acc, platform, subdir, cuda, glibc, arch):
    from torchdepot.model.accel import parse_accelerator
    from torchdepot.spec.conda import CondaTarget

    vp = _vp(CondaTarget(parse_accelerator(acc), "3.11", platform, subdir))
    assert vp.get("__cuda", (None,))[0] == cuda
    assert vp.get("__glibc", (None,))[0] == glibc
    assert vp["__archspec"] == ("1", arch)


def test_legacy_pytorch_channel_says_its_frozen_version_and_the_cve_once(forge, tmp_path):
    lines: list[str] = []
    with Server(forge.parent) as s, Client(HttpConfig(retries=0)) as c:
        # a mirror of the legacy channel, by name (its URL here is a loopback copy)
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "pytorch", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        sync_conda(spec, tmp_path / "out", client=c, dry_run=True, say=lines.append)
        quiet: list[str] = []
        spec = MirrorSpec(accelerators=("cpu",), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "conda-forge", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        sync_conda(spec, tmp_path / "out2", client=c, dry_run=True, say=quiet.append)
    assert len(lines) == 1  # once per sync, not per target
    assert "2.5.x" in lines[0]
    assert "CVE-2025-32434" in lines[0]
    assert "conda-forge" in lines[0]
    assert quiet == []


def test_channeldata_and_run_exports_published_for_the_subset(mirrored):
    out, res = mirrored
    chan = out / "conda/conda-forge"
    run_exports = json.loads((chan / "linux-64/run_exports.json").read_text())
    listed = set(json.loads((chan / "linux-64/repodata.json").read_text())["packages.conda"])
    assert set(run_exports["packages.conda"]) == listed  # exactly the mirrored files
    assert run_exports["packages.conda"]["libgcc-15.1.0-h767d61c_2.conda"]["run_exports"] == {
        "strong": ["libgcc >=15.1.0"]}
    assert "_libgcc_mutex-0.1-conda_forge.tar.bz2" in run_exports["packages"]
    channeldata = json.loads((chan / "channeldata.json").read_text())
    assert "pytorch-gpu" not in channeldata["packages"]  # not mirrored
    assert {"pytorch", "cuda-version", "_openmp_mutex"} <= set(channeldata["packages"])
    assert channeldata["subdirs"] == ["linux-64", "noarch"]
    paths = {f.path for f in res.files}
    assert {"conda/conda-forge/channeldata.json", "conda/conda-forge/linux-64/run_exports.json"} <= paths


def test_conda_ls_reads_only_the_asked_packages_natively(forge):
    from click.testing import CliRunner

    from torchdepot.cli import main

    with Server(forge.parent) as s:
        res = CliRunner().invoke(main, ["conda", "ls", "--channel", f"{s.url}/conda-forge", "--subdir", "linux-64",
                                        "--package", "pytorch", "--package", "_libgcc_mutex", "--json"])
        table = CliRunner().invoke(main, ["conda", "ls", "--channel", f"{s.url}/conda-forge", "--subdir", "linux-64"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted((r["name"], r["accelerator"]) for r in rows) == [
        ("_libgcc_mutex", None), ("pytorch", "cpu"), ("pytorch", "cu126")]
    assert table.exit_code == 0, table.output
    assert "cu126" in table.stdout
    assert "cpu" in table.stdout


def test_packages_are_fetched_where_the_shard_index_base_url_says(forge, tmp_path):
    """CEP-16 ``base_url``: a channel whose shard index keeps linux-64's packages under another
    folder of the channel; the packages exist only there, so the default path would 404."""
    import msgpack
    import zstandard

    chan = tmp_path / "up" / "conda-forge"
    shutil.copytree(forge, chan)
    sd = chan / "linux-64"
    (chan / "pkgs" / "linux-64").mkdir(parents=True)
    for pkg in [*sd.glob("*.conda"), *sd.glob("*.tar.bz2")]:
        pkg.rename(chan / "pkgs" / "linux-64" / pkg.name)
    index_path = sd / "repodata_shards.msgpack.zst"
    index = msgpack.unpackb(zstandard.ZstdDecompressor().stream_reader(index_path.open("rb")).read())
    index["info"]["base_url"] = "../pkgs/linux-64/"
    index_path.write_bytes(zstandard.ZstdCompressor().compress(msgpack.packb(index)))
    handler = type("Log", (_Logged,), {"log": []})
    with Server(chan.parent, handler=handler) as s, Client(HttpConfig(retries=0)) as c:
        spec = MirrorSpec(accelerators=("cpu",), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "conda-forge", "mirrors": [f"{s.url}/conda-forge"]}],
                                 "specs": ["pytorch"]})
        res = sync_conda(spec, tmp_path / "out", client=c)
    torch = next(p for t in res.targets for p in t.packages if p.name == "pytorch")
    assert (tmp_path / "out" / torch.path).is_file()
    assert f"/conda-forge/pkgs/linux-64/{Path(torch.path).name}" in handler.log
    assert not [p for p in handler.log if p.startswith("/conda-forge/linux-64/") and p.endswith(".conda")]
