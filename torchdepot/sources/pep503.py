"""PEP 503 HTML pages (project pages, root pages, find-links pages such as torch_stable.html).

Pure: bytes + base URL in, :class:`Page` out. Entries that cannot be links to files
(non-HTTP schemes, empty hrefs, undecodable bytes) are skipped and counted in
``page.warnings``; nothing here raises on hostile input.
"""

from __future__ import annotations

import html.parser
import urllib.parse

from .links import ALLOWED_SCHEMES, Link, Page, filename_of, split_fragment


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], list[str]]] = []
        self.base: str | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._text = []
            self.anchors.append((dict(attrs), self._text))
        elif tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def decode_body(body: bytes, page: Page) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        page.warnings["invalid utf-8 (decoded with replacement)"] += 1
        return body.decode("utf-8", errors="replace")


def parse_html(body: bytes, base_url: str) -> Page:
    """Parse an HTML index page; hrefs are resolved against ``base_url`` (or ``<base>``)."""
    page = Page(url=base_url)
    text = decode_body(body, page)
    parser = _Anchors()
    try:
        parser.feed(text)
        parser.close()
    except (AssertionError, ValueError):  # malformed markup in old html.parser versions
        page.warnings["malformed html"] += 1
    base = base_url
    if parser.base:
        base = urllib.parse.urljoin(base_url, parser.base)
    for attrs, text_parts in parser.anchors:
        href = (attrs.get("href") or "").strip()
        if not href:
            page.warnings["anchor without href"] += 1
            continue
        try:
            absolute = urllib.parse.urljoin(base, href)
            parts = urllib.parse.urlsplit(absolute)
        except ValueError:
            page.warnings["unparseable href"] += 1
            continue
        if parts.scheme not in ALLOWED_SCHEMES and not (parts.scheme == "file" and base.startswith("file:")):
            page.warnings[f"refused {parts.scheme or 'schemeless'}: link"] += 1
            continue
        url, sha = split_fragment(absolute)
        name = filename_of(url)
        label = "".join(text_parts).strip()
        if not name:
            # a root page lists projects as directory links ("torch/")
            project = label or url.rstrip("/").rsplit("/", 1)[-1]
            page.projects.append(urllib.parse.unquote(project))
            continue
        meta = None
        for key in ("data-core-metadata", "data-dist-info-metadata"):  # PEP 714 name first
            if key in attrs:
                meta = attrs[key] or "true"
                break
        yanked = attrs.get("data-yanked") if "data-yanked" in attrs else None
        if "data-yanked" in attrs and yanked is None:
            yanked = ""
        page.links.append(
            Link(
                url=url,
                filename=name,
                sha256=sha,
                requires_python=attrs.get("data-requires-python") or None,
                core_metadata=meta if meta not in ("false",) else None,
                yanked=yanked,
                upload_time=attrs.get("data-upload-time") or None,
            )
        )
    return page
