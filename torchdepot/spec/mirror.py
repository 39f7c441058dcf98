"""The mirror spec (``mirror/mirror.yaml``): what to mirror, validated with one-line errors.

Pure: a dict in, a frozen :class:`MirrorSpec` out. Every error names the file and the
key (``mirror/mirror.yaml: accelerators[1]: 'cu11' is not an accelerator``).
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from torchdepot.model.accel import parse_accelerator
from torchdepot.errors import ParseError, SpecError
from torchdepot.model.targets import target_id
from torchdepot.model.platforms import host_platform, target_platform

TORCH_PROJECTS = ("torch", "torchvision", "torchaudio")
CHANNELS = ("stable", "test", "nightly")
POLICIES = ("fail", "warn")
DEFAULT_UPSTREAM = "https://download.pytorch.org/whl"
DEFAULT_OUT = "mirror/out"
KNOWN_KEYS = frozenset({
    "packages", "extra_packages", "accelerators", "pythons", "platforms", "channel", "out",
    "upstreams", "on_hash_mismatch", "jobs", "conda", "targets", "fsync",
})
_PYTHON = re.compile(r"3\.(\d{1,2})")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def quote_key(name: object) -> str:
    """A YAML key as it should appear in a one-line error: plain keys bare, odd ones quoted."""
    text = str(name)
    return text if _PLAIN_KEY.fullmatch(text) else repr(text)


@dataclass(frozen=True)
class PackageSpec:
    name: str  # canonical: torch | torchvision | torchaudio
    constraint: str | None = None  # PEP 440 specifier set, e.g. ">=2.5"


@dataclass(frozen=True)
class PipTarget:
    accelerator: str
    python: str
    platform: str
    id: str
    torch: str | None = None  # per-target torch constraint (tools/fetch --torch); None: the spec's


@dataclass(frozen=True)
class MirrorSpec:
    packages: tuple[PackageSpec, ...] = (PackageSpec("torch"),)
    extra_packages: tuple[str, ...] = ("numpy",)
    accelerators: tuple[str, ...] = ("cpu",)
    pythons: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    channel: str = "stable"
    out: Path = Path(DEFAULT_OUT)
    upstreams: tuple[str, ...] = (DEFAULT_UPSTREAM,)
    on_hash_mismatch: str = "fail"
    jobs: int = 4
    fsync: bool = False  # fsync each file before publishing it (power-loss durability; slower)
    conda: dict | None = None
    raw: dict | None = None
    extra_targets: tuple[PipTarget, ...] = ()  # `targets:` entries beyond the product (tools/fetch)

    def targets(self) -> list[PipTarget]:
        """accelerators x pythons x platforms, then extra targets; one per id."""
        out = {
            target_id(a, py, plat): PipTarget(a, py, plat, target_id(a, py, plat))
            for a, py, plat in itertools.product(self.accelerators, self.pythons, self.platforms)
        }
        for t in self.extra_targets:
            out[t.id] = t
        return list(out.values())

    def package(self, name: str) -> PackageSpec | None:
        return next((p for p in self.packages if p.name == name), None)


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def host_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def load_spec(path: Path | str) -> MirrorSpec:
    """Read and validate a YAML spec. Relative ``out`` is taken from the current directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    return parse_spec(data, str(path))


def _list(data: dict, key: str, where: str, default: list) -> list:
    value = data.get(key, default)
    if value is None:
        value = default
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}: {key}: expected a list, got {type(value).__name__}")
    return value


def _constraint(text: str, where: str) -> str:
    """A validated version constraint; a bare version ("2.5.1") means exactly that release."""
    if text[:1].isdigit():
        text = "==" + text
    try:
        SpecifierSet(text)
    except InvalidSpecifier:
        raise SpecError(f"{where}: {text!r} is not a version constraint") from None
    return text


def _packages(data: dict, where: str) -> tuple[PackageSpec, ...]:
    raw = data.get("packages", ["torch"])
    items: list[tuple[str, str, str | None]] = []  # (key, name, constraint)
    if isinstance(raw, dict):
        for name, constraint in raw.items():
            items.append((f"packages.{quote_key(name)}", str(name), None if constraint in (None, "", "*") else str(constraint)))
    elif isinstance(raw, list):
        for i, entry in enumerate(raw):
            key = f"packages[{i}]"
            if isinstance(entry, dict):
                if "name" not in entry:
                    raise SpecError(f"{where}: {key}: a mapping needs 'name' (and optional 'version')")
                version = entry.get("version")
                items.append((key, str(entry["name"]), None if version in (None, "", "*") else str(version)))
            elif isinstance(entry, str):
                try:
                    req = Requirement(entry)
                except InvalidRequirement as exc:
                    raise SpecError(f"{where}: {key}: {entry!r} is not a requirement ({_first(exc)})") from None
                if req.url or req.extras or req.marker:
                    raise SpecError(f"{where}: {key}: {entry!r}: only a name and a version constraint are allowed")
                items.append((key, req.name, str(req.specifier) or None))
            else:
                raise SpecError(f"{where}: {key}: expected a string like 'torch>=2.5' or a mapping")
    else:
        raise SpecError(f"{where}: packages: expected a list like ['torch>=2.5', 'torchvision']")
    out: dict[str, PackageSpec] = {}
    for key, name, constraint in items:
        canon = canonicalize_name(name)
        if canon not in TORCH_PROJECTS:
            raise SpecError(f"{where}: {key}: {name!r} is not one of {', '.join(TORCH_PROJECTS)} "
                            "(put other requirements in extra_packages)")
        if constraint is not None:
            constraint = _constraint(constraint, f"{where}: {key}")
        if canon in out:
            raise SpecError(f"{where}: {key}: {canon} listed twice")
        out[canon] = PackageSpec(canon, constraint)
    if "torch" not in out:
        raise SpecError(f"{where}: packages: must include torch")
    return tuple(out[n] for n in TORCH_PROJECTS if n in out)


def _check_combination(acc: str, platform: str, where: str) -> None:
    kind = parse_accelerator(acc).kind
    os_name = platform.split("-", 1)[0]
    if os_name == "macos" and kind != "cpu":
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (macOS wheels are CPU/MPS only)")
    if kind == "rocm" and platform != "linux-x86_64":
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (ROCm wheels exist for linux-x86_64 only)")
    if kind == "xpu" and platform not in ("linux-x86_64", "windows-amd64"):
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (XPU wheels: linux-x86_64, windows-amd64)")


def _python(entry, where: str) -> str:
    if isinstance(entry, float):  # YAML reads 3.10 as 3.1: insist on quoting
        raise SpecError(f"{where}: write Python versions as strings ('{entry}' reads as the number {entry!r}; quote it)")
    text = str(entry).strip()
    if text == "host":
        text = host_python()
    m = _PYTHON.fullmatch(text)
    if not m or not (6 <= int(m.group(1)) <= 20):
        raise SpecError(f"{where}: {entry!r} is not a Python version like '3.11' (or 'host')")
    return text


def _platform(entry, where: str) -> str:
    text = str(entry).strip()
    if text == "host":
        text = host_platform()
    try:
        return target_platform(text).name
    except ParseError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _accelerator(entry, where: str) -> str:
    try:
        acc = parse_accelerator(str(entry))
    except ParseError:
        acc = None
    if acc is None or (acc.kind == "cuda" and acc.version[0] < 7):  # PyTorch's oldest CUDA build: cu75
        raise SpecError(f"{where}: {entry!r} is not an accelerator (cpu, cuXYZ, rocmX.Y, xpu)") from None
    if acc.flags:
        raise SpecError(f"{where}: {entry!r} is a frozen legacy variant; name cpu, cuXYZ, rocmX.Y or xpu")
    return acc.name


def _target(entry, where: str) -> PipTarget:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected a mapping with accelerator, python, platform")
    extra = sorted(set(entry) - {"accelerator", "python", "platform", "torch"})
    if extra:
        raise SpecError(f"{where}: {quote_key(extra[0])}: unknown key (known: accelerator, python, platform, torch)")
    acc = _accelerator(entry.get("accelerator", "cpu"), f"{where}.accelerator")
    py = _python(entry.get("python", "host"), f"{where}.python")
    plat = _platform(entry.get("platform", "host"), f"{where}.platform")
    _check_combination(acc, plat, where)
    torch = entry.get("torch")
    if torch is not None:
        torch = _constraint(str(torch), f"{where}.torch")
    return PipTarget(acc, py, plat, target_id(acc, py, plat), torch)


def parse_spec(data: dict, where: str = "mirror spec") -> MirrorSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise SpecError(f"{where}: {quote_key(unknown[0])}: unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    packages = _packages(data, where)

    extras = []
    for i, entry in enumerate(_list(data, "extra_packages", where, ["numpy"])):
        try:
            extras.append(str(Requirement(str(entry))))
        except InvalidRequirement as exc:
            raise SpecError(f"{where}: extra_packages[{i}]: {entry!r} is not a requirement ({_first(exc)})") from None

    accs = [_accelerator(e, f"{where}: accelerators[{i}]")
            for i, e in enumerate(_list(data, "accelerators", where, ["cpu"]))]
    if not accs:
        raise SpecError(f"{where}: accelerators: must name at least one")

    pythons = [_python(e, f"{where}: pythons[{i}]") for i, e in enumerate(_list(data, "pythons", where, ["host"]))]
    if not pythons:
        raise SpecError(f"{where}: pythons: must name at least one")

    platforms = [_platform(e, f"{where}: platforms[{i}]") for i, e in enumerate(_list(data, "platforms", where, ["host"]))]
    if not platforms:
        raise SpecError(f"{where}: platforms: must name at least one")
    for acc in accs:
        for plat in platforms:
            _check_combination(acc, plat, f"{where}: accelerators")

    channel = str(data.get("channel") or "stable")
    if channel not in CHANNELS:
        raise SpecError(f"{where}: channel: {channel!r} is not one of {', '.join(CHANNELS)}")

    upstreams = []
    for i, entry in enumerate(_list(data, "upstreams", where, [DEFAULT_UPSTREAM])):
        text = str(entry).strip().rstrip("/")
        if not re.match(r"^(https?|file)://", text):
            raise SpecError(f"{where}: upstreams[{i}]: {entry!r} is not an http(s):// or file:// URL")
        upstreams.append(text)
    if not upstreams:
        raise SpecError(f"{where}: upstreams: must name at least one PyTorch index base")

    policy = str(data.get("on_hash_mismatch") or "fail")
    if policy not in POLICIES:
        raise SpecError(f"{where}: on_hash_mismatch: {policy!r} is not one of fail, warn")

    jobs = data.get("jobs", 4)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 64:
        raise SpecError(f"{where}: jobs: {jobs!r} is not a whole number from 1 to 64")

    fsync = data.get("fsync", False)
    if not isinstance(fsync, bool):
        raise SpecError(f"{where}: fsync: {fsync!r} is not true or false")

    out = data.get("out") or DEFAULT_OUT
    if not isinstance(out, str):
        raise SpecError(f"{where}: out: expected a path string")

    conda = data.get("conda")
    if conda is not None and not isinstance(conda, dict):
        raise SpecError(f"{where}: conda: expected a mapping (or leave it out)")

    extra_targets: list[PipTarget] = []
    raw_targets = data.get("targets") or []
    if not isinstance(raw_targets, list):
        raise SpecError(f"{where}: targets: expected a list of {{accelerator, python, platform[, torch]}} mappings")
    for i, entry in enumerate(raw_targets):
        extra_targets.append(_target(entry, f"{where}: targets[{i}]"))

    def dedup(seq):
        return tuple(dict.fromkeys(seq))

    raw = {
        "packages": [p.name + (p.constraint or "") for p in packages],
        "extra_packages": list(dedup(extras)),
        "accelerators": list(dedup(accs)),
        "pythons": list(dedup(pythons)),
        "platforms": list(dedup(platforms)),
        "channel": channel,
        "out": out,
        "upstreams": list(dedup(upstreams)),
        "on_hash_mismatch": policy,
        "jobs": jobs,
    }
    if fsync:  # only when set, so existing manifests stay byte-identical
        raw["fsync"] = True
    if conda is not None:
        raw["conda"] = conda
    if extra_targets:
        raw["targets"] = [{"accelerator": t.accelerator, "python": t.python, "platform": t.platform,
                           **({"torch": t.torch} if t.torch else {})} for t in extra_targets]
    return MirrorSpec(
        packages=packages,
        extra_packages=dedup(extras),
        accelerators=dedup(accs),
        pythons=dedup(pythons),
        platforms=dedup(platforms),
        channel=channel,
        out=Path(out),
        upstreams=dedup(upstreams),
        on_hash_mismatch=policy,
        jobs=jobs,
        fsync=fsync,
        conda=conda,
        raw=raw,
        extra_targets=tuple(extra_targets),
    )


def with_overrides(spec: MirrorSpec, **changes) -> MirrorSpec:
    """A copy of ``spec`` with raw keys replaced, re-validated (CLI flags, tools/fetch)."""
    raw = dict(spec.raw or {})
    raw.update({k: v for k, v in changes.items() if v is not None})
    return parse_spec(raw, "command line")
