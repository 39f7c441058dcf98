"""Writing a bundle: streaming tar (optionally zstd, optionally split), hashed as it goes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, BinaryIO, cast

from tqdm import tqdm

from torchdepot import __version__
from torchdepot.errors import IntegrityError
from torchdepot.ship.bundle.model import (
    BUNDLE_HEAD,
    BUNDLE_MANIFEST,
    FORMAT,
    HEAD_FORMAT,
    VERSION,
    BundleFile,
    BundlePlan,
)
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import fsync_dir

# ---------------------------------------------------------------- writing

class _PartWriter(io.RawIOBase):
    """A write-only stream into ``out`` or, with ``split``, ``out.000``, ``out.001``...

    Parts are written as ``*.part`` and renamed only when the whole bundle succeeded.
    """

    def __init__(self, out: Path, split: int | None):
        self.out, self.split = Path(out), split
        self.parts: list[Path] = []
        self.left = 0
        self.fh: BinaryIO = self._open_part()

    def writable(self) -> bool:
        return True

    def _final(self, i: int) -> Path:
        return self.out if self.split is None else self.out.with_name(f"{self.out.name}.{i:03d}")

    def _open_next(self) -> None:
        self.fh.close()
        self.fh = self._open_part()

    def _open_part(self) -> BinaryIO:
        final = self._final(len(self.parts))
        tmp = final.with_name(final.name + ".part")
        self.parts.append(tmp)
        self.left = self.split or -1
        return open(tmp, "wb")  # noqa: SIM115 - the writer keeps it across write() calls, closed by the next part or close()

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        while len(view):
            if self.split is not None and self.left == 0:
                self._open_next()
            take = len(view) if self.split is None else min(len(view), self.left)
            self.fh.write(view[:take])
            view = view[take:]
            if self.split is not None:
                self.left -= take
        return n

    def commit(self) -> list[Path]:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        finals = []
        for i, tmp in enumerate(self.parts):
            final = self._final(i)
            os.replace(tmp, final)
            finals.append(final)
        if self.split is not None:  # stale parts of an older, bigger bundle would be joined in
            for stale in self.out.parent.glob(f"{glob.escape(self.out.name)}.[0-9][0-9][0-9]"):
                if int(stale.name[-3:]) >= len(self.parts):
                    stale.unlink()
        fsync_dir(self.out.parent)
        return finals

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.fh.close()
        for tmp in self.parts:
            with contextlib.suppress(OSError):
                tmp.unlink()


class _HashingReader(io.RawIOBase):
    def __init__(self, fh, bar):
        self.fh, self.bar = fh, bar
        self.h = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def read(self, size=-1) -> bytes:
        data = self.fh.read(size)
        self.h.update(data)
        self.n += len(data)
        self.bar.update(len(data))
        return data


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.type = size, int(mtime), 0o644, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_bundle(plan: BundlePlan, out: Path, zstd: bool = False, split: int | None = None,
                 level: int = 3) -> tuple[list[Path], dict]:
    """Stream the plan into ``out`` (parts if ``split``); -> (files written, bundle manifest)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink = _PartWriter(out, split)
    records: list[BundleFile] = []
    try:
        comp = None
        stream: IO[bytes] = cast(IO[bytes], sink)  # a RawIOBase: tarfile and zstandard only call write()
        if zstd:
            import zstandard

            comp = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True).stream_writer(stream, closefd=False)
            stream = comp
        with tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc="bundle", disable=None) as bar, \
                tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            # the head declares every member's size up front: unbundle stages nothing else
            sizes = [pf.source.stat().st_size for pf in plan.files]
            head = {"format": HEAD_FORMAT, "version": VERSION,
                    "files": [{"path": pf.path, "size": n, "role": pf.role} for pf, n in zip(plan.files, sizes, strict=True)]}
            blob = (json.dumps(head, sort_keys=True) + "\n").encode()
            tar.addfile(_tarinfo(BUNDLE_HEAD, len(blob), time.time()), io.BytesIO(blob))
            for pf, declared in zip(plan.files, sizes, strict=True):
                with open(pf.source, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if st.st_size != declared:
                        raise IntegrityError(f"{pf.source}: changed while bundling; bundle again")
                    reader = _HashingReader(fh, bar)
                    tar.addfile(_tarinfo(pf.path, st.st_size, st.st_mtime), reader)
                sha = reader.h.hexdigest()
                if pf.expect_sha256 and sha != pf.expect_sha256:
                    raise IntegrityError(f"{pf.path}: sha256 {sha} differs from {mf.MANIFEST_NAME} "
                                         f"({pf.expect_sha256}); the mirror is damaged, re-run 'torchdepot mirror'")
                records.append(BundleFile(pf.path, reader.n, sha, pf.role))
            doc = {
                "format": FORMAT,
                "version": VERSION,
                "created_by": f"torchdepot {__version__}",
                "created": int(time.time()),
                "targets": plan.target_ids,
                "incremental": plan.since is not None,
                "spec": plan.manifest.spec,
                "files": [asdict(r) for r in records],
                "manifest": json.loads(plan.manifest.to_json()),
            }
            data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
            tar.addfile(_tarinfo(BUNDLE_MANIFEST, len(data), time.time()), io.BytesIO(data))
        if comp is not None:
            comp.flush(zstandard.FLUSH_FRAME)
            comp.close()
        return sink.commit(), doc
    except BaseException:
        sink.abort()
        raise


