"""Platforms: wheel platform tags, normalised ``os-arch`` names, and conda subdirs.

A *platform* in torchdepot is ``os-arch``: ``linux-x86_64``, ``linux-aarch64``,
``windows-amd64``, ``macos-arm64``, ``macos-x86_64`` or ``any``. This module maps
wheel tags to it, and it to what resolvers need (uv's ``--python-platform``,
pip's ``--platform`` tag list, conda's subdir and virtual packages).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from torchdepot.errors import ParseError

PLATFORMS = (
    "linux-x86_64",
    "linux-aarch64",
    "windows-amd64",
    "macos-arm64",
    "macos-x86_64",
)

_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# Bounded digit runs: a 5,000-digit glibc version is no platform tag (and int() would refuse it).
_MANYLINUX_RE = re.compile(r"(manylinux|musllinux)_(\d{1,4})_(\d{1,4})_(.+)")
_MACOS_RE = re.compile(r"macosx_(\d{1,4})_(\d{1,4})_(.+)")

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}


@dataclass(frozen=True)
class PlatformInfo:
    os: str  # linux | windows | macos | any | other
    arch: str  # x86_64 | aarch64 | amd64 | arm64 | universal2 | ...
    glibc: tuple[int, int] | None = None  # minimum glibc for manylinux tags
    libc: str | None = None  # "glibc" | "musl" on linux

    @property
    def name(self) -> str:
        return "any" if self.os == "any" else f"{self.os}-{self.arch}"


@functools.lru_cache(maxsize=4096)  # pure; index pages repeat a few dozen tags thousands of times
def platform_from_tag(tag: str) -> PlatformInfo:
    """``manylinux_2_28_x86_64`` -> linux-x86_64 (glibc 2.28); ``win_amd64`` -> windows-amd64."""
    t = tag.lower()
    if t == "any":
        return PlatformInfo("any", "any")
    for legacy, glibc in _MANYLINUX_LEGACY.items():
        if t.startswith(legacy + "_"):
            return PlatformInfo("linux", t[len(legacy) + 1 :], glibc, "glibc")
    m = _MANYLINUX_RE.fullmatch(t)
    if m:
        libc = "glibc" if m.group(1) == "manylinux" else "musl"
        min_glibc = (int(m.group(2)), int(m.group(3))) if libc == "glibc" else None
        return PlatformInfo("linux", m.group(4), min_glibc, libc)
    if t.startswith("linux_"):
        return PlatformInfo("linux", t[len("linux_") :], None, "glibc")
    if t == "win32":
        return PlatformInfo("windows", "x86")
    if t.startswith("win_"):
        return PlatformInfo("windows", t[len("win_") :])
    m = _MACOS_RE.fullmatch(t)
    if m:
        return PlatformInfo("macos", m.group(3))
    return PlatformInfo("other", t)


def platform_of_tags(tags: list[str] | tuple[str, ...]) -> PlatformInfo:
    """One platform for a wheel's (possibly compressed) tag set; min glibc over its tags."""
    if not tags:
        return PlatformInfo("other", "unknown")
    infos = [platform_from_tag(t) for t in tags]
    first = infos[0]
    glibcs = [i.glibc for i in infos if i.glibc is not None and i.name == first.name]
    return PlatformInfo(first.os, first.arch, min(glibcs) if glibcs else first.glibc, first.libc)


@dataclass(frozen=True)
class TargetPlatform:
    """A platform a mirror is built *for* (not necessarily this machine)."""

    name: str
    uv_platform: str  # uv --python-platform
    conda_subdir: str
    pip_tags: tuple[str, ...]  # every platform tag pip must accept, newest first

    @property
    def os(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def arch(self) -> str:
        return self.name.split("-", 1)[1]


def _manylinux_tags(arch: str, max_minor: int = 28) -> tuple[str, ...]:
    tags = [f"manylinux_2_{m}_{arch}" for m in range(max_minor, 16, -1)]
    tags += [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    tags += [f"linux_{arch}"]
    return tuple(tags)


def _macos_tags(arch: str) -> tuple[str, ...]:
    majors = range(15, 10, -1) if arch == "arm64" else range(15, 10, -1)
    tags = [f"macosx_{m}_0_{arch}" for m in majors]
    if arch == "x86_64":
        tags += [f"macosx_10_{m}_{arch}" for m in range(15, 8, -1)]
    tags += [f"macosx_{m}_0_universal2" for m in majors] + ["macosx_10_9_universal2"]
    return tuple(tags)


_TARGETS = {
    "linux-x86_64": TargetPlatform("linux-x86_64", "x86_64-manylinux_2_28", "linux-64", _manylinux_tags("x86_64")),
    "linux-aarch64": TargetPlatform("linux-aarch64", "aarch64-manylinux_2_28", "linux-aarch64", _manylinux_tags("aarch64")),
    "windows-amd64": TargetPlatform("windows-amd64", "x86_64-pc-windows-msvc", "win-64", ("win_amd64",)),
    "macos-arm64": TargetPlatform("macos-arm64", "aarch64-apple-darwin", "osx-arm64", _macos_tags("arm64")),
    "macos-x86_64": TargetPlatform("macos-x86_64", "x86_64-apple-darwin", "osx-64", _macos_tags("x86_64")),
}

_SUBDIR_TO_PLATFORM = {t.conda_subdir: t.name for t in _TARGETS.values()}


def target_platform(name: str) -> TargetPlatform:
    """Look up a target platform by its ``os-arch`` name (or conda subdir)."""
    key = _SUBDIR_TO_PLATFORM.get(name, name)
    try:
        return _TARGETS[key]
    except KeyError:
        raise ParseError(
            f"unknown platform {name!r} (expected one of: {', '.join(PLATFORMS)})"
        ) from None


def host_platform() -> str:
    """This machine's platform name (for the default spec)."""
    import platform as _p
    import sys

    machine = _ARCH_ALIASES.get(_p.machine().lower(), _p.machine().lower())
    if sys.platform.startswith("linux"):
        return f"linux-{machine}"
    if sys.platform == "win32":
        return "windows-amd64"
    if sys.platform == "darwin":
        return f"macos-{'arm64' if machine in ('arm64', 'aarch64') else 'x86_64'}"
    return f"{sys.platform}-{machine}"


def subdir_platform(subdir: str) -> str | None:
    """conda subdir -> platform name; ``noarch`` -> ``any``; unknown -> None."""
    if subdir == "noarch":
        return "any"
    return _SUBDIR_TO_PLATFORM.get(subdir)
