#!/usr/bin/env python3
"""Benchmark: a regional operator's sync (``releases: "torch>=2.0"``, every accelerator, Python
and platform) of the synthetic whole-index upstream, against the 300 MB memory goal (issue 21).

The upstream is bench/index.py's (torch, torchvision and torchaudio 2.0-2.13 for every
accelerator, Python and platform that line shipped, tiny wheels with real names, PEP 658
``.metadata`` and ``#sha256=``; the dependencies listed under every ``/whl/<acc>/``), plus the
aggregate ``/whl/<project>/`` pages download.pytorch.org has (``accelerators: [all]`` reads
them). Served on loopback by a static server that answers ``If-Modified-Since`` with 304.

In a child process each (its peak RSS is the sync's): a cold sync, a no-op re-sync and a
``--dry-run``. Printed: time, requests, bytes fetched and peak RSS per run, and the RSS goal
ratio. ``python bench/regional.py``; the built upstream is kept under the system temp dir
(``torchdepot-bench-regional-<version>``) and reused by the next run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import index  # noqa: E402  (bench/index.py: the one synthetic generator)

from tests.httpserver import Server  # noqa: E402
from tests.venvs import hermetic_env  # noqa: E402

BUILD = "v1"  # bump when the generated upstream changes
RSS_GOAL_MB = 300
TORCH_PROJECTS = ("torch", "torchvision", "torchaudio")


def build(root: Path) -> int:
    """bench/index.py's upstream, plus the aggregate ``/whl/<project>/`` pages of the torch projects."""
    return index.build(root, aggregate=TORCH_PROJECTS)


CHILD = """
import json, resource, sys, time
t0 = time.monotonic()
from torchdepot.spec.mirror import load_spec
from torchdepot.sync.pip import sync
spec = load_spec(sys.argv[1])
lines = []
res = sync(spec, progress=False, echo=lines.append, dry_run=sys.argv[2] == "dry")
print(json.dumps({"total": time.monotonic() - t0, "requests": res.requests, "phases": res.phases,
                  "fetched": res.report.fetched_bytes if res.report else 0,
                  "downloaded": len(res.report.downloaded) if res.report else 0,
                  "files": len(res.manifest.files) if res.manifest else 0, "changed": res.index_changed,
                  "lines": [m for m in lines if m.startswith("releases: ") and "files over" in m],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(spec: Path, mode: str, env: dict) -> dict:
    return index.run(spec, mode, env, child=CHILD, what="regional sync")


def main() -> None:
    t0 = time.monotonic()
    up, wheels = index.built_upstream(f"torchdepot-bench-regional-{BUILD}", build)
    print(f"upstream: {wheels} wheels ({time.monotonic() - t0:.1f} s to build or find)")
    with Server(up) as s, tempfile.TemporaryDirectory(prefix="torchdepot-bench-") as tmp:
        env = hermetic_env(PIP_INDEX_URL=f"{s.url}/simple")
        spec = Path(tmp) / "regional.yaml"
        spec.write_text(json.dumps({
            "releases": "torch>=2.0", "packages": ["torch", "torchvision", "torchaudio"], "extra_packages": [],
            "accelerators": ["all"], "pythons": ["all"], "platforms": ["all"], "upstreams": [f"{s.url}/whl"],
            "out": str(Path(tmp) / "out"), "jobs": 8}))
        load = os.getloadavg()[0]
        got = {mode: run(spec, mode, env) for mode in ("cold", "noop", "dry")}
    fmt = lambda ph: ", ".join(f"{k} {v:.2f}" for k, v in ph.items())  # noqa: E731
    print(f"regional torch>=2.0, all accelerators/Pythons/platforms (load {load:.1f}): "
          f"{got['cold']['files']} manifest files; {got['cold']['lines'][0] if got['cold']['lines'] else ''}")
    for mode, r in got.items():
        print(f"  {mode:5s}: {r['total']:6.2f} s, {r['downloaded']} downloaded ({r['fetched']} bytes), "
              f"index {'changed' if r['changed'] else 'unchanged'}, requests {r['requests']}, "
              f"peak RSS {r['rss_mb']:.0f} MB; phases {fmt(r['phases'])}")
    rss = max(r["rss_mb"] for r in got.values())
    ratio = rss / RSS_GOAL_MB
    print(f"goal: peak RSS {rss:.0f} / {RSS_GOAL_MB} MB = {ratio:.2f}  {'met' if ratio <= 1 else 'MISSED'}")
    noop = got["noop"]
    quiet = noop["fetched"] == 0 and noop["requests"].get("metadata", 0) == 0 and not noop["changed"]
    print(f"no-op re-sync: {noop['total']:.2f} s vs cold {got['cold']['total']:.2f} s "
          f"(ratio {noop['total'] / got['cold']['total']:.2f}); no file bytes, no metadata, index unchanged: "
          f"{'met' if quiet else 'MISSED'}")


if __name__ == "__main__":
    main()
