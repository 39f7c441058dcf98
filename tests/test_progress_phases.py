"""Issue 21: progress shows every phase that moves bytes, seen as a user sees it.

``torchdepot mirror`` runs as a user runs it (the CLI in a subprocess, hermetic pip
configuration) with its stderr on a pseudo-terminal, against a paced ``http.server``-shaped
upstream on loopback (directory listings, no Range, no hashes, no ``.metadata``: every wheel
is read whole for its METADATA). Each phase that moves bytes over the link must draw a live
tqdm bar on stderr with a total and an ETA while it runs:

- per-target path (``sync/pip.py``): the reads of pages and METADATA (torch read whole,
  answered to the 1-byte probe), uv's resolution (targets resolved of the plan's), the fetch;
- regional path (``releases:``, ``sync/regional.py``): the reads of pages and the METADATA of
  the selection (39 wheels read whole), the fetch, then the ``.metadata`` publish writes;
- both paths: the index pages rendered, then written (of the generation's total), and the
  closing check's files (of the manifest's total), counted bars as the publish goes;
- ``--json``: stdout is the one JSON document; no read bar is drawn;
- a no-op re-sync (``sync/settled.py``, nginx answering 304s): the pages it revalidates,
  counted against their number, on a terminal only.

Invariants: loopback only; the server stops with its context manager.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.httpserver import Server
from tests.kit import regional as kit
from tests.kit.upstream import DEPS, TORCH, padded_wheel, pep503
from tests.loopback_upstream import ROOT as REPO
from tests.venvs import hermetic_env

KB = 1024
READS_PIP = "pages and METADATA"
READS_REGIONAL = "releases: pages and METADATA"
# one tqdm frame with a total: "desc:  40%|████      | 3.74k/13.5k [00:01<00:02, 2.30kB/s]"
FRAME = re.compile(r"(?P<desc>[^|]+?): +(?P<pct>\d+)%\|[^|]*\| *(?P<done>[\d.]+\w?)/(?P<total>[\d.]+\w?) "
                   r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Paced(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler (no Range, Last-Modified only), every body sent at
    ``rate`` bytes a second: a slow far link."""

    rate = 64 * KB

    def log_message(self, fmt, *args):  # quiet tests
        pass

    def copyfile(self, source, outputfile):
        step = max(1, self.rate // 20)
        while chunk := source.read(step):
            outputfile.write(chunk)
            outputfile.flush()
            time.sleep(len(chunk) / self.rate)


def paced(rate: int) -> type[Paced]:
    return type("PacedAt", (Paced,), {"rate": rate})


@dataclass(frozen=True)
class Frame:
    at: float  # seconds since the command started
    desc: str
    pct: int
    total: str
    eta: str


@dataclass(frozen=True)
class Seen:
    rc: int
    stdout: str
    lines: list[tuple[float, str]]  # every stderr line or bar redraw, as the terminal got it

    def frames(self, desc: str) -> list[Frame]:
        out = []
        for at, text in self.lines:
            m = FRAME.search(text)
            if m and m["desc"].strip() == desc:
                out.append(Frame(at, desc, int(m["pct"]), m["total"], m["eta"]))
        return out

    def first(self, needle: str) -> float:
        return next(at for at, text in self.lines if needle in text)

    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


def run_on_tty(args: list[str], env: dict[str, str], timeout: float = 120) -> Seen:
    """The CLI with stderr on a pseudo-terminal (80x200, so tqdm draws its bars) and stdout a
    pipe, as ``torchdepot mirror --json > out.json`` in a terminal; each stderr redraw timed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 80, 200, 0, 0))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "torchdepot", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    lines: list[tuple[float, str]] = []
    pending = b""
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            pending += data
            *done, pending = re.split(rb"[\r\n]", pending)
            now = time.monotonic() - t0
            lines += [(now, ANSI.sub("", d.decode(errors="replace"))) for d in done if d.strip()]
        stdout = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))[0]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if pending.strip():
        lines.append((time.monotonic() - t0, ANSI.sub("", pending.decode(errors="replace"))))
    return Seen(proc.returncode, stdout.decode(), lines)


def assert_live_bar(seen: Seen, desc: str, before: str | None = None, span: float = 0.5) -> list[Frame]:
    """``desc`` drew a bar with a total and a numeric ETA, redrawn while it ran (before it
    reached 100 %, over at least ``span`` seconds), and (``before``) before the line that
    follows its phase."""
    frames = seen.frames(desc)
    assert frames, f"no {desc!r} bar with a total:\n{seen.text()[-4000:]}"
    running = [f for f in frames if f.pct < 100]
    assert running, f"{desc!r} never drawn before it was done: {frames}"
    assert any(f.eta not in ("?", "") for f in frames), f"{desc!r} never showed an ETA: {frames}"
    assert frames[-1].at - running[0].at >= span, f"{desc!r} drawn only at its end: {frames}"
    if before is not None:
        assert running[0].at < seen.first(before), f"{desc!r} bar came after {before!r}"
    return frames


def assert_publish_bars(seen: Seen, out: Path, prefix: str) -> None:
    """The publish's last phases drew their counts: the pages of the live generation rendered,
    then written, then every manifest file checked by the closing check; each bar closed full."""
    pages = sum(1 for p in (out / "whl").resolve().rglob("*") if p.is_file())
    files = len(json.loads((out / "manifest.json").read_text())["files"])
    for desc, total in ((prefix + "index pages", pages), (prefix + "index pages written", pages),
                        (prefix + "verify", files)):
        frames = seen.frames(desc)
        assert frames, f"no {desc!r} bar:\n{seen.text()[-4000:]}"
        assert {f.total for f in frames} == {str(total)}, (desc, total, frames)
        assert frames[-1].pct == 100, frames
    firsts = [seen.frames(prefix + d)[0].at for d in ("index pages", "index pages written", "verify")]
    assert firsts == sorted(firsts), firsts


def _env(url: str, tmp: Path) -> dict[str, str]:
    return hermetic_env(PIP_INDEX_URL=url + "/simple", UV_CACHE_DIR=str(tmp / "uv-cache"), PYTHONPATH=str(REPO))


def _pip_upstream(root: Path) -> None:
    """torch in a hashless flat directory listing (``<base>/cpu/``: no hash, no ``.metadata``,
    no Range, so it is read whole for its METADATA), its dependencies on a PEP 503 ``/simple``
    with hashes and ``.metadata`` (so their bodies move in the fetch)."""
    torch = padded_wheel(*TORCH, payload=1536 * KB, seed=1)
    deps = [padded_wheel(*spec, payload=384 * KB, seed=2 + i) for i, spec in enumerate(DEPS)]
    (root / "pytorch-wheels" / "cpu").mkdir(parents=True)
    (root / "pytorch-wheels" / "cpu" / torch.filename).write_bytes(torch.data)
    for path, content in pep503(deps, pages=["/simple"], files="/files").files.items():
        assert isinstance(content, bytes)
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)


def _pip_spec(tmp: Path, url: str, out: Path) -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "packages": ["torch"], "extra_packages": [], "accelerators": ["cpu"], "pythons": ["3.11"],
        "platforms": ["linux-x86_64"], "upstreams": [url + "/pytorch-wheels"], "out": str(out), "jobs": 4}))
    return spec


@pytest.mark.slow  # a paced server and two CLI syncs (about 6 s)
def test_pip_path_reads_and_fetch_each_draw_a_live_bar_and_json_stays_clean(tmp_path):
    root = tmp_path / "upstream"
    _pip_upstream(root)
    with Server(root, handler=paced(512 * KB)) as up:
        out = tmp_path / "out"
        seen = run_on_tty(["mirror", "--spec", str(_pip_spec(tmp_path, up.url, out))], _env(up.url, tmp_path))
        assert seen.rc == 0, seen.text()[-4000:]
        reads = assert_live_bar(seen, READS_PIP)
        # torch read whole for its METADATA (1.5 MB at 512 KB/s): its bytes are in the reads' total
        assert any(f.total.endswith("M") and float(f.total[:-1]) >= 1.5 for f in reads), reads
        assert [f.total for f in assert_live_bar(seen, "resolve", span=0)] == ["1"] * len(seen.frames("resolve"))
        assert_live_bar(seen, "fetch", span=0)  # the dependencies' bodies, split over connections: short
        assert_publish_bars(seen, out, "")

        json_out = tmp_path / "out-json"
        doc = run_on_tty(["mirror", "--json", "--spec", str(_pip_spec(tmp_path, up.url, json_out))],
                         _env(up.url, tmp_path))
        assert doc.rc == 0, doc.text()[-4000:]
        assert json.loads(doc.stdout)["out"] == str(json_out)  # stdout: the one document
        assert READS_PIP not in doc.text()  # --json: the fetch's events only
        assert "resolve:" not in doc.text()
        assert not doc.frames("index pages"), doc.text()[-4000:]
        assert not doc.frames("index pages written"), doc.text()[-4000:]
        assert not doc.frames("verify"), doc.text()[-4000:]


@pytest.mark.slow  # a paced server and a CLI sync (about 5 s)
def test_regional_reads_and_fetch_each_draw_a_live_bar(tmp_path):
    from tests.test_farlink_real_servers import _OnDisk

    root = tmp_path / "upstream"
    kit.serve(_OnDisk(root), hashless=True)
    with Server(root, handler=paced(3 * KB)) as up:
        spec = tmp_path / "regional.yaml"
        spec.write_text(yaml.safe_dump({
            "releases": "torch>=2.0", "packages": ["torch", "torchvision", "torchaudio"], "extra_packages": [],
            "accelerators": ["all"], "pythons": ["all"], "platforms": ["all"], "upstreams": [up.url + "/whl"],
            "out": str(tmp_path / "srv"), "jobs": 4}))
        seen = run_on_tty(["mirror", "--spec", str(spec)], _env(up.url, tmp_path))
        assert seen.rc == 0, seen.text()[-4000:]
        # the wheels read whole moved under this bar, before the line that counts them
        assert_live_bar(seen, READS_REGIONAL, before="read whole for their METADATA")
        assert_live_bar(seen, "fetch")
        # publish: each wheel's .metadata written from its zip, counted against the selection
        published = seen.frames("releases: .metadata")
        assert published, seen.text()[-4000:]
        assert {f.total for f in published} == {"72"}, published
        assert published[-1].pct == 100, published
        assert_publish_bars(seen, tmp_path / "srv", "releases: ")


@pytest.mark.slow  # nginx and two CLI syncs (about 3 s)
def test_no_op_resync_draws_a_bar_of_the_pages_it_revalidates(tmp_path):
    """The no-op shortcut (``sync/settled.py``) asks upstream about every page the last sync
    read (ETag/Last-Modified: nginx answers 304): on a far link a few hundred round trips, so a
    bar counts them against their total; off a terminal nothing is drawn."""
    from tests.kit.realservers import nginx
    from tests.loopback_upstream import mirror_env, run_mirror, write_spec
    from tests.test_farlink_real_servers import _dep_wheels, _pytorch_tree

    root = tmp_path / "upstream"
    out = tmp_path / "out"
    with nginx(root, tmp_path) as up:
        _pytorch_tree(root, up.url, _dep_wheels(), torch_payload=64 * KB)
        for p in root.rglob("*"):  # an hour old: Last-Modified is a validator the mirror keeps
            os.utime(p, (time.time() - 3600,) * 2)
        spec = write_spec(tmp_path / "spec.yaml", up.url, out, jobs=4)
        env = mirror_env(up.url, tmp_path)
        t0 = time.monotonic()
        cold = run_mirror(spec, env)
        print(f"\nFIGURES cold {time.monotonic() - t0:.2f}s")
        assert cold.returncode == 0, cold.stderr[-3000:]
        mark = up.mark()
        t0 = time.monotonic()
        seen = run_on_tty(["mirror", "--spec", str(spec)], env)
        print(f"FIGURES no-op on a terminal {time.monotonic() - t0:.2f}s")
        assert seen.rc == 0, seen.text()[-4000:]
        asked = up.since(mark)
        assert asked
        assert all(h.status == 304 for h in asked), asked  # the shortcut: only 304s
        frames = seen.frames("pages revalidated")
        assert frames, seen.text()[-4000:]
        assert {f.total for f in frames} == {str(len(asked))}, (frames, asked)
        assert frames[-1].pct == 100, frames
        again = run_mirror(spec, env)  # not a terminal: no bar
        assert again.returncode == 0, again.stderr[-3000:]
        assert "revalidated" not in again.stderr, again.stderr[-3000:]
