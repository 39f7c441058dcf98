"""A candidate whose bytes fail is left out, not the whole target (issue 22 items 9 and 11).

Upstream lists torch 2.12 (a good wheel) and, newer, one bad candidate: a wheel whose METADATA
carries 100,000 ``Requires-Dist`` lines (it took the resolver 419 s at 1.5 GB), or a ``.whl``
whose bytes are not a zip, or a wheel with no METADATA. The sync excludes it in one line,
resolves again without it, and publishes torch 2.12. A METADATA under the cap is untouched."""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.httpserver import Server
from tests.kit.upstream import Tree, link, page, pep503
from tests.kit.wheels import wheel_bytes
from torchdepot.errors import TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.sources.wheelmeta import MAX_REQUIRES_DIST, metadata_refusal
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

TAG = "cp311-cp311-manylinux_2_28_x86_64"
GOOD = wheel_bytes("torch", "2.12.0+cpu", TAG, ("filelock",), ">=3.10")
FILELOCK = wheel_bytes("filelock", "3.20.0")


def _bomb() -> tuple[str, bytes]:
    w = wheel_bytes("torch", "2.13.0+cpu", TAG, tuple(f"pkg{i}>=1.0" for i in range(100_000)), ">=3.10")
    return w.filename, w.data


def _not_a_zip() -> tuple[str, bytes]:
    return f"torch-2.13.0+cpu-{TAG}.whl", b"<html>this is not a wheel</html>\n" * 100


def _no_metadata() -> tuple[str, bytes]:
    w = wheel_bytes("torch", "2.13.0+cpu", TAG, files={"torch/__init__.py": b""})
    import io
    import zipfile
    src, out = zipfile.ZipFile(io.BytesIO(w.data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/METADATA"):
                dst.writestr(info, src.read(info))
    return w.filename, out.getvalue()


def _sync_served(tmp: Path, lines: list[str]) -> tuple[object, float]:
    """Serve ``tmp/up`` and sync one cpu target from it into ``tmp/out`` (pip's index: its
    /simple); the run's lines go to ``lines``. Returns the result and the sync's seconds."""
    with Server(tmp / "up") as srv:
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": [], "upstreams": [srv.url + "/whl"], "out": str(tmp / "out"),
                           "jobs": 2}, "test spec")
        t = time.monotonic()
        res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lines.append,
                   pip_sources=PipSources(index_url=srv.url + "/simple"))
        return res, time.monotonic() - t


def _mirror(tmp: Path, bad: tuple[str, bytes]) -> tuple[object, list[str], dict[str, str], float]:
    """Upstream: /whl/cpu/torch/ lists the bad file (no PEP 658 sidecar: the view reads the
    wheel) and the good one; /simple has filelock. Returns the result, the run's lines, the
    manifest's files and the seconds it took."""
    name, data = bad
    tree = Tree()
    tree.add(f"/whl/cpu/{name}", data)
    tree.add(f"/whl/cpu/{GOOD.filename}", GOOD.data)
    anchors = [link(f"/whl/cpu/{urllib.parse.quote(name)}", name, hashlib.sha256(data).hexdigest()),
               link(f"/whl/cpu/{urllib.parse.quote(GOOD.filename)}", GOOD.filename, GOOD.sha256)]
    tree.add("/whl/cpu/torch/index.html", page(anchors))
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp / "up")
    lines: list[str] = []
    res, took = _sync_served(tmp, lines)
    return res, lines, {e.path: e.sha256 for e in mf.load(tmp / "out").files}, took


@pytest.mark.parametrize(("make", "why"), [
    (_bomb, "100000 Requires-Dist lines, over the cap"),
    (_not_a_zip, "not a readable wheel"),
    (_no_metadata, "no .dist-info/METADATA"),
])
def test_a_bad_candidate_is_excluded_and_the_target_resolved_without_it(tmp_path, make, why):
    bad = make()
    _res, lines, files, took = _mirror(tmp_path, bad)
    said = [ln for ln in lines if ln.startswith(f"excluded {bad[0]}")]
    assert len(said) == 1, lines
    assert why in said[0]
    assert "\n" not in said[0]
    assert f"packages/torch/{GOOD.filename}" in files
    assert not any(bad[0] in p for p in files)
    assert took < 60, took  # the 100,000-line METADATA took 419 s before the cap


def test_a_bad_dependency_candidate_is_left_to_the_resolver_again(tmp_path):
    """Not a pinned project: uv itself met the bad file; it runs again on pages without it."""
    bad = wheel_bytes("filelock", "3.21.0", requires=tuple(f"pkg{i}" for i in range(MAX_REQUIRES_DIST + 1)))
    tree = pep503([GOOD], pages=["/whl/cpu"], files="/whl/cpu", indexes=False)
    tree |= pep503([FILELOCK, bad], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    with Server(tmp_path / "up") as srv:
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": [], "upstreams": [srv.url + "/whl"], "out": str(tmp_path / "out"),
                           "jobs": 2}, "test spec")
        lines: list[str] = []
        sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lines.append,
             pip_sources=PipSources(index_url=srv.url + "/simple"))
    files = {e.path for e in mf.load(tmp_path / "out").files}
    assert "packages/filelock/filelock-3.20.0-py3-none-any.whl" in files
    assert [ln for ln in lines if ln.startswith(f"excluded {bad.filename}")], lines


def test_metadata_refusal_counts_requires_dist_in_the_header_only():
    head = b"Metadata-Version: 2.1\nName: x\nVersion: 1\n"
    at_cap = head + b"Requires-Dist: a\n" * MAX_REQUIRES_DIST + b"\n"
    assert metadata_refusal(at_cap) is None
    assert "over the cap" in (metadata_refusal(at_cap[:-1] + b"requires-dist: b\n\n") or "")
    # the long description (after the blank line) is text, not headers
    assert metadata_refusal(head + b"\n" + b"Requires-Dist: a\n" * (MAX_REQUIRES_DIST * 2)) is None


def test_metadata_refusal_is_linear():
    """100,000 lines: well under a second (a ratio bound, not a timing test: 10x the lines
    costs no more than ~30x the time of the small one)."""
    small = b"Requires-Dist: a\n" * 10_000 + b"\n"
    big = b"Requires-Dist: a\n" * 100_000 + b"\n"

    def cost(data: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            metadata_refusal(data)
            best = min(best, time.perf_counter() - t)
        return best
    assert cost(big) < 30 * cost(small) + 0.05


@pytest.mark.parametrize("path", ["/whl/cpu/%2e%2e/%2E%2E/evil/", "/whl/cpu/../evil/", "/whl/cpu/./",
                                  "/whl/cpu/..%5c", "/whl/%2e/cpu/"])
def test_dot_segments_in_a_link_path_are_refused_by_the_screen(path):
    """Issue 22 item 11: only the file name was checked for traversal; the path's own dot
    segments (percent-encoded too) let a link reach another directory of an allowed host."""
    from torchdepot.net.hostpolicy import default_policy
    policy = default_policy(["http://a.example/whl"])
    assert policy.refusal(f"http://a.example{path}{GOOD.filename}") == "dot segment in URL path refused"
    assert policy.refusal(f"http://a.example/whl/cpu/{GOOD.filename}") is None
    assert policy.refusal("http://a.example/whl/cpu/a..b/x.whl") is None  # ".." inside a name is no segment


def test_a_newer_torch_behind_encoded_dot_segments_is_refused_in_the_sync(tmp_path):
    """The issue's case end to end: the page links a newer wheel through ``%2e%2e`` on the
    allowed host, whose bytes are not a wheel; the screen refuses the link, 2.12 is published."""
    name = f"torch-2.14.0+cpu-{TAG}.whl"
    tree = Tree()
    tree.add(f"/whl/evil/{name}", b"not a wheel")
    tree.add(f"/whl/cpu/{GOOD.filename}", GOOD.data)
    anchors = [link(f"/whl/cpu/%2e%2e/evil/{urllib.parse.quote(name)}", name),
               link(f"/whl/cpu/{urllib.parse.quote(GOOD.filename)}", GOOD.filename, GOOD.sha256)]
    tree.add("/whl/cpu/torch/index.html", page(anchors))
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    lines: list[str] = []
    res, _took = _sync_served(tmp_path, lines)
    files = {e.path for e in mf.load(tmp_path / "out").files}
    assert f"packages/torch/{GOOD.filename}" in files
    assert res.refused == 1
    assert any("dot segment in URL path refused" in ln for ln in lines), lines


def test_sdists_of_the_users_index_are_not_counted_as_refusals(tmp_path):
    """Issue 22 item 20: 'refused 1899 links (1899 not a wheel or conda package)' on every run
    counted the sdists on the user's own index. They are left out silently; a link the screen
    stops (another host) is still counted."""
    tree = pep503([GOOD], pages=["/whl/cpu"], files="/whl/cpu", indexes=False)
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    page_file = tmp_path / "up" / "simple" / "filelock" / "index.html"
    extra = "".join(f'<a href="/files/filelock-3.{i}.0.tar.gz">filelock-3.{i}.0.tar.gz</a>\n' for i in range(50))
    extra += '<a href="http://elsewhere.example/filelock-9.0.0-py3-none-any.whl">x</a>\n'
    page_file.write_text(page_file.read_text().replace("</body>", extra + "</body>"))
    lines: list[str] = []
    res, _took = _sync_served(tmp_path, lines)
    assert res.refused == 1, lines
    (line,) = [ln for ln in lines if ln.startswith("upstream: refused")]
    assert line == "upstream: refused 1 links (1 host elsewhere.example not allowed by the host policy)"


def test_when_the_only_candidate_is_bad_the_run_fails_in_one_line_naming_why(tmp_path):
    name, data = _not_a_zip()
    tree = Tree()
    tree.add(f"/whl/cpu/{name}", data)
    tree.add("/whl/cpu/torch/index.html", page([link(f"/whl/cpu/{urllib.parse.quote(name)}", name,
                                                     hashlib.sha256(data).hexdigest())]))
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    lines: list[str] = []
    with pytest.raises(TorchdepotError) as info:
        _sync_served(tmp_path, lines)
    assert "1 candidate(s) excluded, none left" in str(info.value)
    assert "not a readable wheel" in str(info.value)
    assert not [ln for ln in lines if ln.startswith("excluded ")], lines  # the error line says it all


def test_a_wheel_whose_download_is_no_wheel_is_excluded_and_resolved_again(tmp_path):
    """Upstream's PEP 658 .metadata for torch 2.13 is fine, and the page's sha256 matches the
    bytes, but the bytes are not a wheel: only the download shows it. The run drops the file,
    resolves again without it and publishes 2.12; nothing of 2.13 stays on disk."""
    from tests.kit.wheels import wheel_metadata
    real = wheel_bytes("torch", "2.13.0+cpu", TAG, ("filelock",), ">=3.10")
    junk = b"\x00not a wheel at all\x00" * 4096
    meta = wheel_metadata(real.data)
    tree = Tree()
    tree.add(f"/whl/cpu/{real.filename}", junk)
    tree.add(f"/whl/cpu/{real.filename}.metadata", meta)
    tree.add(f"/whl/cpu/{GOOD.filename}", GOOD.data)
    tree.add(f"/whl/cpu/{GOOD.filename}.metadata", GOOD.metadata)
    anchors = [link(f"/whl/cpu/{urllib.parse.quote(real.filename)}", real.filename,
                    hashlib.sha256(junk).hexdigest(), hashlib.sha256(meta).hexdigest()),
               link(f"/whl/cpu/{urllib.parse.quote(GOOD.filename)}", GOOD.filename, GOOD.sha256,
                    hashlib.sha256(GOOD.metadata).hexdigest())]
    tree.add("/whl/cpu/torch/index.html", page(anchors))
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    out = tmp_path / "out"
    lines: list[str] = []
    res, _took = _sync_served(tmp_path, lines)
    assert res.verify == "ok"
    files = {e.path for e in mf.load(out).files}
    assert f"packages/torch/{GOOD.filename}" in files
    assert not [p for p in out.rglob(f"{real.filename}*") if ".torchdepot" not in p.parts]  # published or left
    said = [ln for ln in lines if ln.startswith(f"excluded {real.filename}")]
    assert len(said) == 1, lines
    assert "not a readable wheel" in said[0]


_segment = st.sampled_from([".", "..", "%2e", "%2E%2e", ".%2e", "a", "whl", "cpu", "a..b", "...", "%2f", "x%5c..",
                            "%252e%252e"])


@given(st.lists(_segment, min_size=1, max_size=6))
def test_dot_segment_refusal_matches_the_decoded_path(segments):
    from torchdepot.net.hostpolicy import default_policy
    policy = default_policy(["http://a.example/whl"])
    path = "/" + "/".join(segments) + "/" + GOOD.filename
    decoded = urllib.parse.unquote(path).replace("\\", "/").split("/")
    dotted = any(s in (".", "..") for s in decoded) or any(s in (".", "..") for s in path.split("/"))
    assert (policy.refusal("http://a.example" + path) == "dot segment in URL path refused") == dotted


def test_each_downloaded_wheel_is_opened_once_and_its_metadata_published_from_that_read(tmp_path, monkeypatch):
    """Checking a download is a wheel and writing its ``.metadata`` share one read of the zip's
    central directory (torch's costs ~40 ms): upstream serves PEP 658 sidecars, so nothing
    else of this run opens the wheels."""
    import zipfile

    tree = pep503([GOOD], pages=["/whl/cpu"], files="/whl/cpu", indexes=False)
    tree |= pep503([FILELOCK], pages=["/simple"], files="/files")
    tree.write(tmp_path / "up")
    opened: list[str] = []
    real_init = zipfile.ZipFile.__init__

    def counting_init(self, file, *args, **kwargs):
        if isinstance(file, (str, Path)) and str(file).endswith(".whl"):
            opened.append(Path(file).name)
        real_init(self, file, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", counting_init)
    res, _took = _sync_served(tmp_path, [])
    assert res.verify == "ok"
    assert sorted(opened) == sorted([GOOD.filename, FILELOCK.filename])
    out = tmp_path / "out"
    for w in (GOOD, FILELOCK):
        assert (out / f"packages/{w.filename.split('-')[0]}/{w.filename}.metadata").read_bytes() == w.metadata


def test_early_reads_keep_a_landed_wheels_metadata_for_those_very_bytes_only(tmp_path):
    """An early download's METADATA is read as it lands; kept for its path and sha256 only,
    and a file that is no wheel is left to reject_bad_wheels' own read and message."""
    from concurrent.futures import Future

    from torchdepot.fetch import FetchResult
    from torchdepot.sync.download import EarlyReads

    (tmp_path / "good.whl").write_bytes(GOOD.data)
    (tmp_path / "junk.whl").write_bytes(b"not a zip" * 100)
    reads = EarlyReads(tmp_path)
    for name in ("good.whl", "junk.whl", "failed.whl"):
        fut: Future = Future()
        reads.watch(fut, "torch", f"http://127.0.0.1:9/{name}")
        fut.set_result(FetchResult(key=name, status="failed" if name == "failed.whl" else "downloaded",
                                   sha256="a" * 64))
    assert reads.get("good.whl", "a" * 64) == GOOD.metadata
    assert reads.get("good.whl", "b" * 64) is None  # other bytes than those read
    assert reads.get("junk.whl", "a" * 64) is None
    assert reads.get("failed.whl", "a" * 64) is None
