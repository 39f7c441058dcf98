"""Planted symlinks under a mirror root (issue 22 items 1 and 2): a ``.torchdepot.lock``,
``.torchdepot``, ``.torchdepot/partial``, ``.publish`` (or any other path the tool writes)
that is a symlink is refused in one line naming it by ``verify-mirror`` (with or without
``--repair``), ``mirror`` and ``unbundle``; the file or directory it points at is untouched.
Plus :func:`safe_join`'s fast path (no realpath unless a symlink is on the way)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.mirror_fixture import make_mirror
from torchdepot.cli import main
from torchdepot.errors import UnsafePathError
from torchdepot.ship.bundle import plan_bundle, write_bundle
from torchdepot.store.fsutil import MirrorLock, refuse_planted_links, safe_join
from torchdepot.store.layout import OWN_PATHS

VICTIM = b"the user's precious file\n"


@pytest.fixture
def site(tmp_path) -> Path:
    root = tmp_path / "mirror"
    make_mirror(root)
    shutil.rmtree(root / ".torchdepot" / "fixture-build", ignore_errors=True)
    return root


@pytest.fixture
def a_bundle(tmp_path) -> Path:
    src = tmp_path / "other" / "mirror"
    make_mirror(src)
    parts, _ = write_bundle(plan_bundle(src, None, None, None), tmp_path / "b.tar")
    return parts[0]


def dead_spec(tmp_path: Path, out: Path) -> Path:
    """A spec whose upstream is a closed loopback port: the run must stop at the root's check."""
    spec = tmp_path / "mirror.yaml"
    spec.write_text(yaml.safe_dump({"packages": ["torch"], "accelerators": ["cpu"], "pythons": ["3.11"],
                                    "platforms": ["linux-x86_64"], "upstreams": ["http://127.0.0.1:9/whl"],
                                    "out": str(out)}))
    return spec


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_naming(result, path: Path) -> str:
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert str(path) in lines[0], lines[0]
    assert "symlink" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["verify-mirror", "verify-mirror --repair", "mirror", "unbundle"])
def test_a_lock_file_symlink_never_truncates_its_target(site, tmp_path, a_bundle, command):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    lock = site / ".torchdepot.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    if command.startswith("verify-mirror"):
        result = run(*command.split(), str(site))
    elif command == "mirror":
        result = run("mirror", "--spec", str(dead_spec(tmp_path, site)))
    else:
        result = run("unbundle", str(a_bundle), "--to", str(site))
    one_line_naming(result, lock)
    assert victim.read_bytes() == VICTIM
    assert lock.is_symlink()


@pytest.mark.parametrize("rel", [".torchdepot", ".torchdepot/partial", ".publish", "packages", "targets",
                                 ".torchdepot/publish.json", "manifest.json"])
@pytest.mark.parametrize("command", ["verify-mirror", "verify-mirror --repair", "unbundle", "mirror",
                                     "mirror --dry-run"])
def test_a_planted_state_symlink_is_refused_naming_it(site, tmp_path, a_bundle, rel, command):
    """The real thing is moved outside the root and a link left in its place: a run would
    write state, staging, downloads or the next index there (and verify said ok)."""
    own = site / rel
    outside = tmp_path / "outside" / rel.replace("/", "_")
    outside.parent.mkdir(parents=True)
    if own.exists():
        shutil.move(str(own), str(outside))
    else:
        outside.mkdir() if "." not in Path(rel).name[1:] else outside.write_text("{}")
    if rel == ".publish":  # keep whl pointing into the (moved) index, as a planted root would
        pass
    own.parent.mkdir(parents=True, exist_ok=True)
    own.symlink_to(outside, target_is_directory=outside.is_dir())
    before = sorted(str(p.relative_to(outside.parent)) + str(p.stat().st_size if p.is_file() else "")
                    for p in outside.parent.rglob("*"))
    if command.startswith("verify-mirror"):
        result = run(*command.split(), str(site))
    elif command.startswith("mirror"):
        result = run("mirror", "--spec", str(dead_spec(tmp_path, site)), *command.split()[1:])
    else:
        result = run("unbundle", str(a_bundle), "--to", str(site))
    one_line_naming(result, own)
    after = sorted(str(p.relative_to(outside.parent)) + str(p.stat().st_size if p.is_file() else "")
                   for p in outside.parent.rglob("*"))
    assert after == before


def test_whl_must_name_a_generation_and_generations_are_real_dirs(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(site / "whl", elsewhere)
    whl = site / "whl"
    good = os.readlink(whl)
    whl.unlink()
    whl.symlink_to(elsewhere)
    with pytest.raises(UnsafePathError, match="not to an index generation"):
        refuse_planted_links(site)
    one_line_naming(run("verify-mirror", str(site)), whl)
    whl.unlink()
    whl.symlink_to(good)
    gen = site / Path(good).parent
    shutil.move(str(gen), str(tmp_path / "gen"))
    gen.symlink_to(tmp_path / "gen")
    one_line_naming(run("verify-mirror", str(site)), gen)


def test_a_clean_mirror_still_verifies_and_own_paths_cover_the_state(site):
    refuse_planted_links(site)
    assert run("verify-mirror", str(site)).exit_code == 0
    for rel in (".torchdepot", ".torchdepot/partial", ".publish", ".torchdepot.lock", "manifest.json"):
        assert rel in OWN_PATHS


def test_read_only_lock_writes_nothing(site):
    lock = site / ".torchdepot.lock"
    lock.unlink(missing_ok=True)
    lock.write_text("")
    mtime = lock.stat().st_mtime_ns
    with MirrorLock(site, read_only=True):
        pass
    assert lock.read_text() == ""
    assert lock.stat().st_mtime_ns == mtime


def test_safe_join_fast_path_and_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "packages" / "torch").mkdir(parents=True)
    assert safe_join(root, "packages/torch", "x.whl") == root / "packages/torch/x.whl"
    assert safe_join(root, "packages/new/deeper/x.whl") == root / "packages/new/deeper/x.whl"
    assert safe_join(root) == root
    (tmp_path / "out").mkdir()
    (root / "packages" / "evil").symlink_to(tmp_path / "out")
    with pytest.raises(UnsafePathError, match="escapes"):
        safe_join(root, "packages/evil/x.whl")
    (root / "packages" / "torch" / "f").symlink_to(tmp_path / "out" / "passwd")
    with pytest.raises(UnsafePathError, match="escapes"):
        safe_join(root, "packages/torch/f")
    (root / "packages" / "alias").symlink_to("torch")  # inside the root: followed, allowed
    assert safe_join(root, "packages/alias/x.whl") == (root / "packages/torch/x.whl").resolve()
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\\b", "C:x", "a\x00"):
        with pytest.raises(UnsafePathError):
            safe_join(root, bad)
