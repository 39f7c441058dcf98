"""``accelerators: [current]`` / ``pythons: [current]``: the release matrix upstream ships
for the selected torch, and what changed since the last sync. Pure: no I/O.

PyTorch's matrix moves every release (2.11 put CUDA 13.0 on PyPI, 2.14 ships 12.6 / 13.0 /
13.2, 2.15 drops 12.6). A spec that follows it expands ``current`` to the accelerators and
CPython versions of the newest torch that matches the spec's constraint, per platform, read
from upstream's aggregate ``torch`` page. Free-threaded builds (``cp313t``) and builds whose
accelerator cannot be told (no label, no directory) are not part of the matrix.

:func:`matrix_changes` compares two matrices and says, one line per change, what appeared or
disappeared. An accelerator or Python that disappears is never dropped silently: the mirror's
recorded targets keep it (pinned to the newest torch that still has it) until ``--prune``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from torchdepot.model.accel import accelerator_sort_key, parse_accelerator
from torchdepot.model.platforms import target_platform
from torchdepot.model.wheelname import WheelFile, version_sort_key

CURRENT = "current"  # the spec word


@dataclass(frozen=True)
class Matrix:
    """What upstream ships for one torch release: (accelerator, python, platform) cells."""

    torch: str  # public version, e.g. "2.14.0"
    cells: frozenset[tuple[str, str, str]]

    def accelerators(self, platform: str | None = None) -> tuple[str, ...]:
        found = {a for a, _, p in self.cells if platform is None or p == platform}
        return tuple(sorted(found, key=lambda a: accelerator_sort_key(parse_accelerator(a))))

    def pythons(self, platform: str | None = None) -> tuple[str, ...]:
        found = {py for _, py, p in self.cells if platform is None or p == platform}
        return tuple(sorted(found, key=version_sort_key))

    def to_data(self) -> dict[str, object]:
        return {"torch": self.torch, "cells": sorted(list(c) for c in self.cells)}

    @staticmethod
    def from_data(data: object) -> Matrix | None:
        """The recorded matrix, or None when the record is not one (a user's edit, an old mirror)."""
        if not isinstance(data, dict) or not isinstance(data.get("torch"), str):
            return None
        cells = data.get("cells")
        if not isinstance(cells, list) or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(x, str) for x in c) for c in cells):
            return None
        return Matrix(torch=data["torch"], cells=frozenset((c[0], c[1], c[2]) for c in cells))


def _fits(wheel: WheelFile, platform: str) -> bool:
    tags = target_platform(platform).pip_tags
    return any(t in tags for t in wheel.platform_tags)


def current_matrix(wheels: Iterable[WheelFile], constraint: str | None, prereleases: bool,
                   platforms: Sequence[str]) -> Matrix | None:
    """The newest torch release matching ``constraint`` with a build for any of ``platforms``,
    and every (accelerator, CPython, platform) it ships; None when there is none."""
    try:
        spec = SpecifierSet(constraint or "", prereleases=prereleases)
    except InvalidSpecifier:
        spec = SpecifierSet("", prereleases=prereleases)
    by_version: dict[Version, set[tuple[str, str, str]]] = {}
    for w in wheels:
        if w.name != "torch" or w.accelerator is None or w.accelerator.flags or w.free_threaded:
            continue
        try:
            version = Version(w.public_version)
        except InvalidVersion:
            continue
        if version not in spec:
            continue
        for platform in platforms:
            if not _fits(w, platform):
                continue
            for py in w.pythons:
                if py.count(".") == 1 and any(t.startswith("cp") for t in w.python_tags):
                    by_version.setdefault(version, set()).add((w.accelerator.name, py, platform))
    if not by_version:
        return None
    newest = max(by_version)
    return Matrix(torch=str(newest), cells=frozenset(by_version[newest]))


@dataclass(frozen=True)
class Change:
    """One line of what moved in upstream's matrix since the last sync."""

    kind: str  # "accelerator" | "python"
    value: str
    appeared: bool
    text: str


def matrix_changes(old: Matrix | None, new: Matrix, platforms: Sequence[str]) -> tuple[Change, ...]:
    """Accelerators and Pythons that appeared or disappeared (per platform when they differ)."""
    if old is None:
        return ()
    out: list[Change] = []
    for kind, of in (("accelerator", Matrix.accelerators), ("python", Matrix.pythons)):
        for platform in platforms:
            before, after = set(of(old, platform)), set(of(new, platform))
            label = "Python " if kind == "python" else ""
            for value in sorted(after - before, key=version_sort_key):
                out.append(Change(kind, value, True,
                                  f"upstream now ships {label}{value} for {platform} (torch {new.torch}; "
                                  f"last sync saw torch {old.torch} without it): added"))
            for value in sorted(before - after, key=version_sort_key):
                out.append(Change(kind, value, False,
                                  f"upstream no longer ships {label}{value} for {platform} in torch {new.torch} "
                                  f"(last sync: torch {old.torch}): its targets stay, pinned to the newest torch that has it"))
    return tuple(out)


def follow(explicit: Sequence[str], follows: bool, cells: Iterable[tuple[str, str, str]], of: str,
           platform: str) -> tuple[str, ...]:
    """The values a target list takes on ``platform``: the spec's explicit ones, then (when it
    follows upstream) those of ``cells`` (upstream's current matrix plus what was kept)."""
    values = list(explicit)
    if follows:
        pick = 0 if of == "accelerators" else 1
        found = {c[pick] for c in cells if c[2] == platform}
        key = (lambda a: accelerator_sort_key(parse_accelerator(a))) if pick == 0 else version_sort_key
        values += sorted(found, key=key)
    return tuple(dict.fromkeys(values))


def missing_explicit(explicit: Iterable[str], matrix: Matrix, platforms: Sequence[str],
                     of: str) -> dict[str, tuple[str, ...]]:
    """Explicit spec values that upstream's newest matching torch does not ship, by value ->
    the platforms it lacks (the caller warns and keeps them)."""
    out: dict[str, tuple[str, ...]] = {}
    for value in explicit:
        lacking = tuple(p for p in platforms
                        if value not in (matrix.accelerators(p) if of == "accelerators" else matrix.pythons(p)))
        if lacking:
            out[value] = lacking
    return out
