"""PEP 691 JSON twins of the PEP 503 pages: ``index.json`` next to every ``index.html``.

Built from the very :class:`~torchdepot.store.index_file.IndexFile` records the HTML pages are
built from (one source, two renderings), so the two can never disagree on a file, a
hash or a link. Project pages are ``application/vnd.pypi.simple.v1+json`` at api-version
1.1 (PEP 700: ``size``, ``upload-time``, ``versions``); each file carries ``url``
(relative, exactly the HTML page's href), ``hashes.sha256``, ``requires-python``,
``core-metadata`` (PEP 714, with its sha256, plus the older ``dist-info-metadata``
spelling) and ``yanked``.

Invariants: nothing is invented. ``upload-time`` appears only when upstream gave one in
the PEP 700 shape; a page with a file of unknown size is published at api-version 1.0
without ``size`` rather than with a guess. Output is deterministic (sorted keys and
files), so equal inputs give equal bytes and the publish generation hash stays stable.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from torchdepot.errors import ParseError
from torchdepot.model.wheelname import split_variant_label
from torchdepot.store.index_file import IndexFile

JSON_MEDIA_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_MEDIA_TYPE = "application/vnd.pypi.simple.v1+html"
JSON_PAGE = "index.json"
HTML_PAGE = "index.html"
API_VERSION = "1.1"  # PEP 700
API_VERSION_NO_SIZE = "1.0"  # a page that cannot state every size (PEP 700 makes size mandatory)
# PEP 700: UTC, "Z" suffix, seconds, up to 6 fractional digits.
_UPLOAD_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


@dataclass(frozen=True)
class JsonFile:
    """One file entry of a PEP 691 project page."""

    filename: str
    url: str  # relative to the page, as the HTML page's href (without the #sha256 fragment)
    sha256: str
    size: int | None = None
    requires_python: str | None = None
    metadata_sha256: str | None = None
    upload_time: str | None = None
    yanked: bool | str = False  # PEP 592: False, True, or the reason


def valid_upload_time(value: str | None) -> str | None:
    """``value`` when it is a PEP 700 upload time, else None (never passed on malformed)."""
    return value if isinstance(value, str) and _UPLOAD_TIME.fullmatch(value) else None


def version_of(filename: str) -> str | None:
    try:
        if filename.endswith(".whl"):  # a PEP 825 variant label is not part of the version
            return str(parse_wheel_filename(split_variant_label(filename)[0])[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, ParseError):
        return None


def _entry(f: JsonFile) -> dict[str, object]:
    out: dict[str, object] = {"filename": f.filename, "url": f.url, "hashes": {"sha256": f.sha256}}
    if f.size is not None:
        out["size"] = f.size
    if f.requires_python:
        out["requires-python"] = f.requires_python
    if f.metadata_sha256:
        meta = {"sha256": f.metadata_sha256}
        out["core-metadata"] = meta  # PEP 714
        out["dist-info-metadata"] = meta  # PEP 658 spelling, for older clients
    else:
        out["core-metadata"] = False
    if f.upload_time:
        out["upload-time"] = f.upload_time
    out["yanked"] = f.yanked
    return out


def _dump(doc: dict[str, object]) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def project_page(project: str, files: Iterable[JsonFile]) -> bytes:
    """A PEP 691 project page (api-version 1.1 when every size is known)."""
    files = sorted({f.url: f for f in files}.values(), key=lambda f: (f.filename, f.yanked is not False))
    sized = all(f.size is not None for f in files)
    versions = sorted({v for f in files if (v := version_of(f.filename))})
    doc: dict[str, object] = {"meta": {"api-version": API_VERSION if sized else API_VERSION_NO_SIZE},
                 "name": project, "files": [_entry(f) for f in files]}
    if sized:
        doc["versions"] = versions
    return _dump(doc)


def root_page(projects: Iterable[str]) -> bytes:
    """The PEP 691 project list."""
    return _dump({"meta": {"api-version": API_VERSION},
                  "projects": [{"name": p} for p in sorted(set(projects))]})


def json_file(f: IndexFile, depth: int) -> JsonFile:
    """An IndexFile as seen from a page ``depth`` directories below the root (same href as HTML)."""
    url = "../" * depth + "/".join(urllib.parse.quote(p) for p in f.path.split("/"))
    return JsonFile(filename=f.filename, url=url, sha256=f.sha256, size=f.size,
                    requires_python=f.requires_python, metadata_sha256=f.metadata_sha256,
                    upload_time=valid_upload_time(f.upload_time), yanked=False if f.yanked is None else f.yanked or True)


def twin_plan(html_pages: Iterable[str], variants: Mapping[str, list[IndexFile]]) -> dict[str, Callable[[], bytes]]:
    """{path under whl/ of each HTML page} -> {the path of its JSON twin, same directories: the
    twin's renderer}, so a caller knows how many pages it will render (a progress total) and
    renders them one by one.

    Mirrors :func:`torchdepot.store.pages.build_pages`: ``<acc>/<project>/`` (depth 3),
    ``<project>/`` aggregated (depth 2), ``<acc>/`` and the root project lists. Pure.
    """
    by_acc: dict[str, dict[str, list[IndexFile]]] = {}
    everything: dict[str, list[IndexFile]] = {}
    for acc, files in variants.items():
        for f in files:
            by_acc.setdefault(acc, {}).setdefault(f.project, []).append(f)
            everything.setdefault(f.project, []).append(f)
    out: dict[str, Callable[[], bytes]] = {}
    for rel in html_pages:
        if not rel.endswith(HTML_PAGE):
            continue
        parts = rel.split("/")[:-1]
        twin = "/".join([*parts, JSON_PAGE])
        if not parts:
            out[twin] = partial(root_page, list(everything) + list(variants))
        elif len(parts) == 1 and parts[0] in by_acc:
            out[twin] = partial(root_page, by_acc[parts[0]])
        elif len(parts) == 1 and parts[0] in everything:
            out[twin] = partial(_project_twin, parts[0], everything[parts[0]], 2)
        elif len(parts) == 2 and parts[1] in by_acc.get(parts[0], {}):
            out[twin] = partial(_project_twin, parts[1], by_acc[parts[0]][parts[1]], 3)
    return out


def _project_twin(project: str, files: list[IndexFile], depth: int) -> bytes:
    return project_page(project, [json_file(f, depth) for f in files])
