"""Tombstones (issue 24 item 3): upstream deletes a file a target pins, or re-publishes its
name with other bytes; the mirror keeps its copy while a target references it, says so in one
line per file, records it in the manifest and lists it in ``status``; an old lock still verifies.

The upstream is a loopback FaultServer shaped like download.pytorch.org: a stand-in torch
(importable, so ``verify`` installs and smoke-tests it) pinning ``nvidia-cudnn-cu12==9.1.0.70``,
the dependency that the cu124 index once dropped.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.faultserver import FaultServer
from tests.kit.lockmirror import (
    FAKE_TORCH,
    cli,
    private_tmp_fixture,  # noqa: F401 (autouse)
)
from tests.kit.upstream import pep503
from tests.kit.wheels import BuiltWheel, wheel_bytes
from tests.loopback_upstream import mirror_env, run_mirror, write_spec
from torchdepot.errors import TorchdepotError
from torchdepot.sources.links import Link
from torchdepot.sources.pep503 import parse_html
from torchdepot.sources.pep691 import parse_json
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import safe_join
from torchdepot.store.layout import changed_bytes_path
from torchdepot.sync import lifecycle
from torchdepot.sync.check import verify_mirror
from torchdepot.sync.tombstones import RETIRED_REASON, Keeper, listing, retire, settle

ROOT = Path(__file__).resolve().parent.parent
TARGET = "cpu-py311-linux-x86_64"
CUDNN = "nvidia-cudnn-cu12"
PAGES = ["/whl/cpu", "/simple"]


def cudnn(version: str, seed: int = 0) -> BuiltWheel:
    return wheel_bytes(CUDNN, version, module="nvidia_cudnn", payload=bytes([seed]) * 2000)


def torch() -> BuiltWheel:
    return wheel_bytes("torch", "2.5.0+cpu", requires=(f"{CUDNN}==9.1.0.70",),
                       files={"torch/__init__.py": FAKE_TORCH.format(version="2.5.0+cpu", cuda=None)})


def serve(server: FaultServer, *wheels: BuiltWheel) -> None:
    pep503(list(wheels), pages=PAGES, files="/whl/files").serve(server)


def delete(server: FaultServer, wheel: BuiltWheel, *remaining: BuiltWheel) -> None:
    """Upstream drops ``wheel``: its project pages list only ``remaining``, the file is gone."""
    pep503(list(remaining), pages=PAGES, files="/whl/files", indexes=False).serve(server)
    with server._lock:
        for path in (f"/whl/files/{wheel.filename}", f"/whl/files/{wheel.filename}.metadata"):
            server.files.pop(path, None)


def td(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchdepot", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT), env=mirror_env("http://127.0.0.1:9", Path("/nonexistent")))


@pytest.mark.slow  # several CLI syncs (4-7 s)
def test_deleted_pin_is_kept_reported_listed_and_an_old_lock_still_installs(tmp_path):
    old, new = cudnn("9.1.0.70"), cudnn("9.2.0")
    with FaultServer() as server:
        serve(server, torch(), old, new)
        env = mirror_env(server.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        first = run_mirror(spec, env)
        assert first.returncode == 0, first.stderr
        assert "tombstone" not in first.stderr
        assert cli("lock", "--mirror", out, "--out", tmp_path / "envs").exit_code == 0

        delete(server, old, new)
        server.reset_counters()
        second = run_mirror(spec, env)
        assert second.returncode == 0, second.stderr
        path = f"packages/{CUDNN}/{old.filename}"
        line = f"tombstone: {CUDNN} 9.1.0.70 ({path}): upstream no longer lists it; kept for {TARGET}"
        assert [ln for ln in second.stderr.splitlines() if ln.startswith("tombstone:")] == [line]
        assert server.hits[f"/whl/files/{old.filename}"] == 0, "the mirror's own copy: nothing downloaded"

        manifest = mf.load(out)
        assert [(t.path, t.reason, t.targets) for t in manifest.tombstones] == [(path, "deleted", (TARGET,))]
        entry = manifest.by_path()[path]
        assert entry.sha256 == old.sha256
        assert entry.url == f"{server.url}/whl/files/{old.filename}", "where the bytes came from, not the file: offer"
        assert any(p.path == path for t in manifest.targets for p in t.packages)
        assert verify_mirror(out).ok
        assert td("verify-mirror", out).returncode == 0

        status = td("status", out)
        assert status.returncode == 0, status.stderr
        assert f"  {line}" in status.stdout.splitlines()
        doc = json.loads(td("status", out, "--json").stdout)
        assert doc["tombstones"] == [{"path": path, "project": CUDNN, "version": "9.1.0.70", "reason": "deleted",
                                      "targets": [TARGET], "replaced_by": None}]

        # the lock written before the deletion installs from the mirror alone, hash-checked
        res = cli("verify", tmp_path / "envs" / TARGET, "--mirror", out, "--json")
        assert res.exit_code == 0, res.output
        result = json.loads(res.stdout)["results"][0]
        assert result["result"] == "pass", result
        assert result["mode"] == "installed"

        # upstream restores the file with the same bytes: no tombstone any more
        serve(server, torch(), old, new)
        third = run_mirror(spec, env)
        assert third.returncode == 0, third.stderr
        assert "tombstone" not in third.stderr
        assert mf.load(out).tombstones == []
        assert verify_mirror(out).ok


@pytest.mark.slow  # several CLI syncs (4-7 s)
def test_changed_bytes_go_to_a_new_path_and_the_old_path_stays_while_referenced(tmp_path):
    old = cudnn("9.1.0.70")
    with FaultServer() as server:
        serve(server, torch(), old)
        env = mirror_env(server.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        assert run_mirror(spec, env).returncode == 0
        old_bytes = (out / f"packages/{CUDNN}/{old.filename}").read_bytes()

        changed = cudnn("9.1.0.70", seed=7)
        assert changed.filename == old.filename
        assert changed.sha256 != old.sha256
        serve(server, changed)
        second = run_mirror(spec, env)
        assert second.returncode == 0, second.stderr
        path = f"packages/{CUDNN}/{old.filename}"
        new_path = changed_bytes_path(path, changed.sha256, len(changed.data))
        line = (f"tombstone: {CUDNN} 9.1.0.70 ({path}): upstream re-published it with other bytes "
                f"(now {new_path}); kept for {TARGET}")
        assert [ln for ln in second.stderr.splitlines() if ln.startswith("tombstone:")] == [line]
        assert (out / path).read_bytes() == old_bytes, "the old path keeps its bytes"
        assert (out / new_path).read_bytes() == changed.data
        manifest = mf.load(out)
        listed = manifest.by_path()
        assert listed[path].sha256 == hashlib.sha256(old_bytes).hexdigest()
        assert path + ".metadata" in listed
        assert new_path + ".metadata" in listed
        assert [(t.path, t.reason, t.replaced_by) for t in manifest.tombstones] == [(path, "changed", new_path)]
        # both copies on the page, the retired one yanked and after the new one (module docstring)
        page = parse_html((out / "whl" / "cpu" / CUDNN / "index.html").read_bytes(), "http://m/whl/cpu/x/")
        assert [(ln.url.split("http://m/")[1], ln.sha256, ln.yanked) for ln in page.links] == [
            (new_path, changed.sha256, None), (path, old.sha256, RETIRED_REASON)]
        twin = parse_json((out / "whl" / "cpu" / CUDNN / "index.json").read_bytes(), "http://m/whl/cpu/x/")
        assert [(ln.url, ln.sha256, ln.yanked) for ln in twin.links] == [(ln.url, ln.sha256, ln.yanked)
                                                                         for ln in page.links]
        # a JSON twin that un-yanks the retired copy is a problem; repair rebuilds it from the HTML
        pages = {p: p.read_bytes() for p in (out / "whl").rglob("index.*")}
        json_page = out / "whl" / "cpu" / CUDNN / "index.json"
        doc = json.loads(json_page.read_bytes())
        doc["files"][1]["yanked"] = False
        json_page.write_text(json.dumps(doc))
        problems = verify_mirror(out).problems
        assert [(p.kind, p.detail) for p in problems] == [
            ("bad-json-page", f"{old.filename}: yanked is not what its index.html twin says")]
        assert verify_mirror(out, repair=True).ok
        assert {p: p.read_bytes() for p in (out / "whl").rglob("index.*")} == pages
        rep = verify_mirror(out)
        assert rep.ok
        assert rep.problems == [], rep.problems

        # a re-sync keeps it (the target is still recorded); --prune lets it go
        again = run_mirror(spec, env)
        assert again.returncode == 0, again.stderr
        assert line in again.stderr
        assert (out / path).is_file()
        assert path in mf.load(out).by_path()
        pruned = run_mirror(spec, env, "--prune")
        assert pruned.returncode == 0, pruned.stderr
        assert "tombstone" not in pruned.stderr
        assert not (out / path).exists()
        assert mf.load(out).tombstones == []
        assert verify_mirror(out).ok


def _manifest(paths: dict[str, str], target: str = TARGET) -> mf.Manifest:
    files = [mf.FileEntry(path=p, sha256=sha, size=1, kind="wheel", project=CUDNN, version="1") for p, sha in paths.items()]
    pkgs = tuple(mf.TargetPackage(name=CUDNN, version="1", path=p) for p in paths)
    return mf.Manifest(files=files, targets=[mf.Target(id=target, kind="pip", accelerator="cpu", python="3.11",
                                                       platform="linux-x86_64", packages=pkgs)])


def test_retire_lists_a_changed_copy_only_while_a_recorded_target_needs_it(tmp_path):
    """The pure rules: a retired copy is listed again (entries, a yanked anchor on its target's
    accelerator page) and is a tombstone while a recorded target needs it; a target no longer
    recorded, --prune, keep: N dropping its release, or upstream serving the bytes again end it."""
    path = f"packages/{CUDNN}/a-1-py3-none-any.whl"
    previous = _manifest({path: "a" * 64})
    previous.tombstones = [mf.Tombstone(path=path, project=CUDNN, version="1", reason="changed", targets=(TARGET,))]
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_bytes(cudnn("1").data)

    def run(live: set[str], prune: bool = False, removals: tuple = (), upstream: tuple = ()):
        keeper = Keeper.of(previous, tmp_path)
        if upstream:  # the run read the project's page
            keeper("cpu", CUDNN, list(upstream))
        kept = retire(tmp_path, previous, keeper, live=live, prune=prune, removals=removals, resolved=())
        shown = listing(tmp_path, previous, keeper, {TARGET: "cpu"})
        return kept, shown, settle(previous, keeper, shown.entries, [], [], [], live=live)

    kept, shown, settled = run({TARGET})
    assert kept == {path: None}
    assert [e.path for e in shown.entries] == [path, path + ".metadata"]
    assert [(f.path, f.yanked) for f in shown.pages["cpu"]] == [(path, RETIRED_REASON)]
    assert [(t.path, t.reason, t.targets) for t in settled.tombstones] == [(path, "changed", (TARGET,))]
    keep = lifecycle.Removal(kind="keep", reason=f"keep 1: {TARGET} torch 2.4.0", paths=(path,), size=1)
    same = Link(url="http://127.0.0.1:9/x.whl", filename=path.rsplit("/", 1)[1], sha256="a" * 64)
    for gone in (run({"other"}), run({TARGET}, prune=True), run({TARGET}, removals=(keep,)),
                 run({TARGET}, upstream=(same,))):
        assert gone[0] == {}
        assert gone[1].entries == ()
        assert gone[2].tombstones == []


def test_manifest_round_trips_tombstones_and_pulled():
    m = _manifest({f"packages/{CUDNN}/a-1-py3-none-any.whl": "a" * 64})
    m.tombstones = [mf.Tombstone(path="packages/x/x-1-py3-none-any.whl", project="x", version="1", reason="deleted",
                                 targets=("b", "a"))]
    m.pulled = ["packages/y/y-1-py3-none-any.whl"]
    back = mf.Manifest.from_json(m.to_json())
    assert back.tombstones[0].targets == ("a", "b")
    assert back.pulled == m.pulled
    assert "tombstones" not in mf.Manifest().to_json()
    doc = json.loads(m.to_json())
    doc["tombstones"][0]["reason"] = "gone"
    with pytest.raises(TorchdepotError, match=r"^m\.json: tombstones\[0\]: reason"):  # one line naming file and key
        mf.Manifest.from_doc(doc, "m.json")


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                     max_leaves=12)
_tombstone = st.fixed_dictionaries(
    {"path": st.one_of(st.text(max_size=20), st.sampled_from(["../x", "/etc/passwd", "packages/a/a.whl"])),
     "project": _json, "version": _json, "reason": st.one_of(st.sampled_from(["deleted", "changed"]), _json)},
    optional={"targets": _json, "replaced_by": _json, "bogus": _json})


@given(tombstones=st.one_of(_json, st.lists(_tombstone, max_size=3)), pulled=_json)
def test_manifest_tombstones_and_pulled_refuse_bad_input_in_one_line(tombstones, pulled):
    """Hostile ``tombstones`` / ``pulled`` values: a manifest or one TorchdepotError, never another exception,
    and nothing accepted leaves the root."""
    doc = {"format": mf.FORMAT, "version": mf.VERSION, "spec": {}, "files": [], "targets": [],
           "tombstones": tombstones, "pulled": pulled}
    try:
        m = mf.Manifest.from_doc(doc, "m.json")
    except TorchdepotError as exc:
        refused = str(exc)
    else:
        refused = ""
    assert "\n" not in refused
    if refused:
        return
    for path in [t.path for t in m.tombstones] + m.pulled:
        safe_join(tmp_root(), path)
    assert all(t.reason in mf.TOMBSTONE_REASONS for t in m.tombstones)


def tmp_root() -> Path:
    return Path("/nonexistent-root")
