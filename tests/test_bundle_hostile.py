"""Unbundle against crafted bundles: a member's role must match its path, a late failure
publishes nothing, decompression is bounded by what the bundle declares, and every malformed
bundle document or manifest.json is one line (hypothesis fuzz: only TorchdepotError)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import torchdepot.ship.bundle.unbundle  # noqa: F401  (the module, for monkeypatching)
from tests.kit.zeros import Zeros
from tests.mirror_fixture import make_mirror
from tests.test_bundle import bundle, snapshot
from torchdepot.cli import main
from torchdepot.errors import IntegrityError, TorchdepotError
from torchdepot.ship.bundle import (
    BUNDLE_HEAD,
    BUNDLE_MANIFEST,
    BundleError,
    parse_doc,
    parse_head,
    unbundle,
)

unbundle_mod = sys.modules["torchdepot.ship.bundle.unbundle"]
from torchdepot.store import manifest as mf
from torchdepot.sync.check import verify_mirror

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "packages/filelock/filelock-3.16.1-py3-none-any.whl"


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "site-a" / "mirror"
    make_mirror(root)
    return root


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def _reforge(src_bundle: Path, out: Path, edit) -> Path:
    """Rewrite a real bundle: ``edit(members: dict[path, bytes], doc, head)`` changes it;
    the head and the manifest's hashes are kept consistent with the new members."""
    members = _members(src_bundle)
    head = json.loads(members[0][1])
    doc = json.loads(members[-1][1])
    data = {m.name: d for m, d in members[1:-1]}
    edit(data, doc, head)
    return _write(out, [(BUNDLE_HEAD, json.dumps(head).encode()), *data.items(),
                        (BUNDLE_MANIFEST, json.dumps(doc).encode())])


def _file(path: str, data: bytes, role: str) -> dict:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "role": role}


# -- roles ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "role"), [
    (WHEEL, "index"),                        # replace a mirrored wheel by calling it an index page
    (WHEEL, "lock"),
    ("packages/filelock/evil-1.0-py3-none-any.whl", "index"),
    ("conda/pytorch-fixture/linux-64/repodata.json", "file"),
    ("whl/cpu/torch/index.html", "file"),
    ("notes/readme.txt", "index"),           # no member may live outside the layout
    ("manifest.json", "index"),
])
def test_role_must_match_path(src, tmp_path, path, role):
    dest = tmp_path / "dest"
    make_mirror(dest, envs=tmp_path / "envs-dest")
    before = snapshot(dest)
    good = bundle(src, tmp_path / "good.tar")[0]
    evil = b"attacker bytes"

    def edit(data, doc, head):
        data[path] = evil
        doc["files"] = [f for f in doc["files"] if f["path"] != path] + [_file(path, evil, role)]
        head["files"] = [f for f in head["files"] if f["path"] != path] + [
            {"path": path, "size": len(evil), "role": role}]

    forged = _reforge(good, tmp_path / "forged.tar", edit)
    with pytest.raises(IntegrityError, match=r"labelled|may not replace|does not describe"):
        unbundle(forged, dest)
    assert snapshot(dest) == before
    assert verify_mirror(dest).ok


def test_index_page_cannot_overwrite_a_listed_package_even_with_index_role(src, tmp_path):
    """Defence in depth: even at a path whose role is 'index', a path the mirror lists as a
    package file is never replaced by a page."""
    dest = tmp_path / "dest"
    make_mirror(dest, envs=tmp_path / "envs-dest")
    m = mf.load(dest)
    page = "whl/cpu/filelock/index.html"
    m.files.append(mf.FileEntry(page, hashlib.sha256(b"p").hexdigest(), 1, "other"))
    mf.save(dest, m)
    good = bundle(src, tmp_path / "good.tar")[0]

    def edit(data, doc, head):
        data[page] = b"<html>evil</html>"
        for group in (doc["files"], head["files"]):
            for f in group:
                if f["path"] == page:
                    f.update(_file(page, data[page], "index") if "sha256" in f else
                             {"size": len(data[page])})

    forged = _reforge(good, tmp_path / "forged.tar", edit)
    with pytest.raises(IntegrityError, match="may not replace"):
        unbundle(forged, dest)


# -- one transaction -----------------------------------------------------------------------

@pytest.mark.parametrize("fail_at", ["landing", "manifest", "third-put"])
def test_late_failure_publishes_nothing(src, tmp_path, monkeypatch, fail_at):
    dest = tmp_path / "dest"
    make_mirror(dest, envs=tmp_path / "envs-dest")
    # a package the destination lacks, so the bundle really adds files
    extra = dest / WHEEL
    m = mf.load(dest)
    m.files = [f for f in m.files if not f.path.startswith("packages/filelock/")]
    for p in extra.parent.iterdir():
        p.unlink()
    mf.save(dest, m)
    before = snapshot(dest)
    whl_before = os.readlink(dest / "whl")
    out = bundle(src, tmp_path / "b.tar")[0]

    real_put = unbundle_mod._Commit.put
    calls = []

    def put(self, src_path, target):
        calls.append(target)
        if (fail_at == "manifest" and target.name == "manifest.json") or (fail_at == "third-put" and len(calls) == 3):
            raise OSError(28, "No space left on device (injected)")
        return real_put(self, src_path, target)

    def landing(*_a, **_k):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(unbundle_mod._Commit, "put", put)
    if fail_at == "landing":
        monkeypatch.setattr("torchdepot.site.landing.render", landing)
    with pytest.raises(OSError, match="injected"):
        unbundle(out, dest)
    assert snapshot(dest) == before, "a late failure must publish nothing"
    assert os.readlink(dest / "whl") == whl_before
    assert not extra.exists()
    assert not [p for p in (dest / ".torchdepot").iterdir() if p.name.startswith("stage-")]
    monkeypatch.undo()
    unbundle(out, dest)  # and the same bundle then goes in cleanly
    assert extra.is_file()
    assert verify_mirror(dest).ok


def test_killed_run_staging_is_reported_then_cleaned_by_the_next_unbundle(src, tmp_path):
    out = bundle(src, tmp_path / "b.tar")[0]
    dest = tmp_path / "dest"
    unbundle(out, dest)
    stale = dest / ".torchdepot" / "stage-unbundle-999999-abcd"
    (stale / "packages").mkdir(parents=True)
    (stale / "packages" / "half.whl").write_bytes(b"x" * 100)
    rep = verify_mirror(dest)
    assert [(p.kind, p.path) for p in rep.problems] == [("staging", ".torchdepot/stage-unbundle-999999-abcd")]
    unbundle(out, dest)
    assert not stale.exists()
    assert verify_mirror(dest).ok


# -- bounds --------------------------------------------------------------------------------

def _zstd_bomb(path: Path, members: list[tuple[str, int]], head: dict | None = None, gib: float = 1.0) -> Path:
    """A zstd tar whose members are runs of zeros (``size`` bytes each): tiny on disk."""
    cctx = zstandard.ZstdCompressor(level=1)
    with open(path, "wb") as fh, cctx.stream_writer(fh, closefd=False) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if head is not None:
            blob = json.dumps(head).encode()
            ti = tarfile.TarInfo(BUNDLE_HEAD)
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))
        for name, size in members:
            ti = tarfile.TarInfo(name)
            ti.size = size
            tar.addfile(ti, Zeros(size))
    return path


def _staged_bytes(dest: Path) -> int:
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())


def test_small_zstd_bundle_cannot_stage_a_gigabyte(tmp_path):
    bomb = _zstd_bomb(tmp_path / "bomb.tar.zst", [("packages/a/a-1.0-py3-none-any.whl", 1 << 30)])
    assert bomb.stat().st_size < 64 * 1024, bomb.stat().st_size
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="expands past .* declares"):
        unbundle(bomb, dest)
    assert time.monotonic() - t0 < 5
    assert _staged_bytes(dest) == 0
    assert snapshot(dest) == {}


def test_member_larger_than_its_head_declares_is_refused_before_staging(tmp_path):
    name = "packages/a/a-1.0-py3-none-any.whl"
    head = {"format": "torchdepot-bundle-head", "version": 1, "files": [{"path": name, "size": 10, "role": "file"}]}
    bomb = _zstd_bomb(tmp_path / "lie.tar.zst", [(name, 200 << 20)], head=head)
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match="not declared with this size"):
        unbundle(bomb, dest)
    assert _staged_bytes(dest) == 0


def test_head_that_declares_a_gigabyte_is_still_capped_by_the_archive_size(tmp_path):
    name = "packages/a/a-1.0-py3-none-any.whl"
    head = {"format": "torchdepot-bundle-head", "version": 1, "files": [{"path": name, "size": 1 << 30, "role": "file"}]}
    bomb = _zstd_bomb(tmp_path / "honest-bomb.tar.zst", [(name, 1 << 30)], head=head)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match="expands past"):
        unbundle(bomb, dest)
    assert _staged_bytes(dest) == 0


def test_real_zstd_bundle_with_head_goes_in(src, tmp_path):
    parts = bundle(src, tmp_path / "m.tar.zst", zstd=True)
    with zstandard.open(parts[0], "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        first = next(iter(tar))
        assert first.name == BUNDLE_HEAD
    unbundle(parts[0], tmp_path / "d")
    assert verify_mirror(tmp_path / "d").ok


# -- one-line errors -----------------------------------------------------------------------

def _doc_bundle(tmp_path: Path, doc: object) -> Path:
    return _write(tmp_path / "doc.tar", [(BUNDLE_MANIFEST, json.dumps(doc).encode())])


GOOD_FILE = _file("packages/a/a-1.0-py3-none-any.whl", b"a", "file")


@pytest.mark.parametrize("doc", [
    [],
    [{"format": "torchdepot-bundle"}],
    {"format": "torchdepot-bundle", "version": 1, "files": [{**GOOD_FILE, "path": ["packages", "a"]}], "manifest": {}},
    {"format": "torchdepot-bundle", "version": 1, "files": [], "targets": 7, "manifest": {}},
    {"format": "torchdepot-bundle", "version": 1, "files": {"a": 1}, "manifest": {}},
    {"format": "torchdepot-bundle", "version": 1, "files": [{**GOOD_FILE, "size": "1"}], "manifest": {}},
    {"format": "torchdepot-bundle", "version": 1, "files": [{**GOOD_FILE, "role": "root"}], "manifest": {}},
    {"format": "torchdepot-bundle", "version": 1, "files": [], "manifest": []},
    {"format": "torchdepot-bundle", "version": 1, "files": [],
     "manifest": {"format": "torchdepot-manifest", "version": 1, "files": [{"path": 3}], "targets": []}},
])
def test_malformed_bundle_documents_are_one_line(tmp_path, doc):
    bad = _doc_bundle(tmp_path, doc)
    r = CliRunner().invoke(main, ["unbundle", str(bad), "--to", str(tmp_path / "d")])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("torchdepot: error: "), r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output


def test_deeply_nested_documents_are_one_line(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    bad = tmp_path / "deep.tar"
    _write(bad, [(BUNDLE_MANIFEST, deep.encode())])
    r = CliRunner().invoke(main, ["unbundle", str(bad), "--to", str(tmp_path / "d")])
    assert r.exit_code == 1
    assert "nested too deeply" in r.output
    assert len(r.output.strip().splitlines()) == 1
    # a mirror whose manifest.json is nested that deep: verify-mirror says so in one line
    root = tmp_path / "m"
    root.mkdir()
    (root / "manifest.json").write_text('{"format": "torchdepot-manifest", "version": 1, "files": ' + deep + "}")
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "verify-mirror", str(root)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 1, proc.stderr[-500:]
    assert proc.stderr.startswith("torchdepot: error:"), proc.stderr[-500:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "nested too deeply" in proc.stderr


# -- fuzz ------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
_path = st.sampled_from(["packages/a/a.whl", "whl/index.html", "envs/x/l", "../x", "", "conda/c/linux-64/repodata.json"])
_file_entry = st.fixed_dictionaries({}, optional={
    "path": _path | _json, "size": st.integers(-2, 10**30) | _json, "role": st.sampled_from(["file", "lock", "index", "x"]) | _json,
    "sha256": st.just("a" * 64) | _json, "kind": _json})
_manifest_doc = st.fixed_dictionaries(
    {"format": st.just("torchdepot-manifest") | _json, "version": st.just(1) | _json},
    optional={"files": st.lists(st.fixed_dictionaries({}, optional={
        "path": _path | _json, "sha256": st.just("a" * 64) | _json, "size": st.integers(-1, 10) | _json,
        "kind": st.just("wheel") | _json, "url": st.none() | _json}), max_size=3) | _json,
        "targets": st.lists(st.fixed_dictionaries({}, optional={
            "id": st.just("cpu-py311-linux-x86_64") | _json, "kind": st.just("pip") | _json,
            "accelerator": st.just("cpu"), "python": st.just("3.11"), "platform": _json,
            "packages": st.lists(_json | st.fixed_dictionaries({"name": st.just("a"), "version": st.just("1"),
                                                                "path": _path, "extras": _json}), max_size=2) | _json}),
            max_size=2) | _json,
        "spec": _json})
_bundle_doc = st.fixed_dictionaries(
    {"format": st.just("torchdepot-bundle") | _json, "version": st.just(1) | _json},
    optional={"files": st.lists(_file_entry, max_size=4) | _json, "targets": st.lists(st.text(max_size=5)) | _json,
              "incremental": st.booleans() | _json, "manifest": _manifest_doc | _json})


def _only_torchdepot_errors(fn, data) -> None:
    error = ""
    try:
        fn(data)
    except TorchdepotError as exc:
        error = str(exc)
    assert "\n" not in error


@settings(deadline=None)
@given(doc=_bundle_doc | _json)
def test_fuzz_bundle_document(doc):
    _only_torchdepot_errors(parse_doc, json.dumps(doc).encode())
    _only_torchdepot_errors(parse_head, json.dumps({**doc, "format": "torchdepot-bundle-head"}
                                                   if isinstance(doc, dict) else doc).encode())


@settings(deadline=None)
@given(doc=_manifest_doc | _json)
def test_fuzz_manifest_json(doc):
    _only_torchdepot_errors(mf.Manifest.from_json, json.dumps(doc))
    _only_torchdepot_errors(mf.Manifest.from_json, json.dumps(doc).encode()[:-1])  # truncated


@settings(deadline=None)
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes(raw):
    _only_torchdepot_errors(parse_doc, raw)
    _only_torchdepot_errors(mf.Manifest.from_json, raw)


def test_bundle_file_urls_are_dropped_so_repair_cannot_be_steered(src, tmp_path):
    good = bundle(src, tmp_path / "good.tar")[0]

    def edit(data, doc, head):
        for f in doc["manifest"]["files"]:
            f["url"] = "file:///dev/zero"

    forged = _reforge(good, tmp_path / "forged.tar", edit)
    dest = tmp_path / "dest"
    unbundle(forged, dest)
    assert all(f.url is None for f in mf.load(dest).files)
    (dest / WHEEL).unlink()
    rep = verify_mirror(dest, repair=True)
    assert [(p.kind, p.path) for p in rep.unrepaired] == [("missing", WHEEL)]
    assert "no url in manifest.json" in rep.unrepaired[0].detail
