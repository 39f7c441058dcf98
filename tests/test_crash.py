"""SIGKILL `torchdepot mirror` at many points (crawl, download, publish), re-run, converge.

A slow-drip loopback upstream stretches the download phase; kills are triggered by what
the test observes (time since start, bytes the server sent, files that reached their
final path), not by hooks in the code. After every kill: no file at a final path is
corrupt and every link of a published index resolves to a hash-valid file. After the
final run: verify-mirror is clean, and no file published before a kill was fetched again.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import mirror_cmd, mirror_env, populate, write_spec
from torchdepot.sources.pep503 import parse_html
from torchdepot.sync.check import verify_mirror

PAYLOAD = 100_000
RATE = 200_000  # bytes/s per connection: ~0.5 s a wheel, 2 in parallel

# Per lane (a fresh output dir): the trigger of each successive run, then a run to completion.
LANES = [
    [("crawl", 0.1), ("download", 0.3), ("publish", 0.0)],
    [("crawl", 0.4), ("download", 0.6), ("publish", 0.05)],
    [("crawl", 0.8), ("download", 0.9), ("publish", 0.04)],
    [("download", 0.1), ("download", 0.5), ("publish", 0.02)],
    [("crawl", 0.3), ("download", 0.2), ("publish", 0.0)],
    [("crawl", 0.6), ("download", 0.7), ("publish", 0.06)],
    [("download", 0.05), ("download", 0.95), ("publish", 0.08)],
    [("crawl", 0.2), ("publish", 0.03), ("download", 0.4)],
    [("crawl", 0.15), ("download", 0.45), ("publish", 0.01)],
]


def _published_wheels(out: Path, wheels: dict[str, bytes]) -> dict[str, bool]:
    """filename -> hash-valid, for every wheel at its final path."""
    found = {}
    for p in (out / "packages").glob("*/*.whl") if (out / "packages").is_dir() else ():
        found[p.name] = p.name in wheels and p.read_bytes() == wheels[p.name]
    return found


def _check_published_index(out: Path) -> list[str]:
    """Links of the live index that do not resolve to a file with the linked sha256."""
    whl = out / "whl"
    bad = []
    if not whl.is_dir():
        return bad
    for dirpath, _d, files in os.walk(whl):
        for name in files:
            page_path = Path(dirpath) / name
            for link in parse_html(page_path.read_bytes(), page_path.as_uri()).links:
                target = Path(urllib.request.url2pathname(urllib.parse.urlsplit(link.url).path))
                if not target.is_file():
                    bad.append(f"{page_path}: {link.url} missing")
                elif link.sha256 and hashlib.sha256(target.read_bytes()).hexdigest() != link.sha256:
                    bad.append(f"{page_path}: {link.url} hash mismatch")
    return bad


def _run_until(cmd, env, cwd, trigger, server, up, out) -> tuple[str | None, subprocess.Popen]:
    """Start a run; SIGKILL it when ``trigger`` fires. Returns (phase killed in, process)."""
    kind, arg = trigger
    total = sum(len(d) for d in up.wheels.values())
    sent0 = sum(server.body_bytes[p] for p in up.paths.values())
    requests0 = sum(server.hits[p] for p in up.paths.values())
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: uv children die with it
    start = time.monotonic()
    fired_at = None
    while proc.poll() is None and time.monotonic() - start < 60:
        now = time.monotonic()
        if kind == "crawl":
            fire = now - start >= arg
        elif kind == "download":
            sent = sum(server.body_bytes[p] for p in up.paths.values()) - sent0
            fire = sent >= arg * total
        else:  # publish: every wheel is at its final path, the index/manifest not yet (re)written
            fire = len(_published_wheels(out, up.wheels)) == len(up.wheels)
        if fire and fired_at is None:
            fired_at = now
        if fired_at is not None and now - fired_at >= (arg if kind == "publish" else 0):
            break
        time.sleep(0.003)
    if proc.poll() is not None:
        proc.communicate()
        return None, proc  # finished before the trigger: not a kill
    # Phase from what is observable at the moment of the kill.
    wheel_requests = sum(server.hits[p] for p in up.paths.values()) - requests0
    done = _published_wheels(out, up.wheels)
    phase = "crawl" if wheel_requests == 0 and not done else (
        "publish" if len(done) == len(up.wheels) else "download")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    return phase, proc


def test_sigkill_at_many_points_converges(tmp_path):
    kills: collections.Counter = collections.Counter()
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        for path in up.paths.values():
            server.always(path, Fault("drip", rate=RATE))
        env = mirror_env(up.url, tmp_path)
        for n, lane in enumerate(LANES):
            server.reset_counters()
            out = tmp_path / f"out{n}"
            spec = write_spec(tmp_path / f"spec{n}.yaml", up.url, out)
            cmd = mirror_cmd(spec)
            hits_when_published: dict[str, int] = {}
            for trigger in lane:
                phase, proc = _run_until(cmd, env, str(tmp_path), trigger, server, up, out)
                if phase is None:
                    assert proc.returncode == 0, proc.stderr
                    continue
                kills[phase] += 1
                # After the kill: nothing corrupt at a final path, no index link to a bad file.
                published = _published_wheels(out, up.wheels)
                assert all(published.values()), f"corrupt file published: {published}"
                assert _check_published_index(out) == []
                for name in published:
                    hits_when_published.setdefault(name, server.hits[up.paths[name]])
            final = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
            assert final.returncode == 0, final.stderr
            report = verify_mirror(out)  # full re-hash
            assert report.ok and report.problems == [], (n, report.problems)
            assert _check_published_index(out) == []
            assert all(_published_wheels(out, up.wheels).values())
            assert set(_published_wheels(out, up.wheels)) == set(up.wheels)
            for name, hits in hits_when_published.items():
                assert server.hits[up.paths[name]] == hits, f"lane {n}: {name} downloaded again after it was published"
    total = sum(kills.values())
    print(f"kills by phase: {dict(kills)} (total {total})")
    assert total >= 20, kills
    assert all(kills[p] >= 3 for p in ("crawl", "download", "publish")), kills
