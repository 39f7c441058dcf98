"""Read a remote wheel's ``*.dist-info/METADATA`` without downloading the wheel.

When upstream's PEP 658 ``.metadata`` is missing or disagrees with its declared hash, the
wheel itself is the truth. A wheel is a zip: its central directory sits at the end, so
HTTP Range reads of the tail plus the METADATA member cost a few requests of at most
64 KB each, even for a 2.5 GB wheel. A server that ignores Range (answers 200) gets the whole wheel read once instead
(streamed to a temporary file, then handed to the caller's one download of the file, so its fetch does not send
it again). Requests are counted in the reader (``ranges``/``wheels``).

Bytes that are not a usable wheel (not a zip, no METADATA, METADATA over its caps) raise
:class:`BadWheelError`, so a sync can leave that one candidate out instead of failing: it
says what the file is, not that upstream is unreachable. :func:`metadata_refusal` bounds what
a resolver is shown: METADATA with more than :data:`MAX_REQUIRES_DIST` ``Requires-Dist`` lines
(a 2.3 MB METADATA with 100,000 of them took 419 s and 1.5 GB in the resolver) is refused,
counted in one linear pass over the header block.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path

import requests

from torchdepot.errors import TorchdepotError, UpstreamError
from torchdepot.net.http import file_url_path
from torchdepot.sources.upstream import Read, UpstreamReader
from torchdepot.store.pages import metadata_member

BLOCK = 64 * 1024
# The most Requires-Dist lines a wheel's METADATA may carry. Real wheels carry tens (torch 2.x:
# ~30; the largest meta-packages a few hundred); each one is a page the resolver asks for.
MAX_REQUIRES_DIST = 2000


class BadWheelError(UpstreamError):
    """The file's bytes are not a usable wheel (not a zip, no METADATA, METADATA too large)."""


def metadata_refusal(data: bytes) -> str | None:
    """Why a METADATA is refused (one line), or None. Linear: one pass over the header block."""
    header = data.split(b"\n\n", 1)[0]
    count = 0
    for line in header.split(b"\n"):
        if line[:14].lower() == b"requires-dist:":
            count += 1
    if count > MAX_REQUIRES_DIST:
        return (f"METADATA has {count} Requires-Dist lines, over the cap of {MAX_REQUIRES_DIST}; refused")
    return None


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file through Range requests (block-cached)."""

    def __init__(self, reader: UpstreamReader, url: str, size: int, tail: bytes):
        self.reader, self.url, self.size, self.pos = reader, url, size, 0
        self.blocks: dict[int, bytes] = {}
        self.tail_start = size - len(tail)
        self.tail = tail

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def _fetch(self, start: int, end: int) -> bytes:
        self.reader._count("ranges")
        with self.reader.reading(self.url) as read:
            resp = self.reader.client.request("GET", self.url, headers={"Range": f"bytes={start}-{end - 1}"},
                                              stream=False, allow_redirects=False)
            read.sized(resp)
            read.moved(len(resp.content))
            read.end()
        if resp.status_code == 200 and start == 0 and end >= self.size and len(resp.content) == self.size:
            return resp.content  # a range that is the whole file may be answered 200 (RFC 9110 allows it)
        if resp.status_code != 206:
            raise UpstreamError(f"{self.url}: server ignored a Range request (HTTP {resp.status_code})")
        return resp.content

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        start, end = self.pos, self.pos + n
        if start >= self.tail_start:
            data = self.tail[start - self.tail_start:end - self.tail_start]
        else:
            data = self._fetch(start, min(end, self.tail_start))
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _metadata_member(zf: zipfile.ZipFile, project: str, where: str) -> bytes:
    try:
        return metadata_member(zf, project, where)
    except TorchdepotError as exc:
        raise BadWheelError(str(exc)) from None


def _total(content_range: str | None) -> int | None:
    """The total size in ``Content-Range: bytes a-b/total`` (None if absent or ``*``)."""
    total = (content_range or "").rpartition("/")[2].strip()
    return int(total) if total.isascii() and total.isdigit() and len(total) <= 19 else None


def _local_metadata(url: str, project: str) -> bytes:
    try:
        with zipfile.ZipFile(file_url_path(url)) as zf:
            return _metadata_member(zf, project, url)
    except zipfile.BadZipFile as exc:
        raise BadWheelError(f"{url}: not a readable wheel ({exc})") from None
    except OSError as exc:
        raise UpstreamError(f"{url}: cannot read it ({exc})") from None


# Given a file holding a wheel's whole bytes (read here anyway) and their sha256, the caller
# keeps them as its one download of that wheel, so its fetch does not send them again.
KeepWhole = Callable[[Path, str], None]


def _kept(keep: KeepWhole | None, data: bytes, spool: Path | None) -> None:
    if keep is not None:
        with tempfile.NamedTemporaryFile(prefix="torchdepot-", suffix=".whl", dir=spool) as tmp:
            tmp.write(data)
            tmp.flush()
            keep(Path(tmp.name), hashlib.sha256(data).hexdigest())


def remote_metadata(reader: UpstreamReader, url: str, project: str, keep: KeepWhole | None = None,
                    spool: Path | None = None) -> bytes:
    """METADATA of the wheel at ``url``: Range reads of its tail and member, else the whole wheel.

    ``keep``: where the wheel was read whole (a server that ignores Range answers the 1-byte
    probe with the whole body; a wheel no larger than the tail read), its bytes go to the
    caller after its METADATA is read, so they are not sent a second time. ``spool``: the
    folder the whole read's temporary file is written in (the keeper's filesystem, so keeping
    it is a hard link, not a copy); None: the system's temporary folder. The file's size, once
    a response states it, is noted in the reader (:meth:`UpstreamReader.note_size`)."""
    if urllib.parse.urlsplit(url).scheme == "file":
        return _local_metadata(url, project)
    if reader.policy.refusal(url):
        raise UpstreamError(f"{url}: {reader.policy.refusal(url)}")
    # One byte first: its Content-Range gives the size (servers that ignore suffix ranges,
    # "bytes=-N", still honour this), or a 200 shows the server has no Range support at all.
    reader._count("ranges")
    with reader.reading(url) as read:  # the progress display's: the probe, or the whole read it turns into
        resp = reader.client.request("GET", url, headers={"Range": "bytes=0-0"}, stream=True, allow_redirects=False)
        try:
            return _from_probe(reader, url, project, resp, read, keep, spool)
        except OSError as exc:
            raise UpstreamError(f"{url}: {exc}") from None
        finally:
            resp.close()


def _from_probe(reader: UpstreamReader, url: str, project: str, resp: requests.Response, read: Read,
                keep: KeepWhole | None, spool: Path | None) -> bytes:
    """:func:`remote_metadata` after the 1-byte probe: Range reads when ``resp`` is a 206, else
    the whole wheel from ``resp``'s body (the server ignored the Range)."""
    total = _total(resp.headers.get("Content-Range")) if resp.status_code == 206 else None
    if total is not None:
        read.end()  # the probe's byte is not read (the body is left unread)
        reader.note_size(url, total)
        view = _RangeFile(reader, url, total, b"")
        view.tail = view._fetch(max(0, total - BLOCK), total)  # end record + central directory, usually
        view.tail_start = total - len(view.tail)
        try:
            with zipfile.ZipFile(io.BufferedReader(view, BLOCK)) as zf:
                meta = _metadata_member(zf, project, url)
        except zipfile.BadZipFile as exc:
            raise BadWheelError(f"{url}: not a readable wheel ({exc})") from None
        if view.tail_start == 0 and len(view.tail) == total:  # the tail was the whole wheel
            _kept(keep, view.tail, spool)
        return meta
    # No Range support: read the whole wheel once, to disk, not memory.
    reader._count("wheels")
    read.sized(resp)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(prefix="torchdepot-", suffix=".whl", dir=spool) as tmp:
        for chunk in resp.iter_content(256 * 1024):  # the progress display moves every 256 KB
            tmp.write(chunk)
            digest.update(chunk)
            read.moved(len(chunk))
        tmp.flush()
        resp.close()
        read.end()
        reader.note_size(url, tmp.tell())
        meta = _local_metadata(Path(tmp.name).as_uri(), project)
        if keep is not None:
            keep(Path(tmp.name), digest.hexdigest())
        return meta
