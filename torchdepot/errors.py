"""The project's own exceptions. The CLI turns each into a one-line message and exit 1."""


class TorchdepotError(Exception):
    """Base class: anything the user can fix (bad input, unreachable upstream...)."""


class ParseError(TorchdepotError, ValueError):
    """Text that is not a wheel filename, conda build string, tag or accelerator."""


class SpecError(TorchdepotError):
    """A mirror spec that does not validate; the message names the key."""


class UpstreamError(TorchdepotError):
    """An upstream could not be reached or answered badly; the message names the URL."""


class IntegrityError(TorchdepotError):
    """Bytes that do not match their recorded hash or size."""


class UnsafePathError(TorchdepotError):
    """A path or link that would escape the output root."""


class LockedError(TorchdepotError):
    """Another torchdepot process holds the mirror's lock."""


class DiskFullError(TorchdepotError):
    """A write failed for want of space (ENOSPC / EDQUOT); the message names the file."""
