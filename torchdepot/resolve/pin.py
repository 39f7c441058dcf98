"""Choose torch / torchvision / torchaudio versions for one target from crawled links.

Pure: links in, a pin out. A candidate must be a wheel for the target's Python (CPython
``cpXY``, not free-threaded), platform, and accelerator. The accelerator of a wheel is its
local label (``+cpu``), else its index directory (``/whl/cu80/``); an unlabelled wheel
is a CPU build on macOS and Windows but a CUDA build of unknown version on Linux (the
default index's Linux torch), so it is never taken for a Linux target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from torchdepot.errors import ParseError
from torchdepot.model.presets import OFFICIAL, UPSTREAM_PRESETS
from torchdepot.model.wheelname import WheelFile, parse_wheel
from torchdepot.sources.links import Link

# torchvision pairs with torch by minor version (pytorch/vision README table):
# torch 2.N <-> torchvision 0.(N+15) for 2.0..2.13, torch 1.N <-> 0.(N+1) for 1.x.
# torchaudio follows torch's major.minor from 2.1 on (lock files co-lock equal versions).


@dataclass(frozen=True)
class Pin:
    project: str
    version: str  # full version, local label included: "2.13.0+cpu"

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


def wheel_accelerator(w: WheelFile) -> str | None:
    if w.accelerator is not None:
        return w.accelerator.name
    if w.platform.os in ("macos", "windows"):
        return "cpu"
    return None


def _glibc_ok(w: WheelFile, max_glibc: tuple[int, int]) -> bool:
    return w.platform.glibc is None or w.platform.glibc <= max_glibc


def matches_target(w: WheelFile, accelerator: str, python: str, platform: str,
                   max_glibc: tuple[int, int] = (2, 28)) -> bool:
    cp = "cp" + python.replace(".", "")
    if cp not in w.python_tags and not any(t in ("py3", "py2.py3") for t in w.python_tags):
        return False
    if w.free_threaded:
        return False
    plat = w.platform
    if plat.os != "any":
        if plat.os != platform.split("-", 1)[0]:
            return False
        arch = platform.split("-", 1)[1]
        if plat.arch != arch and not (plat.os == "macos" and plat.arch == "universal2"):
            return False
        if plat.os == "linux" and (plat.libc == "musl" or not _glibc_ok(w, max_glibc)):
            return False
    return wheel_accelerator(w) == accelerator


def candidates(links: list[Link], project: str, accelerator: str, python: str, platform: str,
               parsed: Mapping[str, WheelFile] | None = None) -> list[WheelFile]:
    """The wheels among ``links`` for the target. ``parsed``: URL -> its file name already
    parsed (the view parses each link once per run; every target then reuses it)."""
    out = []
    for link in links:
        if link.yanked is not None or not link.filename.endswith(".whl"):
            continue
        w = parsed.get(link.url) if parsed is not None else None
        if w is None:
            try:
                w = parse_wheel(link.url)
            except ParseError:
                continue
        if w.name != project:
            continue
        if matches_target(w, accelerator, python, platform):
            out.append(w)
    return out


def paired_prefix(project: str, torch_version: str) -> str | None:
    """``torchvision`` for torch 2.13.x -> "0.28"; torchaudio -> "2.13"; unknown -> None."""
    try:
        v = Version(torch_version)
    except InvalidVersion:
        return None
    major, minor = v.release[0], (v.release[1] if len(v.release) > 1 else 0)
    if project == "torchvision":
        if major == 2:
            return f"0.{minor + 15}"
        if major == 1 and minor >= 4:
            return f"0.{minor + 1}"
        return None
    if project == "torchaudio" and major == 2 and minor >= 1:
        return f"{major}.{minor}"
    return None


def choose(cands: list[WheelFile], constraint: str | None, *, prereleases: bool = False,
           prefix: str | None = None) -> Version | None:
    """Newest version among ``cands`` allowed by ``constraint`` (and a ``X.Y`` pairing prefix)."""
    try:
        spec = SpecifierSet(constraint or "")
    except InvalidSpecifier:
        return None
    pre = prereleases or bool(spec.prereleases)
    best: Version | None = None
    for w in cands:
        try:
            v = Version(w.version)
        except InvalidVersion:
            continue
        public = Version(v.public)
        # A local label never blocks a public-version constraint (PEP 440).
        if not (spec.contains(public, prereleases=pre) or spec.contains(v, prereleases=pre)):
            continue
        if prefix is not None and ".".join(str(p) for p in public.release[:2]) != prefix:
            continue
        if best is None or v > best:
            best = v
    return best


def pin(links: list[Link], project: str, accelerator: str, python: str, platform: str,
        constraint: str | None, *, prereleases: bool = False, torch_version: str | None = None,
        parsed: Mapping[str, WheelFile] | None = None) -> Pin | None:
    cands = candidates(links, project, accelerator, python, platform, parsed)
    prefix = paired_prefix(project, torch_version) if torch_version else None
    best = choose(cands, constraint, prereleases=prereleases, prefix=prefix)
    if best is None and prefix is not None:
        best = choose(cands, constraint, prereleases=prereleases)  # table unknown for this release
    if best is None:
        return None
    return Pin(project, str(best))


def no_pin_reason(links: list[Link], project: str, accelerator: str, python: str, platform: str,
                  constraint: str | None = None) -> str | None:
    """Why :func:`pin` found nothing, when the links say more than "no wheel": the builds of
    ``project`` for this platform are all for other Pythons ("needs Python >=3.10"), or all for
    other accelerators (the CUDA builds of the public index, when the PyTorch index is
    missing). None when neither is the case. Pure."""
    wheels: list[tuple[WheelFile, Link]] = []
    for link in links:
        if link.yanked is not None or not link.filename.endswith(".whl"):
            continue
        try:
            w = parse_wheel(link.url)
        except ParseError:
            continue
        if w.name == project:
            wheels.append((w, link))
    if not wheels:
        return None
    try:
        spec = SpecifierSet(constraint or "")
    except InvalidSpecifier:
        spec = SpecifierSet()
    other_python = [(w, lk) for w, lk in wheels
                    if any(matches_target(w, accelerator, py, platform) for py in w.pythons if "." in py)
                    and spec.contains(Version(w.version).public, prereleases=True)]
    if other_python:
        w, lk = max(other_python, key=lambda wl: Version(wl[0].version))
        public = Version(w.version).public
        pys = sorted({py for v, _ in other_python if Version(v.version).public == public for py in v.pythons
                      if "." in py}, key=lambda p: tuple(int(x) for x in p.split(".")))
        needs = lk.requires_python or (f"{pys[0]} to {pys[-1]}" if len(pys) > 1 else pys[0])
        return (f"{project} {public} needs Python {needs} (its {accelerator} wheels for {platform} are for "
                f"Python {', '.join(pys)}); this target is Python {python}")
    other_acc = sorted({wheel_accelerator(w) or "unlabelled (CUDA)" for w, _ in wheels
                        if _fits_but_accelerator(w, python, platform) and wheel_accelerator(w) != accelerator})
    if other_acc:
        regional = ", ".join(name for name in UPSTREAM_PRESETS if name != OFFICIAL.name)
        return (f"the {project} wheels found for Python {python}, {platform} are {', '.join(other_acc)} builds, "
                f"none {accelerator}: add the PyTorch index to upstreams ({OFFICIAL.name}, or a regional preset: "
                f"{regional})")
    return None


def _fits_but_accelerator(w: WheelFile, python: str, platform: str) -> bool:
    """Python and platform fit; the accelerator is not stated (the public index's Linux torch)."""
    cp = "cp" + python.replace(".", "")
    if cp not in w.python_tags and not any(t in ("py3", "py2.py3") for t in w.python_tags):
        return False
    return w.platform.os in ("any", platform.split("-", 1)[0])
