"""The README's "For conda users" walkthrough, run as printed (upstream URLs swapped for loopback
ones): mirror a conda-forge-shaped channel with the pip side, serve it with ``torchdepot serve``,
``config conda``, then install as ``conda install -c conda-forge pytorch`` would.

No conda binary exists here, so the written .condarc is read by conda's documented rules
(``custom_channels`` before ``channel_alias``; a channel ``name`` with ``custom_channels[name] =
base`` is ``<base>/<name>``), and the install is py-rattler's (pixi's engine) from the served
mirror alone: a CPU machine gets the CPU build and no CUDA package, a machine with
``__cuda=12.6`` gets the CUDA build through ``cuda-version``."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest
import rattler
from rattler import GenericVirtualPackage, MatchSpec, PackageName, Version
from ruamel.yaml import YAML

from tests.httpserver import Server
from tests.kit.cli import td
from tests.kit.condaforge import build_forge_channel
from tests.kit.serving import serve_mirror
from tests.mirror_upstream import build_upstreams, make_wheel
from tests.venvs import hermetic_env

TAG = "cp311-cp311-manylinux_2_28_x86_64"
README = Path(__file__).resolve().parent.parent / "README.md"


def conda_channel_url(condarc: dict, name: str) -> str:
    """conda's resolution of a channel given by name (``-c name``)."""
    if "://" in name:
        return name.rstrip("/")
    custom = condarc.get("custom_channels") or {}
    if name in custom:
        return f"{str(custom[name]).rstrip('/')}/{name}"
    alias = condarc.get("channel_alias") or "https://conda.anaconda.org"
    return f"{str(alias).rstrip('/')}/{name}"


def vp(cuda: str | None) -> list[GenericVirtualPackage]:
    out = [GenericVirtualPackage(PackageName(n), Version(v), rattler.BuildString("0"))
           for n, v in (("__linux", "5.10"), ("__glibc", "2.28"), ("__unix", "0"))]
    if cuda:
        out.append(GenericVirtualPackage(PackageName("__cuda"), Version(cuda), rattler.BuildString("0")))
    return out


@pytest.fixture
def upstreams(tmp_path):
    d = tmp_path / "wheels"
    torch = {acc: [make_wheel(d, "torch", f"2.13.0+{acc}", TAG, ("filelock",), ">=3.10", payload=os.urandom(20_000))]
             for acc in ("cpu", "cu126")}
    deps = [make_wheel(d, "filelock", "3.20.0", requires_python=">=3.9"),
            make_wheel(d, "numpy", "2.3.0", TAG, requires_python=">=3.11")]
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    a.mkdir()
    b.mkdir()
    build_forge_channel(c / "conda-forge")
    with Server(b) as sb, Server(a) as sa, Server(c) as sc:
        for acc, wheels in torch.items():
            build_upstreams(a, b, sb.url, wheels, deps, acc=acc)
        yield sa.url + "/whl", sb.url + "/simple", sc.url + "/conda-forge"


def test_readme_has_the_conda_walkthrough():
    text = README.read_text()
    assert "## For conda users" in text
    for cmd in ("torchdepot mirror --spec mirror/mirror.yaml", "torchdepot serve --root mirror/out",
                "torchdepot config conda --url http://torchlab:8000", "conda install -c conda-forge pytorch",
                "mamba install -c conda-forge pytorch", "pixi add pytorch"):
        assert cmd in text, cmd


def test_walkthrough_mirror_serve_configure_install(upstreams, tmp_path):
    a, b, c = upstreams
    spec = tmp_path / "mirror.yaml"
    # the README's spec, with loopback upstreams in place of the public ones
    spec.write_text(textwrap.dedent(f"""\
        packages: [torch]
        accelerators: [cpu, cu126]
        pythons: ["3.11"]
        platforms: [linux-x86_64]
        upstreams: [{a}]
        conda:
          channels: [{{name: conda-forge, mirrors: [{c}]}}]
          specs: [pytorch]
        """))
    out = tmp_path / "mirror" / "out"
    env = hermetic_env(PIP_INDEX_URL=b, UV_CACHE_DIR=str(tmp_path / "uv"), TORCHDEPOT_NO_PROGRESS="1")
    res = td("mirror", "--spec", spec, "--out", out, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "conda/conda-forge/linux-64/repodata_shards.msgpack.zst").is_file(), res.stdout + res.stderr
    with serve_mirror(out) as httpd:
        url = f"http://{httpd.server_address[0]}:{httpd.server_address[1]}"
        condarc = tmp_path / ".condarc"
        cfg = td("config", "conda", "--url", url, "--file", condarc, env=env)
        assert cfg.returncode == 0, cfg.stdout + cfg.stderr
        doc = YAML(typ="safe").load(condarc.read_text())
        channel = conda_channel_url(doc, "conda-forge")  # what `-c conda-forge` now means
        assert channel == f"{url}/conda/conda-forge"
        assert doc["mirrored_channels"]["conda-forge"] == [channel]
        assert doc["channels"][0] == channel
        for cuda, want in ((None, "cpu_generic"), ("12.6", "cuda126_generic")):
            recs = asyncio.run(rattler.solve([rattler.Channel(channel)], [MatchSpec("pytorch")],
                                             platforms=["linux-64", "noarch"], virtual_packages=vp(cuda)))
            torch = next(r for r in recs if r.name.normalized == "pytorch")
            assert str(torch.build).startswith(want)
            assert all(str(r.url).startswith(channel + "/") for r in recs)  # the mirror alone
            if cuda is None:
                assert not [r for r in recs if r.name.normalized.startswith("cuda")]
                prefix = tmp_path / "env-cpu"
                asyncio.run(rattler.install(recs, target_prefix=prefix, cache_dir=tmp_path / "pkgs",
                                            show_progress=False, execute_link_scripts=False))
                assert (prefix / "conda-meta").is_dir()
                assert (prefix / "share/td-forge/pytorch.txt").read_text().startswith("pytorch 2.7.1 cpu_generic")
    status = td("status", out, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    check = td("verify-mirror", out, env=env)
    assert check.returncode == 0, check.stdout + check.stderr


def test_config_conda_semantics_on_an_existing_condarc(tmp_path):
    """custom_channels / mirrored_channels gain the mirrored names only; the user's other entries stay;
    channel_alias moves only with --channel-alias."""
    from torchdepot.clientconfig.conda import plan

    old = textwrap.dedent("""\
        channels: [conda-forge, bioconda]
        custom_channels:
          bioconda: https://mirrors.example/cloud
        mirrored_channels:
          bioconda: [https://mirrors.example/cloud/bioconda]
        channel_alias: https://mirrors.example/anaconda
        """)
    url = "http://torchlab:8000"
    new = plan(tmp_path / ".condarc", old, url, ["conda-forge", "pytorch"]).changes[0].new
    doc = YAML(typ="safe").load(new)
    assert conda_channel_url(doc, "conda-forge") == f"{url}/conda/conda-forge"
    assert conda_channel_url(doc, "pytorch") == f"{url}/conda/pytorch"
    assert conda_channel_url(doc, "bioconda") == "https://mirrors.example/cloud/bioconda"  # untouched
    assert conda_channel_url(doc, "nvidia") == "https://mirrors.example/anaconda/nvidia"  # alias kept
    assert doc["mirrored_channels"] == {"bioconda": ["https://mirrors.example/cloud/bioconda"],
                                        "conda-forge": [f"{url}/conda/conda-forge"],
                                        "pytorch": [f"{url}/conda/pytorch"]}
    alias = plan(tmp_path / ".condarc", old, url, ["conda-forge"], alias=True).changes[0].new
    adoc = YAML(typ="safe").load(alias)
    assert adoc["channel_alias"] == f"{url}/conda"
    assert conda_channel_url(adoc, "nvidia") == f"{url}/conda/nvidia"  # every named channel: air-gapped
