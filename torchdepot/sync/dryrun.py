"""The dry run's printer: per target what a sync would fetch (with the sizes already known: no
request per file), the tombstones it would keep, and what it would remove.

What it would remove comes from the same :func:`torchdepot.sync.lifecycle.plan_removals` the
real run calls, and its tombstones from the same :mod:`torchdepot.sync.tombstones` rules; the
dry run only prints, it writes nothing under the mirror.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torchdepot.model.sizes import format_size
from torchdepot.store import manifest as mf
from torchdepot.sync import lifecycle
from torchdepot.sync.resolution import Resolution, file_key

Echo = Callable[[str], None]


def print_plan(resolution: Resolution, previous: mf.Manifest | None, say: Echo,
               learned: Mapping[str, int] | None = None) -> None:
    """One line per target (packages, files, bytes, requirements, upstream), one per file, a total.

    Sizes are the ones already known: the index's (PEP 700 ``size``), uv's lock, the mirror's
    manifest for a file it holds, else what this run learned by URL (``learned``: a Range
    probe's ``Content-Range`` total, a whole read's length, ``UpstreamReader.learned_sizes``);
    no request per file. A size nobody gave is '?'."""
    held = {e.url: e.size for e in (previous.files if previous else ()) if e.url and e.kind == "wheel"}
    resolved = {file_key(f): f.size for tp in resolution.targets for f in tp.files if f.size is not None}
    learned = learned or {}

    def size_of(key: str, url: str, stated: int | None) -> int | None:
        for size in (stated, resolved.get(key), held.get(url), learned.get(url)):
            if size is not None:
                return size
        return None

    sizes = {key: size_of(key, vf.link.url, vf.link.size) for key, vf, _acc in resolution.files}
    urls = {key: vf.link.url for key, vf, _acc in resolution.files}
    for p in resolution.targets:
        keys = {file_key(f) for f in p.files}
        total = sum(sizes[k] or 0 for k in keys)
        unknown = sum(1 for k in keys if sizes[k] is None)
        names = {f.name for f in p.files}
        say(f"{p.target.id}: {len(names)} packages, {len(keys)} files, {format_size(total)}"
            + (f" (+{unknown} of unknown size)" if unknown else "")
            + f" [{' '.join(p.requirements)}] via {p.variant_url or 'pip configuration'}")
        for f in p.files:
            k = file_key(f)
            size = sizes[k]
            say(f"  {f.name}=={f.version}  {f.filename}  {format_size(size) if size else '?'}  <- {urls[k]}")
    total = sum(v or 0 for v in sizes.values())
    say(f"plan: {len(resolution.targets)} targets, {len(sizes)} unique files, {format_size(total)}; "
        "nothing written (dry run)")


def print_tombstones(tombstones: list[mf.Tombstone], say: Echo) -> None:
    """One line per tombstone, the very line the real run prints (``Tombstone.line``): the dry
    run decides them with the same rules (``sync/tombstones.py``)."""
    for t in tombstones:
        say(t.line())


def print_removals(removals: tuple[lifecycle.Removal, ...] | list[lifecycle.Removal], asked: bool,
                   say: Echo) -> None:
    """Each group the real run would remove, in its order; when removing was ``asked`` for
    (``--prune`` or ``keep: N``) and nothing goes, one line saying so."""
    for r in removals:
        say(f"would remove ({r.line()})")
    if asked and not removals:
        say("would remove nothing")
