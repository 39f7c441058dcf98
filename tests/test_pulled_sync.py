"""A file ``serve --pull-through`` published survives a later ``torchdepot mirror`` into the same
root: the sync carries the manifest's ``pulled`` entries (sync/pulled.py), ``verify-mirror``
exits 0, and a plain ``serve`` still serves the file. Loopback upstream, small real wheels."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.faultserver import FaultServer
from tests.kit.upstream import padded_wheel, pep503, populate
from tests.loopback_upstream import mirror_env, run_mirror, write_spec
from tests.test_pullthrough import _sources, get, pull_server
from torchdepot.ship.serve import make_server
from torchdepot.store import manifest as mf

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # several CLI syncs (4-7 s)
def test_pulled_wheel_survives_a_spec_sync_into_the_same_root(tmp_path):
    six = padded_wheel("six", "1.16.0", "py2.py3-none-any", (), 2_000, 9)
    out = tmp_path / "out"
    out.mkdir()
    rel = f"packages/six/{six.filename}"
    with FaultServer() as server:
        populate(server, payload=2_000)
        pep503([six], pages=["/simple"], files="/files", metadata=False, indexes=False).serve(server)
        with pull_server(out, _sources(server.url)) as (httpd, _cache):
            assert get(httpd, "/whl/cpu/six/")[0].status == 200
            resp, data = get(httpd, f"/{rel}")
            assert resp.status == 200
            assert data == six.data
        assert mf.load(out).pulled == [rel]

        env = mirror_env(server.url, tmp_path)
        spec = write_spec(tmp_path / "spec.yaml", server.url, out)
        dry = run_mirror(spec, env, "--dry-run")  # lists what the real run removes: not the pulled file
        assert dry.returncode == 0, dry.stderr
        assert "would remove" not in dry.stderr, dry.stderr
        synced = run_mirror(spec, env)
        assert synced.returncode == 0, synced.stderr
        assert "removing" not in synced.stderr, synced.stderr
        again = run_mirror(tmp_path / "spec.yaml", env)  # a second sync reads the manifest the first wrote
        assert again.returncode == 0, again.stderr

    manifest = mf.load(out)
    assert manifest.pulled == [rel]
    listed = manifest.by_path()
    assert listed[rel].sha256 == six.sha256
    assert rel + ".metadata" in listed
    assert any(p.name == "torch" for t in manifest.targets for p in t.packages), "the sync's own files too"
    check = subprocess.run([sys.executable, "-m", "torchdepot", "verify-mirror", str(out)], capture_output=True,
                           text=True, timeout=120, cwd=str(ROOT), env=env)
    assert check.returncode == 0, check.stdout + check.stderr

    httpd = make_server(out, "127.0.0.1", 0, quiet=True)  # plain serve: no pull-through, no upstream
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        resp, data = get(httpd, f"/{rel}")
        assert resp.status == 200
        assert data == six.data
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_pulled_file_changed_on_disk_is_not_carried(tmp_path):
    """Carried only while intact: a pulled file whose bytes changed on disk leaves ``pulled``."""
    from torchdepot.sync.pulled import carry

    rel = "packages/six/six-1.16.0-py2.py3-none-any.whl"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(b"abc")
    entry = mf.FileEntry(path=rel, sha256=hashlib.sha256(b"abc").hexdigest(), size=3, kind="wheel", project="six")
    previous = mf.Manifest(files=[entry], pulled=[rel])
    assert carry(tmp_path, previous, [], []).pulled == [rel]
    (tmp_path / rel).write_bytes(b"abd")
    carried = carry(tmp_path, previous, [], [])
    assert carried.pulled == []
    assert carried.files == []
