"""torchdepot serve: Range/ETag/304/types/escape checks against the real server over TCP,
its bounds (idle sockets, bad requests, symlink loops), pip installing from it, the CLI and
its banner run verbatim against a LAN host name, and the generated nginx config run by
Debian's nginx."""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kit.lanproxy import LanProxy
from tests.kit.realservers import free_port, nginx_conf, nginx_running
from tests.kit.serving import request, serve_mirror
from tests.mirror_fixture import make_mirror
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.model.trust import install_commands
from torchdepot.resolve.uv import uv_bin
from torchdepot.ship.nginx import nginx_config, nginx_types
from torchdepot.ship.serve import (
    CONTENT_TYPES,
    ServeLimits,
    client_host,
    parse_range,
)

TD = Path(sys.executable).parent / "torchdepot"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "mirror"
    make_mirror(root)
    (root / "index.html").write_text("<html><body>landing</body></html>")
    outside = root.parent / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "escape.txt")
    os.symlink("loop-b", root / "loop-a")  # a symlink loop inside the root
    os.symlink("loop-a", root / "loop-b")
    (root / ".torchdepot" / "hashes.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def server(mirror):
    with serve_mirror(mirror) as httpd:
        yield httpd


WHEEL = "/packages/torch/torch-2.13.0%2Bcpu-py3-none-any.whl"


def test_full_get_types_and_cache_headers(server, mirror):
    data = (mirror / "packages/torch/torch-2.13.0+cpu-py3-none-any.whl").read_bytes()
    resp, body = request(server, WHEEL)
    assert resp.status == 200
    assert body == data
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert "immutable" in resp.getheader("Cache-Control")
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, body = request(server, "/manifest.json")
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Cache-Control") == "no-cache"  # may change: revalidated by ETag
    resp, _ = request(server, "/whl/cpu/torch/")  # through the whl -> .publish symlink
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/html")
    assert resp.getheader("Cache-Control") == "no-cache"
    resp, _ = request(server, "/conda/pytorch-fixture/linux-64/pytorch-2.13.0-cpu_py311_0.conda")
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert "immutable" not in resp.getheader("Cache-Control")  # only packages/ paths never change
    resp, body = request(server, WHEEL, method="HEAD")
    assert resp.status == 200
    assert body == b""
    assert int(resp.getheader("Content-Length")) == len(data)


def test_ranges(server, mirror):
    data = (mirror / "packages/torch/torch-2.13.0+cpu-py3-none-any.whl").read_bytes()
    size = len(data)
    resp, body = request(server, WHEEL, headers={"Range": "bytes=10-19"})
    assert resp.status == 206
    assert body == data[10:20]
    assert resp.getheader("Content-Range") == f"bytes 10-19/{size}"
    resp, body = request(server, WHEEL, headers={"Range": "bytes=100-"})
    assert resp.status == 206
    assert body == data[100:]
    resp, body = request(server, WHEEL, headers={"Range": "bytes=-7"})
    assert resp.status == 206
    assert body == data[-7:]
    resp, _ = request(server, WHEEL, headers={"Range": f"bytes={size}-"})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{size}"
    resp, _ = request(server, WHEEL, headers={"Range": "bytes=5-2"})
    assert resp.status == 416
    # a stale If-Range validator: the whole file, not a slice of a changed one
    resp, body = request(server, WHEEL, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert resp.status == 200
    assert body == data


def test_etag_and_last_modified_give_304(server):
    resp, _ = request(server, "/whl/cpu/torch/index.html")
    etag, lm = resp.getheader("ETag"), resp.getheader("Last-Modified")
    assert etag
    assert lm
    resp, body = request(server, "/whl/cpu/torch/index.html", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert body == b""
    resp, _ = request(server, "/whl/cpu/torch/index.html", headers={"If-Modified-Since": lm})
    assert resp.status == 304
    resp, _ = request(server, "/whl/cpu/torch/index.html", headers={"If-None-Match": '"other"'})
    assert resp.status == 200


def test_directories_and_escapes(server):
    resp, _ = request(server, "/whl/cpu/torch")
    assert resp.status == 301
    assert resp.getheader("Location") == "/whl/cpu/torch/"
    resp, body = request(server, "/")
    assert resp.status == 200
    assert b"landing" in body
    resp, _ = request(server, "/packages/")  # no index.html, no listing
    assert resp.status == 404
    for bad in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/packages/..%2f..%2f..%2fetc/passwd",
                "/escape.txt", "/.torchdepot/hashes.json", "/whl/..%5c..%5cetc", "/missing.whl"):
        resp, body = request(server, bad)
        assert resp.status == 404, bad
        assert b"secret" not in body
        assert b"root:" not in body


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 5_000))
def test_parse_range_property(a, b, size):
    r = parse_range(f"bytes={a}-{b}", size)
    if a >= size or b < a:
        assert r is None
    else:
        assert r is not None
        assert r.start == a
        assert r.end == min(b, size - 1)
        assert 0 <= r.start <= r.end < size


@given(st.text(max_size=30))
def test_parse_range_never_raises(text):
    r = parse_range(text, 100)
    assert r is None or 0 <= r.start <= r.end < 100


@given(st.from_regex(r"bytes=[0-9]{0,6000}-[0-9]{0,6000}", fullmatch=True) | st.text(alphabet="bytes=0123456789-, ", max_size=9000),
       st.integers(0, 2**62))
def test_parse_range_fuzz_huge_numbers(header, size):
    r = parse_range(header, size)
    assert r is None or 0 <= r.start <= r.end < size


# -- bounds: idle sockets, hostile requests, no tracebacks ------------------------------------
def raw_exchange(httpd, data: bytes) -> bytes:
    with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
        s.sendall(data)
        return s.recv(65536)


@pytest.mark.slow  # 1.5-2.2 s: keeps make test under 2 minutes
def test_idle_sockets_do_not_starve_real_clients(mirror):
    with serve_mirror(mirror, ServeLimits(workers=4)) as httpd:
        idle = [socket.create_connection(httpd.server_address[:2], timeout=10) for _ in range(300)]
        try:
            # 300 idle connections (plus a few that sent half a request line) hold 4 workers at most
            for s in idle[:3]:
                s.sendall(b"GET /whl/cp")
            started = time.monotonic()
            for _ in range(5):
                resp, body = request(httpd, WHEEL)
                assert resp.status == 200
                assert body[:2] == b"PK"
            took = time.monotonic() - started
            assert took < 3.0, f"5 real GETs took {took:.2f}s behind 300 idle sockets"
        finally:
            for s in idle:
                s.close()


def test_idle_timeout_and_idle_cap_close_connections(mirror):
    with serve_mirror(mirror, ServeLimits(idle_timeout=0.5, max_idle=10)) as httpd:
        kept = socket.create_connection(httpd.server_address[:2], timeout=5)
        started = time.monotonic()
        assert kept.recv(1) == b""  # closed by the server, not by our 5 s timeout
        assert time.monotonic() - started < 3
        kept.close()
    with serve_mirror(mirror, ServeLimits(idle_timeout=60, max_idle=10)) as httpd:
        socks = [socket.create_connection(httpd.server_address[:2], timeout=5) for _ in range(25)]
        time.sleep(0.5)
        closed = 0
        for s in socks[:15]:  # the oldest 15 were closed to keep 10
            s.settimeout(3)
            closed += s.recv(1) == b""
        assert closed == 15
        socks[-1].sendall(f"GET {WHEEL} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n".encode())
        assert socks[-1].recv(4096).startswith(b"HTTP/1.1 206")  # the newest still serves
        for s in socks:
            s.close()


def _dribble(httpd, n: int) -> list[socket.socket]:
    """``n`` connections that each sent the start of a request head and nothing more yet."""
    socks = [socket.create_connection(httpd.server_address[:2], timeout=10) for _ in range(n)]
    for s in socks:
        s.sendall(b"GET /whl/cpu/torch/ HTTP/1.1\r\nX-")
    return socks


@pytest.mark.slow
def test_header_dribblers_hold_no_worker(mirror):
    """40 connections that send one header byte at a time (every 0.25 s, always inside any
    per-read timeout) hold none of 32 workers: a real client gets its page within 1 s,
    every round; a head not complete within header_timeout is closed."""
    with serve_mirror(mirror, ServeLimits(workers=32, header_timeout=2.0)) as httpd:
        slow = _dribble(httpd, 40)
        try:
            worst = 0.0
            for _ in range(5):  # a bounded loop: ~1.3 s of dribbling, inside the header deadline
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"a")
                started = time.monotonic()
                resp, body = request(httpd, "/whl/cpu/torch/")
                worst = max(worst, time.monotonic() - started)
                assert resp.status == 200
                assert b"torch-2.13.0" in body
                time.sleep(0.25)
            assert worst < 1.0, f"a page took {worst:.2f}s behind 40 dribbling connections"
            started = time.monotonic()
            slow[0].settimeout(10)
            closed = b""
            with contextlib.suppress(ConnectionResetError):
                closed = slow[0].recv(1)
            assert closed == b""  # the header deadline closed it
            assert time.monotonic() - started < 5
        finally:
            for s in slow:
                s.close()


@pytest.mark.slow
def test_per_client_cap_closes_the_oldest_parked_connection(mirror):
    with serve_mirror(mirror, ServeLimits(max_per_client=5)) as httpd:
        socks = [socket.create_connection(httpd.server_address[:2], timeout=5) for _ in range(5)]
        time.sleep(1.3)  # past the grace a new connection is spared for
        extra = socket.create_connection(httpd.server_address[:2], timeout=5)  # over the cap ...
        socks[0].settimeout(3)
        assert socks[0].recv(1) == b""  # ... the client's oldest parked one is closed to make room
        extra.sendall(b"HEAD /manifest.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(4096).startswith(b"HTTP/1.1 200")  # and the new one answered
        for s in socks[1:]:
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):  # the others are kept
                s.recv(1)
        for s in [*socks, extra]:
            s.close()


_FD_SCRIPT = """
import resource, sys, threading
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from torchdepot.ship.serve import make_server
httpd = make_server(Path(sys.argv[1]), "127.0.0.1", 0, quiet=True)
print(httpd.server_address[1], httpd.max_connections, flush=True)
httpd.serve_forever(poll_interval=0.05)
"""


@pytest.mark.slow
def test_descriptor_limit_is_never_exhausted(mirror):
    """Under ``ulimit -n 64``, 150 open connections (idle and dribbling) never take the
    server's last descriptor: connections are capped to fit, oldest parked closed first,
    and a real client is still answered."""
    proc = subprocess.Popen([sys.executable, "-c", _FD_SCRIPT, str(mirror)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    held: list[socket.socket] = []
    try:
        port, cap = map(int, proc.stdout.readline().split())
        assert 4 <= cap < 64
        for i in range(150):
            with contextlib.suppress(OSError):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                held.append(s)
                if i % 2:
                    s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(1.5)  # past the grace: the flood's settled connections give way
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", WHEEL)
            r = conn.getresponse()
            assert r.status == 200
            assert r.read()[:2] == b"PK"
            conn.close()
        assert proc.poll() is None
    finally:
        for s in held:
            s.close()
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
    assert "Too many open files" not in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]


def test_keep_alive_serves_several_requests_on_one_connection(mirror):
    with serve_mirror(mirror, ServeLimits(workers=2)) as httpd:
        conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=10)
        for _ in range(20):
            conn.request("GET", "/manifest.json")
            r = conn.getresponse()
            assert r.status == 200
            assert r.read()
        # pipelined: two requests in one write are both answered
        with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
            s.sendall(b"HEAD /manifest.json HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            got = b""
            while got.count(b"HTTP/1.1 200") < 2:
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk


def test_hostile_requests_get_a_status_not_a_dropped_connection(mirror, capfd):
    with serve_mirror(mirror, quiet=False) as httpd:
        cases = [
            (f"/packages/{'a' * 300}.whl", {}, 414),
            (f"/{'b' * 300}/", {}, 414),
            (WHEEL, {"Range": "bytes=" + "9" * 5000 + "-"}, 416),
            (WHEEL, {"Range": "bytes=0-" + "1" * 5000}, 416),
            (WHEEL, {"Range": "bytes=" + "1" * 50 + "-" + "2" * 50}, 416),
            ("/loop-a", {}, 404),
            ("/loop-a/", {}, 404),
            ("/loop-a/x/y", {}, 404),
            ("/whl/cpu/torch/", {"Accept": "application/vnd.pypi.simple.v1+json;q=" + "9" * 5000}, 200),
        ]
        conn = http.client.HTTPConnection(*httpd.server_address[:2], timeout=10)
        for path, headers, status in cases:  # all on one connection: none of them drops it
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            assert r.status == status, (path[:40], headers.keys(), r.status)
        conn.close()
        assert b"400" in raw_exchange(httpd, b"NONSENSE\r\n\r\n")  # an HTTP/0.9 answer: no status line
        assert raw_exchange(httpd, b"GET / / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw_exchange(httpd, b"BREW /pot HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 501")
        assert raw_exchange(httpd, b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
        assert raw_exchange(httpd, b"GET / HTTP/1.1\r\nX: " + b"y" * 70_000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
        assert raw_exchange(httpd, b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404")
        resp, _ = request(httpd, "/manifest.json")  # still serving
        assert resp.status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    assert err.count("\n") >= 10, err[-2000:]


# -- the CLI -----------------------------------------------------------------------------------
def _pip_install_from(url: str, tmp: Path) -> str:
    py = make_venv(tmp / "venv")
    proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--index-url", f"{url}/whl/cpu", "torch==2.13.0+cpu"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run([py, "-c", "import torch, filelock; print(torch.__version__)"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _start_cli(*args) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([TD, "serve", *map(str, args)], stdout=subprocess.PIPE, text=True, env=hermetic_env())
    banner = [proc.stdout.readline() for _ in range(3)]
    return proc, [line.rstrip("\n") for line in banner]


@pytest.mark.slow
def test_cli_serve_and_pip_install(mirror, tmp_path):
    proc, banner = _start_cli("--root", mirror, "--port", 0, "--quiet")
    try:
        assert banner[0].startswith("Serving "), banner
        assert "http://127.0.0.1:" in banner[0], banner
        url = re.search(r" at (http://\S+?)/$", banner[0]).group(1)
        # loopback: pip trusts it as is, so the printed commands carry no trust options
        assert banner[1] == f"  pip install --index-url {url}/whl/cpu torch"
        assert banner[2] == f"  uv pip install --index-url {url}/whl/cpu torch"
        assert _pip_install_from(url, tmp_path) == "2.13.0+cpu"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_banner_commands_work_verbatim_on_a_lan_host(mirror, tmp_path):
    """`--public-host torchlab`: the banner's pip and uv lines, run exactly as printed through a
    loopback proxy that routes the LAN name, install from plain HTTP; pip without the printed
    trust option refuses the host (so the option is what makes it work)."""
    proc, banner = _start_cli("--root", mirror, "--port", 0, "--quiet", "--public-host", "torchlab")
    try:
        m = re.match(r"Serving \S+ at http://torchlab:(\d+)/  \(listening on http://127\.0\.0\.1:(\d+)\)$", banner[0])
        assert m, banner
        assert m.group(1) == m.group(2), banner
        port = int(m.group(1))
        pip_line, uv_line = banner[1].strip(), banner[2].strip()
        assert pip_line == f"pip install --index-url http://torchlab:{port}/whl/cpu --trusted-host torchlab:{port} torch"
        assert uv_line == f"uv pip install --index-url http://torchlab:{port}/whl/cpu --allow-insecure-host torchlab:{port} torch"
        with LanProxy({f"torchlab:{port}": ("127.0.0.1", port)}) as proxy:
            venv_dir = tmp_path / "venv"
            py = make_venv(venv_dir)
            uv_dir = tmp_path / "uvbin"
            uv_dir.mkdir()
            (uv_dir / "uv").symlink_to(uv_bin())
            env = proxy.env(hermetic_env(PATH=f"{venv_dir / 'bin'}{os.pathsep}{uv_dir}{os.pathsep}{os.environ['PATH']}",
                                         VIRTUAL_ENV=str(venv_dir), UV_NO_CACHE="1", PIP_NO_CACHE_DIR="1"))
            untrusted = subprocess.run(shlex.split(pip_line.replace(" --trusted-host torchlab", "")),
                                       env=env, capture_output=True, text=True)
            assert untrusted.returncode != 0
            assert "torchlab" in untrusted.stdout + untrusted.stderr
            done = subprocess.run(shlex.split(pip_line), env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            assert run([py, "-c", "import torch; print(torch.__version__)"]).stdout.strip() == "2.13.0+cpu"
            run([py, "-m", "pip", "uninstall", "-y", "torch", "filelock"])
            done = subprocess.run(shlex.split(uv_line), env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            assert run([py, "-c", "import torch; print(torch.__version__)"]).stdout.strip() == "2.13.0+cpu"
            assert any(r.startswith(f"GET http://torchlab:{port}/whl/cpu/torch/") for r in proxy.seen)
    finally:
        proc.terminate()
        proc.wait(10)


def test_install_commands_and_client_host():
    assert install_commands("http://127.0.0.1:8000/whl/cpu") == (
        "pip install --index-url http://127.0.0.1:8000/whl/cpu torch",
        "uv pip install --index-url http://127.0.0.1:8000/whl/cpu torch")
    assert install_commands("https://torch.lab/whl/cu126")[0] == "pip install --index-url https://torch.lab/whl/cu126 torch"
    assert "--trusted-host '[fd00::1]:8000' " in install_commands("http://[fd00::1]:8000/whl/cpu")[0]
    assert client_host("0.0.0.0") == socket.gethostname() == client_host("::")
    assert client_host("torchlab") == "torchlab"


def test_address_in_use_is_one_line_naming_the_port(mirror):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([TD, "serve", "--root", mirror, "--port", str(port)], capture_output=True, text=True,
                              env=hermetic_env(), timeout=30)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"torchdepot: error: cannot serve on 127.0.0.1:{port}: address already in use " \
                          "(another server? pick another --port)\n"
    assert errno.EADDRINUSE  # the errno the command maps (a typed check, not message text)


# -- nginx ---------------------------------------------------------------------------------------
def test_nginx_types_come_from_content_types():
    conf = nginx_config(Path("/srv/mirror"))
    block = conf.split("types {", 1)[1].split("}", 1)[0]
    declared = {ext: line.split()[0] for line in block.strip().splitlines() for ext in line.strip(" ;").split()[1:]}
    for suffix, mime in CONTENT_TYPES.items():
        assert declared[suffix.lstrip(".")] == mime.split(";")[0], suffix
    assert sum(len(v) for v in nginx_types().values()) == len(CONTENT_TYPES) == len(declared)


@contextlib.contextmanager
def running_nginx(root: Path, tmp_path: Path):
    """Debian's nginx running the generated config for ``root`` on a loopback port."""
    port = free_port()
    conf = tmp_path / "nginx"
    log = conf / "logs" / "access.log"
    http = f"    access_log {log};\n" + nginx_config(root, port=port, listen=f"127.0.0.1:{port}")
    with nginx_running(nginx_conf(conf, http, worker_connections=64), port, log):
        yield port


@pytest.mark.slow
def test_nginx_serves_mirror_and_pip_installs(mirror, tmp_path):
    with running_nginx(mirror, tmp_path) as port:
        url = f"http://127.0.0.1:{port}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", WHEEL, headers={"Range": "bytes=0-3"})
        r = conn.getresponse()
        assert r.status == 206
        assert r.read() == b"PK\x03\x04"
        assert "immutable" in r.getheader("Cache-Control")
        conn.request("GET", "/whl/cpu/torch/")
        r = conn.getresponse()
        assert r.status == 200
        assert b"torch-2.13.0" in r.read()
        assert r.getheader("Cache-Control") == "no-cache"
        conn.request("GET", "/.torchdepot/hashes.json")
        r = conn.getresponse()
        r.read()
        assert r.status == 404
        for name in ("manifest.json", "index.html"):
            conn.request("GET", f"/{name}")
            r = conn.getresponse()
            r.read()
            assert r.getheader("Content-Type").split(";")[0] == CONTENT_TYPES[os.path.splitext(name)[1]].split(";")[0]
        conn.close()
        assert _pip_install_from(url, tmp_path) == "2.13.0+cpu"


@pytest.mark.parametrize(("path", "immutable"), [
    ("/packages/torch/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", True),
    ("/packages/torch/0123456789abcdef/torch-2.13.0-py3-none-any.whl", True),  # changed bytes: their own path
    ("/packages/torch/torch-2.13.0-py3-none-any.whl.metadata", False),  # rewritten if its extraction changes
    ("/packages/torch/torch-2.10.0-variants.json", False),  # narrowed to the labels the mirror holds
    ("/packages/torch/", False),
    ("/conda/conda-forge/linux-64/pytorch-2.9.1-cpu_generic_py311_h0_0.conda", False),
    ("/whl/cpu/torch/index.html", False),
    ("/manifest.json", False),
])
def test_only_wheels_under_packages_are_immutable(path, immutable):
    from torchdepot.ship.serve import IMMUTABLE, REVALIDATE, cache_control

    assert cache_control(path) == (IMMUTABLE if immutable else REVALIDATE)
