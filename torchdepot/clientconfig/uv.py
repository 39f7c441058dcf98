"""uv.toml: the mirror as uv's first index, for the torch family, without replacing the user's.

Routing (uv, unlike pip, has index priority):

- ``[[index]] name = "torchdepot"`` -- the mirror's variant index, listed **first**. uv's
  default ``index-strategy = "first-index"`` takes each package from the first index that
  has it, so torch, torchvision, torchaudio, triton (and the dependencies the mirror holds)
  come only from the mirror -- a newer unlabelled torch elsewhere cannot win -- while a
  package the mirror lacks (pandas) falls through to the user's indexes, default untouched.
- ``[[index]] name = "torchdepot-<variant>", explicit = true`` -- for projects: uv refuses
  ``sources`` in uv.toml, so pinning torch to it is a ``[tool.uv.sources]`` line in
  pyproject.toml (printed as a note).
- ``allow-insecure-host`` for a plain-HTTP mirror host.
- ``--default-index`` additionally makes the mirror the default (for an air-gapped lab whose
  mirror serves everything); other entries lose ``default`` then (uv allows one).

Entries named ``torchdepot``/``torchdepot-*`` are ours and replaced on re-run; every other
entry, comment and key is kept (tomlkit), and an inline ``index = [{...}]`` array stays inline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Table

from torchdepot.clientconfig.common import (
    ConfigFileError,
    FileChange,
    Plan,
    edit_text,
    join_url,
    plain_http_host,
)
from torchdepot.errors import one_line
from torchdepot.store.layout import INDEX_LINK

SCOPES = ("user", "site", "global")
MAIN_NAME = "torchdepot"
TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


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
    return f"{MAIN_NAME}-{variant}"


def _ours(name: object) -> bool:
    n = str(name)
    return n == MAIN_NAME or n.startswith(MAIN_NAME + "-")


def parse(text: str, where: str) -> tomlkit.TOMLDocument:
    """Parse uv.toml; anything that is not TOML (or nests beyond reason) is one ConfigFileError."""
    try:
        return tomlkit.parse(text)
    except RecursionError:
        raise ConfigFileError(f"{where}: nested too deeply, left untouched") from None
    except Exception as exc:  # tomlkit raises a zoo (ParseError, ValueError, KeyError...) on bad input
        first = one_line(exc)
        raise ConfigFileError(f"{where}: malformed TOML, left untouched ({first})") from None


def _edit(text: str, where: str, url: str, variant: str, default_index: bool, notes: list[str]) -> str:
    doc = parse(text, where)
    index_url = join_url(url, INDEX_LINK, variant)
    existing = doc.get("index")
    if existing is not None and not isinstance(existing, (AoT, Array)):
        raise ConfigFileError(f"{where}: 'index' is not an array of tables, left untouched")
    inline = isinstance(existing, Array)
    wanted = [{"name": MAIN_NAME, "url": index_url, **({"default": True} if default_index else {})},
              {"name": index_name(variant), "url": index_url, "explicit": True}]
    kept = []
    for e in existing or []:
        if not isinstance(e, (Table, InlineTable, dict)):
            raise ConfigFileError(f"{where}: an index entry is not a table, left untouched")
        if _ours(e.get("name", "")):
            continue  # ours from an earlier run: replaced below
        if default_index and e.get("default") is True:
            del e["default"]  # uv allows one default; the mirror is it now
            notes.append(f"index {str(e.get('name', e.get('url')))!r} was the default index; now the mirror is")
        kept.append(e)
    # the user's own shape is kept: an inline ``index = [{...}]`` array, or ``[[index]]`` tables
    merged, entry = (tomlkit.array(), tomlkit.inline_table) if inline else (tomlkit.aot(), tomlkit.table)
    for w in wanted:
        t = entry()
        t.update(w)
        merged.append(t)
    for e in kept:
        merged.append(e)
    if isinstance(merged, Array):  # the inline shape
        merged.multiline(True)
    host = plain_http_host(url)
    if host:
        hosts = doc.get("allow-insecure-host")
        if hosts is None:
            doc["allow-insecure-host"] = [host]  # tomlkit puts a new plain key before the tables
        elif not isinstance(hosts, list):
            raise ConfigFileError(f"{where}: 'allow-insecure-host' is not a list, left untouched")
        elif host not in [str(h) for h in hosts]:
            hosts.append(host)
    if "index" in doc:
        doc["index"] = merged
    else:
        doc.append("index", merged)
    strategy = doc.get("index-strategy")
    if strategy is not None and str(strategy) != "first-index":
        notes.append(f"index-strategy = {str(strategy)!r}: uv may take torch from another index; "
                     "'first-index' (uv's default) keeps it on the mirror")
    return tomlkit.dumps(doc)


def plan(path: Path, old: str | None, url: str, variant: str = "cpu", default_index: bool = False) -> Plan:
    notes: list[str] = []
    new = edit_text(old, lambda t: _edit(t, str(path), url, variant, default_index, notes))
    index_url = join_url(url, INDEX_LINK, variant)
    env = [("UV_INDEX", f"{MAIN_NAME}={index_url} {index_name(variant)}={index_url}")]
    if default_index:
        env.append(("UV_DEFAULT_INDEX", index_url))
    host = plain_http_host(url)
    if host:
        env.append(("UV_INSECURE_HOST", host))
    sources = ", ".join(f'{p} = {{ index = "{index_name(variant)}" }}' for p in TORCH_FAMILY)
    notes.append(f"in a project, pin the torch family to the mirror in pyproject.toml: [tool.uv.sources] {sources}")
    return Plan((FileChange(Path(path), old, new),), tuple(env), tuple(notes))
