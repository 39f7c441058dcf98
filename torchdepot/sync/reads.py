"""Progress of a sync's reads of upstream before its fetch: index pages, ``.metadata`` files,
METADATA by Range, and wheels read whole where upstream ignores Range.

Those reads can take minutes on a far link (a torch wheel read whole for its METADATA), so
they get the fetch's own display (``fetch.progress.Progress``, same conventions): on a
terminal one tqdm bar of bytes read against the bytes the responses announced, with rate and
ETA; elsewhere a line every few seconds and a closing line; nothing under ``progress=False``
(``mirror --json``: stdout keeps its one document). The total grows as reads start: a walk
learns what it must read as it goes. Attached to the run's one
:class:`~torchdepot.sources.upstream.UpstreamReader`, which reports every http(s) read;
closed (detached) before the fetch's bar opens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchdepot.sources.upstream import UpstreamReader

if TYPE_CHECKING:
    from torchdepot.fetch.progress import Progress


class ReadProgress:
    """``enabled``: as ``Fetcher(progress=...)``: True a bar, False nothing, None a bar on a
    terminal and plain lines elsewhere. :meth:`close` is idempotent."""

    def __init__(self, reader: UpstreamReader, enabled: bool | None, desc: str) -> None:
        self.reader = reader
        self.shown: Progress | None = None
        if enabled is not False:
            # the display loads only for a run that reads (a settled no-op never gets here)
            from torchdepot.fetch.progress import Progress

            self.shown = Progress(enabled, desc=desc)
            reader.watch(self.shown)

    def close(self) -> None:
        if self.shown is not None:
            self.reader.watch(None)
            self.shown.close()
            self.shown = None
