"""Progress of a fetch: one tqdm bar (done/total bytes, rate, ETA) on a terminal, one line
every few seconds when stderr is not a terminal (CI logs), and optional events for
``--json`` consumers.

Totals come from known sizes: a :class:`~torchdepot.fetch.FetchItem`'s ``size`` when the
index stated it, else the first response's Content-Length, else the file's size once it is
done; a file already present (or failed) leaves the total when it is done. Bytes received
again after a failed attempt are not the files' bytes: the count stops at the total and the
line names the excess as retried ("192.9 MB / 192.9 MB, +15.0 MB retried"), so the closing
line never reads 207.9 MB of 192.9 MB. Thread-safe; no global state.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torchdepot.model.sizes import format_size

if TYPE_CHECKING:
    from tqdm import tqdm

LINE_INTERVAL = 5.0  # seconds between plain lines on a non-terminal
EVENT_INTERVAL = 1.0  # seconds between "progress" events


@dataclass(frozen=True)
class ProgressEvent:
    """``kind="progress"``: bytes so far; ``kind="file"``: one file finished (``key``, ``status``)."""

    kind: Literal["progress", "file"]
    done: int
    total: int
    rate: float  # bytes per second since the start
    eta: float | None  # seconds; None while the total or the rate is unknown
    files_done: int
    files_total: int
    key: str | None = None
    status: str | None = None
    files_failed: int = 0  # of files_done, the ones that failed (their bytes never counted)


ProgressCallback = Callable[[ProgressEvent], None]


class Progress:
    """``enabled``: True (a bar), False (silent), None (a bar on a terminal, else plain lines)."""

    def __init__(self, enabled: bool | None, callback: ProgressCallback | None = None, *,
                 stream=None, line_interval: float = LINE_INTERVAL, desc: str = "fetch"):
        self.stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: tqdm | None = None
        self.lines = enabled is None and not tty
        if enabled or (enabled is None and tty):
            from tqdm import tqdm  # only where a bar is drawn (~0.02 s of a run's start otherwise)

            self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                            file=self.stream, dynamic_ncols=True)
        self.callback = callback
        self.line_interval = line_interval
        self.desc = desc
        self.start = time.monotonic()
        self.done = 0
        self.total = 0
        self.files_done = 0
        self.files_failed = 0
        self.files_total = 0
        self._lock = threading.Lock()
        self._expected: dict[str, int | None] = {}  # key -> the size its total includes (None: not yet known)
        self._last_line = self.start
        self._last_event = 0.0

    def add_file(self, size: int | None, key: str | None = None) -> None:
        with self._lock:
            self.files_total += 1
            if key is not None:
                self._expected[key] = size or None
            if size:
                self.total += size
                if self.bar is not None:
                    self.bar.total = self.total
                    self.bar.refresh()

    def learn_size(self, size: int, key: str | None = None) -> None:
        """A size first known from a response (the index did not state it)."""
        with self._lock:
            if key is not None:
                if self._expected.get(key):
                    return  # counted already (a second attempt learns it again)
                self._expected[key] = size
        self.add_total(size)

    def add_total(self, n: int) -> None:
        with self._lock:
            self.add_total_locked(n)

    def add_total_locked(self, n: int) -> None:
        self.total = max(0, self.total + n)
        if self.bar is not None:
            self.bar.total = max(self.total, self.done)

    def advance(self, n: int) -> None:
        if not n:
            return
        with self._lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            now = time.monotonic()
            line = self.lines and now - self._last_line >= self.line_interval
            if line:
                self._last_line = now
            event = self.callback is not None and now - self._last_event >= EVENT_INTERVAL
            if event:
                self._last_event = now
            snap = self._snapshot("progress", now) if (line or event) else None
        if line and snap is not None:
            print(self.format_line(snap), file=self.stream, flush=True)
        if event and snap is not None and self.callback is not None:
            self.callback(snap)

    def file_done(self, key: str, status: str, size: int | None = None) -> None:
        """``size``: the file's bytes when ``status`` is "downloaded"."""
        with self._lock:
            self.files_done += 1
            self.files_failed += status == "failed"
            expected = self._expected.pop(key, None)
            if status != "downloaded":  # present or failed: its bytes will not come
                self.add_total_locked(-(expected or 0))
            elif expected is None and size:
                self.add_total_locked(size)
            snap = self._snapshot("file", time.monotonic(), key, status)
        if self.callback is not None:
            self.callback(snap)

    def _snapshot(self, kind, now: float, key: str | None = None, status: str | None = None) -> ProgressEvent:
        rate = self.done / max(now - self.start, 1e-6)
        eta = (max(0, self.total - self.done) / rate) if (self.total and rate > 0) else None
        return ProgressEvent(kind=kind, done=self.done, total=self.total, rate=rate, eta=eta,
                             files_done=self.files_done, files_total=self.files_total, key=key, status=status,
                             files_failed=self.files_failed)

    def format_line(self, ev: ProgressEvent) -> str:
        done, retried, whole = ev.done, 0, ev.total
        if whole and done > whole:
            if ev.files_done >= ev.files_total:  # every size is known: the excess was received twice
                done, retried = whole, done - whole
            else:  # a size still unknown (no index stated it): the total is at least what came
                whole = done
        total = f" / {format_size(whole)}" if whole else ""
        extra = f", +{format_size(retried)} retried" if retried else ""
        eta = f", ETA {ev.eta:.0f} s" if ev.eta is not None else ""
        failed = f", {ev.files_failed} failed" if ev.files_failed else ""
        return (f"{self.desc}: {format_size(done)}{total}{extra}, {format_size(ev.rate)}/s{eta} "
                f"({ev.files_done}/{ev.files_total} files{failed})")

    def final_line(self) -> str:
        """The closing line (every file done): received bytes against the files' bytes."""
        with self._lock:
            snap = self._snapshot("progress", time.monotonic())
        return self.format_line(snap)

    def close(self) -> None:
        if self.lines and self.files_total and self.done:  # the closing figures, as the last line
            print(self.final_line(), file=self.stream, flush=True)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
