"""Validate a subdir's ``repodata.json`` into :class:`~torchdepot.model.condabuild.CondaRecord` s,
and splice records into upstream's without parsing it (:func:`splice_repodata`, pull-through).

Upstream is untrusted: a file name or package name that could leave the channel
directory (``/``, ``..``), truncated JSON, or a record that disagrees with its file
name stops the sync with one line naming the channel, subdir and record, before
anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


# -- upstream's repodata with records added, never parsed record by record ---------------------
# The first ``"<key>": {`` of each top-level object a splice touches. In valid JSON a quote-delimited
# ``"packages.conda"`` followed by ``:`` can only be a key (inside a string its quotes are escaped).
_SPLICE_KEYS = re.compile(rb'"(info|packages|packages\.conda)"\s*:\s*\{')
_BASE_URL_KEY = re.compile(rb'"base_url"\s*:')
_SCAN = 8 * 1024 * 1024
_OVERLAP = 4096  # longest key match across a read boundary
_INFO_MAX = 1024 * 1024  # an ``info`` object is a few fields


def _scan(path: Path, pattern: re.Pattern[bytes]) -> dict[bytes, int]:
    """{group 1: absolute offset just past its first match} over the whole file, read in steps."""
    found: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        pos, buf = 0, b""
        while chunk := fh.read(_SCAN):
            buf += chunk
            for m in pattern.finditer(buf):
                found.setdefault(m.group(1) if pattern.groups else b"", pos + m.end())
            keep = buf[-_OVERLAP:]
            pos += len(buf) - len(keep)
            buf = keep
    return found


def _peek(fh: BinaryIO, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


# JSON depth without a parser, in C-speed passes over bytes: escapes dropped, then everything but
# quotes and brackets; adjacent quote pairs (a string with no bracket in it, or two strings
# meeting) dropped, then the few strings left; innermost bracket pairs then removed once per
# pass: the passes needed are the depth.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_QUOTED = re.compile(rb'"[^"]*"')
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
MAX_DEPTH = 64  # a record is 3 deep; conda's own client recurses (Python's json) on what we serve


def _structure(path: Path) -> bytes:
    """The brackets of the JSON file at ``path`` that are outside strings, in order."""
    out = bytearray()
    carry = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_SCAN):
            buf = carry + chunk
            # an escape cut by the read: its backslash goes with the next chunk
            odd = (len(buf) - len(buf.rstrip(b"\\"))) % 2
            buf, carry = (buf[:-1], b"\\") if odd else (buf, b"")
            out += _ESCAPE.sub(b"", buf).translate(None, _NOT_STRUCTURE)
    return _QUOTED.sub(b"", bytes(out).replace(b'""', b""))


def check_depth(path: Path, where: str, limit: int = MAX_DEPTH) -> None:
    """Refuse (:class:`RepodataError`) a JSON file nested deeper than ``limit`` (or with
    unbalanced brackets): what we serve must not make a client's parser recurse without bound.
    Streamed; the scanning is done by ``re``/``bytes`` (no Python loop per byte or record)."""
    brackets = _structure(path)
    for _ in range(limit):
        if not brackets:
            return
        inner = _EMPTY_PAIR.sub(b"", brackets)
        if inner == brackets:
            break
        brackets = inner
    if brackets:
        raise RepodataError(f"{where}: repodata nested deeper than {limit} levels (or unbalanced); refused")


def splice_repodata(src: Path, dest: Path, subdir: str, extra: dict[str, dict[str, Any]], where: str) -> None:
    """Write ``src`` (upstream's repodata.json, already bounded on download) to ``dest`` with the
    records ``extra`` ({file name: record}) added to ``packages``/``packages.conda`` and its
    ``info`` replaced by ``{"subdir": ...}`` plus upstream's other fields except ``base_url``
    (CEP-15: a client would fetch packages from there, not from us). The records themselves
    are copied as bytes, never parsed: a 1M-record conda-forge subdir costs two streamed
    passes and a depth check (:func:`check_depth`). The caller checks the result with a real parser (py-rattler) before serving it.
    Raises :class:`RepodataError` (one line naming ``where``) for a layout it cannot splice."""
    check_depth(src, where)
    at = {k.decode(): v for k, v in _scan(src, _SPLICE_KEYS).items()}
    edits: list[tuple[int, int, bytes]] = []  # (offset, resume at, bytes written there)
    front: list[bytes] = []  # top-level members added right after the root ``{``
    with open(src, "rb") as fh:
        raw = _peek(fh, 0, _OVERLAP)
        head = raw.lstrip()
        if not head.startswith(b"{"):
            raise RepodataError(f"{where}: repodata is not a JSON object")
        root = len(raw) - len(head) + 1  # just past the root ``{``
        info: dict[str, Any] = {}
        if "info" in at:
            start = at["info"] - 1
            # surrogateescape: the window may end inside a character; the byte length still round-trips
            window = _peek(fh, start, _INFO_MAX).decode("utf-8", "surrogateescape")
            try:
                doc, end = json.JSONDecoder().raw_decode(window)
            except (ValueError, RecursionError):
                raise RepodataError(f"{where}: repodata 'info' is not a small JSON object") from None
            info = doc if isinstance(doc, dict) else {}
            size = len(window[:end].encode("utf-8", "surrogateescape"))
        new_info = {**{k: v for k, v in info.items() if k != "base_url"}, "subdir": subdir}
        info_bytes = json.dumps(new_info, sort_keys=True).encode()
        if "info" in at:
            edits.append((at["info"] - 1, at["info"] - 1 + size, info_bytes))
        else:
            front.append(b'"info": ' + info_bytes)
        for key, suffix in (("packages", ".tar.bz2"), ("packages.conda", ".conda")):
            recs = {fn: rec for fn, rec in sorted(extra.items()) if fn.endswith(suffix)}
            if not recs:
                continue
            body = ", ".join(f"{json.dumps(fn)}: {json.dumps(rec, sort_keys=True)}" for fn, rec in recs.items())
            if key not in at:
                front.append(f"{json.dumps(key)}: {{{body}}}".encode())
                continue
            empty = _peek(fh, at[key], _OVERLAP).lstrip().startswith(b"}")
            edits.append((at[key], at[key], body.encode() + (b"" if empty else b", ")))
    if front:
        edits.append((root, root, b", ".join(front) + (b"" if head[1:].lstrip().startswith(b"}") else b", ")))
    edits.sort()
    for (_, a_end, _), (b_off, _, _) in zip(edits, edits[1:], strict=False):
        if b_off < a_end:
            raise RepodataError(f"{where}: repodata objects overlap ('packages' inside 'info'?); refused")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(src, "rb") as fh, open(part, "wb") as out:
            pos = 0
            for off, end, data in [*edits, (-1, -1, b"")]:
                while off < 0 or pos < off:  # copy up to the edit (to the end for the sentinel)
                    chunk = fh.read(_SCAN if off < 0 else min(_SCAN, off - pos))
                    if not chunk:
                        break
                    out.write(chunk)
                    pos += len(chunk)
                if off < 0:
                    break
                out.write(data)
                fh.seek(end)
                pos = end
        if _scan(part, _BASE_URL_KEY):
            raise RepodataError(f"{where}: repodata names a base_url outside 'info'; refused (packages would "
                                "be fetched from another host)")
        os.replace(part, dest)
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
