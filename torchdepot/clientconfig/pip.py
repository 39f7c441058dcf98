"""pip.conf / pip.ini: add the mirror's variant index without taking over the user's index.

Routing (pip has no per-package index, and takes the highest version across ALL indexes):

- ``index-url`` is **never changed**: a pip.conf pointing at a regional mirror of the public
  index keeps serving ``pip install pandas``.
- The mirror's variant index (``<url>/whl/<variant>``) is **added to extra-index-url**
  (replacing an earlier variant of the same mirror), with ``trusted-host`` for plain HTTP.
- An extra index alone is not enough: an unlabelled torch 2.14.0 on the user's index beats
  the mirror's 2.13.0+cu126. So the builds the mirror exists for -- every project whose
  mirror version carries the variant's local label, newest per project (torch, torchvision,
  torchaudio...) -- are **pinned in a pip constraints file** (``torchdepot-constraints.txt``
  next to pip.conf, added to pip's ``constraint`` list; the user's own constraint files stay).
  A constraint only restricts which versions may be installed; it installs nothing itself.
- pip merges its config files by key (a user file's ``constraint`` hides the global file's),
  so when a key is new in the file being written, the values lower-priority files give it
  (``/etc/pip.conf``'s constraint file, a site-wide extra index) are carried into it.
- Keys set in a command section (``[install] extra-index-url = ...``) override ``[global]``
  for that command, so ours go into every section that sets the same key, too.

Trade-off: the pins name versions. When the mirror gains a newer torch, ``pip install torch``
keeps giving the pinned one until ``torchdepot config pip`` is re-run (it regenerates the
file; the run says so). A version the mirror lacks for this Python fails to install with
pip's "no matching distribution" instead of silently falling back to another index's CPU
build. To escape the pins for one command: ``PIP_CONSTRAINT=/dev/null pip install ...``
(pip ignores an empty PIP_CONSTRAINT; this also drops any other constraint files for that run).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from torchdepot.clientconfig import ini
from torchdepot.clientconfig.common import (
    ConfigFileError,
    ConfigValueError,
    FileChange,
    Plan,
    edit_text,
    join_url,
    logical,
    plain_http_host,
)
from torchdepot.store.layout import INDEX_LINK

SCOPES = ("user", "site", "global")
CONSTRAINTS_NAME = "torchdepot-constraints.txt"
CONSTRAINTS_HEADER = "# written by `torchdepot config pip`"
_KEYS = ("extra-index-url", "trusted-host", "constraint")


def active_prefix(environ: Mapping[str, str]) -> Path:
    """The environment the user has activated (a venv, else a conda env): ``--scope site``
    means that one, never the interpreter torchdepot itself runs in."""
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if environ.get(var):
            return Path(environ[var])
    raise ConfigValueError("--scope site: no active environment (VIRTUAL_ENV/CONDA_PREFIX unset); activate it or give --file")


def scope_file(scope: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file ``pip config --<scope>`` edits: pip's own list, highest priority last."""
    environ = os.environ if environ is None else environ
    name = "pip.ini" if sys.platform == "win32" else "pip.conf"
    if scope == "site":
        return active_prefix(environ) / name
    try:
        from pip._internal.configuration import get_configuration_files, kinds  # pip's own answer

        files = get_configuration_files()[{"user": kinds.USER, "global": kinds.GLOBAL}[scope]]
        return Path(files[-1])
    except Exception:  # pip absent or its internals moved: pip's documented defaults
        if scope == "user":
            base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            return Path(base) / "pip" / name
        return Path("/etc") / name


def lower_priority_files(path: Path) -> list[Path]:
    """pip's config files that ``path`` overrides, lowest first (pip loads global, user, site,
    then ``PIP_CONFIG_FILE``); a file pip does not know is taken as ``PIP_CONFIG_FILE``."""
    try:
        from pip._internal.configuration import get_configuration_files, kinds
    except Exception:  # pip absent: nothing known to inherit
        return []
    files = get_configuration_files()
    # not kinds.SITE: that is torchdepot's own interpreter's file, never the user's environment's
    order = [kinds.GLOBAL, kinds.USER]
    me = Path(os.path.abspath(path))
    out: list[Path] = []
    for kind in order:
        for f in files.get(kind, []):
            if Path(os.path.abspath(f)) == me:
                return out
            out.append(Path(f))
    return out


def inherited_values(files: list[Path]) -> dict[str, str]:
    """``[global]`` values of our keys as pip would merge ``files`` (last wins); unreadable
    or malformed files are skipped (pip itself would refuse them; that is not ours to fix)."""
    out: dict[str, str] = {}
    for f in files:
        try:
            cp = ini.validate(Path(f).read_text(encoding="utf-8"), str(f))
        except (OSError, UnicodeDecodeError, ConfigFileError):
            continue
        if cp.has_section("global"):
            for k, v in cp.items("global"):
                if ini.norm_key(k) in _KEYS and v.strip():
                    out[ini.norm_key(k)] = " ".join(v.split())
    return out


def constraints_path(conf: Path) -> Path:
    return Path(os.path.abspath(conf)).parent / CONSTRAINTS_NAME


def constraints_text(index: str, url: str, variant: str, pins: tuple[str, ...]) -> str:
    return "\n".join([
        f"{CONSTRAINTS_HEADER}; regenerated by each run, edits are lost",
        f"# mirror index: {index}",
        "# Pins the builds the mirror serves for this variant, so pip cannot take a newer",
        "# unlabelled build of the same project from another index. After the mirror updates:",
        f"#   torchdepot config pip --url {url} --variant {variant}",
        *pins,
    ]) + "\n"


def _merged(current: str | None, value: str, drop_prefix: str | None) -> str:
    items = [i for i in (current or "").split()  # pip splits list options on whitespace
             if i != value and not (drop_prefix and i.startswith(drop_prefix))]
    return " ".join([*items, value])


def _edit_conf(text: str, where: str, wanted: dict[str, tuple[str, str | None]], inherited: Mapping[str, str],
               notes: list[str]) -> str:
    ini.validate(text, where)
    for key, (value, drop) in wanted.items():
        sections = ["global", *(s for s in ini.sections_with(text, key) if s != "global")]
        for sec in sections:
            current = ini.get(text, sec, key)
            if current is None and sec == "global" and inherited.get(key):
                current = inherited[key]
                notes.append(f"{key} kept from lower-priority pip config files: {current}")
            text = ini.set_value(text, sec, key, _merged(current, value, drop))
    return text


def _env_name(key: str) -> str:
    """``extra-index-url`` -> ``PIP_EXTRA_INDEX_URL`` (pip's own mapping of options to variables)."""
    return "PIP_" + key.upper().replace("-", "_")


def plan(path: Path, old: str | None, url: str, variant: str, pins: tuple[str, ...],
         constraints_old: str | None = None, environ: Mapping[str, str] | None = None,
         inherited: Mapping[str, str] | None = None) -> Plan:
    """``inherited``: what lower-priority pip files set for our keys (:func:`inherited_values`)."""
    environ = {} if environ is None else environ
    notes: list[str] = []
    index = join_url(url, INDEX_LINK, variant)
    cpath = constraints_path(path)
    if constraints_old is not None and not constraints_old.startswith(CONSTRAINTS_HEADER):
        raise ConfigFileError(f"{cpath}: exists and was not written by torchdepot; left untouched")
    wanted: dict[str, tuple[str, str | None]] = {"extra-index-url": (index, join_url(url, INDEX_LINK) + "/")}
    host = plain_http_host(url)
    if host:
        wanted["trusted-host"] = (host, None)
    if pins:
        wanted["constraint"] = (str(cpath), None)
    new = edit_text(old, lambda t: _edit_conf(t, str(path), wanted, inherited or {}, notes))
    changes = [FileChange(Path(path), old, new)]
    if pins:
        ctext = constraints_text(index, url, variant, pins)
        changes.append(FileChange(cpath, constraints_old, ctext))
        notes.append(f"pinned to the mirror's {variant} builds: {' '.join(pins)} (re-run after the mirror updates)")
    else:
        notes.append(f"the mirror has no +{variant} builds to pin; pip takes the highest version across all indexes")
    body = logical(old)
    index_url = ini.get(body, "global", "index-url")
    if index_url and index_url.startswith(join_url(url, INDEX_LINK) + "/"):
        notes.append(f"index-url is the mirror ({index_url}); set it back to your own index (the oldest backup has it)")
    if (ini.get(body, "global", "no-index") or "").lower() in ("1", "true", "yes", "on"):
        notes.append("no-index is set: pip ignores every index, the mirror's too")
    # A PIP_* variable replaces the file's whole value for its key: the CI lines carry what the
    # written [global] ends up with (the user's extra indexes, trusted hosts and constraint
    # files, plus ours), not ours alone.
    merged = logical(new)
    env = [(_env_name(key), " ".join((ini.get(merged, "global", key) or wanted[key][0]).split()))
           for key in wanted]
    for var, _ in env:
        if environ.get(var) is not None:
            notes.append(f"{var} is set in your environment and overrides the file")
    return Plan(tuple(changes), tuple(env), tuple(notes))
