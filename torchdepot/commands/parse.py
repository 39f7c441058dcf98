"""``torchdepot parse``: wheel filenames / URLs -> the model, one line per input."""

from __future__ import annotations

import json
import sys

import click

from torchdepot.errors import ParseError
from torchdepot.model.wheelname import error_json, parse_wheel


@click.command("parse")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-file", "from_file", type=click.File("r", encoding="utf-8", errors="replace"),
              help="Read names/URLs from a file (one per line; '-' for stdin).")
@click.argument("inputs", nargs=-1)
def parse_cmd(as_json: bool, from_file, inputs: tuple[str, ...]) -> None:
    """Parse wheel filenames or URLs into accelerator, version, python, platform.

    \b
    Example:
      torchdepot parse --json 'https://download.pytorch.org/whl/cu80/torch-0.3.0.post4-cp36-cp36m-linux_x86_64.whl'
    """
    items = list(inputs)
    if from_file is not None:
        items += [ln.strip() for ln in from_file if ln.strip() and not ln.lstrip().startswith("#")]
    if not items:
        raise click.UsageError("give NAME_OR_URL arguments or --from-file")
    ok = 0
    out = sys.stdout
    for text in items:
        try:
            w = parse_wheel(text)
        except ParseError as exc:
            if as_json:
                out.write(json.dumps(error_json(text, str(exc)), sort_keys=True) + "\n")
            else:
                out.write(f"{text}\terror: {exc}\n")
            continue
        ok += 1
        if as_json:
            out.write(json.dumps(w.to_json(), sort_keys=True) + "\n")
        else:
            acc = w.accelerator.name if w.accelerator else "unknown"
            out.write(
                f"{w.name} {w.version}\t{acc}\t{'.'.join(w.python_tags)}-{'.'.join(w.abi_tags)}"
                f"\t{w.platform.name}\t{w.filename}\n"
            )
    if ok == 0:
        sys.exit(1)


COMMANDS = [parse_cmd]
