"""sync/download.py's EarlyReads: a downloaded wheel's METADATA read once as it lands, and for a
wheel the run stages its ``.metadata`` written then, exactly as publishing would write it."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path

from tests.kit.wheels import build_wheel, sha256, wheel_metadata
from torchdepot.fetch import FetchResult
from torchdepot.store.pages import ensure_metadata, requires_python_of
from torchdepot.sync.download import EarlyReads


def _landed(out: Path, key: str, status: str = "downloaded") -> Future[FetchResult]:
    fut: Future[FetchResult] = Future()
    fut.set_result(FetchResult(key=key, status=status, sha256=sha256(out / key), size=(out / key).stat().st_size))
    return fut


def test_a_staged_wheel_gets_the_metadata_publishing_would_write_once(tmp_path):
    out = tmp_path / "mirror"
    wheel = build_wheel(out / "packages" / "demo", "demo", "1.0", requires_python=">=3.9")
    key = wheel.relative_to(out).as_posix()
    reads = EarlyReads(out)
    fut = _landed(out, key)
    reads.watch(fut, "demo", "http://127.0.0.1:9/demo.whl", stage=True)  # done already: read now
    meta = wheel.with_name(wheel.name + ".metadata")
    data = wheel_metadata(wheel)
    assert meta.read_bytes() == data
    digest = sha256(wheel)
    assert reads.get(key, digest) == data
    written = reads.written(key, digest)
    assert written == (hashlib.sha256(data).hexdigest(), requires_python_of(data), len(data))
    assert written == ensure_metadata(out, key, "demo")  # what publishing computes from the zip itself
    assert reads.written(key, "0" * 64) is None  # other bytes: nothing reused
    meta.unlink()
    reads.watch(fut, "demo", "http://127.0.0.1:9/demo.whl", stage=True)  # the same download joined again
    assert not meta.exists()  # read (and written) once


def test_a_wheel_not_staged_is_read_but_its_metadata_left_to_publishing(tmp_path):
    out = tmp_path / "mirror"
    wheel = build_wheel(out / "packages" / "demo", "demo", "1.0")
    key = wheel.relative_to(out).as_posix()
    reads = EarlyReads(out)
    reads.watch(_landed(out, key), "demo", "http://127.0.0.1:9/demo.whl")
    assert reads.get(key, sha256(wheel)) == wheel_metadata(wheel)
    assert reads.written(key, sha256(wheel)) is None
    assert not wheel.with_name(wheel.name + ".metadata").exists()


def test_bytes_that_are_no_wheel_are_left_to_reject_bad_wheels(tmp_path):
    out = tmp_path / "mirror"
    bad = out / "packages" / "demo" / "demo-1.0-py3-none-any.whl"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"<html>not a zip</html>")
    key = bad.relative_to(out).as_posix()
    reads = EarlyReads(out)
    reads.watch(_landed(out, key), "demo", "http://127.0.0.1:9/demo.whl", stage=True)
    assert reads.get(key, sha256(bad)) is None
    assert reads.written(key, sha256(bad)) is None
    assert not bad.with_name(bad.name + ".metadata").exists()
