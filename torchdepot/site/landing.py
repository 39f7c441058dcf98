"""The mirror's landing page (``<root>/index.html``): what it holds and how to install from it.

A matrix of torch versions x accelerators (rows) by platforms x Pythons (columns) with sizes,
then per variant the copy-paste commands (pip, conda, ``torchdepot config``) and the minimum
NVIDIA driver for CUDA builds. Every link is relative, so the page works under any base URL
(and over ``file://``); a few lines of JS only fill the mirror's address into the commands
(without JS they read ``MIRROR_URL``, explained on the page).

Every printed install command works verbatim against a plain-HTTP mirror on a LAN host
(``http://torchlab:8000``): pip commands carry ``--trusted-host``, uv commands
``--allow-insecure-host`` (:mod:`torchdepot.model.trust`). With ``base`` given the page is
rendered for that address (no script); otherwise the script fills in the address the page
was loaded from and adds the trust options only when that address needs them.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from torchdepot.errors import ParseError
from torchdepot.lockfiles.render import REQUIREMENTS
from torchdepot.model.accel import accelerator_from_dir, accelerator_sort_key
from torchdepot.model.gpu_tables import min_nvidia_driver
from torchdepot.model.sizes import format_size
from torchdepot.model.trust import PIP_TRUST_OPTION, UV_TRUST_OPTION, insecure_host
from torchdepot.model.wheelname import split_variant_label, version_sort_key
from torchdepot.store.fsutil import atomic_write_text
from torchdepot.store.manifest import Manifest, Target

PLACEHOLDER = "MIRROR_URL"
TORCH_NAMES = ("torch", "pytorch")
COMPANIONS = ("torchvision", "torchaudio")


@dataclass(frozen=True)
class Variant:
    kind: str  # pip | conda
    target: Target
    torch_version: str  # as mirrored, local label included ("2.13.0+cpu")
    torch_size: int
    total_size: int
    companions: tuple[tuple[str, str], ...]  # (name, version) of torchvision/torchaudio
    label: str | None = None  # PEP 825 variant label of the torch wheel (``cuda12.8``, ``null``)

    @property
    def public_version(self) -> str:
        return self.torch_version.split("+", 1)[0]


def variants(manifest: Manifest) -> list[Variant]:
    files = manifest.by_path()
    out = []
    for t in manifest.targets:
        torch = next((p for p in t.packages if p.name in TORCH_NAMES), None)
        if torch is None:
            continue
        sizes = [files[p.path].size for p in t.packages if p.path in files]
        comp = tuple((p.name, p.version) for p in t.packages if p.name in COMPANIONS)
        out.append(Variant(t.kind, t, torch.version, files[torch.path].size if torch.path in files else 0,
                           sum(sizes), comp, _label(torch.path) if t.kind == "pip" else None))
    return out


def _acc_key(name: str):
    acc = accelerator_from_dir(name)
    return accelerator_sort_key(acc) if acc else (9, name)


@dataclass(frozen=True)
class Address:
    """Where the commands point: a fixed ``base`` URL, or (None) the page's own address, filled
    in by the script."""

    base: str | None = None

    def url(self, path: str = "") -> str:
        if self.base is not None:
            return html.escape(self.base.rstrip("/") + path)
        return f'<span class="base">{PLACEHOLDER}</span>{html.escape(path)}'

    def trust(self, option: str) -> str:
        """``option host `` when the address is a plain-HTTP LAN host (nothing otherwise)."""
        if self.base is not None:
            host = insecure_host(self.base)
            return html.escape(f"{option} {host} ") if host else ""
        return f'<span class="trust" data-option="{html.escape(option)}"></span>'


def _cmd(text_html: str) -> str:
    return f'<pre class="cmd"><code>{text_html}</code></pre>'


def _label(path: str) -> str | None:
    try:
        return split_variant_label(path.rsplit("/", 1)[-1])[1]
    except ParseError:
        return None


def _index_of(t: Target) -> str:
    return t.index or f"whl/{t.accelerator}"


def _channel_of(t: Target) -> str:
    return t.channel or "conda"


def _pip_commands(v: Variant, root: Path, at: Address) -> list[str]:
    t = v.target
    index = _index_of(t)
    reqs = " ".join([f"torch=={html.escape(v.torch_version)}"] + [f"{n}=={html.escape(ver)}" for n, ver in v.companions])
    if v.label:  # pip does not install PEP 825 variant wheels yet; uv does, behind a preview flag
        return [f'<p class="driver">PEP 825 variant wheel, label <code>{html.escape(v.label)}</code>: install with '
                "uv's <code>--preview-features wheel-variants</code> (pip does not select variant wheels yet).</p>",
                _cmd(f"uv pip install --preview-features wheel-variants --index-url {at.url('/' + index)} "
                     f"{at.trust(UV_TRUST_OPTION)}{reqs}")]
    cmds = [_cmd(f"pip install --index-url {at.url('/' + index)} {at.trust(PIP_TRUST_OPTION)}{reqs}"),
            _cmd(f"uv pip install --index-url {at.url('/' + index)} {at.trust(UV_TRUST_OPTION)}{reqs}"),
            _cmd(f"torchdepot config pip --url {at.url()} --variant {html.escape(t.accelerator)}")]
    if (root / "envs" / t.id / REQUIREMENTS).is_file():
        cmds.append(_cmd(f"TORCHDEPOT_MIRROR={at.url()} pip install {at.trust(PIP_TRUST_OPTION)}--require-hashes "
                         f"--no-deps -r {at.url(f'/envs/{t.id}/{REQUIREMENTS}')}"))
    return cmds


def _conda_commands(v: Variant, at: Address) -> list[str]:
    t = v.target
    channel = _channel_of(t)
    torch = next(p for p in t.packages if p.name in TORCH_NAMES)
    spec = f"pytorch={torch.version}" + (f"={torch.build}" if torch.build else "")
    return [_cmd(f"conda install --override-channels -c {at.url('/' + channel)} {html.escape(spec)}"),
            _cmd(f"torchdepot config conda --url {at.url()}")]


# Fills the page's own address into the commands, and the trust options when pip would
# refuse it (plain HTTP, host not localhost / 127.0.0.0/8 / ::1: the rule in model.trust).
_SCRIPT = """<script>
(function () {
  var here = new URL('.', location.href);
  var base = here.href.replace(/\\/$/, '');
  var h = here.hostname.replace(/^\\[|\\]$/g, '');
  var lan = here.protocol === 'http:' && !(h === 'localhost' || h === '::1' || /^127\\.\\d+\\.\\d+\\.\\d+$/.test(h));
  document.querySelectorAll('.base').forEach(function (el) { el.textContent = base; });
  document.querySelectorAll('.trust').forEach(function (el) {
    el.textContent = lan ? el.getAttribute('data-option') + ' ' + here.host + ' ' : '';
  });
})();
</script>"""


Column = tuple[str, str]  # (platform, python): a column of the matrix
Row = tuple[str, str]  # (public torch version, accelerator): a row of the matrix


@dataclass(frozen=True)
class Matrix:
    """The matrix table's HTML: its two header rows and one ``<tr>`` per row, in page order."""

    head1: str
    head2: str
    rows: tuple[str, ...]


def _grid(vs: list[Variant]) -> dict[Row, dict[Column, list[Variant]]]:
    rows: dict[Row, dict[Column, list[Variant]]] = defaultdict(lambda: defaultdict(list))
    for v in vs:
        rows[(v.public_version, v.target.accelerator)][(v.target.platform, v.target.python)].append(v)
    return rows


def _row_order(rows: dict[Row, dict[Column, list[Variant]]]) -> list[Row]:
    # newest torch first; within a version newest GPU stack first, cpu last (two stable sorts)
    row_keys = sorted(rows, key=lambda r: _acc_key(r[1]))
    return sorted(row_keys, key=lambda r: version_sort_key(r[0]), reverse=True)


def _matrix_cell(here: list[Variant]) -> str:
    if not here:
        return '<td class="none">—</td>'
    tid = here[0].target.id
    kinds = " ".join(f'<span class="kind">{k}</span>' for k in sorted({v.kind for v in here}))
    size = max(v.torch_size for v in here)
    return (f'<td class="have" data-variant="{html.escape(tid)}"><a href="#{html.escape(tid)}">'
            f'{format_size(size)}</a> {kinds}</td>')


def _matrix_row(row: Row, cells: dict[Column, list[Variant]], columns: list[Column]) -> str:
    version, acc = row
    drv = min_nvidia_driver(a) if (a := accelerator_from_dir(acc)) else None
    drv_html = f'<br/><small>driver ≥ {html.escape(drv)}</small>' if drv else ""
    labels = sorted({v.label for col in cells.values() for v in col if v.label})
    drv_html += "".join(f'<br/><small class="label">variant {html.escape(lb)}</small>' for lb in labels)
    return (f'<tr><th scope="row">torch {html.escape(version)}</th><th scope="row">{html.escape(acc)}{drv_html}</th>'
            + "".join(_matrix_cell(cells.get(col, [])) for col in columns) + "</tr>")


def _matrix(vs: list[Variant]) -> Matrix:
    """Torch versions x accelerators (rows) by platforms x Pythons (columns)."""
    columns = sorted({(v.target.platform, v.target.python) for v in vs},
                     key=lambda c: (c[0], tuple(int(x) for x in c[1].split(".") if x.isdigit())))
    grid = _grid(vs)
    platforms = sorted({c[0] for c in columns})
    return Matrix(
        head1="".join(f'<th colspan="{sum(1 for c in columns if c[0] == p)}">{html.escape(p)}</th>' for p in platforms),
        head2="".join(f"<th>Python {html.escape(py)}</th>" for _, py in columns),
        rows=tuple(_matrix_row(row, grid[row], columns) for row in _row_order(grid)))


def _driver_note(accelerator: str) -> str:
    """The driver a target's build needs ('' for an accelerator without a note)."""
    acc = accelerator_from_dir(accelerator)
    if acc is not None and acc.kind == "cuda":
        linux, windows = min_nvidia_driver(acc, "linux"), min_nvidia_driver(acc, "windows")
        return (f'<p class="driver">CUDA {html.escape(acc.cuda_version or "")}: needs NVIDIA driver '
                f'≥ <b>{html.escape(linux or "?")}</b> on Linux, ≥ <b>{html.escape(windows or "?")}</b> on Windows '
                "(check with <code>nvidia-smi</code> or <code>torchdepot doctor</code>).</p>")
    if acc is not None and acc.kind == "cpu":
        return '<p class="driver">CPU build: runs anywhere, no GPU driver needed.</p>'
    return ""


def _variant_block(v: Variant, root: Path, at: Address) -> list[str]:
    """One variant's heading (sizes and links) and its install commands."""
    tid = v.target.id
    if v.kind == "pip":
        index = _index_of(v.target)
        links = [f'<a href="{html.escape(index)}/">{html.escape(index)}/</a>']
        cmds = _pip_commands(v, root, at)
    else:
        channel = _channel_of(v.target)
        links = [f'<a href="{html.escape(channel)}/{html.escape(v.target.subdir or "noarch")}/repodata.json">'
                 f'{html.escape(channel)}/{html.escape(v.target.subdir or "")}</a>']
        cmds = _conda_commands(v, at)
    if (root / "envs" / tid).is_dir():
        links.append(f'<a href="envs/{html.escape(tid)}/">envs/{html.escape(tid)}/</a>')
    return [f'<h4>{v.kind}: torch {html.escape(v.torch_version)} — {format_size(v.torch_size)} '
            f'(environment {format_size(v.total_size)}) · {" · ".join(links)}</h4>', *cmds]


def _sections(vs: list[Variant], root: Path, at: Address) -> list[str]:
    """One ``<section>`` per target id (pip before conda), ordered like the matrix's accelerators."""
    by_id: dict[str, list[Variant]] = defaultdict(list)
    for v in vs:
        by_id[v.target.id].append(v)
    sections = []
    for tid in sorted(by_id, key=lambda i: (_acc_key(by_id[i][0].target.accelerator), i)):
        group = sorted(by_id[tid], key=lambda v: v.kind, reverse=True)
        parts = [f'<section class="variant" id="{html.escape(tid)}"><h3>{html.escape(tid)}</h3>',
                 _driver_note(group[0].target.accelerator)]
        for v in group:
            parts += _variant_block(v, root, at)
        parts.append("</section>")
        sections.append("\n".join(p for p in parts if p))
    return sections


def _intro(at: Address) -> str:
    if at.base is None:
        return (f"Commands below use <code>{at.url()}</code>: the address of this page's folder (filled in "
                f"automatically when JavaScript is on; otherwise replace <code>{PLACEHOLDER}</code>, and for a "
                f"plain-HTTP mirror on a LAN host add <code>{PIP_TRUST_OPTION} HOST:PORT</code> to pip commands).")
    return f"Commands below use this mirror's address, <code>{html.escape(at.base)}</code>."


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>PyTorch mirror (torchdepot)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .35em .6em; text-align: center; }}
thead th {{ background: #f0f3f7; }}
tbody th {{ background: #fafafa; text-align: left; white-space: nowrap; }}
td.have {{ background: #e9f7ec; }}
td.none {{ color: #aaa; }}
.kind {{ font-size: .75em; background: #dde6f3; border-radius: 3px; padding: 0 .3em; }}
pre.cmd {{ background: #f6f8fa; border: 1px solid #e1e4e8; padding: .5em .8em; overflow-x: auto; margin: .3em 0; }}
section.variant {{ border-top: 1px solid #ddd; margin-top: 1.2em; }}
.driver {{ color: #555; }}
.base {{ color: #0550ae; }}
small {{ color: #666; }}
</style>
</head>
<body>
<h1>PyTorch mirror</h1>
<p>{n_targets} target(s), {n_files} files, {total}. Files: <a href="manifest.json">manifest.json</a>
· pip indexes: <a href="whl/">whl/</a>. {intro}</p>
{empty}
<h2>What this mirror holds</h2>
<table id="matrix">
<thead><tr><th rowspan="2">torch</th><th rowspan="2">accelerator</th>{head1}</tr><tr>{head2}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p><small>Sizes are the torch package; click a cell for the install commands. NVIDIA minimum drivers per NVIDIA's
CUDA minor-version compatibility table (Linux).</small></p>
<h2>Install</h2>
{sections}
<p><small>Generated by torchdepot from manifest.json.</small></p>
{script}
</body>
</html>
"""


def render(manifest: Manifest, root: Path, base: str | None = None) -> str:
    """The page; ``base`` fixes the mirror address in every command (else the script fills it)."""
    at = Address(base)
    vs = variants(manifest)
    matrix = _matrix(vs)
    return _PAGE.format(
        n_targets=len({(t.kind, t.id) for t in manifest.targets}), n_files=len(manifest.files),
        total=format_size(sum(f.size for f in manifest.files)), intro=_intro(at),
        empty="" if vs else "<p><b>This mirror holds no torch builds yet.</b> Run <code>torchdepot mirror</code>.</p>",
        head1=matrix.head1, head2=matrix.head2, body="\n".join(matrix.rows),
        sections="\n".join(_sections(vs, root, at)), script=_SCRIPT if base is None else "")


def write_landing(root: Path, manifest: Manifest, base: str | None = None) -> Path:
    """Write ``<root>/index.html`` atomically; -> its path."""
    root = Path(root)
    path = root / "index.html"
    atomic_write_text(path, render(manifest, root, base))
    return path
