"""One file as the index pages link it: the record both renderings are built from.

:mod:`torchdepot.store.pages` writes the PEP 503 HTML pages from these records and
:mod:`torchdepot.store.simple_json` the PEP 691 JSON twins, so the two cannot disagree on a
file, a hash or a link. Its own module so that neither renderer imports the other's types.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexFile:
    project: str  # canonical name
    filename: str
    path: str  # "packages/<project>/<filename>" relative to the root
    sha256: str
    requires_python: str | None = None
    metadata_sha256: str | None = None
    size: int | None = None  # PEP 700, for the JSON twin (store/simple_json.py); None = unknown
    upload_time: str | None = None  # PEP 700, only as upstream gave it; never invented
    # PEP 592 reason (None: not yanked). Only a tombstone's retired copy is yanked: listed after
    # the new bytes of its name, so an install without the retired hash never picks it
    yanked: str | None = None
