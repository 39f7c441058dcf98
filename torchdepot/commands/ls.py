"""``torchdepot ls``: what a PyTorch-style index offers, as an availability matrix.

Rows are version x accelerator, columns Python versions, cells the platforms that have
a wheel (the matrix is :mod:`torchdepot.site.availability`, shared with ``conda ls``).
``--json`` prints one object per wheel instead (the ``parse --json`` keys plus ``url`` and
``sha256``). PEP 825 variant wheels (a ``/whl/variant/`` index) are rows by the
accelerator their label names (``cuda12.8`` -> cu128, ``null`` -> cpu); one line lists the
labels. This module only parses options and prints.
"""

from __future__ import annotations

import json
import sys

import click

from torchdepot.model.accel import parse_accelerator
from torchdepot.site.availability import UNKNOWN, WHEEL_LEGEND, index_wheels, render, wheel_matrices


@click.command("ls")
@click.option("--index", "index_url", required=True, metavar="URL",
              help="Index base (e.g. http://mirror/whl) or a variant index (.../whl/cu118).")
@click.option("--package", "packages", multiple=True, metavar="NAME", help="Project(s) to list (default: torch).")
@click.option("--accelerator", "accelerators", multiple=True, metavar="A", help="Only this accelerator (cpu, cu118, rocm6.2, xpu, unknown).")
@click.option("--python", "python", metavar="X.Y", help="Only wheels for this Python.")
@click.option("--platform", "platform", metavar="P", help="Only this platform (linux-x86_64, windows-amd64, ...).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per wheel.")
def ls_cmd(index_url, packages, accelerators, python, platform, as_json) -> None:
    """Show which versions x accelerators x Pythons x platforms an index offers.

    \b
    Example:
      torchdepot ls --index http://127.0.0.1:8000/whl --package torch --python 3.11
    """
    wanted = {a if a == UNKNOWN else parse_accelerator(a).name for a in accelerators} or None
    listing = index_wheels(index_url, list(packages) or ["torch"], wanted, python, platform)
    if listing.skipped:
        click.echo(f"torchdepot: warning: {listing.skipped}", err=True)
    chosen = listing.items
    out = sys.stdout
    if as_json:
        for link, wheel in chosen:
            obj = wheel.to_json()
            obj["url"] = link.url
            obj["sha256"] = link.sha256
            obj["requires_python"] = link.requires_python
            out.write(json.dumps(obj, sort_keys=True) + "\n")
        return
    matrices = wheel_matrices(wheel for _, wheel in chosen)
    if not matrices:
        out.write("no matching wheels\n")
        return
    for matrix in matrices:
        out.write(render(matrix) + "\n\n")
    labels = sorted({(w.accelerator.name if w.accelerator else UNKNOWN, w.variant_label)
                     for _, w in chosen if w.variant_label})
    if labels:  # PEP 825 variant wheels: which label each accelerator row is
        out.write("variant labels (PEP 825): " + ", ".join(f"{a}={lb}" for a, lb in labels) + "\n")
    out.write(WHEEL_LEGEND + "\n")


COMMANDS = [ls_cmd]
