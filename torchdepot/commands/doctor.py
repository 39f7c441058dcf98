"""``torchdepot doctor``: detect this machine, list the PyTorch builds it can run,
recommend one, and (``--mirror``) the mirrored build to install and its command."""

from __future__ import annotations

import json
import shlex
import sys

import click

from torchdepot.doctor import check as check_mod
from torchdepot.doctor.detect import detect
from torchdepot.doctor.installers import InstallerFacts, installer_facts
from torchdepot.doctor.mirror import DOCTOR_HTTP, mirror_url, read_mirror
from torchdepot.doctor.recommend import MirrorChoice, assess, choose_mirrored, nvidia_caps, summary
from torchdepot.errors import TorchdepotError
from torchdepot.model.gpu_tables import min_driver
from torchdepot.net.http import make_session


def _torch_of(report: dict, accelerator: str) -> str | None:
    """The torch release the judged candidate ``accelerator`` holds for (None: not tabled)."""
    return next((c["torch"] for c in report.get("candidates") or [] if c["accelerator"] == accelerator and c["torch"]),
                None)


def _text(report: dict) -> str:
    lines = [
        f"machine     {report['os']}-{report['arch']}, Python {report['python']}"
        + (f", glibc {report['glibc']}" if report.get("glibc") else ""),
    ]
    if report["gpus"]:
        for g in report["gpus"]:
            extra = ", ".join(x for x in (f"driver {g['driver']}" if g.get("driver") else "",
                                          f"compute {g['compute_cap']}" if g.get("compute_cap") else "") if x)
            lines.append(f"gpu         {g['name']}" + (f" ({extra})" if extra else ""))
    else:
        lines.append("gpu         none found")
    if report["driver"]:
        lines.append(f"driver      NVIDIA {report['driver']} (from {report['driver_source']}); CUDA up to {report['max_cuda']}")
    lines.append(f"compatible  {' '.join(report['compatible'])}")
    rec = report["recommended"]
    need = ""
    if rec.startswith("cu") and report.get("max_cuda"):
        cuda = f"{rec[2:-1]}.{rec[-1]}"
        md = min_driver(cuda, report["os"])
        need = f" (needs driver >= {md})" if md else ""
    torch = _torch_of(report, rec)
    lines.append(f"recommended {rec}{need}" + (f", torch {torch}" if torch and rec != "cpu" else ""))
    for c in report.get("candidates") or []:
        if c["fits"] == "no" and not c["no_device"]:
            lines.append(f"not         {c['accelerator']}: {c['reason']}")
    inst = report.get("installers")
    if inst:
        lines.extend(_installer_lines(inst))
    for note in report.get("notes") or []:
        lines.append(f"note        {note}")
    for w in report.get("warnings") or []:
        lines.append(f"warning     {w}")
    m = report.get("mirror")
    if m:
        if m.get("error"):
            lines.append(f"mirror      {m['url']}: not read (the error follows)")
        elif m.get("accelerator"):
            lines.append(f"mirror      {m['url']} offers {' '.join(m['accelerators'])}; use {m['accelerator']}")
            lines.append(f"install     {m['command']}")
            lines.append(f"install     {m['uv_command']}")
        else:
            lines.append(f"mirror      {m['url']} offers {' '.join(m['accelerators']) or 'nothing'}: none fits this machine")
        for w in m.get("warnings") or []:
            lines.append(f"warning     {w}")
        if m.get("note"):
            lines.append(f"note        {m['note']}")
    c = report.get("check")
    if c:
        r = c["result"]
        lines.append(f"torch       {r.get('torch') or 'not installed'}" + (f" (CUDA {r['cuda']})" if r.get("cuda") else "")
                     + (f", cuda available: {r['cuda_available']}" if r.get("torch") else "")
                     + (f", numpy {r['numpy']}" if r.get("numpy") else ""))
        for f in c["problems"]:
            lines.append(f"problem     {f}")
        if not c["problems"]:
            lines.append("check       ok")
    return "\n".join(lines)


def _installer_lines(inst: dict) -> list[str]:
    """The decision in each installer's words (the same facts as ``--format env``)."""
    conda = inst["conda"]
    lines = [f"uv          --torch-backend {inst['uv']['torch_backend']}  (or UV_TORCH_BACKEND)"]
    if conda["CONDA_OVERRIDE_CUDA"] is not None:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in inst["env"].items() if k.startswith("CONDA_"))
        lines.append(f"conda       {env} " + " ".join(shlex.quote(s) for s in conda["specs"]))
    props = ", ".join(inst["variant"]["properties"])
    lines.append(f"variant     {inst['variant']['label']}" + (f" ({props})" if props else ""))
    return lines


def _env_text(facts: InstallerFacts) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in facts.env().items())


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "env"]), default=None,
              help="text (default), json, or env: shell exports of the decision for uv and conda.")
@click.option("--mirror", "mirror_url_text", metavar="URL", help="A torchdepot mirror (or PyTorch-style index root) to choose from.")
@click.option("--check", "do_check", is_flag=True, help="Inspect the installed torch (exit 1 on problems).")
@click.option("--python", "python", metavar="PATH", default=None, help="Interpreter to --check (default: this one).")
def doctor_cmd(as_json: bool, fmt: str | None, mirror_url_text: str | None, do_check: bool, python: str | None) -> None:
    """Which PyTorch build fits this machine: the NVIDIA driver must run the build's CUDA
    version AND the build must carry kernels for the GPU's architecture (compute
    capability; docs/gpu-architectures.md). Without --mirror, only current variants
    are listed. A GPU machine that ends on cpu gets a warning.

    \b
    Environment:
      TORCHDEPOT_CUDA_DRIVER  use this NVIDIA driver version instead of detecting
                              one (e.g. 550.54.15), as on a build host without a GPU
      TORCHDEPOT_SYSROOT      read /proc and /sys under this directory instead of /
                              (recorded machines, containers)

    \b
    Examples:
      torchdepot doctor --mirror http://torchlab:8000 --check
      eval "$(torchdepot doctor --format env)"   # UV_TORCH_BACKEND, CONDA_OVERRIDE_CUDA(_ARCH)
    """
    machine = detect()
    report = summary(machine)
    mirror_error: TorchdepotError | None = None
    if mirror_url_text:
        url, note = mirror_url(mirror_url_text)
        try:
            report["mirror"] = _mirror_report(machine, url)
        except TorchdepotError as exc:
            # The local report is the part that needs no network: it always prints, then the error.
            mirror_error = exc
            report["mirror"] = {"url": url, "error": str(exc)}
        if note:
            report["mirror"]["note"] = note
    chosen = (report.get("mirror") or {}).get("accelerator") or report["recommended"]
    torch = _torch_of(report, chosen)
    facts = installer_facts(chosen, nvidia_caps(machine), torch)
    report["installers"] = facts.to_json()
    problems: list[str] = []
    if do_check:
        result = check_mod.probe(python or sys.executable)
        gpu = bool(machine.driver or machine.amd_gfx)
        problems = check_mod.findings(result, report["max_cuda"], gpu, nvidia_caps(machine) or ())
        report["check"] = {"python": python or sys.executable, "result": result, "problems": problems}
    if as_json or fmt == "json":
        click.echo(json.dumps(report, sort_keys=True))
    elif fmt == "env":
        click.echo(_env_text(facts))
    else:
        click.echo(_text(report))
    if mirror_error is not None:
        raise mirror_error
    if problems:
        sys.exit(1)


def _mirror_report(machine, url: str) -> dict:
    """The ``mirror`` part of the report: what the mirror offers and the build to install."""
    with make_session(DOCTOR_HTTP) as client:
        offer = read_mirror(client, url)
    offered = offer.offered(machine.python)
    a = assess(machine, offered)
    pick = choose_mirrored(a, offered)
    m = {"url": offer.url, "source": offer.source, "accelerators": offer.accelerators,
         "accelerator": pick[0] if pick else None, "version": None, "index_url": None, "command": None,
         "uv_command": None, "candidates": [f.to_json() for f in a.fits], "warnings": list(a.warnings)}
    if pick:
        choice = MirrorChoice(pick[0], pick[1], offer.index_url(pick[0]))
        m.update(version=choice.version, index_url=choice.index_url, command=choice.command,
                 uv_command=choice.uv_command)
    return m


COMMANDS = [doctor_cmd]
