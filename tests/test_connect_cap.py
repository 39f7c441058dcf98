"""TORCHDEPOT_CONNECT_TIMEOUT caps every HTTP client's connect timeout (the blackhole tests
inject it); a value that is not a number of seconds in (0, 600] is refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from torchdepot.errors import ParseError
from torchdepot.net.http import (
    CONNECT_TIMEOUT_ENV,
    QUERY_HTTP,
    Client,
    HttpConfig,
    with_connect_cap,
)


def test_the_cap_lowers_never_raises_the_connect_timeout():
    assert with_connect_cap(QUERY_HTTP, {}) == QUERY_HTTP
    assert with_connect_cap(QUERY_HTTP, {CONNECT_TIMEOUT_ENV: " "}) == QUERY_HTTP
    capped = with_connect_cap(QUERY_HTTP, {CONNECT_TIMEOUT_ENV: "0.5"})
    assert capped.connect_timeout == 0.5
    assert (capped.read_timeout, capped.retries) == (QUERY_HTTP.read_timeout, QUERY_HTTP.retries)
    assert with_connect_cap(HttpConfig(connect_timeout=2.0), {CONNECT_TIMEOUT_ENV: "30"}).connect_timeout == 2.0


def test_every_client_takes_the_cap_from_the_environment(monkeypatch):
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "0.25")
    with Client(HttpConfig()) as client:
        assert client.timeout == (0.25, HttpConfig().read_timeout)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "601", "abc", "1" * 40, "1e400"])
def test_a_bad_value_is_refused(value):
    with pytest.raises(ParseError, match=CONNECT_TIMEOUT_ENV):
        with_connect_cap(QUERY_HTTP, {CONNECT_TIMEOUT_ENV: value})


def test_the_cli_refuses_a_bad_value_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "ls", "--index", "http://127.0.0.1:9/whl",
                           "--package", "torch"], capture_output=True, text=True, timeout=120,
                          env={CONNECT_TIMEOUT_ENV: "soon", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"torchdepot: error: {CONNECT_TIMEOUT_ENV}='soon': not a number of seconds in (0, 600]\n"
