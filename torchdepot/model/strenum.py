"""``StrEnum``: ``enum.StrEnum`` on Python >= 3.11, an equivalent ``str``/``Enum`` mix-in on 3.10.

Invariant: members are ``str`` instances equal to their value, and ``str()``/``format()`` give the value
(not ``Class.MEMBER``), on every supported Python."""

from __future__ import annotations

import enum
import sys

__all__ = ["StrEnum"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        """A ``str`` enum whose ``str()`` and ``format()`` are its value, as 3.11's ``enum.StrEnum``."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, format_spec: str) -> str:
            return str(self.value).__format__(format_spec)
