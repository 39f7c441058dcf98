"""A re-published wheel over three syncs, with a client HTTP cache in between (issue 21 item 3,
issue 22 item 5).

Upstream replaces filelock's bytes under the same name after the first sync. pip, run exactly
as ``serve``'s banner prints it with one HTTP cache for all three rounds, installs from the
mirror after each sync. Before: the second sync moved the new bytes to a new path, the third
moved them back to the old URL (downloading them again); that URL had served the old bytes
with ``immutable`` caching, so pip took them from its cache and failed "THESE PACKAGES DO NOT
MATCH THE HASHES". Now the new bytes stay at their new path, the old URL never serves other
bytes, and the third sync downloads nothing and publishes nothing.
"""

from __future__ import annotations

import shlex
import threading

import pytest

from tests.faultserver import FaultServer
from tests.kit.upstream import DEPS, padded_wheel, pep503
from tests.loopback_upstream import mirror_env, populate, run_mirror, write_spec
from tests.test_immutable import linked
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.model.trust import install_commands
from torchdepot.ship.serve import make_server, server_url

pytestmark = pytest.mark.e2e
PAYLOAD = 20_000


def republish_filelock(up, seed: int) -> tuple[str, bytes]:
    wheel = padded_wheel(*next(d for d in DEPS if d[0] == "filelock"), PAYLOAD, seed)
    pep503([wheel], pages=["/whl/cpu", "/simple"], files="/whl/files", indexes=False).serve(up.server)
    up.wheels[wheel.filename] = wheel.data
    return wheel.filename, wheel.data


def test_a_republished_wheel_settles_in_one_sync_and_a_cached_client_still_installs(tmp_path):
    cache = tmp_path / "pip-cache"
    out = tmp_path / "out"
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        assert run_mirror(spec, env).returncode == 0
        httpd = make_server(out, "127.0.0.1", 0, quiet=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        pip_line = install_commands(f"{server_url(httpd)}/whl/cpu")[0]
        argv = shlex.split(pip_line)
        assert argv[:2] == ["pip", "install"]

        def install(round_: int) -> None:
            py = make_venv(tmp_path / f"venv{round_}")
            done = run([py, "-m", *argv], env=hermetic_env(PIP_CACHE_DIR=str(cache)), timeout=300)
            assert done.returncode == 0, f"round {round_}: {pip_line}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"

        try:
            install(1)
            name, new_bytes = republish_filelock(up, seed=121)
            first_path = linked(out, "filelock")[name]
            second = run_mirror(spec, env)
            assert second.returncode == 0, second.stderr
            moved = linked(out, "filelock")[name]
            assert moved != first_path
            assert (out / moved).read_bytes() == new_bytes
            install(2)
            server.reset_counters()
            third = run_mirror(spec, env)
            assert third.returncode == 0, third.stderr
            install(3)  # the old URL's cached bytes must never be what the new page links
            assert linked(out, "filelock")[name] == moved, "the bytes stay where they were published"
            assert "index unchanged" in third.stdout, third.stdout
            assert sum(up.wheel_hits().values()) == 0, up.wheel_hits()  # published once: nothing downloaded
            assert not (out / first_path).exists()
        finally:
            httpd.shutdown()
            httpd.server_close()
