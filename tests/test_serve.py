"""torchdepot serve: Range/ETag/304/types/escape checks against the real server over TCP,
pip installing from it, the CLI, and the generated nginx config run by Debian's nginx."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from tests.mirror_fixture import make_mirror
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.ship.serve import make_server, nginx_config, parse_range

TD = Path(sys.executable).parent / "torchdepot"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "mirror"
    make_mirror(root)
    (root / "index.html").write_text("<html><body>landing</body></html>")
    outside = root.parent / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "escape.txt")
    (root / ".torchdepot" / "hashes.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def server(mirror):
    httpd = make_server(mirror, "127.0.0.1", 0, quiet=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def request(httpd, path, method="GET", headers=None):
    host, port = httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


WHEEL = "/packages/torch/torch-2.13.0%2Bcpu-py3-none-any.whl"


def test_full_get_types_and_cache_headers(server, mirror):
    data = (mirror / "packages/torch/torch-2.13.0+cpu-py3-none-any.whl").read_bytes()
    resp, body = request(server, WHEEL)
    assert resp.status == 200 and body == data
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert "immutable" in resp.getheader("Cache-Control")
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, body = request(server, "/manifest.json")
    assert resp.getheader("Content-Type") == "application/json"
    assert "max-age=60" in resp.getheader("Cache-Control")
    resp, _ = request(server, "/whl/cpu/torch/")  # through the whl -> .publish symlink
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/html")
    resp, _ = request(server, "/conda/pytorch-fixture/linux-64/pytorch-2.13.0-cpu_py311_0.conda")
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/octet-stream"
    resp, body = request(server, WHEEL, method="HEAD")
    assert resp.status == 200 and body == b"" and int(resp.getheader("Content-Length")) == len(data)


def test_ranges(server, mirror):
    data = (mirror / "packages/torch/torch-2.13.0+cpu-py3-none-any.whl").read_bytes()
    size = len(data)
    resp, body = request(server, WHEEL, headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and body == data[10:20]
    assert resp.getheader("Content-Range") == f"bytes 10-19/{size}"
    resp, body = request(server, WHEEL, headers={"Range": "bytes=100-"})
    assert resp.status == 206 and body == data[100:]
    resp, body = request(server, WHEEL, headers={"Range": "bytes=-7"})
    assert resp.status == 206 and body == data[-7:]
    resp, _ = request(server, WHEEL, headers={"Range": f"bytes={size}-"})
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{size}"
    resp, _ = request(server, WHEEL, headers={"Range": "bytes=5-2"})
    assert resp.status == 416
    # a stale If-Range validator: the whole file, not a slice of a changed one
    resp, body = request(server, WHEEL, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert resp.status == 200 and body == data


def test_etag_and_last_modified_give_304(server):
    resp, _ = request(server, "/whl/cpu/torch/index.html")
    etag, lm = resp.getheader("ETag"), resp.getheader("Last-Modified")
    assert etag and lm
    resp, body = request(server, "/whl/cpu/torch/index.html", headers={"If-None-Match": etag})
    assert resp.status == 304 and body == b""
    resp, _ = request(server, "/whl/cpu/torch/index.html", headers={"If-Modified-Since": lm})
    assert resp.status == 304
    resp, _ = request(server, "/whl/cpu/torch/index.html", headers={"If-None-Match": '"other"'})
    assert resp.status == 200


def test_directories_and_escapes(server):
    resp, _ = request(server, "/whl/cpu/torch")
    assert resp.status == 301 and resp.getheader("Location") == "/whl/cpu/torch/"
    resp, body = request(server, "/")
    assert resp.status == 200 and b"landing" in body
    resp, _ = request(server, "/packages/")  # no index.html, no listing
    assert resp.status == 404
    for bad in ("/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/packages/..%2f..%2f..%2fetc/passwd",
                "/escape.txt", "/.torchdepot/hashes.json", "/whl/..%5c..%5cetc", "/missing.whl"):
        resp, body = request(server, bad)
        assert resp.status == 404, bad
        assert b"secret" not in body and b"root:" not in body


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 5_000))
def test_parse_range_property(a, b, size):
    r = parse_range(f"bytes={a}-{b}", size)
    if a >= size or b < a:
        assert r is None
    else:
        assert r is not None and r.start == a and r.end == min(b, size - 1) and 0 <= r.start <= r.end < size


@given(st.text(max_size=30))
def test_parse_range_never_raises(text):
    r = parse_range(text, 100)
    assert r is None or 0 <= r.start <= r.end < 100


def _pip_install_from(url: str, tmp: Path) -> str:
    py = make_venv(tmp / "venv")
    proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--index-url", f"{url}/whl/cpu", "torch==2.13.0+cpu"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run([py, "-c", "import torch, filelock; print(torch.__version__)"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cli_serve_and_pip_install(mirror, tmp_path):
    proc = subprocess.Popen([TD, "serve", "--root", mirror, "--port", "0", "--quiet"],
                            stdout=subprocess.PIPE, text=True, env=hermetic_env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving ") and "http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        assert _pip_install_from(url, tmp_path) == "2.13.0+cpu"
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nginx_serves_mirror_and_pip_installs(mirror, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    assert nginx, "nginx not installed: apt-get install -y nginx-light (.ci/run installs it)"
    port = _free_port()
    conf_dir = tmp_path / "nginx"
    (conf_dir / "logs").mkdir(parents=True)
    block = nginx_config(mirror, port=port, listen=f"127.0.0.1:{port}")
    (conf_dir / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {conf_dir}/logs/access.log;
    client_body_temp_path {conf_dir}/body;
    proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi;
    uwsgi_temp_path {conf_dir}/uwsgi;
    scgi_temp_path {conf_dir}/scgi;
{block}
}}
""")
    proc = subprocess.Popen([nginx, "-c", conf_dir / "nginx.conf", "-p", conf_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"nginx exited: {proc.stdout.read()}"
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", WHEEL, headers={"Range": "bytes=0-3"})
        r = conn.getresponse()
        assert r.status == 206 and r.read() == b"PK\x03\x04"
        assert "immutable" in r.getheader("Cache-Control")
        conn.request("GET", "/whl/cpu/torch/")
        r = conn.getresponse()
        assert r.status == 200 and b"torch-2.13.0" in r.read() and "max-age=60" in r.getheader("Cache-Control")
        conn.request("GET", "/.torchdepot/hashes.json")
        r = conn.getresponse()
        r.read()
        assert r.status == 404
        conn.close()
        assert _pip_install_from(url, tmp_path) == "2.13.0+cpu"
    finally:
        proc.terminate()
        proc.wait(10)
