"""`torchdepot verify-mirror` on a real mirror built by `torchdepot mirror` from a loopback upstream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import ROOT, mirror_env, populate, run_mirror, write_spec
from torchdepot.store import manifest as mf
from torchdepot.sync.check import verify_mirror


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vm")
    with FaultServer() as server:
        up = populate(server, payload=50_000)
        spec = write_spec(tmp / "spec.yaml", up.url, tmp / "out")
        proc = run_mirror(spec, mirror_env(up.url, tmp))
        assert proc.returncode == 0, proc.stderr
        yield up, tmp / "out"


@pytest.fixture
def mirror(built, tmp_path):
    up, src = built
    dst = tmp_path / "out"
    shutil.copytree(src, dst, symlinks=True)
    up.server.reset_counters()
    return up, dst


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torchdepot", "verify-mirror", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def _wheel(root, project):
    return next(e for e in mf.load(root).files if e.project == project and e.kind == "wheel")


def test_clean_mirror_is_ok(mirror):
    _up, root = mirror
    rep = verify_mirror(root)
    assert rep.ok
    assert rep.checked == 10
    assert rep.problems == []
    proc = _cli(str(root))
    assert proc.returncode == 0
    assert "ok: 10 files checked; no problems" in proc.stdout


@pytest.mark.slow
def test_damage_is_reported_then_repaired(mirror):
    up, root = mirror
    sympy = _wheel(root, "sympy")
    mpmath = _wheel(root, "mpmath")
    # same size and mtime: only a re-hash (not the hash cache) can see this
    p = root / sympy.path
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / mpmath.path).unlink()
    (root / (mpmath.path + ".metadata")).unlink()
    (root / "packages/torch/stray-1.0-py3-none-any.whl").write_bytes(b"x")
    (root / ".torchdepot/partial/x.part").write_bytes(b"y" * 10)
    (root / "packages/torch/.index.abc123.tmp").write_bytes(b"z")
    (root / ".publish/.deadbeef.tmp-999").mkdir()

    quick = verify_mirror(root, trust_cache=True)
    assert quick.count("corrupt") == 0  # the cache trusts size+mtime: why the CLI re-hashes by default
    rep = verify_mirror(root)
    kinds = {(p.kind, p.path) for p in rep.problems}
    assert ("corrupt", sympy.path) in kinds
    assert ("missing", mpmath.path) in kinds
    assert ("missing", mpmath.path + ".metadata") in kinds
    assert ("orphan", "packages/torch/stray-1.0-py3-none-any.whl") in kinds
    assert ("partial", ".torchdepot/partial/x.part") in kinds
    assert ("temp", "packages/torch/.index.abc123.tmp") in kinds
    assert ("temp", ".publish/.deadbeef.tmp-999") in kinds
    assert not rep.ok

    proc = _cli(str(root), "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert len(doc["problems"]) == len(rep.problems)

    proc = _cli(str(root), "--repair")
    # everything is repaired but the orphan, which may be the user's: reported and kept
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "repaired" in proc.stdout
    assert "PROBLEM\torphan" in proc.stdout
    assert (root / "packages/torch/stray-1.0-py3-none-any.whl").read_bytes() == b"x"
    # only the two bad wheels were fetched again
    hits = up.wheel_hits()
    assert hits[os.path.basename(sympy.path)] == 1
    assert hits[os.path.basename(mpmath.path)] == 1
    assert sum(hits.values()) == 2
    assert [p.kind for p in verify_mirror(root).problems] == ["orphan"]

    proc = _cli(str(root), "--repair", "--move-unknown")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = verify_mirror(root)
    assert after.ok, after.problems
    assert after.problems == [], after.problems
    assert not (root / "packages/torch/stray-1.0-py3-none-any.whl").exists()
    moved = list((root / ".torchdepot/aside").rglob("stray-1.0-py3-none-any.whl"))
    assert len(moved) == 1, "moved aside, never deleted"
    assert moved[0].read_bytes() == b"x", "moved aside, never deleted"


def test_a_user_file_named_like_a_temp_is_never_deleted(mirror):
    """The index link's build temp is always a symlink: a user's regular file that happens to be
    named ``.whl.tmp-1`` (pid 1 is alive, too) is unknown, reported and kept by --repair."""
    _up, root = mirror
    (root / ".whl.tmp-1").write_text("the user's notes")
    os.symlink("whl-gen-x", root / ".whl.tmp-999999")  # what a killed publish leaves
    kinds = {(p.kind, p.path) for p in verify_mirror(root).problems}
    assert ("unknown", ".whl.tmp-1") in kinds
    assert ("temp", ".whl.tmp-999999") in kinds
    proc = _cli(str(root), "--repair")
    assert (root / ".whl.tmp-1").read_text() == "the user's notes", proc.stdout
    assert not os.path.lexists(root / ".whl.tmp-999999")


def test_repair_that_cannot_fetch_fails_and_keeps_going(mirror):
    up, root = mirror
    torch = _wheel(root, "torch")
    (root / torch.path).unlink()
    up.server.always(up.paths[os.path.basename(torch.path)], Fault("wrong_bytes"))
    try:
        proc = _cli(str(root), "--repair")
    finally:
        up.server.always(up.paths[os.path.basename(torch.path)], Fault())
    assert proc.returncode == 1
    assert "refetch failed" in proc.stdout
    assert "sha256 mismatch" in proc.stdout
    assert not (root / torch.path).exists()  # wrong bytes were never published
    *progress, verdict = proc.stderr.strip().splitlines()
    assert "NOT OK" in verdict  # the one line that says what is wrong, after the refetch's progress
    assert all(line.startswith("fetch: ") for line in progress), progress
    assert not progress or progress[-1].endswith("(1/1 files, 1 failed)"), progress


def test_dangling_index_link_is_reported(mirror):
    _up, root = mirror
    page = root / "whl/cpu/torch/index.html"
    text = page.read_text()
    real = page.resolve()
    real.write_text(text.replace("</body>", '<a href="../../../packages/torch/ghost-1.0-py3-none-any.whl">g</a>\n'
                                            '<a href="http://127.0.0.1:9/x-1.0-py3-none-any.whl">x</a></body>'))
    rep = verify_mirror(root)
    details = [p.detail for p in rep.problems if p.kind == "dangling-link"]
    assert any("ghost" in d for d in details)
    assert any("outside the mirror" in d for d in details)
    assert not rep.ok


def test_wrong_hash_fragment_in_index_is_reported(mirror):
    _up, root = mirror
    torch = _wheel(root, "torch")
    page = (root / "whl/cpu/torch/index.html").resolve()
    page.write_text(page.read_text().replace(torch.sha256, "0" * 64))
    rep = verify_mirror(root)
    assert any(p.kind == "dangling-link" and "0" * 64 in p.detail for p in rep.problems)


def test_no_manifest_is_a_one_line_error(tmp_path):
    proc = _cli(str(tmp_path / "nothing"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("torchdepot: error:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nothing").exists()


def test_traversal_in_manifest_is_refused(mirror):
    _up, root = mirror
    doc = json.loads((root / "manifest.json").read_text())
    doc["files"][0]["path"] = "../../etc/passwd"
    (root / "manifest.json").write_text(json.dumps(doc))
    proc = _cli(str(root))
    assert proc.returncode == 1
    assert "escapes" in proc.stderr


def test_locked_mirror_refuses_at_once(mirror):
    from torchdepot.store.fsutil import MirrorLock

    _up, root = mirror
    with MirrorLock(root):
        proc = _cli(str(root))
    assert proc.returncode == 1
    assert "another torchdepot run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _set_entry(root, path, **changes):
    doc = json.loads((root / "manifest.json").read_text())
    for f in doc["files"]:
        if f["path"] == path:
            f.update(changes)
    (root / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("url", [
    "file:///dev/zero",
    "file:///etc/passwd",
    "http://torchlab-elsewhere:8000/torch.whl",   # a host outside the policy (never contacted)
    "http://127.0.0.1:1/torch.whl",                # the upstream's host, another port: another origin
    "ftp://127.0.0.1/torch.whl",
])
def test_repair_reads_only_under_the_host_policy(mirror, url):
    up, root = mirror
    torch = _wheel(root, "torch")
    (root / torch.path).unlink()
    _set_entry(root, torch.path, url=url)
    proc = _cli(str(root), "--repair")
    assert proc.returncode == 1
    assert "not refetched:" in proc.stdout, proc.stdout
    assert not (root / torch.path).exists()
    assert sum(up.wheel_hits().values()) == 0
    assert not any(p.stat().st_size for p in (root / ".torchdepot/partial").glob("*")), "nothing was read"


def test_repair_file_url_is_read_only_under_a_local_upstream_and_with_the_exact_size(mirror, tmp_path):
    from torchdepot.net.hostpolicy import default_policy
    from torchdepot.sync.check import RepairPolicy

    up, root = mirror
    torch = _wheel(root, "torch")
    good = (root / torch.path).read_bytes()
    local = tmp_path / "local-upstream"
    local.mkdir()
    (local / "torch.whl").write_bytes(good)
    (local / "big.whl").write_bytes(good + b"more")
    (root / torch.path).unlink()
    policy = RepairPolicy(default_policy(allow_file=True), (local,))
    _set_entry(root, torch.path, url=(local / "big.whl").as_uri())
    rep = verify_mirror(root, repair=True, policy=policy)
    assert any("bytes, manifest.json says" in p.detail for p in rep.problems)
    assert not (root / torch.path).exists()
    _set_entry(root, torch.path, url=(local / "torch.whl").as_uri())
    rep = verify_mirror(root, repair=True, policy=policy)
    assert rep.ok
    assert (root / torch.path).read_bytes() == good


@pytest.mark.slow
def test_repair_takes_exactly_the_manifest_size(mirror):
    up, root = mirror
    torch = _wheel(root, "torch")
    (root / torch.path).unlink()
    up.server.always(up.paths[os.path.basename(torch.path)], Fault("oversize", n=10_000_000))
    try:
        proc = _cli(str(root), "--repair")
    finally:
        up.server.always(up.paths[os.path.basename(torch.path)], Fault())
    assert proc.returncode == 1
    assert "refetch failed" in proc.stdout
    assert not (root / torch.path).exists()
    assert all(p.stat().st_size <= torch.size for p in (root / ".torchdepot/partial").glob("*"))


def test_unknown_root_entries_are_reported_and_kept(mirror):
    _up, root = mirror
    (root / "notes.txt").write_text("the user's")
    (root / ".manifest.json.x7k2p9.tmp").write_text("{")  # the mirror's own temp: removed by --repair
    rep = verify_mirror(root)
    assert {(p.kind, p.path) for p in rep.problems} == {("unknown", "notes.txt"), ("temp", ".manifest.json.x7k2p9.tmp")}
    proc = _cli(str(root), "--repair")
    assert proc.returncode == 1
    assert (root / "notes.txt").read_text() == "the user's"
    assert not (root / ".manifest.json.x7k2p9.tmp").exists()
    assert _cli(str(root), "--move-unknown").returncode == 2  # a usage error without --repair


# -- PEP 691 index.json twins --------------------------------------------------------------

def _json_page(root, rel="whl/cpu/torch/index.json"):
    return (root / rel).resolve()  # the live generation's file (whl is a symlink)


def _pages(root):
    whl = root / "whl"
    return {str(p.relative_to(whl)): p.read_bytes() for p in sorted(whl.rglob("index.*"))}


def test_corrupt_json_hash_is_one_problem_and_repair_rebuilds_the_page(mirror):
    _up, root = mirror
    before, gen = _pages(root), os.readlink(root / "whl")
    assert sum(k.endswith("index.json") for k in before) == sum(k.endswith("index.html") for k in before) > 3
    page = _json_page(root)
    doc = json.loads(page.read_text())
    good = doc["files"][0]["hashes"]["sha256"]
    doc["files"][0]["hashes"]["sha256"] = "0" * 64
    page.write_text(json.dumps(doc))

    rep = verify_mirror(root)
    assert [(p.kind, p.path) for p in rep.problems] == [("bad-json-page", "whl/cpu/torch/index.json")]
    assert f"hashes.sha256 {'0' * 64}, manifest says {good}" in rep.problems[0].detail
    assert not rep.ok
    proc = _cli(str(root))
    assert proc.returncode == 1, proc.stdout
    assert "PROBLEM\tbad-json-page\twhl/cpu/torch/index.json" in proc.stdout, proc.stdout

    proc = _cli(str(root), "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 bad-json-page; 1 repaired" in proc.stdout
    assert "rebuilt from its index.html twin" in proc.stdout
    assert os.readlink(root / "whl") != gen, "a new generation, swapped in whole"
    assert _pages(root) == before  # the writer gave back exactly the published pages
    after = verify_mirror(root)
    assert after.ok
    assert after.problems == []


@pytest.mark.parametrize(("damage", "expect"), [
    (lambda d: "{not json", "not JSON"),
    (lambda d: json.dumps({"files": d["files"]}), "not a PEP 691 page"),
    (lambda d: json.dumps({**d, "files": d["files"][1:]}), "its index.html twin"),
    (lambda d: json.dumps({**d, "files": [{**d["files"][0], "url": "../../../packages/torch/ghost-1.0-py3-none-any.whl"}]
                                         + d["files"][1:]}), "which manifest.json does not list"),
    (lambda d: json.dumps({**d, "files": [{**d["files"][0], "url": "http://127.0.0.1:9/x-1.0-py3-none-any.whl"}]
                                         + d["files"][1:]}), "outside the mirror"),
    (lambda d: json.dumps({**d, "files": [{**d["files"][0], "size": 1}] + d["files"][1:]}), "size 1, manifest says"),
], ids=["unparseable", "no-meta", "file-dropped", "ghost-file", "outside", "wrong-size"])
def test_each_json_fault_is_one_problem(mirror, damage, expect):
    _up, root = mirror
    page = _json_page(root)
    page.write_text(damage(json.loads(page.read_text())))
    rep = verify_mirror(root)
    assert [(p.kind, p.path) for p in rep.problems] == [("bad-json-page", "whl/cpu/torch/index.json")], rep.problems
    assert expect in rep.problems[0].detail, rep.problems[0].detail
    assert verify_mirror(root, repair=True).ok
    assert verify_mirror(root).problems == []


def test_json_page_without_a_twin_and_a_root_list_that_disagrees(mirror):
    _up, root = mirror
    stray = _json_page(root).parent.parent / "ghost" / "index.json"
    stray.parent.mkdir()
    stray.write_text(json.dumps({"meta": {"api-version": "1.1"}, "name": "ghost", "files": []}))
    root_page = _json_page(root, "whl/index.json")
    doc = json.loads(root_page.read_text())
    root_page.write_text(json.dumps({**doc, "projects": doc["projects"] + [{"name": "ghost"}]}))
    rep = verify_mirror(root)
    got = {p.path: p.detail for p in rep.problems if p.kind == "bad-json-page"}
    assert set(got) == {"whl/cpu/ghost/index.json", "whl/index.json"}
    assert len(rep.problems) == 2
    assert "no index.html twin" in got["whl/cpu/ghost/index.json"]
    assert "lists projects" in got["whl/index.json"]
    rep = verify_mirror(root, repair=True)
    assert rep.ok
    assert not (root / "whl/cpu/ghost").exists()


def test_repair_does_not_rebuild_from_hand_edited_html(mirror):
    """When the HTML pages are not what the writer makes, the JSON is not rebuilt from them:
    the problem stays and names the run that rebuilds every page."""
    _up, root = mirror
    torch = _wheel(root, "torch")
    html_page = _json_page(root, "whl/cpu/torch/index.html")
    html_page.write_text(html_page.read_text().replace("</body>", "<!-- edited by hand --></body>"))
    page = _json_page(root)
    page.write_text(page.read_text().replace(torch.sha256, "1" * 64))
    gen = os.readlink(root / "whl")
    rep = verify_mirror(root, repair=True)
    assert [p.kind for p in rep.problems] == ["bad-json-page"]
    assert not rep.ok
    assert "not rebuilt: the live index.html pages are not the ones" in rep.problems[0].detail
    assert "torchdepot mirror" in rep.problems[0].detail
    assert os.readlink(root / "whl") == gen
