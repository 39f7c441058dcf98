"""Hostile upstream input: traversal, bad names, conflicting duplicates, huge or broken
pages, odd schemes and foreign hosts. Each is refused with a counted warning (or a
one-line project error), and nothing ever lands outside the output root."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import mirror_env, outside_root, populate, run_mirror, write_spec
from torchdepot.errors import UnsafePathError, UpstreamError
from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.net.hostpolicy import (
    PYTORCH_LINKED_HOSTS,
    default_policy,
    filename_refusal,
    screen_links,
)
from torchdepot.net.http import Client, HttpConfig
from torchdepot.sources.pep503 import parse_html
from torchdepot.sources.pep691 import parse_json
from torchdepot.sources.repodata import RepodataError, parse_repodata
from torchdepot.store.fsutil import safe_filename, safe_join

BASE = "http://127.0.0.1:1/whl/cpu/torch/"
GOOD = "torch-2.5.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
SHA_A, SHA_B = "a" * 64, "b" * 64

HOSTILE_HREFS = [
    "../../x.whl",  # resolves on the same host: a legitimate URL, name "x.whl" (invalid wheel name)
    "/etc/passwd",
    "..%2f..%2fevil-1.0-py3-none-any.whl",
    "%2e%2e%2f%2e%2e%2fevil-1.0-py3-none-any.whl",
    "..\\..\\evil-1.0-py3-none-any.whl",
    "C:\\Windows\\evil-1.0-py3-none-any.whl",
    "evil%00-1.0-py3-none-any.whl",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:text/plain,evil-1.0-py3-none-any.whl",
    "ftp://127.0.0.1/evil-1.0-py3-none-any.whl",
    "not a wheel.whl",
    "torch-2.5.0.whl",
    "http://user:pw@127.0.0.1:1/torch-2.5.0-py3-none-any.whl",
    "http://127.0.0.1:99999/torch-2.5.0-py3-none-any.whl",
    "http://[::1/torch.whl",
]


def _page(hrefs: list[str]) -> bytes:
    return ("<html><body>\n" + "".join(f'<a href="{h}">{h}</a>\n' for h in hrefs) + "</body></html>").encode()


def _policy():
    return default_policy(["http://127.0.0.1:1/whl"])


def test_hostile_hrefs_never_yield_an_unsafe_stored_name(tmp_path):
    page = parse_html(_page(HOSTILE_HREFS + [GOOD + "#sha256=" + SHA_A]), BASE)
    screened = screen_links(page.links, _policy())
    names = [link.filename for link in screened.kept]
    assert names == [GOOD]
    refused = sum(page.warnings.values()) + sum(screened.warnings.values())
    assert refused >= len(HOSTILE_HREFS) - 2  # every hostile href but /etc/passwd refused, with a count
    root = tmp_path / "out"
    for link in page.links:  # whatever the parser passed on, the storage layer still confines it
        try:
            safe_join(root, "packages/torch", safe_filename(link.filename))
        except UnsafePathError:
            continue
    assert not root.exists()


@pytest.mark.parametrize("href", HOSTILE_HREFS)
def test_each_hostile_href_is_refused_and_counted(href):
    page = parse_html(_page([href]), BASE)
    screened = screen_links(page.links, _policy())
    assert screened.kept == ()
    # a file on the allowed host that is simply no package (an sdist, /etc/passwd) is left out
    # uncounted: a refusal is what the screen stops (issue 22 item 20)
    expected = 0 if href == "/etc/passwd" else 1
    assert sum(page.warnings.values()) + sum(screened.warnings.values()) == expected


def test_pep691_json_hostile_entries():
    files = [{"filename": "x", "url": h, "hashes": {"sha256": SHA_A}} for h in HOSTILE_HREFS]
    files += [{"url": 5}, "nope", {"url": GOOD, "hashes": {"sha256": SHA_A}, "size": -1}]
    page = parse_json(json.dumps({"files": files}).encode(), BASE)
    kept = screen_links(page.links, _policy()).kept
    assert [link.filename for link in kept] == [GOOD]


def test_duplicate_names_with_different_hashes_are_refused():
    page = parse_html(_page([
        f"{GOOD}#sha256={SHA_A}",
        f"/mirror2/{GOOD}#sha256={SHA_B}",
        f"filelock-3.16.1-py3-none-any.whl#sha256={SHA_A}",
        f"/again/filelock-3.16.1-py3-none-any.whl#sha256={SHA_A}",
    ]), BASE)
    s = screen_links(page.links, _policy())
    assert [link.filename for link in s.kept] == ["filelock-3.16.1-py3-none-any.whl"]
    assert s.warnings["same file name with different hashes"] == 2


def test_host_policy_defaults_and_refusals():
    pol = default_policy(["https://mirror.example.edu/whl"], ["https://deps.example.edu/simple", "files.example.edu"])
    assert pol.hosts >= PYTORCH_LINKED_HOSTS
    for ok in ("https://download-r2.pytorch.org/whl/torch.whl", "https://pypi.nvidia.com/nvidia-x/x.whl",
               "https://DEPS.example.edu/x.whl", "https://files.example.edu/p/x.whl",
               "https://mirror.example.edu:443/whl/x.whl"):
        assert pol.allows(ok), ok
    for bad, why in (("https://evil.example.com/x.whl", "not allowed"), ("file:///etc/passwd", "file"),
                     ("ftp://download.pytorch.org/x", "ftp"), ("//download.pytorch.org/x", "schemeless"),
                     ("https://u:p@download.pytorch.org/x", "credentials"), ("https:///x.whl", "without host"),
                     ("https://download.pytorch.org:bad/x", "unparseable")):
        assert why in pol.refusal(bad), (bad, pol.refusal(bad))
    assert default_policy(allow_file=True).allows("file:///srv/wheels/x.whl")


@pytest.mark.parametrize(("name", "why"), [
    ("../x.whl", "traversal"), ("..", "traversal"), ("a/b.whl", "traversal"), ("a\\b.whl", "traversal"),
    ("%2e%2e%2fx.whl", "traversal"), ("x.whl", "invalid wheel"), ("torch.tar.gz", "not a wheel"),
    ("pytorch.conda", "invalid conda"), ("evil\x00.whl", "unsafe"), ("", "empty"),
])
def test_filename_refusals(name, why):
    assert why in filename_refusal(name)


def test_valid_names_pass():
    for name in (GOOD, "pytorch-2.5.1-py3.11_cpu_0.tar.bz2", "pytorch-2.5.1-cpu_mkl_py311_h1_100.conda",
                 GOOD + ".metadata", "torch-1.5.0%2Bcu92-cp37-cp37m-linux_x86_64.whl"):
        assert filename_refusal(name) is None, name


def test_invalid_utf8_page_is_parsed_with_a_warning():
    body = b"<html><a href=\"" + GOOD.encode() + b"\">\xff\xfe\x80</a><a href=\"\xc3\x28.whl\">x</a></html>"
    page = parse_html(body, BASE)
    assert any("utf-8" in w for w in page.warnings)
    assert GOOD in [link.filename for link in page.links]


GOOD_RECORD = {"name": "pytorch", "version": "2.5.1", "build": "py3.11_cpu_0", "build_number": 0,
               "sha256": SHA_A, "md5": "0" * 32, "size": 10, "depends": [], "subdir": "linux-64"}
HOSTILE_RECORDS = [
    ("../../evil-1.0-0.tar.bz2", GOOD_RECORD), ("/abs/evil-1.0-0.tar.bz2", GOOD_RECORD),
    ("..\\evil-1.0-0.tar.bz2", GOOD_RECORD), ("%2e%2e%2fevil-1.0-0.tar.bz2", GOOD_RECORD),
    ("nonsense", GOOD_RECORD), ("broken-1-0.tar.bz2", {"name": 5}),
    ("evil-1.0-0.tar.bz2", {**GOOD_RECORD, "name": "../evil"}),
]


def _one_line_repodata_error(body, where="https://conda.example.edu/pytorch/linux-64/repodata.json"):
    with pytest.raises(RepodataError) as err:
        parse_repodata(body, "pytorch", "linux-64", where)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(where), msg
    return msg


@pytest.mark.parametrize(("filename", "record"), HOSTILE_RECORDS, ids=[f for f, _ in HOSTILE_RECORDS])
def test_repodata_hostile_record_is_a_one_line_error(filename, record):
    """The live parser stops on an unusable record before anything is written (beside good ones)."""
    doc = {"info": {"subdir": "linux-64"},
           "packages": {"pytorch-2.5.1-py3.11_cpu_0.tar.bz2": GOOD_RECORD, filename: record}}
    msg = _one_line_repodata_error(json.dumps(doc).encode())
    assert repr(filename) in msg or "evil" in msg


def test_repodata_good_records_are_safe():
    doc = {"info": {"subdir": "linux-64"},
           "packages": {"pytorch-2.5.1-py3.11_cpu_0.tar.bz2": GOOD_RECORD},
           "packages.conda": {"pytorch-2.5.1-py3.11_cpu_0.conda": {**GOOD_RECORD, "sha256": SHA_B}}}
    rd = parse_repodata(json.dumps(doc).encode(), "pytorch", "linux-64", "here")
    assert sorted(rd.records) == ["pytorch-2.5.1-py3.11_cpu_0.conda", "pytorch-2.5.1-py3.11_cpu_0.tar.bz2"]
    for fn in rd.records:
        assert filename_refusal(fn) is None, fn
        safe_join("/nonexistent", "conda/pytorch/linux-64", safe_filename(fn))


def test_repodata_for_another_subdir_is_refused():
    assert "osx-64" in _one_line_repodata_error(json.dumps({"info": {"subdir": "osx-64"}}).encode())


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeply nested
    b'{"packages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b"\xff\xfe not json",
    b"",
    b"null",
    b'{"packages": "x"}',
])
def test_repodata_broken_json_is_a_project_error(body):
    _one_line_repodata_error(body)


def test_huge_repodata_parses_within_limits():
    rec = {"name": "x", "version": "1", "build": "0", "build_number": 0, "sha256": SHA_A, "size": 1, "depends": []}
    doc = {"packages": {f"x-1-{i}.tar.bz2": {**rec, "build": str(i)} for i in range(50_000)}}
    body = json.dumps(doc).encode()
    t = time.monotonic()
    rd = parse_repodata(body, "c", "linux-64", "big")
    assert len(rd.records) == 50_000
    assert time.monotonic() - t < 20


def test_pep691_deeply_nested_json_is_counted():
    page = parse_json(b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", BASE)
    assert page.links == []
    assert sum(page.warnings.values()) >= 1


# -- pages over HTTP --------------------------------------------------------------------
def _big_page(size: int) -> bytes:
    head = _page([f"{GOOD}#sha256={SHA_A}"])
    return head + b"<!-- " + b"x" * (size - len(head) - 10) + b" -->"


@pytest.mark.parametrize("mode", ["ok", "chunked"])
def test_50mb_page_is_refused_by_the_size_cap(mode):
    body = _big_page(50 * 1024 * 1024)
    with FaultServer() as up:
        up.add("/whl/cpu/torch/", body, "text/html")
        up.always("/whl/cpu/torch/", Fault(mode))
        c = Client(HttpConfig(max_page_bytes=8 * 1024 * 1024, retries=0))
        with pytest.raises(UpstreamError, match="limit"):
            c.get_bytes(up.url + "/whl/cpu/torch/")
        # streaming cap: refused after ~the limit, not after the whole body
        assert up.body_bytes["/whl/cpu/torch/"] <= len(body)


def test_50mb_page_within_default_cap_is_parsed_in_bounded_time():
    body = _big_page(50 * 1024 * 1024)
    with FaultServer() as up:
        up.add("/whl/cpu/torch/", body, "text/html")
        c = Client(HttpConfig(retries=0))
        got, _meta = c.get_bytes(up.url + "/whl/cpu/torch/")
    t = time.monotonic()
    page = parse_html(got, BASE)
    assert [link.filename for link in page.links] == [GOOD]
    assert time.monotonic() - t < 20


def test_fetcher_refuses_hosts_outside_policy_and_unsafe_keys(tmp_path):
    data = b"PK\x03\x04" + b"0" * 1000
    with FaultServer() as up, FaultServer() as other:
        port = other.url.rsplit(":", 1)[1]
        foreign = other.add("/evil-1.0-py3-none-any.whl", data).replace("127.0.0.1", "localhost")
        pol = default_policy([up.url + "/whl"])
        items = [
            FetchItem("packages/evil/evil-1.0-py3-none-any.whl", (foreign,), hashlib.sha256(data).hexdigest()),
            FetchItem("packages/../../evil.whl", (up.add("/e.whl", data),), None),
            FetchItem("/abs/evil.whl", (up.url + "/e.whl",), None),
        ]
        rep = Fetcher(tmp_path / "out", Client(HttpConfig(retries=0)), allowed_hosts=set(pol.hosts),
                      progress=False).run(items)
        assert all(r.status == "failed" for r in rep.results)
        assert other.hits == {}
        assert up.hits == {}
        assert f"localhost:{port}" not in str(pol.hosts)
    assert outside_root(tmp_path, {tmp_path / "out"}) == []


# -- end to end: a hostile upstream through `torchdepot mirror` ----------------------------
@pytest.mark.parametrize("conflict", [False, True], ids=["hostile-links", "plus-conflicting-duplicate"])
def test_mirror_against_a_hostile_index_writes_nothing_outside_root(tmp_path, conflict):
    with FaultServer() as server:
        up = populate(server, payload=20_000)
        torch_page = server.files["/whl/cpu/torch/index.html"][0].decode()
        extra = [f"/whl/files/{GOOD.replace('+', '%2B')}#sha256={SHA_B}"] if conflict else []  # same name, other hash
        evil = "".join(f'<a href="{h}">{h}</a>\n' for h in HOSTILE_HREFS + extra)
        server.add("/whl/cpu/torch/index.html", torch_page.replace("</body>", evil + "</body>").encode())
        for p in ("/x.whl", "/etc/passwd", "/evil-1.0-py3-none-any.whl"):
            server.add(p, b"evil")
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        proc = run_mirror(spec, mirror_env(up.url, tmp_path))
        # Either a complete, verified mirror or a one-line refusal: never a traceback.
        # Hostile links alone must not stop the sync; an ambiguous file may.
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 0 or conflict, proc.stderr
        if proc.returncode == 0:
            from torchdepot.sync.check import verify_mirror

            assert verify_mirror(out).ok
        else:
            assert proc.stderr.strip().splitlines()[-1].startswith("torchdepot: error:")
        for p in ("/x.whl", "/etc/passwd", "/evil-1.0-py3-none-any.whl"):
            assert server.hits[p] == 0, p
    assert outside_root(tmp_path, {out, tmp_path / "uv-cache", tmp_path / "spec.yaml"}) == []
    names = {p.name for p in out.rglob("*")}
    assert not any("evil" in n or n == "passwd" for n in names)


def test_mirror_refuses_a_dependency_on_a_host_outside_the_policy(tmp_path):
    """The upstream's filelock page links a newer filelock on another host (``localhost``,
    not named in the spec or pip config): the screen refuses that link (counted in one
    summary line, never fatal), the sync completes with the allowed filelock, and nothing
    is requested from the foreign host."""
    from tests.kit.upstream import padded_wheel

    with FaultServer() as server, FaultServer() as foreign:
        up = populate(server, payload=20_000)
        wheel = padded_wheel("filelock", "9.9.9", "py3-none-any", (), 20_000, 99)
        fname = wheel.filename
        foreign.add(f"/f/{fname}", wheel.data)
        foreign.add(f"/f/{fname}.metadata", wheel.metadata)
        port = foreign.url.rsplit(":", 1)[1]
        sha = wheel.sha256
        msha = hashlib.sha256(wheel.metadata).hexdigest()
        link = (f'<a href="http://localhost:{port}/f/{fname}#sha256={sha}" '
                f'data-dist-info-metadata="sha256={msha}">{fname}</a>\n')
        for page in ("/whl/cpu/filelock/index.html", "/simple/filelock/index.html"):
            body = server.files[page][0].decode()
            server.add(page, body.replace("</body>", link + "</body>").encode())
        out = tmp_path / "out"
        spec = write_spec(tmp_path / "spec.yaml", up.url, out)
        proc = run_mirror(spec, mirror_env(up.url, tmp_path))
        assert proc.returncode == 0, proc.stderr
        refusals = [ln for ln in proc.stderr.splitlines() if ln.startswith("upstream: refused ")]
        assert refusals == [f"upstream: refused 1 links (1 host localhost:{port} not allowed by the host policy)"]
        assert foreign.hits[f"/f/{fname}"] == 0
        assert foreign.hits[f"/f/{fname}.metadata"] == 0
    assert not list(out.rglob(fname))
    assert "filelock-3.16.1-py3-none-any.whl" in {p.name for p in out.rglob("*.whl")}
    assert outside_root(tmp_path, {out, tmp_path / "uv-cache", tmp_path / "spec.yaml"}) == []
