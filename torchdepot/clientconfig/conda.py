""".condarc: the mirror's channels only (no ``defaults``), via ruamel.yaml round-trip."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from torchdepot.clientconfig.common import ConfigFileError, Planned, join_url

SCOPES = ("user", "site", "global")


def scope_file(scope: str) -> Path:
    """conda's search path: ``~/.condarc``, ``$PREFIX/.condarc``, ``/etc/conda/.condarc``."""
    if scope == "user":
        return Path.home() / ".condarc"
    if scope == "site":
        return Path(sys.prefix) / ".condarc"
    return Path("/etc/conda/.condarc")


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def plan(path: Path, old: str | None, url: str, channels: list[str], offline: bool = False) -> Planned:
    y = _yaml()
    try:
        doc = y.load(old or "") if (old or "").strip() else None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigFileError(f"{path}: malformed YAML, left untouched ({first})") from None
    if doc is None:
        from ruamel.yaml.comments import CommentedMap

        doc = CommentedMap()
    if not isinstance(doc, dict):
        raise ConfigFileError(f"{path}: top level is not a mapping, left untouched")
    alias = join_url(url, "conda")
    chans = list(dict.fromkeys(channels))  # order is conda priority
    notes = []
    prev = doc.get("channels") or []
    dropped = [c for c in prev if str(c) not in chans]
    if dropped:
        notes.append(f"channels replaced (were: {', '.join(map(str, dropped))}); the backup keeps them")
    doc["channels"] = list(chans)
    doc["channel_alias"] = alias
    doc["default_channels"] = [join_url(alias, c) for c in chans]
    custom = doc.get("custom_channels")
    if not isinstance(custom, dict):
        from ruamel.yaml.comments import CommentedMap

        custom = CommentedMap()
    for c in chans:
        custom[c] = alias
    doc["custom_channels"] = custom
    doc["show_channel_urls"] = True
    if offline:
        doc["offline"] = True
    buf = io.StringIO()
    y.dump(doc, buf)
    env = [
        ("CONDA_CHANNELS", ",".join(chans)),
        ("CONDA_CHANNEL_ALIAS", alias),
        ("CONDA_DEFAULT_CHANNELS", ",".join(join_url(alias, c) for c in chans)),
        ("CONDA_SHOW_CHANNEL_URLS", "true"),
    ]
    if offline:
        env.append(("CONDA_OFFLINE", "true"))
    return Planned(Path(path), old, buf.getvalue(), tuple(env), tuple(notes))
