"""Downloads into a mirror root: parallel, segmented over several connections for large
files, resumable, hash-checked, bounded. :mod:`.engine` orchestrates and publishes (the
"nothing lost" invariants); :mod:`.items` holds the items, results and hash cache;
:mod:`.pool` the socket caps, the policed request and the time bounds; :mod:`.single` the
one-connection resumed download; :mod:`.segmented` the byte-range pieces and
:mod:`.pieces` their resume state; :mod:`.bounds` the rate floor; :mod:`.progress` the
display and ``--json`` events.

The names below load their module on first use (PEP 562): a run that only reads results
(a no-op re-sync) does not import the engine, its pools and progress display."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchdepot.fetch.bounds import DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, RateFloor
    from torchdepot.fetch.engine import Fetcher, fetch_items
    from torchdepot.fetch.items import (
        FetchItem,
        FetchReport,
        FetchResult,
        HashCache,
        hash_present,
        looks_like_html,
    )
    from torchdepot.fetch.pool import DEFAULT_CONNECTIONS, DEFAULT_CONNECTIONS_PER_HOST
    from torchdepot.fetch.progress import ProgressEvent
    from torchdepot.fetch.segmented import DEFAULT_PIECE_BYTES, DEFAULT_SPLIT_BYTES
    from torchdepot.net.http import retry_after_seconds

__all__ = ["DEFAULT_CONNECTIONS", "DEFAULT_CONNECTIONS_PER_HOST", "DEFAULT_MIN_RATE", "DEFAULT_PIECE_BYTES",
           "DEFAULT_RATE_WINDOW", "DEFAULT_SPLIT_BYTES", "FetchItem", "FetchReport", "FetchResult",
           "Fetcher", "HashCache", "ProgressEvent", "RateFloor", "fetch_items", "hash_present",
           "looks_like_html", "retry_after_seconds"]


def __getattr__(name: str) -> Any:
    # static imports (docs/architecture.md: no dynamic ones), each module on its first name
    module: Any
    if name in ("Fetcher", "fetch_items"):
        from torchdepot.fetch import engine as module
    elif name in ("FetchItem", "FetchReport", "FetchResult", "HashCache", "hash_present", "looks_like_html"):
        from torchdepot.fetch import items as module
    elif name in ("DEFAULT_MIN_RATE", "DEFAULT_RATE_WINDOW", "RateFloor"):
        from torchdepot.fetch import bounds as module
    elif name in ("DEFAULT_CONNECTIONS", "DEFAULT_CONNECTIONS_PER_HOST"):
        from torchdepot.fetch import pool as module
    elif name == "ProgressEvent":
        from torchdepot.fetch import progress as module
    elif name in ("DEFAULT_PIECE_BYTES", "DEFAULT_SPLIT_BYTES"):
        from torchdepot.fetch import segmented as module
    elif name == "retry_after_seconds":
        from torchdepot.net import http as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value
