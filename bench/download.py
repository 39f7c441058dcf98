"""Download speed on a slow, far network: a loopback CDN that caps each connection and the
total, and adds first-byte latency, serving a CUDA-like closure of valid wheels whose sizes
have the cu128 closure's real relative proportions (scaled down to run in about a minute).

Compared, each against the same server in this process: torchdepot's fetcher, ``aria2c``
(when installed; a bench baseline only, never a dependency: an input file listing every
URL, its own best CDN settings ``-x16 -s16 -k1M -j<files>``, ``--file-allocation=none``,
``--no-conf``, no checksum option, each file's sha256 checked after the run), ``pip
download`` and ``uv pip install --target`` (both hermetic: no user or machine config,
``--index-url`` to the loopback index, ``--no-deps``), and the bandwidth limit (bytes ÷
total rate). Printed as ratios to the limit, plus torchdepot's peak RSS.

"Download alone" runs from the first request the server receives to the last file done
(torchdepot: ``Fetcher.run`` returned in its process; aria2c: its process exited), so
neither interpreter nor process start counts; the rows "with start" time the whole child
process as a user waits.

Goals (issues 15 and 21): torchdepot <= 1.3x the limit, faster than uv and than aria2c on
the download alone; peak RSS <= 100 MB with 16 or more connections. The "split from 16 MB" row is the same fetcher (its ranges split
further by free connections) with issue 15's split threshold put back, for the ratio.

    python bench/download.py [--scale 0.05] [--conn-rate 8] [--total-rate 96] [--latency 0.03]
                             [--connections N] [--per-host N] [--threshold-scale 1]
                             [--skip pip,uv,aria2c,fixed] [--timeline]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpserver import RangeHandler, Server  # noqa: E402
from tests.venvs import hermetic_env  # noqa: E402

MB = 1_000_000
# The cu128 closure of torch for Linux x86_64 / CPython (26 wheels), sizes in MB as
# published; only their proportions matter here.
CU128_MB = {
    "torch": 888, "nvidia-cudnn-cu12": 706, "nvidia-cublas-cu12": 594, "nvidia-cusparse-cu12": 288,
    "nvidia-cusparselt-cu12": 287, "nvidia-cusolver-cu12": 268, "nvidia-nccl-cu12": 201,
    "nvidia-cufft-cu12": 193, "triton": 155, "nvidia-nvshmem-cu12": 125, "nvidia-cuda-nvrtc-cu12": 88,
    "nvidia-curand-cu12": 64, "nvidia-nvjitlink-cu12": 39, "nvidia-cuda-cupti-cu12": 10, "sympy": 6.3,
    "networkx": 2.0, "nvidia-cufile-cu12": 1.2, "setuptools": 1.2, "nvidia-cuda-runtime-cu12": 1.0,
    "mpmath": 0.54, "fsspec": 0.2, "jinja2": 0.13, "nvidia-nvtx-cu12": 0.09, "typing-extensions": 0.045,
    "markupsafe": 0.02, "filelock": 0.016,
}


# -- the wheels -------------------------------------------------------------------------------
def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(out: Path, name: str, size: int) -> Path:
    """A valid, installable py3-none-any wheel of about ``size`` bytes (stored, random payload)."""
    mod = name.replace("-", "_")
    fn = out / f"{mod}-1.0.0-py3-none-any.whl"
    dist = f"{mod}-1.0.0.dist-info"
    files = {
        f"{mod}/__init__.py": b"",
        f"{mod}/payload.bin": os.urandom(max(0, size - 1000)),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join([_record_line(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(fn, "w", zipfile.ZIP_STORED) as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", record)
    return fn


def build_upstream(base: Path, scale: float) -> list[dict]:
    """Wheels under base/files, a PEP 503 index under base/simple; returns the file list."""
    files = base / "files"
    files.mkdir(parents=True)
    out = []
    for name, mb in CU128_MB.items():
        whl = make_wheel(files, name, max(4096, int(mb * MB * scale)))
        data = whl.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        page = base / "simple" / name
        page.mkdir(parents=True)
        (page / "index.html").write_text(
            f'<html><body><a href="../../files/{whl.name}#sha256={sha}">{whl.name}</a></body></html>\n')
        out.append({"name": name, "file": whl.name, "sha256": sha, "size": len(data)})
    return out


# -- the slow CDN -------------------------------------------------------------------------------
class Bucket:
    """A rate limit shared by whoever calls ``take``: no credit accrues while idle (``idle``:
    a list to note each idle spell in, as (from, to))."""

    def __init__(self, rate: float, idle: list | None = None):
        self.rate = rate
        self.next = 0.0
        self.lock = threading.Lock()
        self.idle = idle

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.idle is not None and now > self.next:
                self.idle.append((self.next, now))
            self.next = max(now, self.next) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class SlowHandler(RangeHandler):
    """Per-connection rate, a shared total rate and first-byte latency on every response;
    counts connections and requests, and notes when the first request arrived."""

    STEP = 256 * 1024  # 32 ms at 8 MB/s: smooth enough, and cheap for a Python server

    def setup(self):
        super().setup()
        with self.server.stats_lock:
            self.server.stats["connections"] += 1

    def send_head(self):
        with self.server.stats_lock:
            self.server.stats["requests"] += 1
            if self.server.stats["first_request"] is None:
                self.server.stats["first_request"] = time.monotonic()  # CLOCK_MONOTONIC: same in every process
        time.sleep(self.server.latency)
        return super().send_head()

    def end_headers(self):
        if not self.headers.get("Range"):  # a 200: say ranges work, as CDNs do (206s say it already)
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def copyfile(self, source, outputfile):
        if not hasattr(self, "bucket"):
            self.bucket = Bucket(self.server.conn_rate)  # the handler lives as long as its connection
        left = getattr(self, "_range_left", None)
        if left is None:
            left = os.fstat(source.fileno()).st_size - source.tell()
        offset = source.tell()
        sock = self.connection.fileno()
        while left > 0:
            n = min(left, self.STEP)
            self.bucket.take(n)
            self.server.total_bucket.take(n)
            while n > 0:  # sendfile: the bytes never pass through Python (the server is not the bottleneck)
                try:
                    sent = os.sendfile(sock, source.fileno(), offset, n)
                except (BrokenPipeError, ConnectionResetError):
                    return  # a client that took the first piece of a 200 and hung up: by design
                if sent == 0:
                    return
                self.server.sends.append((time.monotonic(), id(self), sent))  # (list.append: atomic)
                offset += sent
                n -= sent
                left -= sent


def slow_server(root: Path, conn_rate: float, total_rate: float, latency: float) -> Server:
    s = Server(root, handler=SlowHandler)
    s.httpd.conn_rate = conn_rate
    s.httpd.idle = []
    s.httpd.total_bucket = Bucket(total_rate, s.httpd.idle)
    s.httpd.latency = latency
    s.httpd.request_queue_size = 128
    s.httpd.stats_lock = threading.Lock()
    reset_stats(s)
    return s


def reset_stats(s: Server) -> None:
    with s.httpd.stats_lock:
        s.httpd.stats = {"connections": 0, "requests": 0, "first_request": None}
        s.httpd.sends = []  # (time, connection, bytes) of every send
        s.httpd.idle.clear()


def timeline(s: Server, end: float, total: int, limit: float, who: str) -> None:
    """Where the time over the bandwidth limit went, from the server's side: the shared
    bucket's idle spells before its first draw (ramp-up: connect and first-byte latency),
    in the middle and in the last 10 % of the bytes (the tail), the bytes sent past what the
    files hold (cut runs), and per 100 ms the rate and the connections sending."""
    first = s.httpd.stats["first_request"]
    sends = sorted(s.httpd.sends)
    sent, acc, tail_from = sum(n for _, _, n in sends), 0, end
    for t, _, n in sends:
        acc += n
        if acc >= 0.9 * total:
            tail_from = t
            break
    idle = [(max(a, first), b) for a, b in s.httpd.idle if b > first]
    start = idle[0][1] - first if idle and idle[0][0] <= first else 0.0
    rest = idle[1:] if start else idle
    mid = sum(min(b, tail_from) - a for a, b in rest if a < tail_from)
    tail = sum(b - max(a, tail_from) for a, b in rest if b > tail_from)
    last = max((t for t, _, _ in sends), default=end)
    other = (end - first) - limit - start - mid - tail - (end - last)
    print(f"{who} timeline: {end - first:.3f} s = limit {limit:.3f} + start {start:.3f} (first request to the "
          f"first byte drawn) + idle in the middle {mid:.3f} + idle in the tail {tail:.3f} (the last 10 % of the "
          f"bytes, from {tail_from - first:.2f} s) + {end - last:.3f} after the last send + {other:.3f} of bytes "
          f"sent or drawn for past what the files hold (cut runs; {(sent - total) / MB:.2f} MB sent)")
    step = 0.1
    bins: dict[int, tuple[int, set]] = {}
    for t, conn, n in sends:
        k = int((t - first) / step)
        got, conns = bins.get(k, (0, set()))
        conns.add(conn)
        bins[k] = (got + n, conns)
    print("  " + " ".join(f"{k * step:.1f}:{bins[k][0] / step / MB:.0f}/{len(bins[k][1])}" for k in sorted(bins))
          + "   (s: MB/s / connections sending)")


def stats(s: Server) -> dict:
    with s.httpd.stats_lock:
        return dict(s.httpd.stats)


# -- the contenders -------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one child process (interpreter start included, as a user waits)."""
    t = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True)
    took = time.monotonic() - t
    if proc.returncode != 0:
        sys.exit(f"{Path(cmd[0]).name} failed ({proc.returncode}): "
                 f"{(proc.stderr or proc.stdout).decode(errors='replace')[-2000:]}")
    return took, proc


def check_files(paths: list[Path], files: list[dict], who: str) -> None:
    """Every file there with its sha256 (outside the timing), else exit naming the first bad one."""
    for path, f in zip(paths, files, strict=True):
        got = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if got != f["sha256"]:
            sys.exit(f"{who}: {f['file']}: sha256 {got}, expected {f['sha256']}")


def aria2c_cmd(aria2c: str, url: str, files: list[dict], tmp: Path, conn_per_host: int) -> list[str]:
    """aria2c with its own best settings for a CDN: every URL in one input file, all files at
    once, up to 16 connections per file, split down to 1 MB, no preallocation, no config."""
    listing = tmp / "aria2c-input.txt"
    listing.write_text("".join(f"{url}/files/{f['file']}\n  out={f['file']}\n" for f in files))
    return [aria2c, "--no-conf", "-i", str(listing), "-d", str(tmp / "aria2c"), f"-j{len(files)}",
            f"-x{conn_per_host}", f"-s{conn_per_host}", "-k1M", "--min-split-size=1M", "--file-allocation=none",
            "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn",
            "--summary-interval=0", "--download-result=hide", "--max-tries=5", "--retry-wait=1"]


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: fetch the closure with torchdepot, print JSON figures."""
    import resource

    from torchdepot.fetch import Fetcher, FetchItem
    from torchdepot.net.http import make_session

    files = json.loads(Path(args.child).read_text())
    items = [FetchItem(f"packages/{f['name']}/{f['file']}", (f"{args.url}/files/{f['file']}",), f["sha256"],
                       None if args.no_sizes else f["size"]) for f in files]
    fetcher = Fetcher(Path(args.out), make_session(), progress=False, connections=args.connections,
                      connections_per_host=args.per_host, split_bytes=args.split_bytes, piece_bytes=args.piece_bytes)
    t = time.monotonic()
    rep = fetcher.run(items)
    end = time.monotonic()
    took = end - t
    assert not rep.failed, rep.failed[0]
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the
    # parent's peak (it generated the wheels) instead of this process's.
    rss = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": took, "end": end, "rss": rss, "bytes": rep.fetched_bytes,
                      "cpu": usage.ru_utime + usage.ru_stime}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.05, help="fraction of the real sizes (default 0.05: ~200 MB)")
    ap.add_argument("--conn-rate", type=float, default=8, help="MB/s per connection")
    ap.add_argument("--total-rate", type=float, default=96, help="MB/s for all connections")
    ap.add_argument("--latency", type=float, default=0.03, help="first-byte latency per response, s")
    ap.add_argument("--connections", type=int, default=None, help="torchdepot's total cap (default: its default)")
    ap.add_argument("--per-host", type=int, default=None, help="torchdepot's per-host cap (default: its default)")
    ap.add_argument("--threshold-scale", type=float, default=1.0,
                    help="factor on torchdepot's split/piece size defaults (default 1: as shipped; "
                         "--threshold-scale 0.05 splits the same files as at full size)")
    ap.add_argument("--no-sizes", action="store_true",
                    help="give torchdepot no sizes (as from an HTML index): it learns them from Content-Length")
    ap.add_argument("--timeline", action="store_true",
                    help="print where the time over the limit went, from the server's side (torchdepot and aria2c)")
    ap.add_argument("--skip", default="", help="comma list of pip,uv,aria2c,fixed to leave out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--split-bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--piece-bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from torchdepot.fetch import (
        DEFAULT_CONNECTIONS,
        DEFAULT_CONNECTIONS_PER_HOST,
        DEFAULT_PIECE_BYTES,
        DEFAULT_SPLIT_BYTES,
    )

    connections = args.connections or DEFAULT_CONNECTIONS
    per_host = args.per_host or DEFAULT_CONNECTIONS_PER_HOST
    # The thresholds shrink with the file sizes, so the same files are split as at full size.
    tscale = args.threshold_scale
    split_bytes = max(64 * 1024, int(DEFAULT_SPLIT_BYTES * tscale))
    piece_bytes = max(64 * 1024, int(DEFAULT_PIECE_BYTES * tscale))
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="td-bench-download-") as tmp:
        tmp = Path(tmp)
        files = build_upstream(tmp / "up", args.scale)
        total = sum(f["size"] for f in files)
        manifest = tmp / "files.json"
        manifest.write_text(json.dumps(files))
        reqs = tmp / "requirements.txt"
        reqs.write_text("".join(f"{f['name']}==1.0.0\n" for f in files))
        limit = total / (args.total_rate * MB)
        print(f"closure: {len(files)} wheels, {total / MB:.1f} MB (cu128 proportions x {args.scale}); "
              f"CDN: {args.conn_rate:g} MB/s per connection, {args.total_rate:g} MB/s total, "
              f"{args.latency * 1000:.0f} ms first-byte latency")
        print(f"torchdepot: connections={connections}, connections_per_host={per_host}, "
              f"split_bytes={split_bytes}, piece_bytes={piece_bytes} (defaults x {tscale:g})"
              + ("; sizes not given (learnt from Content-Length)" if args.no_sizes else ""))
        results: dict[str, float] = {}
        with slow_server(tmp / "up", args.conn_rate * MB, args.total_rate * MB, args.latency) as srv:
            env = hermetic_env(PYTHONPATH=str(ROOT))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(manifest), "--url", srv.url,
                   "--out", str(tmp / "td"), "--connections", str(connections), "--per-host", str(per_host),
                   "--split-bytes", str(split_bytes), "--piece-bytes", str(piece_bytes)] + (
                ["--no-sizes"] if args.no_sizes else [])
            took, proc = timed(cmd, env)
            figures = json.loads(proc.stdout.decode().strip().splitlines()[-1])
            seen = stats(srv)
            check_files([tmp / "td" / "packages" / f["name"] / f["file"] for f in files], files, "torchdepot")
            results["torchdepot, with start"] = took
            results["torchdepot, in process"] = figures["seconds"]
            results["torchdepot, download alone"] = figures["end"] - seen["first_request"]
            rss = figures["rss"]
            if args.timeline:
                timeline(srv, figures["end"], total, limit, "torchdepot")
            print(f"torchdepot fetch: {figures['seconds']:.2f} s inside the process, {took:.2f} s with "
                  f"interpreter start; peak RSS {rss / MB:.1f} MB; CPU {figures['cpu']:.2f} s; "
                  f"{seen['connections']} connections, {seen['requests']} requests")
            if "aria2c" not in skip:
                aria2c = shutil.which("aria2c")
                if aria2c is None:
                    print("aria2c: not installed, row skipped")
                else:
                    reset_stats(srv)
                    t = time.monotonic()
                    took, _ = timed(aria2c_cmd(aria2c, srv.url, files, tmp, min(16, per_host)), env)
                    end = time.monotonic()
                    seen = stats(srv)
                    check_files([tmp / "aria2c" / f["file"] for f in files], files, "aria2c")
                    results["aria2c, with start"] = took
                    results["aria2c, download alone"] = end - seen["first_request"]
                    if args.timeline:
                        timeline(srv, end, total, limit, "aria2c")
                    print(f"aria2c: {end - seen['first_request']:.2f} s from its first request, {took:.2f} s "
                          f"with process start ({seen['first_request'] - t:.3f} s to its first request); "
                          f"{seen['connections']} connections, {seen['requests']} requests; every sha256 checked")
            if "fixed" not in skip:  # the same fetcher splitting only files from 16 MB, for the ratio
                fixed = [*cmd[:cmd.index("--split-bytes")], "--split-bytes", str(int(16 * MB * tscale)),
                         "--piece-bytes", str(int(4 * MB * tscale))] + (["--no-sizes"] if args.no_sizes else [])
                fixed[fixed.index("--out") + 1] = str(tmp / "td-fixed")  # a fresh mirror: every byte again
                took_fixed, proc = timed(fixed, env)
                results["torchdepot, split from 16 MB"] = took_fixed
            if "uv" not in skip:
                uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
                cmd = [uv, "pip", "install", "--no-deps", "--target", str(tmp / "uv-target"), "--index-url",
                       srv.url + "/simple", "--python", sys.executable, "--cache-dir", str(tmp / "uv-cache"),
                       "-r", str(reqs)]
                took, _ = timed(cmd, env)
                results["uv pip install --target"] = took
            if "pip" not in skip:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-d",
                       str(tmp / "pip-dl"), "--index-url", srv.url + "/simple", "-r", str(reqs)]
                took, _ = timed(cmd, env)
                results["pip download"] = took
        print(f"\n{'':30s}{'seconds':>9s}{'x limit':>9s}")
        print(f"{'bandwidth limit':30s}{limit:9.2f}{1.0:9.2f}")
        for name, secs in results.items():
            print(f"{name:30s}{secs:9.2f}{secs / limit:9.2f}")
        td = results["torchdepot, with start"]
        alone = results["torchdepot, download alone"]
        if "aria2c, download alone" in results:
            print(f"torchdepot / aria2c: {alone / results['aria2c, download alone']:.2f} on the download alone, "
                  f"{td / results['aria2c, with start']:.2f} with start")
        if "uv pip install --target" in results:
            print(f"torchdepot / uv: {td / results['uv pip install --target']:.2f}")
        if "pip download" in results:
            print(f"torchdepot / pip download: {td / results['pip download']:.2f}")
        if "torchdepot, split from 16 MB" in results:
            print(f"torchdepot / the same splitting only files from 16 MB: "
                  f"{td / results['torchdepot, split from 16 MB']:.2f}")
        versus = ("aria2c not run" if "aria2c, download alone" not in results else
                  "met" if alone < results["aria2c, download alone"] else "NOT met")
        print(f"goals: <= 1.3x limit: {'met' if td / limit <= 1.3 else 'NOT met'} "
              f"(download alone: {alone / limit:.2f}x, in process: {results['torchdepot, in process'] / limit:.2f}x); "
              f"faster than aria2c on the download alone: {versus}; "
              f"peak RSS <= 100 MB: {'met' if rss <= 100 * MB else 'NOT met'}; "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
