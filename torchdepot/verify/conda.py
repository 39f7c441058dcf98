"""Conda explicit locks: hashes vs the mirror, the variant's build string, and an install with
py-rattler into a throwaway prefix (no conda/mamba needed), from the mirror's channels only."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import ParseError, TorchdepotError
from torchdepot.lockfiles import BASE_ENV
from torchdepot.model.condabuild import parse_build_string, split_conda_filename
from torchdepot.store.manifest import Manifest
from torchdepot.verify.smoke import Check

_LINE = re.compile(r"^(?P<url>\S+?)#sha256:(?P<sha>[0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class CondaPin:
    url: str  # as written (may hold ${TORCHDEPOT_MIRROR})
    sha256: str

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1])

    def resolved(self, mirror: str) -> str:
        return self.url.replace("${" + BASE_ENV + "}", mirror.rstrip("/"))


def parse_explicit(text: str, where: str) -> tuple[CondaPin, ...]:
    if "@EXPLICIT" not in {ln.strip() for ln in text.splitlines()}:
        raise TorchdepotError(f"{where}: no @EXPLICIT line")
    pins = []
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith("#") or s == "@EXPLICIT":
            continue
        m = _LINE.match(s)
        if not m:
            raise TorchdepotError(f"{where}: line without #sha256: {s[:100]!r}")
        pins.append(CondaPin(m.group("url"), m.group("sha").lower()))
    return tuple(pins)


def hash_problems(pins: tuple[CondaPin, ...], manifest: Manifest, where: Path) -> list[str]:
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in manifest.files if f.kind == "conda"}
    out = []
    for p in pins:
        f = by_name.get(p.filename)
        if f is None:
            out.append(f"{where}: {p.filename} is not on the mirror")
        elif f.sha256 != p.sha256:
            out.append(f"{where}: {p.filename} hash sha256:{p.sha256[:12]}... != mirror's sha256:{f.sha256[:12]}...")
    return out


def build_check(pins: tuple[CondaPin, ...], accelerator: str) -> Check:
    """Solvers pick CPU builds silently at times: the lock's pytorch build must be the variant's."""
    for p in pins:
        try:
            name, version, build, _ = split_conda_filename(p.filename)
        except (ParseError, ValueError):
            continue
        if name != "pytorch":
            continue
        try:
            got = parse_build_string(build).accelerator
        except ParseError:
            got = None
        if got is None:
            return Check("conda build = variant", "info", f"pytorch {version} build {build} names no accelerator")
        ok = got.name == accelerator or (got.kind == "cuda" and accelerator.startswith("cu") and got.name[:4] == accelerator[:4])
        return Check("conda build = variant", "pass" if ok else "fail", f"pytorch {version}={build} ({got.name}; variant {accelerator})")
    return Check("conda build = variant", "not run", "no pytorch package in the conda lock")


def _repodata_records(channel_subdir_url: str, workdir: Path):
    """RepoDataRecords of one channel/subdir of the mirror (file:// read in place, http fetched)."""
    import rattler

    from torchdepot.net.http import make_session

    with make_session() as client:
        body, _ = client.get_bytes(channel_subdir_url + "/repodata.json")
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=workdir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    channel_url = channel_subdir_url.rsplit("/", 1)[0]
    return rattler.RepoData.from_path(tmp).into_repo_data(rattler.Channel(channel_url))


def install(pins: tuple[CondaPin, ...], mirror: str, prefix: Path, workdir: Path, subdir: str) -> int:
    """Install exactly the lock's files into ``prefix`` with py-rattler. Returns the count."""
    import rattler

    records = []
    wanted: dict[str, list[CondaPin]] = {}
    for p in pins:
        wanted.setdefault(p.resolved(mirror).rsplit("/", 1)[0], []).append(p)
    for base, group in sorted(wanted.items()):
        by_file = {r.file_name: r for r in _repodata_records(base, workdir)}
        for p in group:
            r = by_file.get(p.filename)
            if r is None:
                raise TorchdepotError(f"{p.filename}: not in {base}/repodata.json")
            have = r.sha256.hex() if isinstance(r.sha256, (bytes, bytearray)) else str(r.sha256 or "")
            if have.lower() != p.sha256:
                raise TorchdepotError(f"{p.filename}: repodata sha256 differs from the lock's")
            records.append(r)
    # rattler checks each download against the record's sha256 before linking
    asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=workdir / "pkgs", show_progress=False,
                                execute_link_scripts=False))
    return len(records)


def installed_problems(prefix: Path, pins: tuple[CondaPin, ...]) -> list[str]:
    """The prefix's installed records (``conda-meta/*.json``, read by py-rattler) against the
    lock: exactly the locked files, each with the locked sha256. [] when they agree."""
    import rattler

    got: dict[str, str] = {}
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        rec = rattler.PrefixRecord.from_path(meta)
        sha = rec.sha256.hex() if isinstance(rec.sha256, (bytes, bytearray)) else str(rec.sha256 or "")
        got[rec.file_name] = sha.lower()
    want = {p.filename: p.sha256 for p in pins}
    out = [f"{fn}: locked, not installed" for fn in sorted(set(want) - set(got))]
    out += [f"{fn}: installed, not in the lock" for fn in sorted(set(got) - set(want))]
    out += [f"{fn}: installed sha256 {got[fn][:12]}... != locked {want[fn][:12]}..."
            for fn in sorted(set(want) & set(got)) if got[fn] != want[fn]]
    return out
