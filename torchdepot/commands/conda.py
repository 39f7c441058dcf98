"""``torchdepot conda ls``: what a conda channel offers, as the same matrix as ``torchdepot ls``.

Rows are version x accelerator (read from each build string), columns Python versions,
cells the subdirs that have a build. ``--json`` prints one object per record.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import click

from torchdepot.net.http import make_session
from torchdepot.model.platforms import subdir_platform
from torchdepot.commands.ls import PLATFORM_CODES, _python_key, format_table, matrix_keys


def _channel_url(text: str) -> str:
    if "://" in text:
        return text.rstrip("/")
    return Path(text).resolve().as_uri()


def load_channel(url: str, subdirs: tuple[str, ...]):
    from torchdepot.sources.repodata import parse_repodata
    from torchdepot.sources.channel import RepodataCache, fetch_repodata

    out = []
    with make_session() as client, tempfile.TemporaryDirectory(prefix="td-condals-") as tmp:
        cache = RepodataCache(Path(tmp))
        for sd in subdirs:
            got = fetch_repodata(client, "channel", (url,), sd, cache, label=url)
            out.append(parse_repodata(got.path.read_bytes(), url, sd, got.url))
    return out


def record_json(rec) -> dict:
    """:meth:`CondaRecord.to_json` plus ``depends``; the channel is the one asked for, so it is left out."""
    d = rec.to_json()
    del d["channel"]
    d["depends"] = list(rec.depends)
    return d


def render_matrix(package: str, records: list) -> str:
    cells: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    accs: dict[str, object] = {}
    pythons: set[str] = set()
    for r in records:
        acc = r.accelerator.name if r.accelerator else "unknown"
        accs[acc] = r.accelerator
        py = r.python or "-"
        pythons.add(py)
        plat = subdir_platform(r.subdir) or r.subdir
        cells[(r.version, acc)][py].add(PLATFORM_CODES.get(plat, r.subdir))
    cols = sorted(pythons, key=lambda p: _python_key(p) if p != "-" else (99,))
    body = [[v, a] + ["".join(sorted(cells[(v, a)].get(c, ()))) for c in cols] for v, a in matrix_keys(cells, accs)]
    table = format_table(f"{package}: {len(records)} records", ["version", "accelerator"] + cols, body)
    legend = "subdirs: " + ", ".join(f"{c}={p}" for p, c in PLATFORM_CODES.items()) + "; '-' = build states no Python"
    return f"{table}\n{legend}"


@click.group("conda")
def conda_group() -> None:
    """Inspect conda channels (the conda side of a torchdepot mirror)."""


@conda_group.command("ls")
@click.option("--channel", "channel", required=True, metavar="URL",
              help="Channel base URL (http(s)://.../pytorch, file:// or a directory).")
@click.option("--subdir", "subdirs", multiple=True, metavar="S", help="Subdir(s) to read (default: linux-64 and noarch).")
@click.option("--package", "packages", multiple=True, metavar="NAME",
              help="Package(s) to list (table default: pytorch; JSON default: every record).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def ls_cmd(channel: str, subdirs: tuple[str, ...], packages: tuple[str, ...], as_json: bool) -> None:
    """List a channel's builds with the accelerator and Python each build string states.

    \b
    Example:
      torchdepot conda ls --channel http://mirror.local/conda/pytorch --subdir linux-64
      torchdepot conda ls --channel mirror/out/conda/pytorch --json --package pytorch
    """
    url = _channel_url(channel)
    subdirs = tuple(dict.fromkeys(subdirs or ("linux-64", "noarch")))
    data = load_channel(url, subdirs)
    records = sorted((r for d in data for r in d.records.values()), key=lambda r: (r.subdir, r.filename))
    if as_json:
        for r in records:
            if not packages or r.name in packages:
                sys.stdout.write(json.dumps(record_json(r), sort_keys=True) + "\n")
        return
    for pkg in packages or ("pytorch",):
        sel = [r for r in records if r.name == pkg]
        click.echo(render_matrix(pkg, sel) if sel else f"{pkg}: no records in {', '.join(subdirs)}")


COMMANDS = [conda_group]
