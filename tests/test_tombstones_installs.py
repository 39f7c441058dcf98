"""Tombstones, installed (issue 24 item 3): upstream re-publishes a pinned file with other bytes;
the lock written before and the lock written after both install from the mirror alone, with
pip and with uv, over its PEP 503 pages (``file:``) and its PEP 691 JSON (``torchdepot
serve``), and ``torchdepot verify`` passes for both; an install that does not pin the old hash
never gets the old bytes. And ``mirror --dry-run`` prints the very tombstone lines the real
sync then prints.

The upstream is a loopback FaultServer shaped like download.pytorch.org (tests/test_tombstones.py):
a stand-in torch pinning ``nvidia-cudnn-cu12==9.1.0.70``, whose wheel upstream re-publishes.
Every install is hermetic: PIP_CONFIG_FILE=/dev/null, no uv config, the index named by the lock
(``--index-url ${TORCHDEPOT_MIRROR}/whl/cpu``) or on the command line, throwaway venvs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faultserver import FaultServer
from tests.kit.lockmirror import (
    FAKE_TORCH,
    cli,
    private_tmp_fixture,  # noqa: F401 (autouse)
)
from tests.kit.serving import request, serve_mirror
from tests.kit.wheels import BuiltWheel, wheel_bytes
from tests.loopback_upstream import mirror_env, run_mirror, write_spec
from tests.test_tombstones import CUDNN, TARGET, cudnn, delete, serve, torch
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.resolve.uv import uv_bin
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.layout import changed_bytes_path
from torchdepot.sync.check import verify_mirror
from torchdepot.sync.tombstones import RETIRED_REASON

OLD, NEW = 0, 7  # the payload byte of each copy of the cudnn wheel (tests/test_tombstones.py: cudnn)


def installed(py: Path) -> int:
    """The payload byte of the nvidia_cudnn a venv holds: which bytes were installed."""
    (init,) = py.parent.parent.glob("lib/python*/site-packages/nvidia_cudnn/__init__.py")
    return init.read_bytes()[-1]


def pip_install(tmp: Path, base: str, *args: object) -> int:
    py = make_venv(tmp)
    proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--no-deps", *args],
               env=hermetic_env(TORCHDEPOT_MIRROR=base))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return installed(py)


def uv_install(tmp: Path, base: str, cache: Path, *args: object) -> int:
    """``uv pip sync`` of a lock, or ``uv pip install`` of a requirement; one uv cache for all of
    them: a cached copy of the same file name must not stand in for other bytes."""
    py = make_venv(tmp, pip=False)
    cmd = ["sync"] if str(args[-1]).endswith(".lock") else ["install", "--no-deps"]
    proc = run([uv_bin(), "pip", *cmd, "--python", py, "--cache-dir", cache, *args],
               env=hermetic_env(TORCHDEPOT_MIRROR=base))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return installed(py)


@pytest.mark.slow  # two syncs, two verifies and 12 installs into throwaway venvs (about 15 s)
def test_the_locks_before_and_after_a_republication_both_install_with_pip_and_uv(tmp_path):
    old, changed = cudnn("9.1.0.70", seed=OLD), cudnn("9.1.0.70", seed=NEW)
    with FaultServer() as server:
        serve(server, torch(), old)
        env = mirror_env(server.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        assert run_mirror(spec, env).returncode == 0
        assert cli("lock", "--mirror", out, "--out", tmp_path / "before").exit_code == 0

        serve(server, torch(), changed)  # same file name, other bytes
        second = run_mirror(spec, env)
        assert second.returncode == 0, second.stderr
        assert cli("lock", "--mirror", out, "--out", tmp_path / "after").exit_code == 0
    # from here on upstream is gone: the mirror alone

    path = f"packages/{CUDNN}/{old.filename}"
    new_path = changed_bytes_path(path, changed.sha256, len(changed.data))
    assert [(t.path, t.reason, t.replaced_by) for t in mf.load(out).tombstones] == [(path, "changed", new_path)]
    assert pub.load_retired(out)[path] == old.sha256, "the old path is retired: it never gets other bytes"
    assert verify_mirror(out).problems == []
    locks = {"before": tmp_path / "before" / TARGET, "after": tmp_path / "after" / TARGET}
    for name, sha in (("before", old.sha256), ("after", changed.sha256)):
        text = (locks[name] / "requirements.lock").read_text()
        assert f"{CUDNN}==9.1.0.70 \\\n    --hash=sha256:{sha}\n" in text, text

    for name, lock in locks.items():  # hash-checked, mirror only, torch imported (the stand-in)
        res = cli("verify", lock, "--mirror", out, "--json")
        assert res.exit_code == 0, res.output
        result = json.loads(res.stdout)["results"][0]
        assert (name, result["result"], result["mode"]) == (name, "pass", "installed"), result

    want = {"before": OLD, "after": NEW}
    cache = tmp_path / "uv-cache"
    with serve_mirror(out) as httpd:
        served = f"http://127.0.0.1:{httpd.server_address[1]}"
        resp, body = request(httpd, f"/{path}")
        assert (resp.status, body) == (200, old.data)
        assert "immutable" in resp.getheader("Cache-Control", "")  # a wheel under packages/, never reused
        resp, body = request(httpd, f"/whl/cpu/{CUDNN}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        files = json.loads(body)["files"]
        assert [(f["hashes"]["sha256"], f["yanked"]) for f in files] == [(changed.sha256, False),
                                                                         (old.sha256, RETIRED_REASON)]
        for transport, base in (("pages", out.as_uri()), ("json", served)):
            for name, lock in locks.items():
                req = lock / "requirements.lock"
                got = (pip_install(tmp_path / "venv", base, "--require-hashes", "-r", req),
                       uv_install(tmp_path / "venv", base, cache, "--require-hashes", req))
                assert got == (want[name], want[name]), (transport, name)
            # no hash pinned: the new bytes, with either client
            got = (pip_install(tmp_path / "venv", base, "--index-url", f"{base}/whl/cpu", f"{CUDNN}==9.1.0.70"),
                   uv_install(tmp_path / "venv", base, cache, "--index-url", f"{base}/whl/cpu", f"{CUDNN}==9.1.0.70"))
            assert got == (NEW, NEW), transport


@pytest.mark.slow  # a dry run and a real sync per upstream change (about 15 s)
def test_the_dry_run_prints_the_tombstone_lines_the_real_sync_prints(tmp_path):
    old, new = cudnn("9.1.0.70"), cudnn("9.2.0")
    changed = cudnn("9.1.0.70", seed=NEW)
    with FaultServer() as server:
        serve(server, torch(), old, new)
        env = mirror_env(server.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        assert run_mirror(spec, env).returncode == 0

        def lines(*extra: str) -> list[str]:
            """The run's tombstone lines; its --json says the same ones."""
            proc = run_mirror(spec, env, *extra, "--json")
            assert proc.returncode == 0, proc.stderr
            said = [ln for ln in proc.stderr.splitlines() if ln.startswith("tombstone:")]
            assert [mf.Tombstone(**{**t, "targets": tuple(t["targets"])}).line()
                    for t in json.loads(proc.stdout)["tombstones"]] == said
            return said

        path = f"packages/{CUDNN}/{old.filename}"
        new_path = changed_bytes_path(path, changed.sha256, len(changed.data))
        said = []
        for change in (lambda: delete(server, old, new),  # deleted upstream
                       lambda: serve(server, torch(), changed, new),  # re-published with other bytes
                       lambda: None,  # a re-sync: the retired copy stays
                       lambda: serve(server, torch(), old, new)):  # the first bytes again: the other copy retires
            change()
            manifest_before = (out / "manifest.json").read_bytes()
            dry = lines("--dry-run")
            assert (out / "manifest.json").read_bytes() == manifest_before, "a dry run writes nothing"
            real = lines()
            assert dry == real
            said += real
        gone, changed_line = "upstream no longer lists it", "upstream re-published it with other bytes"
        assert said == [f"tombstone: {CUDNN} 9.1.0.70 ({path}): {gone}; kept for {TARGET}",
                        f"tombstone: {CUDNN} 9.1.0.70 ({path}): {changed_line} (now {new_path}); kept for {TARGET}",
                        f"tombstone: {CUDNN} 9.1.0.70 ({path}): {changed_line} (now {new_path}); kept for {TARGET}",
                        f"tombstone: {CUDNN} 9.1.0.70 ({new_path}): {changed_line} (now {path}); kept for {TARGET}"]
        page = (out / "whl" / "cpu" / CUDNN / "index.html").read_text()
        assert page.index(path) < page.index(new_path), "the first bytes are the live copy again, listed first"
        assert lines("--prune", "--dry-run") == lines("--prune") == []  # --prune lets go, in both
        assert not (out / new_path).exists()
        assert verify_mirror(out).problems == []


def torch_at(version: str) -> BuiltWheel:
    """The stand-in torch (tests/test_tombstones.py: torch) at another version, pinning the same cudnn."""
    return wheel_bytes("torch", f"{version}+cpu", requires=(f"{CUDNN}==9.1.0.70",),
                       files={"torch/__init__.py": FAKE_TORCH.format(version=f"{version}+cpu", cuda=None)})


@pytest.mark.slow  # three syncs, two verifies and 6 installs (about 11 s)
def test_a_kept_release_pinning_the_old_bytes_installs_beside_the_new_release(tmp_path):
    """Upstream ships torch 2.6 and re-publishes the cudnn wheel both releases pin: the kept 2.5
    release keeps the old bytes (listed by retention, yanked on the page it shares with 2.6's
    copy), its lock installs them; 2.6's lock and an install without a hash get the new bytes."""
    old, changed = cudnn("9.1.0.70", seed=OLD), cudnn("9.1.0.70", seed=NEW)
    with FaultServer() as server:
        serve(server, torch_at("2.5.0"), old)
        env = mirror_env(server.url, tmp_path)
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        assert run_mirror(spec, env).returncode == 0
        assert cli("lock", "--mirror", out, "--out", tmp_path / "before").exit_code == 0

        serve(server, torch_at("2.5.0"), torch_at("2.6.0"), changed)
        dry, real = run_mirror(spec, env, "--dry-run"), run_mirror(spec, env)
        assert (dry.returncode, real.returncode) == (0, 0), dry.stderr + real.stderr
        assert cli("lock", "--mirror", out, "--out", tmp_path / "after").exit_code == 0

    path = f"packages/{CUDNN}/{old.filename}"
    new_path = changed_bytes_path(path, changed.sha256, len(changed.data))
    line = (f"tombstone: {CUDNN} 9.1.0.70 ({path}): upstream re-published it with other bytes (now {new_path}); "
            f"kept for {TARGET}")
    for proc in (dry, real):
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("tombstone:")] == [line], proc.stderr
    manifest = mf.load(out)
    assert sorted(r.torch for r in manifest.releases) == ["2.5.0+cpu", "2.6.0+cpu"]
    page = json.loads((out / "whl" / "cpu" / CUDNN / "index.json").read_bytes())
    assert [(f["hashes"]["sha256"], f["yanked"]) for f in page["files"]] == [(changed.sha256, False),
                                                                             (old.sha256, RETIRED_REASON)]
    assert verify_mirror(out).problems == []
    base, cache = out.as_uri(), tmp_path / "uv-cache"
    for name, want in (("before", OLD), ("after", NEW)):
        lock = tmp_path / name / TARGET
        res = cli("verify", lock, "--mirror", out, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["results"][0]["result"] == "pass"
        req = lock / "requirements.lock"
        assert (pip_install(tmp_path / "venv", base, "--require-hashes", "-r", req),
                uv_install(tmp_path / "venv", base, cache, "--require-hashes", req)) == (want, want), name
    plain = ("--index-url", f"{base}/whl/cpu", f"{CUDNN}==9.1.0.70")
    assert (pip_install(tmp_path / "venv", base, *plain), uv_install(tmp_path / "venv", base, cache, *plain)) == (NEW, NEW)
