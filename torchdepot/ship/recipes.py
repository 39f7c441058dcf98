"""Build the recipes shipped in ``recipes_data/`` offline with py-rattler-build, into a local channel.

The recipes are package data (``torchdepot/ship/recipes_data/<name>/recipe.yaml``), so this
works from an installed torchdepot, not only a checkout. py-rattler-build is the optional
extra ``torchdepot[conda-build]``: :func:`require_rattler_build` says so in one line.

A repackaged wheel depends on ``python`` matching its cp tag (``>=3.11,<3.12.0a0``) and on
its Requires-Dist (markers evaluated for the subdir and Python) under conda-forge names
(:mod:`torchdepot.ship.conda_names`); repackaged wheels get those names too, so a channel
built from torch and its dependency wheels is self-consistent.

Each ``recipes_data/<name>/recipe.yaml`` is rendered by rattler-build's own renderer
(``Stage0Recipe.render``: jinja, ``if:`` selectors, match-spec validation); the files are
staged here (a wheel is unpacked the way ``pip install --no-deps`` lays it out) and
``rattler_build.assemble_package(..., timestamp=FIXED)`` writes the ``.conda``. Same
inputs -> same bytes. The channel is then indexed with ``rattler.index.index_fs``.
"""

from __future__ import annotations

import asyncio
import email.parser
import importlib.util
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

from torchdepot.errors import ParseError, TorchdepotError, UnsafePathError, one_line
from torchdepot.model.platforms import target_platform
from torchdepot.model.wheelname import parse_wheel
from torchdepot.ship.conda_names import CondaNames, load_conda_names
from torchdepot.spec.conda import pip_constraint_to_conda
from torchdepot.store.fsutil import safe_join

RECIPES_DIR = Path(__file__).resolve().parent / "recipes_data"
INSTALL_HINT = "pip install 'torchdepot[conda-build]'"
# Fixed build time: packages carry no wall-clock time, so rebuilding is byte-identical.
FIXED_TIMESTAMP = datetime(2024, 1, 1, tzinfo=timezone.utc)
DEFAULT_CUDA = ("11.8", "12.6", "12.8")
METAPACKAGES = ("pytorch-mutex", "cpuonly", "pytorch-cuda")


class RecipeError(TorchdepotError):
    """A recipe or wheel that cannot be built; the message names it."""


def require_rattler_build() -> None:
    """Raise a one-line :class:`RecipeError` when the optional py-rattler-build is missing."""
    if importlib.util.find_spec("rattler_build") is None:
        raise RecipeError(f"recipes build needs py-rattler-build, an optional extra: {INSTALL_HINT}")


@dataclass(frozen=True)
class BuiltPackage:
    path: Path
    name: str
    version: str
    build: str
    subdir: str


def render(recipe: str, context: dict, target: str, recipes_dir: Path = RECIPES_DIR):
    """Render ``recipes_data/<recipe>/recipe.yaml`` for one context -> Stage1 recipe."""
    require_rattler_build()
    import rattler_build as rb
    from rattler_build.render import PlatformConfig

    path = recipes_dir / recipe / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe")
    try:
        stage0 = rb.Stage0Recipe.from_file(path)
        variants = stage0.render(rb.VariantConfig({}), rb.RenderConfig(
            platform=PlatformConfig(target_platform=target), extra_context=context))
    except Exception as exc:  # rattler_build's PyRattlerBuildError and parse errors
        raise RecipeError(f"{path}: {one_line(exc, 300)}") from None
    if len(variants) != 1:
        raise RecipeError(f"{path}: rendered {len(variants)} variants, expected 1")
    return variants[0].recipe


def _assemble(stage1, subdir: str, out_channel: Path, files_dir: Path | None, extra_depends=(),
              description: str | None = None, compression_level: int = 9, detect_prefix: bool = True) -> BuiltPackage:
    import rattler_build as rb

    req = stage1.requirements.to_dict() if stage1.requirements is not None else {}
    about = stage1.about.to_dict() if stage1.about is not None else {}
    noarch = stage1.build.noarch
    dest = out_channel / ("noarch" if noarch else subdir)
    dest.mkdir(parents=True, exist_ok=True)
    empty = None
    if files_dir is None:
        empty = Path(tempfile.mkdtemp(prefix="td-meta-"))
        files_dir = empty
    try:
        out = rb.assemble_package(
            name=str(stage1.package.name), version=str(stage1.package.version),
            target_platform="noarch" if noarch else subdir, build_string=str(stage1.build.string),
            output_dir=str(dest), files_dir=str(files_dir),
            depends=list(req.get("run", [])) + list(extra_depends),
            constrains=list(req.get("run_constraints", [])),
            build_number=int(stage1.build.number or 0), noarch=noarch or None,
            license=about.get("license"), summary=about.get("summary"), homepage=about.get("homepage"),
            description=description, timestamp=FIXED_TIMESTAMP,
            compression_level=compression_level, detect_prefix=detect_prefix,
        )
    except Exception as exc:
        raise RecipeError(f"{stage1.package.name}: assemble_package failed: {one_line(exc, 300)}") from None
    finally:
        if empty is not None:
            shutil.rmtree(empty, ignore_errors=True)
    return BuiltPackage(Path(out.path), str(stage1.package.name), str(stage1.package.version),
                        str(stage1.build.string), "noarch" if noarch else subdir)


def build_metapackages(out_channel: Path, cuda_versions=DEFAULT_CUDA, recipes_dir: Path = RECIPES_DIR) -> list[BuiltPackage]:
    """pytorch-mutex (cpu, cuda), cpuonly, pytorch-cuda per CUDA version: all noarch."""
    built = []
    for variant in ("cpu", "cuda"):
        built.append(_assemble(render("pytorch-mutex", {"variant": variant}, "noarch", recipes_dir), "noarch", out_channel, None))
    built.append(_assemble(render("cpuonly", {}, "noarch", recipes_dir), "noarch", out_channel, None))
    for cv in cuda_versions:
        built.append(_assemble(render("pytorch-cuda", {"cuda_version": cv}, "noarch", recipes_dir), "noarch", out_channel, None))
    return built


# -- wheels -------------------------------------------------------------------------------

def _site_packages(subdir: str, python: str) -> str:
    return "Lib/site-packages" if subdir.startswith("win-") else f"lib/python{python}/site-packages"


def _unpack_wheel(wheel: Path, stage: Path, subdir: str, python: str) -> None:
    """Lay a wheel out as installed: purelib/platlib -> site-packages, scripts, data, headers."""
    site = _site_packages(subdir, python)
    scripts = "Scripts" if subdir.startswith("win-") else "bin"
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                parts = PurePosixPath(info.filename).parts
                if len(parts) > 2 and parts[0].endswith(".data"):
                    kind, rest = parts[1], "/".join(parts[2:])
                    base = {"purelib": site, "platlib": site, "scripts": scripts, "data": "",
                            "headers": "include"}.get(kind)
                    if base is None:
                        continue
                    rel = f"{base}/{rest}" if base else rest
                else:
                    rel = f"{site}/{info.filename}"
                target = safe_join(stage, rel)  # a wheel member must not escape the prefix
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                if (info.external_attr >> 16) & 0o111:
                    target.chmod(0o755)
    except (zipfile.BadZipFile, UnsafePathError) as exc:
        raise RecipeError(f"{wheel}: not a usable wheel ({exc})") from None


def _metadata(wheel: Path) -> email.message.Message:
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            return email.parser.Parser().parsestr(zf.read(name).decode("utf-8", "replace"))
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise RecipeError(f"{wheel}: no readable METADATA ({exc or 'missing'})") from None


def _marker_env(subdir: str, python: str) -> dict:
    env = dict(default_environment())
    os_ = subdir.split("-", 1)[0]
    env.update(python_version=python, python_full_version=f"{python}.0", implementation_name="cpython",
               platform_python_implementation="CPython",
               sys_platform={"linux": "linux", "win": "win32", "osx": "darwin"}.get(os_, os_),
               platform_system={"linux": "Linux", "win": "Windows", "osx": "Darwin"}.get(os_, os_),
               os_name="nt" if os_ == "win" else "posix",
               platform_machine={"linux-64": "x86_64", "linux-aarch64": "aarch64", "win-64": "AMD64",
                                 "osx-arm64": "arm64", "osx-64": "x86_64"}.get(subdir, ""))
    return env


def python_pin(python: str) -> str:
    """``3.11`` -> ``python >=3.11,<3.12.0a0`` (conda-forge's pin for one minor version)."""
    major, minor = python.split(".")[:2]
    return f"python >={major}.{minor},<{major}.{int(minor) + 1}.0a0"


def wheel_depends(wheel: Path, subdir: str, python: str, names: CondaNames) -> tuple[list[str], list[str]]:
    """Requires-Dist -> (conda run requirements under conda-forge names, requirement strings
    that are not valid PEP 508 and were left out). Extras-only requirements are skipped."""
    env = _marker_env(subdir, python)
    deps, omitted = [], []
    for text in _metadata(wheel).get_all("Requires-Dist") or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            omitted.append(text)
            continue
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        try:
            ver = pip_constraint_to_conda(str(req.specifier))
        except ParseError:
            omitted.append(text)
            continue
        deps.append(f"{names.conda_name(req.name)} {ver}".strip())
    return list(dict.fromkeys(deps)), omitted


@dataclass(frozen=True)
class WheelPlan:
    wheel: Path
    conda_name: str
    version: str
    subdir: str
    python: str
    context: dict
    recipe: str


def plan_wheels(wheels: list[Path], python: str | None = None, subdirs: tuple[str, ...] = (),
                names: CondaNames | None = None) -> list[WheelPlan]:
    """Decide what each wheel becomes. Platform wheels fix their own subdir and Python;
    pure wheels are built for every (subdir, python) of the platform wheels (or the given ones)."""
    names = names or load_conda_names()
    parsed = []
    for w in wheels:
        try:
            parsed.append((Path(w), parse_wheel(Path(w).name)))
        except ParseError as exc:
            raise RecipeError(f"{w}: {exc}") from None
    plat_pairs = []
    for path, wf in parsed:
        if wf.platform.os != "any":
            try:
                sd = target_platform(wf.platform.name).conda_subdir
            except ParseError as exc:
                raise RecipeError(f"{path}: {exc}") from None
            py = next((p for p in wf.pythons if "." in p), None)
            if py is None:
                raise RecipeError(f"{path}: cannot tell its Python version from tags {wf.python_tags}")
            plat_pairs.append((sd, py))
    pairs = list(dict.fromkeys(plat_pairs)) or [(sd, python or "3.11") for sd in (subdirs or ("linux-64",))]
    if python:
        pairs = [(sd, python) for sd, _ in pairs]
    plans = []
    for path, wf in parsed:
        name = names.conda_name(wf.name)
        if wf.platform.os != "any":
            sd = target_platform(wf.platform.name).conda_subdir
            py = next(p for p in wf.pythons if "." in p)
            targets = [(sd, py)]
        else:
            targets = list(dict.fromkeys(pairs))
        for sd, py in targets:
            glibc = ".".join(map(str, wf.platform.glibc)) if wf.platform.glibc else ""
            major, minor = py.split(".")[:2]
            ctx = {"name": name, "version": wf.public_version, "python": py, "py": py.replace(".", ""),
                   "python_next": f"{major}.{int(minor) + 1}",
                   "build_number": 0, "wheel": wf.filename, "glibc": glibc}
            recipe = "wheel"
            if name == "pytorch":
                acc = wf.accelerator
                if acc is None:
                    raise RecipeError(f"{path}: the wheel states no accelerator (+cpu, +cu126, ...); refusing to guess")
                ctx.update(accel=acc.name.replace("cu", "cuda", 1) if acc.kind == "cuda" else acc.name,
                           cuda_version=acc.cuda_version or "")
                recipe = "pytorch"
            plans.append(WheelPlan(path, name, wf.public_version, sd, py, ctx, recipe))
    return plans


def build_wheels(wheels: list[Path], out_channel: Path, *, python: str | None = None, subdirs: tuple[str, ...] = (),
                 compression_level: int = 3, recipes_dir: Path = RECIPES_DIR,
                 on_start: Callable[[int, int, WheelPlan], None] | None = None) -> list[BuiltPackage]:
    """Repackage each wheel as planned; ``on_start(i, n, plan)`` before each package (progress)."""
    require_rattler_build()
    names = load_conda_names()
    plans = plan_wheels(wheels, python, subdirs, names)
    built = []
    for i, plan in enumerate(plans, 1):
        if on_start is not None:
            on_start(i, len(plans), plan)
        stage1 = render(plan.recipe, plan.context, plan.subdir, recipes_dir)
        deps, omitted = wheel_depends(plan.wheel, plan.subdir, plan.python, names)
        desc = f"Repackaged from {plan.wheel.name} by torchdepot."
        if omitted:
            desc += " Requirements that are not valid PEP 508 (left out): " + "; ".join(omitted)
        with tempfile.TemporaryDirectory(prefix="td-wheel-") as tmp:
            _unpack_wheel(plan.wheel, Path(tmp), plan.subdir, plan.python)
            built.append(_assemble(stage1, plan.subdir, out_channel, Path(tmp), deps, desc,
                                   compression_level=compression_level, detect_prefix=False))
    return built


def index_channel(channel: Path) -> None:
    """Write repodata.json for every subdir (noarch always) with rattler's indexer."""
    from rattler.index import index_fs

    channel = Path(channel)
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(index_fs(channel, write_zst=True, write_shards=False, force=True))
    except Exception as exc:
        raise RecipeError(f"{channel}: indexing failed: {one_line(exc, 300)}") from None
