"""The resolver's per-target costs that are not resolution (issue 21, cold sync): uv is named
its interpreter, so it never probes PATH for one of each target's Python version; and the
view's loopback server takes the connections uv opens at once without dropping a SYN; and a
user's proxy never gets the resolver's loopback requests. Real uv, real servers and sockets."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

from tests.httpserver import Server
from tests.kit.wheels import build_wheel
from torchdepot.resolve.uv import IndexPlan, compile_command, resolve
from torchdepot.sync import viewserver

OTHER = "3.9"  # a target Python no interpreter here has (the project runs on 3.10+): uv would search


def _shims(folder: Path, marker: Path) -> Path:
    """Interpreters on PATH that only record that someone ran them (as a pyenv shim would,
    at a shell's start-up cost each)."""
    folder.mkdir()
    for name in (f"python{OTHER}", "python3", "python"):
        shim = folder / name
        shim.write_text(f"#!/bin/sh\necho \"$0\" >> {marker}\nexit 127\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return folder


def test_uv_is_named_its_interpreter_and_never_probes_path(tmp_path):
    links = tmp_path / "links"
    build_wheel(links, "demo-pkg", "1.0", requires=("dep-pkg>=1",))
    build_wheel(links, "dep-pkg", "1.2")
    marker = tmp_path / "probed.txt"
    shims = _shims(tmp_path / "bin", marker)
    plan = IndexPlan(no_index=True, find_links=(str(links),))
    files = resolve("t", ["demo-pkg"], OTHER, "linux-x86_64", plan,
                    env={"PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": ""})
    assert [(f.name, f.version) for f in files] == [("demo-pkg", "1.0"), ("dep-pkg", "1.2")]
    assert not marker.exists(), f"uv ran interpreters from PATH: {marker.read_text()}"
    cmd = compile_command(tmp_path / "r.in", tmp_path / "pylock.toml", OTHER, "linux-x86_64", plan)
    assert cmd[cmd.index("--python") + 1] == sys.executable
    assert cmd[cmd.index("--python-version") + 1] == OTHER  # the target, not the interpreter


def test_view_server_takes_dozens_of_connections_at_once(tmp_path):
    """uv opens a connection per page it wants, dozens at once. Nobody accepts here, so every
    connection that completes sits in the listen backlog: the default of 5 would leave the
    rest of the SYNs dropped (a 1 s retransmit each)."""
    server = viewserver._Server(("127.0.0.1", 0), viewserver._handler(None))  # type: ignore[arg-type]
    clients: list[socket.socket] = []
    try:
        for _ in range(64):
            c = socket.socket()
            c.settimeout(0.5)  # under the first SYN retransmit
            c.connect(server.server_address)
            clients.append(c)
    finally:
        for c in clients:
            c.close()
        server.server_close()
    assert len(clients) == 64


def test_a_users_proxy_never_gets_the_resolvers_loopback_requests(tmp_path):
    """uv talks only to the run's loopback view; a user's HTTP_PROXY / ALL_PROXY (a corporate
    proxy cannot reach this machine's loopback) must not get those requests."""
    wheel = build_wheel(tmp_path / "simple" / "demo-pkg", "demo-pkg", "1.0")
    (tmp_path / "simple" / "demo-pkg" / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: a proxy that refuses every connection
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    try:
        with Server(tmp_path) as up:
            files = resolve("t", ["demo-pkg"], "3.11", "linux-x86_64", IndexPlan(index_url=f"{up.url}/simple"),
                            env={"HTTP_PROXY": dead, "http_proxy": dead, "ALL_PROXY": dead, "all_proxy": dead,
                                 "UV_CACHE_DIR": str(tmp_path / "uv-cache")})
    finally:
        closed.close()
    assert [(f.name, f.version) for f in files] == [("demo-pkg", "1.0")]


def test_a_sync_leaves_nothing_of_the_view_in_the_users_uv_cache(tmp_path, monkeypatch):
    """The view listens on a new port each run, so nothing uv could cache from it is ever read
    again: it answers ``no-store`` and the user's uv cache (kept: UV_CACHE_DIR) gets no page,
    no metadata and no wheel of it (main left every response there, run after run)."""
    from tests.mirror_upstream import build_upstreams, make_wheel
    from torchdepot.net.http import HttpConfig, make_session
    from torchdepot.net.pipconfig import PipSources
    from torchdepot.spec.mirror import parse_spec
    from torchdepot.sync.pip import sync

    tag = "cp311-cp311-manylinux_2_28_x86_64"
    d = tmp_path / "wheels"
    torch = [make_wheel(d, "torch", "2.13.0+cpu", tag, ("filelock",), ">=3.10")]
    deps = [make_wheel(d, "filelock", "3.20.0")]
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    cache = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    with Server(b) as sb, Server(a) as sa:
        build_upstreams(a, b, sb.url, torch, deps)
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": [], "upstreams": [sa.url + "/whl"], "out": str(tmp_path / "out")},
                          "test spec")
        res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lambda m: None,
                   pip_sources=PipSources(index_url=sb.url + "/simple"))
    assert {f.name for f in res.plans[0].files} == {"torch", "filelock"}
    assert cache.is_dir()  # uv did run with this cache
    kept = [p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()
            and p.relative_to(cache).parts[0].startswith(("simple-", "wheels-", "archive-"))]
    assert kept == []
