#!/usr/bin/env python3
"""Benchmark: cold mirror of the CPU closure (real torch 2.13.0+cpu + deps + numpy) from a
loopback PyTorch-shaped upstream, against

- ``cp`` of the same files (the limit: a local copy), and
- ``pip download`` of the same closure from the same upstream (hermetic pip),

in one run; then a no-op re-sync (time, bytes fetched) and the mirror process's peak RSS.
Each mirror run is ``torchdepot mirror --spec SPEC --out OUT`` in a child process, through the
CLI's own code (click group and command); its whole run is timed inside the child, from before
its first torchdepot import, and the whole child process (interpreter start included, as for
``pip download``) is printed too.

The cold fetch is the time bytes were moving: the union of the downloads' spans, from each
file's first request to its last byte stored (``FetchReport.moving_seconds``). The fetcher
starts early (the pinned torch downloads while its closure resolves) and idles until the
resolution's other files come; that open time is printed too, not compared. Every byte is
hashed (sha256) as it arrives, so ``sha256`` of the same files in one thread is printed as
the floor next to ``cp``. The run's CPU time (this process and its children: uv, the fork
that reads pip's configuration) over the cores is printed as the wall time no scheduling
could beat; what the run takes beyond it is its critical path (imports, then the upstream
page, the resolution and the last download, one after the other).

Goals (issue 21): cold fetch <= 1.5x cp, whole run <= 0.3x pip download, no-op <= 1 s and 0
bytes, peak RSS <= 80 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TORCH_CACHE, TORCH_VERSION  # noqa: E402
from tests.httpserver import Server  # noqa: E402
from tests.mirror_upstream import build_upstreams  # noqa: E402
from tests.venvs import hermetic_env  # noqa: E402

DEPS = TORCH_CACHE / "deps"

# Runs `torchdepot mirror --spec SPEC --out OUT` in this child process through the CLI's own code
# (click group, command, sync: what the console script runs, its result returned instead of
# exiting) and reports its own peak RSS (uv's is separate).
CHILD = """
import json, resource, sys, time
t0 = time.monotonic()
from torchdepot.cli import main
res = main.main(["mirror", "--spec", sys.argv[1], "--out", sys.argv[2]], prog_name="torchdepot",
                standalone_mode=False)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it reported the bench's own
# peak (it holds the torch wheel while it builds the upstream), 226 MB, not this process's
self_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # uv's (an upper bound, same caveat)
# CPU seconds of this process and its children (uv, the fork that reads pip's configuration)
cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
          for f in ("ru_utime", "ru_stime"))
print(json.dumps({"total": time.monotonic() - t0, "fetch": res.report.moving_seconds,
                  "fetcher_open": res.report.seconds, "bytes": res.report.fetched_bytes,
                  "files": len(res.report.results), "summary": res.summary, "rss_self_mb": self_kb / 1024,
                  "rss_children_mb": kids_kb / 1024, "phases": res.phases, "cpu": cpu}))
"""


def wheels() -> tuple[Path, list[Path]]:
    torch = sorted(TORCH_CACHE.glob(f"torch-{TORCH_VERSION}+cpu-*.whl")) or sorted(DEPS.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
    deps = sorted(p for p in DEPS.glob("*.whl") if not p.name.startswith("torch-"))
    if not torch or not deps:
        DEPS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"torch=={TORCH_VERSION}", "numpy", "-d", str(DEPS)],
                       check=True, capture_output=True)
        return wheels()
    return torch[0], deps


def mirror_run(spec: Path, out: Path, env: dict) -> dict:
    """One run; ``total`` is timed inside the child (from before its first torchdepot import),
    ``process`` around the whole child, interpreter start and exit included, as pip's is."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spec), str(out)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    process = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"mirror failed: {proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process": process}


def drop_cache_hint(paths: list[Path]) -> None:
    # Same footing for every contender: read the sources once so all runs hit the page cache.
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def cp_seconds(files: list[Path], dest: Path, sync: bool = False) -> float:
    """The baseline: ``cp`` of the same files into a fresh ``dest`` (then ``sync -f`` if asked)."""
    dest.mkdir()
    t0 = time.monotonic()
    subprocess.run(["cp", *map(str, files), str(dest)], check=True)
    if sync:
        subprocess.run(["sync", "-f", str(dest)], check=True)
    return time.monotonic() - t0


def sha256_seconds(files: list[Path]) -> float:
    """The hash floor: sha256 of every file, one after the other (the files are in the page cache)."""
    t0 = time.monotonic()
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return time.monotonic() - t0


def compile_bytecode() -> None:
    """torchdepot's modules compiled to ``__pycache__`` first, as pip (the baseline) and every
    installed package have them: a ``pip install`` compiles at install time and Python writes
    them on a first import, but this repository's editable install under
    PYTHONDONTWRITEBYTECODE=1 would compile all ~25k lines from source in every timed run
    (~0.1 s of each, measured)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "torchdepot")], check=True,
                   capture_output=True)


def main() -> None:
    compile_bytecode()
    torch, deps = wheels()
    files = [torch, *deps]
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory(prefix="torchdepot-bench-") as tmp:
        tmp = Path(tmp)
        a_root, b_root = tmp / "A", tmp / "B"
        a_root.mkdir()
        b_root.mkdir()
        with Server(b_root) as b, Server(a_root) as a:
            build_upstreams(a_root, b_root, b.url, [torch], deps)
            spec = tmp / "mirror.yaml"
            spec.write_text("packages: [torch]\nextra_packages: [numpy]\naccelerators: [cpu]\npythons: ['3.11']\n"
                            f"platforms: [linux-x86_64]\nupstreams: [{a.url}/whl]\njobs: 4\n")
            env = hermetic_env(PIP_INDEX_URL=f"{b.url}/simple")
            drop_cache_hint(files)

            cp_s = cp_seconds(files, tmp / "cp")
            # The fetcher fsyncs every file before publishing it (durability); cp does not.
            cp_sync_s = cp_seconds(files, tmp / "cp-sync", sync=True)
            sha_s = sha256_seconds(files)
            load = os.getloadavg()[0]

            cold = mirror_run(spec, tmp / "out", env)
            noop = mirror_run(spec, tmp / "out", env)

            t0 = time.monotonic()
            pip = subprocess.run([sys.executable, "-m", "pip", "download", "--index-url", f"{a.url}/whl/cpu",
                                  "--no-cache-dir", "-d", str(tmp / "pipdl"), "torch", "numpy"],
                                 capture_output=True, text=True, env=env)
            pip_s = time.monotonic() - t0
            if pip.returncode:
                raise SystemExit(f"pip download failed: {pip.stderr[-1500:]}")
            pip_files = len(list((tmp / "pipdl").glob("*.whl")))

    print(f"closure: {len(files)} files, {total_mb:.1f} MB (torch {TORCH_VERSION}+cpu + deps + numpy), loopback HTTP; "
          f"load average {load:.1f}; torchdepot's bytecode compiled first, as pip's is")
    print(f"cp (limit)                 : {cp_s:6.2f} s")
    print(f"cp + sync (durable limit)  : {cp_sync_s:6.2f} s")
    print(f"sha256 of the files (floor): {sha_s:6.2f} s  = {sha_s / cp_s:5.2f}x cp")
    print(f"pip download ({pip_files} files)    : {pip_s:6.2f} s")
    print(f"torchdepot cold, fetch     : {cold['fetch']:6.2f} s  = {cold['fetch'] / cp_s:5.2f}x cp, "
          f"{cold['fetch'] / sha_s:5.2f}x sha256, {cold['fetch'] / pip_s:5.2f}x pip download, "
          f"{cold['fetch'] / cp_sync_s:5.2f}x cp+sync   [bytes moving; the fetcher was open "
          f"{cold['fetcher_open']:.2f} s; {cold['summary']}]")
    print(f"torchdepot cold, whole run : {cold['total']:6.2f} s  = {cold['total'] / cp_s:5.2f}x cp, "
          f"{cold['total'] / pip_s:5.2f}x pip download   (incl. upstream crawl + uv resolution; the whole "
          f"process with interpreter start: {cold['process']:.2f} s = {cold['process'] / pip_s:.2f}x)")
    print(f"  its CPU time             : {cold['cpu']:6.2f} s (torchdepot, uv, the pip-config fork) on "
          f"{os.cpu_count()} cores: {cold['cpu'] / (os.cpu_count() or 1):.2f} s of wall at the very least, "
          f"{cold['cpu'] / (os.cpu_count() or 1) / pip_s:.2f}x pip download   [the upstream server's CPU not counted]")
    print(f"no-op re-sync              : {noop['total']:6.2f} s, {noop['bytes']} bytes fetched "
          f"(fetch step {noop['fetch']:.2f} s)   [{noop['summary']}]")
    fmt = lambda ph: ", ".join(f"{k} {v:.2f} s" for k, v in ph.items())  # noqa: E731
    print(f"phases cold: {fmt(cold['phases'])}; no-op: {fmt(noop['phases'])}")
    print(f"peak RSS torchdepot process: {cold['rss_self_mb']:6.1f} MB  (uv resolver child: {cold['rss_children_mb']:.1f} MB)")
    goals = {
        f"fetch <= 1.5x cp ({cold['fetch'] / cp_s:.2f}x)": cold["fetch"] <= 1.5 * cp_s,
        f"whole run <= 0.3x pip download ({cold['total'] / pip_s:.2f}x)": cold["total"] <= 0.3 * pip_s,
        "no-op <= 1 s": noop["total"] <= 1.0,
        "no-op 0 bytes": noop["bytes"] == 0,
        "peak RSS <= 80 MB": cold["rss_self_mb"] <= 80,
    }
    print("goals: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
