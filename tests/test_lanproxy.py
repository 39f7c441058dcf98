"""tests/kit/lanproxy.py: a LAN host name routed to a loopback server, as a lab's LAN would.

The proxy must forward only routed names, only to loopback, and must be transparent to
pip: pip then sees ``http://torchlab:8000`` and applies its plain-HTTP trust rule to it."""

from __future__ import annotations

import socket
import sys

import pytest
import requests

from tests.httpserver import Server
from tests.kit.lanproxy import LanProxy
from tests.kit.wheels import build_wheel
from tests.venvs import hermetic_env, run


@pytest.fixture
def served(tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"0123456789" * 1000)
    with Server(tmp_path) as server, LanProxy({"torchlab:8000": server.httpd.server_address[:2]}) as proxy:
        yield server, proxy


def test_get_head_and_range_through_the_lan_name(served):
    _, proxy = served
    proxies = {"http": proxy.url}
    got = requests.get("http://torchlab:8000/hello.txt", proxies=proxies, timeout=10)
    assert got.status_code == 200
    assert got.content == b"0123456789" * 1000
    head = requests.head("http://torchlab:8000/hello.txt", proxies=proxies, timeout=10)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "10000"
    assert head.content == b""
    part = requests.get("http://torchlab:8000/hello.txt", headers={"Range": "bytes=5-9"}, proxies=proxies, timeout=10)
    assert part.status_code == 206
    assert part.content == b"56789"
    missing = requests.get("http://torchlab:8000/nope", proxies=proxies, timeout=10)
    assert missing.status_code == 404
    assert proxy.seen[0] == "GET http://torchlab:8000/hello.txt"


def test_unknown_host_or_port_is_refused_not_forwarded(served):
    _, proxy = served
    proxies = {"http": proxy.url}
    for url in ("http://elsewhere.invalid/hello.txt", "http://torchlab/hello.txt", "http://torchlab:8001/hello.txt"):
        got = requests.get(url, proxies=proxies, timeout=10)
        assert got.status_code == 403, url
        assert "not routed" in got.text


def test_connect_is_refused(served):
    _, proxy = served
    host, port = proxy.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"CONNECT torchlab:8000 HTTP/1.1\r\nHost: torchlab:8000\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 405")


def test_routes_only_to_loopback():
    with pytest.raises(ValueError, match="loopback"):
        LanProxy({"torchlab:8000": ("192.0.2.1", 8000)})
    LanProxy({"torchlab": ("127.0.0.1", 1), "[::1]:8000": ("::1", 2)}).httpd.server_close()


def test_env_routes_http_and_clears_bypass():
    proxy = LanProxy({"torchlab:8000": ("127.0.0.1", 9)})
    try:
        env = proxy.env({"NO_PROXY": "*", "no_proxy": "torchlab", "HTTPS_PROXY": "http://corp:3128", "PATH": "/bin"})
        assert env == {"PATH": "/bin", "http_proxy": proxy.url, "HTTP_PROXY": proxy.url}
    finally:
        proxy.httpd.server_close()


@pytest.mark.slow
def test_pip_applies_its_lan_trust_rule_through_the_proxy(tmp_path):
    """The point of the proxy: pip refuses a plain-HTTP LAN host unless --trusted-host names it."""
    simple = tmp_path / "mirror" / "simple" / "tinypkg"
    wheel = build_wheel(simple, "tinypkg", "1.0")
    (simple / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    with Server(tmp_path / "mirror") as server, LanProxy({"torchlab:8000": server.httpd.server_address[:2]}) as proxy:
        env = proxy.env(hermetic_env())
        base = [sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", "http://torchlab:8000/simple/",
                "tinypkg"]
        refused = run([*base, "-d", tmp_path / "a"], env=env)
        assert refused.returncode != 0
        assert "not a trusted or secure host" in refused.stdout + refused.stderr
        ok = run([*base, "--trusted-host", "torchlab:8000", "-d", tmp_path / "b"], env=env)
        assert ok.returncode == 0, ok.stderr
        assert (tmp_path / "b" / wheel.name).read_bytes() == wheel.read_bytes()
        assert f"GET http://torchlab:8000/simple/tinypkg/{wheel.name}" in proxy.seen
