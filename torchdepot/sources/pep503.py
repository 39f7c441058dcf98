"""PEP 503 HTML pages (project pages, root pages, find-links pages such as torch_stable.html).

Pure: bytes + base URL in, :class:`Page` out. Entries that cannot be links to files
(non-HTTP schemes, empty hrefs, path tricks, undecodable bytes) are skipped and counted
in ``page.warnings``; nothing here raises on hostile input.

Index pages are machine-written lists of ``<a>`` tags, so a tag scanner (regexes over
the decoded text, comments removed first) replaces a full HTML parser: the PyTorch root
pages carry thousands of anchors and this keeps crawling near the speed of a plain
regex scan (see bench/parse.py).
"""

from __future__ import annotations

import html
import re

from torchdepot.sources.links import Page, make_link

# A start tag's attribute run: quoted values may contain ">". Nothing follows the repeat in
# these patterns, so the first greedy path is the match and it never backtracks (the same
# result as possessive quantifiers, which Python 3.10 lacks); a tag that does not close stops
# the scan (see _tags), so the scanner is linear in the page size even on hostile input
# (``<a`` repeated, no ``>``).
_RUN = re.compile(r"""(?:[^>"']+|"[^"]*"|'[^']*')*""")
_ANCHOR_START = re.compile(r"<a(?=[\s>/])", re.I)
_BASE_START = re.compile(r"<base(?=[\s>/])", re.I)
_LABEL = re.compile(r"[^<]*")
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"'=<`]+)))?""")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_RAWTEXT = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|\Z)", re.S | re.I)
_RAWTEXT_START = re.compile(r"<(?:script|style)\b", re.I)

# Cloudflare and similar bot walls answer 200/403 with an HTML page instead of the index.
_CHALLENGE_MARKERS = (
    "cf-chl-", "challenge-platform", "<title>just a moment...</title>", "cf_chl_opt",
    "<title>attention required! | cloudflare</title>",
)


def attributes(run: str) -> dict[str, str | None]:
    """Attributes of one start tag: lower-cased names, entity-decoded values (first wins)."""
    out: dict[str, str | None] = {}
    for m in _ATTR.finditer(run):
        name = m.group(1).lower()
        if name in out:
            continue
        value = m.group(2)
        if value is None:
            value = m.group(3)
        if value is None:
            value = m.group(4)
        if value is not None and "&" in value:
            value = html.unescape(value)
        out[name] = value
    return out


def _tags(text: str, start: re.Pattern, page: Page):
    """``(attribute run, label)`` of each start tag ``start`` finds, in order.

    A tag whose attribute run reaches the end of the page (no ``>``, or a quote that never
    closes) swallows the rest of the page, as in an HTML tokenizer: the scan stops there
    with one warning instead of rescanning the tail from every later ``<a`` (quadratic)."""
    pos = 0
    while True:
        m = start.search(text, pos)
        if m is None:
            return
        run = _RUN.match(text, m.end())
        assert run is not None  # the pattern matches the empty string
        end = run.end()
        if end >= len(text) or text[end] != ">":
            page.warnings["unterminated tag (rest of page ignored)"] += 1
            return
        label = _LABEL.match(text, end + 1)
        assert label is not None  # the pattern matches the empty string
        yield run.group(), label.group()
        pos = label.end()


def decode_body(body: bytes, page: Page) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        page.warnings["invalid utf-8 (decoded with replacement)"] += 1
        return body.decode("utf-8", errors="replace")


def is_challenge(text: str) -> bool:
    """True for a bot-challenge page served in place of an index (Cloudflare's)."""
    head = text[:20000].lower()
    return any(m in head for m in _CHALLENGE_MARKERS)


def _meta(attrs: dict[str, str | None]) -> dict:
    meta = None
    for key in ("data-core-metadata", "data-dist-info-metadata"):  # PEP 714 name first
        if key in attrs:
            meta = attrs[key] or "true"
            break
    if meta is not None and meta.lower() == "false":
        meta = None
    yanked = None
    if "data-yanked" in attrs:
        yanked = attrs["data-yanked"] or ""
    return {
        "requires_python": attrs.get("data-requires-python") or None,
        "core_metadata": meta,
        "yanked": yanked,
        "upload_time": attrs.get("data-upload-time") or None,
    }


def parse_html(body: bytes, base_url: str) -> Page:
    """Parse an HTML index page; hrefs are resolved against ``base_url`` (or ``<base>``).

    Links to files go to ``page.links``; directory links (``torch/``) on a root page go
    to ``page.projects``. A challenge page yields no links and one warning."""
    page = Page(url=base_url)
    text = decode_body(body, page)
    if is_challenge(text):
        page.warnings["bot challenge page instead of an index"] += 1
        return page
    if "<!--" in text:
        text = _COMMENT.sub("", text)
    if _RAWTEXT_START.search(text):  # anchors inside scripts are not links
        text = _RAWTEXT.sub("", text)
    base = base_url
    if "<base" in text or "<BASE" in text:
        m = next(_tags(text, _BASE_START, Page(url=base_url)), None)
        if m:
            href: str | None = (attributes(m[0]).get("href") or "").strip()
            if href:
                probe = Page(url=base_url)
                link = make_link(base_url, href, probe)
                if link is not None:
                    base = link.url
    for run, label in _tags(text, _ANCHOR_START, page):
        if run.startswith(' href="') and run.endswith('"') and run.count('"') == 2 and "&" not in run:
            attrs = None  # the machine-written common case: <a href="...">; no other attributes
            href = run[7:-1]
        else:
            attrs = attributes(run) if run.strip() else {}
            href = attrs.get("href")
        if href is None:
            page.warnings["anchor without href"] += 1
            continue
        data = _meta(attrs) if attrs and "data-" in run else {}
        link = make_link(base, href, page, **data)
        if link is None:
            continue
        if not link.filename:
            # a root page lists projects as directory links ("torch/")
            label = label.strip()
            if "&" in label:
                label = html.unescape(label)
            project = label or link.url.rstrip("/").rsplit("/", 1)[-1]
            page.projects.append(project)
            continue
        page.links.append(link)
    return page

