"""site.availability: the one availability matrix behind ``ls`` and ``conda ls``."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.kit.blackhole import CONNECT_ENV, blackhole
from torchdepot.model.condabuild import record_from_repodata
from torchdepot.model.wheelname import parse_wheel
from torchdepot.net.http import QUERY_HTTP
from torchdepot.site.availability import (
    CONDA_LEGEND,
    WHEEL_LEGEND,
    Entry,
    build_matrix,
    conda_matrix,
    render,
    select_wheels,
    wheel_matrix,
)

WHEELS = [parse_wheel(n) for n in (
    "torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl",
    "torch-2.5.1+cpu-cp311-cp311-win_amd64.whl",
    "torch-2.5.1-cp311-none-macosx_11_0_arm64.whl",
    "torch-2.5.1+cu121-cp311-cp311-linux_x86_64.whl",
    "torch-2.5.1+cu118-cp310-cp310-linux_x86_64.whl",
    "torch-2.5.1+cu118-cp313-cp313t-linux_x86_64.whl",
    "torch-2.10.0+cpu-cp313-cp313-manylinux_2_28_aarch64.whl",
    "torch-2.10.0+cpu-cp313-cp313-linux_s390x.whl",
    "torch-2.10.0-py3-none-any.whl",
)]


def test_wheel_matrix_order_and_cells():
    m = wheel_matrix("torch", WHEELS)
    assert m.title == "torch: 9 wheels"
    assert m.columns == ("3", "3.10", "3.11", "3.13", "3.13t")
    # newest version first (2.10 > 2.5 numerically), then accelerators in accelerator_sort_key
    # order (newest CUDA first, cpu after the GPUs), unknown last
    assert [(r.version, r.accelerator) for r in m.rows] == [
        ("2.10.0", "cpu"), ("2.10.0", "unknown"), ("2.5.1", "cu121"), ("2.5.1", "cu118"), ("2.5.1", "cpu"),
        ("2.5.1", "unknown")]
    cpu210 = m.rows[0]
    assert cpu210.cell("3.13") == "Alinux-s390x"  # legend order, an uncoded platform after
    assert m.rows[4].cell("3.11") == "LW"
    assert m.rows[3].cell("3.13t") == "L"
    assert m.rows[3].cell("3.10") == "L"
    assert m.rows[1].cell("3") == "*"
    assert m.rows[5].cell("3.11") == "M"


def test_rendering_is_deterministic_and_aligned():
    text = render(wheel_matrix("torch", WHEELS))
    assert text == render(wheel_matrix("torch", list(reversed(WHEELS))))
    lines = text.splitlines()
    assert lines[1].split() == ["version", "accelerator", "3", "3.10", "3.11", "3.13", "3.13t"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["2.10.0", "cpu", "Alinux-s390x"]
    assert "L=linux-x86_64" in WHEEL_LEGEND
    assert "free-threaded" in WHEEL_LEGEND


def test_conda_records_share_the_matrix():
    def rec(subdir, fn, build, version="2.5.1"):
        return record_from_repodata("pytorch", subdir, fn, {"name": fn.rsplit("-", 2)[0], "version": version,
                                                             "build": build, "build_number": 0})

    records = [rec("linux-64", "pytorch-2.5.1-py3.11_cuda11.8_cudnn9_0.tar.bz2", "py3.11_cuda11.8_cudnn9_0"),
               rec("win-64", "pytorch-2.5.1-py3.11_cuda11.8_cudnn9_0.tar.bz2", "py3.11_cuda11.8_cudnn9_0"),
               rec("linux-64", "pytorch-2.5.1-py3.9_cpu_0.tar.bz2", "py3.9_cpu_0"),
               rec("noarch", "pytorch-mutex-1.0-cuda.tar.bz2", "cuda", "1.0")]
    m = conda_matrix("pytorch", records)
    assert m.columns == ("3.9", "3.11", "-")  # numeric order; "no Python" last
    assert [(r.version, r.accelerator) for r in m.rows] == [("2.5.1", "cu118"), ("2.5.1", "cpu"),
                                                             ("1.0", "unknown")]
    assert m.rows[0].cell("3.11") == "LW"
    assert m.rows[1].cell("3.9") == "L"
    assert m.rows[2].cell("-") == "*"
    assert "'-' = build states no Python" in CONDA_LEGEND


def test_same_entries_same_matrix_whatever_the_source():
    """Wheels and records reduce to the same Entry; the matrix never looks at where they came from."""
    e = [Entry(version="1.0", accelerator=None, python="3.11", platform="L")]
    assert build_matrix("x", e) == build_matrix("x", e * 3)


def test_select_wheels_filters():
    items = [(None, w) for w in WHEELS]
    assert len(select_wheels(items, None, None, None)) == 9
    got = select_wheels(items, {"cpu"}, "3.11", "linux-x86_64")
    assert [w.filename for _, w in got] == ["torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl"]
    assert {w.filename for _, w in select_wheels(items, {"unknown"}, None, "linux-x86_64")} == {
        "torch-2.10.0-py3-none-any.whl"}


@pytest.mark.parametrize("argv", [
    ["ls", "--index", "http://127.0.0.1:{port}/whl", "--package", "torch"],
    ["conda", "ls", "--channel", "http://127.0.0.1:{port}/pytorch", "--subdir", "linux-64"],
])
@pytest.mark.slow  # 1.5-2.2 s: keeps make test under 2 minutes
def test_unreachable_source_fails_fast_in_one_line(argv):
    """A host that drops packets: one line and exit 1 within a bounded time (two short
    attempts), not a sync's five patient ones per URL. The connect timeout is injected short
    (tests/kit/blackhole.py): the attempts are counted, not waited out at 3 s each."""
    with blackhole() as port:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "torchdepot", *(a.format(port=port) for a in argv)],
                              capture_output=True, text=True, timeout=120, env={**os.environ, **CONNECT_ENV})
        took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("torchdepot: error: "), proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr
    urls = 2 if argv[0] == "conda" else 1  # conda tries repodata.json.zst, then repodata.json
    assert proc.stderr.count(f"timed out (after {QUERY_HTTP.retries + 1} attempts)") == urls, proc.stderr
    assert took < 20, took


def test_ls_reads_through_the_one_upstream_reader():
    """`ls` reads each page once through sources.upstream.UpstreamReader, so a redirect to
    another origin (here another port on the index's host) is refused in one line."""
    from click.testing import CliRunner

    from tests.faultserver import Fault, FaultServer
    from torchdepot.cli import main
    from torchdepot.site.availability import index_wheels

    page = (b'<a href="torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl">a</a>'
            b'<a href="torch-2.5.1%2Bcu121-cp311-cp311-linux_x86_64.whl">b</a><a href="notes.txt">n</a>')
    with FaultServer() as up, FaultServer() as other:
        up.add("/whl/torch/", page, "text/html")
        listing = index_wheels(up.url + "/whl", ["torch"], {"cpu"}, "3.11", "linux-x86_64")
        assert [w.filename for _, w in listing.items] == ["torch-2.5.1+cpu-cp311-cp311-linux_x86_64.whl"]
        assert listing.requests == 1
        assert up.hits["/whl/torch/"] == 1
        assert listing.skipped == f"{up.url}/whl: skipped 1 entries (1 not a wheel)"

        other.add("/whl/torch/", page, "text/html")
        up.add("/moved/torch/", b"", "text/html")
        up.always("/moved/torch/", Fault("redirect", location=other.url + "/whl/torch/"))
        res = CliRunner().invoke(main, ["ls", "--index", up.url + "/moved", "--package", "torch"])
    assert res.exit_code == 1, res.output
    assert res.stderr.count("\n") == 1, res.output
    assert res.stderr.startswith(f"torchdepot: error: {up.url}/moved/torch/: redirect to {other.url}/whl/torch/ refused")
    assert other.hits["/whl/torch/"] == 0
