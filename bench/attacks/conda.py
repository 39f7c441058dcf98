"""Class (g): conda repodata (issue 22 item 8), through the real CLI against a loopback channel.

Each hostile body is served as ``conda-forge/linux-64/repodata.json(.zst)`` (``noarch`` is a
valid empty subdir), and read two ways: by ``torchdepot mirror`` with a ``conda:`` section (a
fresh root), and by ``torchdepot serve --pull-through`` with the same spec, asked for
``/conda/conda-forge/linux-64/repodata.json`` (the pull-through's own conda path). On top of
"held" (one line, no traceback, nothing outside the root), each attempt must stay in bounds:

- a ``repodata.json`` that drips one byte every 2 s: the mirror ends within 135 s (a body has
  the client's page deadline, 120 s), the pull-through answers within 75 s (its deadline is 60 s);
- a ``.zst`` of ~32 KB that inflates to 1 GiB, and a gzip ``Content-Encoding`` body of ~0.25 MB
  that inflates to 256 MiB: refused within 30 s, peak RSS under 512 MiB, at most 64 MiB of
  files left anywhere in the sandbox;
- a ``repodata.json`` nested 100,000 arrays deep: refused within 30 s, in one line.

The pull-through attempts also check that the hostile request got no 200 and that the server
then serves the channel's valid ``noarch`` repodata (a hostile body is refused, not taken
for an upstream that is down, and the server was not taken down).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import zlib
from pathlib import Path

import yaml
import zstandard

from bench.attacks.harness import (
    Outcome,
    Run,
    Sandbox,
    changed,
    judge,
    live_corrupt,
    run_cli,
    snapshot,
)
from bench.attacks.upstream import Site, mirror_env, original_wheels
from tests.faultserver import FaultServer
from tests.kit.routed import Route, Upstream
from tests.kit.zeros import Zeros

CLS = "g"
EMPTY_NOARCH = json.dumps({"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}}).encode()
MAX_LEFT = 64 << 20
MAX_RSS_MIB = 512


def _zst_bomb() -> bytes:
    out = io.BytesIO()
    zstandard.ZstdCompressor(level=3).copy_stream(Zeros(2**30), out)
    return out.getvalue()


def _gzip_bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(16 * 2**20)
    return b"".join(c.compress(block) for _ in range(16)) + c.flush()


def _nested(depth: int = 100_000) -> bytes:
    return (b'{"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {"a-1-0.conda": '
            + b"[" * depth + b"]" * depth + b"}}")


# name -> (routes under /conda-forge/linux-64/, the attempt's own bounds: mirror s, pull-through s)
def _attacks() -> dict[str, tuple[dict[str, Route], float, float]]:
    return {
        "repodata-drip-1-byte-per-2s": ({"repodata.json": Route(body=b'{"info": {}' + b" " * 10_000 + b"}",
                                                                drip=2.0)}, 135, 75),
        "repodata-zst-1GiB-of-zeros": ({"repodata.json.zst": Route(body=_zst_bomb())}, 30, 30),
        "repodata-gzip-256MiB-of-zeros": ({"repodata.json": Route(body=_gzip_bomb(),
                                                                  headers={"Content-Encoding": "gzip"})}, 30, 30),
        "repodata-nested-100000-deep": ({"repodata.json": Route(body=_nested())}, 30, 30),
    }


def _spec(path: Path, site: Site, channel: str, out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "packages": ["torch"], "extra_packages": [], "accelerators": ["cpu"], "pythons": ["3.11"],
        "platforms": ["linux-x86_64"], "upstreams": [site.url + "/whl"], "out": str(out), "jobs": 2,
        "conda": {"channels": [{"name": "conda-forge", "mirrors": [channel]}], "specs": ["pytorch"]}}))
    return path


def _left(base: Path) -> int:
    return sum(p.stat().st_size for p in base.rglob("*") if p.is_file() and not p.is_symlink())


def _bounds(r: Run, base: Path, seconds: float) -> tuple[bool, str]:
    left, rss = _left(base), r.peak_rss_kib // 1024
    ok = r.seconds <= seconds and rss < MAX_RSS_MIB and left <= MAX_LEFT
    return ok, f"peak RSS {rss} MiB; {left // 1024} KiB left in the sandbox; bound {seconds:g}s"


def _upstream(routes: dict[str, Route]) -> Upstream:
    up = Upstream()
    up.routes.update({f"/conda-forge/linux-64/{k}": v for k, v in routes.items()})
    up.routes["/conda-forge/noarch/repodata.json"] = Route(body=EMPTY_NOARCH)
    return up


def _mirror_attempt(tmp: Path, name: str, routes: dict[str, Route], seconds: float) -> Outcome:
    sb = Sandbox(tmp / f"mirror-{name}")
    root = sb.work / "mirror"
    with FaultServer() as server, _upstream(routes) as up:
        site = Site(server, original_wheels(payload=20_000))
        spec = _spec(sb.work / "spec.yaml", site, f"{up.url}/conda-forge", root)
        before = snapshot(sb.base, sb.scratch)
        r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site), timeout=seconds + 30)
    corrupt, note = live_corrupt(sb, root, {})
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    ok, why = _bounds(r, sb.base, seconds)
    ok = ok and r.rc not in (None, 0)  # a channel that cannot be read is a failed sync, never a silent one
    return judge(CLS, f"mirror {name}", r, corrupt=corrupt, outside=outside, check=ok,
                 note="; ".join(x for x in (why, note) if x))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float) -> tuple[int | None, float]:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    except OSError:
        return None, time.monotonic() - t0
    finally:
        conn.close()


def _pull_attempt(tmp: Path, name: str, routes: dict[str, Route], seconds: float) -> Outcome:
    sb = Sandbox(tmp / f"pull-{name}")
    root = sb.work / "mirror"
    root.mkdir()
    port = _free_port()
    done = threading.Event()
    got: dict[str, object] = {}
    with FaultServer() as server, _upstream(routes) as up:
        site = Site(server, original_wheels(payload=20_000))
        spec = _spec(sb.work / "spec.yaml", site, f"{up.url}/conda-forge", root)

        def client() -> None:
            try:
                for _ in range(200):  # the server's port opens within 10 s
                    if _get(port, "/", 1)[0] is not None:
                        break
                    time.sleep(0.05)
                got["hostile"] = _get(port, "/conda/conda-forge/linux-64/repodata.json", seconds + 15)
                got["after"] = _get(port, "/conda/conda-forge/noarch/repodata.json", 15)
            finally:
                done.set()
        before = snapshot(sb.base, sb.scratch)
        t = threading.Thread(target=client, daemon=True)
        t.start()
        r = run_cli(sb, ["serve", "--root", str(root), "--port", str(port), "--quiet", "--pull-through",
                         "--spec", str(spec)], env=mirror_env(sb, site), timeout=seconds + 40, kill_when=done.is_set)
        t.join(5)
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    status, took = got.get("hostile", (None, 0.0))  # type: ignore[misc]
    after = got.get("after", (None, 0.0))[0]  # type: ignore[index]
    ok, why = _bounds(Run(rc=r.rc, stdout="", stderr="", seconds=float(took), peak_rss_kib=r.peak_rss_kib),
                      sb.base, seconds)
    ok = ok and status not in (None, 200) and after == 200
    return judge(CLS, f"pull-through {name}", r, outside=outside, check=ok, expect_kill=True,
                 note=f"hostile GET: {status} after {float(took):.1f}s; then noarch: {after}; {why}")


def run(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    slow: list[Outcome] = []
    attacks = _attacks()
    drip = "repodata-drip-1-byte-per-2s"
    routes, m_s, p_s = attacks.pop(drip)
    threads = [threading.Thread(target=lambda f=f, s=s: slow.append(f(tmp, drip, routes, s)), daemon=True)
               for f, s in ((_mirror_attempt, m_s), (_pull_attempt, p_s))]
    for t in threads:
        t.start()
    for name, (routes_, m_s_, p_s_) in attacks.items():
        out.append(_mirror_attempt(tmp, name, routes_, m_s_))
        out.append(_pull_attempt(tmp, name, routes_, p_s_))
    for t in threads:
        t.join(200)
    return out + slow
