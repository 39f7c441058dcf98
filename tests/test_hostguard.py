"""The host guard (a loopback proxy uv resolves through): allowed hosts pass, others get 403.

Hosts are told apart by name, as the policy does: the same server is reachable as
``127.0.0.1`` (allowed here) and ``localhost`` (not allowed)."""

import socket

import requests

from tests.httpserver import Server
from torchdepot.net.hostguard import HostGuard


def _server_with_file(tmp_path):
    (tmp_path / "hello.txt").write_text("hello")
    return Server(tmp_path)


def test_forwards_plain_http_only_to_allowed_hosts(tmp_path):
    with _server_with_file(tmp_path) as srv, HostGuard({"127.0.0.1"}) as guard:
        port = srv.httpd.server_address[1]
        proxies = {"http": guard.url}
        ok = requests.get(f"http://127.0.0.1:{port}/hello.txt", proxies=proxies, timeout=10)
        assert ok.status_code == 200 and ok.text == "hello"
        refused = requests.get(f"http://localhost:{port}/hello.txt", proxies=proxies, timeout=10)
        assert refused.status_code == 403
        assert guard.refused == {"localhost": 1}


def test_connect_tunnels_only_to_allowed_hosts(tmp_path):
    with _server_with_file(tmp_path) as srv, HostGuard({"127.0.0.1"}) as guard:
        port = srv.httpd.server_address[1]
        ghost, gport = guard.url.rsplit(":", 1)
        with socket.create_connection((ghost.split("//")[1], int(gport)), timeout=10) as s:
            s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
            # the tunnel is a raw byte pipe: speak HTTP to the origin through it
            s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := s.recv(4096):
                body += chunk
            assert body.startswith(b"HTTP/1.0 200") or body.startswith(b"HTTP/1.1 200")
            assert body.endswith(b"hello")
        with socket.create_connection((ghost.split("//")[1], int(gport)), timeout=10) as s:
            s.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 403")
        assert guard.refused == {"localhost": 1}


def test_env_points_every_proxy_variable_at_the_guard():
    with HostGuard(set()) as guard:
        env = guard.env()
        assert {env[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")} == {guard.url}
        assert env["NO_PROXY"] == "" and env["no_proxy"] == ""
