"""Pull-through under load: ``torchdepot serve --pull-through`` (the real command, in its own
process) in front of a loopback upstream whose files arrive at a capped rate, hit by 200
concurrent clients on a mix of cached and uncached wheels.

Printed: errors (goal 0: every answer a 200 with the right bytes), upstream bytes per file
(goal <= 1.0x: each file crosses the upstream link once however many clients want it), the
server's peak RSS, the run's time against a baseline measured in the same run (the same 200
clients against plain ``torchdepot serve`` on the finished mirror, everything cached), and
the slowloris figure: the slowest page among 10 while 40 connections dribble header bytes,
against the same page with none (goal < 1 s).

    python bench/pullthrough.py [--clients 200] [--files 24] [--size-mb 2] [--rate-mb 40]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faultserver import Fault, FaultServer  # noqa: E402
from tests.kit.upstream import padded_wheel, pep503  # noqa: E402
from tests.venvs import hermetic_env  # noqa: E402

TD = Path(sys.executable).parent / "torchdepot"
MB = 1_000_000


def start(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([str(TD), "serve", "--port", "0", "--quiet", *args], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r":(\d+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, int(m.group(1))


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def get(port: int, path: str, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def clients(port: int, jobs: list[tuple[str, str, bytes]], n: int) -> tuple[int, float]:
    """``n`` concurrent clients, each one page and one file -> (errors, seconds)."""
    errors = 0
    kinds: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    rng = random.Random(7)
    picks = [rng.choice(jobs) for _ in range(n)]
    gate = threading.Barrier(n)

    def one(page: str, path: str, data: bytes) -> None:
        nonlocal errors
        gate.wait()
        why = ""
        try:
            pstatus = get(port, page)[0]
            status, body = get(port, path)
            if pstatus != 200 or status != 200:
                why = f"HTTP {pstatus}/{status}"
            elif hashlib.sha256(body).digest() != hashlib.sha256(data).digest():
                why = "wrong bytes"
        except (OSError, http.client.HTTPException) as exc:
            why = type(exc).__name__
        if why:
            with lock:
                errors += 1
                kinds[why] += 1

    threads = [threading.Thread(target=one, args=pick) for pick in picks]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if kinds:
        print(f"  errors by kind: {dict(kinds)}")
    return errors, time.monotonic() - started


def slowest_page(port: int, dribblers: int) -> float:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(dribblers)]
    for s in socks:
        s.sendall(b"GET /whl/cpu/ HTTP/1.1\r\nX-")
    worst = 0.0
    try:
        for _ in range(10):
            for s in socks:
                s.sendall(b"a")
            t = time.monotonic()
            status, _ = get(port, "/whl/cpu/p0/", timeout=30)
            worst = max(worst, time.monotonic() - t)
            assert status == 200
            time.sleep(0.2)
    finally:
        for s in socks:
            s.close()
    return worst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--files", type=int, default=24)
    ap.add_argument("--size-mb", type=float, default=2.0)
    ap.add_argument("--rate-mb", type=float, default=40.0, help="upstream bytes per second per connection (MB)")
    a = ap.parse_args()
    wheels = [padded_wheel(f"p{i}", "1.0", "py3-none-any", (), int(a.size_mb * MB), i) for i in range(a.files)]
    with tempfile.TemporaryDirectory() as tmp, FaultServer(default=Fault("drip", rate=a.rate_mb * MB)) as up:
        pep503(wheels, pages=["/whl/cpu"], files="/whl/cpu", metadata=False).serve(up)
        root = Path(tmp) / "mirror"
        env = hermetic_env(PIP_INDEX_URL=f"{up.url}/whl/cpu")
        proc, port = start("--root", str(root), "--pull-through", "--upstream", f"{up.url}/whl", env=env)
        try:
            jobs = [(f"/whl/cpu/p{i}/", f"/packages/p{i}/{w.filename}", w.data) for i, w in enumerate(wheels)]
            cached = jobs[: len(jobs) // 2]
            for page, path, _data in cached:  # half the files are in the mirror before the load
                get(port, page)
                get(port, path)
            up.reset_counters()
            errors, took = clients(port, jobs, a.clients)
            per_file = max(up.body_bytes[f"/whl/cpu/{w.filename}"] / len(w.data) for w in wheels)
            cached_fetched = sum(up.body_bytes[f"/whl/cpu/{w.filename}"] for w in wheels[: len(jobs) // 2])
            loris, clear = slowest_page(port, 40), slowest_page(port, 0)
            rss = peak_rss(proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)
        # the baseline: what was pulled through made the mirror's own (mirror --from-misses), served statically
        subprocess.run([str(TD), "mirror", "--from-misses", str(root), "--upstream", f"{up.url}/whl"], env=env,
                       check=True, capture_output=True, cwd=tmp)
        base, bport = start("--root", str(root), env=env)
        try:
            base_errors, base_took = clients(bport, jobs, a.clients)
        finally:
            base.terminate()
            base.wait(10)
    total = a.files * a.size_mb
    print(f"pull-through: {a.clients} clients, {a.files} wheels of {a.size_mb:g} MB ({total:g} MB), half cached, "
          f"upstream {a.rate_mb:g} MB/s per connection")
    print(f"  errors: {errors} (goal 0); baseline static serve errors: {base_errors}")
    print(f"  upstream bytes per file: max {per_file:.2f}x (goal <= 1.0x); re-read of cached files: {cached_fetched} bytes")
    print(f"  time: {took:.2f} s vs {base_took:.2f} s static, everything cached ({took / base_took:.2f}x)")
    print(f"  peak RSS of the server: {rss / MB:.1f} MB")
    print(f"  slowest page of 10 with 40 header-dribbling connections: {loris * 1000:.0f} ms "
          f"(none open: {clear * 1000:.0f} ms; goal < 1000 ms)")
    ok = errors == 0 and per_file <= 1.0 and cached_fetched == 0 and loris < 1.0
    print(f"  goals: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
