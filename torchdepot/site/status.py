"""What a mirror holds, for ``torchdepot status``: targets, torch versions, sizes, last sync.

Pure: a :class:`~torchdepot.store.manifest.Manifest` in, a :class:`MirrorStatus` (and its text
or JSON) out. A target's files are those of every release the mirror keeps for it (older torch
versions included) plus what its current resolution lists, each with its ``.metadata``; a file
several targets share counts for each of them, and once in the total. A regional mirror
(``releases:``, no targets) is told per accelerator: the torch releases its index holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.model.sizes import format_size
from torchdepot.model.wheelname import parse_wheel, version_sort_key
from torchdepot.store import manifest as mf
from torchdepot.store.layout import metadata_path


@dataclass(frozen=True)
class TargetStatus:
    id: str
    kind: str  # "pip" | "conda"
    origin: str  # "spec" | "fetch" (pip); "spec" for conda
    torch: tuple[str, ...]  # torch versions held, newest first
    files: int
    size: int


@dataclass(frozen=True)
class AcceleratorStatus:
    """One accelerator of a regional mirror: the torch releases its wheels are of."""

    accelerator: str
    torch: tuple[str, ...]  # public versions, newest first
    wheels: int  # torch wheels


@dataclass(frozen=True)
class MirrorStatus:
    root: str
    targets: tuple[TargetStatus, ...]
    files: int
    size: int
    last_sync: mf.SyncRecord | None
    tombstones: tuple[mf.Tombstone, ...] = ()  # kept files upstream deleted or changed
    releases: str | None = None  # a regional mirror's ``releases:``
    accelerators: tuple[AcceleratorStatus, ...] = ()  # a regional mirror's, by name

    def to_json(self) -> dict:
        doc = {"root": self.root, "files": self.files, "size": self.size,
               "targets": [{**asdict(t), "torch": list(t.torch)} for t in self.targets],
               "last_sync": asdict(self.last_sync) if self.last_sync else None,
               "tombstones": [t.to_json() for t in self.tombstones]}
        if self.releases is not None:
            doc["releases"] = self.releases
            doc["accelerators"] = [{**asdict(a), "torch": list(a.torch)} for a in self.accelerators]
        return doc


def _regional(manifest: mf.Manifest, listed: dict[str, tuple[str, ...]]) -> tuple[AcceleratorStatus, ...]:
    """Per accelerator (as its index lists them: a macOS CPU wheel has no ``+cpu``), the torch
    releases of the torch wheels the mirror holds."""
    held = {f.path for f in manifest.files if f.kind == "wheel"}
    out = []
    for acc, paths in sorted(listed.items()):
        versions = []
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if path not in held or not name.startswith("torch-"):
                continue
            try:
                w = parse_wheel(name)
            except (TorchdepotError, ValueError):
                continue
            if w.name == "torch":
                versions.append(w.public_version)
        if versions:
            out.append(AcceleratorStatus(accelerator=acc, torch=_newest_first(set(versions)), wheels=len(versions)))
    return tuple(out)


def _newest_first(versions: set[str]) -> tuple[str, ...]:
    return tuple(sorted(versions, key=version_sort_key, reverse=True))


def mirror_status(root: Path | str, manifest: mf.Manifest,
                  listed: dict[str, tuple[str, ...]] | None = None) -> MirrorStatus:
    """``listed``: a regional mirror's paths per accelerator index (``sync.regional``)."""
    sizes = {f.path: f.size for f in manifest.files}
    origin = {r.id: r.origin for r in manifest.recorded}
    out = []
    for t in sorted(manifest.targets, key=lambda t: (t.kind, t.id)):
        paths = {p.path for p in t.packages}
        versions = {t.torch} if t.torch else set()
        for r in manifest.releases:
            if r.target == t.id and t.kind == "pip":
                paths |= set(r.paths)
                versions.add(r.torch)
        paths |= {metadata_path(p) for p in paths if metadata_path(p) in sizes}
        held = [p for p in paths if p in sizes]
        out.append(TargetStatus(id=t.id, kind=t.kind, origin=origin.get(t.id, "spec"),
                                torch=_newest_first(versions), files=len(held), size=sum(sizes[p] for p in held)))
    releases = manifest.spec.get("releases")
    regional = isinstance(releases, str) and bool(releases)
    return MirrorStatus(root=str(root), targets=tuple(out), files=len(manifest.files),
                        size=sum(sizes.values()), last_sync=manifest.last_sync,
                        tombstones=tuple(sorted(manifest.tombstones, key=lambda t: t.path)),
                        releases=releases if regional else None,
                        accelerators=_regional(manifest, listed or {}) if regional else ())


def render(status: MirrorStatus) -> str:
    if status.releases is not None:
        releases = status.releases if status.releases.startswith("torch") else f"torch{status.releases}"
        lines = [f"mirror {status.root}: regional, releases {releases}, {len(status.accelerators)} "
                 f"accelerators, {status.files} files, {format_size(status.size)}"]
    else:
        lines = [f"mirror {status.root}: {len(status.targets)} targets, {status.files} files, "
                 f"{format_size(status.size)}"]
    s = status.last_sync
    lines.append(f"last sync: {s.finished} ({s.seconds:.1f} s); verify: {s.verify}" if s
                 else "last sync: not recorded (run 'torchdepot mirror' to record it); verify: unknown")
    awidth = max((len(a.accelerator) for a in status.accelerators), default=0)
    for a in status.accelerators:
        lines.append(f"  {a.accelerator:<{awidth}}  torch {', '.join(a.torch)}  {a.wheels} torch wheels")
    width = max((len(t.id) for t in status.targets), default=0)
    for t in status.targets:
        torch = ("torch " + ", ".join(t.torch)) if t.torch else "no torch"
        lines.append(f"  {t.id:<{width}}  {t.origin:<5}  {torch}  {t.files} files  {format_size(t.size)}")
    if status.tombstones:
        lines.append(f"{len(status.tombstones)} tombstone(s): kept files upstream no longer serves as published")
        lines.extend(f"  {t.line()}" for t in status.tombstones)
    return "\n".join(lines)
