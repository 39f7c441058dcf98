"""A file-like run of zero bytes of a given size, produced as it is read: lets a test build a
tiny compressed archive that inflates to gigabytes without ever holding them."""

from __future__ import annotations

import io

_BLOCK = bytes(4 * 1024 * 1024)


class Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, len(_BLOCK) if n is None or n < 0 else n, len(_BLOCK))
        self.left -= n
        return _BLOCK[:n]
