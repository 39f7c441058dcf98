"""The link model shared by every index crawler (PEP 503 HTML, PEP 691 JSON, find-links)."""

from __future__ import annotations

import collections
import re
import urllib.parse
from dataclasses import dataclass, field

_HEX = re.compile(r"[0-9a-f]+")


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

    @property
    def metadata_sha256(self) -> str | None:
        if self.core_metadata and self.core_metadata.startswith("sha256="):
            return self.core_metadata[len("sha256="):]
        return None

    @property
    def metadata_url(self) -> str | None:
        return self.url + ".metadata" if self.core_metadata else None


@dataclass
class Page:
    url: str
    links: list[Link] = field(default_factory=list)
    warnings: collections.Counter = field(default_factory=collections.Counter)
    projects: list[str] = field(default_factory=list)  # for root pages: project names


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
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


ALLOWED_SCHEMES = ("http", "https")
