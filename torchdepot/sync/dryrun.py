"""The dry run's printer: per target what a sync would fetch (sizes asked of upstream when the
index does not say), and what it would remove.

What it would remove comes from the same :func:`torchdepot.sync.lifecycle.plan_removals` the
real run calls; the dry run only prints, it writes nothing under the mirror.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

from torchdepot.errors import UpstreamError
from torchdepot.model.sizes import format_size
from torchdepot.net.http import Client
from torchdepot.sync import lifecycle
from torchdepot.sync.resolution import Resolution, file_key

Echo = Callable[[str], None]


def _size_of(url: str, size: int | None, probe: Client) -> int | None:
    if size is not None:
        return size
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == "file":
            return Path(urllib.parse.unquote(parts.path)).stat().st_size
        resp = probe.request("HEAD", url)
        resp.close()
        cl = resp.headers.get("Content-Length")
        return int(cl) if cl and cl.isdigit() else None
    except (OSError, UpstreamError):
        return None


def print_plan(resolution: Resolution, probe: Client, say: Echo) -> None:
    """One line per target (packages, files, bytes, requirements, upstream), one per file, a total."""
    sizes = {key: _size_of(vf.link.url, vf.link.size, probe) for key, vf, _acc in resolution.files}
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
            say(f"  {f.name}=={f.version}  {f.filename}  {format_size(n) if (n := sizes[k]) else '?'}  <- {urls[k]}")
    total = sum(v or 0 for v in sizes.values())
    say(f"plan: {len(resolution.targets)} targets, {len(sizes)} unique files, {format_size(total)}; "
        "nothing written (dry run)")


def print_removals(removals: tuple[lifecycle.Removal, ...] | list[lifecycle.Removal], asked: bool,
                   say: Echo) -> None:
    """Each group the real run would remove, in its order; when removing was ``asked`` for
    (``--prune`` or ``keep: N``) and nothing goes, one line saying so."""
    for r in removals:
        say(f"would remove ({r.line()})")
    if asked and not removals:
        say("would remove nothing")
