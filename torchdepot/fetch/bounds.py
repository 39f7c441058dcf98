"""Time bounds of a download: a minimum-rate floor per file (pure; the clock is passed in).

A file that receives fewer than ``min_rate * window`` bytes during any ``window`` seconds
is aborted: an upstream dripping one byte every two seconds can no longer hold a sync
forever, while a slow but moving link (above the floor) is never cut off.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

DEFAULT_MIN_RATE = 1000.0  # bytes per second
DEFAULT_RATE_WINDOW = 60.0  # seconds


@dataclass(frozen=True)
class RateFloor:
    min_rate: float = DEFAULT_MIN_RATE  # 0 disables the floor
    window: float = DEFAULT_RATE_WINDOW

    @property
    def enabled(self) -> bool:
        return self.min_rate > 0 and self.window > 0


class RateMeter:
    """Bytes received by one file (all its connections) against a :class:`RateFloor`."""

    def __init__(self, floor: RateFloor, now: float):
        self.floor = floor
        self.total = 0
        self._lock = threading.Lock()
        # (time, total bytes so far): the oldest sample at or before now - window is the
        # reference the window's byte count is measured from.
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])

    def add(self, n: int, now: float) -> None:
        with self._lock:
            self.total += n
            self._samples.append((now, self.total))
            self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.floor.window
        while len(self._samples) > 1 and self._samples[1][0] <= cutoff:
            self._samples.popleft()

    def too_slow(self, now: float) -> int | None:
        """Bytes received in the last window when that is under the floor, else None."""
        if not self.floor.enabled:
            return None
        with self._lock:
            self._trim(now)
            t0, b0 = self._samples[0]
            if now - t0 < self.floor.window:
                return None  # not a full window yet
            got = self.total - b0
        return got if got < self.floor.min_rate * self.floor.window else None
