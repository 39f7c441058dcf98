"""uv.toml: ``[[index]]`` entries for the mirror, merged with tomlkit (comments kept).

As uv's PyTorch guide recommends, the variant index is ``explicit = true`` (only packages
pinned to it via ``[tool.uv.sources]`` use it); because a torchdepot variant index also
serves torch's dependencies, the same URL is added as the ``default = true`` index (it
replaces the public default), unless ``default_index=False``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from torchdepot.clientconfig.common import ConfigFileError, Planned, join_url

SCOPES = ("user", "site", "global")


def scope_file(scope: str) -> Path:
    """uv's own search locations: user ``~/.config/uv``, system ``/etc/uv``; site = ./uv.toml."""
    if scope == "user":
        if sys.platform == "win32":
            return Path(os.environ.get("APPDATA", Path.home())) / "uv" / "uv.toml"
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "uv" / "uv.toml"
    if scope == "global":
        first = (os.environ.get("XDG_CONFIG_DIRS") or "/etc").split(":")[0]
        return Path(first) / "uv" / "uv.toml"
    return Path.cwd() / "uv.toml"  # uv has no per-interpreter file; the project file is closest


def index_name(variant: str) -> str:
    return f"torchdepot-{variant}"


def _entry(name: str, url: str, **flags: bool) -> tomlkit.items.Table:
    t = tomlkit.table()
    t.add("name", name)
    t.add("url", url)
    for k, v in flags.items():
        t.add(k, v)
    return t


def plan(path: Path, old: str | None, url: str, variant: str = "cpu", default_index: bool = True) -> Planned:
    try:
        doc = tomlkit.parse(old or "")
    except TOMLKitError as exc:
        raise ConfigFileError(f"{path}: malformed TOML, left untouched ({str(exc).splitlines()[0]})") from None
    index_url = join_url(url, "whl", variant)
    wanted = [_entry(index_name(variant), index_url, explicit=True)]
    if default_index:
        wanted.append(_entry("torchdepot", index_url, default=True))
    names = {str(e["name"]) for e in wanted}
    existing = doc.get("index")
    if existing is not None and not isinstance(existing, tomlkit.items.AoT) and not isinstance(existing, list):
        raise ConfigFileError(f"{path}: 'index' is not an array of tables, left untouched")
    notes = []
    kept = tomlkit.aot()
    for e in existing or []:
        if not isinstance(e, dict):
            raise ConfigFileError(f"{path}: an [[index]] entry is not a table, left untouched")
        if str(e.get("name", "")) in names:
            continue  # ours: replaced below, in place of the old entry
        if default_index and e.get("default") is True:
            del e["default"]  # uv allows one default; the mirror is it now
            notes.append(f"index {e.get('name', e.get('url'))!r} was the default index; now the mirror is")
        kept.append(e)
    merged = tomlkit.aot()
    for e in wanted:  # first listed = highest priority
        merged.append(e)
    for e in kept:
        merged.append(e)
    if "index" in doc:
        doc["index"] = merged
    else:
        doc.append("index", merged)
    new = tomlkit.dumps(doc)
    env = [("UV_INDEX", f"{index_name(variant)}={index_url}")]
    if default_index:
        env.append(("UV_DEFAULT_INDEX", index_url))
    notes.append(
        f'in a project, pin torch to the mirror as uv recommends: [tool.uv.sources] torch = {{ index = "{index_name(variant)}" }} '
        f'(same for torchvision, torchaudio)'
    )
    return Planned(Path(path), old, new, tuple(env), tuple(notes))
