"""pip.conf / pip.ini: ``index-url`` to the mirror's variant index, ``trusted-host`` for plain HTTP."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torchdepot.clientconfig import ini
from torchdepot.clientconfig.common import Planned, join_url, plain_http_host

SCOPES = ("user", "site", "global")


def scope_file(scope: str) -> Path:
    """The file ``pip config --<scope>`` edits: pip's own list, highest priority last."""
    try:
        from pip._internal.configuration import get_configuration_files, kinds  # pip's own answer

        files = get_configuration_files()[{"user": kinds.USER, "site": kinds.SITE, "global": kinds.GLOBAL}[scope]]
        return Path(files[-1])
    except Exception:  # pip absent or its internals moved: pip's documented defaults
        name = "pip.ini" if sys.platform == "win32" else "pip.conf"
        if scope == "user":
            base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            return Path(base) / "pip" / name
        if scope == "site":
            return Path(sys.prefix) / name
        return Path("/etc") / name


def plan(path: Path, old: str | None, url: str, variant: str = "cpu") -> Planned:
    text = old or ""
    ini.validate(text, str(path))
    index = join_url(url, "whl", variant)
    new = ini.set_value(text, "global", "index-url", index)
    env = [("PIP_INDEX_URL", index)]
    host = plain_http_host(url)
    if host:
        current = (ini.get(new, "global", "trusted-host") or "").split()
        if host not in current:
            new = ini.set_value(new, "global", "trusted-host", " ".join([*current, host]))
        env.append(("PIP_TRUSTED_HOST", host))
    notes = []
    for key in ("index-url", "extra-index-url", "find-links"):
        for sec in ini.sections_with(new, key):
            if sec != "global" or key != "index-url":
                notes.append(f"[{sec}] {key} is set too; pip may still use it (not changed)")
    return Planned(Path(path), old, new, tuple(env), tuple(notes))
