"""Fault matrix: fetch through a fault-injecting loopback upstream N times and count outcomes.

Each run fetches a few files into a fresh root; every file gets a fault from the matrix
(transient: "fail the first k attempts, then serve"; persistent: every attempt). A run is
``completed-valid`` when every file is published with the right bytes, ``failed-cleanly``
when every failed file has a one-line reason and nothing at its final path while every
published file is right. ``corrupt`` (a published file with wrong bytes, or a failed file
present at its final path) and ``outside root`` (any file written outside the run's
root) must both be 0. Times are printed as a ratio to a fault-free baseline run.

Then the attack classes of issue 13 (:mod:`bench.attacks`), each a handful of concrete
attempts run through the real CLI (``.venv/bin/torchdepot ...``) in a sandbox (fake HOME and
XDG dirs, its own TMPDIR, PIP_CONFIG_FILE and caches) against loopback servers the bench
starts: (a) published mirror corruption, (b) user files, (c) unbounded input, (d) tracebacks,
(e) planted symlinks, unbundle's destination and ``~`` in ``out:`` (issue 22 items 1-4),
(f) a package URL reused for other bytes and unbundle's commit killed (issue 22 items 5, 7),
(g) conda repodata (:mod:`bench.attacks.conda`: a dripping, inflating or deeply nested
``repodata.json``, read by ``mirror`` and by ``serve --pull-through``; issue 22 item 8).
Per class it prints the attempts, the runs that held, the corrupt files in the LIVE mirror
(verify-mirror after each attempt, plus published files whose bytes changed in place), the
files changed outside the command's root (damaged user files included), tracebacks, failures
that were not one stderr line, and timeouts; then one line per attempt that did not hold.
An attempt holds when the command succeeded with a verify-clean live mirror, or failed with at
most one stderr line and a non-zero exit, left the published mirror verify-clean, wrote
nothing outside its root, and passed the attack's own bound (see each module's docstring).

    python bench/faults.py [--runs 50] [--files 6] [--seed 1] [--only matrix|attacks] [--classes abcdefg] [-v]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faultserver import Fault, FaultServer, flaky_faults, leave_partial  # noqa: E402
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.net.http import Client, HttpConfig

SIZE = 120_000
FAULTS = flaky_faults(SIZE) + [
    Fault("status", status=404),
    Fault("stall", n=500, seconds=0.6),
    Fault("drip", rate=400_000),
    Fault("wrong_bytes"),
    Fault("ignore_range"),
    Fault("bad_content_range"),
    Fault("html"),
    Fault("html_disguised"),
    Fault("oversize"),
    Fault("redirect_loop"),
    Fault("chunked"),
]


def _data(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def one_run(run: int, nfiles: int, rng: random.Random, faulty: bool, tmp: Path) -> dict:
    root = tmp / f"run{run}" / "root"
    expected: dict[str, bytes] = {}
    client = Client(HttpConfig(retries=0, backoff=0.01, max_backoff=0.05, connect_timeout=2, read_timeout=0.3))
    fetcher = Fetcher(root, client, attempts=3, file_timeout=5, deadline=30, progress=False)
    with FaultServer() as up:
        items = []
        for i in range(nfiles):
            data = _data(run * 1000 + i)
            name = f"p{i}-1.0-py3-none-any.whl"
            url = up.add(f"/whl/{name}", data)
            key = f"packages/p{i}/{name}"
            expected[key] = data
            roll = rng.random()
            if faulty and roll < 0.8:
                fault = rng.choice(FAULTS)
                if roll < 0.6:
                    up.schedule(f"/whl/{name}", *[fault] * rng.randint(1, 2))  # transient
                else:
                    up.always(f"/whl/{name}", fault)  # persistent
                if rng.random() < 0.2:  # a partial left by an earlier crash, maybe garbage
                    cut = rng.randint(1, SIZE - 1)
                    leave_partial(fetcher, key, data[:cut] if rng.random() < 0.7 else b"\0" * cut)
            claim = hashlib.sha256(data).hexdigest() if rng.random() < 0.85 else None
            items.append(FetchItem(key, (url,), claim, SIZE if claim else None))
        report = fetcher.run(items)
        client.close()
    corrupt = 0
    failed = 0
    for r in report.results:
        final = root / r.key
        if r.status == "failed":
            failed += 1
            if final.exists() or not r.error or "\n" in r.error:
                corrupt += 1
        else:
            claimed = next(i.sha256 for i in items if i.key == r.key)
            got = final.read_bytes()
            # Without an upstream claim, wrong bytes cannot be told from right ones: they are
            # stored as what they are (hash recorded truthfully); with a claim they must be exact.
            if (claimed and got != expected[r.key]) or r.sha256 != hashlib.sha256(got).hexdigest():
                corrupt += 1
    outside = [p for p in (tmp / f"run{run}").rglob("*") if p.is_file() and root not in p.parents]
    return {"ok": failed == 0 and corrupt == 0, "clean_fail": failed > 0 and corrupt == 0, "corrupt": corrupt,
            "outside": len(outside), "files": len(report.results), "failed_files": failed,
            "downloaded": len(report.downloaded)}


def attacks(classes: str, verbose: bool) -> int:
    """Run the attack classes; print the table. Returns the number of attempts that did not hold."""
    from bench.attacks import conda, publish, tracebacks, unbounded, userfiles
    modules = {"a": ("published mirror corruption", publish.run), "b": ("user files", userfiles.run),
               "c": ("unbounded input", unbounded.run), "d": ("tracebacks", tracebacks.run),
               "e": ("planted links, unbundle --to, ~ in out:", userfiles.run_links),
               "f": ("URL reuse, unbundle commit kills", publish.run_republish),
               "g": ("conda repodata", conda.run)}
    rows, failed = [], []
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="td-attacks-") as d:
        for key in classes:
            title, run_class = modules[key]
            t = time.monotonic()
            outs = run_class(Path(d) / key)
            rows.append((f"({key}) {title}", len(outs), sum(o.held for o in outs), sum(o.corrupt for o in outs),
                         sum(o.outside for o in outs), sum(o.traceback for o in outs),
                         sum(o.not_one_line for o in outs), sum(o.timed_out for o in outs), time.monotonic() - t))
            failed += [o for o in outs if not o.held]
            if verbose:
                for o in outs:
                    print(f"  {'held' if o.held else 'BROKE'} ({o.cls}) {o.name}: {o.note}", flush=True)
    head = ("class", "attempts", "held", "corrupt-in-live-mirror", "outside-root", "tracebacks", "not-one-line",
            "timeouts", "seconds")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *[(r[0], *r[1:8], f"{r[8]:.0f}") for r in rows], strict=True)]
    print(f"\nattack classes (issues 13, 22): {sum(r[1] for r in rows)} attempts in {time.monotonic() - t_all:.0f}s")
    for r in [head, *[(r[0], *r[1:8], f"{r[8]:.0f}") for r in rows]]:
        print("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))))
    total = ("total", *[sum(r[i] for r in rows) for i in range(1, 8)], f"{sum(r[8] for r in rows):.0f}")
    print("  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(total, widths, strict=True))))
    if failed:
        print("\ndid not hold:")
        for o in failed:
            print(f"  ({o.cls}) {o.name}: {o.note}")
    return len(failed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", choices=("matrix", "attacks"), help="run only the fetch fault matrix or the attacks")
    ap.add_argument("--classes", default="abcdefg", help="attack classes to run (default abcdefg)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every attempt as it finishes")
    args = ap.parse_args()
    matrix_ok = True
    if args.only != "attacks":
        matrix_ok = matrix(args) == 0
    broke = 0 if args.only == "matrix" else attacks(args.classes, args.verbose)
    return 0 if matrix_ok and broke == 0 else 1


def matrix(args) -> int:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="td-faults-") as d:
        tmp = Path(d)
        t = time.monotonic()
        base = one_run(-1, args.files, rng, False, tmp)
        baseline = time.monotonic() - t
        assert base["ok"], base
        totals = dict(runs=0, completed_valid=0, failed_cleanly=0, corrupt=0, outside=0, files=0, failed_files=0)
        t = time.monotonic()
        for run in range(args.runs):
            res = one_run(run, args.files, rng, True, tmp)
            totals["runs"] += 1
            totals["completed_valid"] += res["ok"]
            totals["failed_cleanly"] += res["clean_fail"]
            totals["corrupt"] += res["corrupt"]
            totals["outside"] += res["outside"]
            totals["files"] += res["files"]
            totals["failed_files"] += res["failed_files"]
        elapsed = time.monotonic() - t
    per_run = elapsed / max(1, args.runs)
    print(f"fault matrix: {len(FAULTS)} fault modes, {args.files} files per run, seed {args.seed}")
    print(f"runs:              {totals['runs']}")
    print(f"completed-valid:   {totals['completed_valid']}")
    print(f"failed-cleanly:    {totals['failed_cleanly']}")
    print(f"corrupt:           {totals['corrupt']}  (must be 0)")
    print(f"files outside root:{totals['outside']:>2}  (must be 0)")
    print(f"files:             {totals['files']}: {totals['files'] - totals['failed_files']} published hash-valid, "
          f"{totals['failed_files']} failed cleanly (per file: 20% no fault, 60% transient, 20% persistent)")
    print(f"time per run:      {per_run / baseline:.1f}x the fault-free baseline ({baseline * 1000:.0f} ms)")
    return 0 if totals["corrupt"] == 0 and totals["outside"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
