"""Copy a mirror to a static host or object store through rclone (any remote: S3, GCS, Azure,
SFTP, a local dir...), in an order that keeps readers safe.

Upload order: package files (``packages/``, conda packages) first, then locks (``envs/``,
``targets/``), then indexes (``whl/`` pages, conda repodata), then ``manifest.json``, then the
landing page. A reader of the remote therefore never sees an index that points at a file not
uploaded yet. ``rclone copy`` never deletes, so files an older index still names stay.
``--copy-links`` uploads the ``whl -> .publish/<gen>/whl`` symlink as real files; the state
dirs (``.torchdepot/``, ``.publish/``) are never uploaded.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import TorchdepotError
from torchdepot.store.fsutil import MirrorLock
from torchdepot.store.manifest import MANIFEST_NAME


class PublishError(TorchdepotError):
    """rclone missing or a step failed."""


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # rclone arguments (without the binary)


def _join(dest: str, name: str) -> str:
    return f"{dest}{name}" if dest.endswith((":", "/")) else f"{dest}/{name}"


def _copy(root: Path, dest: str, includes: list[str], extra: list[str]) -> tuple[str, ...]:
    filters: list[str] = []
    for pattern in includes:
        filters += ["--filter", f"+ {pattern}"]
    filters += ["--filter", "- **"]  # everything else (state dirs, landing page, manifest) excluded
    return ("copy", str(root), dest, "--copy-links", *filters, *extra)


def plan(root: Path, dest: str, extra: list[str] | None = None) -> list[Step]:
    """The rclone invocations, in upload order."""
    root = Path(root)
    extra = list(extra or [])
    if not (root / MANIFEST_NAME).is_file():
        raise PublishError(f"{root / MANIFEST_NAME}: no manifest (is {root} a torchdepot mirror?)")
    steps = [
        Step("packages", _copy(root, dest, ["/packages/**", "/conda/**.conda", "/conda/**.tar.bz2",
                                             "/conda/**/shards/**"], extra)),
        Step("locks", _copy(root, dest, ["/envs/**", "/targets/**"], extra)),
        Step("indexes", _copy(root, dest, ["/whl/**", "/conda/**/repodata*", "/conda/**/channeldata.json", "/conda/**/run_exports.json",
                                           "/conda/**/index.html"], extra)),
        Step("manifest", ("copyto", str(root / MANIFEST_NAME), _join(dest, MANIFEST_NAME), *extra)),
    ]
    if (root / "index.html").is_file():
        steps.append(Step("landing", ("copyto", str(root / "index.html"), _join(dest, "index.html"), *extra)))
    return steps


def rclone_binary() -> str:
    exe = shutil.which("rclone")
    if not exe:
        raise PublishError("rclone not found on PATH (install it: apt-get install rclone, or https://rclone.org/install/)")
    return exe


def publish(root: Path, dest: str, extra: list[str] | None = None, echo=print) -> list[Step]:
    """Run the steps; the mirror's lock is held so a concurrent sync cannot swap indexes mid-upload."""
    exe = rclone_binary()
    steps = plan(root, dest, extra)
    with MirrorLock(root):
        for step in steps:
            echo(f"publish: {step.name}: rclone {shlex.join(step.argv)}")
            proc = subprocess.run([exe, *step.argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
                raise PublishError(f"publish to {dest}: rclone step '{step.name}' failed (exit {proc.returncode}): {tail}"
                                   " — indexes were not updated past this step")
    return steps
