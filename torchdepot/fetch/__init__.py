"""Downloads into a mirror root: parallel, segmented over several connections for large
files, resumable, hash-checked, bounded. :mod:`.engine` orchestrates and publishes (the
"nothing lost" invariants); :mod:`.items` holds the items, results and hash cache;
:mod:`.pool` the socket caps, the policed request and the time bounds; :mod:`.single` the
one-connection resumed download; :mod:`.segmented` the byte-range pieces and
:mod:`.pieces` their resume state; :mod:`.bounds` the rate floor; :mod:`.progress` the
display and ``--json`` events."""

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
