"""SIGKILL `torchdepot mirror` at many points (crawl, download, publish), re-run, converge.

Re-syncs where upstream changed the bytes behind names are killed too: after each kill the
LIVE mirror passes `torchdepot verify-mirror` (immutable publication, docs/publication.md).

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
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import mirror_cmd, mirror_env, populate, write_spec
from torchdepot.sources.pep503 import parse_html
from torchdepot.store import manifest as mf
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


def _run_until(cmd, env, cwd, trigger, server, up, out, published=None) -> tuple[str | None, subprocess.Popen]:
    """Start a run; SIGKILL it when ``trigger`` fires. Returns (phase killed in, process).
    ``published(out)``: filename -> valid for the files the run is expected to write."""
    published = published or (lambda o: _published_wheels(o, up.wheels))
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
            fire = len(published(out)) == len(up.wheels)
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
    done = published(out)
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
            assert report.ok, (n, report.problems)
            assert report.problems == [], (n, report.problems)
            assert _check_published_index(out) == []
            assert all(_published_wheels(out, up.wheels).values())
            assert set(_published_wheels(out, up.wheels)) == set(up.wheels)
            for name, hits in hits_when_published.items():
                assert server.hits[up.paths[name]] == hits, f"lane {n}: {name} downloaded again after it was published"
    total = sum(kills.values())
    print(f"kills by phase: {dict(kills)} (total {total})")
    assert total >= 20, kills
    assert all(kills[p] >= 3 for p in ("crawl", "download", "publish")), kills


# -- re-syncs where upstream changed the bytes behind names (issue 13 (a)) ------------------
RESYNC_LANES = [
    [("crawl", 0.1), ("download", 0.05), ("publish", 0.0)],
    [("crawl", 0.5), ("download", 0.15), ("publish", 0.02)],
    [("download", 0.02), ("download", 0.25), ("publish", 0.05)],
    [("crawl", 0.3), ("publish", 0.01), ("publish", 0.08)],
    [("download", 0.1), ("publish", 0.03), ("crawl", 0.2)],
]


def _verify_cli(out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchdepot", "verify-mirror", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_sigkill_during_resync_with_changed_bytes_leaves_live_mirror_verify_clean(tmp_path):
    """After each kill the LIVE mirror passes `torchdepot verify-mirror` (a full re-hash) and every
    live link resolves to its hash; the final run converges on upstream's new bytes."""
    from tests.kit.upstream import DEPS, TORCH, padded_wheel, pep503

    kills: collections.Counter = collections.Counter()
    verified = 0
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        for n, lane in enumerate(RESYNC_LANES):
            out = tmp_path / f"re{n}"
            spec = write_spec(tmp_path / f"re{n}.yaml", up.url, out)
            for path in up.paths.values():
                server.always(path, Fault())
            first = subprocess.run(mirror_cmd(spec), env=env, cwd=str(tmp_path), capture_output=True, text=True,
                                   timeout=120)
            assert first.returncode == 0, first.stderr
            # upstream re-publishes torch and mpmath under the same names with new bytes
            changed = [padded_wheel(*row, PAYLOAD, 1000 + 10 * n + i)
                       for i, row in enumerate(r for r in (TORCH, *DEPS) if r[0] in ("torch", "mpmath"))]
            pep503(changed, pages=["/whl/cpu", "/simple"], files="/whl/files", indexes=False).serve(server)
            for w in changed:
                up.wheels[w.filename] = w.data
            for path in up.paths.values():
                server.always(path, Fault("drip", rate=RATE))
            server.reset_counters()

            def staged(o: Path) -> dict[str, bool]:
                found = {p.name: p.read_bytes() == up.wheels[p.name] for p in (o / "packages").rglob("*.whl")
                         if p.name in up.wheels}
                return {k: v for k, v in found.items() if v}

            for trigger in lane:
                phase, proc = _run_until(mirror_cmd(spec), env, str(tmp_path), trigger, server, up, out, staged)
                if phase is None:
                    assert proc.returncode == 0, proc.stderr
                    continue
                kills[phase] += 1
                check = _verify_cli(out, env)
                assert check.returncode == 0, (n, trigger, check.stdout, check.stderr)
                verified += 1
                assert _check_published_index(out) == []
            final = subprocess.run(mirror_cmd(spec), env=env, cwd=str(tmp_path), capture_output=True, text=True,
                                   timeout=120)
            assert final.returncode == 0, final.stderr
            report = verify_mirror(out)
            assert report.ok, (n, report.problems)
            assert report.problems == [], (n, report.problems)
            manifest = mf.load(out)
            kept = {t.path for t in manifest.tombstones}  # the old bytes, kept at their old path (sync/tombstones.py)
            listed = {f.path.rsplit("/", 1)[-1]: f for f in manifest.files if f.kind == "wheel" and f.path not in kept}
            for w in changed:
                assert listed[w.filename].sha256 == hashlib.sha256(w.data).hexdigest()
                assert (out / listed[w.filename].path).read_bytes() == w.data
                # the new copy and the old one's tombstone: superseded and unpublished ones were removed
                old = [out / p for p in kept if p.rsplit("/", 1)[-1] == w.filename]
                assert len(old) == 1, (n, sorted(kept))
                assert sorted((out / "packages").rglob(w.filename)) == sorted([out / listed[w.filename].path, *old])
    total = sum(kills.values())
    print(f"re-sync kills by phase: {dict(kills)} (total {total}); live verify-mirror clean after {verified}")
    assert total >= 10, kills
    assert verified == total, kills
    # the unchanged wheels are already in place, so an early kill reads as "download" here
    assert kills["download"] >= 4, kills
    assert kills["publish"] >= 4, kills
