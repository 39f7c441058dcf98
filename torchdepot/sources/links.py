"""The link model shared by every index crawler (PEP 503 HTML, PEP 691 JSON, find-links)."""

from __future__ import annotations

import collections
import json
import re
import urllib.parse
from dataclasses import dataclass, field

from torchdepot.model.wheelname import METADATA_SUFFIX

_HEX = re.compile(r"[0-9a-f]+")

ALLOWED_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Link:
    url: str  # absolute, without fragment
    filename: str  # decoded last path segment ("+" not "%2B")
    sha256: str | None = None  # from #sha256= or the JSON "hashes"
    requires_python: str | None = None
    core_metadata: str | None = None  # PEP 658/714: "true" or "sha256=<hex>"; None = not offered
    yanked: str | None = None  # None = not yanked; "" = yanked without reason
    upload_time: str | None = None
    size: int | None = None  # PEP 700 (JSON only)
    href: str | None = field(default=None, compare=False)  # the href exactly as the page wrote it

    @property
    def metadata_sha256(self) -> str | None:
        if self.core_metadata and self.core_metadata.startswith("sha256="):
            return self.core_metadata[len("sha256="):]
        return None

    @property
    def metadata_url(self) -> str | None:
        return self.url + METADATA_SUFFIX if self.core_metadata else None


@dataclass
class Page:
    url: str
    links: list[Link] = field(default_factory=list)
    warnings: collections.Counter = field(default_factory=collections.Counter)
    projects: list[str] = field(default_factory=list)  # for root pages: project names
    checked_hosts: set[str] = field(default_factory=set, repr=False, compare=False)


_LINK_FIELDS = ("url", "filename", "sha256", "requires_python", "core_metadata", "yanked", "upload_time", "size",
                "href")


def page_to_json(page: Page, tag: str) -> bytes:
    """A parsed page as JSON, so an unchanged page (HTTP 304) is not parsed again; ``tag``
    names the parser and the body it came from (checked by :func:`page_from_json`)."""
    rows = [[getattr(link, f) for f in _LINK_FIELDS] for link in page.links]
    return json.dumps({"tag": tag, "url": page.url, "links": rows, "warnings": dict(page.warnings),
                       "projects": page.projects}, separators=(",", ":")).encode()


def page_from_json(data: bytes, tag: str) -> Page | None:
    """The page :func:`page_to_json` wrote with the same ``tag``; None for anything else (never raises)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("tag") != tag or not isinstance(doc.get("url"), str):
        return None
    rows, warnings, projects = doc.get("links"), doc.get("warnings"), doc.get("projects")
    if not isinstance(rows, list) or not isinstance(warnings, dict) or not isinstance(projects, list):
        return None
    links = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(_LINK_FIELDS):
            return None
        values = dict(zip(_LINK_FIELDS, row, strict=True))
        if not isinstance(values["url"], str) or not isinstance(values["filename"], str):
            return None
        if not all(values[f] is None or isinstance(values[f], str) for f in _LINK_FIELDS if f not in ("size",)):
            return None
        if values["size"] is not None and (not isinstance(values["size"], int) or isinstance(values["size"], bool)):
            return None
        links.append(Link(**values))
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in warnings.items()) \
            or not all(isinstance(p, str) for p in projects):
        return None
    return Page(url=doc["url"], links=links, warnings=collections.Counter(warnings), projects=projects)


def split_fragment(href: str) -> tuple[str, str | None]:
    """``url#sha256=abc`` -> (url, "abc"); other or malformed fragments -> (url, None)."""
    url, _, frag = href.partition("#")
    if not frag:
        return url, None
    algo, _, value = frag.partition("=")
    value = value.lower()
    if algo.lower() == "sha256" and len(value) == 64 and _HEX.fullmatch(value):
        return url, value
    return url, None


def filename_of(url: str) -> str:
    """Decoded last path segment of a (fragment-less) URL."""
    path = url.split("?", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if "%" not in name:
        return name
    if name.count("%") == name.count("%2B"):  # PyTorch pages only ever escape "+"
        return name.replace("%2B", "+")
    return urllib.parse.unquote(name)


_UNSAFE_CHARS = re.compile(r"[\x00-\x1f/\\]")


def unsafe_filename(name: str) -> str | None:
    """Why a decoded filename must not be stored (path tricks), or None if it is safe."""
    if name in (".", ".."):
        return "path traversal in filename"
    m = _UNSAFE_CHARS.search(name)
    if m is None:
        return None
    if m.group() in "/\\":
        return "path separator in filename"
    return "control character in filename"


def resolve(base: str, href: str) -> str:
    """Absolute URL of ``href`` on a page at ``base``.

    Fast path for absolute ``http(s)`` hrefs without dot segments (the common case on
    PyTorch pages, thousands per page); everything else goes through ``urljoin``."""
    if (href.startswith("https://") or href.startswith("http://")) and "/." not in href:
        return href
    return urllib.parse.urljoin(base, href)


def _host_ok(url: str, scheme: str, hosts: set[str]) -> bool | None:
    """True if the URL has a usable host; None if it has none. Raises ValueError on a bad
    port. ``hosts`` caches netlocs already checked (pages repeat one or two hosts)."""
    start = len(scheme) + 3
    end = len(url)
    for sep in "/?#":
        i = url.find(sep, start)
        if i != -1 and i < end:
            end = i
    netloc = url[start:end]
    if netloc in hosts:
        return True
    parts = urllib.parse.urlsplit(url)
    parts.port  # noqa: B018 - raises ValueError on a bad port
    if not parts.hostname:
        return None
    hosts.add(netloc)
    return True


def make_link(base: str, href: str, page: Page, **meta) -> Link | None:
    """One checked :class:`Link`, or None (and a counted warning in ``page``)."""
    href = href.strip()
    if not href:
        page.warnings["anchor without href"] += 1
        return None
    try:
        absolute = resolve(base, href)
        scheme = absolute.split(":", 1)[0].lower() if ":" in absolute else ""
        if scheme not in ALLOWED_SCHEMES and not (scheme == "file" and base.startswith("file:")):
            page.warnings[f"refused {scheme or 'schemeless'}: link"] += 1
            return None
        url, sha = split_fragment(absolute) if "#" in absolute else (absolute, None)
        if scheme != "file" and _host_ok(url, scheme, page.checked_hosts) is None:
            page.warnings["link without host"] += 1
            return None
    except ValueError:
        page.warnings["unparseable href"] += 1
        return None
    name = filename_of(url)
    if not name:
        return Link(url=url, filename="", sha256=sha, href=href)
    why = unsafe_filename(name)
    if why:
        page.warnings[why] += 1
        return None
    declared = meta.pop("sha256", None)
    return Link(url=url, filename=name, sha256=sha or declared, href=href, **meta)


def warnings_summary(warnings: collections.Counter) -> str:
    """``"3 not a wheel, 1 challenge page"`` (most frequent first)."""
    return ", ".join(f"{n} {what}" for what, n in warnings.most_common())
