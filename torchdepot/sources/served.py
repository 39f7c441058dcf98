"""A served torchdepot mirror, read as an upstream: its ``manifest.json`` over http(s) or file://.

The store only reads and writes a mirror on disk; fetching another mirror's manifest is a
source's job (it goes through the one HTTP client, bounded like any index page).
"""

from __future__ import annotations

from torchdepot.net.http import make_session
from torchdepot.store.layout import MANIFEST_NAME
from torchdepot.store.manifest import Manifest


def fetch_manifest(url: str) -> Manifest:
    """``<url>/manifest.json`` of a served (http, or file://) mirror. Raises UpstreamError
    when it cannot be fetched and TorchdepotError when it is not a manifest."""
    murl = url.rstrip("/") + "/" + MANIFEST_NAME
    with make_session() as client:
        body, _ = client.get_bytes(murl)
    return Manifest.from_json(body, murl)
