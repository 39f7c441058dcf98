"""The foundation on the REAL captures in ../shared/data (issue 2, "Done when").

Captures are served from a real HTTP server on 127.0.0.1 and crawled through the one reader
of upstream (sources.upstream.UpstreamReader over the real client); the 2023 capture's
absolute hrefs to the upstream host are parsed, never fetched.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from tests.httpserver import Server
from torchdepot.errors import UpstreamError
from torchdepot.net.hostpolicy import default_policy
from torchdepot.net.http import make_session
from torchdepot.sources.upstream import UpstreamReader, crawl_wheels, project_page, root_page

ROOT = Path(__file__).resolve().parent.parent
CAPTURE_2023 = "index_pages/download.pytorch.org_whl_simple_2023-10"
CAPTURE_2024 = "index_pages/torch_stable_html_derived_pep503_2024-03-27"
STABLE_2021 = "index_pages/torch_stable_2021-03.html"


@pytest.fixture(scope="module")
def served(data_dir, tmp_path_factory):
    """One server: /whl -> 2023 capture, /p2024 -> 2024 pages, /whl21/torch_stable.html."""
    root = tmp_path_factory.mktemp("served")
    (root / "whl").symlink_to(data_dir / CAPTURE_2023)
    (root / "p2024").symlink_to(data_dir / CAPTURE_2024)
    (root / "whl21").mkdir()
    (root / "whl21" / "torch_stable.html").symlink_to(data_dir / STABLE_2021)
    with Server(root) as srv:
        yield srv


@pytest.fixture(scope="module")
def client():
    with make_session() as c:
        yield c


def reader_for(client, srv) -> UpstreamReader:
    """A fresh reader (its own cache and counts) confined to the test server."""
    return UpstreamReader(client, default_policy([srv.url]))


def _regex_hrefs(path: Path) -> list[str]:
    # An independent oracle for "what links does this page have": a plain regex scan.
    return re.findall(r'href="([^"]+)"', path.read_text())


@pytest.fixture(scope="module")
def crawled(served, client, data_dir):
    """Every page of the three captures, crawled over HTTP: {capture: [Page]}, one request each."""
    out: dict[str, list] = {}
    reader = reader_for(client, served)
    assert root_page(reader, served.url + "/whl").projects  # the root page crawls too
    # every captured page: the root's projects that were captured, plus "cerifi/" (a
    # captured directory the root page does not list)
    dirs = sorted(p.name for p in (data_dir / CAPTURE_2023).iterdir() if p.is_dir())
    out["2023"] = [project_page(reader, served.url + "/whl", p) for p in dirs]
    root24 = root_page(reader, served.url + "/p2024")
    out["2024"] = [project_page(reader, served.url + "/p2024", p) for p in root24.projects]
    out["2021"] = [reader.page(served.url + "/whl21/torch_stable.html")]  # a find-links page
    pages = 1 + len(dirs) + 1 + len(root24.projects) + 1
    assert reader.request_counts() == {"pages": pages, "unchanged": 0, "metadata": 0, "ranges": 0, "wheels": 0}
    return out


def test_root_pages(served, client, data_dir):
    reader = reader_for(client, served)
    root = root_page(reader, served.url + "/whl")
    dirs = sorted(p.name for p in (data_dir / CAPTURE_2023).iterdir() if p.is_dir())
    assert set(dirs) - set(root.projects) == {"cerifi"}  # captured, but not linked from the root
    assert len(root.projects) == len(_regex_hrefs(data_dir / CAPTURE_2023 / "index.html"))
    assert "torch" in root.projects
    assert "Jinja2" in root.projects
    assert root_page(reader, served.url + "/p2024").projects == ["torch", "torchaudio", "torchvision"]
    with pytest.raises(UpstreamError, match=r"/nowhere/: not found"):
        root_page(reader, served.url + "/nowhere")


def test_every_anchor_is_crawled(crawled, data_dir):
    pages_2023 = sorted((data_dir / CAPTURE_2023).glob("*/index.html"))
    expected = sum(len(_regex_hrefs(p)) for p in pages_2023)
    got = sum(len(p.links) for p in crawled["2023"])
    assert got == expected
    assert got > 3900
    assert all(not p.warnings for p in crawled["2023"])
    # absolute hrefs are kept verbatim (host included); hashes come from the fragment
    torch = next(p for p in crawled["2023"] if p.url.endswith("/whl/torch/"))
    assert all(l.url.startswith("https://download.pytorch.org/whl/") for l in torch.links)
    hashed = [h for h in _regex_hrefs(data_dir / CAPTURE_2023 / "torch" / "index.html") if "#sha256=" in h]
    assert sum(1 for l in torch.links if l.sha256) == len(hashed) == 1128  # old cu80 files: no hash
    stable = crawled["2021"][0]
    assert len(stable.links) == len(_regex_hrefs(data_dir / STABLE_2021)) == 1499
    # relative find-links hrefs resolve against the page URL, keeping the variant dir
    l0 = next(l for l in stable.links if l.href.startswith("cu92/torch-1.5.0"))
    assert l0.url.startswith(stable.url.rsplit("/", 1)[0] + "/cu92/torch-1.5.0%2Bcu92-")
    assert l0.filename.startswith("torch-1.5.0+cu92-")


def _expected_accelerator(href: str) -> str | None:
    """Independent oracle: local label (cpu/cuXY/rocmX.Y/xpu[.cxx11.abi]), else the
    nearest directory naming one, else None."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(href.split("#")[0]).path)
    *dirs, filename = path.split("/")
    _, version, _, _ = parse_wheel_filename(filename)
    if version.local:
        m = re.fullmatch(r"(cpu|xpu|cu\d{2,3}|rocm\d+(?:\.\d+)+)(?:\.cxx11\.abi|\.with\.pypi\.cudnn)?", version.local)
        if m:
            return m.group(1)
    for d in reversed(dirs):
        m = re.fullmatch(r"(cpu|xpu|cu\d{2,3}|rocm\d+(?:\.\d+)+)(?:-cxx11-abi|_pypi_cudnn|_pypi_pkg|_full)?", d)
        if m:
            return m.group(1)
    return None


def test_parse_json_on_every_wheel_link(crawled, data_dir, tmp_path):
    """Done-when: every distinct wheel link (captures + pytorch_wheel_urls.txt) through
    ``torchdepot parse --json --from-file`` equals packaging's parse."""
    links = set()
    for pages in crawled.values():
        for page in pages:
            links.update(l.href for l in page.links if l.filename.endswith(".whl"))
    listed = [ln.strip() for ln in (data_dir / "pytorch_wheel_urls.txt").read_text().splitlines() if ln.strip()]
    links.update(listed)
    links = sorted(links)
    assert len(links) == 11081  # the count of distinct links (hrefs as written)
    src = tmp_path / "links.txt"
    src.write_text("\n".join(links) + "\n")
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "parse", "--json", "--from-file", str(src)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(links)
    counts = collections.Counter()
    for href, row in zip(links, rows, strict=True):
        filename = urllib.parse.unquote(urllib.parse.urlsplit(href.split("#")[0]).path.rsplit("/", 1)[-1])
        try:
            name, version, _build, tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            # packaging rejects it (e.g. torchrec_cpu-0.1.1-3.7-none-any.whl): so must we
            assert row["error"], href
            assert row["name"] is None, href
            counts["errors"] += 1
            continue
        assert row["error"] is None, (href, row["error"])
        assert row["filename"] == filename
        assert row["name"] == name
        assert row["version"] == str(version)
        assert row["local"] == version.local
        assert set(row["python_tags"]) == {t.interpreter for t in tags}
        assert set(row["abi_tags"]) == {t.abi for t in tags}
        assert set(row["platform_tags"]) == {t.platform for t in tags}
        assert row["accelerator"] == _expected_accelerator(href), href
        counts["parsed"] += 1
        counts["unknown accelerator" if row["accelerator"] is None else "known accelerator"] += 1
    print("\nparse counts:", dict(counts))
    assert counts["parsed"] + counts["errors"] == 11081
    assert counts["errors"] < 10


def test_parse_contract_exit_codes(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "torchdepot", "parse", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    ok = run("--json", "torch-2.1.0+cu121-cp311-cp311-linux_x86_64.whl", "numpy-1.0.tar.gz")
    assert ok.returncode == 0
    good, bad = (json.loads(l) for l in ok.stdout.splitlines())
    keys = {"filename", "name", "version", "local", "accelerator", "python_tags", "abi_tags",
            "platform_tags", "os", "arch", "error"}
    assert keys <= set(good)
    assert keys <= set(bad)
    assert good["accelerator"] == "cu121"
    assert good["error"] is None
    assert good["os"] == "linux"
    assert bad["error"]
    assert bad["name"] is None
    none = run("--json", "not-a-wheel", "x.tar.gz")
    assert none.returncode != 0
    assert len(none.stdout.splitlines()) == 2
    plain = run("https://download.pytorch.org/whl/cu80/torch-0.3.0.post4-cp36-cp36m-linux_x86_64.whl")
    assert plain.returncode == 0
    assert "cu80" in plain.stdout
    assert plain.stdout.count("\n") == 1
    assert run().returncode != 0  # no input at all is a usage error


def test_crawl_index_pytorch_style(served, client, data_dir):
    reader = reader_for(client, served)
    result = crawl_wheels(reader, served.url + "/whl", ["torch", "torchvision"])
    torch = [w for _, w in result.items if w.name == "torch"]
    expected = [h for h in _regex_hrefs(data_dir / CAPTURE_2023 / "torch" / "index.html")]
    assert len(torch) == len(set(h.split("#")[0] for h in expected))
    accs = collections.Counter(w.accelerator.name if w.accelerator else None for w in torch)
    assert accs["cu118"] > 0
    assert accs["cpu"] > 0
    assert accs["rocm5.6"] > 0
    assert result.pages == 2
    assert reader.request_counts()["pages"] == 2


@pytest.fixture(scope="module")
def variant_tree(data_dir, tmp_path_factory):
    """Per-variant pages /whl/<acc>/torch/ cut from the real 2023 torch page (anchors
    whose URL lies under /whl/<acc>/), as upstream's generator lays them out."""
    root = tmp_path_factory.mktemp("variants")
    page = (data_dir / CAPTURE_2023 / "torch" / "index.html").read_text()
    anchors = re.findall(r'<a href="[^"]+">[^<]*</a>', page)
    for acc in ("cu118", "cpu"):
        mine = [a for a in anchors if f"/whl/{acc}/" in a]
        d = root / "whl" / acc / "torch"
        d.mkdir(parents=True)
        (d / "index.html").write_text("<html><body>\n" + "<br/>\n".join(mine) + "\n</body></html>\n")
    with Server(root) as srv:
        yield srv, {acc: sum(1 for a in anchors if f"/whl/{acc}/" in a) for acc in ("cu118", "cpu")}


def test_crawl_per_variant_pages(variant_tree, client):
    srv, counts = variant_tree
    reader = reader_for(client, srv)
    result = crawl_wheels(reader, srv.url + "/whl", ["torch"], accelerators=["cu118", "cpu", "cu999"])
    accs = collections.Counter(w.accelerator.name for _, w in result.items)
    assert accs == {"cu118": counts["cu118"], "cpu": counts["cpu"]}
    assert result.warnings["page not available"] == 1
    assert "1 page not available" in result.summary(srv.url)
    # a variant index is a base of its own (and its page was read already: no second request)
    cu118 = crawl_wheels(reader, srv.url + "/whl/cu118", ["torch"])
    assert len(cu118.items) == counts["cu118"]
    assert reader.request_counts()["pages"] == 3
    with pytest.raises(UpstreamError, match=r"/whl/cu999/torch/"):
        crawl_wheels(reader, srv.url + "/whl", ["torch"], accelerators=["cu999"])


def test_ls_json_returns_every_torch_wheel(served, data_dir):
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "ls", "--index", served.url + "/whl",
                           "--package", "torch", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    hrefs = {h.split("#")[0] for h in _regex_hrefs(data_dir / CAPTURE_2023 / "torch" / "index.html")}
    assert {r["url"] for r in rows} == hrefs
    assert len(rows) == len(hrefs) == 1494
    assert all(r["name"] == "torch" for r in rows)
    assert sum(1 for r in rows if r["sha256"]) == 1128  # as many as the page has fragments


def test_ls_table_readable(served):
    proc = subprocess.run([sys.executable, "-m", "torchdepot", "ls", "--index", served.url + "/whl",
                           "--package", "torch", "--python", "3.11", "--platform", "linux-x86_64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("torch: ")
    assert lines[1].split()[:3] == ["version", "accelerator", "3.11"]
    row = next(l.split() for l in lines if l.startswith("2.1.0") and " cu121 " in f" {l} ")
    assert row == ["2.1.0", "cu121", "L"]
    assert max(len(l) for l in lines) < 120
    assert "L=linux-x86_64" in proc.stdout


def test_crawl_whole_index_from_root(served, client, data_dir):
    """projects=None: every project on the root page; the capture lacks a few of their
    pages (and keeps certifi as "cerifi/"), which become counted warnings, not a crash."""
    reader = reader_for(client, served)
    result = crawl_wheels(reader, served.url + "/whl", None)
    root = root_page(reader, served.url + "/whl")
    missing = [p for p in root.projects if not (data_dir / CAPTURE_2023 / p).is_dir()]
    assert missing
    assert result.warnings["page not available"] == len(missing)
    assert result.pages == len(root.projects) - len(missing)
    said = result.summary(served.url + "/whl")
    assert said.startswith(served.url + "/whl: skipped ")
    assert "\n" not in said
    wheel_hrefs = set()
    for p in root.projects:
        if p not in missing:
            wheel_hrefs |= {h.split("#")[0] for h in _regex_hrefs(data_dir / CAPTURE_2023 / p / "index.html") if ".whl" in h}
    # the three torchrec_cpu-0.1.1-3.X-none-any.whl files have a tag packaging rejects
    bad = {h for h in wheel_hrefs if re.search(r"-3\.\d-none-any\.whl$", h)}
    assert len(bad) == 3
    assert result.warnings["unparseable wheel filename"] == 3
    assert {l.url for l, _ in result.items} == wheel_hrefs - bad
    # one request per page: the root, each project page that exists, and for a missing page
    # its name as listed plus (when it differs) its normalised form
    extra = sum(1 for p in missing if p != str(canonicalize_name(p)))
    assert reader.request_counts()["pages"] == 1 + len(root.projects) + extra


def test_ls_one_request_per_page(served):
    """`torchdepot ls` on the real capture reads each project page once and nothing else."""
    from torchdepot.site.availability import index_wheels

    listing = index_wheels(served.url + "/whl", ["torch", "torchvision", "torchaudio"])
    assert listing.requests == 3
    assert listing.skipped is None
    assert {w.name for _, w in listing.items} == {"torch", "torchvision", "torchaudio"}
