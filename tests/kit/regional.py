"""A small download.pytorch.org-shaped upstream for the regional mode (``releases:``).

A variant of bench/regional.py's generator, small enough for fast tests: torch 1.13.1, 2.0.0
and 2.1.0 (with torchvision and torchaudio of the paired lines) for cpu, cu118 and cu121 over
two Pythons and linux-x86_64 (+ macOS arm64 for cpu, unlabelled as upstream names them, and
Windows for CUDA, listed first and naming no nvidia-* library, as upstream's bundle CUDA); the
dependencies listed on every ``/whl/<acc>/`` page as upstream does, linking one shared file
folder: ``filelock`` (two versions), ``sympy`` -> ``mpmath<1.4`` (1.3.0 and 1.4.0: only the
first is in the closure), ``numpy`` per Python and platform, ``nvidia-cublas-cu11/12`` (on
their CUDA index only), ``opt-einsum`` (only an extra's dependency: never in the closure), and
``triton`` named by cu121's torch but listed on no page. The aggregate ``/whl/torch/`` page
lists every accelerator's torch wheels. Every wheel has PEP 658 ``.metadata`` and ``#sha256=``.

:func:`expected` computes which files a spec's filters select, independently of the code under
test (from the generator's own table, not from pages).
"""

from __future__ import annotations

import functools
import hashlib
import urllib.parse
from dataclasses import dataclass

from tests.kit.upstream import link, page
from tests.kit.wheels import wheel_bytes, wheel_metadata

RELEASES = {"cpu": ("1.13.1", "2.0.0", "2.1.0"), "cu118": ("2.0.0", "2.1.0"), "cu121": ("2.1.0",)}
PYTHONS = ("3.10", "3.11")
TAGS = {"linux-x86_64": "manylinux_2_28_x86_64", "macos-arm64": "macosx_11_0_arm64", "windows-amd64": "win_amd64"}
# per accelerator, the platforms its torch builds for, in page order: a CUDA index lists its
# Windows builds (CUDA bundled: no nvidia-* requirement) before its Linux ones (nvidia-* named)
PLATFORMS = {"cpu": ("linux-x86_64", "macos-arm64"), "cu118": ("windows-amd64", "linux-x86_64"),
             "cu121": ("windows-amd64", "linux-x86_64")}
CUBLAS = {"cu118": "nvidia-cublas-cu11", "cu121": "nvidia-cublas-cu12"}


@dataclass(frozen=True)
class File:
    where: str  # "acc" (under /whl/<acc>/) or "deps" (the shared /whl/files/)
    acc: str | None  # the accelerator whose index lists it; None: every index
    project: str
    filename: str
    data: bytes
    torch: str | None = None  # the torch release line it belongs to (torch / torchvision / torchaudio)
    python: str | None = None
    platform: str | None = None


def _paired(project: str, torch: str) -> str:
    major, minor, patch = (int(x) for x in torch.split("."))
    if project == "torchvision":
        return f"0.{minor + 15}.{patch}" if major == 2 else f"0.{minor + 1}.{patch}"
    return f"2.{minor}.{patch}" if major == 2 else f"0.{minor}.{patch}"


@functools.lru_cache(maxsize=4)  # built once per session: the same bytes every time
def files(extra_torch: tuple[tuple[str, str], ...] = ()) -> tuple[File, ...]:
    """Every wheel of the upstream; ``extra_torch``: (acc, version) releases added later."""
    out = []
    releases = {acc: (*versions, *(v for a, v in extra_torch if a == acc)) for acc, versions in RELEASES.items()}
    for acc, versions in releases.items():
        for torch in versions:
            for py in PYTHONS:
                cp = "cp" + py.replace(".", "")
                for plat in PLATFORMS[acc]:
                    label = "" if plat.startswith("macos") else f"+{acc}"
                    tag = f"{cp}-{'none' if label == '' else cp}-{TAGS[plat]}"
                    deps = ["filelock", "sympy", "opt-einsum>=3.3 ; extra == 'opt-einsum'"]
                    if acc in CUBLAS and plat.startswith("linux"):
                        deps.append(f"{CUBLAS[acc]} ; platform_system == 'Linux'")
                    if acc == "cu121" and plat.startswith("linux"):
                        deps.append("triton ; platform_system == 'Linux'")
                    for project, version, requires in (
                            ("torch", torch + label, tuple(deps)),
                            ("torchvision", _paired("torchvision", torch) + label, ("numpy", f"torch=={torch}")),
                            ("torchaudio", _paired("torchaudio", torch) + label, (f"torch=={torch}",))):
                        w = wheel_bytes(project, version, tag, requires)
                        out.append(File("acc", acc, project, w.filename, w.data, torch, py, plat))
    for project, version, requires in (("filelock", "3.0.0", ()), ("filelock", "3.1.0", ()),
                                       ("sympy", "1.12", ("mpmath<1.4,>=1.1",)), ("mpmath", "1.3.0", ()),
                                       ("mpmath", "1.4.0", ()), ("opt-einsum", "3.3.0", ())):
        w = wheel_bytes(project, version, "py3-none-any", requires)
        out.append(File("deps", None, project, w.filename, w.data))
    for py in PYTHONS:
        cp = "cp" + py.replace(".", "")
        for plat, tag in TAGS.items():
            w = wheel_bytes("numpy", "1.26.0", f"{cp}-{cp}-{tag}")
            out.append(File("deps", None, "numpy", w.filename, w.data, python=py, platform=plat))
    for acc, project in CUBLAS.items():
        w = wheel_bytes(project, "12.1.0", f"py3-none-{TAGS['linux-x86_64']}")
        out.append(File("deps", acc, project, w.filename, w.data, platform="linux-x86_64"))
    return tuple(out)


def serve(server, extra_torch: tuple[tuple[str, str], ...] = (), hashless: bool = False, metadata: bool = True,
          lie: frozenset[str] = frozenset()) -> tuple[File, ...]:
    """Add the upstream's files and pages to a FaultServer; returns its files. ``hashless``:
    the pages give no ``#sha256=`` and no ``.metadata`` (a regional mirror's flat copy);
    ``metadata=False``: ``#sha256=`` but no ``.metadata``; ``lie``: file names whose
    ``#sha256=`` is not their bytes' (a wheel re-published behind a stale page)."""
    every = files(extra_torch)
    pages: dict[str, list[str]] = {}
    for f in every:
        path = f"/whl/{f.acc}/{f.filename}" if f.where == "acc" else f"/whl/files/{f.filename}"
        meta = wheel_metadata(f.data)
        server.add(path, f.data)
        server.add(path + ".metadata", meta)
        sha = "0" * 64 if f.filename in lie else hashlib.sha256(f.data).hexdigest()
        anchor = link(urllib.parse.quote(path), f.filename, None if hashless else sha,
                      None if hashless or not metadata else hashlib.sha256(meta).hexdigest())
        listed_on = [f.acc] if f.acc is not None else list(RELEASES)
        for acc in listed_on:
            pages.setdefault(f"/whl/{acc}/{f.project}/", []).append(anchor)
        if f.project == "torch":
            pages.setdefault("/whl/torch/", []).append(anchor)
    for path, anchors in pages.items():
        server.add(path, page(anchors))
    return every


def expected(every: tuple[File, ...], *, releases: tuple[str, ...], accs: tuple[str, ...] | None = None,
             pythons: tuple[str, ...] | None = None, platforms: tuple[str, ...] | None = None) -> set[str]:
    """The file names a regional sync of ``releases`` (torch versions) must carry."""
    def fits(f: File) -> bool:
        return (pythons is None or f.python is None or f.python in pythons) and \
            (platforms is None or f.platform is None or f.platform in platforms)

    accs = tuple(RELEASES) if accs is None else accs
    chosen = {f.filename for f in every if f.where == "acc" and f.acc in accs and f.torch in releases and fits(f)}
    if chosen:
        live = {f.acc for f in every if f.filename in chosen}
        for f in every:
            if f.where != "deps" or not fits(f):
                continue
            if f.project in ("filelock", "sympy", "numpy") or f.filename.startswith("mpmath-1.3.0") or f.acc is not None and f.acc in live:
                chosen.add(f.filename)
    return chosen
