"""Conda side of the foundation on real data: the pytorch channel's repodata (served over
HTTP, plain and .zst, through the live fetcher and its cache), lock files and the conda URL
list. The parser is the live one (sources.repodata); the fetcher is sources.channel."""

from __future__ import annotations

import collections
import json
import re
import shutil

import pytest
import zstandard

from tests.httpserver import Server
from torchdepot.errors import UpstreamError
from torchdepot.model.condabuild import (
    package_accelerator,
    parse_build_string,
    split_conda_filename,
)
from torchdepot.net.http import make_session
from torchdepot.sources.channel import RepodataCache, fetch_repodata
from torchdepot.sources.repodata import RepodataError, parse_repodata

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


def test_repodata_over_http_zst_and_plain(channel, tmp_path):
    cache = RepodataCache(tmp_path / "cache")
    with make_session() as client:
        z = fetch_repodata(client, "pytorch", (channel.url + "/pytorch",), "linux-64", cache)
        p = fetch_repodata(client, "plain", (channel.url + "/plain/",), "linux-64", cache)
        # unchanged upstream: answered from the cache (304 on If-Modified-Since), not downloaded again
        again = fetch_repodata(client, "pytorch", (channel.url + "/pytorch",), "linux-64", cache)
    assert z.url.endswith("repodata.json.zst")
    assert p.url.endswith("/plain/linux-64/repodata.json")
    assert not z.from_cache
    assert not p.from_cache
    assert again.from_cache
    assert again.path == z.path
    zr = parse_repodata(z.path.read_bytes(), "pytorch", "linux-64", z.url)
    pr = parse_repodata(p.path.read_bytes(), "pytorch", "linux-64", p.url)
    assert len(zr.records) == len(pr.records) == 2181
    assert zr.records == pr.records
    first = next(iter(zr.records.values()))
    assert first.channel == "pytorch"
    assert first.subdir == "linux-64"


def test_failover_to_the_next_mirror(channel, tmp_path):
    with make_session() as client:
        got = fetch_repodata(client, "pytorch", (channel.url + "/absent", channel.url + "/plain"), "linux-64",
                             RepodataCache(tmp_path))
    assert got.base_url == channel.url + "/plain"
    with make_session() as client, pytest.raises(UpstreamError, match="no mirror served repodata") as err:
        fetch_repodata(client, "pytorch", (channel.url + "/absent",), "linux-64", RepodataCache(tmp_path))
    assert "\n" not in str(err.value)
    assert "/absent/linux-64/repodata.json" in str(err.value)


def test_every_pytorch_record_maps_to_its_build(data_dir):
    rd = parse_repodata((data_dir / REPODATA).read_bytes(), "pytorch", "linux-64", REPODATA)
    pytorch = rd.by_name("pytorch")
    assert len(pytorch) > 250
    counts = collections.Counter()
    for r in pytorch:
        got = r.accelerator.name if r.accelerator else None
        assert got == expected_accelerator(r.name, r.version, r.build), r.build
        assert got is not None, r.build  # every linux-64 pytorch build states cpu or cuda
        assert r.python
        assert r.python == re.match(r"py(\d\.\d+)", r.build).group(1)
        counts[got] += 1
    assert counts["cpu"] > 0
    assert counts["cu118"] > 0
    assert counts["cu92"] > 0


@pytest.mark.parametrize(("filename", "record"), [
    ("evil-1.0-0.tar.bz2", {"name": "other", "version": "1.0", "build": "0"}),
    ("../escape-1.0-0.tar.bz2", {"name": "escape", "version": "1.0", "build": "0"}),
    (None, "not an object"),
])
def test_one_bad_record_among_real_ones_stops_with_one_line(data_dir, filename, record):
    """The live parser refuses the whole subdir (before anything is written), naming the record."""
    data = json.loads((data_dir / REPODATA).read_bytes())
    filename = filename or next(iter(data["packages"]))
    data["packages"][filename] = record
    with pytest.raises(RepodataError) as err:
        parse_repodata(json.dumps(data).encode(), "pytorch", "linux-64", "pytorch/linux-64")
    msg = str(err.value)
    assert msg.startswith("pytorch/linux-64: "), msg
    assert "\n" not in msg, msg
    assert repr(filename) in msg, msg


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
    assert seen[("pytorch-cuda", True)] > 0
    assert seen[("torchvision", True)] > 0


def test_corrupt_zst_is_a_one_line_upstream_error(data_dir, tmp_path):
    d = tmp_path / "ch" / "linux-64"
    d.mkdir(parents=True)
    shutil.copyfile(data_dir / REPODATA, d / "repodata.json")
    (d / "repodata.json.zst").write_bytes(b"\x28\xb5\x2f\xfdgarbage")
    with Server(tmp_path) as srv, make_session() as client, pytest.raises(UpstreamError) as err:
        fetch_repodata(client, "ch", (srv.url + "/ch",), "linux-64", RepodataCache(tmp_path / "cache"))
    msg = str(err.value)
    assert msg.startswith(f"{srv.url}/ch/linux-64/repodata.json.zst: not a valid zstd stream")
    assert "\n" not in msg
    assert not (tmp_path / "cache" / "ch" / "linux-64" / "repodata.json").exists()


def test_real_pytorch_channel_read_natively_and_every_record_valid(data_dir, tmp_path):
    """The real legacy ``pytorch`` channel through the sync's own path: py-rattler's SparseRepoData
    (records per name, no Python parse of the whole file), each record validated as a chosen one."""
    import rattler

    from torchdepot.resolve.conda import SubdirSource, open_sources
    from torchdepot.sources.repodata import chosen_record

    src = SubdirSource("pytorch", "linux-64", "https://conda.example/pytorch", data_dir / REPODATA, where=REPODATA)
    sparse = open_sources([src])["pytorch"]["linux-64"]
    raw = json.loads((data_dir / REPODATA).read_bytes())
    files = {**raw.get("packages", {}), **raw.get("packages.conda", {})}
    assert sorted(sparse.package_names()) == sorted({r["name"] for r in files.values()})
    seen = 0
    for name in sparse.package_names():
        for r in sparse.load_records(rattler.PackageName(name)):
            rec = chosen_record("pytorch", "linux-64", r.file_name, r.to_json(), REPODATA)
            assert rec.sha256 == files[r.file_name].get("sha256")
            if rec.name in ("pytorch", "torchvision", "pytorch-cuda"):  # the oracle's scope
                assert expected_accelerator(rec.name, rec.version, rec.build) == (
                    rec.accelerator.name if rec.accelerator else None)
            seen += 1
    assert seen == len(files)
