"""``torchdepot verify``: install each lock into a throwaway env from the mirror and smoke-test it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from torchdepot.errors import TorchdepotError
from torchdepot.lockfiles import BASE_ENV
from torchdepot.verify.locks import read_env
from torchdepot.verify.run import EnvResult, Options, load_manifest, mirror_url, verify_env


def _env_dirs(args: tuple[str, ...]) -> list[Path]:
    if args:
        return [Path(a) for a in args]
    found = sorted(p.parent for p in Path("envs").glob("*/variant.json"))
    if not found:
        raise TorchdepotError("envs/: no lock folders (run 'torchdepot lock' first, or name ENV_DIRs)")
    return found


def _table(results: list[EnvResult]) -> str:
    rows = [("ENV", "RESULT", "SECONDS", "CHECKS")]
    for r in results:
        summary = ", ".join(f"{c.name}: {c.status}" for c in r.checks)
        rows.append((r.env, r.result + (" (dry run only)" if r.mode == "resolve-only" else ""), f"{r.seconds:.1f}", summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    for r in results:
        for c in r.checks:
            if c.status == "fail":
                out.append(f"{r.env}: {c.name}: {c.detail}")
        if r.kept:
            out.append(f"{r.env}: kept {r.kept}")
    return "\n".join(out)


@click.command("verify")
@click.argument("env_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--mirror", help=f"Mirror dir or URL (default: ${BASE_ENV}, else mirror/out).")
@click.option("--keep", is_flag=True, help="Keep the throwaway environments.")
@click.option("--json", "as_json", is_flag=True, help="JSON results for CI.")
@click.option("--register-kernel", "kernel", metavar="NAME", hidden=True)  # moved to `env create`; says so
def verify_cmd(env_dirs: tuple[str, ...], mirror: str | None, keep: bool, as_json: bool, kernel: str | None) -> None:
    """Install every lock in a throwaway env (mirror only, hashes required) and smoke-test torch.

    Targets this machine cannot run (another Python or OS) are resolved against the
    mirror for their tags instead, and reported as "dry run only".

    \b
    Example:
      torchdepot verify envs/cpu-py311-linux-x86_64 --mirror http://127.0.0.1:8080 --json
    """
    if kernel:  # a throwaway env is no place for a kernel Jupyter should keep finding
        raise click.UsageError("verify installs into throwaway environments; for a Jupyter kernel use: "
                               f"torchdepot env create ENV_DIR --prefix DIR --register-kernel {kernel}")
    url = mirror_url(mirror or os.environ.get(BASE_ENV) or "mirror/out")
    manifest = load_manifest(url)
    opts = Options(mirror_url=url, keep=keep)
    results = []
    for d in _env_dirs(env_dirs):
        r = verify_env(read_env(d), opts, manifest)
        results.append(r)
        if not as_json:
            click.echo(f"{r.env}: {r.result} ({r.seconds:.1f}s)", err=True)
    if as_json:
        click.echo(json.dumps({"mirror": url, "results": [r.to_json() for r in results]}, indent=1, sort_keys=True))
    else:
        click.echo(_table(results))
    if any(r.result not in ("pass", "resolved") for r in results):
        sys.exit(1)


COMMANDS = [verify_cmd]
