"""Wheel filenames (and URLs to them) -> :class:`WheelFile`.

Name, version, build and tags come from ``packaging``; torchdepot adds the
accelerator (from the local label, else the PEP 825 variant label, else the URL's
directory, else unknown: never guessed) and a normalised platform.

PEP 825 variant wheels: ``{dist}-{ver}(-{build})?-{py}-{abi}-{plat}(-{label})?.whl`` with
label ``[0-9a-z_.]+``. With six dash-separated parts the third is a build tag when it
starts with a digit, else the last part is the label; seven parts carry both. ``packaging``
does not know labels yet (pypa/packaging#1148): the label is split off here and the rest
is still parsed by ``packaging``, so every name it accepts parses as before.

Speed: an index page holds thousands of wheel names that repeat a few dozen names, versions
and tag triples. :func:`parse_wheel` therefore checks each dash-separated part on its own
through bounded caches (:func:`_name_of`, :func:`_version_of`, :func:`_build_of`,
:func:`_tags_of`), each asking ``packaging``'s own ``parse_wheel_filename`` about a name made
of that part and fixed valid parts. The checks are per part, so a name passes them all exactly
when ``packaging`` accepts it whole, and the values are ``packaging``'s. A name any check
refuses takes the reference path (:func:`parse_wheel_reference`), which raises the one error.
Invariant (tests/test_wheelname_fast.py): both paths give equal models or the same error.
"""

from __future__ import annotations

import contextlib
import functools
import re
import urllib.parse
from dataclasses import dataclass

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from torchdepot.errors import ParseError
from torchdepot.model.accel import (
    Accelerator,
    accelerator_from_dir,
    accelerator_from_local,
    accelerator_from_variant_label,
)
from torchdepot.model.platforms import PlatformInfo, platform_of_tags


@dataclass(frozen=True)
class WheelFile:
    filename: str  # decoded (``+`` not ``%2B``)
    name: str  # canonical project name (PEP 503 normalised)
    version: str  # full version, local label included
    public_version: str
    local: str | None
    build: str | None  # wheel build tag, e.g. "1" in name-1.0-1-py3-none-any.whl
    python_tags: tuple[str, ...]
    abi_tags: tuple[str, ...]
    platform_tags: tuple[str, ...]
    platform: PlatformInfo
    accelerator: Accelerator | None
    accelerator_source: str | None  # "local" | "variant" | "dir" | None
    url: str | None = None
    variant_label: str | None = None  # PEP 825 label (``cuda12.8``, ``null``), None for a plain wheel

    @property
    def os(self) -> str:
        return self.platform.os

    @property
    def arch(self) -> str:
        return self.platform.arch

    @property
    def pythons(self) -> tuple[str, ...]:
        """Python versions named by the tags: cp310 -> "3.10"; py3 -> "3"."""
        out = []
        for t in self.python_tags:
            digits = t[2:]
            if t[:2] in ("cp", "py", "pp") and digits.isdigit() and digits:
                out.append(digits[0] + ("." + digits[1:] if len(digits) > 1 else ""))
        return tuple(dict.fromkeys(out))

    @property
    def free_threaded(self) -> bool:
        return any(a.endswith("t") and a.startswith("cp") for a in self.abi_tags)

    def to_json(self) -> dict[str, object]:
        return {
            "filename": self.filename,
            "name": self.name,
            "version": self.version,
            "local": self.local,
            "accelerator": self.accelerator.name if self.accelerator else None,
            "python_tags": list(self.python_tags),
            "abi_tags": list(self.abi_tags),
            "platform_tags": list(self.platform_tags),
            "os": self.platform.os,
            "arch": self.platform.arch,
            "glibc": ".".join(map(str, self.platform.glibc)) if self.platform.glibc else None,
            "url": self.url,
            "variant_label": self.variant_label,
            "error": None,
        }


# PEP 658: a wheel's core metadata is served at the wheel's URL + this suffix.
METADATA_SUFFIX = ".metadata"


def version_sort_key(text: str) -> tuple[int, Version | str, str] | tuple[int, str]:
    """The one sort key for version strings: PEP 440 order (equal versions by their text, so the
    order is total); unparseable ones below every valid one (last when sorting newest first)."""
    try:
        return (1, Version(text), text)
    except InvalidVersion:
        return (0, text)


def _unquote(path: str) -> str:
    """``urllib.parse.unquote``, short-cut for the one escape index links carry (``%2B``, the
    ``+`` of a local version): when every ``%`` starts ``%2B``, replacing them is the same
    decoding, ~0.2 us against unquote's ~1.4 us (a third of a cached wheel parse)."""
    quick = path.replace("%2B", "+").replace("%2b", "+")
    return quick if "%" not in quick else urllib.parse.unquote(path)


def split_url(name_or_url: str) -> tuple[str, list[str], str | None]:
    """-> (decoded filename, decoded directory segments, url or None)."""
    text = name_or_url.strip()
    url = None
    if "://" in text:
        # Plain string surgery instead of urlsplit: this runs once per index link (hot).
        url = text
        rest = text.split("://", 1)[1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else ""
    else:
        path = text
    path = path.split("#", 1)[0].split("?", 1)[0]
    if "%" in path:
        path = _unquote(path)
    dirname, _, filename = path.rpartition("/")  # posixpath.split, less its head clean-up (empty dirs drop here)
    dirs = [d for d in dirname.split("/") if d]
    return filename, dirs, url


def accelerator_from_dirs(dirs: list[str] | tuple[str, ...]) -> Accelerator | None:
    """Nearest directory naming an accelerator: ``/whl/cu80/x.whl``, ``/whl/nightly/cu126/x.whl``."""
    for seg in reversed(dirs):
        acc = accelerator_from_dir(seg)
        if acc is not None:
            return acc
    return None


def _tag_part(part: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.split(".")))


VARIANT_LABEL = re.compile(r"[0-9a-z_.]+")


def split_variant_label(filename: str) -> tuple[str, str | None]:
    """``torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64-cuda13.0.whl`` ->
    (``torch-2.10.0-cp314-cp314t-manylinux_2_28_x86_64.whl``, ``cuda13.0``); a name without
    a label comes back unchanged with None. Raises ParseError for an invalid label."""
    parts = filename[: -len(".whl")].split("-")
    label = _pop_label(parts)
    if label is None:
        return filename, None
    if not VARIANT_LABEL.fullmatch(label):
        raise ParseError(f"{filename!r} is not a valid wheel filename: invalid variant label {label!r}")
    return "-".join(parts) + ".whl", label


def _pop_label(parts: list[str]) -> str | None:
    """The last of a wheel name's dash-separated ``parts`` when it is a variant label (taken
    off ``parts``): seven parts, or six whose third is no build tag; else None."""
    if len(parts) == 7 or (len(parts) == 6 and not parts[2][:1].isdigit()):
        return parts.pop()
    return None


def parse_wheel(name_or_url: str) -> WheelFile:
    """Parse a wheel filename, a relative path such as ``cu92/torch-...whl``, or a URL.

    Raises :class:`ParseError` (never anything else) for text that is not a wheel.
    """
    filename, dirs, url = _split(name_or_url)
    return _parse_fast(filename, dirs, url) or _parse_reference(filename, dirs, url)


def parse_wheel_reference(name_or_url: str) -> WheelFile:
    """:func:`parse_wheel` without the per-part caches: the whole name through ``packaging``
    at once. The contract the fast path is tested against; use :func:`parse_wheel`."""
    filename, dirs, url = _split(name_or_url)
    return _parse_reference(filename, dirs, url)


def _split(name_or_url: str) -> tuple[str, list[str], str | None]:
    try:
        filename, dirs, url = split_url(name_or_url)
    except (ValueError, TypeError) as exc:  # urlsplit rejects some hosts/ports
        raise ParseError(f"{name_or_url!r}: {exc}") from None
    if not filename.endswith(".whl"):
        raise ParseError(f"{filename or name_or_url!r} is not a wheel filename (no .whl suffix)")
    return filename, dirs, url


# The errors packaging raises for a name it refuses (the reference path turns them into ParseError).
_REFUSED = (InvalidWheelFilename, InvalidVersion, ValueError)


@functools.lru_cache(maxsize=1024)
def _name_of(part: str) -> str | None:
    """The canonical project name of a name part, None when packaging refuses it."""
    try:
        return str(parse_wheel_filename(f"{part}-0-py3-none-any.whl")[0])
    except _REFUSED:
        return None


@functools.lru_cache(maxsize=4096)
def _version_of(part: str) -> tuple[str, str, str | None] | None:
    """(full, public, local) of a version part, None when packaging refuses it."""
    try:
        full = str(parse_wheel_filename(f"x-{part}-py3-none-any.whl")[1])
    except _REFUSED:
        return None
    return _version_parts(full)


def _version_parts(full: str) -> tuple[str, str, str | None]:
    """(full, public, local or None) of a version packaging printed."""
    public, _, local = full.partition("+")
    return full, public, local or None


@functools.lru_cache(maxsize=256)
def _build_of(part: str) -> str | None:
    """The build tag text of a build part (``"1"``), None when packaging refuses it."""
    try:
        build = parse_wheel_filename(f"x-0-{part}-py3-none-any.whl")[2]
    except _REFUSED:
        return None
    return "".join(str(b) for b in build)


_Tags = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], PlatformInfo]


@functools.lru_cache(maxsize=1024)
def _tags_of(triple: str) -> _Tags | None:
    """(python, abi, platform tags, platform) of ``py-abi-plat``, None when packaging refuses it."""
    try:
        parse_wheel_filename(f"x-0-{triple}.whl")
    except _REFUSED:
        return None
    py, abi, plat = triple.split("-")
    return _tag_model(py, abi, plat)


def _tag_model(py: str, abi: str, plat: str) -> _Tags:
    """(python, abi, platform tags, platform) of a wheel name's three tag parts."""
    platform_tags = _tag_part(plat)
    return _tag_part(py), _tag_part(abi), platform_tags, platform_of_tags(platform_tags)


def _parse_fast(filename: str, dirs: list[str], url: str | None) -> WheelFile | None:
    """The model from the per-part caches; None when any part is refused (or unusual)."""
    parts = filename[: -len(".whl")].split("-")
    label = _pop_label(parts)
    if label is not None and not VARIANT_LABEL.fullmatch(label):
        return None
    if len(parts) == 5:
        build = None
    elif len(parts) == 6:
        build = _build_of(parts[2])
        if build is None:
            return None
    else:
        return None
    name = _name_of(parts[0])
    version = _version_of(parts[1])
    tags = _tags_of(f"{parts[-3]}-{parts[-2]}-{parts[-1]}")
    if name is None or version is None or tags is None:
        return None
    return _model(filename, dirs, url, label, name, version, build, tags)


def _parse_reference(filename: str, dirs: list[str], url: str | None) -> WheelFile:
    plain, label = split_variant_label(filename)
    try:
        name, version, build, _tags = parse_wheel_filename(plain)
    except _REFUSED as exc:
        raise ParseError(f"{filename!r} is not a valid wheel filename: {exc}") from None
    parts = plain[: -len(".whl")].split("-")
    return _model(filename, dirs, url, label, str(name), _version_parts(str(version)),
                  "".join(str(b) for b in build) if build else None, _tag_model(parts[-3], parts[-2], parts[-1]))


def _model(filename: str, dirs: list[str], url: str | None, label: str | None, name: str,
           version: tuple[str, str, str | None], build: str | None, tags: _Tags) -> WheelFile:
    """The model of a name both paths have parsed: ``version`` as :func:`_version_parts`,
    ``tags`` as :func:`_tag_model` give them."""
    full_version, public_version, local = version
    python_tags, abi_tags, platform_tags, platform = tags
    acc, source = _accelerator(local, label, dirs)
    return WheelFile(filename=filename, name=name, version=full_version, public_version=public_version,
                     local=local, build=build, python_tags=python_tags, abi_tags=abi_tags,
                     platform_tags=platform_tags, platform=platform, accelerator=acc,
                     accelerator_source=source, url=url, variant_label=label)


def _accelerator(local: str | None, label: str | None, dirs: list[str]) -> tuple[Accelerator | None, str | None]:
    """(accelerator, source): from the local label, else the variant label, else the URL's directories."""
    acc, source = None, None
    if local:
        acc = accelerator_from_local(local)
        source = "local" if acc else None
    if acc is None and label is not None:
        acc = accelerator_from_variant_label(label)
        source = "variant" if acc else None
    if acc is None:
        acc = accelerator_from_dirs(dirs)
        source = "dir" if acc else None
    return acc, source


def error_json(name_or_url: str, message: str) -> dict[str, object]:
    """The ``parse --json`` object for an input that is not a wheel."""
    filename = name_or_url
    with contextlib.suppress(ValueError, TypeError):
        filename = split_url(name_or_url)[0] or name_or_url
    return {
        "filename": filename,
        "name": None,
        "version": None,
        "local": None,
        "accelerator": None,
        "python_tags": [],
        "abi_tags": [],
        "platform_tags": [],
        "os": None,
        "arch": None,
        "glibc": None,
        "url": None,
        "variant_label": None,
        "error": message,
    }
