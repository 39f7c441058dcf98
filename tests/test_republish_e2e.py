"""A re-published wheel over three syncs, with a client HTTP cache in between (issue 21 item 3,
issue 22 item 5).

Upstream replaces filelock's bytes under the same name after the first sync. After each sync
pip, run exactly as ``serve``'s banner prints it, installs from the mirror, and a client that
honours ``Cache-Control`` (one cache for all three rounds: an ``immutable`` response is never
fetched again) fetches every file every page links and checks it against the page's hash.
pip itself caches only HTTPS responses, so the HTTP cache is this client's. Before: the second
sync moved the new bytes to a new path, the third moved them back to the old URL (downloading
them again); that URL had served the old bytes as ``immutable``, so a caching client kept them
and failed the hash check ("THESE PACKAGES DO NOT MATCH THE HASHES"). Now the new bytes stay at
their new path, the old URL never serves other bytes, and the third sync downloads nothing and
publishes nothing.
"""

from __future__ import annotations

import hashlib
import shlex
import threading

import pytest
import requests

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


class CachingClient:
    """GETs through one HTTP cache that honours ``immutable`` (kept forever, never revalidated)."""

    def __init__(self) -> None:
        self.cache: dict[str, bytes] = {}

    def get(self, url: str) -> bytes:
        if url in self.cache:
            return self.cache[url]
        resp = requests.get(url, timeout=30)
        resp.raise_for_status()
        if "immutable" in resp.headers.get("Cache-Control", ""):
            self.cache[url] = resp.content
        return resp.content

    def check_index(self, index: str) -> int:
        """Fetch every file every project page links; each must match the page's sha256."""
        from torchdepot.sources.pep503 import parse_html

        checked = 0
        for project in parse_html(self.get(index + "/"), index + "/").projects:
            page_url = f"{index}/{project}/"
            for link in parse_html(self.get(page_url), page_url).links:
                url = link.url.split("#", 1)[0]
                got = hashlib.sha256(self.get(url)).hexdigest()
                assert got == link.sha256, f"{url}: the cached bytes hash to {got}, the page says {link.sha256}"
                checked += 1
        return checked


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

        client = CachingClient()

        def install(round_: int) -> None:
            py = make_venv(tmp_path / f"venv{round_}")
            done = run([py, "-m", *argv], env=hermetic_env(PIP_CACHE_DIR=str(cache)), timeout=300)
            assert done.returncode == 0, f"round {round_}: {pip_line}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            assert client.check_index(f"{server_url(httpd)}/whl/cpu") >= 5, round_

        try:
            install(1)
            name, new_bytes = republish_filelock(up, seed=121)
            first_path = linked(out, "filelock")[name]
            second = run_mirror(spec, env, "--prune")  # the old path goes (else kept for the recorded target)
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
            assert not (out / first_path).exists(), "--prune let the old path go"
        finally:
            httpd.shutdown()
            httpd.server_close()
