"""Progress of a sync's phases before and after its fetch (the fetch draws its own).

:class:`ReadProgress`: the reads of upstream: index pages, ``.metadata`` files,
METADATA by Range, and wheels read whole where upstream ignores Range.

Those reads can take minutes on a far link (a torch wheel read whole for its METADATA), so
they get the fetch's own display (``fetch.progress.Progress``, same conventions): on a
terminal one tqdm bar of bytes read against the bytes the responses announced, with rate and
ETA; elsewhere a line every few seconds and a closing line; nothing under ``progress=False``
(``mirror --json``: stdout keeps its one document). The total grows as reads start: a walk
learns what it must read as it goes. Attached to the run's one
:class:`~torchdepot.sources.upstream.UpstreamReader`, which reports every http(s) read;
closed (detached) before the fetch's bar opens.

:class:`Count`: a phase of countable steps with a known total (targets resolved, pages
revalidated by a no-op, wheels whose ``.metadata`` a regional publish writes): a tqdm bar
on a terminal only, and tqdm not even imported otherwise (a no-op re-sync stays lean).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

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


class Count:
    """``enabled``: True a bar, False nothing, None a bar only when stderr is a terminal.
    Thread-safe; a context manager (closed on exit)."""

    def __init__(self, enabled: bool | None, total: int, desc: str, unit: str) -> None:
        self.bar: Any = None  # a tqdm, or None when nothing is drawn
        self._lock = threading.Lock()
        if total and (enabled if enabled is not None else sys.stderr.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(n)

    def close(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def __enter__(self) -> Count:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
