"""Class (c): unbounded input. Each attempt has its own bound on top of "held":

- a torch page full of ``<a`` tags that never close (64 KB, 1 MB): the whole sync under 15 s;
- an upstream that drips 1 byte every 2 s (the wheel; the torch page): the run ends with one
  line within its documented bound: the wheel within 100 s (the per-file rate floor is
  1000 B/s over a 60 s window), the page within 150 s (a page has 120 s in all,
  ``HttpConfig.page_deadline``); the two drips run in background threads;
- a wheel whose METADATA inflates to 64 MiB (no PEP 658 file upstream): peak RSS of the
  torchdepot process under 512 MiB, and no published ``.metadata`` over 10 MB;
- a newer torch wheel whose METADATA has 100,000 ``Requires-Dist`` lines (took 419 s at 1.5 GB):
  the sync ends under 60 s, excludes it in one line and publishes the older torch;
- a newer "torch" linked through ``%2e%2e`` path segments on the allowed host, bytes not a
  wheel: refused by the screen, the older torch published;
- a 1 GiB-of-zeros zstd bundle (~33 KB): at most 64 MiB ever on disk under the destination;
- ``verify-mirror --repair`` with a manifest whose url is ``file:///dev/zero`` or a loopback
  host outside the policy: done under 30 s, nothing read from the other host;
- ``serve`` with 1,100 idle sockets, then a real GET (answered within 5 s), a 300-character
  path component and a 5,000-digit Range (an HTTP status, not a dropped connection);
- a 400-byte YAML alias bomb spec and ``--spec /dev/zero``: one line within 10 s.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import zstandard

from bench.attacks.harness import (
    TD,
    Outcome,
    Run,
    Sandbox,
    changed,
    judge,
    live_corrupt,
    manifest_files,
    run_cli,
    snapshot,
    verify_bad,
)
from bench.attacks.upstream import (
    Site,
    build_mirror,
    fresh_copy,
    mirror_env,
    original_wheels,
)
from tests.faultserver import Fault, FaultServer
from tests.kit.zeros import Zeros
from tests.loopback_upstream import write_spec

CLS = "c"


def _sync(tmp: Path, site: Site, name: str, *, timeout: float = 60, check=lambda r, root: (True, "")) -> Outcome:
    sb = Sandbox(tmp / name)
    root = sb.work / "mirror"
    spec = write_spec(sb.work / "spec.yaml", site.url, root)
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site), timeout=timeout)
    corrupt, note = live_corrupt(sb, root, {})
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    ok, why = check(r, root)
    return judge(CLS, name, r, corrupt=corrupt, outside=outside, check=ok,
                 note="; ".join(x for x in (why, note) if x))


def _unclosed_page(site: Site, size: int) -> None:
    torch = site.torch_name()
    good = f'<a href="/whl/files/{torch.replace("+", "%2B")}#sha256={hashlib.sha256(site.wheels[torch]).hexdigest()}">{torch}</a>\n'
    site.page("torch", b"<html><body>\n" + good.encode() + b"<a " * (size // 3))


def _html_attempt(tmp: Path, size: int, name: str) -> Outcome:
    # validators=True: every Range answered 206, as a CDN does (the page drops the PEP 658 link, so
    # metadata is read from the wheel by Range; see _metadata_attempt)
    with FaultServer(validators=True) as server:
        site = Site(server, original_wheels(payload=20_000))
        _unclosed_page(site, size)
        return _sync(tmp, site, name, check=lambda r, root: (r.seconds < 15, f"sync took {r.seconds:.1f}s"))


def _drip_attempt(tmp: Path, name: str, what: str, results: list) -> None:
    with FaultServer() as server:
        site = Site(server, original_wheels(payload=20_000))
        paths = [Site.path(site.torch_name())] if what == "wheel" else ["/whl/cpu/torch/", "/whl/cpu/torch/index.html"]
        for path in paths:
            server.always(path, Fault("drip", rate=0.5))  # one byte, then 2 s of nothing, forever
        results.append(_sync(tmp, site, name, timeout=100 if what == "wheel" else 150,
                             # ended within the bound: failed in one line, or (a dripping page is an
                             # unreachable upstream) completed from the other sources, verify-clean
                             check=lambda r, root: (r.rc is not None, f"ended after {r.seconds:.0f}s, exit {r.rc}")))


def _metadata_bomb_wheel(size: int) -> tuple[str, bytes]:
    from tests.loopback_upstream import TORCH
    name, version, tag, req = TORCH
    fname = f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    meta = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in req)
            + "Description-Content-Type: text/plain\n\n").encode() + b"A" * size
    files = {f"{name}/__init__.py": b"", f"{info}/METADATA": meta,
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: bomb\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()}
    rec = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
           for n, d in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(rec + [f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for n, d in files.items():
            zf.writestr(zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0)), d, compress_type=zipfile.ZIP_DEFLATED)
    return fname, buf.getvalue()


def _metadata_attempt(tmp: Path) -> Outcome:
    wheels = original_wheels(payload=20_000)
    fname, bomb = _metadata_bomb_wheel(64 << 20)
    wheels[fname] = bomb
    # validators=True: 206 for every Range. A server that answers a whole-file Range with 200 (valid
    # HTTP) makes torchdepot fail with "server ignored a Range request" instead (reported separately).
    with FaultServer(validators=True) as server:
        site = Site(server, wheels, metadata=False)

        def check(r: Run, root: Path):
            big = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.metadata")
                         if p.stat().st_size > 10 << 20)
            rss = r.peak_rss_kib / 1024
            return (rss < 512 and not big), (f"wheel {len(bomb) // 1024} KiB, METADATA 64 MiB; peak RSS {rss:.0f} MiB"
                                             + (f"; published {big}" if big else ""))
        return _sync(tmp, site, "metadata-inflates-to-64MiB", check=check)


def _newer_torch(requires: tuple[str, ...]) -> tuple[str, bytes]:
    from tests.kit.upstream import TORCH
    from tests.kit.wheels import wheel_bytes
    name, _version, tag, _req = TORCH
    w = wheel_bytes(name, "2.99.0+cpu", tag, requires)
    return w.filename, w.data


def _published_torch(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "packages" / "torch").glob("*.whl")) if (root / "packages").is_dir() else []


def _requires_dist_attempt(tmp: Path) -> Outcome:
    wheels = original_wheels(payload=20_000)
    fname, data = _newer_torch(tuple(f"pkg{i}>=1.0" for i in range(100_000)))
    wheels[fname] = data
    with FaultServer(validators=True) as server:
        site = Site(server, wheels, metadata=False)  # no PEP 658 file: read from the wheel

        def check(r: Run, root: Path):
            said = "excluded " + fname in r.stdout + r.stderr
            torch = _published_torch(root)
            ok = r.rc == 0 and r.seconds < 60 and said and fname not in torch and bool(torch)
            return ok, f"METADATA {len(data) // 1024} KiB zipped; excluded said: {said}; published {torch}"
        return _sync(tmp, site, "metadata-100k-requires-dist", timeout=120, check=check)


def _dot_segment_attempt(tmp: Path) -> Outcome:
    with FaultServer() as server:
        site = Site(server, original_wheels(payload=20_000))
        fname, _ = _newer_torch(())
        site.link_behind_dot_segments(fname, b"<html>not a wheel</html>")

        def check(r: Run, root: Path):
            torch = _published_torch(root)
            said = "dot segment in URL path refused" in r.stdout + r.stderr
            return (r.rc == 0 and said and fname not in torch and bool(torch)), f"refusal said: {said}; published {torch}"
        return _sync(tmp, site, "link-with-encoded-dot-segments", check=check)


def _zstd_bomb(path: Path, member: str, size: int) -> Path:
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo(member)
        ti.size = size
        tar.addfile(ti, Zeros(size))
    return path


def _du(d: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def _zstd_attempt(tmp: Path) -> Outcome:
    sb = Sandbox(tmp / "zstd-bundle-1GiB-of-zeros")
    bomb = _zstd_bomb(sb.work / "small.tar.zst", "packages/a/a-1.0-py3-none-any.whl", 1 << 30)
    dest = sb.work / "dest"
    peak = [0]
    last = [0.0]

    def watch() -> bool:
        now = time.monotonic()
        if now - last[0] > 0.05:
            last[0] = now
            peak[0] = max(peak[0], _du(dest))
        return False
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["unbundle", str(bomb), "--to", str(dest)], kill_when=watch, timeout=60)
    outside = changed(before, snapshot(sb.base, sb.scratch), (dest,))
    corrupt, note = live_corrupt(sb, dest, {})
    mib = peak[0] / (1 << 20)
    return judge(CLS, "zstd-bundle-1GiB-of-zeros", r, corrupt=corrupt, outside=outside, check=mib <= 64,
                 note=f"bundle {bomb.stat().st_size // 1024} KiB; peak staged {mib:.0f} MiB" + (f"; {note}" if note else ""))


def _repair_url_attempt(tmp: Path, base: Path, name: str, url_for) -> Outcome:
    sb = Sandbox(tmp / name)
    root = fresh_copy(base, sb.work / "mirror")
    with FaultServer() as other:
        doc = json.loads((root / "manifest.json").read_text())
        entry = next(f for f in doc["files"] if f["path"].endswith(".whl") and "/torch/" in f["path"])
        other.add("/evil.whl", b"x" * entry["size"])
        entry["url"] = url_for(other)
        (root / "manifest.json").write_text(json.dumps(doc, indent=1))
        (root / entry["path"]).unlink()
        published = manifest_files(root)
        planted = verify_bad(sb, root)
        before = snapshot(sb.base, sb.scratch)
        r = run_cli(sb, ["verify-mirror", str(root), "--repair"], timeout=60)
        hits = other.hits["/evil.whl"]
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    corrupt, note = live_corrupt(sb, root, published, planted)
    got = (root / entry["path"]).exists()
    ok = r.seconds < 30 and hits == 0 and not got
    return judge(CLS, name, r, corrupt=corrupt, outside=outside, check=ok,
                 note=f"requests to the other host: {hits}; refetched file present: {got}" + (f"; {note}" if note else ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[int | str, float]:
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path, headers=headers or {})
        resp = c.getresponse()
        resp.read()
        c.close()
        return resp.status, time.monotonic() - t0
    except Exception as e:  # a dropped connection or a timeout is the finding
        return type(e).__name__, time.monotonic() - t0


def _serve_attempt(tmp: Path, base: Path) -> Outcome:
    sb = Sandbox(tmp / "serve-1100-idle-sockets")
    root = fresh_copy(base, sb.work / "mirror")
    port = _free_port()
    before = snapshot(sb.base, sb.scratch)
    out_p, err_p = sb.logs / "serve.out", sb.logs / "serve.err"
    t0 = time.monotonic()
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        proc = subprocess.Popen([TD, "serve", "--root", str(root), "--port", str(port)], env=sb.env(), cwd=str(sb.work),
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        results = {}
        idle: list[socket.socket] = []
        try:
            for _ in range(100):
                if _get(port, "/", timeout=1)[0] == 200:
                    break
                time.sleep(0.1)
            for _ in range(1100):
                s = socket.socket()
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", port))
                    idle.append(s)
                except OSError:
                    s.close()
                    break
            time.sleep(0.5)
            results["GET with idle sockets"] = _get(port, "/whl/cpu/torch/")
            results["300-char path"] = _get(port, "/whl/" + "a" * 300 + "/")
            results["5000-digit Range"] = _get(port, "/manifest.json", {"Range": "bytes=" + "9" * 5000 + "-"})
        finally:
            for s in idle:
                s.close()
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    r = Run(rc=0 if proc.returncode in (0, 130, -2) else proc.returncode, stdout=out_p.read_text(errors="replace"),
            stderr="" if proc.returncode in (0, 130, -2) else err_p.read_text(errors="replace"),
            seconds=time.monotonic() - t0, peak_rss_kib=0)
    tb = "Traceback" in err_p.read_text(errors="replace")
    if tb:
        r = Run(rc=r.rc, stdout=r.stdout + err_p.read_text(errors="replace"), stderr=r.stderr, seconds=r.seconds,
                peak_rss_kib=0)
    get_status, get_s = results["GET with idle sockets"]
    ok = (get_status == 200 and get_s < 5 and isinstance(results["300-char path"][0], int)
          and isinstance(results["5000-digit Range"][0], int))
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    note = f"{len(idle)} idle sockets; " + "; ".join(f"{k}: {v[0]} in {v[1]:.2f}s" for k, v in results.items())
    return judge(CLS, "serve-1100-idle-sockets", r, outside=outside, check=ok, note=note)


ALIAS_BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
packages: [*i]
"""


def _spec_attempt(tmp: Path, name: str, spec_for) -> Outcome:
    sb = Sandbox(tmp / name)
    spec = spec_for(sb)
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["mirror", "--spec", str(spec), "--out", str(sb.work / "out")], timeout=60)
    outside = changed(before, snapshot(sb.base, sb.scratch), (sb.work / "out",))
    return judge(CLS, name, r, outside=outside, check=r.seconds < 10 and r.rc != 0,
                 note=f"peak RSS {r.peak_rss_kib // 1024} MiB")


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def run(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    drips: list[Outcome] = []
    threads = [threading.Thread(target=_drip_attempt, args=(tmp, n, w, drips), daemon=True)
               for n, w in (("drip-wheel-1-byte-per-2s", "wheel"), ("drip-page-1-byte-per-2s", "page"))]
    for t in threads:
        t.start()
    out.append(_html_attempt(tmp, 64 << 10, "html-unclosed-a-64KB"))
    out.append(_html_attempt(tmp, 1 << 20, "html-unclosed-a-1MB"))
    out.append(_metadata_attempt(tmp))
    out.append(_requires_dist_attempt(tmp))
    out.append(_dot_segment_attempt(tmp))
    out.append(_zstd_attempt(tmp))
    with FaultServer() as server:
        site = Site(server, original_wheels(payload=20_000))
        sb0 = Sandbox(tmp / "c-base")
        base = build_mirror(site, sb0, sb0.work / "mirror")
        out.append(_repair_url_attempt(tmp, base, "repair-planted-file-dev-zero", lambda o: "file:///dev/zero"))
        out.append(_repair_url_attempt(tmp, base, "repair-planted-host-outside-policy", lambda o: o.url + "/evil.whl"))
        out.append(_serve_attempt(tmp, base))
    out.append(_spec_attempt(tmp, "spec-yaml-alias-bomb", lambda sb: _write(sb.work / "bomb.yaml", ALIAS_BOMB)))
    out.append(_spec_attempt(tmp, "spec-dev-zero", lambda sb: Path("/dev/zero")))
    for t in threads:
        t.join(130)
    return out + drips
