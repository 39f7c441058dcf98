"""The publish's silent phases report progress through plain callables: the index pages
rendered (``store.pages.build_pages(on_step=...)``, of ``page_count``) and written
(``store.pages.publish(on_step=...)``), and the files a closing check hashes
(``sync.check.verify_mirror(on_step=...)``), each counted against the total the caller's bar
(``sync.reads.Count``) was opened with. The bars themselves are seen on a
terminal in tests/test_progress_phases.py.

Invariants: everything under ``tmp_path``; no network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torchdepot.store import manifest as mf
from torchdepot.store.index_file import IndexFile
from torchdepot.store.pages import build_pages, page_count, publish
from torchdepot.sync.check import verify_mirror, verify_published
from torchdepot.sync.reads import Count


def _mirror(root: Path, n: int) -> tuple[mf.Manifest, dict[str, bytes]]:
    """``n`` small wheels (bytes are never opened as zips here) listed and linked by one accelerator."""
    entries, files = [], []
    for i in range(n):
        data = f"wheel {i}".encode()
        path = f"packages/demo{i}/demo{i}-1.0-py3-none-any.whl"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        entries.append(mf.FileEntry(path=path, sha256=sha, size=len(data), kind="wheel", project=f"demo{i}",
                                    version="1.0"))
        files.append(IndexFile(project=f"demo{i}", filename=path.rsplit("/", 1)[-1], path=path, sha256=sha,
                               size=len(data)))
    manifest = mf.Manifest(files=entries)
    mf.save(root, manifest)
    return manifest, build_pages({"cpu": files})


class Steps:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)


def test_build_counts_every_page_rendered_against_page_count():
    """page_count is exact without rendering, also where paths could meet (an accelerator named
    like a project, an accelerator with no file: no JSON twin for its empty root)."""
    def wheel(project: str, acc: str) -> IndexFile:
        name = f"{project}-1.0-py3-none-any.whl"
        return IndexFile(project=project, filename=name, path=f"packages/{project}/{acc}/{name}", sha256="0" * 64)

    variants = {"cpu": [wheel("torch", "cpu"), wheel("cu118", "cpu"), wheel("numpy", "cpu")],
                "cu118": [wheel("torch", "cu118")], "empty": []}
    steps = Steps()
    pages = build_pages(variants, on_step=steps)
    assert steps.calls == [1] * len(pages)
    assert page_count(variants) == len(pages) == len(build_pages(variants))
    assert "empty/index.html" in pages
    assert "empty/index.json" not in pages


def test_publish_counts_every_page_written_and_all_of_them_when_they_are_live(tmp_path):
    _manifest, pages = _mirror(tmp_path, 3)
    assert len(pages) > 3  # per-accelerator and flat pages, their JSON twins, the roots
    steps = Steps()
    _gen, changed = publish(tmp_path, pages, on_step=steps)
    assert changed
    assert steps.calls == [1] * len(pages)
    again = Steps()
    assert publish(tmp_path, pages, on_step=again) == (_gen, False)
    assert again.calls == [len(pages)]  # nothing written: the bar closes full, not at 0 %
    assert publish(tmp_path, pages) == (_gen, False)  # on_step optional


def test_verify_counts_every_manifest_file_checked_even_the_bad_ones(tmp_path):
    manifest, pages = _mirror(tmp_path, 4)
    publish(tmp_path, pages)
    steps = Steps()
    report = verify_mirror(tmp_path, on_step=steps)
    assert report.ok, report.problems
    assert steps.calls == [1] * len(manifest.files)
    (tmp_path / manifest.files[0].path).unlink()  # missing and corrupt files are checked files too
    (tmp_path / manifest.files[1].path).write_bytes(b"other")
    steps = Steps()
    report = verify_mirror(tmp_path, on_step=steps)
    assert not report.ok
    assert sum(steps.calls) == len(manifest.files) == report.checked


def test_closing_check_off_a_terminal_draws_nothing(tmp_path, capfd):
    """``progress=None`` off a terminal and ``False`` (``--json``): no bar, no line (as ``Count``)."""
    _manifest, pages = _mirror(tmp_path, 2)
    publish(tmp_path, pages)
    said: list[str] = []
    for progress in (None, False):
        assert verify_published(tmp_path, said.append, progress=progress).ok
    assert said == []
    assert capfd.readouterr().err == ""


def test_count_bar_reaches_its_total_through_the_callbacks(tmp_path):
    """The bar the sync opens is filled exactly by the callbacks (a forced bar: ``enabled=True``)."""
    manifest, pages = _mirror(tmp_path, 3)
    with Count(True, len(pages), "index pages", "pages") as bar:
        publish(tmp_path, pages, on_step=bar.step)
        assert bar.bar.n == bar.bar.total == len(pages)
    with Count(True, len(manifest.files), "verify", "files") as bar:
        verify_mirror(tmp_path, on_step=bar.step)
        assert bar.bar.n == bar.bar.total == len(manifest.files)
