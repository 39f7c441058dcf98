"""The mirror's manifest: what every published file is, and what each target needs.

Layout of a mirror root (``<out>``)::

    packages/<project>/<wheel>             wheels, stored once however many targets need them
    packages/<project>/<wheel>.metadata    PEP 658 core metadata next to each wheel
    whl/  (symlink -> .publish/<gen>/whl)  PEP 503 indexes laid out like download.pytorch.org:
        whl/<accelerator>/<project>/index.html, whl/<project>/index.html (all variants)
    conda/<channel>/<subdir>/<file>        conda packages + repodata.json(.zst); noarch/ always
    targets/<target-id>/pylock.toml        per-target resolution (PEP 751)
    manifest.json                          this file's schema; written LAST, atomically
    index.html                             landing page
    .torchdepot/                           state: hashes.json, partial/, .torchdepot.lock

Every name above is defined once in :mod:`torchdepot.store.layout`. A target id is ``<accelerator>-py<XY>-<platform>`` (``cpu-py311-linux-x86_64``), the
same name as the ``envs/`` lock folder. All paths are POSIX, relative to the root; all
lists are sorted so equal inputs give byte-identical manifests.

The mirror's own lifecycle (issue 14 part 1) is recorded here too, each key written only
when set so manifests without it stay byte-identical:

- ``recorded``: :class:`RecordedTarget` s, every pip target the mirror holds and who asked
  for it (``spec`` or ``fetch`` = ``tools/fetch``). A sync keeps them all unless pruned.
- ``releases``: :class:`Release` s, per target and torch version the wheels published for
  it (retention ``keep: N`` counts these; older ones stay listed and indexed until dropped).
- ``last_sync``: :class:`SyncRecord`, when the last sync finished and what its check found
  (the only key that changes on a no-op re-sync).
- ``tombstones``: :class:`Tombstone` s, published wheels upstream no longer serves as the
  mirror holds them (deleted, or re-published with other bytes), kept for the targets named.
- ``pulled``: the paths ``serve --pull-through`` published; a sync keeps their entries (and
  a wheel's ``.metadata``) while the files are on disk with the listed bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.model.targets import TORCH_NAMES
from torchdepot.model.targets import target_id as target_id  # re-exported: manifest callers
from torchdepot.store.fsutil import atomic_write_text, safe_join
from torchdepot.store.layout import MANIFEST_NAME as MANIFEST_NAME  # re-exported

FORMAT = "torchdepot-manifest"
VERSION = 1


# what a listed file is: a wheel, its PEP 658 metadata, a conda package or channel file, a PEP 825
# variants.json, anything else
FileKind = Literal["wheel", "metadata", "conda", "variants-json", "other"]
TargetKind = Literal["pip", "conda"]


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path under the root
    sha256: str  # hash of the bytes we stored (never just upstream's claim)
    size: int
    kind: FileKind
    project: str | None = None
    version: str | None = None
    url: str | None = None  # where it came from
    upstream_sha256: str | None = None  # what upstream claimed (may be None or differ)
    hash_mismatch: bool = False  # upstream claim disagreed; accepted under --on-hash-mismatch warn
    upload_time: str | None = None  # PEP 700 / data-upload-time exactly as upstream gave it; never invented


@dataclass(frozen=True)
class TargetPackage:
    name: str
    version: str
    path: str  # file in the manifest's files
    build: str | None = None  # conda build string
    requires_python: str | None = None
    extras: tuple[str, ...] = ()
    variants_json: str | None = None  # PEP 825: the wheel's label in variants.json (JSON text); None: no variant


@dataclass(frozen=True)
class Target:
    id: str  # "<accelerator>-py<XY>-<platform>"
    kind: TargetKind
    accelerator: str
    python: str  # "3.11"
    platform: str  # "linux-x86_64"
    packages: tuple[TargetPackage, ...] = ()
    index: str | None = None  # pip: "whl/cpu"
    channel: str | None = None  # conda: "conda/<name>"
    subdir: str | None = None  # conda: "linux-64"

    @property
    def torch(self) -> str | None:
        """The torch version this target serves (pip ``torch``, conda ``pytorch``); None without one."""
        return next((p.version for p in self.packages if p.name in TORCH_NAMES), None)


Origin = Literal["spec", "fetch", "locks"]  # who asked for a recorded target: the spec, tools/fetch, mirror --from-locks


@dataclass(frozen=True)
class RecordedTarget:
    """A pip target the mirror holds, kept by every later sync until ``--prune``."""
    id: str
    accelerator: str
    python: str
    platform: str
    origin: Origin  # who asked for it
    torch: str | None = None  # its own torch constraint (tools/fetch --torch), None: the spec's


@dataclass(frozen=True)
class Release:
    """The wheels published for one target and one torch version (``paths``: wheel paths in
    ``files``; each one's ``.metadata`` lies beside it)."""
    target: str  # target id
    torch: str  # torch version, e.g. "2.13.0+cpu"
    paths: tuple[str, ...] = ()


TOMBSTONE_REASONS = ("deleted", "changed")


@dataclass(frozen=True)
class Tombstone:
    """A published wheel upstream no longer serves as the mirror holds it, kept at ``path``
    (listed in ``files``, with its ``.metadata``) while a target in ``targets`` is recorded."""
    path: str
    project: str
    version: str
    reason: str  # "deleted": upstream no longer lists it; "changed": it lists other bytes under the name
    targets: tuple[str, ...] = ()  # the recorded targets it is kept for
    replaced_by: str | None = None  # "changed": the path the new bytes were stored at

    def line(self) -> str:
        why = ("upstream no longer lists it" if self.reason == "deleted" else
               "upstream re-published it with other bytes" + (f" (now {self.replaced_by})" if self.replaced_by else ""))
        kept = f"; kept for {', '.join(self.targets)}" if self.targets else ""
        return f"tombstone: {self.project} {self.version} ({self.path}): {why}{kept}"

    def to_json(self) -> dict[str, Any]:
        """As ``status --json`` and ``mirror --json`` print it."""
        return {**asdict(self), "targets": list(self.targets)}


@dataclass(frozen=True)
class SyncRecord:
    finished: str  # UTC, "2026-12-04T01:40:00Z"
    seconds: float
    verify: str  # "ok" | "NOT OK" | "unchecked" (the run stopped before its check)
    detail: str = ""  # the check's summary line


@dataclass
class Manifest:
    files: list[FileEntry] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # the spec as JSON data (MirrorSpec.to_data)
    recorded: list[RecordedTarget] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    last_sync: SyncRecord | None = None
    tombstones: list[Tombstone] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)  # paths serve --pull-through published

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_json(self) -> str:
        # upload_time appears only when upstream gave one: manifests of other files stay byte-identical
        files = sorted(({k: v for k, v in asdict(f).items() if k != "upload_time" or v is not None}
                        for f in self.files), key=lambda f: f["path"])
        targets = []
        for t in sorted(self.targets, key=lambda t: (t.kind, t.id)):
            d = asdict(t)
            d["packages"] = sorted(({k: v for k, v in p.items() if k != "variants_json" or v is not None}
                                    for p in d["packages"]), key=lambda p: (p["name"], p["path"]))
            targets.append(d)
        doc = {"format": FORMAT, "version": VERSION, "spec": self.spec, "files": files, "targets": targets}
        if self.recorded:
            doc["recorded"] = [asdict(r) for r in sorted(self.recorded, key=lambda r: r.id)]
        if self.releases:
            doc["releases"] = [{**asdict(r), "paths": sorted(r.paths)}
                               for r in sorted(self.releases, key=lambda r: (r.target, r.torch))]
        if self.last_sync is not None:
            doc["last_sync"] = asdict(self.last_sync)
        if self.tombstones:
            doc["tombstones"] = [{**asdict(t), "targets": sorted(t.targets)}
                                 for t in sorted(self.tombstones, key=lambda t: t.path)]
        if self.pulled:
            doc["pulled"] = sorted(set(self.pulled))
        return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_NAME) -> Manifest:
        return cls.from_doc(load_json(text, where, what="manifest JSON"), where)

    @classmethod
    def from_doc(cls, doc: object, where: str = MANIFEST_NAME) -> Manifest:
        """A parsed JSON document -> Manifest; every field's type is checked (one-line
        :class:`TorchdepotError` naming ``where`` otherwise), no path may leave the root."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise TorchdepotError(f"{where}: not a torchdepot manifest v{VERSION}")
        files = [_record(FileEntry, f, f"{where}: files[{i}]") for i, f in enumerate(_items(doc, "files", where))]
        targets = []
        for i, t in enumerate(_items(doc, "targets", where)):
            at = f"{where}: targets[{i}]"
            if not isinstance(t, dict):
                raise TorchdepotError(f"{at}: not an object")
            pkgs = tuple(_record(TargetPackage, {**p, "extras": p.get("extras") or ()} if isinstance(p, dict) else p,
                                 f"{at}.packages[{j}]") for j, p in enumerate(_items(t, "packages", at, required=False)))
            targets.append(_record(Target, {**t, "packages": pkgs}, at))
        for f in files:
            safe_join(Path("/nonexistent-root"), f.path)  # refuse traversal in a manifest
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise TorchdepotError(f"{where}: spec: not an object")
        recorded = [_record(RecordedTarget, r, f"{where}: recorded[{i}]")
                    for i, r in enumerate(_items(doc, "recorded", where, required=False))]
        releases = []
        for i, r in enumerate(_items(doc, "releases", where, required=False)):
            at = f"{where}: releases[{i}]"
            rel = _record(Release, _strings_tupled(r, "paths", at), at)
            for p in rel.paths:
                safe_join(Path("/nonexistent-root"), p)
            releases.append(rel)
        last = doc.get("last_sync")
        last_sync = None if last is None else _record(SyncRecord, last, f"{where}: last_sync")
        tombstones = []
        for i, t in enumerate(_items(doc, "tombstones", where, required=False)):
            at = f"{where}: tombstones[{i}]"
            ts = _record(Tombstone, _strings_tupled(t, "targets", at), at)
            if ts.reason not in TOMBSTONE_REASONS:
                raise TorchdepotError(f"{at}: reason: {ts.reason[:40]!r} is not one of {', '.join(TOMBSTONE_REASONS)}")
            safe_join(Path("/nonexistent-root"), ts.path)
            tombstones.append(ts)
        pulled = _items(doc, "pulled", where, required=False)
        for i, item in enumerate(pulled):
            if not isinstance(item, str):
                raise TorchdepotError(f"{where}: pulled[{i}]: expected a string")
            safe_join(Path("/nonexistent-root"), item)
        return cls(files=files, targets=targets, spec=spec, recorded=recorded, releases=releases, last_sync=last_sync,
                   tombstones=tombstones, pulled=[str(p) for p in pulled])


if TYPE_CHECKING:
    from _typeshed import DataclassInstance
_D = TypeVar("_D", bound="DataclassInstance")

# annotation (as written above) -> accepted JSON types; bool is not an int here
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "FileKind": (str,), "TargetKind": (str,), "Origin": (str,),
    "int": (int,), "bool": (bool,), "str | None": (str, type(None)),
    "int | None": (int, type(None)), "tuple[TargetPackage, ...]": (tuple,),
    "tuple[str, ...]": (tuple, list), "float": (int, float),  # lists become tuples in _record
}
# Literal annotations -> their values, checked at this boundary
_LITERALS: dict[str, tuple[str, ...]] = {"FileKind": get_args(FileKind), "TargetKind": get_args(TargetKind),
                                         "Origin": get_args(Origin)}


def _items(doc: dict[str, object], key: str, where: str, required: bool = True) -> list[object]:
    value = doc.get(key, None if required else [])
    if not isinstance(value, list):
        raise TorchdepotError(f"{where}: {key}: {'missing' if value is None else 'not a list'}")
    return value


def _strings_tupled(obj: object, key: str, at: str) -> object:
    """``obj`` with its list of strings under ``key`` as a tuple (the frozen record's type);
    anything else is left for :func:`_record` to refuse."""
    if isinstance(obj, dict) and isinstance(obj.get(key), list):
        if not all(isinstance(x, str) for x in obj[key]):
            raise TorchdepotError(f"{at}: {key}: expected strings")
        return {**obj, key: tuple(obj[key])}
    return obj


def _record(cls: type[_D], data: object, where: str) -> _D:
    """``cls(**data)`` after checking keys and value types against ``cls``'s annotations."""
    if not isinstance(data, dict):
        raise TorchdepotError(f"{where}: not an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            raise TorchdepotError(f"{where}: unknown field {str(key)[:40]!r}")
        ok = _TYPES[str(f.type)]  # annotations are strings here (from __future__ import annotations)
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            raise TorchdepotError(f"{where}: {key}: expected {f.type}, got {type(value).__name__}")
        if str(f.type) in _LITERALS and value not in _LITERALS[str(f.type)]:
            raise TorchdepotError(f"{where}: {key}: {str(value)[:40]!r} is not one of {', '.join(_LITERALS[str(f.type)])}")
        if key == "extras" and not (isinstance(value, (tuple, list)) and all(isinstance(x, str) for x in value)):
            raise TorchdepotError(f"{where}: extras: expected strings")
        if key == "size" and isinstance(value, int) and value < 0:
            raise TorchdepotError(f"{where}: size: negative")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TorchdepotError(f"{where}: missing field {missing[0]!r}")
    if "extras" in data:
        data = {**data, "extras": tuple(data["extras"])}
    return cls(**data)


def load(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise TorchdepotError(f"{path}: no manifest (is {root} a torchdepot mirror? run 'torchdepot mirror' first)") from None
    except UnicodeDecodeError as exc:
        raise TorchdepotError(f"{path}: not a torchdepot manifest (not UTF-8 text at byte {exc.start})") from None


def save(root: Path, manifest: Manifest) -> None:
    atomic_write_text(Path(root) / MANIFEST_NAME, manifest.to_json())

