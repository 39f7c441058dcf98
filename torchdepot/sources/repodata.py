"""Validate a subdir's ``repodata.json`` into :class:`~torchdepot.model.condabuild.CondaRecord` s.

Upstream is untrusted: a file name or package name that could leave the channel
directory (``/``, ``..``), truncated JSON, or a record that disagrees with its file
name stops the sync with one line naming the channel, subdir and record, before
anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import ParseError, TorchdepotError, UnsafePathError, load_json
from torchdepot.model.condabuild import CondaRecord, record_from_repodata
from torchdepot.model.names import conda_filename, conda_package_name


class RepodataError(TorchdepotError):
    """Repodata that cannot be mirrored safely; the message names channel/subdir/record."""


@dataclass(frozen=True)
class SubdirRepodata:
    channel: str
    subdir: str
    where: str  # URL or path, for messages
    info: dict
    records: dict[str, CondaRecord]  # filename -> record

    def by_name(self, name: str) -> list[CondaRecord]:
        return [r for r in self.records.values() if r.name == name]


def _check_name(where: str, filename: str, rec: object) -> None:
    """Conda's own name rule (``_libgcc_mutex`` is valid); the file name checked as a path."""
    name = rec.get("name") if isinstance(rec, dict) else None
    if isinstance(name, str):
        try:
            conda_package_name(name)
        except UnsafePathError:
            raise RepodataError(f"{where}: record {filename[:300]!r} has unsafe package name {name[:300]!r}") from None
    try:
        conda_filename(filename)
    except UnsafePathError:
        raise RepodataError(f"{where}: unsafe package file name {filename[:300]!r}") from None


def parse_repodata(data: bytes | str, channel: str, subdir: str, where: str) -> SubdirRepodata:
    """Parse and validate every record. Raises :class:`RepodataError` (one line)."""
    doc = load_json(data, where, what="repodata JSON", error=RepodataError)
    if not isinstance(doc, dict):
        raise RepodataError(f"{where}: repodata is not a JSON object")
    info = info_doc if isinstance(info_doc := doc.get("info"), dict) else {}
    declared = info.get("subdir")
    if isinstance(declared, str) and declared != subdir:
        raise RepodataError(f"{where}: repodata is for subdir {declared!r}, expected {subdir!r}")
    records: dict[str, CondaRecord] = {}
    for key in ("packages", "packages.conda"):
        table = doc.get(key) or {}
        if not isinstance(table, dict):
            raise RepodataError(f"{where}: {key!r} is not an object")
        for filename, rec in table.items():
            _check_name(where, filename, rec)
            try:
                records[filename] = record_from_repodata(channel, subdir, filename, rec)
            except ParseError as exc:
                raise RepodataError(f"{where}: {exc}") from None
    return SubdirRepodata(channel, subdir, where, info, records)


def load_repodata(path: Path, channel: str, subdir: str, where: str | None = None) -> SubdirRepodata:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RepodataError(f"{where or path}: {exc.strerror or exc}") from None
    return parse_repodata(data, channel, subdir, where or str(path))


# Fields py-rattler adds to a record it read (where it came from): not part of upstream's record.
_LOCATION_FIELDS = ("fn", "url", "channel")


def chosen_record(channel: str, subdir: str, filename: str, record_json: str, where: str) -> CondaRecord:
    """One record the solver chose (``RepoDataRecord.to_json()``), validated as strictly as a
    parsed one: conda's name rule, a safe file name that agrees with the record."""
    rec = load_json(record_json, f"{where}: record {filename[:300]!r}", error=RepodataError)
    if not isinstance(rec, dict):
        raise RepodataError(f"{where}: record {filename[:300]!r} is not an object")
    rec = {k: v for k, v in rec.items() if k not in _LOCATION_FIELDS}
    _check_name(where, filename, rec)
    try:
        return record_from_repodata(channel, subdir, filename, rec)
    except ParseError as exc:
        raise RepodataError(f"{where}: {exc}") from None


def require_hashes(where: str, rec: CondaRecord) -> None:
    """A record we mirror must say what its bytes are: sha256 and size."""
    if rec.sha256 is None:
        raise RepodataError(f"{where}: record {rec.filename!r} has no valid sha256; refusing to mirror it unverified")
    if rec.size is None:
        raise RepodataError(f"{where}: record {rec.filename!r} has no size")
