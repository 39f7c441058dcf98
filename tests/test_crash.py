"""SIGKILL `torchdepot mirror` at named points (crawl, download, publish), re-run, converge.

Re-syncs where upstream changed the bytes behind names are killed too: after each kill the
LIVE mirror passes `torchdepot verify-mirror` (immutable publication, docs/publication.md).

Every kill point is named and deterministic, as in tests/test_crash_lifecycle.py: the real CLI
runs in a child (``KILLER``) that SIGKILLs its own process group (uv included) when the named
event happens, so the process dies exactly as from an outside ``kill -9`` (no handler, no
cleanup), at a point the test names rather than at a wall-clock offset. Each point must be
reached (the run must die by SIGKILL), so the counts asserted below are exact. After every
kill: no file at a final path is corrupt and every link of a published index resolves to a
hash-valid file. After the final run: verify-mirror is clean, and no file published before a
kill was fetched again.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import mirror_cmd, mirror_env, populate, write_spec
from torchdepot.sources.pep503 import parse_html
from torchdepot.store import manifest as mf
from torchdepot.sync.check import verify_mirror

pytestmark = pytest.mark.slow  # SIGKILL suites: dozens of real CLI runs

PAYLOAD = 100_000

# Runs `torchdepot <args>` and SIGKILLs its process group at POINT (argv[1]), "<event>:<n>":
#   page:n        after the n-th upstream page or metadata file was read (crawl)
#   chunk:n       when the fetcher receives its n-th body chunk, before writing it (mid-download);
#                 a file may arrive in one chunk, so n is at most the number of files still to fetch
#   placed:n      after the n-th wheel reached its final path
#   unlink:n      after the n-th file deletion (after a re-sync's commit: its journal is cleared)
#   enter:<module>:<function>:n / exit:...   on entry to / return from the n-th call
KILLER = r'''
import os, pathlib, signal, sys, importlib, threading
point, args = sys.argv[1], sys.argv[2:]
event, *target, nth = point.split(":")
nth, seen, lock = int(nth), [0], threading.Lock()

def tick():
    with lock:
        seen[0] += 1
        if seen[0] == nth:
            os.killpg(0, signal.SIGKILL)  # this process and its uv children, nothing else

def wrap(owner, name, before=False):
    real = getattr(owner, name)
    def wrapped(*a, **k):
        if before:
            tick()
        out = real(*a, **k)
        if not before:
            tick()
        return out
    setattr(owner, name, wrapped)

if event == "page":
    import torchdepot.sources.upstream as upstream
    wrap(upstream.UpstreamReader, "get")
elif event == "chunk":
    import urllib3.response
    real_read1 = urllib3.response.HTTPResponse.read1
    def read1(self, *a, **k):
        data = real_read1(self, *a, **k)
        if data:
            tick()
        return data
    urllib3.response.HTTPResponse.read1 = read1
elif event == "placed":
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if str(dst).endswith(".whl"):
            tick()
    os.replace = replace
elif event == "unlink":
    wrap(pathlib.Path, "unlink")
else:  # enter/exit: patched before the CLI imports its users, so `from m import f` binds the wrapper
    module, function = target
    wrap(importlib.import_module(module), function, before=event == "enter")
from torchdepot.cli import main
sys.argv = ["torchdepot", *args]
main()
'''

RESOLVE = "torchdepot.resolve.uv:resolve"
JOURNAL = "torchdepot.store.publication:record"
SIDECARS = "torchdepot.sync.pipindex:publish_pip"  # PEP 658 metadata, pylock.toml, then the index
PAGES = "torchdepot.store.pages:publish"  # builds the new index generation and swaps it in
SAVE = "torchdepot.store.manifest:save"
PHASES = {"page": "crawl", "chunk": "download", "placed": "download", "unlink": "publish"}
PHASE_OF_CALL = {RESOLVE: "crawl", JOURNAL: "crawl", SIDECARS: "publish", PAGES: "publish", SAVE: "publish"}


def phase_of(point: str) -> str:
    event, *target, _n = point.split(":")
    return PHASES.get(event) or PHASE_OF_CALL[":".join(target)]


# First syncs, per lane (a fresh output dir): the kill point of each successive run, then a run
# to completion. Each point is reachable whatever the earlier kills of its lane left: a crawl
# kill may leave at most torch (downloaded early, during the resolve) in place, and a lane's
# later download point asks for no more placements, nor chunks (a file may come in one), than
# there are wheels still missing (5 in all).
# In a first sync the manifest is saved twice: the commit, then the closing check's record.
LANES = [
    ["page:1", "chunk:1", f"exit:{PAGES}:1"],
    ["page:4", "placed:1", f"enter:{SAVE}:1"],
    [f"enter:{RESOLVE}:1", "chunk:2", f"exit:{SAVE}:1"],
    [f"exit:{RESOLVE}:1", "placed:2", f"enter:{SIDECARS}:1"],
    ["page:8", "placed:3", f"exit:{SIDECARS}:1"],
    [f"exit:{JOURNAL}:1", "chunk:4", f"enter:{PAGES}:1"],
    ["page:6", "placed:4", f"enter:{SAVE}:2"],
]
FIRST_SYNC_KILLS = 21  # 7 per phase; the README's figure

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


def _killed_at(point: str, spec: Path, env: dict, cwd: Path) -> None:
    """One `torchdepot mirror` run, SIGKILLed at ``point``; fails if the point was not reached."""
    proc = subprocess.run([sys.executable, "-c", KILLER, point, "mirror", "--spec", str(spec)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def _run(spec: Path, env: dict, cwd: Path) -> None:
    proc = subprocess.run(mirror_cmd(spec), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_sigkill_at_named_points_of_a_first_sync_converges(tmp_path):
    kills: collections.Counter = collections.Counter()
    torch = {"torch"}
    with FaultServer() as server:
        up = populate(server, payload=PAYLOAD)
        env = mirror_env(up.url, tmp_path)
        for n, lane in enumerate(LANES):
            server.reset_counters()
            out = tmp_path / f"out{n}"
            spec = write_spec(tmp_path / f"spec{n}.yaml", up.url, out)
            hits_when_published: dict[str, int] = {}
            for point in lane:
                _killed_at(point, spec, env, tmp_path)
                phase = phase_of(point)
                kills[phase] += 1
                # After the kill: nothing corrupt at a final path, no index link to a bad file.
                published = _published_wheels(out, up.wheels)
                assert all(published.values()), f"corrupt file published: {published}"
                assert _check_published_index(out) == []
                projects = {name.split("-")[0] for name in published}
                if phase == "publish":
                    assert len(published) == len(up.wheels), (point, published)
                elif point.startswith("placed:"):  # this run placed n (a parallel job may add one)
                    assert len(published) >= int(point.split(":")[1]), (point, published)
                elif phase == "download":  # mid-body: some wheel is not in place yet
                    assert len(published) < len(up.wheels), (point, published)
                elif lane.index(point) == 0:  # a crawl kill: at most torch, fetched while uv resolves
                    assert projects <= torch, (point, published)
                for name in published:
                    hits_when_published.setdefault(name, server.hits[up.paths[name]])
            _run(spec, env, tmp_path)
            report = verify_mirror(out)  # full re-hash
            assert report.ok, (n, report.problems)
            assert report.problems == [], (n, report.problems)
            assert _check_published_index(out) == []
            assert all(_published_wheels(out, up.wheels).values())
            assert set(_published_wheels(out, up.wheels)) == set(up.wheels)
            for name, hits in hits_when_published.items():
                assert server.hits[up.paths[name]] == hits, f"lane {n}: {name} downloaded again after it was published"
    print(f"kills by phase: {dict(kills)} (total {sum(kills.values())})")
    assert sum(kills.values()) == FIRST_SYNC_KILLS == sum(len(lane) for lane in LANES)
    assert kills == {"crawl": 7, "download": 7, "publish": 7}, kills


# -- re-syncs where upstream changed the bytes behind names (issue 13 (a)) ------------------
# From a complete mirror whose upstream then re-published torch and mpmath under the same names
# (2 changed wheels: at least 2 chunks, exactly 2 placements). In a re-sync the manifest is saved
# three times: widened (the live one plus the new files, before the index swap), the commit, the
# closing check's record; the journal is cleared between the last two (the old copies stay as
# tombstones). A resolve point can only open a lane (the next run reuses the resolution).
RESYNC_LANES = [
    [f"enter:{RESOLVE}:1", "chunk:1", f"exit:{SAVE}:1"],
    ["page:3", "placed:1", f"exit:{PAGES}:1"],
    ["placed:2", f"exit:{SAVE}:2", f"enter:{SAVE}:3"],
    ["unlink:1", f"exit:{SIDECARS}:1", "page:1"],
    ["chunk:2", "placed:1", f"enter:{PAGES}:1"],
]
RESYNC_KILLS = 15  # the README's figure


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
        base = tmp_path / "base"
        spec = write_spec(tmp_path / "base.yaml", up.url, base)
        _run(spec, env, tmp_path)
        # upstream re-publishes torch and mpmath under the same names with new bytes
        changed = [padded_wheel(*row, PAYLOAD, 1000 + i)
                   for i, row in enumerate(r for r in (TORCH, *DEPS) if r[0] in ("torch", "mpmath"))]
        pep503(changed, pages=["/whl/cpu", "/simple"], files="/whl/files", indexes=False).serve(server)
        for w in changed:
            up.wheels[w.filename] = w.data
        for path in up.paths.values():
            server.always(path, Fault())
        for n, lane in enumerate(RESYNC_LANES):
            out = tmp_path / f"re{n}"
            shutil.copytree(base, out, symlinks=True)
            spec = write_spec(tmp_path / f"re{n}.yaml", up.url, out)
            for point in lane:
                _killed_at(point, spec, env, tmp_path)
                kills[phase_of(point)] += 1
                check = _verify_cli(out, env)
                assert check.returncode == 0, (n, point, check.stdout, check.stderr)
                verified += 1
                assert _check_published_index(out) == []
            _run(spec, env, tmp_path)
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
    print(f"re-sync kills by phase: {dict(kills)}; live verify-mirror clean after {verified}")
    assert verified == sum(kills.values()) == RESYNC_KILLS == sum(len(lane) for lane in RESYNC_LANES)
    assert kills == {"crawl": 3, "download": 5, "publish": 7}, kills
