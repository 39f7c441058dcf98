"""Downloads into a mirror root: parallel, segmented over several connections for large
files, resumable, hash-checked, bounded (see :mod:`torchdepot.fetch.engine` for the
invariants, :mod:`.pieces` for the resume state, :mod:`.bounds` for the rate floor and
:mod:`.progress` for the display and ``--json`` events)."""

from torchdepot.fetch.bounds import DEFAULT_MIN_RATE, DEFAULT_RATE_WINDOW, RateFloor
from torchdepot.fetch.engine import (DEFAULT_CONNECTIONS, DEFAULT_CONNECTIONS_PER_HOST, DEFAULT_PIECE_BYTES,
                                     DEFAULT_SPLIT_BYTES, FetchItem, Fetcher, FetchReport,
                                     FetchResult, HashCache, fetch_items, hash_present, looks_like_html)
from torchdepot.fetch.progress import ProgressEvent
from torchdepot.net.http import retry_after_seconds

__all__ = ["DEFAULT_CONNECTIONS", "DEFAULT_CONNECTIONS_PER_HOST", "DEFAULT_MIN_RATE", "DEFAULT_PIECE_BYTES",
           "DEFAULT_RATE_WINDOW", "DEFAULT_SPLIT_BYTES", "FetchItem", "FetchReport", "FetchResult",
           "Fetcher", "HashCache", "ProgressEvent", "RateFloor", "fetch_items", "hash_present",
           "looks_like_html", "retry_after_seconds"]
