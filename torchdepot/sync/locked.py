"""Resolve from locks: the exact files that ``envs/<id>/`` folders pinned (``mirror --from-locks``).

Input: a directory of lock folders written by ``torchdepot lock`` (or one such folder). Each
pip folder's ``variant.json`` names the target (accelerator, python, platform) and its
``pylock.toml`` (PEP 751) every wheel: name, version, file name, size and sha256. Output:
the same :class:`~torchdepot.sync.resolution.Resolution` the resolver gives, so the fetch
and publish steps are the ordinary ones and a CI matrix can rebuild the very environments it
locked, on a fresh mirror, later.

Invariants:
- no resolver runs: each locked wheel is looked up by file name among the screened upstream
  links of its target (:meth:`View.project`); the link must carry the locked sha256 or none
  (then the lock's hash is the one the fetcher checks), so only the locked bytes are stored;
- a wheel upstream no longer has (or has with other bytes) is an error naming the lock file,
  the wheel and the hash, listing how many are missing; nothing is fetched then;
- the lock's own URLs point at the mirror that wrote it (``${TORCHDEPOT_MIRROR}``) and are
  not followed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError, load_json, one_line
from torchdepot.lockfiles.render import PYLOCK, VARIANT
from torchdepot.model.targets import target_id
from torchdepot.resolve.uv import ResolvedFile
from torchdepot.spec.mirror import PipTarget
from torchdepot.sync.plan import TargetPlan
from torchdepot.sync.resolution import Resolution, file_key
from torchdepot.sync.view import View, ViewFile


@dataclass(frozen=True)
class LockedWheel:
    name: str  # canonical
    version: str
    filename: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class LockedEnv:
    lock: Path  # its pylock.toml
    target: PipTarget
    wheels: tuple[LockedWheel, ...]


def _folders(root: Path) -> list[Path]:
    root = Path(root)
    if (root / VARIANT).is_file():
        return [root]
    if not root.is_dir():
        raise TorchdepotError(f"{root}: not a directory of lock folders (run 'torchdepot lock' to write envs/)")
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / VARIANT).is_file())


def _wheel(pkg: object, where: str) -> LockedWheel:
    if not isinstance(pkg, dict) or not isinstance(pkg.get("name"), str) or not isinstance(pkg.get("version"), str):
        raise TorchdepotError(f"{where}: expected a package with name and version")
    wheels = pkg.get("wheels")
    if not isinstance(wheels, list) or len(wheels) != 1 or not isinstance(wheels[0], dict):
        raise TorchdepotError(f"{where}: {pkg['name']}: expected exactly one wheel")
    w = wheels[0]
    sha = (w.get("hashes") or {}).get("sha256") if isinstance(w.get("hashes"), dict) else None
    name = w.get("name")
    size = w.get("size")
    if not isinstance(name, str) or not isinstance(sha, str) or len(sha) != 64:
        raise TorchdepotError(f"{where}: {pkg['name']}: its wheel needs a name and a sha256")
    return LockedWheel(name=str(canonicalize_name(pkg["name"])), version=pkg["version"], filename=name,
                       sha256=sha.lower(), size=size if isinstance(size, int) and not isinstance(size, bool) else None)


def read_locks(root: Path) -> tuple[LockedEnv, ...]:
    """Every pip lock folder under ``root`` (or ``root`` itself); conda-only folders are skipped."""
    envs = []
    for d in _folders(root):
        vpath, lock = d / VARIANT, d / PYLOCK
        if not lock.is_file():
            continue
        try:
            variant = load_json(vpath.read_bytes(), str(vpath))
            doc = tomllib.loads(lock.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TorchdepotError(f"{d}: unreadable lock ({one_line(exc, 120)})") from None
        try:
            acc, py, plat = (str(variant[k]) for k in ("accelerator", "python", "platform"))
        except (KeyError, TypeError):
            raise TorchdepotError(f"{vpath}: needs accelerator, python and platform") from None
        pkgs = doc.get("packages")
        if not isinstance(pkgs, list) or not pkgs:
            raise TorchdepotError(f"{lock}: no packages")
        target = PipTarget(accelerator=acc, python=py, platform=plat, id=target_id(acc, py, plat))
        envs.append(LockedEnv(lock=lock, target=target,
                              wheels=tuple(_wheel(p, f"{lock}: packages[{i}]") for i, p in enumerate(pkgs))))
    if not envs:
        raise TorchdepotError(f"{root}: no pip lock folders (variant.json + pylock.toml) found")
    return tuple(envs)


def _find(view: View, acc: str, w: LockedWheel) -> ViewFile | None:
    for vf in view.project(acc, w.name):
        if vf.filename == w.filename and vf.link.sha256 in (None, w.sha256):
            # the lock's hash is what the fetcher checks, whatever the page said
            return replace(vf, link=replace(vf.link, sha256=w.sha256, size=vf.link.size or w.size))
    return None


def locked_resolution(envs: tuple[LockedEnv, ...], view: View) -> Resolution:
    """The locked wheels as a Resolution, each mapped to a screened upstream link."""
    plans, missing = [], []
    files: dict[str, tuple[str, ViewFile, str]] = {}
    for env in envs:
        acc = env.target.accelerator
        resolved = []
        for w in env.wheels:
            vf = _find(view, acc, w)
            if vf is None:
                missing.append(f"{env.lock}: {w.filename} (sha256:{w.sha256[:12]}...)")
                continue
            rf = ResolvedFile(name=w.name, version=w.version, url=vf.link.url, filename=w.filename,
                              sha256=w.sha256, size=vf.link.size)
            resolved.append(rf)
            files.setdefault(file_key(rf), (file_key(rf), vf, acc))
        variant = view.sources.variant(acc)
        plans.append(TargetPlan(target=env.target, requirements=tuple(f"{w.name}=={w.version}" for w in env.wheels),
                                variant_url=variant.url if variant else None, files=tuple(resolved)))
    if missing:
        raise TorchdepotError(f"{len(missing)} locked wheel(s) not on any reachable upstream with the locked hash; "
                              f"first: {missing[0]}")
    return Resolution(targets=tuple(plans), files=tuple(files.values()))


def with_locked(resolution: Resolution, locks: tuple[LockedEnv, ...], view: View) -> Resolution:
    """``resolution`` plus the locked targets' files (``mirror --from-locks``), each file once."""
    if not locks:
        return resolution
    locked = locked_resolution(locks, view)
    merged: dict[str, tuple[str, ViewFile, str]] = {}
    for entry in locked.files + resolution.files:  # each file once, whoever needs it
        merged.setdefault(entry[0], entry)
    return Resolution(targets=locked.targets + resolution.targets, files=tuple(merged.values()))
