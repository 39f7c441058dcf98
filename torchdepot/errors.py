"""The project's own exceptions, and the two helpers every layer uses to stay one-line.

The CLI turns each :class:`TorchdepotError` into a one-line message and exit 1. Invariants:
a message names the input it is about (a path, a URL, a key) and never spans lines
(:func:`one_line` quotes a foreign exception); untrusted JSON is parsed only by
:func:`load_json`, which bounds its size and depth. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
from typing import Any

MAX_JSON_BYTES = 256 * 1024 * 1024  # a manifest of a huge mirror is tens of MB; repodata is bounded elsewhere


class TorchdepotError(Exception):
    """Base class: anything the user can fix (bad input, unreachable upstream...)."""


class ParseError(TorchdepotError, ValueError):
    """Text that is not a wheel filename, conda build string, tag or accelerator."""


class SpecError(TorchdepotError):
    """A mirror spec that does not validate; the message names the key."""


class Reason(enum.Enum):
    """Why an upstream read failed, for callers that act on the kind of failure (never on the text)."""

    UNREACHABLE = "unreachable"  # DNS, refused, timed out, reset: the host did not answer
    STATUS = "status"  # an HTTP error status (see HttpStatusError.status)
    NOT_FOUND = "not found"  # the page or file is not there
    REFUSED = "refused"  # our own screen refused it (host policy, redirect, size, scheme)
    MALFORMED = "malformed"  # it answered, but not with what was asked for
    OTHER = "other"


class UpstreamError(TorchdepotError):
    """An upstream could not be reached or answered badly; the message names the URL.

    ``detail``: the message without the URL (what a caller that names the URL itself says);
    ``reason``: the kind of failure."""

    def __init__(self, message: str, *, detail: str | None = None, reason: Reason = Reason.OTHER) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message
        self.reason = reason

    @classmethod
    def at(cls, url: str, detail: str, reason: Reason = Reason.OTHER) -> UpstreamError:
        """``<url>: <detail>``."""
        return cls(f"{url}: {detail}", detail=detail, reason=reason)


class IntegrityError(TorchdepotError):
    """Bytes that do not match their recorded hash or size."""


class UnsafePathError(TorchdepotError):
    """A path or link that would escape the output root."""


class LockedError(TorchdepotError):
    """Another torchdepot process holds the mirror's lock."""


def one_line(exc: BaseException | str, limit: int = 400) -> str:
    """A foreign exception's message on one line (whitespace collapsed, its type name when it
    has none; messages quote user input), cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def load_json(data: str | bytes, where: str, *, what: str = "JSON", limit: int = MAX_JSON_BYTES,
              error: type[TorchdepotError] = TorchdepotError) -> Any:
    """Parse untrusted JSON: more than ``limit`` bytes, invalid JSON (``what``: what it should
    be) or nesting too deep for the parser is one ``error`` naming ``where``, never a
    RecursionError or a traceback."""
    if len(data) > limit:
        raise error(f"{where}: not valid {what} (more than {limit} bytes)")
    try:
        return json.loads(data)
    except RecursionError:
        raise error(f"{where}: not valid {what} (nested too deeply)") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, bad UTF-8
        raise error(f"{where}: not valid {what} ({one_line(exc, 200)})") from None


class DiskFullError(TorchdepotError):
    """A write failed for want of space (ENOSPC / EDQUOT); the message names the file."""
