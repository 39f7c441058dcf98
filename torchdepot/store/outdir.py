"""Is a directory safe to write a mirror into? Checked before a run writes anything.

A mirror root may be written when it does not exist yet, is an empty directory, or is already
a torchdepot mirror (it holds ``manifest.json``, the ``.torchdepot/`` state dir or the
``.torchdepot.lock`` a first, interrupted run leaves). Everything else is refused with one
line (:class:`~torchdepot.errors.UnsafePathError`): a file, a non-empty directory of other
things (a sync would overwrite its ``index.html``), ``/``, the user's home directory and the
directories above it. Symlinks are resolved first, so a link to ``$HOME`` is ``$HOME``. A
leading ``~`` is refused, never expanded: the path checked is the path written.

Only reads the file system (stat and one directory listing; lstat of the paths a mirror
writes, :func:`~torchdepot.store.fsutil.refuse_planted_links`, when it is one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torchdepot.errors import UnsafePathError
from torchdepot.store.fsutil import refuse_planted_links
from torchdepot.store.layout import LOCK_FILE, MANIFEST_NAME, STATE_DIR
from torchdepot.store.manifest import FORMAT


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no HOME and no passwd entry
        return None


def is_mirror(root: Path) -> bool:
    """True when ``root`` holds a mirror's own state: the ``.torchdepot/`` dir, its lock file,
    or a ``manifest.json`` that IS a torchdepot manifest (web apps and browser extensions
    have a ``manifest.json`` of their own; a name alone proves nothing)."""
    if any(os.path.lexists(root / name) for name in (STATE_DIR, LOCK_FILE)):
        return True
    path = root / MANIFEST_NAME
    if not path.is_file():
        return False
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def check_out_dir(path: Path | str, *, what: str = "out") -> Path:
    """The resolved ``path`` when a mirror may be written there; UnsafePathError (one line) otherwise."""
    given = Path(path)
    if given.parts and given.parts[0].startswith("~"):
        # The caller writes where it is given: expanding here would check another directory
        # than the one written (the spec expands ``~`` once, when it is read).
        raise UnsafePathError(f"{what} {given}: a leading '~' is not expanded here; give the directory "
                              "as an absolute path")
    try:
        root = given.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise UnsafePathError(f"{what} {given}: cannot resolve the path ({getattr(exc, 'strerror', None) or exc})") from None
    # Python 3.13's resolve() leaves a symlink loop unresolved instead of raising: a link left in
    # the resolved path is one it could not follow
    looped = next((p for p in (root, *root.parents) if os.path.islink(p)), None)
    if looped is not None:
        raise UnsafePathError(f"{what} {given}: cannot resolve the path (symlink loop at {looped})")
    if root == Path(root.anchor):
        raise UnsafePathError(f"{what} {given}: refusing the file system root; name a directory for the mirror")
    home = _home()
    if home is not None and (root == home or root in home.parents):
        where = "your home directory" if root == home else f"a directory above your home ({home})"
        raise UnsafePathError(f"{what} {given}: refusing {where}; name a subdirectory such as {home / 'torch-mirror'}")
    if not os.path.lexists(root):
        return root
    if not root.is_dir():
        raise UnsafePathError(f"{what} {given}: exists and is not a directory")
    if is_mirror(root):
        refuse_planted_links(root)  # the writer's lock checks again; a dry run refuses here too
        return root
    try:
        with os.scandir(root) as entries:
            first = next(entries, None)
    except OSError as exc:
        raise UnsafePathError(f"{what} {given}: cannot list the directory ({exc.strerror or exc})") from None
    if first is not None:
        raise UnsafePathError(f"{what} {given}: not empty and not a torchdepot mirror (it has {first.name!r}, "
                              f"no torchdepot {MANIFEST_NAME}); use an empty or new directory")
    return root
