"""``torchdepot ls``: what a PyTorch-style index offers, as an availability matrix.

Rows are version x accelerator, columns Python versions, cells the platforms that have
a wheel. ``--json`` prints one object per wheel instead (the ``parse --json`` keys plus
``url`` and ``sha256``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import click

from torchdepot.model.accel import accelerator_sort_key, parse_accelerator
from torchdepot.net.http import make_session
from torchdepot.sources.crawl import crawl_index
from torchdepot.model.wheelname import WheelFile, version_sort_key

# Short platform codes keep a cell narrow enough for a terminal; the legend prints below.
PLATFORM_CODES = {
    "linux-x86_64": "L",
    "linux-aarch64": "A",
    "windows-amd64": "W",
    "macos-arm64": "M",
    "macos-x86_64": "X",
    "any": "*",
}


_CODE_ORDER = {c: i for i, c in enumerate(PLATFORM_CODES.values())}


def _code_key(code: str) -> tuple[int, str]:
    """Legend order; platforms without a code (``linux-s390x``) after, by name, so a cell
    reads the same on every run (set order of strings changes with the hash seed)."""
    return (_CODE_ORDER.get(code, 99), code)


def _python_ok(wheel: WheelFile, python: str | None) -> bool:
    if not python:
        return True
    major = python.split(".", 1)[0]
    return python in wheel.pythons or major in wheel.pythons


def _platform_ok(wheel: WheelFile, platform: str | None) -> bool:
    return not platform or wheel.platform.name in (platform, "any")


def select(items, accelerators: set[str] | None, python: str | None, platform: str | None):
    out = []
    for link, wheel in items:
        acc = wheel.accelerator.name if wheel.accelerator else "unknown"
        if accelerators and acc not in accelerators:
            continue
        if _python_ok(wheel, python) and _platform_ok(wheel, platform):
            out.append((link, wheel))
    return out


def _python_key(py: str):
    return tuple(int(p) for p in py.split(".") if p.isdigit())


def matrix_keys(cells, accs: dict) -> list[tuple[str, str]]:
    """The (version, accelerator) row keys of an availability matrix: newest version first,
    then accelerators in :func:`accelerator_sort_key` order (``accs`` maps a name to its
    Accelerator, or None for ``unknown``, which sorts last). Shared by ``conda ls``."""

    def acc_key(name: str):
        a = accs.get(name)
        return (1, ()) if a is None else (0, accelerator_sort_key(a))

    keys = sorted(cells, key=lambda k: acc_key(k[1]))
    return sorted(keys, key=lambda k: version_sort_key(k[0]), reverse=True)


def format_table(title: str, header: list[str], body: list[list[str]]) -> str:
    """``title``, then the header, a dash rule and ``body``, in left-aligned columns."""
    table = [header] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [title]
    for i, r in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def matrix_rows(wheels: list[WheelFile]) -> tuple[list[str], list[tuple[str, str, dict[str, str]]]]:
    """-> (python columns, rows of (version, accelerator, {python: platform codes}))."""
    cells: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    accs: dict[str, object] = {}
    pythons: set[str] = set()
    for w in wheels:
        acc = w.accelerator.name if w.accelerator else "unknown"
        accs[acc] = w.accelerator
        for py in w.pythons or ("?",):
            if w.free_threaded:
                py += "t"
            pythons.add(py)
            cells[(w.public_version, acc)][py].add(PLATFORM_CODES.get(w.platform.name, w.platform.name))

    cols = sorted(pythons, key=lambda p: (_python_key(p.rstrip("t")), p.endswith("t")))
    rows = []
    for version, acc in matrix_keys(cells, accs):
        row = {py: "".join(sorted(codes, key=_code_key)) for py, codes in cells[(version, acc)].items()}
        rows.append((version, acc, row))
    return cols, rows


def render_table(project: str, wheels: list[WheelFile]) -> str:
    cols, rows = matrix_rows(wheels)
    body = [[v, a] + [row.get(c, "") for c in cols] for v, a, row in rows]
    return format_table(f"{project}: {len(wheels)} wheels", ["version", "accelerator"] + cols, body)


LEGEND = "platforms: " + ", ".join(f"{c}={p}" for p, c in PLATFORM_CODES.items()) + "; 't' = free-threaded"


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
    wanted = None
    if accelerators:
        wanted = {a if a == "unknown" else parse_accelerator(a).name for a in accelerators}
    projects = list(packages) or ["torch"]
    with make_session() as client:
        items = crawl_index(client, index_url, projects)
    chosen = select(items, wanted, python, platform)
    out = sys.stdout
    if as_json:
        for link, wheel in chosen:
            obj = wheel.to_json()
            obj["url"] = link.url
            obj["sha256"] = link.sha256
            obj["requires_python"] = link.requires_python
            out.write(json.dumps(obj, sort_keys=True) + "\n")
        return
    by_project: dict[str, list[WheelFile]] = defaultdict(list)
    for _, wheel in chosen:
        by_project[wheel.name].append(wheel)
    if not by_project:
        out.write("no matching wheels\n")
        return
    for project in sorted(by_project):
        out.write(render_table(project, by_project[project]) + "\n\n")
    out.write(LEGEND + "\n")


COMMANDS = [ls_cmd]
