"""Put rendered lockfiles on disk: one folder per target, atomic writes, unchanged files untouched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torchdepot.lockfiles import DEFAULT_BASE
from torchdepot.lockfiles.render import render
from torchdepot.store.fsutil import atomic_write_text, safe_filename, safe_join
from torchdepot.store.manifest import load


@dataclass(frozen=True)
class LockResult:
    written: tuple[str, ...]  # relative paths that changed
    unchanged: tuple[str, ...]
    targets: tuple[str, ...]


def write_locks(rendered: dict[str, dict[str, str]], out: Path) -> LockResult:
    written, unchanged = [], []
    for tid, docs in sorted(rendered.items()):
        folder = safe_join(out, safe_filename(tid))
        for name, text in sorted(docs.items()):
            path = safe_join(folder, safe_filename(name))
            rel = f"{tid}/{name}"
            try:
                same = path.read_text(encoding="utf-8") == text
            except (FileNotFoundError, UnicodeDecodeError):
                same = False
            if same:
                unchanged.append(rel)
            else:
                atomic_write_text(path, text)
                written.append(rel)
    return LockResult(tuple(written), tuple(unchanged), tuple(sorted(rendered)))


def lock_mirror(mirror: Path, out: Path, base: str = DEFAULT_BASE) -> LockResult:
    return write_locks(render(load(Path(mirror)), base), Path(out))
