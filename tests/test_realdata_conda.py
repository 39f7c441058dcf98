"""Conda side of the foundation on real data: the pytorch channel's repodata (served over
HTTP, plain and .zst), lock files and the conda URL list."""

from __future__ import annotations

import collections
import re
import shutil

import pytest
import zstandard

from tests.httpserver import Server
from torchdepot.model.condabuild import (package_accelerator, parse_build_string, split_conda_filename)
from torchdepot.net.http import make_session
from torchdepot.sources.repodata import fetch_repodata, parse_repodata

REPODATA = "conda/repodata/pytorch_channel_linux-64_repodata.json"


def expected_accelerator(name: str, version: str, build: str) -> str | None:
    """Independent oracle written from the shapes in DOMAIN.md §3, token by token."""
    if name == "pytorch-cuda":
        return "cu" + "".join(version.split(".")[:2])
    if name == "cpuonly":
        return "cpu"
    for tok in build.split("_"):
        if m := re.fullmatch(r"cuda(\d+)\.(\d+)(?:\.\d+)*", tok):
            return f"cu{m.group(1)}{m.group(2)}"
        if m := re.fullmatch(r"cuda(\d{2,3})(?:py\d+h[0-9a-f]+)?", tok):
            return f"cu{m.group(1)}"
        if m := re.fullmatch(r"cu(\d{2,3})", tok):
            return f"cu{m.group(1)}"
        if tok == "cpu":
            return "cpu"
    return None


@pytest.fixture(scope="module")
def channel(data_dir, tmp_path_factory):
    """/pytorch/linux-64/repodata.json(.zst) and /plain/linux-64/repodata.json only."""
    root = tmp_path_factory.mktemp("conda")
    raw = (data_dir / REPODATA).read_bytes()
    for ch, zst in (("pytorch", True), ("plain", False)):
        d = root / ch / "linux-64"
        d.mkdir(parents=True)
        shutil.copyfile(data_dir / REPODATA, d / "repodata.json")
        if zst:
            (d / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
            # the plain file is made unusable, so a passing test proves .zst was read
            (d / "repodata.json").write_text("not json")
    with Server(root) as srv:
        yield srv


def test_repodata_over_http_zst_and_plain(channel):
    with make_session() as client:
        z = fetch_repodata(client, channel.url + "/pytorch", "linux-64")
        p = fetch_repodata(client, channel.url + "/plain", "linux-64")
    assert z.source_url.endswith("repodata.json.zst") and p.source_url.endswith("repodata.json")
    assert len(z.records) == len(p.records) == 2181
    assert not z.warnings and not p.warnings
    assert z.records[0].channel == "pytorch" and z.records[0].subdir == "linux-64"


def test_every_pytorch_record_maps_to_its_build(data_dir):
    rd = parse_repodata((data_dir / REPODATA).read_bytes(), "pytorch", "linux-64")
    pytorch = rd.by_name("pytorch")
    assert len(pytorch) > 250
    counts = collections.Counter()
    for r in pytorch:
        got = r.accelerator.name if r.accelerator else None
        assert got == expected_accelerator(r.name, r.version, r.build), r.build
        assert got is not None, r.build  # every linux-64 pytorch build states cpu or cuda
        assert r.python and r.python == re.match(r"py(\d\.\d+)", r.build).group(1)
        counts[got] += 1
    assert counts["cpu"] > 0 and counts["cu118"] > 0 and counts["cu92"] > 0


def test_bad_records_are_counted_not_fatal(data_dir):
    import json

    data = json.loads((data_dir / REPODATA).read_bytes())
    name = next(iter(data["packages"]))
    data["packages"]["evil-1.0-0.tar.bz2"] = {"name": "other", "version": "1.0", "build": "0"}
    data["packages"]["../escape-1.0-0.tar.bz2"] = {"name": "escape", "version": "1.0", "build": "0"}
    data["packages"][name] = "not an object"
    rd = parse_repodata(json.dumps(data).encode(), "pytorch", "linux-64")
    assert rd.warnings["unusable repodata record"] == 3
    assert len(rd.records) == 2180


def _conda_urls(text: str) -> list[str]:
    return re.findall(r"https?://[^\s\"'#]+/[^/\s\"'#]+\.(?:conda|tar\.bz2)", text)


def test_lockfiles_and_url_list(data_dir):
    files = sorted((data_dir / "conda" / "lockfiles").iterdir()) + [data_dir / "conda_pytorch_urls.txt"]
    seen = collections.Counter()
    for f in files:
        for url in set(_conda_urls(f.read_text(errors="replace"))):
            filename = url.rsplit("/", 1)[-1]
            name, version, build, _ = split_conda_filename(filename)
            if name not in ("pytorch", "torchvision", "pytorch-cuda"):
                continue
            acc = package_accelerator(name, version, parse_build_string(build))
            got = acc.name if acc else None
            assert got == expected_accelerator(name, version, build), url
            seen[(name, got is not None)] += 1
    print("\nconda lock/list records:", dict(seen))
    assert seen[("pytorch", True)] > 100
    assert seen[("pytorch-cuda", True)] > 0 and seen[("torchvision", True)] > 0


def test_corrupt_zst_falls_back_and_warns_once(data_dir, tmp_path):
    import json

    data = json.loads((data_dir / REPODATA).read_bytes())
    data["packages"]["../evil-1.0-0.tar.bz2"] = {"name": "evil", "version": "1.0", "build": "0"}
    d = tmp_path / "ch" / "linux-64"
    d.mkdir(parents=True)
    (d / "repodata.json").write_text(json.dumps(data))
    (d / "repodata.json.zst").write_bytes(b"\x28\xb5\x2f\xfdgarbage")
    said: list[str] = []
    with Server(tmp_path) as srv, make_session() as client:
        rd = fetch_repodata(client, srv.url + "/ch", "linux-64", warn=said.append)
    assert rd.source_url.endswith("/repodata.json") and len(rd.records) == 2181
    assert said == [f"{srv.url}/ch/linux-64/repodata.json: skipped 1 entries (1 unusable repodata record)"]
