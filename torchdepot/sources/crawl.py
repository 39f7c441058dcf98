"""The crawl edge: fetch index pages through one :class:`torchdepot.net.http.Client`, parse
them with the pure parsers, and return wheels in the shared model.

A PyTorch-style index is addressed by its base (``http://host/whl``): the aggregate
project page is ``<base>/<project>/`` and a variant's page ``<base>/<acc>/<project>/``;
a variant index (``http://host/whl/cu118``) is itself such a base. Anything unusable on
a page (non-wheel files, hostile links, a bot-challenge page) is skipped, counted, and
reported once per crawl on stderr.
"""

from __future__ import annotations

import collections
import sys
import urllib.parse
from typing import Callable, Iterable

from torchdepot.errors import ParseError, UpstreamError
from torchdepot.model.wheelname import WheelFile, parse_wheel
from torchdepot.sources.links import Link, Page, warnings_summary
from torchdepot.sources.pep691 import ACCEPT, parse_response

Warn = Callable[[str], None]


class CrawlResult(list):
    """A list of ``(Link, WheelFile)`` that also carries the crawl's warning counts."""

    def __init__(self, items=(), warnings: collections.Counter | None = None, pages: int = 0):
        super().__init__(items)
        self.warnings = warnings if warnings is not None else collections.Counter()
        self.pages = pages


def _stderr(message: str) -> None:
    print(f"torchdepot: warning: {message}", file=sys.stderr)


def normalize_project(name: str) -> str:
    """PEP 503 normalised project name (``Jinja2`` -> ``jinja2``)."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def page_url(base_url: str, *segments: str) -> str:
    """``page_url("http://h/whl", "cu118", "torch")`` -> ``http://h/whl/cu118/torch/``."""
    base = base_url.rstrip("/")
    quoted = "/".join(urllib.parse.quote(s.strip("/"), safe="") for s in segments if s)
    return f"{base}/{quoted}/" if quoted else f"{base}/"


def fetch_page(client, url: str) -> Page:
    """GET one simple page asking for PEP 691 JSON first; parse by Content-Type."""
    body, meta = client.get_bytes(url, headers={"Accept": ACCEPT})
    return parse_response(body, meta.get("content-type"), meta.get("url") or url)


def fetch_project_page(client, index_url: str, project: str) -> Page:
    """The project page ``<index_url>/<project>/``.

    Tries the name as given first (the 2023 PyTorch capture keeps ``Jinja2/``), then the
    PEP 503 normalised name when that differs."""
    url = page_url(index_url, project)
    try:
        return fetch_page(client, url)
    except UpstreamError:
        norm = normalize_project(project)
        if norm == project:
            raise
        return fetch_page(client, page_url(index_url, norm))


def fetch_root(client, index_url: str) -> Page:
    """The root page ``<index_url>/`` (its ``projects``)."""
    return fetch_page(client, page_url(index_url))


def wheels_of(page: Page, warnings: collections.Counter,
              project: str | None = None) -> list[tuple[Link, WheelFile]]:
    """The page's links that are wheels (of ``project`` when given), parsed."""
    out = []
    want = normalize_project(project) if project else None
    for link in page.links:
        if not link.filename.endswith(".whl"):
            warnings["not a wheel"] += 1
            continue
        try:
            wheel = parse_wheel(link.url)
        except ParseError:
            warnings["unparseable wheel filename"] += 1
            continue
        if want and wheel.name != want:
            warnings["wheel of another project"] += 1
            continue
        out.append((link, wheel))
    return out


def crawl_index(client, base_url: str, projects: Iterable[str] | None = None,
                accelerators: Iterable[str] | None = None, *,
                warn: Warn | None = _stderr) -> CrawlResult:
    """Crawl a PyTorch-style index for ``projects`` -> ``[(Link, WheelFile)]``.

    ``accelerators=None`` reads the aggregate pages ``<base>/<project>/`` (or, for a
    variant index such as ``.../whl/cu118``, its own pages); otherwise each
    ``<base>/<acc>/<project>/``; a variant page that does not exist is a warning, not an
    error, unless no page at all could be read. ``projects=None`` takes every project of
    the root page. Duplicate URLs (variant pages repeat the variant-less files) are kept
    once. Warnings are summarised once through ``warn`` (stderr by default)."""
    warnings: collections.Counter = collections.Counter()
    if projects is None:
        root = fetch_root(client, base_url)
        warnings.update(root.warnings)
        projects = root.projects
    projects = list(projects)
    bases = [base_url] if accelerators is None else [page_url(base_url, a).rstrip("/") for a in accelerators]
    seen: set[str] = set()
    items: list[tuple[Link, WheelFile]] = []
    pages, failures = 0, []
    for base in bases:
        for project in projects:
            try:
                page = fetch_project_page(client, base, project)
            except UpstreamError as exc:
                if accelerators is None and len(projects) == 1:
                    raise
                failures.append(str(exc))
                warnings["page not available"] += 1
                continue
            pages += 1
            warnings.update(page.warnings)
            for link, wheel in wheels_of(page, warnings, project):
                if link.url in seen:
                    continue
                seen.add(link.url)
                items.append((link, wheel))
    if pages == 0 and failures:
        raise UpstreamError(failures[0] if len(failures) == 1 else f"no index page could be read ({failures[0]}; {len(failures) - 1} more)")
    if warnings and warn is not None:
        warn(f"{base_url}: skipped {sum(warnings.values())} entries ({warnings_summary(warnings)})")
    return CrawlResult(items, warnings, pages)


__all__ = [
    "CrawlResult", "crawl_index", "fetch_page", "fetch_project_page", "fetch_root", "page_url",
    "wheels_of",
]
