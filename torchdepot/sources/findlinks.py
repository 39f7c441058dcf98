"""Legacy find-links pages (``/whl/torch_stable.html``, ``torch_nightly.html``).

One flat HTML page whose hrefs are relative to the page itself
(``cu92/torch-1.5.0%2Bcu92-cp37-cp37m-linux_x86_64.whl``), so the directory that names
the accelerator survives only in the resolved URL. pip's ``-f`` reads them the same way.
"""

from __future__ import annotations

from torchdepot.sources.links import Page
from torchdepot.sources.pep503 import parse_html


def parse_findlinks(body: bytes, page_url: str) -> Page:
    """Parse a find-links page; every href is resolved against ``page_url``.

    Directory links (which a find-links page should not have) are counted as warnings
    instead of being taken for projects."""
    page = parse_html(body, page_url)
    if page.projects:
        page.warnings["directory link on a find-links page"] += len(page.projects)
        page.projects = []
    return page
