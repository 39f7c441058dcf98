"""Wheel filenames (and URLs to them) -> :class:`WheelFile`.

Name, version, build and tags come from ``packaging``; torchdepot adds the
accelerator (from the local label, else the PEP 825 variant label, else the URL's
directory, else unknown: never guessed) and a normalised platform.

PEP 825 variant wheels: ``{dist}-{ver}(-{build})?-{py}-{abi}-{plat}(-{label})?.whl`` with
label ``[0-9a-z_.]+``. With six dash-separated parts the third is a build tag when it
starts with a digit, else the last part is the label; seven parts carry both. ``packaging``
does not know labels yet (pypa/packaging#1148): the label is split off here and the rest
is still parsed by ``packaging``, so every name it accepts parses as before.
"""

from __future__ import annotations

import contextlib
import posixpath
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
        path = urllib.parse.unquote(path)
    dirname, filename = posixpath.split(path)
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
    if len(parts) == 7 or (len(parts) == 6 and not parts[2][:1].isdigit()):
        label = parts[-1]
        if not VARIANT_LABEL.fullmatch(label):
            raise ParseError(f"{filename!r} is not a valid wheel filename: invalid variant label {label!r}")
        return "-".join(parts[:-1]) + ".whl", label
    return filename, None


def parse_wheel(name_or_url: str) -> WheelFile:
    """Parse a wheel filename, a relative path such as ``cu92/torch-...whl``, or a URL.

    Raises :class:`ParseError` (never anything else) for text that is not a wheel.
    """
    try:
        filename, dirs, url = split_url(name_or_url)
    except (ValueError, TypeError) as exc:  # urlsplit rejects some hosts/ports
        raise ParseError(f"{name_or_url!r}: {exc}") from None
    if not filename.endswith(".whl"):
        raise ParseError(f"{filename or name_or_url!r} is not a wheel filename (no .whl suffix)")
    plain, label = split_variant_label(filename)
    try:
        name, version, build, _tags = parse_wheel_filename(plain)
    except (InvalidWheelFilename, InvalidVersion, ValueError) as exc:
        raise ParseError(f"{filename!r} is not a valid wheel filename: {exc}") from None
    parts = plain[: -len(".whl")].split("-")
    py, abi, plat = parts[-3], parts[-2], parts[-1]
    full_version = str(version)
    public_version, _, local_part = full_version.partition("+")
    local = local_part or None
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
    platform_tags = _tag_part(plat)
    return WheelFile(
        filename=filename,
        name=str(name),
        version=full_version,
        public_version=public_version,
        local=local,
        build="".join(str(b) for b in build) if build else None,
        python_tags=_tag_part(py),
        abi_tags=_tag_part(abi),
        platform_tags=platform_tags,
        platform=platform_of_tags(platform_tags),
        accelerator=acc,
        accelerator_source=source,
        url=url,
        variant_label=label,
    )


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
