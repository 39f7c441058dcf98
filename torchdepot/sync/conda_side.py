"""The conda side as the orchestrator calls it: nothing when the spec has no ``conda:`` section,
else :mod:`torchdepot.sync.conda` (py-rattler), imported only then.

Two steps, so a run is one transaction: :func:`prepare` solves and downloads before the pip
side publishes (a conda failure publishes nothing), :func:`publish` indexes the channels after.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torchdepot.net.http import Client
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.store import manifest as mf

if TYPE_CHECKING:
    from torchdepot.sync.conda import CondaPrepared


def prepare(spec: MirrorSpec, out: Path, client: Client | None, dry_run: bool,
            say: Callable[[str], None]) -> CondaPrepared | None:
    """The conda side's solve and downloads; None when the spec has no ``conda:`` section."""
    if spec.conda is None:
        return None
    from torchdepot.sync.conda import prepare_conda

    return prepare_conda(spec, out, client=client, jobs=spec.jobs, on_hash_mismatch=spec.on_hash_mismatch,
                         dry_run=dry_run, say=say)


def publish(prepared: CondaPrepared | None, out: Path,
            say: Callable[[str], None]) -> tuple[list[mf.FileEntry], list[mf.Target]]:
    """Index the prepared conda channels; their files and targets for the manifest."""
    if prepared is None:
        return [], []
    from torchdepot.sync.conda import publish_conda

    cres = publish_conda(prepared, out)
    if cres.summary:
        say(f"conda: {cres.summary}")
    return list(cres.files), list(cres.targets)
