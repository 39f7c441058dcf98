"""errors.one_line and errors.load_json, and an untrusted JSON read through the CLI: a deeply
nested manifest.json is one line naming the input, never "unexpected RecursionError"."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from tests.httpserver import Server
from tests.test_doctor import doctor
from torchdepot.errors import (
    ParseError,
    Reason,
    TorchdepotError,
    UpstreamError,
    load_json,
    one_line,
)
from torchdepot.net.http import Client, HttpConfig, describe
from torchdepot.store import manifest as mf

NESTED = "[" * 200_000 + "]" * 200_000  # far deeper than the stdlib decoder's recursion limit


def test_one_line_collapses_lines_and_cuts():
    assert one_line(ValueError("first\n  second\tthird")) == "first second third"
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("x" * 50), limit=10) == "x" * 10 + "..."


@given(st.text())
def test_one_line_is_one_line(text):
    assert "\n" not in one_line(ValueError(text))


def test_load_json_bounds_depth_size_and_syntax():
    assert load_json(b'{"a": [1]}', "w.json") == {"a": [1]}
    with pytest.raises(TorchdepotError, match=r"^w\.json: not valid JSON \(nested too deeply\)$"):
        load_json(NESTED, "w.json")
    with pytest.raises(TorchdepotError, match=r"^w\.json: not valid JSON \(more than 4 bytes\)$"):
        load_json("[1, 2]", "w.json", limit=4)
    with pytest.raises(ParseError, match=r"^w\.json: not valid repodata JSON \(Expecting"):
        load_json("{x", "w.json", what="repodata JSON", error=ParseError)
    with pytest.raises(TorchdepotError, match="w.json"):
        load_json(b"\xff", "w.json")


def test_manifest_nested_too_deeply_is_one_error(tmp_path):
    with pytest.raises(TorchdepotError, match=r"^m/manifest\.json: not valid manifest JSON \(nested too deeply\)$"):
        mf.Manifest.from_json(NESTED, "m/manifest.json")


def test_doctor_mirror_with_a_deeply_nested_manifest_is_one_line(tmp_path: Path):
    site = tmp_path / "mirror"
    site.mkdir()
    (site / "manifest.json").write_text(NESTED)
    with Server(site) as srv:
        proc = doctor(tmp_path, "--mirror", srv.url, check_rc=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"torchdepot: error: {srv.url}/whl/"), proc.stderr
    assert "RecursionError" not in proc.stderr


def test_upstream_error_carries_its_detail_and_reason():
    exc = UpstreamError.at("http://h/x/", "not found", Reason.NOT_FOUND)
    assert str(exc) == "http://h/x/: not found"
    assert exc.detail == "not found"
    assert exc.reason is Reason.NOT_FOUND


def test_network_failures_are_described_by_type_not_text():
    with pytest.raises(UpstreamError) as info:
        Client(HttpConfig(retries=0, connect_timeout=2.0)).request("GET", "http://127.0.0.1:9/")
    assert info.value.detail == "connection refused (after 1 attempts)"
    assert info.value.reason is Reason.UNREACHABLE
    # the text says "refused", the type says DNS: the type wins
    wrapped = requests.ConnectionError("Connection refused")
    wrapped.__cause__ = socket.gaierror(-2, "x")
    assert describe(wrapped) == "DNS lookup failed"
    assert describe(ValueError("Connection refused\nsecond line")) == "Connection refused second line"
