"""METADATA read from a wheel (local or by Range over loopback) is bounded: a 10 MB cap,
inflated streamed, never whole; a whole-file range answered 200 is accepted."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit.wheels import build_wheel
from torchdepot.errors import TorchdepotError, UpstreamError
from torchdepot.net.hostpolicy import default_policy
from torchdepot.net.http import Client, HttpConfig
from torchdepot.sources.upstream import UpstreamReader
from torchdepot.sources.wheelmeta import remote_metadata
from torchdepot.store.pages import MAX_METADATA_BYTES, requires_python_of, wheel_metadata


def _bomb(path: Path, size: int) -> Path:
    """A valid-looking wheel whose METADATA inflates to ``size`` bytes (deflate: ~1000x)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: bomb\n" + b" " * size)
        zf.writestr("bomb-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")
    return path


def test_a_metadata_bomb_is_refused_without_inflating_it(tmp_path):
    wheel = _bomb(tmp_path / "bomb-1.0-py3-none-any.whl", 64 * 1024 * 1024)
    assert wheel.stat().st_size < 200_000
    with pytest.raises(TorchdepotError, match="larger than the 10000000-byte cap"):
        wheel_metadata(wheel, "bomb")


def test_a_lying_declared_size_is_caught_while_streaming(tmp_path):
    wheel = _bomb(tmp_path / "bomb-1.0-py3-none-any.whl", MAX_METADATA_BYTES + 10)
    data = bytearray(wheel.read_bytes())
    # rewrite the central directory's uncompressed size (offset 24 in the CD header) to claim 100 bytes
    cd = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x01\x02"))
    data[cd + 24:cd + 28] = (100).to_bytes(4, "little")
    wheel.write_bytes(bytes(data))
    with pytest.raises(TorchdepotError):
        wheel_metadata(wheel, "bomb")


class _WholeRangeIs200(http.server.BaseHTTPRequestHandler):
    """Answers a range covering the whole file with 200 and the body (valid HTTP, as
    Python's http.server-based hosts do); other ranges with 206."""
    body = b""

    def do_GET(self):
        rng = self.headers.get("Range", "")
        first, _, last = rng.removeprefix("bytes=").partition("-")
        size = len(self.body)
        start, end = int(first), min(int(last), size - 1)
        if start == 0 and end == size - 1:
            self.send_response(200)
            chunk = self.body
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            chunk = self.body[start:end + 1]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def served():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WholeRangeIs200)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _reader(url: str) -> UpstreamReader:
    return UpstreamReader(Client(HttpConfig(retries=0)), default_policy([url]))


def test_remote_metadata_when_the_whole_file_range_is_answered_200(tmp_path, served):
    _WholeRangeIs200.body = build_wheel(tmp_path, "small", "1.0", requires=("filelock",)).read_bytes()
    url = f"http://127.0.0.1:{served.server_address[1]}/small-1.0-py3-none-any.whl"
    meta = remote_metadata(_reader(url), url, "small")
    assert b"Name: small" in meta
    assert b"Requires-Dist: filelock" in meta


def test_remote_metadata_bomb_is_one_upstream_error(tmp_path, served):
    _WholeRangeIs200.body = _bomb(tmp_path / "bomb-1.0-py3-none-any.whl", 64 * 1024 * 1024).read_bytes()
    url = f"http://127.0.0.1:{served.server_address[1]}/bomb-1.0-py3-none-any.whl"
    with pytest.raises(UpstreamError, match="cap for METADATA") as exc:
        remote_metadata(_reader(url), url, "bomb")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("ranges", "payload", "kept"), [
    (True, 0, True),  # no larger than the tail read: that read was the whole wheel
    (True, 200_000, False),  # larger: only its tail crossed, nothing to keep
    (False, 200_000, True),  # Range ignored: the probe's answer was the whole wheel
])
def test_a_wheel_read_whole_is_handed_to_keep_once(tmp_path, ranges, payload, kept):
    """``keep`` gets the whole wheel's bytes wherever they crossed to read METADATA (so the
    caller's fetch does not send them again), after its METADATA is read; never otherwise."""
    import os

    from tests.httpserver import RangeHandler, Server

    wheel = build_wheel(tmp_path / "up", "small", "1.0", requires=("filelock",), payload=os.urandom(payload))
    handler = RangeHandler if ranges else http.server.SimpleHTTPRequestHandler
    got: list[bytes] = []
    with Server(tmp_path / "up", handler=handler) as up:
        url = f"{up.url}/{wheel.name}"
        meta = remote_metadata(_reader(url), url, "small", keep=lambda p, sha: got.append((p.read_bytes(), sha)))
    assert b"Requires-Dist: filelock" in meta
    data = wheel.read_bytes()
    assert got == ([(data, hashlib.sha256(data).hexdigest())] if kept else [])


def test_bytes_that_are_no_wheel_are_refused_before_keep(tmp_path):
    from tests.httpserver import Server
    from torchdepot.sources.wheelmeta import BadWheelError

    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "bad-1.0-py3-none-any.whl").write_bytes(b"<html>not a zip</html>")
    got: list[Path] = []
    with Server(tmp_path / "up") as up:
        url = f"{up.url}/bad-1.0-py3-none-any.whl"
        with pytest.raises(BadWheelError, match="not a readable wheel"):
            remote_metadata(_reader(url), url, "bad", keep=lambda p, _sha: got.append(p))
    assert got == []


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_any_metadata_bytes_are_read_and_parsed_without_a_crash(tmp_path_factory, metadata):
    """Wheel METADATA is external input: whatever bytes it holds, reading it returns them and
    its Requires-Python is a string or None; nothing else is raised."""
    path = tmp_path_factory.mktemp("w") / "fuzz-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fuzz-1.0.dist-info/METADATA", metadata)
    assert wheel_metadata(path, "fuzz") == metadata
    rp = requires_python_of(metadata)
    assert rp is None or isinstance(rp, str)


@settings(deadline=None)
@given(st.binary(max_size=4000))
def test_any_wheel_bytes_give_metadata_or_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("w") / "fuzz-1.0-py3-none-any.whl"
    path.write_bytes(data)
    error = ""
    try:
        wheel_metadata(path, "fuzz")
    except TorchdepotError as exc:
        error = str(exc)
    assert "\n" not in error
