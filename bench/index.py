#!/usr/bin/env python3
"""Benchmark: a sync whose cost follows what changed, against a synthetic whole-index upstream.

The upstream is download.pytorch.org's shape, built here (tiny wheels, real names): torch,
torchvision and torchaudio 2.0-2.13 (three patch releases each) for every accelerator, Python and
platform that release line shipped, each with PEP 658 ``.metadata`` and ``#sha256=``, under
``/whl/<acc>/<project>/``, and the dependencies (numpy, pillow, markupsafe per Python and
platform; nvidia-* CUDA libraries; the pure ones) listed under every ``/whl/<acc>/`` and in a
dependency index ``/simple/``. Served on loopback by a static
server that answers ``If-Modified-Since`` with 304 (as nginx and a CDN do).

For 18, 64 and 227 targets (``targets:`` entries spread over that matrix), in a child process
each (its peak RSS is the mirror's, uv's is separate): a cold sync, a no-op re-sync and a
``--dry-run``. Goals (issue 21): 18 targets no-op <= 1 s with only 304s and no wheel bytes;
64 targets no-op <= 2 s, dry-run <= 10 s, <= 150 MB; 227 targets no-op <= 5 s, dry-run
<= 30 s, cold <= 50 s, <= 300 MB. The machine's load average is printed with the figures.

Then one page changes (:func:`change_one_page`: a new torch patch release for the first
target's accelerator, on a hard-linked copy of the upstream the server is switched to) and a
whole run follows: its time against cold and no-op, the view pages it derived from upstream's
links again (``View._derive``), the view pages it formatted (``View._build_page``; the others'
digests are the ones kept from the run that built them) and the targets it ran uv for, and the
same against the same run on a copy of the mirror without the view's kept derivations (every
page derived and formatted, as before).

``python bench/index.py [--targets 18,64,227]``; the built upstream is kept under the system
temp dir (``torchdepot-bench-index-<version>``) and reused by the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpserver import Server  # noqa: E402
from tests.kit.wheels import wheel_bytes, wheel_metadata  # noqa: E402
from tests.venvs import hermetic_env  # noqa: E402
from torchdepot.store.layout import VIEW_DIR  # noqa: E402
from torchdepot.sync.view import SCREENS_DIR  # noqa: E402

BUILD = "v4"  # bump when the generated upstream changes
MINORS = range(14)  # torch 2.0 .. 2.13
PATCHES = (0, 1, 2)
L, LA, LW, LWA = ("linux-x86_64",), ("linux-x86_64", "linux-aarch64"), ("linux-x86_64", "windows-amd64"), \
    ("linux-x86_64", "linux-aarch64", "windows-amd64")
# accelerator -> (first minor, last minor, platforms): the release lines each one shipped
ACCS = {
    "cpu": (0, 13, ("linux-x86_64", "linux-aarch64", "windows-amd64", "macos-arm64")),
    "cu117": (0, 0, LWA), "cu118": (0, 7, LWA), "cu121": (1, 5, LWA), "cu124": (4, 6, LWA), "cu126": (6, 13, LWA),
    "cu128": (7, 13, LWA), "cu129": (8, 13, LWA), "cu130": (9, 13, LWA),
    "rocm5.5": (1, 1, L), "rocm5.6": (1, 2, L), "rocm5.7": (2, 3, L), "rocm6.0": (3, 4, L), "rocm6.1": (4, 5, L), "rocm6.2": (5, 6, L), "rocm6.2.4": (6, 7, L),
    "rocm6.3": (7, 8, L), "rocm6.4": (8, 9, L), "rocm7.0": (9, 13, L), "rocm7.1": (11, 13, L), "xpu": (5, 13, LW),
}
PLATFORM_TAGS = {"linux-x86_64": "manylinux_2_28_x86_64", "linux-aarch64": "manylinux_2_28_aarch64",
                 "windows-amd64": "win_amd64", "macos-arm64": "macosx_11_0_arm64"}
DEP_PLATFORMS = ("linux-x86_64", "linux-aarch64", "windows-amd64", "macos-arm64")


def pythons(minor: int) -> list[str]:
    lo, hi = (8, 11) if minor < 2 else (8, 12) if minor < 5 else (9, 13) if minor < 9 else (10, 14)
    return [f"3.{n}" for n in range(lo, hi + 1)]


def cuda_libs(acc: str) -> tuple[str, ...]:
    if not acc.startswith("cu"):
        return ()
    major = acc[2:4]
    linux = "platform_system == 'Linux'"
    return tuple(f"nvidia-{lib}-cu{major} ; {linux}" for lib in ("cuda-runtime", "cublas", "cudnn"))


def _wheel(name: str, version: str, tag: str, requires: tuple[str, ...] = ()) -> tuple[str, bytes]:
    w = wheel_bytes(name, version, tag, requires)
    return w.filename, w.data


def generate() -> list[tuple[str, str, str, bytes]]:
    """(page dir, project, file name, bytes) of every wheel: ``whl/<acc>`` or ``simple``."""
    out = []
    for acc, (first, last, plats) in ACCS.items():
        for minor in range(first, last + 1):
            for patch in PATCHES:
                tv, ta = f"2.{minor}.{patch}", f"0.{minor + 15}.{patch}"
                for py in pythons(minor):
                    cp = "cp" + py.replace(".", "")
                    for plat in plats:
                        mac = plat.startswith("macos")
                        label = "" if mac else f"+{acc}"
                        tag = f"{cp}-{'none' if mac else cp}-{PLATFORM_TAGS[plat]}"
                        torch = f"2.{minor}.{patch}{label}"
                        deps = ("filelock", "typing-extensions>=4.8", "sympy", "networkx", "jinja2", "fsspec",
                                *cuda_libs(acc))
                        for project, version, requires in (
                                ("torch", torch, deps),
                                ("torchvision", f"{ta}{label}", ("numpy", f"torch=={torch}", "pillow>=5.3")),
                                ("torchaudio", f"{tv}{label}", (f"torch=={torch}",))):
                            out.append((f"whl/{acc}", project, *_wheel(project, version, tag, requires)))
    for project, versions, requires in (
            ("filelock", 12, ()), ("typing-extensions", 12, ()), ("sympy", 6, ("mpmath<1.4,>=1.1",)),
            ("mpmath", 4, ()), ("networkx", 10, ()), ("jinja2", 8, ("markupsafe>=2.0",)), ("fsspec", 30, ())):
        for n in range(versions):
            version = f"1.{n}.0" if project == "mpmath" else f"{n + 1}.{n % 3}.0"  # sympy wants mpmath<1.4
            out.append(("simple", project, *_wheel(project, version, "py3-none-any", requires)))
    for project, versions in (("numpy", 12), ("pillow", 12), ("markupsafe", 6)):
        for n in range(versions):
            for py in [f"3.{m}" for m in range(8, 15)]:
                cp = "cp" + py.replace(".", "")
                for plat in DEP_PLATFORMS:
                    out.append(("simple", project, *_wheel(project, f"{n + 1}.{n % 4}.0", f"{cp}-{cp}-{PLATFORM_TAGS[plat]}")))
    for major in ("11", "12", "13"):
        for lib in ("cuda-runtime", "cublas", "cudnn"):
            for n in range(6):
                for plat in ("linux-x86_64", "linux-aarch64"):
                    out.append(("simple", f"nvidia-{lib}-cu{major}",
                                *_wheel(f"nvidia-{lib}-cu{major}", f"{major}.{n}.1", f"py3-none-{PLATFORM_TAGS[plat]}")))
    return out


def build(root: Path, aggregate: tuple[str, ...] = ()) -> int:
    """Write the upstream under ``root`` (pages, wheels, sidecars); returns the wheel count.
    ``aggregate``: projects also listed on ``/whl/<project>/`` with every accelerator's builds."""
    pages: dict[tuple[str, str], list[str]] = {}
    wheels = generate()
    for where, project, filename, data in wheels:
        folder = root / where / "files"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_bytes(data)
        meta = wheel_metadata(data)
        (folder / (filename + ".metadata")).write_bytes(meta)
        href = f"/{where}/files/{urllib.parse.quote(filename)}#sha256={hashlib.sha256(data).hexdigest()}"
        ms = hashlib.sha256(meta).hexdigest()
        anchor = f'<a href="{href}" data-core-metadata="sha256={ms}" data-dist-info-metadata="sha256={ms}">{filename}</a><br/>'
        # as on download.pytorch.org, every accelerator's tree lists the dependencies too
        listed = [where] if where != "simple" else ["simple", *(f"whl/{acc}" for acc in ACCS)]
        if project in aggregate:
            listed.append("whl")
        for page in listed:
            pages.setdefault((page, project), []).append(anchor)
    for (where, project), anchors in pages.items():
        page = root / where / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(anchors) + "\n</body></html>\n")
    return len(wheels)


def change_one_page(up: Path, root: Path, acc: str) -> None:
    """``root``: a copy of the upstream ``up`` (hard links: the shared build is never written)
    with a new torch patch release for ``acc`` (its newest line, every Python and platform it
    shipped): its wheels and ``.metadata`` added, one anchor each on ``whl/<acc>/torch/``, the
    one page that changes."""
    shutil.copytree(up, root, copy_function=os.link)
    first, last, plats = ACCS[acc]
    folder, anchors = root / "whl" / acc / "files", []
    for py in pythons(last):
        cp = "cp" + py.replace(".", "")
        for plat in plats:
            mac = plat.startswith("macos")
            tag = f"{cp}-{'none' if mac else cp}-{PLATFORM_TAGS[plat]}"
            deps = ("filelock", "typing-extensions>=4.8", "sympy", "networkx", "jinja2", "fsspec", *cuda_libs(acc))
            filename, data = _wheel("torch", f"2.{last}.{len(PATCHES)}{'' if mac else '+' + acc}", tag, deps)
            meta = wheel_metadata(data)
            (folder / filename).write_bytes(data)
            (folder / (filename + ".metadata")).write_bytes(meta)
            ms = hashlib.sha256(meta).hexdigest()
            href = f"/whl/{acc}/files/{urllib.parse.quote(filename)}#sha256={hashlib.sha256(data).hexdigest()}"
            anchors.append(f'<a href="{href}" data-core-metadata="sha256={ms}" '
                           f'data-dist-info-metadata="sha256={ms}">{filename}</a><br/>')
    page = root / "whl" / acc / "torch" / "index.html"
    old = page.read_bytes()
    page.unlink()  # a new file, not the linked one
    page.write_bytes(old.replace(b"\n</body>", ("\n" + "\n".join(anchors) + "\n</body>").encode(), 1))
    os.utime(page, (time.time() + 2, time.time() + 2))  # newer than any Last-Modified seen before


def serve(link: Path, root: Path) -> None:
    """Point the server's root ``link`` at ``root`` (replaced atomically)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(root)
    os.replace(tmp, link)


def matrix() -> list[dict]:
    """Every (accelerator, Python, platform) some torch release shipped, spread so that any
    prefix covers many accelerators."""
    rows: dict[str, list[dict]] = {}
    for acc, (first, last, plats) in ACCS.items():
        pys = sorted({py for m in range(first, last + 1) for py in pythons(m)}, key=lambda p: int(p.split(".")[1]))
        rows[acc] = [{"accelerator": acc, "python": py, "platform": plat} for py in pys for plat in plats]
    out = []
    while any(rows.values()):
        for acc in ACCS:
            if rows[acc]:
                out.append(rows[acc].pop())
    return out


CHILD = """
import json, sys, time
t0 = time.monotonic()
from torchdepot.spec.mirror import load_spec
from torchdepot.sync import resolution, view
from torchdepot.sync.pip import sync
built, formatted, resolved, spent = [], [], [], {"format": 0.0, "digest": 0.0}
# counted, not changed: every view page derived from upstream pages (screened anew), every view
# page formatted in memory (View._build_page), every resolver run; the seconds spent formatting
# (its project's links taken first, untimed) and in page digests (View.page_digest, the resolution
# cache's check, its pages' links included); both summed over threads
_derive, _build, _resolve = view.View._derive, view.View._build_page, resolution._resolve_excluding
_digest = view.View.page_digest
def timed(what, fn):
    def call(*a):
        t = time.perf_counter()
        try:
            return fn(*a)
        finally:
            spent[what] += time.perf_counter() - t
    return call
view.View._derive = lambda self, *a: built.append(a) or _derive(self, *a)
_format = timed("format", lambda self, *a: formatted.append(a) or _build(self, *a))
view.View._build_page = lambda self, *a: self.project(*a) and None or _format(self, *a)
view.View.page_digest = timed("digest", _digest)
resolution._resolve_excluding = lambda *a: resolved.append(a[1].target.id) or _resolve(*a)
spec = load_spec(sys.argv[1])
res = sync(spec, progress=False, echo=lambda m: None, dry_run=sys.argv[2] == "dry")
print(json.dumps({"total": time.monotonic() - t0, "requests": res.requests, "phases": res.phases,
                  "built": len(built), "formatted": len(formatted), "spent": spent, "resolved": len(set(resolved)),
                  "fetched": res.report.fetched_bytes if res.report else 0,
                  # VmHWM: ru_maxrss would carry the bench's own peak across exec
                  "rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def run(spec: Path, mode: str, env: dict, child: str = CHILD, what: str = "mirror") -> dict:
    """``child`` run in a fresh interpreter on ``spec`` in ``mode``; its last stdout line as JSON."""
    proc = subprocess.run([sys.executable, "-c", child, str(spec), mode], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{what} ({mode}) failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def built_upstream(name: str, write: Callable[[Path], int]) -> tuple[Path, int]:
    """The generated upstream under the temp dir (``write`` it once, then reuse it) and its wheel count."""
    up = Path(tempfile.gettempdir()) / name
    if not (up / "done").is_file():
        shutil.rmtree(up, ignore_errors=True)
        n = write(up)
        (up / "done").write_text(str(n))
        time.sleep(1.1)  # Last-Modified older than the first response: revalidated by 304 from the start
    return up, int((up / "done").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="18,64,227", help="comma-separated target counts")
    counts = [int(n) for n in ap.parse_args().targets.split(",")]
    t0 = time.monotonic()
    up, wheels = built_upstream(f"torchdepot-bench-index-{BUILD}", build)
    links = sum(p.read_text().count("<a ") for p in up.rglob("index.html"))
    print(f"upstream: {wheels} wheels, {links} links ({time.monotonic() - t0:.1f} s to build or find)")
    every = matrix()
    print(f"target matrix: {len(every)} (accelerator, Python, platform) combinations shipped")
    results = {}
    with tempfile.TemporaryDirectory(prefix="torchdepot-bench-") as tmp, Server(Path(tmp) / "served") as s:
        env = hermetic_env(PIP_INDEX_URL=f"{s.url}/simple")
        served = Path(tmp) / "served"  # a link to the upstream the server answers from
        for n in counts:
            targets = every[:n]
            spec = Path(tmp) / f"mirror-{n}.yaml"
            spec.write_text(json.dumps({
                "packages": ["torch", "torchvision", "torchaudio"], "extra_packages": [],
                "accelerators": [targets[0]["accelerator"]], "pythons": [targets[0]["python"]],
                "platforms": [targets[0]["platform"]], "targets": targets[1:], "upstreams": [f"{s.url}/whl"],
                "out": str(Path(tmp) / f"out-{n}"), "jobs": 4}))
            serve(served, up)
            load = os.getloadavg()[0]
            cold = run(spec, "cold", env)
            noop = run(spec, "noop", env)
            dry = run(spec, "dry", env)
            # the same mirror, its view's derivations gone: the whole run as before they were kept
            base_out = Path(tmp) / f"base-{n}"
            shutil.copytree(Path(tmp) / f"out-{n}", base_out, symlinks=True)
            shutil.rmtree(base_out / VIEW_DIR / SCREENS_DIR)
            base_spec = spec.with_name(f"base-{n}.yaml")
            base_spec.write_text(json.dumps({**json.loads(spec.read_text()), "out": str(base_out)}))
            change_one_page(up, Path(tmp) / f"changed-{n}", targets[0]["accelerator"])
            serve(served, Path(tmp) / f"changed-{n}")
            one = run(spec, "one", env)
            base = run(base_spec, "one", env)
            results[n] = (cold, noop, dry, load)
            print(f"{len(targets):4d} targets (load {load:.1f}): cold {cold['total']:6.2f} s, no-op {noop['total']:5.2f} s "
                  f"[{noop['requests']}; {noop['fetched']} bytes fetched], dry-run {dry['total']:5.2f} s, "
                  f"peak RSS {max(cold['rss_mb'], noop['rss_mb'], dry['rss_mb']):.0f} MB")
            ids = {t["accelerator"] for t in targets[:1]}
            same = sum(t["accelerator"] in ids for t in targets)
            print(f"      one page changed ({targets[0]['accelerator']} torch: a new patch release): "
                  f"{one['total']:5.2f} s = {one['total'] / cold['total']:.2f} x cold, "
                  f"{one['total'] / noop['total']:.1f} x no-op, {one['total'] / base['total']:.2f} x the same run "
                  f"deriving every page ({base['total']:.2f} s); view pages derived {one['built']} "
                  f"(that run {base['built']}, cold {cold['built']}), formatted {one['formatted']} (that run "
                  f"{base['formatted']}, no-op {noop['formatted']}, cold {cold['formatted']}) in {one['spent']['format']:.2f} s "
                  f"(that run {base['spent']['format']:.2f} s), page digests {one['spent']['digest']:.2f} s (that run "
                  f"{base['spent']['digest']:.2f} s), targets resolved {one['resolved']} of "
                  f"{len(targets)} ({same} on {targets[0]['accelerator']}; cold {cold['resolved']})")
            fmt = lambda ph: ", ".join(f"{k} {v:.2f}" for k, v in ph.items())  # noqa: E731
            print(f"      phases cold: {fmt(cold['phases'])}; no-op: {fmt(noop['phases'])}; dry: {fmt(dry['phases'])}; "
                  f"one changed: {fmt(one['phases'])}; deriving every page: {fmt(base['phases'])}")
    goals = {18: {"noop": 1.0}, 64: {"noop": 2.0, "dry": 10.0, "rss": 150}, 227: {"noop": 5.0, "dry": 30.0,
                                                                              "cold": 50.0, "rss": 300}}
    print("goals (figure / goal = ratio):")
    for n, (cold, noop, dry, _load) in results.items():
        rss = max(cold["rss_mb"], noop["rss_mb"], dry["rss_mb"])
        got = {"cold": cold["total"], "noop": noop["total"], "dry": dry["total"], "rss": rss}
        for key, goal in goals.get(n, {}).items():
            ratio = got[key] / goal
            print(f"  {n} targets {key}: {got[key]:.2f} / {goal:g} = {ratio:.2f}  {'met' if ratio <= 1 else 'MISSED'}")
        if n in goals and "noop" in goals[n]:
            only_304 = noop["requests"].get("pages", 0) == noop["requests"].get("unchanged", 0) \
                and noop["fetched"] == 0 and noop["requests"].get("metadata", 0) == 0
            print(f"  {n} targets no-op transfers only 304s and no wheel bytes: {'met' if only_304 else 'MISSED'}")


if __name__ == "__main__":
    main()
