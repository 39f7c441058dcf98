"""PEP 691 JSON simple pages, and the content negotiation that picks JSON or HTML.

The PyTorch index only serves HTML; other indexes (and mirrors of them) may offer
``application/vnd.pypi.simple.v1+json``. We ask for JSON first and let the response's
Content-Type decide which parser runs.
"""

from __future__ import annotations

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.sources.links import Page, make_link
from torchdepot.sources.pep503 import parse_html
from torchdepot.store.simple_json import HTML_MEDIA_TYPE, JSON_MEDIA_TYPE

# The media types are the ones the mirror itself serves (store.simple_json): named once.
ACCEPT = f"{JSON_MEDIA_TYPE}, {HTML_MEDIA_TYPE};q=0.2, text/html;q=0.1"


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _core_metadata(entry: dict) -> str | None:
    for key in ("core-metadata", "data-dist-info-metadata", "dist-info-metadata"):
        if key not in entry:
            continue
        value = entry[key]
        if value is True:
            return "true"
        if isinstance(value, dict):
            sha = value.get("sha256")
            return f"sha256={sha.lower()}" if isinstance(sha, str) and sha else "true"
        return None
    return None


def _yanked(value) -> str | None:
    if value is True:
        return ""
    if isinstance(value, str) and value:
        return value
    return None


def parse_json(body: bytes, url: str) -> Page:
    """Parse a PEP 691 project page (``files``) or root page (``projects``).

    Malformed entries are skipped and counted; a body that is not a JSON object gives an
    empty page with one warning."""
    page = Page(url=url)
    try:
        data = load_json(body, url)
    except TorchdepotError:
        page.warnings["invalid JSON page"] += 1
        return page
    if not isinstance(data, dict):
        page.warnings["JSON page is not an object"] += 1
        return page
    projects = data.get("projects")
    if isinstance(projects, list):
        for p in projects:
            name = p.get("name") if isinstance(p, dict) else None
            if isinstance(name, str) and name:
                page.projects.append(name)
            else:
                page.warnings["malformed project entry"] += 1
    files = data.get("files")
    if files is None:
        return page
    if not isinstance(files, list):
        page.warnings["'files' is not a list"] += 1
        return page
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            page.warnings["malformed file entry"] += 1
            continue
        hashes = entry.get("hashes")
        sha = hashes.get("sha256") if isinstance(hashes, dict) else None
        sha = sha.lower() if isinstance(sha, str) and len(sha) == 64 else None
        size = entry.get("size")
        link = make_link(
            url, entry["url"], page,
            sha256=sha,
            requires_python=_str(entry.get("requires-python")),
            core_metadata=_core_metadata(entry),
            yanked=_yanked(entry.get("yanked")),
            upload_time=_str(entry.get("upload-time")),
            size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        )
        if link is None:
            continue
        if not link.filename:
            page.warnings["file entry without a filename"] += 1
            continue
        page.links.append(link)
    return page


def parse_response(body: bytes, content_type: str | None, url: str) -> Page:
    """Dispatch on the response's Content-Type: PEP 691 JSON, else HTML."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == JSON_MEDIA_TYPE or (ctype == "application/json" and body[:1] == b"{"):
        return parse_json(body, url)
    return parse_html(body, url)
