"""Write the PEP 503 simple index laid out like download.pytorch.org, and swap it in atomically.

Pages: ``whl/<accelerator>/<project>/index.html``, ``whl/<accelerator>/index.html``,
aggregated ``whl/<project>/index.html`` and ``whl/index.html``. Links are relative (the
mirror works over ``file://`` and under any HTTP sub-path), carry ``#sha256=`` of the bytes
we stored, ``data-requires-python`` and PEP 658/714 ``data-core-metadata`` /
``data-dist-info-metadata``.

Pages are built into ``.publish/<generation>/whl`` (the generation is a hash of the
pages, so equal inputs give the same name and bytes) and ``whl`` is a symlink replaced
with ``os.replace``: a reader sees the old index or the new one, never a mix. The
previous generation is kept (a reader that resolved the old link mid-install still
finds its pages); older ones are removed.
"""

from __future__ import annotations

import contextlib
import email.parser
import hashlib
import html
import os
import shutil
import urllib.parse
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError
from torchdepot.store import simple_json
from torchdepot.store.fsutil import atomic_write_bytes, fsync_dir, safe_join
from torchdepot.store.index_file import IndexFile as IndexFile  # re-exported: the pages' record
from torchdepot.store.layout import INDEX_LINK, PUBLISH_DIR, build_temp_name, metadata_path

# -- PEP 658 metadata -------------------------------------------------------------------
# A real METADATA is kilobytes (torch's is ~10 kB); a wheel whose METADATA inflates past this
# is refused before it is inflated whole (a 64 KiB zip can hold 512 MiB of it).
MAX_METADATA_BYTES = 10 * 1000 * 1000


def metadata_member(zf: zipfile.ZipFile, project: str, where: str) -> bytes:
    """The ``*.dist-info/METADATA`` member of an open wheel, inflated at most to the cap.
    The one reader of a wheel's METADATA (local wheels here; remote ones in sources.wheelmeta)."""
    names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
    want = canonicalize_name(project)
    names.sort(key=lambda n: canonicalize_name(n.split("-", 1)[0]) != want)
    if not names:
        raise TorchdepotError(f"{where}: no .dist-info/METADATA in the wheel")
    info = zf.getinfo(names[0])
    too_big = f"{where}: {names[0]} is larger than the {MAX_METADATA_BYTES}-byte cap for METADATA; refused"
    if info.file_size > MAX_METADATA_BYTES:
        raise TorchdepotError(too_big)
    with zf.open(info) as fh:  # streamed: the declared size may lie
        data = fh.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise TorchdepotError(too_big)
    return data


def wheel_metadata(wheel: Path, project: str) -> bytes:
    """``*.dist-info/METADATA`` of a wheel, read from the zip's central directory (no full load)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return metadata_member(zf, project, str(wheel))
    except (zipfile.BadZipFile, OSError) as exc:
        raise TorchdepotError(f"{wheel}: not a readable wheel ({exc})") from None


def requires_python_of(metadata: bytes) -> str | None:
    msg = email.parser.BytesHeaderParser().parsebytes(metadata)
    value = msg.get("Requires-Python")
    return str(value).strip() or None if value is not None else None


def ensure_metadata(root: Path, path: str, project: str, *, fsync: bool = True,
                    data: bytes | None = None) -> tuple[str, str | None, int]:
    """Write ``<path>.metadata`` next to a stored wheel (only if it changed; ``fsync=False``:
    without flushing it to disk, as the wheels themselves are unless the spec says ``fsync``).
    ``data``: that wheel's METADATA as :func:`metadata_member` already read it this run (the zip
    is then not opened again: its central directory costs ~40 ms for torch).

    Returns (sha256 of the metadata file, Requires-Python, size).
    """
    meta_path = safe_join(root, metadata_path(path))
    if data is None:
        data = wheel_metadata(safe_join(root, path), project)
    try:
        current = meta_path.read_bytes()
    except OSError:
        current = None
    if current != data:
        atomic_write_bytes(meta_path, data, fsync=fsync)
    return hashlib.sha256(data).hexdigest(), requires_python_of(data), len(data)


# -- pages ------------------------------------------------------------------------------
def _page(title: str, anchors: list[str]) -> bytes:
    body = "".join(a + "<br/>\n" for a in anchors)
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n"
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}</body>\n</html>\n"
    ).encode()


def _file_anchor(f: IndexFile, depth: int) -> str:
    href = "../" * depth + "/".join(urllib.parse.quote(p) for p in f.path.split("/")) + f"#sha256={f.sha256}"
    attrs = [f'href="{html.escape(href)}"']
    if f.requires_python:
        attrs.append(f'data-requires-python="{html.escape(f.requires_python)}"')
    if f.metadata_sha256:
        attrs.append(f'data-dist-info-metadata="sha256={f.metadata_sha256}"')
        attrs.append(f'data-core-metadata="sha256={f.metadata_sha256}"')
    if f.yanked is not None:
        attrs.append(f'data-yanked="{html.escape(f.yanked)}"')
    return f"<a {' '.join(attrs)}>{html.escape(f.filename)}</a>"


def _project_page(project: str, files: list[IndexFile], depth: int) -> bytes:
    # a yanked copy after the live file of its name: uv takes the first of equal candidates
    files = sorted({f.path: f for f in files}.values(), key=lambda f: (f.filename, f.yanked is not None))
    return _page(f"Links for {project}", [_file_anchor(f, depth) for f in files])


def _root_page(title: str, projects: list[str]) -> bytes:
    return _page(title, [f'<a href="{urllib.parse.quote(p)}/">{html.escape(p)}</a>' for p in sorted(set(projects))])


def build_pages(variants: dict[str, list[IndexFile]],
                on_step: Callable[[int], None] | None = None) -> dict[str, bytes]:
    """{accelerator: files its targets need} -> {path under whl/: page bytes}. Pure but for
    ``on_step``: called once per page rendered, of :func:`page_count` pages (a caller's progress)."""
    pages: dict[str, bytes] = {}
    for rel, render in sorted(_plan(variants).items()):
        pages[rel] = render()
        if on_step is not None:
            on_step(1)
    return pages


def page_count(variants: dict[str, list[IndexFile]]) -> int:
    """``len(build_pages(variants))``, no page rendered (grouping only: milliseconds for 10,000 files)."""
    return len(_plan(variants))


def _plan(variants: dict[str, list[IndexFile]]) -> dict[str, Callable[[], bytes]]:
    """{path under whl/: the renderer of its page}: the one list of pages, counted and built."""
    pages: dict[str, Callable[[], bytes]] = {}
    everything: dict[str, list[IndexFile]] = {}
    for acc, files in sorted(variants.items()):
        by_project: dict[str, list[IndexFile]] = {}
        for f in files:
            by_project.setdefault(f.project, []).append(f)
            everything.setdefault(f.project, []).append(f)
        for project, pfiles in by_project.items():
            # whl/<acc>/<project>/index.html -> ../../../packages/...
            pages[f"{acc}/{project}/index.html"] = partial(_project_page, project, pfiles, 3)
        pages[f"{acc}/index.html"] = partial(_root_page, f"Simple index ({acc})", list(by_project))
    for project, pfiles in everything.items():
        pages[f"{project}/index.html"] = partial(_project_page, project, pfiles, 2)
    pages["index.html"] = partial(_root_page, "Simple index", list(everything) + list(variants))
    pages.update(simple_json.twin_plan(list(pages), variants))  # PEP 691 index.json twins (store/simple_json.py)
    return pages


def generation_of(pages: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for path, data in sorted(pages.items()):
        h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def current_generation(root: Path) -> str | None:
    link = Path(root) / INDEX_LINK
    if not link.is_symlink():
        return None
    parts = Path(os.readlink(link)).parts
    return parts[1] if len(parts) == 3 and parts[0] == PUBLISH_DIR else None


def publish(root: Path, pages: dict[str, bytes], on_step: Callable[[int], None] | None = None) -> tuple[str, bool]:
    """Build ``pages`` into a new generation and swap ``<root>/whl`` to it.

    Returns (generation, changed). Same pages as the live generation: nothing is written.
    ``on_step``: called with the number of pages written (a caller's progress), all of them at
    once when the live generation already holds them.
    """
    root = Path(root)
    gen = generation_of(pages)
    live = current_generation(root)
    link = root / INDEX_LINK
    if link.exists() and not link.is_symlink():
        raise TorchdepotError(f"{link}: exists and is not the index symlink torchdepot manages; move it away")
    if live == gen and (root / PUBLISH_DIR / gen / INDEX_LINK / "index.html").is_file():
        if on_step is not None:
            on_step(len(pages))
        return gen, False
    build = new_build_dir(root, gen)
    for rel, data in pages.items():
        path = safe_join(build / INDEX_LINK, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if on_step is not None:
            on_step(1)
    install_generation(root, build, gen)
    prune(root, keep={g for g in (gen, live) if g is not None})
    return gen, True


def new_build_dir(root: Path, gen: str) -> Path:
    """An empty place to build generation ``gen`` (``<build>/whl/...``), on the filesystem of
    its final place so :func:`install_generation` can rename it in."""
    build = Path(root) / PUBLISH_DIR / build_temp_name(gen)
    shutil.rmtree(build, ignore_errors=True)
    return build


def install_generation(root: Path, build: Path, gen: str) -> None:
    """Install ``build`` (a directory holding ``whl/``) as generation ``gen`` and swap the
    ``<root>/whl`` symlink to it with one rename: readers see the old index or the new one."""
    root = Path(root)
    for d, _dirs, _files in os.walk(build, topdown=False):
        fsync_dir(Path(d))
    gen_dir = root / PUBLISH_DIR / gen
    shutil.rmtree(gen_dir, ignore_errors=True)
    os.replace(build, gen_dir)
    fsync_dir(gen_dir.parent)
    tmp_link = root / build_temp_name(INDEX_LINK)
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(f"{PUBLISH_DIR}/{gen}/{INDEX_LINK}", tmp_link)
    os.replace(tmp_link, root / INDEX_LINK)
    fsync_dir(root)


def prune(root: Path, keep: set[str]) -> None:
    """Remove generations other than ``keep`` (live + previous) and stale temp builds."""
    pub = Path(root) / PUBLISH_DIR
    if not pub.is_dir():
        return
    for entry in pub.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
