"""bundle / unbundle: full, zstd, split, targets subset, incremental merge, tampering,
hostile archives, conflicts, CLI."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from tests.mirror_fixture import CPU_ID, make_mirror
from torchdepot.cli import main
from torchdepot.errors import IntegrityError, UnsafePathError
from torchdepot.ship.bundle import (
    BUNDLE_MANIFEST,
    BundleError,
    bundle_parts,
    parse_size,
    plan_bundle,
    unbundle,
    write_bundle,
)
from torchdepot.store import manifest as mf


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "site-a" / "mirror"
    make_mirror(root)
    return root


def envs_of(root: Path) -> Path:
    return root.parent / "envs"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every visible file (whl/ followed), excluding torchdepot's own state."""
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                out[os.path.normpath(os.path.join(rel, f))] = (Path(dirpath) / f).read_bytes()
    return out


def mirror_view(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(root).items() if k.split("/")[0] in ("packages", "whl", "conda", "targets")}


def bundle(src: Path, out: Path, **kw) -> list[Path]:
    targets = kw.pop("targets", None)
    since = kw.pop("since", None)
    plan = plan_bundle(src, targets, envs_of(src), since)
    parts, _ = write_bundle(plan, out, **kw)
    return parts


def test_full_roundtrip_into_empty_dir(src, tmp_path):
    parts = bundle(src, tmp_path / "m.tar")
    assert parts == [tmp_path / "m.tar"]
    with tarfile.open(parts[0]) as tar:
        members = tar.getmembers()
    assert all(m.isreg() for m in members), "no links/dirs/devices in a bundle"
    assert members[-1].name == BUNDLE_MANIFEST
    names = [m.name for m in members]
    assert names.index("packages/torch/torch-2.13.0+cpu-py3-none-any.whl") < names.index("whl/cpu/torch/index.html")
    dest = tmp_path / "site-b" / "mirror"
    report = unbundle(parts[0], dest)
    assert mirror_view(dest) == mirror_view(src)
    assert (dest / "whl").is_symlink()
    assert (dest / "whl" / "cpu" / "torch" / "index.html").is_file()
    assert (dest / "envs" / CPU_ID / "requirements.lock").read_bytes() == (envs_of(src) / CPU_ID / "requirements.lock").read_bytes()
    assert mf.load(dest).to_json() == mf.load(src).to_json()
    assert not [p for p in (dest / ".torchdepot").iterdir() if p.name.startswith("unbundle-")], "staging cleaned"
    assert sorted(report.targets) == sorted({t.id for t in mf.load(src).targets})


def test_zstd_split_parts_and_stale_parts(src, tmp_path):
    out = tmp_path / "usb" / "m.tar.zst"
    out.parent.mkdir()
    for i in (1, 2, 40, 41, 999):  # leftovers from an older, bigger bundle must not be joined in
        out.with_name(f"m.tar.zst.{i:03d}").write_bytes(b"junk")
    parts = bundle(src, out, zstd=True, split=1024)
    assert len(parts) > 1
    assert all(p.stat().st_size <= 1024 for p in parts)
    assert parts[0].name == "m.tar.zst.000"
    assert not out.exists()
    assert not out.with_name("m.tar.zst.040").exists()
    assert parts[0].read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert bundle_parts(out) == parts == bundle_parts(parts[0])
    dest = tmp_path / "b"
    unbundle(out, dest)
    assert mirror_view(dest) == mirror_view(src)


def _member_data_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def test_tampered_byte_fails_naming_file_and_publishes_nothing(src, tmp_path):
    out = tmp_path / "m.tar"
    bundle(src, out)
    victim = "packages/filelock/filelock-3.16.1-py3-none-any.whl"
    off = _member_data_offset(out, victim) + 100
    data = bytearray(out.read_bytes())
    data[off] ^= 0x01
    out.write_bytes(bytes(data))

    empty = tmp_path / "empty"
    with pytest.raises(IntegrityError, match=r"packages/filelock/filelock-3\.16\.1-py3-none-any\.whl: sha256"):
        unbundle(out, empty)
    assert snapshot(empty) == {}

    # into an existing mirror: it stays exactly as it was
    existing = tmp_path / "existing"
    make_mirror(existing, envs=tmp_path / "envs-x")
    before = snapshot(existing)
    with pytest.raises(IntegrityError, match="filelock"):
        unbundle(out, existing)
    assert snapshot(existing) == before

    r = CliRunner().invoke(main, ["unbundle", str(out), "--to", str(tmp_path / "cli")])
    assert r.exit_code == 1
    assert "torchdepot: error: packages/filelock/filelock-3.16.1-py3-none-any.whl" in r.output
    assert "Traceback" not in r.output


def test_tampered_manifest_entry_and_truncation(src, tmp_path):
    out = tmp_path / "m.tar"
    bundle(src, out)
    with tarfile.open(out) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    # rewrite the bundle manifest to claim a different hash for the torch wheel
    doc = json.loads(members[-1][1])
    for f in doc["files"]:
        if f["path"].endswith("+cpu-py3-none-any.whl"):
            f["sha256"] = "0" * 64
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as tar:
        for m, data in members[:-1]:
            tar.addfile(m, io.BytesIO(data))
        blob = json.dumps(doc).encode()
        ti = tarfile.TarInfo(BUNDLE_MANIFEST)
        ti.size = len(blob)
        tar.addfile(ti, io.BytesIO(blob))
    with pytest.raises(IntegrityError, match=r"torch-2\.13\.0\+cpu-py3-none-any\.whl"):
        unbundle(forged, tmp_path / "d1")
    assert snapshot(tmp_path / "d1") == {}
    # missing parts: the bundle manifest at the end is cut off
    parts = bundle(src, tmp_path / "s.tar", split=2048)
    cut = _member_data_offset(out, BUNDLE_MANIFEST) // 2048  # same layout as m.tar
    for p in parts[cut:]:
        p.unlink()
    with pytest.raises(BundleError, match="truncated|not a readable"):
        unbundle(tmp_path / "s.tar", tmp_path / "d2")
    assert snapshot(tmp_path / "d2") == {}


def _hostile(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    p = tmp_path / f"hostile-{abs(hash(member.name)) % 10**8}-{member.type!r}.tar"
    with tarfile.open(p, "w") as tar:
        ok = tarfile.TarInfo("packages/a/ok.whl")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if member.isreg():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return p


@pytest.mark.parametrize("make", [
    lambda: tarfile.TarInfo("../evil.txt"),
    lambda: tarfile.TarInfo("packages/../../evil.txt"),
    lambda: tarfile.TarInfo("/tmp/evil-abs.txt"),
    lambda: tarfile.TarInfo(".torchdepot/hashes.json"),
    lambda: _typed("whl", tarfile.SYMTYPE, linkname="/etc"),
    lambda: _typed("packages/a/link.whl", tarfile.LNKTYPE, linkname="packages/a/ok.whl"),
    lambda: _typed("packages/a/dev", tarfile.CHRTYPE),
    lambda: _typed("packages/a/fifo", tarfile.FIFOTYPE),
])
def test_hostile_members_refused(tmp_path, make):
    member = make()
    bad = _hostile(tmp_path, member)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafePathError, match="refused"):
        unbundle(bad, dest)
    assert snapshot(dest) == {}
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-abs.txt").exists()


def _typed(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    return ti


def test_targets_subset(src, tmp_path):
    out = tmp_path / "cpu.tar"
    bundle(src, out, targets=[CPU_ID])
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert "packages/torch/torch-2.13.0+cpu-py3-none-any.whl" in names
    assert "whl/cpu/torch/index.html" in names
    assert "conda/pytorch-fixture/linux-64/repodata.json" in names
    assert not [n for n in names if "cu126" in n or "cu118" in n]
    dest = tmp_path / "d"
    unbundle(out, dest)
    m = mf.load(dest)
    assert {(t.kind, t.id) for t in m.targets} == {("pip", CPU_ID), ("conda", CPU_ID)}
    with pytest.raises(BundleError, match="'cu999-py311-linux-x86_64' is not in"):
        plan_bundle(src, ["cu999-py311-linux-x86_64"])


def test_incremental_since_merges_into_existing(src, tmp_path):
    dest = tmp_path / "site-b"
    first = tmp_path / "first.tar"
    bundle(src, first, targets=[CPU_ID])
    unbundle(first, dest)
    update = tmp_path / "update.tar.zst"
    bundle(src, update, since=dest / "manifest.json", zstd=True)
    import zstandard

    with zstandard.open(update, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        names = [m.name for m in tar]
    assert "packages/torch/torch-2.13.0+cpu-py3-none-any.whl" not in names, "the other side has it"
    assert "packages/torch/torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl" in names
    # an incremental bundle cannot seed an empty mirror
    with pytest.raises(IntegrityError, match="incremental"):
        unbundle(update, tmp_path / "empty")
    assert snapshot(tmp_path / "empty") == {}
    old_gen = os.readlink(dest / "whl")
    report = unbundle(update, dest)
    assert report.incremental
    assert os.readlink(dest / "whl") != old_gen
    assert mirror_view(dest) == mirror_view(src)
    assert mf.load(dest).to_json() == mf.load(src).to_json()
    # re-applying the same update is harmless
    unbundle(update, dest)
    assert mirror_view(dest) == mirror_view(src)


def test_conflicting_package_is_not_replaced(src, tmp_path):
    out = tmp_path / "m.tar"
    bundle(src, out)
    dest = tmp_path / "d"
    (dest / ".torchdepot").mkdir(parents=True)  # a mirror (a plain dir of other files is refused outright)
    victim = dest / "packages/filelock/filelock-3.16.1-py3-none-any.whl"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"different bytes")
    with pytest.raises(IntegrityError, match="filelock-3.16.1-py3-none-any.whl: .* different file"):
        unbundle(out, dest)
    assert victim.read_bytes() == b"different bytes"
    assert not (dest / "manifest.json").exists()


def test_damaged_mirror_is_not_bundled(src, tmp_path):
    wheel = src / "packages/filelock/filelock-3.16.1-py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[10] ^= 1
    wheel.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="filelock-3.16.1-py3-none-any.whl: sha256"):
        bundle(src, tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
    assert not list(tmp_path.glob("x.tar*"))


def test_cli_bundle_unbundle(src, tmp_path):
    out = tmp_path / "cli.tar.zst"
    r = CliRunner().invoke(main, ["bundle", "--mirror", str(src), "--envs", str(envs_of(src)), "--targets", CPU_ID,
                                  "--zstd", "--split", "2K", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "cli.tar.zst.000" in r.output
    r = CliRunner().invoke(main, ["unbundle", str(out), "--to", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "published" in r.output
    assert (tmp_path / "d" / "envs" / CPU_ID / "requirements.lock").is_file()
    r = CliRunner().invoke(main, ["bundle", "--mirror", str(src), "--split", "lots", "--out", str(tmp_path / "y")])
    assert r.exit_code == 1
    assert "--split 'lots'" in r.output


@given(st.integers(1, 10**6), st.sampled_from(["", "K", "M", "G", "k", "Gi", "GiB", "MB"]))
def test_parse_size(n, unit):
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit[:1].upper()]
    assert parse_size(f"{n}{unit}") == n * mult


def test_parse_size_rejects():
    for bad in ("", "G", "-1", "4X", "0"):
        with pytest.raises(BundleError):
            parse_size(bad)


# -- PEP 691: every index.json twin travels with its index.html ------------------------------

def republish_pages(root: Path) -> None:
    """Replace the fixture's hand-written pages by the sync's own (HTML + PEP 691 JSON twins)."""
    from torchdepot.store.pages import IndexFile, build_pages, publish

    m = mf.load(root)
    by_path = m.by_path()
    variants: dict[str, list[IndexFile]] = {}
    for t in m.targets:
        if t.kind != "pip":
            continue
        for p in t.packages:
            e, meta = by_path[p.path], by_path.get(p.path + ".metadata")
            variants.setdefault(t.accelerator, []).append(IndexFile(
                e.project, p.path.rsplit("/", 1)[1], p.path, e.sha256, p.requires_python,
                meta.sha256 if meta else None, size=e.size, upload_time="2026-01-15T08:00:00Z"))
    publish(root, build_pages(variants))


def pages(root: Path, name: str) -> dict[str, bytes]:
    whl = root / "whl"
    return {str(p.relative_to(whl)): p.read_bytes() for p in sorted(whl.rglob(name))}


@pytest.mark.parametrize("targets", [[CPU_ID], None], ids=["selected-targets", "whole-mirror"])
def test_json_twins_round_trip(src, tmp_path, targets):
    republish_pages(src)
    html_src, json_src = pages(src, "index.html"), pages(src, "index.json")
    assert {k.replace(".html", ".json") for k in html_src} == set(json_src)
    assert len(json_src) > 5
    out = tmp_path / "m.tar.zst"
    bundle(src, out, targets=targets, zstd=True)
    with tarfile.open(fileobj=__import__("zstandard").open(out, "rb"), mode="r|") as tar:
        names = {m.name for m in tar}
    carried = {n for n in names if n.startswith("whl/") and n.endswith("/index.html") or n == "whl/index.html"}
    assert carried
    assert {n.replace(".html", ".json") for n in carried} <= names
    from torchdepot.ship.bundle.model import role_of

    assert {role_of(n) for n in names if n.endswith("index.json")} == {"index"}  # pages, never packages
    dest = tmp_path / "d"
    unbundle(out, dest)
    html_dest, json_dest = pages(dest, "index.html"), pages(dest, "index.json")
    # the unbundled mirror serves index.json beside every index.html, byte-identical to the source's
    assert {k.replace(".html", ".json") for k in html_dest} == set(json_dest)
    assert json_dest == {k: json_src[k] for k in json_dest}
    assert html_dest == {k: html_src[k] for k in html_dest}
    assert "index.json" in json_dest
    assert "cpu/torch/index.json" in json_dest
    if targets:
        assert not [k for k in json_dest if k.startswith(("cu126/", "cu118/"))]
    from torchdepot.sync.check import verify_mirror

    rep = verify_mirror(dest)
    assert rep.ok, rep.problems
