"""PEP 691 JSON pages (with PEP 700 size / upload-time / versions) beside the PEP 503 HTML:
shape, agreement with the HTML, content negotiation in ``serve`` and in the nginx config,
and real installers consuming them: pip (download + install), uv (which asks for JSON), and
``uv pip install --exclude-newer`` travelling back in time on upload-time."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tests.kit.serving import request, serve_mirror
from tests.kit.wheels import build_wheel
from tests.venvs import hermetic_env, make_venv, run
from torchdepot.resolve.uv import uv_bin
from torchdepot.ship.serve import negotiate
from torchdepot.sources.pep503 import parse_html
from torchdepot.sources.pep691 import parse_json
from torchdepot.store.fsutil import sha256_file
from torchdepot.store.pages import IndexFile, build_pages, ensure_metadata, publish
from torchdepot.store.simple_json import JSON_MEDIA_TYPE, JsonFile, project_page, valid_upload_time

TD = Path(sys.executable).parent / "torchdepot"
UV_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
OLD, NEW = "2026-01-15T08:00:00Z", "2026-06-15T12:30:00.123456Z"


def publish_mirror(root: Path, wheels: dict[str, list[tuple[Path, str | None]]]) -> None:
    """Store wheels and publish the index exactly as the sync does: IndexFile -> build_pages -> publish."""
    variants: dict[str, list[IndexFile]] = {}
    for acc, items in wheels.items():
        for wheel, upload_time in items:
            name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
            key = f"packages/{name}/{wheel.name}"
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, root / key)
            sha, size = sha256_file(root / key)
            meta_sha, req_py, _ = ensure_metadata(root, key, name)
            variants.setdefault(acc, []).append(IndexFile(name, wheel.name, key, sha, req_py, meta_sha,
                                                          size=size, upload_time=upload_time))
    publish(root, build_pages(variants))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pep691")
    wheels = tmp / "wheels"
    demo1 = build_wheel(wheels, "demo-pkg", "1.0", requires_python=">=3.8")
    demo2 = build_wheel(wheels, "demo-pkg", "2.0", requires=("helper",), requires_python=">=3.8")
    helper = build_wheel(wheels, "helper", "1.0")
    root = tmp / "mirror"
    # helper has no upload time upstream: it must stay absent, never invented
    publish_mirror(root, {"cpu": [(demo1, OLD), (demo2, NEW), (helper, None)], "cu126": [(demo2, NEW)]})
    return root


@pytest.fixture(scope="module")
def server(mirror):
    with serve_mirror(mirror) as httpd:
        yield httpd


def get(httpd, path, accept=None):
    return request(httpd, path, headers={"Accept": accept} if accept else {})


# -- the shape PEP 691 / PEP 700 / PEP 714 prescribe -------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def check_project_page(doc: dict) -> None:
    assert set(doc) <= {"meta", "name", "files", "versions"}, doc.keys()
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["name"] == canonicalize_name(doc["name"])
    assert isinstance(doc["files"], list)
    assert isinstance(doc["versions"], list)
    for f in doc["files"]:
        assert isinstance(f["filename"], str)
        assert "/" not in f["filename"]
        assert isinstance(f["url"], str)
        assert not urllib.parse.urlsplit(f["url"]).scheme
        assert f["hashes"]
        assert all(_HEX64.fullmatch(v) for v in f["hashes"].values())
        assert isinstance(f["size"], int)
        assert not isinstance(f["size"], bool)
        assert f["size"] >= 0
        assert isinstance(f["yanked"], (bool, str))
        if "requires-python" in f:
            SpecifierSet(f["requires-python"])
        cm = f["core-metadata"]  # PEP 714
        assert cm is False or cm is True or (isinstance(cm, dict) and all(_HEX64.fullmatch(v) for v in cm.values()))
        if "upload-time" in f:
            assert _TIME.fullmatch(f["upload-time"]), f["upload-time"]
        assert str(parse_wheel_filename(f["filename"])[1]) in doc["versions"]
    assert doc["versions"] == sorted(doc["versions"], key=Version)


def test_json_pages_have_the_pep691_pep700_shape_and_match_the_html(mirror):
    whl = mirror / "whl"
    html_pages = sorted(whl.rglob("index.html"))
    assert len(html_pages) == 8  # whl/, cpu/{,demo-pkg/,helper/}, cu126/{,demo-pkg/}, demo-pkg/, helper/
    for html_page in html_pages:
        twin = html_page.with_name("index.json")
        assert twin.is_file(), twin
        doc = json.loads(twin.read_bytes())
        url = html_page.as_uri()
        if "files" not in doc:  # a project list
            assert doc["meta"]["api-version"] in ("1.0", "1.1")
            assert all(set(p) == {"name"} for p in doc["projects"])
            assert sorted(parse_json(twin.read_bytes(), url).projects) == sorted(
                urllib.parse.unquote(u.rstrip("/").rsplit("/", 1)[-1]) for u in _hrefs(html_page))
            continue
        check_project_page(doc)
        # one source, two renderings: the same files, URLs, hashes, metadata and requires-python
        as_json = {(link.url, link.sha256, link.core_metadata, link.requires_python) for link in parse_json(twin.read_bytes(), url).links}
        as_html = {(link.url, link.sha256, link.core_metadata, link.requires_python) for link in parse_html(html_page.read_bytes(), url).links}
        assert as_json == as_html
        assert as_json
        for f in doc["files"]:  # every URL reaches the stored bytes with the stated hash and size
            target = Path(urllib.parse.unquote(urllib.parse.urlsplit(urllib.parse.urljoin(url, f["url"])).path))
            sha, size = sha256_file(target)
            assert (sha, size) == (f["hashes"]["sha256"], f["size"])
            msha, _ = sha256_file(Path(str(target) + ".metadata"))
            assert f["core-metadata"] == {"sha256": msha} == f["dist-info-metadata"]


def _hrefs(page: Path) -> list[str]:
    return re.findall(r'href="([^"]+)"', page.read_text())


def test_upload_time_only_when_known(mirror):
    doc = json.loads((mirror / "whl/cpu/demo-pkg/index.json").read_bytes())
    times = {f["filename"]: f.get("upload-time") for f in doc["files"]}
    assert times == {"demo_pkg-1.0-py3-none-any.whl": OLD, "demo_pkg-2.0-py3-none-any.whl": NEW}
    assert doc["versions"] == ["1.0", "2.0"]
    helper = json.loads((mirror / "whl/cpu/helper/index.json").read_bytes())["files"][0]
    assert "upload-time" not in helper
    assert "requires-python" not in helper


def test_unknown_size_or_bad_time_is_not_guessed():
    page = json.loads(project_page("x", [JsonFile("x-1.0-py3-none-any.whl", "../x-1.0-py3-none-any.whl", "a" * 64,
                                                  upload_time=valid_upload_time("yesterday"))]))
    assert page["meta"]["api-version"] == "1.0"
    assert "versions" not in page
    assert "size" not in page["files"][0]
    assert "upload-time" not in page["files"][0]


@given(st.text(max_size=40))
def test_valid_upload_time_passes_only_pep700_times(text):
    got = valid_upload_time(text)
    assert got is None or (got == text and _TIME.fullmatch(text))


# -- content negotiation -----------------------------------------------------------------------
@pytest.mark.parametrize(("accept", "want"), [
    (None, "html"), ("*/*", "html"), ("text/html", "html"),
    (UV_ACCEPT, "json"),
    ("application/vnd.pypi.simple.v1+json", "json"),
    ("application/vnd.pypi.simple.latest+json", "json"),
    ("application/vnd.pypi.simple.v1+json;q=0.5, text/html", "html"),
    ("application/vnd.pypi.simple.v1+json;q=0, text/html;q=0.1", "html"),
    ("application/vnd.pypi.simple.v1+json;q=0.5, */*;q=0.5", "json"),  # a tie: the client asked for JSON
    ("application/vnd.pypi.simple.v1+json;q=banana", "html"),
])
def test_negotiate(accept, want):
    assert negotiate(accept) == want


@given(st.text(max_size=300))
def test_negotiate_never_raises(text):
    assert negotiate(text) in ("json", "html")


def test_serve_negotiates_directory_urls(server):
    resp, body = get(server, "/whl/cpu/demo-pkg/", UV_ACCEPT)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == JSON_MEDIA_TYPE
    assert resp.getheader("Vary") == "Accept"
    check_project_page(json.loads(body))
    resp, body = get(server, "/whl/cpu/demo-pkg/")
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/html")
    assert b"<a " in body
    assert resp.getheader("Vary") == "Accept"
    resp, body = get(server, "/whl/cpu/", UV_ACCEPT)
    assert {p["name"] for p in json.loads(body)["projects"]} == {"demo-pkg", "helper"}
    resp, body = get(server, "/whl/cpu/demo-pkg/index.json")  # the file itself, by name
    assert resp.getheader("Content-Type") == JSON_MEDIA_TYPE
    # an ETag names one representation: the JSON's does not validate the HTML
    j, _ = get(server, "/whl/cpu/demo-pkg/", UV_ACCEPT)
    h, _ = get(server, "/whl/cpu/demo-pkg/")
    assert j.getheader("ETag") != h.getheader("ETag")


# -- real installers against the served mirror (the CLI, as a user runs it) --------------------
class Served:
    def __init__(self, root: Path, log: Path):
        self.log_path = log
        self.log = open(log, "w")  # noqa: SIM115 - the server writes it for the fixture's lifetime; close() closes it
        self.proc = subprocess.Popen([TD, "serve", "--root", root, "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=hermetic_env())
        self.banner = self.proc.stdout.readline()
        m = re.search(r" at (http://\S+?)/$", self.banner.rstrip("\n"))
        assert m, self.banner
        self.url = m.group(1)

    def requests(self) -> list[str]:
        self.log.flush()
        return self.log_path.read_text().splitlines()

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def served(mirror, tmp_path):
    s = Served(mirror, tmp_path / "serve.log")
    yield s
    s.close()


def test_pip_download_and_install_consume_the_served_mirror(served, tmp_path):
    py = make_venv(tmp_path / "venv")
    index = f"{served.url}/whl/cpu"
    proc = run([py, "-m", "pip", "download", "--no-cache-dir", "-d", tmp_path / "dl", "--index-url", index, "demo-pkg"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["demo_pkg-2.0-py3-none-any.whl",
                                                                   "helper-1.0-py3-none-any.whl"]
    proc = run([py, "-m", "pip", "install", "--no-cache-dir", "--index-url", index, "demo-pkg"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run([py, "-c", "import demo_pkg, helper; print(demo_pkg.__version__)"]).stdout.strip() == "2.0"
    # this pip asks for PEP 691 JSON and was answered with it
    assert any('"GET /whl/cpu/demo-pkg/ HTTP/1.1" 200' in line and line.endswith("index.json")
               for line in served.requests()), served.requests()


def _uv_install(py: Path, *args) -> subprocess.CompletedProcess:
    return run([uv_bin(), "pip", "install", "--python", py, "--no-cache", *args],
               env=hermetic_env(UV_NO_CACHE="1"))


def test_uv_consumes_json_from_the_served_mirror(served, tmp_path):
    py = make_venv(tmp_path / "venv")
    proc = _uv_install(py, "--index-url", f"{served.url}/whl/cpu", "demo-pkg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run([py, "-c", "import demo_pkg, helper; print(demo_pkg.__version__)"]).stdout.strip() == "2.0"
    json_lines = [line for line in served.requests() if '"GET /whl/cpu/demo-pkg/ HTTP/1.1" 200' in line]
    assert json_lines, served.requests()
    assert all(line.endswith(" index.json") for line in json_lines), served.requests()


def test_uv_exclude_newer_travels_back_in_time(served, tmp_path):
    py = make_venv(tmp_path / "venv")
    proc = _uv_install(py, "--index-url", f"{served.url}/whl/cpu", "--exclude-newer", "2026-03-01T00:00:00Z", "demo-pkg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run([py, "-c", "import demo_pkg; print(demo_pkg.__version__)"]).stdout.strip() == "1.0"
    # and without the date, the newer one: the date made the difference
    proc = _uv_install(py, "--index-url", f"{served.url}/whl/cpu", "--upgrade", "demo-pkg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run([py, "-c", "import demo_pkg; print(demo_pkg.__version__)"]).stdout.strip() == "2.0"


# -- nginx: the same negotiation from the generated config ---------------------------------------
def test_nginx_negotiates_like_serve(mirror, tmp_path):
    from tests.test_serve import running_nginx

    with running_nginx(mirror, tmp_path) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for accept, want in ((UV_ACCEPT, JSON_MEDIA_TYPE), (None, "text/html"), ("*/*", "text/html"),
                             ("application/vnd.pypi.simple.v1+json;q=0, text/html", "text/html")):
            conn.request("GET", "/whl/cpu/demo-pkg/", headers={"Accept": accept} if accept else {})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, (accept, r.getheader("Content-Type"))
            assert r.getheader("Content-Type").startswith(want), (accept, r.getheader("Content-Type"))
            assert r.getheader("Vary") == "Accept"
            if want == JSON_MEDIA_TYPE:
                check_project_page(json.loads(body))
        conn.close()
        py = make_venv(tmp_path / "venv")
        proc = _uv_install(py, "--index-url", f"http://127.0.0.1:{port}/whl/cpu", "--exclude-newer", "2026-03-01", "demo-pkg")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert run([py, "-c", "import demo_pkg; print(demo_pkg.__version__)"]).stdout.strip() == "1.0"
    assert os.path.exists(tmp_path / "nginx" / "logs" / "access.log")
