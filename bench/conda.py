"""Conda benchmarks, baselines measured in the same run:

0. (issue 20) a conda-forge-sized channel: 300k synthetic linux-64 records with conda-forge's
   real names and shapes (tests/kit/condaforge.py), served over loopback as repodata.json.zst;
   the conda side of ``mirror --dry-run`` for one cu126 target, in a fresh process: wall time,
   the solve's own time and peak RSS; goal: solve <= 5 s, peak RSS <= 500 MB. Baseline: a plain
   ``rattler.solve_with_sparse_repodata`` of the same specs and virtual packages over the same
   files, in its own process (the ratio is ours / plain).

1. solve time per target over the real legacy ``pytorch`` channel repodata (2,181
   records; synthetic python/dependency records added so pytorch is installable);
   goal <= 50 ms per target.
2. mirror time (sync_conda over loopback HTTP, cold) vs ``cp`` of the same package files;
   goal <= 1.2x.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpserver import Server  # noqa: E402
from torchdepot.model.accel import parse_accelerator
from torchdepot.resolve.conda import SubdirSource, open_sources, solve_target
from torchdepot.ship import recipes as R
from torchdepot.spec.conda import CondaTarget
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.sync.conda import sync_conda

REPODATA = ROOT.parent / "shared" / "data" / "conda" / "repodata" / "pytorch_channel_linux-64_repodata.json"
_VER = re.compile(r"\d+(?:\.\d+)*")


def synthetic_deps(doc: dict) -> dict:
    """A record per version number the pytorch channel's depends mention, for every name it
    does not carry (python, numpy, mkl, cudatoolkit, ...), so solves are realistic."""
    have = {r["name"] for r in doc["packages"].values()}
    wanted: dict[str, set[str]] = {}
    builds: dict[str, set[str]] = {}
    for r in doc["packages"].values():
        for dep in r.get("depends", []):
            parts = dep.split()
            name = parts[0]
            if name in have or name.startswith("__") or name in ("pytorch-mutex", "cpuonly"):
                continue
            wanted.setdefault(name, set()).update(_VER.findall(parts[1]) if len(parts) > 1 else ())
            b = builds.setdefault(name, {"0"})
            if len(parts) > 2:
                b.add(parts[2].replace("*", "") or "0")
    out = {}
    for name, vers in sorted(wanted.items()):
        for v in sorted(vers | {"1.0"}):
            for b in sorted(builds[name]):
                fn = f"{name}-{v}-{b}.tar.bz2"
                out[fn] = {"name": name, "version": v, "build": b, "build_number": 0, "depends": [],
                           "subdir": "linux-64", "sha256": "0" * 64, "size": 1, "md5": "0" * 32}
    return out


def bench_solve(tmp: Path) -> None:
    doc = json.loads(REPODATA.read_text())
    doc["packages"].update(synthetic_deps(doc))
    (tmp / "pt" / "linux-64").mkdir(parents=True)
    (tmp / "pt" / "noarch").mkdir(parents=True)
    (tmp / "pt" / "linux-64" / "repodata.json").write_text(json.dumps(doc))
    # the legacy channel keeps its variant mutex in noarch (not in this capture): add it
    noarch = {f"pytorch-mutex-1.0-{v}.tar.bz2": {"name": "pytorch-mutex", "version": "1.0", "build": v, "build_number": 0,
                                                "depends": [], "subdir": "noarch", "noarch": "generic", "sha256": "0" * 64,
                                                "size": 1} for v in ("cpu", "cuda")}
    (tmp / "pt" / "noarch" / "repodata.json").write_text(json.dumps({"info": {"subdir": "noarch"}, "packages": noarch}))
    sources = [SubdirSource("pytorch", sd, (tmp / "pt").as_uri(), tmp / "pt" / sd / "repodata.json")
               for sd in ("linux-64", "noarch")]
    n = len(doc["packages"])
    print(f"solve: legacy pytorch channel linux-64, {n} records ({n - 2181} synthetic deps)")
    sparse = open_sources(sources)
    for acc, py in (("cpu", "3.10"), ("cu118", "3.10"), ("cu121", "3.11"), ("cu117", "3.9")):
        t = CondaTarget(parse_accelerator(acc), py, "linux-x86_64", "linux-64")
        solve_target(["pytorch", "torchvision"], sources, t, sparse)  # warm
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            sol = solve_target(["pytorch", "torchvision"], sources, t, sparse)
            times.append(time.perf_counter() - t0)
        torch = next(r for r in sol.records if str(r.name.normalized) == "pytorch")
        best = min(times) * 1000
        print(f"  {t.id:28s} {best:7.1f} ms (median {sorted(times)[2] * 1000:.1f} ms)  "
              f"pytorch {torch.version} {torch.build}  goal <=50 ms: {'ok' if best <= 50 else 'MISSED'}")


_CHILD_OURS = """
import json, sys, time
sys.path.insert(0, {root!r})
def hwm():  # this process's peak RSS in KiB (ru_maxrss would carry the parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
from torchdepot.spec.mirror import MirrorSpec
import torchdepot.resolve.conda as rc
from torchdepot.sync.conda import sync_conda
solve_s = []
inner = rc.solve_target
def timed(*a, **k):
    t0 = time.perf_counter()
    try:
        return inner(*a, **k)
    finally:
        solve_s.append(time.perf_counter() - t0)
import torchdepot.sync.conda as sc
sc.solve_target = timed
spec = MirrorSpec(accelerators=("cu126",), pythons=("3.11",), platforms=("linux-x86_64",),
                  conda={{"channels": [{{"name": "conda-forge", "mirrors": [{url!r}]}}], "specs": ["pytorch"]}})
t0 = time.perf_counter()
res = sync_conda(spec, {out!r}, dry_run=True)
total = time.perf_counter() - t0
torch = [r for s in res.solutions for r in s.records if str(r.name.normalized) == "pytorch"]
print(json.dumps({{"total": total, "solve": sum(solve_s), "rss": hwm(),
                  "build": str(torch[0].build), "n": sum(len(s.records) for s in res.solutions)}}), flush=True)
import os; os._exit(0)  # py-rattler 0.28 can abort in its runtime's teardown at interpreter exit
"""

_CHILD_PLAIN = """
import asyncio, json, time
import rattler
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
from rattler import Channel, GenericVirtualPackage, MatchSpec, PackageName, SparseRepoData, Version
t0 = time.perf_counter()
chan = Channel({base!r})
sparse = [SparseRepoData(chan, sd, {chan_dir!r} + "/" + sd + "/repodata.json") for sd in ("linux-64", "noarch")]
vp = [GenericVirtualPackage(PackageName(n), Version(v), rattler.BuildString(b)) for n, v, b in
      (("__linux", "5.10", "0"), ("__glibc", "2.28", "0"), ("__unix", "0", "0"), ("__archspec", "1", "x86_64"),
       ("__cuda", "12.6", "0"))]
recs = asyncio.run(rattler.solve_with_sparse_repodata([MatchSpec("pytorch"), MatchSpec("python 3.11.*")], sparse,
                                                      virtual_packages=vp))
total = time.perf_counter() - t0
torch = [r for r in recs if str(r.name.normalized) == "pytorch"]
print(json.dumps({{"total": total, "rss": hwm(),
                  "build": str(torch[0].build), "n": len(recs)}}), flush=True)
import os; os._exit(0)  # py-rattler 0.28 can abort in its runtime's teardown at interpreter exit
"""


def _child(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_forge(tmp: Path, n_records: int = 300_000) -> None:
    from tests.kit.condaforge import write_synthetic_channel

    chan = write_synthetic_channel(tmp / "forge" / "conda-forge", n_records)
    zst = (chan / "linux-64" / "repodata.json.zst").stat().st_size
    raw = (chan / "linux-64" / "repodata.json").stat().st_size
    print(f"conda-forge-sized channel: {n_records} linux-64 records, repodata.json {raw / 1e6:.0f} MB "
          f"(.zst {zst / 1e6:.1f} MB)")
    with Server(tmp / "forge") as s:
        ours = _child(_CHILD_OURS.format(root=str(ROOT), url=f"{s.url}/conda-forge", out=str(tmp / "out-dry")))
    # the plain baseline reads the same decompressed files from disk (no download, no cache)
    plain = _child(_CHILD_PLAIN.format(base=f"file://{chan}", chan_dir=str(chan)))
    rss, prss = ours["rss"] / 1024, plain["rss"] / 1024  # VmHWM is in KiB
    print(f"  sync_conda --dry-run (fetch .zst over loopback + decode + 1 solve): {ours['total']:.2f} s, "
          f"solve {ours['solve']:.2f} s, peak RSS {rss:.0f} MB; pytorch {ours['build']}, {ours['n']} records")
    print(f"  plain rattler.solve_with_sparse_repodata (files on disk): {plain['total']:.2f} s, "
          f"peak RSS {prss:.0f} MB; pytorch {plain['build']}, {plain['n']} records")
    print(f"  ratio ours/plain: time {ours['total'] / plain['total']:.2f}x (solve only {ours['solve'] / plain['total']:.2f}x), "
          f"RSS {rss / prss:.2f}x; goal solve <=5 s: {'ok' if ours['solve'] <= 5 else 'MISSED'}, "
          f"RSS <=500 MB: {'ok' if rss <= 500 else 'MISSED'}")


def bench_mirror(tmp: Path) -> None:
    # a channel of real .conda files: metapackages + a 40 MB pytorch-labelled payload per variant
    import os
    sys.path.insert(0, str(ROOT))
    from tests.kit.wheels import build_wheel

    wheels = []
    for acc in ("cpu", "cu126"):
        blob = os.urandom(40 * 1024 * 1024).hex()[: 40 * 1024 * 1024]
        wheels.append(build_wheel(tmp, "torch", f"2.13.0+{acc}", "cp311-cp311-manylinux_2_28_x86_64",
                                  files={"torch/__init__.py": "", "torch/blob.txt": blob}, purelib=False))
    up = tmp / "srv" / "up"
    R.build_metapackages(up, ("12.6",))
    R.build_wheels(wheels, up, compression_level=1)
    from tests.kit.condapython import build_python_placeholder

    build_python_placeholder(up)  # pytorch depends on python (its cp tag); conda-forge would provide it
    R.index_channel(up)
    files = sorted(p for p in up.rglob("*.conda"))
    size = sum(p.stat().st_size for p in files)
    dest = tmp / "cp"
    dest.mkdir()
    t0 = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dest)], check=True)
    cp_s = time.perf_counter() - t0
    dest2 = tmp / "cp2"
    dest2.mkdir()
    t0 = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dest2)], check=True)
    subprocess.run(["sync", "-f", str(dest2)], check=True)  # the fetcher fsyncs every file it publishes
    cps_s = time.perf_counter() - t0
    with Server(tmp / "srv") as s:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64",),
                          conda={"channels": [{"name": "up", "mirrors": [f"{s.url}/up"]}],
                                 "specs": ["pytorch"]})
        t0 = time.perf_counter()
        res = sync_conda(spec, tmp / "out", jobs=4)
        mirror_s = time.perf_counter() - t0
    n = sum(1 for f in res.files if f.path.endswith(".conda"))
    print(f"mirror: {n} packages, {size / 1e6:.1f} MB (all {len(files)} channel files for cp)")
    print(f"  cp {cp_s * 1000:.0f} ms; sync_conda (repodata + 2 solves + fetch + verify + publish) "
          f"{mirror_s * 1000:.0f} ms; ratio {mirror_s / cp_s:.2f}x  goal <=1.2x: "
          f"{'ok' if mirror_s / cp_s <= 1.2 else 'MISSED'}")
    print(f"  cp + sync (durable, like the fetcher's fsync) {cps_s * 1000:.0f} ms; ratio {mirror_s / cps_s:.2f}x")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="td-bench-conda-") as d:
        bench_forge(Path(d), int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
        if "--forge-only" in sys.argv:
            raise SystemExit(0)
        bench_solve(Path(d))
        bench_mirror(Path(d))
        shutil.rmtree(d, ignore_errors=True)
