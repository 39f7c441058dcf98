"""Conda side without the torch wheel: spec parsing, real repodata, conda ls over loopback,
solving with variant guards, mirroring a recipes-built channel, and bad repodata."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from tests.httpserver import Server
from tests.kit.condapython import build_python_placeholder
from tests.kit.wheels import build_wheel
from torchdepot.cli import main
from torchdepot.errors import IntegrityError, SpecError, TorchdepotError
from torchdepot.model.accel import parse_accelerator
from torchdepot.net.http import Client, HttpConfig
from torchdepot.resolve.conda import SubdirSource, keep_record, solve_target
from torchdepot.ship import recipes as R
from torchdepot.sources.repodata import RepodataError, parse_repodata
from torchdepot.spec.conda import CondaTarget, parse_conda_section, pip_constraint_to_conda
from torchdepot.spec.mirror import MirrorSpec, PackageSpec, pip_side
from torchdepot.store.channel import normalize_indexed_channel, repodata_bytes
from torchdepot.sync.conda import sync_conda

REPODATA = "conda/repodata/pytorch_channel_linux-64_repodata.json"


def stub_torch_wheels(directory: Path) -> list[Path]:
    """Small torch wheels labelled cpu / cu126 for linux and windows (the real CPU wheel is
    exercised in test_conda_e2e.py); same version and build number, so CPU and CUDA tie."""
    out = []
    for acc in ("cpu", "cu126"):
        for tag in ("cp311-cp311-manylinux_2_28_x86_64", "cp311-cp311-win_amd64"):
            out.append(build_wheel(directory, "torch", f"2.13.0+{acc}", tag, purelib=False))
    return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """An upstream channel built by recipes/ and indexed by rattler.index."""
    root = tmp_path_factory.mktemp("up")
    wheels = stub_torch_wheels(root)
    chan = root / "chan"
    R.build_metapackages(chan, ("12.6",))
    R.build_wheels(wheels, chan)
    build_python_placeholder(chan, ("linux-64", "win-64"))  # pytorch depends on python (its cp tag)
    R.index_channel(chan)
    return chan


def fast_client() -> Client:
    return Client(HttpConfig(retries=0, connect_timeout=2, read_timeout=10))


def spec_for(url: str, **conda) -> MirrorSpec:
    return MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64", "windows-amd64"),
                      conda={"channels": [{"name": "test", "mirrors": [url]}], "specs": ["pytorch"], **conda})


# -- spec ------------------------------------------------------------------------------

def test_spec_defaults_and_targets():
    spec = MirrorSpec(packages=(PackageSpec("torch", ">=2.5,<2.6"),), extra_packages=("numpy",),
                      accelerators=("cpu", "cu118"), pythons=("3.11",), platforms=("linux-x86_64", "windows-amd64"),
                      conda={"channels": ["conda-forge", "https://mirror.example/conda/pytorch"]})
    cfg = parse_conda_section(spec.conda, pip_side(spec))
    assert cfg.specs == ("pytorch <2.6,>=2.5", "numpy")
    assert [c.name for c in cfg.channels] == ["conda-forge", "pytorch"]
    assert cfg.channels[0].mirrors == ("https://conda.anaconda.org/conda-forge",)
    assert cfg.all_subdirs == ("linux-64", "noarch", "win-64")
    assert sorted(t.id for t in cfg.targets) == sorted(
        ["cpu-py311-linux-x86_64", "cu118-py311-linux-x86_64", "cpu-py311-windows-amd64", "cu118-py311-windows-amd64"])


@pytest.mark.parametrize(("conda", "key"), [
    ({"channels": [{"name": "x", "mirrors": ["http://ok.example/x", "ftp://bad"]}]}, "conda.channels[0].mirrors[1]"),
    ({"channels": []}, "conda.channels"),
    ({"channels": ["x"], "subdirs": ["linux-65"]}, "conda.subdirs[0]"),
    ({"channels": ["x"], "specs": ["pytorch >>>"]}, "conda.specs[0]"),
    ({"channels": [{"name": "../evil"}]}, "conda.channels[0].name"),
    ({"channels": ["a", "a"]}, "conda.channels[1].name"),
    ({"channels": ["a"], "bogus": 1}, "conda.bogus"),
])
def test_spec_errors_name_the_key(conda, key):
    spec = MirrorSpec(pythons=("3.11",), platforms=("linux-x86_64",), conda=conda)
    with pytest.raises(SpecError) as exc:
        parse_conda_section(conda, pip_side(spec))
    assert str(exc.value).startswith(key + ":")
    assert "\n" not in str(exc.value)


@given(st.sampled_from([">=", "<=", "<", ">", "==", "!=", "~="]),
       st.lists(st.integers(0, 30), min_size=2, max_size=3))
def test_pip_constraint_to_conda_is_a_valid_match_spec(op, parts):
    import rattler

    conda = pip_constraint_to_conda(op + ".".join(map(str, parts)))
    rattler.MatchSpec(f"pytorch {conda}")  # parses


# -- real repodata ---------------------------------------------------------------------

def test_every_real_pytorch_record_maps_to_its_stated_accelerator(data_dir):
    data = (data_dir / REPODATA).read_bytes()
    rd = parse_repodata(data, "pytorch", "linux-64", "pytorch/linux-64")
    torch = rd.by_name("pytorch")
    assert len(torch) == 276
    assert len(rd.records) == 2181
    for r in torch:
        acc = r.accelerator.name
        if "_cpu_" in r.build or r.build.startswith("cpu"):
            assert acc == "cpu", r.build
        else:
            cuda = r.build.split("cuda", 1)[1].split("_", 1)[0]  # "11.8" or "10.1.243"
            assert acc == "cu" + "".join(cuda.split(".")[:2]), r.build
        assert r.python == r.build.split("_", 1)[0][2:], r.build


def test_conda_ls_json_over_loopback(data_dir, tmp_path):
    (tmp_path / "pytorch" / "linux-64").mkdir(parents=True)
    shutil.copy(data_dir / REPODATA, tmp_path / "pytorch" / "linux-64" / "repodata.json")
    with Server(tmp_path) as s:
        res = CliRunner().invoke(main, ["conda", "ls", "--channel", f"{s.url}/pytorch", "--subdir", "linux-64", "--json"])
        table = CliRunner().invoke(main, ["conda", "ls", "--channel", f"{s.url}/pytorch", "--subdir", "linux-64"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == 2181
    keys = {"filename", "name", "version", "build", "build_number", "subdir", "accelerator", "python"}
    assert all(keys <= set(r) for r in rows)
    torch = [r for r in rows if r["name"] == "pytorch"]
    assert len(torch) == 276
    assert all(r["accelerator"] for r in torch)
    one = next(r for r in torch if r["build"] == "py3.10_cuda11.8_cudnn8.7.0_0")
    assert (one["accelerator"], one["python"]) == ("cu118", "3.10")
    assert table.exit_code == 0
    assert "pytorch: 276 records" in table.output
    assert "cu118" in table.output
    assert "3.10" in table.output


# -- solving ---------------------------------------------------------------------------

def test_keep_record_hides_other_variants():
    t = CondaTarget(parse_accelerator("cu126"), "3.11", "linux-x86_64", "linux-64")
    assert keep_record("cuda126_py311_0", t)
    assert not keep_record("cpu_py311_0", t)
    assert not keep_record("cuda126_py310_0", t)
    assert not keep_record("py3.11_cuda11.8_cudnn8.7.0_0", t)
    assert keep_record("h1234567_0", t)


def test_solve_never_picks_cpu_for_cuda_or_reverse(upstream):
    sources = [SubdirSource("test", sd, upstream.as_uri(), upstream / sd / "repodata.json")
               for sd in ("linux-64", "win-64", "noarch")]
    for acc in ("cpu", "cu126"):
        for plat, sd in (("linux-x86_64", "linux-64"), ("windows-amd64", "win-64")):
            t = CondaTarget(parse_accelerator(acc), "3.11", plat, sd)
            sol = solve_target(["pytorch"], [s for s in sources if s.subdir in (sd, "noarch")], t)
            builds = {str(r.name.normalized): str(r.build) for r in sol.records}
            want = "cpu_py311_0" if acc == "cpu" else "cuda126_py311_0"
            assert builds["pytorch"] == want
            assert builds["pytorch-mutex"] == ("cpu" if acc == "cpu" else "cuda")
            assert {str(r.subdir) for r in sol.records} <= {sd, "noarch"}
    # The metapackages are mutually exclusive.
    t = CondaTarget(parse_accelerator("cu126"), "3.11", "linux-x86_64", "linux-64")
    with pytest.raises(TorchdepotError, match="no solution"):
        solve_target(["pytorch-cuda 12.6", "cpuonly"], sources, t)


# -- mirroring ---------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mirror_from_loopback_is_exact_and_reproducible(upstream, tmp_path):
    with Server(upstream.parent) as s:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64", "windows-amd64"),
                          conda={"channels": [{"name": "test", "mirrors": ["http://127.0.0.1:9/dead", f"{s.url}/chan"]}],
                                 "specs": ["pytorch"]})
        out = tmp_path / "out"
        with fast_client() as c:
            res = sync_conda(spec, out, client=c, jobs=4)
        first = _tree(out / "conda")
        with fast_client() as c:
            res2 = sync_conda(spec, out, client=c, jobs=4)
        assert _tree(out / "conda") == first  # byte-identical re-run
    assert "0 downloaded" in res2.summary
    assert sorted(t.id for t in res.targets) == sorted(
        ["cpu-py311-linux-x86_64", "cu126-py311-linux-x86_64", "cpu-py311-windows-amd64", "cu126-py311-windows-amd64"])
    for t in res.targets:
        torch = next(p for p in t.packages if p.name == "pytorch")
        assert torch.build == ("cpu_py311_0" if t.accelerator == "cpu" else "cuda126_py311_0")
        assert t.kind == "conda"
        assert t.channel == "conda/test"
        assert all(p.path.startswith(f"conda/test/{t.subdir}/") or p.path.startswith("conda/test/noarch/") for p in t.packages)
    up = {**json.loads((upstream / "linux-64" / "repodata.json").read_text())["packages.conda"]}
    mine = json.loads((out / "conda/test/linux-64/repodata.json").read_text())
    assert set(mine["packages.conda"]) == set(up)  # both linux builds are needed by some target
    for fn, rec in mine["packages.conda"].items():
        assert rec["sha256"] == up[fn]["sha256"]
        assert "indexed_timestamp" not in rec
        assert hashlib.sha256((out / "conda/test/linux-64" / fn).read_bytes()).hexdigest() == rec["sha256"]
    noarch = json.loads((out / "conda/test/noarch/repodata.json").read_text())
    assert set(noarch["packages.conda"]) == {"pytorch-mutex-1.0-cpu.conda", "pytorch-mutex-1.0-cuda.conda"}
    import zstandard

    with open(out / "conda/test/noarch/repodata.json.zst", "rb") as f:  # rattler's frames omit the content size
        assert zstandard.ZstdDecompressor().stream_reader(f).read() == (out / "conda/test/noarch/repodata.json").read_bytes()
    assert (out / "conda/test/linux-64/repodata_shards.msgpack.zst").is_file()
    paths = {f.path for f in res.files}
    assert "conda/test/win-64/repodata.json" in paths
    assert all(f.kind == "conda" for f in res.files)


def test_normalized_index_is_reproducible(upstream, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(upstream, d)
        R.index_channel(d)
        normalize_indexed_channel(d)
    assert _tree(a) == _tree(b)


# -- bad repodata -------------------------------------------------------------------------

@pytest.fixture
def mirrored(upstream, tmp_path):
    """A good mirror first; then upstream goes bad in a copy served on loopback."""
    bad = tmp_path / "srv" / "chan"
    shutil.copytree(upstream, bad)
    out = tmp_path / "out"
    with Server(tmp_path / "srv") as s, fast_client() as c:
        sync_conda(spec_for(f"{s.url}/chan"), out, client=c)
    return bad, out


def _rewrite(chan: Path, subdir: str, fn) -> None:
    p = chan / subdir / "repodata.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    (chan / subdir / "repodata.json.zst").unlink(missing_ok=True)


def _truncate(chan):
    p = chan / "linux-64" / "repodata.json"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    (chan / "linux-64" / "repodata.json.zst").unlink()


def _drop_sha(chan):
    _rewrite(chan, "linux-64", lambda d: d["packages.conda"]["pytorch-2.13.0-cpu_py311_0.conda"].pop("sha256"))


def _wrong_hash(chan):
    _rewrite(chan, "linux-64", lambda d: d["packages.conda"]["pytorch-2.13.0-cpu_py311_0.conda"].update(sha256="0" * 64))


def _slash_name(chan):
    def f(d):
        rec = dict(d["packages.conda"]["pytorch-2.13.0-cpu_py311_0.conda"], name="../../etc")
        d["packages.conda"]["..%2F..%2Fetc-2.13.0-cpu_py311_0.conda"] = rec
    _rewrite(chan, "linux-64", f)


def _dotdot_filename(chan):
    def f(d):  # newer, so the solver picks it: its file name must stop the sync
        d["packages.conda"]["../pytorch-2.14.0-cpu_py311_0.conda"] = dict(
            d["packages.conda"]["pytorch-2.13.0-cpu_py311_0.conda"], version="2.14.0")
    _rewrite(chan, "linux-64", f)


@pytest.mark.parametrize(("breaker", "err", "needle"), [
    (_truncate, RepodataError, "not valid repodata JSON"),
    (_drop_sha, RepodataError, "no valid sha256"),
    (_wrong_hash, IntegrityError, "sha256 mismatch"),
])
def test_bad_repodata_is_one_line_and_keeps_previous_channel(mirrored, tmp_path, breaker, err, needle):
    bad, out = mirrored
    before = _tree(out / "conda")
    outside = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    # the mirrored package must be fetched again to see the wrong hash
    if breaker is _wrong_hash:
        (out / "conda/test/linux-64/pytorch-2.13.0-cpu_py311_0.conda").unlink()
        before = _tree(out / "conda")
    breaker(bad)
    outside = sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out)
    with Server(bad.parent) as s, fast_client() as c, pytest.raises(err) as exc:
        sync_conda(spec_for(f"{s.url}/chan"), out, client=c)
    msg = str(exc.value)
    assert needle in msg
    assert "\n" not in msg
    assert _tree(out / "conda") == before  # previous channel intact
    assert sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out) == outside
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("breaker", [_slash_name, _dotdot_filename])
def test_hostile_record_is_never_read_nor_published(mirrored, tmp_path, breaker):
    """Records are read lazily per package name (py-rattler indexes them by their file name's
    name part): a record under a hostile file name is never a candidate for any package, never
    published, and nothing lands outside the mirror."""
    bad, out = mirrored
    breaker(bad)
    with Server(bad.parent) as s, fast_client() as c:
        sync_conda(spec_for(f"{s.url}/chan"), out, client=c)
    published = json.loads((out / "conda/test/linux-64/repodata.json").read_text())
    assert not [fn for fn in published["packages.conda"] if "etc" in fn or "/" in fn or "2.14.0" in fn]
    assert not (tmp_path / "etc").exists()
    assert not list(tmp_path.rglob("*etc-2.13.0*"))


def test_cli_reports_bad_channel_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torchdepot", "conda", "ls", "--channel", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.startswith("torchdepot: error: ")
    assert res.stderr.count("\n") == 1


def test_repodata_bytes_sorted_and_stable():
    a = repodata_bytes("noarch", {"b-1-0.conda": {"name": "b", "indexed_timestamp": 5}, "a-1-0.tar.bz2": {"name": "a"}})
    b = repodata_bytes("noarch", {"a-1-0.tar.bz2": {"name": "a"}, "b-1-0.conda": {"name": "b", "indexed_timestamp": 9}})
    assert a == b
    assert b"indexed_timestamp" not in a
