"""The regional operator's mode (``releases:``, sync/regional.py) against a loopback upstream
of download.pytorch.org's shape (tests/kit/regional.py): every matching release with its
paired torchvision / torchaudio and the dependency closure from the same per-accelerator
index, published as ``whl/<acc>/`` indexes; a no-op re-sync that sends no file bytes; a new
upstream release that is the only download of the next sync; the caps; the dry run."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from tests.faultserver import FaultServer
from tests.kit import regional as kit
from torchdepot.errors import SpecError, TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync
from torchdepot.sync.regional import requires_of


def _spec(up, out, **over):
    data = {"releases": "torch>=2.0", "packages": ["torch", "torchvision", "torchaudio"], "extra_packages": [],
            "accelerators": ["all"], "pythons": ["all"], "platforms": ["all"], "upstreams": [up.url + "/whl"],
            "out": str(out), "jobs": 4, **over}
    return parse_spec(data, "regional.yaml")


def _sync(up, out, dry_run=False, prune=False, **over):
    msgs: list[str] = []
    res = sync(_spec(up, out, **over), client=make_session(HttpConfig(retries=0)), progress=False,
               echo=msgs.append, pip_sources=PipSources(no_index=True), dry_run=dry_run, prune=prune)
    return res, msgs


def _page_names(out, acc, project):
    page = out / L.INDEX_LINK / acc / project / "index.html"
    return set(re.findall(r">([^<]+\.whl)</a>", page.read_text())) if page.is_file() else set()


def _wheel_bodies(up):
    return sum(n for path, n in up.body_bytes.items() if path.endswith(".whl"))


@pytest.fixture
def upstream():
    with FaultServer(validators=True) as up:
        yield up, kit.serve(up)


@pytest.mark.slow  # 1.5-2.2 s: keeps make test under 2 minutes
def test_every_matching_release_its_pairs_and_closure_per_accelerator(upstream, tmp_path):
    up, every = upstream
    out = tmp_path / "out"
    res, msgs = _sync(up, out)
    want = kit.expected(every, releases=("2.0.0", "2.1.0"))
    files = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.kind == "wheel"}
    assert files == want, msgs
    assert res.verify == "ok", msgs
    assert any("dependency triton is not on the cu121 index" in m for m in msgs), msgs
    # per-accelerator indexes, as upstream lays them out
    assert {p.name for p in (out / L.INDEX_LINK).iterdir() if (p / "torch").is_dir()} == {"cpu", "cu118", "cu121"}
    cpu_torch = _page_names(out, "cpu", "torch")
    assert cpu_torch == {f.filename for f in every if f.acc == "cpu" and f.project == "torch"
                         and f.torch in ("2.0.0", "2.1.0")}
    assert not any("1.13" in n for n in cpu_torch)
    assert _page_names(out, "cu118", "nvidia-cublas-cu11")
    assert not _page_names(out, "cpu", "nvidia-cublas-cu11")
    assert _page_names(out, "cu121", "mpmath") == {n for n in want if n.startswith("mpmath-1.3.0")}
    assert not _page_names(out, "cpu", "opt-einsum")  # an extra's dependency only
    torchaudio = _page_names(out, "cu118", "torchaudio")
    assert {n.split("-")[1] for n in torchaudio} == {"2.0.0+cu118", "2.1.0+cu118"}
    listed = mf.load(out).by_path()
    assert all(L.metadata_path(p) in listed for p, e in listed.items() if e.kind == "wheel")
    assert all((out / p).is_file() for p in listed)
    # status tells a regional mirror by accelerator, not as "0 targets"
    from tests.kit.cli import td

    proc = td("status", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"mirror {out}: regional, releases torch>=2.0, 3 accelerators, {len(listed)} files"), text
    for acc in ("cpu", "cu118", "cu121"):
        held = sorted({f.torch for f in every if f.acc == acc and f.project == "torch"} & {"2.0.0", "2.1.0"},
                      reverse=True)
        wheels = len(_page_names(out, acc, "torch"))
        assert f"  {acc:<5}  torch {', '.join(held)}  {wheels} torch wheels" in text.splitlines(), text


@pytest.mark.slow  # several syncs or paced downloads (1-3 s): kept out of the fast tier
def test_a_no_op_sends_no_file_bytes_and_a_new_release_is_the_only_download(upstream, tmp_path):
    up, every = upstream
    out = tmp_path / "out"
    first, _ = _sync(up, out)
    up.reset_counters()
    again, msgs = _sync(up, out)
    assert _wheel_bodies(up) == 0, msgs
    assert again.requests["metadata"] == 0  # every METADATA came from the cache
    assert again.requests["unchanged"] == again.requests["pages"] - 1  # only 304s, and triton's 404
    assert up.hits["/whl/cu121/triton/"] == 1
    assert not again.index_changed
    assert again.manifest is not None
    assert first.manifest is not None
    assert again.manifest.files == first.manifest.files
    assert again.manifest.last_sync is not None
    assert again.manifest.last_sync.detail.startswith("unchanged since the closing check of ")
    assert again.verify == "ok"
    # upstream publishes torch 2.1.1 for cpu: only its files (torch, paired vision/audio) come
    with FaultServer(validators=True) as newer:
        every2 = kit.serve(newer, extra_torch=(("cpu", "2.1.1"),))
        before = {e.path for e in mf.load(out).files}
        spec_over = {"upstreams": [newer.url + "/whl"]}
        res, msgs = _sync(newer, out, **spec_over)
        added = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.path not in before and e.kind == "wheel"}
    new_files = {f.filename for f in every2 if f.torch == "2.1.1"}
    assert added == new_files, msgs
    downloaded = {r.key.rsplit("/", 1)[-1] for r in res.report.downloaded} if res.report else set()
    # the other host serves the same bytes at the same paths: everything else is already held
    assert downloaded == new_files, msgs


@pytest.mark.slow  # several syncs or paced downloads (1-3 s): kept out of the fast tier
def test_what_a_sync_no_longer_selects_is_kept_until_prune(upstream, tmp_path):
    up, every = upstream
    out = tmp_path / "out"
    _sync(up, out)
    before = {e.path for e in mf.load(out).files}
    old_cpu_torch = _page_names(out, "cpu", "torch")
    res, msgs = _sync(up, out, releases="torch==2.1.*")  # the spec narrows: 2.0 is no longer selected
    kept_line = [m for m in msgs if m.startswith("releases: kept ")]
    assert kept_line, msgs
    assert "--prune removes them" in kept_line[0]
    assert {e.path for e in mf.load(out).files} == before  # listed, indexed and on disk as before
    assert _page_names(out, "cpu", "torch") == old_cpu_torch
    assert res.verify == "ok"
    (out / L.REGIONAL_RECORD).rename(tmp_path / "record")  # without the record: kept, never deleted unasked
    res, msgs = _sync(up, out, releases="torch==2.1.*")
    assert {e.path for e in mf.load(out).files} == before, msgs
    assert any("no index page can carry" in m for m in msgs), msgs
    assert all((out / p).is_file() for p in before)
    assert res.verify == "ok", msgs
    again, _ = _sync(up, out, releases="torch==2.1.*")
    assert again.manifest is not None
    assert again.manifest.last_sync is not None
    assert again.manifest.last_sync.detail.startswith("unchanged since")  # the carried files are no change
    res, msgs = _sync(up, out, releases="torch==2.1.*", prune=True)
    files = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.kind == "wheel"}
    assert files == kit.expected(every, releases=("2.1.0",)), msgs
    assert any(m.startswith("releases: removed ") for m in msgs), msgs
    assert not any((out / p).exists() for p in before - {e.path for e in mf.load(out).files})
    assert not any("2.0.0" in n for n in _page_names(out, "cpu", "torch"))


@pytest.mark.slow  # several syncs or paced downloads (1-3 s): kept out of the fast tier
def test_a_hashless_upstream_reads_metadata_by_range_and_sends_each_wheel_once(tmp_path):
    with FaultServer(validators=True) as up:
        every = kit.serve(up, hashless=True)
        out = tmp_path / "out"
        res, msgs = _sync(up, out)
        files = {e.path.rsplit("/", 1)[-1]: e for e in mf.load(out).files if e.kind == "wheel"}
        assert set(files) == kit.expected(every, releases=("2.0.0", "2.1.0")), msgs
        assert res.requests["ranges"] > 0
        assert res.requests["metadata"] == 0
        sizes = {f.filename: len(f.data) for f in every}
        for path, sent in up.body_bytes.items():
            name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
            if name in files:  # the central directory by Range, then the body once
                assert sent <= 2 * sizes[name] + 64 * 1024, (name, sent)
        assert all(e.sha256 == hashlib.sha256((out / e.path).read_bytes()).hexdigest() for e in files.values())
        up.reset_counters()
        again, _ = _sync(up, out)
        assert _wheel_bodies(up) == 0
        assert again.requests["ranges"] == 0  # METADATA by the wheel's sha256, from the cache


def test_filters_narrow_the_mirror(upstream, tmp_path):
    up, every = upstream
    out = tmp_path / "out"
    _sync(up, out, accelerators=["cu118"], pythons=["3.10"], platforms=["linux-x86_64"], releases="torch==2.1.*")
    files = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.kind == "wheel"}
    assert files == kit.expected(every, releases=("2.1.0",), accs=("cu118",), pythons=("3.10",),
                                 platforms=("linux-x86_64",))
    assert {p.name for p in (out / L.INDEX_LINK).iterdir() if (p / "torch").is_dir()} == {"cu118"}
    # packages narrows the torch projects: torch alone, and its closure (no numpy: torchvision's)
    _sync(up, out, accelerators=["cu118"], pythons=["3.10"], platforms=["linux-x86_64"], releases="torch==2.1.*",
          packages=["torch"], prune=True)
    files = {e.path.rsplit("/", 1)[-1] for e in mf.load(out).files if e.kind == "wheel"}
    assert {n.split("-")[0] for n in files} == {"torch", "filelock", "sympy", "mpmath", "nvidia_cublas_cu11"}


def test_dry_run_prints_counts_and_bytes_and_writes_nothing(upstream, tmp_path):
    up, every = upstream
    out = tmp_path / "out"
    res, msgs = _sync(up, out, dry_run=True)
    want = kit.expected(every, releases=("2.0.0", "2.1.0"))
    assert any(m.startswith(f"releases: {len(want)} files over 3 accelerators, {len(want)} new") for m in msgs), msgs
    assert _wheel_bodies(up) == 0
    assert not out.exists()
    assert res.manifest is None


@pytest.mark.parametrize(("over", "words"), [
    ({"max_files": 5}, "over max_files (5)"),
    ({"max_bytes": "1 kB"}, "over max_bytes (1.0 kB)"),  # downloads first: the pages state no size
])
def test_caps_stop_the_run_in_one_line_before_any_download(upstream, tmp_path, over, words):
    up, _every = upstream
    out = tmp_path / "out"
    # the kit's pages give no PEP 700 size: the byte cap is checked again on what arrives
    with pytest.raises(TorchdepotError) as err:
        _sync(up, out, **over)
    assert words in str(err.value)
    assert "\n" not in str(err.value)
    assert not (out / L.MANIFEST_NAME).exists()
    if "max_files" in over:
        assert _wheel_bodies(up) == 0


@pytest.mark.parametrize(("data", "words"), [
    ({"accelerators": ["all"]}, "'all' needs releases:"),
    ({"releases": "numpy>=1"}, "is not a torch version constraint"),
    ({"releases": "torch>=2.0", "targets": [{"accelerator": "cpu", "python": "3.11", "platform": "linux-x86_64"}]},
     "targets: does not apply to a regional mirror"),
    ({"releases": "torch>=2.0", "accelerators": ["current"]}, "'current' does not apply with releases:"),
    ({"max_files": 3}, "applies only to a regional mirror"),
    ({"releases": ">=2.0", "max_bytes": "lots"}, "is not a byte count"),
])
def test_spec_keys_refuse_in_one_line(data, words):
    with pytest.raises(SpecError) as err:
        parse_spec({"pythons": ["3.11"], "platforms": ["linux-x86_64"], **data}, "m.yaml")
    assert words in str(err.value)
    assert str(err.value).startswith("m.yaml: ")


def test_spec_keys_round_trip():
    spec = parse_spec({"releases": "torch>=2.0,<2.9", "accelerators": ["all"], "pythons": ["3.12", "3.13"],
                       "platforms": ["all"], "max_files": 20000, "max_bytes": "2.5 TB"}, "m.yaml")
    assert SpecifierSet(spec.releases or "") == SpecifierSet(">=2.0,<2.9")
    assert spec.every == frozenset({"accelerators", "platforms"})
    assert spec.max_bytes == 2_500_000_000_000
    assert parse_spec(json.loads(json.dumps(spec.to_data()))) == spec
    assert parse_spec({"releases": "2.5.1", "pythons": ["3.11"]}).releases == "==2.5.1"


@pytest.mark.slow
def test_the_readme_spec_and_commands_work_as_printed(upstream, tmp_path):
    """README "A regional operator's mirror": its spec, with the upstream and out replaced by the
    test's loopback ones, and both printed commands."""
    import yaml

    from tests.kit.cli import ROOT, td
    from tests.venvs import hermetic_env

    up, every = upstream
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("**A regional operator's mirror.**", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)
    assert data["releases"] == "torch>=2.0"
    data.update(upstreams=[up.url + "/whl"], out=str(tmp_path / "srv"))
    spec = tmp_path / "regional.yaml"
    spec.write_text(yaml.safe_dump(data))
    commands = re.findall(r"`torchdepot (mirror --spec regional\.yaml[^`]*)`", section.split("**Variant", 1)[0])
    assert commands == ["mirror --spec regional.yaml --dry-run", "mirror --spec regional.yaml"]
    env = hermetic_env(PIP_INDEX_URL=up.url + "/simple")
    want = kit.expected(every, releases=("2.0.0", "2.1.0"))
    for command in commands:
        args = [str(spec) if a == "regional.yaml" else a for a in command.split()]
        proc = td(*args, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"releases: {len(want)} files over 3 accelerators" in proc.stderr + proc.stdout
    assert {e.path.rsplit("/", 1)[-1] for e in mf.load(tmp_path / "srv").files if e.kind == "wheel"} == want


def test_a_per_target_mirror_is_not_turned_into_a_regional_one(upstream, tmp_path):
    up, _every = upstream
    out = tmp_path / "out"
    out.mkdir()
    target = mf.Target(id="cpu-py311-linux-x86_64", kind="pip", accelerator="cpu", python="3.11",
                       platform="linux-x86_64", packages=(), index="whl/cpu")
    mf.save(out, mf.Manifest(targets=[target]))
    with pytest.raises(TorchdepotError, match="holds a per-target mirror .1 targets.; a regional mirror"):
        _sync(up, out)
    assert _wheel_bodies(up) == 0


def test_a_regional_mirror_is_not_synced_per_target(upstream, tmp_path):
    up, _every = upstream
    out = tmp_path / "out"
    _sync(up, out, accelerators=["cu118"], pythons=["3.10"], platforms=["linux-x86_64"])
    before = mf.load(out).files
    spec = parse_spec({"accelerators": ["cu118"], "pythons": ["3.10"], "platforms": ["linux-x86_64"],
                       "upstreams": [up.url + "/whl"], "out": str(out)}, "per-target.yaml")
    with pytest.raises(TorchdepotError, match="holds a regional mirror"):
        sync(spec, progress=False, echo=lambda m: None, pip_sources=PipSources(no_index=True))
    assert mf.load(out).files == before


text = st.one_of(st.text(max_size=30), st.integers(-10, 10**15), st.floats(allow_nan=True), st.none(),
                 st.booleans(), st.lists(st.text(max_size=5), max_size=2),
                 st.from_regex(r"(torch)?\s?[<>=!~]{0,3}\s?[0-9.*]{0,8}( ?[kKmMgGtT]?[bB])?", fullmatch=True))


@given(releases=text, max_bytes=text, max_files=text)
@settings(max_examples=200, deadline=None)
def test_the_regional_keys_give_a_spec_or_one_line_spec_error(releases, max_bytes, max_files):
    data = {"releases": releases, "max_bytes": max_bytes, "max_files": max_files, "accelerators": ["all"],
            "pythons": ["3.11"], "platforms": ["all"]}
    error = None
    try:
        spec = parse_spec(data, "m.yaml")
    except SpecError as exc:
        error = str(exc)
    if error is not None:
        assert "\n" not in error
        assert error.startswith("m.yaml: ")
        return
    assert spec.releases is not None
    SpecifierSet(spec.releases)
    assert spec.max_bytes is None or spec.max_bytes >= 1
    assert parse_spec(spec.to_data()) == spec


@given(st.one_of(st.binary(max_size=400),
                 st.lists(st.one_of(st.text(max_size=40), st.from_regex(r"[a-zA-Z][\w.-]{0,8}( ?[<>=!~]=? ?[0-9.*]{1,6})?"
                                                                         r"( ; extra == '[a-z]+')?", fullmatch=True)),
                          max_size=6).map(lambda reqs: ("Metadata-Version: 2.1\nName: x\n"
                                                        + "".join(f"Requires-Dist: {r}\n" for r in reqs)).encode(
                                                            "utf-8", "surrogatepass"))))
@settings(max_examples=200, deadline=None)
def test_requires_of_reads_any_metadata_without_raising(data):
    for name, specifier in requires_of(data):
        assert name == name.lower()
        assert isinstance(specifier, SpecifierSet)


def test_requires_of_follows_markers_but_not_extras():
    data = (b"Metadata-Version: 2.1\nName: torch\nRequires-Dist: filelock\n"
            b"Requires-Dist: nvidia-cublas-cu12==12.8.4.1; platform_system == \"Linux\"\n"
            b"Requires-Dist: opt-einsum>=3.3; extra == \"opt-einsum\"\nRequires-Dist: not a requirement !!\n")
    assert [(n, str(s)) for n, s in requires_of(data)] == [("filelock", ""), ("nvidia-cublas-cu12", "==12.8.4.1")]
