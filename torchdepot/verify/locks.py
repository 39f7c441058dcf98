"""Read an envs/<target> folder and check its pins against the mirror's manifest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError, load_json
from torchdepot.lockfiles.render import REQUIREMENTS, VARIANT, conda_lock_name
from torchdepot.store.manifest import Manifest

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\?\s*$")
_HASH = re.compile(r"^\s*--hash=sha256:([0-9a-fA-F]+)\s*\\?\s*$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class EnvLock:
    dir: Path
    variant: dict
    pins: tuple[Pin, ...]

    @property
    def name(self) -> str:
        return self.variant.get("id") or self.dir.name

    @property
    def requirements(self) -> Path:
        return self.dir / REQUIREMENTS

    def conda_lock(self) -> Path | None:
        sub = self.variant.get("conda_subdir")
        p = self.dir / conda_lock_name(sub) if sub else None
        return p if p and p.is_file() else None


def parse_requirements(text: str, where: str) -> tuple[Pin, ...]:
    pins: list[Pin] = []
    cur: tuple[str, str] | None = None
    hashes: list[str] = []
    for ln in text.splitlines():
        if not ln.strip() or ln.lstrip().startswith("#") or ln.startswith("--"):
            continue
        m = _PIN.match(ln)
        h = _HASH.match(ln)
        if m:
            if cur:
                pins.append(Pin(cur[0], cur[1], tuple(hashes)))
            cur, hashes = (m.group(1), m.group(2)), []
        elif h and cur:
            hashes.append(h.group(1).lower())
        else:
            raise TorchdepotError(f"{where}: unexpected line {ln.strip()[:80]!r}")
    if cur:
        pins.append(Pin(cur[0], cur[1], tuple(hashes)))
    return tuple(pins)


def read_env(d: Path) -> EnvLock:
    d = Path(d)
    vpath = d / VARIANT
    try:
        variant = load_json(vpath.read_bytes(), str(vpath))
    except FileNotFoundError:
        raise TorchdepotError(f"{vpath}: missing (is {d} a folder written by 'torchdepot lock'?)") from None
    req = d / REQUIREMENTS
    pins = parse_requirements(req.read_text(encoding="utf-8"), str(req)) if req.is_file() else ()
    return EnvLock(d, variant, pins)


def hash_problems(env: EnvLock, manifest: Manifest) -> list[str]:
    """One line per pin whose hash matches no file of that name/version on the mirror."""
    files_by_path = manifest.by_path()
    by_key: dict[tuple[str, str], list] = {}
    for t in manifest.targets:  # what the mirror says each target installs
        if t.kind == "pip":
            for tp in t.packages:
                if tp.path in files_by_path:
                    by_key.setdefault((canonicalize_name(tp.name), tp.version), []).append(files_by_path[tp.path])
    for f in manifest.files:  # and any wheel it holds
        if f.kind == "wheel" and f.project and f.version:
            by_key.setdefault((canonicalize_name(f.project), f.version), []).append(f)
    by_key = {k: list({f.path: f for f in v}.values()) for k, v in by_key.items()}
    out = []
    for p in env.pins:
        files = by_key.get((canonicalize_name(p.name), p.version), [])
        if not p.sha256:
            out.append(f"{env.requirements}: {p.name}=={p.version} has no --hash")
        elif not files:
            out.append(f"{env.requirements}: {p.name}=={p.version} is not on the mirror")
        elif not set(p.sha256) & {f.sha256 for f in files}:
            names = ", ".join(f"{f.path.rsplit('/', 1)[-1]} (sha256:{f.sha256[:12]}...)" for f in files)
            out.append(f"{env.requirements}: {p.name}=={p.version} hash sha256:{p.sha256[0][:12]}... matches no mirror file: {names}")
    return out
