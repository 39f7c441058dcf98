"""Conda channel listings: ``<channel>/<subdir>/repodata.json`` (or ``.json.zst``).

Pure parsing of ``packages`` (``.tar.bz2``) and ``packages.conda`` into
:class:`torchdepot.condabuild.CondaRecord`; records that cannot be used are skipped and
counted. Fetching prefers the zstd-compressed file (a tenth of the size) and falls back
to plain JSON when the server lacks it.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

import zstandard

from ..condabuild import CondaRecord, record_from_repodata
from ..errors import ParseError, UpstreamError
from .links import warnings_summary

SECTIONS = ("packages", "packages.conda")
MAX_REPODATA_BYTES = 2 * 1024 * 1024 * 1024  # decompression bomb guard (conda-forge is ~1 GB)


@dataclass
class Repodata:
    channel: str
    subdir: str
    records: list[CondaRecord] = field(default_factory=list)
    warnings: collections.Counter = field(default_factory=collections.Counter)
    info: dict = field(default_factory=dict)
    source_url: str | None = None

    def by_name(self, name: str) -> list[CondaRecord]:
        return [r for r in self.records if r.name == name]


def parse_repodata(body: bytes, channel: str, subdir: str) -> Repodata:
    """Parse repodata JSON bytes. Raises :class:`ParseError` only when the document as a
    whole is not repodata (not JSON, not an object); bad records are skipped."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ParseError(f"repodata for {channel}/{subdir} is not JSON: {str(exc)[:100]}") from None
    if not isinstance(data, dict):
        raise ParseError(f"repodata for {channel}/{subdir} is not a JSON object")
    out = Repodata(channel=channel, subdir=subdir)
    info = data.get("info")
    out.info = info if isinstance(info, dict) else {}
    for section in SECTIONS:
        entries = data.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            out.warnings[f"'{section}' is not an object"] += 1
            continue
        for filename, rec in entries.items():
            try:
                out.records.append(record_from_repodata(channel, subdir, filename, rec))
            except ParseError:
                out.warnings["unusable repodata record"] += 1
    return out


def decompress_zst(body: bytes, url: str, limit: int = MAX_REPODATA_BYTES) -> bytes:
    """Decompress ``repodata.json.zst``, refusing more than ``limit`` bytes of output.
    Also used by the conda mirror's fetcher (torchdepot.conda.repodata_fetch)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            data = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise UpstreamError(f"{url}: not a valid zstd stream ({exc})") from None
    if len(data) > limit:
        raise UpstreamError(f"{url}: repodata larger than {limit} bytes")
    return data


def _stderr(message: str) -> None:
    import sys

    print(f"torchdepot: warning: {message}", file=sys.stderr)


def fetch_repodata(client, channel_url: str, subdir: str, *, channel: str | None = None,
                   prefer_zst: bool = True, warn=_stderr) -> Repodata:
    """GET ``<channel_url>/<subdir>/repodata.json[.zst]`` and parse it.

    ``channel`` names the channel in the records (default: the URL's last segment).
    Skipped records are summarised once through ``warn`` (stderr by default)."""
    base = channel_url.rstrip("/")
    name = channel or base.rsplit("/", 1)[-1]
    url = f"{base}/{subdir}/repodata.json"
    body = None
    source = url
    if prefer_zst:
        try:
            raw, _ = client.get_bytes(url + ".zst")
            body = decompress_zst(raw, url + ".zst")
            source = url + ".zst"
        except UpstreamError:
            body = None  # not offered (404) or broken: the plain file is authoritative anyway
    if body is None:
        body, _ = client.get_bytes(url)
    try:
        result = parse_repodata(body, name, subdir)
    except ParseError as exc:
        raise UpstreamError(f"{source}: {exc}") from None
    result.source_url = source
    if result.warnings and warn is not None:
        warn(f"{source}: skipped {sum(result.warnings.values())} entries ({warnings_summary(result.warnings)})")
    return result
