"""One view of upstream (issue 12): hostile pages, local files, wrong metadata, a dead file
host, several wheels per version. Loopback servers only; every run reports the links
refused, the requests made and the seconds taken (printed: pytest -s shows them)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.mirror_upstream import build_upstreams, dead_url, make_wheel, sha256, wheel_metadata
from tests.venvs import hermetic_env
from torchdepot.errors import TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

TAG = "cp311-cp311-manylinux_2_28_x86_64"
TORCH = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheels")
    torch = [make_wheel(d, "torch", "2.13.0+cpu", TAG, ("filelock", "nvidia-fake-cu12"), ">=3.10")]
    deps = [make_wheel(d, "filelock", "3.20.0"), make_wheel(d, "nvidia-fake-cu12", "12.8.1", TAG)]
    return torch, deps


@pytest.fixture
def tree(tmp_path, wheels):
    """A (PyTorch-like, /whl) and B (dependency index, /simple and /files) on two servers."""
    torch, deps = wheels
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    with Server(b) as sb, Server(a) as sa:
        build_upstreams(a, b, sb.url, torch, deps)
        yield a, b, sa.url + "/whl", sb.url + "/simple", tmp_path


def spec_for(upstreams, out, **extra):
    data = {"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"], "extra_packages": [],
            "upstreams": upstreams, "out": str(out), "jobs": 2, **extra}
    return parse_spec(data, "test spec")


def run(spec, index_url, *, find_links=(), **kw):
    msgs: list[str] = []
    t = time.monotonic()
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=index_url, find_links=tuple(find_links)), **kw)
    print(f"\nFIGURES links_refused={res.refused} requests={res.requests} seconds={time.monotonic() - t:.2f}")
    return res, msgs


def add_links(page: Path, anchors: list[str]) -> None:
    text = page.read_text()
    page.write_text(text.replace("</body>", "".join(a + "<br/>\n" for a in anchors) + "</body>"))


def names(res) -> dict[str, str]:
    return {f.name: f.version for f in res.plans[0].files}


def test_hostile_torch_page_completes_with_the_real_closure(tree, tmp_path):
    a, _b, a_url, b_url, tmp = tree
    other = tmp_path / "other"
    (other / "whl").mkdir(parents=True)
    evil = "torch-9.9.9+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    (other / "whl" / evil).write_bytes(b"evil")
    (tmp_path / "local.whl").write_bytes(b"evil")
    with Server(other) as so:
        assert so.url.rsplit(":", 1)[0] == a_url.rsplit(":", 1)[0]  # same host, another port
        add_links(a / "whl" / "cpu" / "torch" / "index.html", [
            f'<a href="file://{tmp_path}/local.whl#egg=torch">egg</a>',  # a local file, pip's egg fragment
            '<a href="/whl/cpu/%2e%2e%2f%2e%2e%2ftorch-9.9.9-py3-none-any.whl">encoded traversal</a>',
            f'<a href="{so.url}/whl/{evil.replace("+", "%2B")}">another port on the same host</a>',
        ])
        res, msgs = run(spec_for([a_url], tmp / "out"), b_url)
    assert names(res) == {"torch": "2.13.0+cpu", "filelock": "3.20.0", "nvidia-fake-cu12": "12.8.1"}
    assert res.refused == 3, msgs
    (line,) = [m for m in msgs if m.startswith("upstream: refused ")]
    assert "refused file: link" in line
    assert "not allowed by the host policy" in line
    assert "path separator in filename" in line
    out = tmp / "out"
    assert not any(p.name in (evil, "local.whl") for p in out.rglob("*"))
    # one request per page and per metadata file
    assert res.requests["pages"] <= 4, res.requests
    assert res.requests["metadata"] <= 3, res.requests


def test_file_link_on_a_dependency_page_publishes_nothing_local(tree, tmp_path):
    _a, b, a_url, b_url, tmp = tree
    local = make_wheel(tmp_path / "local", "filelock", "9.9.9")
    add_links(b / "simple" / "filelock" / "index.html", [f'<a href="{local.as_uri()}#sha256={sha256(local)}">x</a>'])
    add_links(_a / "whl" / "cpu" / "filelock" / "index.html", [f'<a href="{local.as_uri()}">x</a>'])
    res, msgs = run(spec_for([a_url], tmp / "out"), b_url)
    assert names(res)["filelock"] == "3.20.0"
    assert res.refused == 1, msgs  # A's page; B's filelock page is never read (A carries filelock)
    assert not list((tmp / "out").rglob("filelock-9.9.9*"))
    # without filelock on A, B's page is read: its file: link is refused the same way
    (_a / "whl" / "cpu" / "filelock" / "index.html").unlink()
    res, msgs = run(spec_for([a_url], tmp / "out2"), b_url)
    assert names(res)["filelock"] == "3.20.0", msgs
    assert res.refused == 1, msgs
    assert not list((tmp / "out2").rglob("filelock-9.9.9*"))


def _wrong_core_metadata(a: Path) -> str:
    page = a / "whl" / "cpu" / "torch" / "index.html"
    text = page.read_text()
    real = re.search(r'data-core-metadata="sha256=([0-9a-f]{64})"', text).group(1)
    page.write_text(text.replace(real, "0" * 64))
    return real


def test_wrong_core_metadata_fail_is_one_line(tree):
    a, _b, a_url, b_url, tmp = tree
    real = _wrong_core_metadata(a)
    with pytest.raises(TorchdepotError) as err:
        run(spec_for([a_url], tmp / "out"), b_url)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert TORCH in msg, msg
    assert "0" * 64 in msg, msg
    assert real in msg, msg
    assert "accepted" not in msg
    assert "None" not in msg
    assert not (tmp / "out" / "whl").exists()


def test_wrong_core_metadata_warn_publishes_correct_metadata(tree, wheels):
    a, _b, a_url, b_url, tmp = tree
    _wrong_core_metadata(a)
    out = tmp / "out"
    res, msgs = run(spec_for([a_url], out, on_hash_mismatch="warn"), b_url)
    assert any(m.startswith(f"warning: {TORCH}.metadata: upstream declares sha256 {'0' * 64}") for m in msgs), msgs
    key = f"packages/torch/{TORCH}.metadata"
    entry = mf.load(out).by_path()[key]
    assert entry.hash_mismatch
    assert entry.upstream_sha256 == "0" * 64
    assert entry.sha256 == hashlib.sha256(wheel_metadata(wheels[0][0])).hexdigest() == sha256(out / key)
    # pip and uv accept the mirror's metadata (pip checks it against the wheel it downloads)
    env = hermetic_env()
    index = (out / "whl" / "cpu").as_uri()
    pip = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp / "dl"),
                          "--index-url", index, "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                          "--only-binary", ":all:", "torch==2.13.0+cpu"], env=env, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    from torchdepot.resolve.uv import uv_bin

    (tmp / "req.in").write_text("torch==2.13.0+cpu\n")
    uv = subprocess.run([uv_bin(), "pip", "compile", "--no-config", str(tmp / "req.in"), "--index-url", index,
                         "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                         "--cache-dir", str(tmp / "uvc")],
                        env={**env, "UV_PYTHON_DOWNLOADS": "never"}, capture_output=True, text=True)
    assert uv.returncode == 0, uv.stderr
    assert "nvidia-fake-cu12==12.8.1" in uv.stdout, uv.stderr


def test_missing_metadata_is_read_from_the_wheel(tree):
    a, _b, a_url, b_url, tmp = tree
    for p in (a / "whl" / "cpu").glob("*.metadata"):
        p.unlink()
    page = a / "whl" / "cpu" / "torch" / "index.html"
    page.write_text(re.sub(r' data-(core|dist-info)-metadata="[^"]*"', "", page.read_text()))
    res, _ = run(spec_for([a_url], tmp / "out"), b_url)
    assert names(res)["nvidia-fake-cu12"] == "12.8.1"
    assert res.requests["metadata"] == 0
    assert res.requests["ranges"] + res.requests["wheels"] >= 1


def test_nvidia_host_down_same_files_from_the_dependency_index(tree, wheels):
    a, b, a_url, b_url, tmp = tree
    nv = wheels[1][1]
    down = dead_url().rsplit("/", 1)[0]
    page = a / "whl" / "cpu" / "nvidia-fake-cu12" / "index.html"
    meta = hashlib.sha256(wheel_metadata(nv)).hexdigest()
    page.write_text(f'<html><body><a href="{down}/nv/{nv.name}#sha256={sha256(nv)}" '
                    f'data-core-metadata="sha256={meta}">{nv.name}</a></body></html>')
    spec = dataclasses.replace(spec_for([a_url], tmp / "out"), allow_hosts=(down.split("//", 1)[1],))
    res, msgs = run(spec, b_url)
    files = mf.load(tmp / "out").by_path()
    entry = files[f"packages/nvidia-fake-cu12/{nv.name}"]
    assert entry.url.startswith(b_url.rsplit("/", 1)[0] + "/files/"), entry.url
    assert entry.sha256 == sha256(nv)


def test_several_wheels_per_version_are_all_mirrored(tree, tmp_path):
    _a, b, a_url, b_url, tmp = tree
    d = tmp_path / "cn"
    multi = [make_wheel(d, "charset-normalizer", "3.4.0", t) for t in
             ("py3-none-any", "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", TAG,
              "cp311-cp311-musllinux_1_2_x86_64", "cp311-cp311-win_amd64")]
    (b / "simple" / "charset-normalizer").mkdir(parents=True)
    anchors = []
    for w in multi:
        (b / "files" / w.name).write_bytes(w.read_bytes())
        anchors.append(f'<a href="../../files/{w.name}#sha256={sha256(w)}">{w.name}</a>')
    (b / "simple" / "charset-normalizer" / "index.html").write_text("<html><body>" + "".join(anchors) + "</body></html>")
    res, msgs = run(spec_for([a_url], tmp / "out", extra_packages=["charset-normalizer"]), b_url)
    got = {f.filename for f in res.plans[0].files if f.name == "charset-normalizer"}
    assert multi[0].name in got
    assert multi[2].name in got
    assert multi[4].name not in got  # windows never fits a linux target
    assert all((tmp / "out" / "packages" / "charset-normalizer" / n).is_file() for n in got)


def test_no_wheel_for_the_target_is_one_line(tree, tmp_path):
    _a, b, a_url, b_url, tmp = tree
    w = make_wheel(tmp_path / "w", "winonly", "1.0", "cp311-cp311-win_amd64")
    (b / "simple" / "winonly").mkdir(parents=True)
    (b / "files" / w.name).write_bytes(w.read_bytes())
    (b / "simple" / "winonly" / "index.html").write_text(f'<a href="../../files/{w.name}#sha256={sha256(w)}">w</a>')
    with pytest.raises(TorchdepotError) as err:
        run(spec_for([a_url], tmp / "out", extra_packages=["winonly"]), b_url)
    msg = str(err.value)
    assert msg.startswith("cpu-py311-linux-x86_64: winonly 1.0: no wheel for this target (Python 3.11, linux-x86_64)")
    assert "\n" not in msg, msg


def test_upload_time_recorded_and_exclude_newer(tree):
    """data-upload-time reaches manifest.json as given (never invented); exclude_newer leaves
    out files uploaded later, so the older torch is mirrored."""
    a, _b, a_url, b_url, tmp = tree
    page = a / "whl" / "cpu" / "torch" / "index.html"
    text = page.read_text().replace("<a href", '<a data-upload-time="2026-03-01T10:00:00.123456Z" href', 1)
    page.write_text(text)
    res, _ = run(spec_for([a_url], tmp / "out"), b_url)
    files = mf.load(tmp / "out").by_path()
    assert files[f"packages/torch/{TORCH}"].upload_time == "2026-03-01T10:00:00.123456Z"
    assert files["packages/filelock/filelock-3.20.0-py3-none-any.whl"].upload_time is None
    raw = (tmp / "out" / "manifest.json").read_text()
    assert raw.count('"upload_time"') == 1
    # a cutoff before that upload leaves torch without a candidate: one line, nothing invented
    with pytest.raises(TorchdepotError, match="no torch wheel"):
        run(spec_for([a_url], tmp / "out2", exclude_newer="2026-02-01T00:00:00Z"), b_url)
    res, _ = run(spec_for([a_url], tmp / "out3", exclude_newer="2026-04-01"), b_url)
    assert names(res)["torch"] == "2.13.0+cpu"
