""".condarc: put the mirror's channels first, and make their names resolve to the mirror.

conda's documented semantics (configuration/mirroring, settings):
- ``channels``: the search list; the mirror's channels go first by full URL (below);
- ``custom_channels``: ``name: base`` makes the channel ``name`` resolve to ``<base>/<name>``,
  taking precedence over ``channel_alias``; each mirrored channel gets ``name: <url>/conda``, so
  ``-c conda-forge`` / ``-c pytorch`` (and an environment.yml naming them) use the mirror while
  other community channels keep resolving as before;
- ``mirrored_channels`` (conda >= 24.9, mamba 2): ``name: [URLs]``; each mirrored channel maps
  to the mirror's URL only (a listed dead mirror makes mamba 2 fail the subdir);
- ``channel_alias``: the base of *every* named channel; set to ``<url>/conda`` only with
  ``alias=True`` (an air-gapped machine, where nothing else is reachable anyway).

The mirror's channels are added by full URL (``<url>/conda/<name>``) at the **front of
``channels``** -- highest priority, so under strict channel priority the torch packages come
from the mirror -- and nothing else is touched: ``default_channels``, ``custom_channels`` and
``channel_alias`` (a TUNA-style .condarc's mirrors) stay as they are, and so does the order
of the user's own channels (conda-forge stays where it was). When ``channels`` is absent,
conda's implicit ``defaults`` is written after the mirror's, so it keeps working.
Entries of the same mirror from an earlier run are replaced, never duplicated.

``offline: true`` makes conda use only its cache and ``file://`` channels, so it is written
only for a ``file://`` mirror (give ``--url /path/to/mirror``); for an HTTP mirror it is
refused with one line. The YAML is edited with ruamel.yaml round-trip (comments kept).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from torchdepot.clientconfig.common import (
    ConfigFileError,
    ConfigValueError,
    FileChange,
    Plan,
    edit_text,
    join_url,
)
from torchdepot.errors import one_line

SCOPES = ("user", "site", "global")
MAX_DEPTH = 50  # a .condarc is a few levels deep; deeper is hostile (and ruamel recurses)


def scope_file(scope: str, environ: Mapping[str, str] | None = None) -> Path:
    """conda's search path: ``~/.condarc``, the ACTIVE env's ``$CONDA_PREFIX/.condarc``, ``/etc/conda/.condarc``."""
    environ = os.environ if environ is None else environ
    if scope == "user":
        return Path.home() / ".condarc"
    if scope == "site":
        if not environ.get("CONDA_PREFIX"):
            raise ConfigValueError("--scope site: no active conda environment (CONDA_PREFIX unset); activate it or give --file")
        return Path(environ["CONDA_PREFIX"]) / ".condarc"
    return Path("/etc/conda/.condarc")


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _depth_ok(text: str) -> bool:
    """Cheap bound before parsing: flow nesting and indentation both under MAX_DEPTH."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_DEPTH:
        return False
    return all(len(ln) - len(ln.lstrip(" -")) <= 4 * MAX_DEPTH for ln in text.splitlines())


def parse(text: str, where: str):
    """Load a .condarc; malformed, hostile or non-mapping input is one ConfigFileError."""
    if not _depth_ok(text):
        raise ConfigFileError(f"{where}: nested more than {MAX_DEPTH} levels deep, left untouched")
    try:
        doc = _yaml().load(text) if text.strip() else None
    except RecursionError:
        raise ConfigFileError(f"{where}: nested too deeply, left untouched") from None
    except Exception as exc:  # ruamel raises YAMLError but also ValueError/TypeError/... on odd input
        first = one_line(exc)
        raise ConfigFileError(f"{where}: malformed YAML, left untouched ({first})") from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigFileError(f"{where}: top level is not a mapping, left untouched")
    for key in doc:
        if not isinstance(key, str):
            # conda reads only string keys; a null or complex key (``? ?``) would be written
            # back as YAML that conda's own loader refuses
            raise ConfigFileError(f"{where}: a key that is not a name ({type(key).__name__}), left untouched")
    return doc


def channel_urls(url: str, channels: list[str]) -> list[str]:
    return [join_url(url, "conda", c) for c in dict.fromkeys(channels)]


def _mapping(doc: CommentedMap, key: str, where: str) -> CommentedMap:
    value = doc.get(key)
    if value is None:
        value = CommentedMap()
        doc[key] = value
    if not isinstance(value, CommentedMap):
        raise ConfigFileError(f"{where}: {key!r} is not a mapping, left untouched")
    return value


def _edit(text: str, where: str, url: str, channels: list[str], offline: bool, notes: list[str],
          alias: bool = False) -> tuple[str, list[str]]:
    doc = parse(text, where)
    ours = channel_urls(url, channels)
    prefix = join_url(url, "conda") + "/"
    prev = doc.get("channels")
    if prev is None:
        prev = ["defaults"]  # conda's implicit value: keep what the user had
        notes.append("channels was unset (conda's default: defaults); defaults is kept after the mirror's")
    if not isinstance(prev, list) or not all(isinstance(c, str) for c in prev):
        raise ConfigFileError(f"{where}: 'channels' is not a list of names, left untouched")
    rest = [c for c in prev if not str(c).rstrip("/").startswith(prefix) and str(c).rstrip("/") not in ours]
    merged = [*ours, *rest]
    seq = doc.get("channels")
    if isinstance(seq, CommentedSeq):
        # edit in place: ruamel keeps each remaining item's comment with it
        for i in reversed(range(len(seq))):
            if seq[i] not in rest:
                del seq[i]
        for i, c in enumerate(ours):
            seq.insert(i, c)
    else:
        doc["channels"] = CommentedSeq(merged)
    base = join_url(url, "conda")
    custom = _mapping(doc, "custom_channels", where)
    mirrored = _mapping(doc, "mirrored_channels", where)
    for c in dict.fromkeys(channels):
        custom[c] = base  # conda: <base>/<name>
        mirrored[c] = CommentedSeq([join_url(url, "conda", c)])
    if alias:
        doc["channel_alias"] = base
    if offline:
        doc["offline"] = True
    buf = io.StringIO()
    try:
        _yaml().dump(doc, buf)
    except Exception as exc:  # a document ruamel read but cannot write back (odd tags...)
        raise ConfigFileError(f"{where}: cannot be rewritten safely, left untouched ({type(exc).__name__})") from None
    return buf.getvalue(), merged


def plan(path: Path, old: str | None, url: str, channels: list[str], offline: bool = False,
         alias: bool = False) -> Plan:
    if offline and not url.startswith("file:"):
        raise ConfigValueError(f"--offline with {url}: conda offline reads only its cache and file:// channels, "
                               "so it could not reach this mirror; for a mirror on this machine use --url /path/to/mirror")
    notes: list[str] = []
    merged: list[str] = []

    def fn(text: str) -> str:
        out, chans = _edit(text, str(path), url, channels, offline, notes, alias)
        merged.extend(chans)
        return out

    new = edit_text(old, fn)
    env = [("CONDA_CHANNELS", ",".join(merged))]
    if offline:
        env.append(("CONDA_OFFLINE", "true"))
    notes.append("with channel_priority: strict, packages the mirror has come only from it")
    notes.append(f"-c {' / -c '.join(dict.fromkeys(channels))} now resolve to the mirror (custom_channels; "
                 "mirrored_channels for conda >= 24.9 and mamba 2)")
    return Plan((FileChange(Path(path), old, new),), tuple(env), tuple(notes))
