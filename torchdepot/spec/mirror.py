"""The mirror spec (``mirror/mirror.yaml``): what to mirror, as ONE typed, validated value.

:func:`load_spec` reads a bounded YAML file (:mod:`torchdepot.spec.bounds`) and :func:`parse_spec`
turns the mapping into a frozen :class:`MirrorSpec`, the ``conda:`` section included, so a bad
spec fails before anything is written. Every error is one line naming the file and the key
(``mirror/mirror.yaml: accelerators[1]: 'cu11' is not an accelerator``). :meth:`MirrorSpec.to_data`
is the inverse (stored in manifest.json); ``parse_spec(s.to_data()) == s``. :func:`with_overrides`
replaces fields from the command line, validating only the changed ones with the same checks.

Keys (all optional):

``packages``        torch [+ torchvision, torchaudio], each with an optional PEP 440 constraint.
``extra_packages``  other requirements mirrored with torch's closure (default: numpy).
``accelerators``    cpu, cuXYZ, rocmX.Y, xpu (default: cpu), or ``current``: every accelerator upstream
                    ships for the selected torch (expanded by each sync; see model.release_matrix).
``pythons``         "3.11" ... or host (default: host), or ``current``. ``platforms``: linux-x86_64 ... or host.
``targets``         extra {accelerator, python, platform[, torch]} targets (tools/fetch adds these).
``channel``         :class:`Channel`: stable | test | nightly | variant | test/variant.
``upstreams``       PyTorch index bases in failover order: URLs, or preset names from
                    :data:`torchdepot.model.presets.UPSTREAM_PRESETS` (``ustc``, ``official`` ...),
                    which become their base (``preset_for(base)`` gives the layout back).
``out``             the mirror directory (relative: from the current directory).
``on_hash_mismatch`` :class:`HashPolicy`: fail | warn. ``jobs``: 1..64 parallel downloads.
``fsync``           fsync every file before publishing it.
``keep``            retention: the newest N torch versions per target (default: keep all).
``allow_hosts``     host names (or ``host:port``, that port only) the mirror may download from
                    beyond the default host policy.
``exclude_newer``   a UTC time or date (``2026-06-01T00:00:00Z``): files uploaded later are ignored.
``connections``     the downloader's cap on sockets open at once, all hosts together (1..256), and
``connections_per_host`` its cap per host (1..64); absent: the downloader's defaults
                    (``torchdepot.fetch.engine.DEFAULT_CONNECTIONS`` / ``_PER_HOST``).
``conda``           the conda section, see :mod:`torchdepot.spec.conda`.

A regional operator's mirror (``sync/regional.py``): ``releases: "torch>=2.0"`` mirrors every torch
release that matches (with torchvision / torchaudio paired by release, each file's dependencies
from the same per-accelerator index, and ``extra_packages``), instead of one torch per target;
``accelerators`` / ``pythons`` / ``platforms`` may then be ``[all]`` (every one upstream ships for
those releases), ``max_files`` (default 100,000) and ``max_bytes`` (a number or ``"2 TB"``; default
10 TB) bound it. ``targets``, ``keep``, ``conda`` and ``current`` do not apply there and are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from torchdepot.errors import ParseError, SpecError, one_line
from torchdepot.model.accel import parse_accelerator
from torchdepot.model.platforms import host_platform, target_platform
from torchdepot.model.presets import UPSTREAM_PRESETS
from torchdepot.model.release_matrix import CURRENT, follow
from torchdepot.model.strenum import StrEnum
from torchdepot.model.targets import target_id
from torchdepot.spec.bounds import decode_text, load_yaml, quote_key, read_bounded, show
from torchdepot.spec.conda import CondaConfig, PipSide, parse_conda_section

__all__ = ["Channel", "HashPolicy", "MirrorSpec", "PackageSpec", "PipTarget", "load_spec", "parse_spec",
           "quote_key", "with_overrides"]

_T = TypeVar("_T")


class Channel(StrEnum):
    """Which PyTorch index tree: ``<upstream>/<prefix><variant>/``."""
    STABLE = "stable"
    TEST = "test"
    NIGHTLY = "nightly"
    VARIANT = "variant"  # PEP 817/825 variant wheels (issue 16)
    TEST_VARIANT = "test/variant"

    @property
    def prerelease(self) -> bool:
        return self is not Channel.STABLE and self is not Channel.VARIANT


class HashPolicy(StrEnum):
    """What to do when upstream's sha256 disagrees with the bytes."""
    FAIL = "fail"
    WARN = "warn"


TORCH_PROJECTS = ("torch", "torchvision", "torchaudio")
CHANNELS = tuple(c.value for c in Channel)
POLICIES = tuple(p.value for p in HashPolicy)
DEFAULT_UPSTREAM = UPSTREAM_PRESETS["official"].base
DEFAULT_OUT = "mirror/out"
MAX_KEEP = 1000
KNOWN_KEYS = frozenset({
    "packages", "extra_packages", "accelerators", "pythons", "platforms", "channel", "out",
    "upstreams", "on_hash_mismatch", "jobs", "conda", "targets", "fsync", "keep", "allow_hosts",
    "exclude_newer", "connections", "connections_per_host", "releases", "max_files", "max_bytes",
})
ALL = "all"  # the spec word for "every one upstream ships" (releases: only)
DEFAULT_MAX_FILES = 100_000
DEFAULT_MAX_BYTES = 10 * 10**12
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?b)?", re.IGNORECASE)
_PYTHON = re.compile(r"3\.(\d{1,2})")
_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_URL = re.compile(r"^(https?|file)://")


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

    def to_data(self) -> dict[str, object]:
        return {"accelerator": self.accelerator, "python": self.python, "platform": self.platform,
                **({"torch": self.torch} if self.torch else {})}


@dataclass(frozen=True)
class MirrorSpec:
    packages: tuple[PackageSpec, ...] = (PackageSpec("torch"),)
    extra_packages: tuple[str, ...] = ("numpy",)
    accelerators: tuple[str, ...] = ("cpu",)
    pythons: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    channel: Channel = Channel.STABLE
    out: Path = Path(DEFAULT_OUT)
    upstreams: tuple[str, ...] = (DEFAULT_UPSTREAM,)
    on_hash_mismatch: HashPolicy = HashPolicy.FAIL
    jobs: int = 4
    fsync: bool = False  # fsync each file before publishing it (power-loss durability; slower)
    # The validated conda section. Hand-built specs (tests) may still pass the raw mapping;
    # parse_spec always stores a CondaConfig.
    conda: CondaConfig | None = None
    extra_targets: tuple[PipTarget, ...] = ()  # `targets:` entries beyond the product (tools/fetch)
    keep: int | None = None  # newest N torch versions per target; None keeps all
    allow_hosts: tuple[str, ...] = ()  # extra download hosts beyond the default host policy
    exclude_newer: dt.datetime | None = None  # UTC; files uploaded after it are ignored
    connections: int | None = None  # downloader socket caps; None: the downloader's defaults
    connections_per_host: int | None = None
    # `accelerators: [current]` / `pythons: [current]`: which lists follow upstream's release
    # matrix; a sync expands them (sync.follow) into matrix_cells before asking for targets.
    follow: frozenset[str] = frozenset()
    matrix_cells: frozenset[tuple[str, str, str]] | None = None  # (accelerator, python, platform)
    # `releases: "torch>=2.0"`: a regional operator's mirror (sync/regional.py) of every matching
    # release; `every` names the lists given as [all] (their tuples are then empty)
    releases: str | None = None
    every: frozenset[str] = frozenset()
    max_files: int | None = None
    max_bytes: int | None = None

    def targets(self) -> list[PipTarget]:
        """accelerators x pythons x platforms, then extra targets; one per id. A list that
        follows upstream (``current``) takes the expanded matrix's values per platform."""
        if self.follow:
            out = self._followed_targets()
        else:
            out = {
                target_id(a, py, plat): PipTarget(a, py, plat, target_id(a, py, plat))
                for a, py, plat in itertools.product(self.accelerators, self.pythons, self.platforms)
            }
        for t in self.extra_targets:
            out[t.id] = t
        return list(out.values())

    def _followed_targets(self) -> dict[str, PipTarget]:
        if self.matrix_cells is None:
            raise SpecError("spec: 'current' must be expanded from upstream's release matrix by a sync first")
        cells = self.matrix_cells
        out: dict[str, PipTarget] = {}
        for plat in self.platforms:
            accs = follow(self.accelerators, "accelerators" in self.follow, cells, "accelerators", plat)
            pys = follow(self.pythons, "pythons" in self.follow, cells, "pythons", plat)
            for a, py in itertools.product(accs, pys):
                both_follow = a not in self.accelerators and py not in self.pythons
                if both_follow and (a, py, plat) not in cells:
                    continue  # a cell upstream does not ship (cu126 has no 3.14 build, say)
                if not _possible(a, plat):
                    continue
                out[target_id(a, py, plat)] = PipTarget(a, py, plat, target_id(a, py, plat))
        return out

    def package(self, name: str) -> PackageSpec | None:
        return next((p for p in self.packages if p.name == name), None)

    def to_data(self) -> dict[str, object]:
        """The spec as plain YAML/JSON data (manifest.json's ``spec``); parses back to an equal spec.

        Keys added after the first release appear only when set, so manifests of specs that
        do not use them stay byte-identical.
        """
        data: dict[str, object] = {
            "packages": [p.name + (p.constraint or "") for p in self.packages],
            "extra_packages": list(self.extra_packages),
            "accelerators": [CURRENT] * ("accelerators" in self.follow) + [ALL] * ("accelerators" in self.every)
            + list(self.accelerators),
            "pythons": [CURRENT] * ("pythons" in self.follow) + [ALL] * ("pythons" in self.every) + list(self.pythons),
            "platforms": [ALL] * ("platforms" in self.every) + list(self.platforms),
            "channel": str(self.channel),
            "out": str(self.out),
            "upstreams": list(self.upstreams),
            "on_hash_mismatch": str(self.on_hash_mismatch),
            "jobs": self.jobs,
        }
        if self.fsync:
            data["fsync"] = True
        if self.conda is not None:
            data["conda"] = self.conda.to_data() if isinstance(self.conda, CondaConfig) else dict(self.conda)
        if self.extra_targets:
            data["targets"] = [t.to_data() for t in self.extra_targets]
        if self.keep is not None:
            data["keep"] = self.keep
        if self.allow_hosts:
            data["allow_hosts"] = list(self.allow_hosts)
        if self.exclude_newer is not None:
            data["exclude_newer"] = format_utc(self.exclude_newer)
        if self.connections is not None:
            data["connections"] = self.connections
        if self.connections_per_host is not None:
            data["connections_per_host"] = self.connections_per_host
        if self.releases is not None:
            data["releases"] = self.releases
        if self.max_files is not None:
            data["max_files"] = self.max_files
        if self.max_bytes is not None:
            data["max_bytes"] = self.max_bytes
        return data


def format_utc(when: dt.datetime) -> str:
    """``2026-06-01T00:00:00Z``: the form uv's ``--exclude-newer`` and PEP 700 use."""
    # isoformat, not strftime: %Y writes year 1 as "1", which is no ISO date.
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def host_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def load_spec(path: Path | str) -> MirrorSpec:
    """Read and validate a YAML spec (bounded: size, encoding, aliases, depth, number length).

    Relative ``out`` is taken from the current directory. Raises only :class:`SpecError`.
    """
    path = Path(path)
    text = decode_text(read_bounded(path), str(path))
    data = load_yaml(text, str(path))
    if data is None:
        data = {}
    return parse_spec(data, str(path))


# -- one validator per key: (raw value, where) -> typed value ----------------------------------

def _list(value: object, key: str, where: str, default: list[object]) -> list[object]:
    if value is None:
        value = default
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}: {key}: expected a list, got {type(value).__name__}")
    return value


def _dedup(seq: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(seq))


def _constraint(text: str, where: str) -> str:
    """A validated version constraint; a bare version ("2.5.1") means exactly that release."""
    if text[:1].isdigit():
        text = "==" + text
    try:
        SpecifierSet(text)
    except (InvalidSpecifier, ValueError):
        raise SpecError(f"{where}: {show(text)} is not a version constraint") from None
    return text


def _packages(raw: object, where: str) -> tuple[PackageSpec, ...]:
    items: list[tuple[str, str, str | None]] = []  # (key, name, constraint)
    if isinstance(raw, dict):
        for name, constraint in raw.items():
            items.append((f"packages.{quote_key(name)}", str(name),
                          None if constraint in (None, "", "*") else str(constraint)))
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
                except (InvalidRequirement, ValueError) as exc:
                    raise SpecError(f"{where}: {key}: {show(entry)} is not a requirement ({one_line(exc)})") from None
                if req.url or req.extras or req.marker:
                    raise SpecError(f"{where}: {key}: {show(entry)}: only a name and a version constraint are allowed")
                items.append((key, req.name, str(req.specifier) or None))
            else:
                raise SpecError(f"{where}: {key}: expected a string like 'torch>=2.5' or a mapping")
    else:
        raise SpecError(f"{where}: packages: expected a list like ['torch>=2.5', 'torchvision']")
    out: dict[str, PackageSpec] = {}
    for key, name, constraint in items:
        canon = canonicalize_name(name)
        if canon not in TORCH_PROJECTS:
            raise SpecError(f"{where}: {key}: {show(name)} is not one of {', '.join(TORCH_PROJECTS)} "
                            "(put other requirements in extra_packages)")
        if constraint is not None:
            constraint = _constraint(constraint, f"{where}: {key}")
        if canon in out:
            raise SpecError(f"{where}: {key}: {canon} listed twice")
        out[canon] = PackageSpec(canon, constraint)
    if "torch" not in out:
        raise SpecError(f"{where}: packages: must include torch")
    return tuple(out[n] for n in TORCH_PROJECTS if n in out)


def _extras(raw: object, where: str) -> tuple[str, ...]:
    extras = []
    for i, entry in enumerate(_list(raw, "extra_packages", where, ["numpy"])):
        try:
            extras.append(str(Requirement(str(entry))))
        except (InvalidRequirement, ValueError) as exc:
            raise SpecError(f"{where}: extra_packages[{i}]: {show(entry)} is not a requirement ({one_line(exc)})") from None
    return _dedup(extras)


def _possible(acc: str, platform: str) -> bool:
    try:
        _check_combination(acc, platform, "")
    except SpecError:
        return False
    return True


def _check_combination(acc: str, platform: str, where: str) -> None:
    kind = parse_accelerator(acc).kind
    os_name = platform.split("-", 1)[0]
    if os_name == "macos" and kind != "cpu":
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (macOS wheels are CPU/MPS only)")
    if kind == "rocm" and platform != "linux-x86_64":
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (ROCm wheels exist for linux-x86_64 only)")
    if kind == "xpu" and platform not in ("linux-x86_64", "windows-amd64"):
        raise SpecError(f"{where}: {acc!r} is impossible on {platform} (XPU wheels: linux-x86_64, windows-amd64)")


def _python(entry: object, where: str) -> str:
    if isinstance(entry, float):  # YAML reads 3.10 as 3.1: insist on quoting
        raise SpecError(f"{where}: write Python versions as strings ('{entry}' reads as the number {entry!r}; quote it)")
    text = str(entry).strip() if isinstance(entry, (str, int)) and not isinstance(entry, bool) else ""
    if text == "host":
        text = host_python()
    m = _PYTHON.fullmatch(text)
    if not m or not (6 <= int(m.group(1)) <= 20):
        raise SpecError(f"{where}: {show(entry)} is not a Python version like '3.11' (or 'host')")
    return text


def _platform(entry: object, where: str) -> str:
    text = str(entry).strip() if isinstance(entry, str) else ""
    if text == "host":
        text = host_platform()
    try:
        return target_platform(text).name
    except (ParseError, ValueError):
        raise SpecError(f"{where}: unknown platform {show(entry)} (linux-x86_64, linux-aarch64, "
                        "windows-amd64, macos-arm64, macos-x86_64 or host)") from None


def _accelerator(entry: object, where: str) -> str:
    text = entry if isinstance(entry, str) else ""
    try:
        acc = parse_accelerator(text) if len(text) <= 40 else None
    except (ParseError, ValueError):  # ValueError: int() of a huge version number
        acc = None
    if acc is None or (acc.kind == "cuda" and acc.version[0] < 7):  # PyTorch's oldest CUDA build: cu75
        raise SpecError(f"{where}: {show(entry)} is not an accelerator (cpu, cuXYZ, rocmX.Y, xpu)") from None
    if acc.flags:
        raise SpecError(f"{where}: {show(entry)} is a frozen legacy variant; name cpu, cuXYZ, rocmX.Y or xpu")
    return acc.name


def _target(entry: object, where: str) -> PipTarget:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: expected a mapping with accelerator, python, platform")
    extra = sorted(str(k) for k in set(entry) - {"accelerator", "python", "platform", "torch"})
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


def _targets(raw: object, where: str) -> tuple[PipTarget, ...]:
    raw = raw or []
    if not isinstance(raw, list):
        raise SpecError(f"{where}: targets: expected a list of {{accelerator, python, platform[, torch]}} mappings")
    return tuple(_target(entry, f"{where}: targets[{i}]") for i, entry in enumerate(raw))


def _channel(raw: object, where: str) -> Channel:
    try:
        return Channel(raw or "stable")
    except (ValueError, TypeError):
        raise SpecError(f"{where}: channel: {show(raw)} is not one of {', '.join(CHANNELS)}") from None


def _upstream(entry: object, where: str) -> str:
    """A URL, or a preset name (``ustc``) -> the preset's base URL."""
    text = entry.strip() if isinstance(entry, str) else ""
    preset = UPSTREAM_PRESETS.get(text.lower())
    if preset is not None:
        return preset.base.rstrip("/")
    text = text.rstrip("/")
    if not _URL.match(text) or any(c.isspace() or ord(c) < 32 for c in text):
        raise SpecError(f"{where}: {show(entry)} is not an http(s):// or file:// URL "
                        f"nor a preset ({', '.join(sorted(UPSTREAM_PRESETS))})")
    return text


def _upstreams(raw: object, where: str) -> tuple[str, ...]:
    out = _dedup(_upstream(e, f"{where}: upstreams[{i}]")
                 for i, e in enumerate(_list(raw, "upstreams", where, [DEFAULT_UPSTREAM])))
    if not out:
        raise SpecError(f"{where}: upstreams: must name at least one PyTorch index base")
    return out


def _policy(raw: object, where: str) -> HashPolicy:
    try:
        return HashPolicy(raw or "fail")
    except (ValueError, TypeError):
        raise SpecError(f"{where}: on_hash_mismatch: {show(raw)} is not one of {', '.join(POLICIES)}") from None


def _jobs(raw: object, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 64:
        raise SpecError(f"{where}: jobs: {show(raw)} is not a whole number from 1 to 64")
    return raw


def _fsync(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        raise SpecError(f"{where}: fsync: {show(raw)} is not true or false")
    return raw


def _out(raw: object, where: str) -> Path:
    """The mirror directory, with a leading ``~`` / ``~user`` expanded here, once: every later
    step (the out-dir check, the writes, the printed ``serve --root``) sees the same path."""
    raw = raw or DEFAULT_OUT
    if isinstance(raw, PurePath):
        raw = str(raw)
    if not isinstance(raw, str) or "\x00" in raw:
        raise SpecError(f"{where}: out: expected a path string")
    path = Path(raw)
    if raw.startswith("~"):  # not "./~/x": Path drops the "./", so ask the text
        with contextlib.suppress(RuntimeError):  # an unknown user, or no home directory: refused below
            path = path.expanduser()
    if path.parts and path.parts[0].startswith("~"):
        # not expandable, or "./~/x", which a shell would read as the home directory
        raise SpecError(f"{where}: out: {raw!r} starts with '~' that names no home directory here; "
                        "write the directory as an absolute path")
    return path


def _count(key: str, top: int, absent: str) -> Callable[[object, str], int | None]:
    """A validator for an optional whole number from 1 to ``top``."""
    def check(raw: object, where: str) -> int | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= top:
            raise SpecError(f"{where}: {key}: {show(raw)} is not a whole number from 1 to {top} ({absent})")
        return raw
    return check


_keep = _count("keep", MAX_KEEP, "leave it out to keep every version")


def _allow_hosts(raw: object, where: str) -> tuple[str, ...]:
    hosts = []
    for i, entry in enumerate(_list(raw, "allow_hosts", where, [])):
        text = entry.strip().lower() if isinstance(entry, str) else ""
        host, colon, port = text.rpartition(":")  # host:port allows that port only (net.hostpolicy)
        if not colon or not (port.isdigit() and 0 < int(port) < 65536):
            host, colon, port = text, "", ""
        host = host.rstrip(".")
        if not _HOST.fullmatch(host):
            raise SpecError(f"{where}: allow_hosts[{i}]: {show(entry)} is not a host name or host:port "
                            "(like mirror.example.org or mirror.example.org:8080)")
        hosts.append(f"{host}:{int(port)}" if colon else host)
    return _dedup(hosts)


def _exclude_newer(raw: object, where: str) -> dt.datetime | None:
    if raw is None:
        return None
    when: dt.datetime | None = None
    if isinstance(raw, dt.datetime):
        when = raw
    elif isinstance(raw, dt.date):
        when = dt.datetime(raw.year, raw.month, raw.day, tzinfo=dt.timezone.utc)
    elif isinstance(raw, str) and len(raw) <= 40:
        try:
            text = raw.strip()  # Python 3.10's fromisoformat does not read a trailing Z
            when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            when = None
        if when is not None and len(raw.strip()) == 10:  # a bare date: midnight UTC
            when = when.replace(tzinfo=dt.timezone.utc)
    if when is None:
        raise SpecError(f"{where}: exclude_newer: {show(raw)} is not a date or time like 2026-06-01T00:00:00Z")
    if when.tzinfo is None:
        raise SpecError(f"{where}: exclude_newer: {show(raw)} has no time zone; add Z for UTC")
    try:
        return when.astimezone(dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is a time before year 1 in UTC
        shown = repr(raw.isoformat()) if isinstance(raw, dt.datetime) else show(raw)
        raise SpecError(f"{where}: exclude_newer: {shown} is out of range in UTC "
                        "(years 1 to 9999)") from None


def _releases(raw: object, where: str) -> str | None:
    """``"torch>=2.0"`` or ``">=2.0"`` -> the constraint on torch's public version."""
    if raw is None:
        return None
    text = raw.strip() if isinstance(raw, str) else ""
    if text[:1].isalpha():  # a requirement: torch's own only
        try:
            req = Requirement(text)
        except (InvalidRequirement, ValueError):
            req = None
        if req is None or req.name.lower() != "torch" or req.url or req.extras or req.marker:
            raise SpecError(f"{where}: releases: {show(raw)} is not a torch version constraint like 'torch>=2.0'")
        text = str(req.specifier)
    if not text:
        raise SpecError(f"{where}: releases: {show(raw)} is not a torch version constraint like 'torch>=2.0' "
                        "(write 'torch>=0' for every release)")
    return _constraint(text, f"{where}: releases")


def _max_bytes(raw: object, where: str) -> int | None:
    """A byte count: a whole number, or ``"500 GB"`` (SI units, as sizes are printed)."""
    if raw is None:
        return None
    m = _BYTES.fullmatch(raw.strip()) if isinstance(raw, str) and len(raw) <= 40 else None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif m is not None:
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])
    else:
        raise SpecError(f"{where}: max_bytes: {show(raw)} is not a byte count like 500000000000 or '500 GB'")
    if value < 1:
        raise SpecError(f"{where}: max_bytes: {show(raw)} must be at least 1 byte")
    return value


# key -> (MirrorSpec field, validator); the conda section and the target product are cross-key.
# Each validator returns its own field's type, so the table's value type is Any (MirrorSpec's
# constructor checks nothing at run time; the validators are the checks).
_FIELDS: dict[str, tuple[str, Callable[[object, str], Any]]] = {
    "packages": ("packages", lambda raw, where: _packages(["torch"] if raw is None else raw, where)),
    "extra_packages": ("extra_packages", _extras),
    "channel": ("channel", _channel),
    "out": ("out", _out),
    "upstreams": ("upstreams", _upstreams),
    "on_hash_mismatch": ("on_hash_mismatch", _policy),
    "jobs": ("jobs", lambda raw, where: _jobs(4 if raw is None else raw, where)),
    "fsync": ("fsync", lambda raw, where: _fsync(False if raw is None else raw, where)),
    "targets": ("extra_targets", _targets),
    "keep": ("keep", _keep),
    "allow_hosts": ("allow_hosts", _allow_hosts),
    "exclude_newer": ("exclude_newer", _exclude_newer),
    "connections": ("connections", _count("connections", 256, "leave it out for the downloader's default")),
    "connections_per_host": ("connections_per_host",
                             _count("connections_per_host", 64, "leave it out for the downloader's default")),
    "releases": ("releases", _releases),
    "max_files": ("max_files", _count("max_files", 10_000_000, f"leave it out for {DEFAULT_MAX_FILES:,}")),
    "max_bytes": ("max_bytes", _max_bytes),
}


def parse_spec(data: object, where: str = "mirror spec") -> MirrorSpec:
    """Validate a spec mapping (as YAML gives it) into a :class:`MirrorSpec`; SpecError otherwise."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise SpecError(f"{where}: {quote_key(unknown[0])}: unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")
    fields = {field: check(data.get(key), where) for key, (field, check) in _FIELDS.items()}

    raw_accs = _list(data.get("accelerators"), "accelerators", where, ["cpu"])
    raw_pys = _list(data.get("pythons"), "pythons", where, ["host"])
    raw_plats = _list(data.get("platforms"), "platforms", where, ["host"])
    follows = frozenset(key for key, raw in (("accelerators", raw_accs), ("pythons", raw_pys)) if CURRENT in raw)
    every = _every(data, {"accelerators": raw_accs, "pythons": raw_pys, "platforms": raw_plats}, follows, where)
    accs = _dedup(_accelerator(e, f"{where}: accelerators[{i}]")
                  for i, e in enumerate(raw_accs) if e not in (CURRENT, ALL))
    if not accs and not {"accelerators"} & (follows | every):
        raise SpecError(f"{where}: accelerators: must name at least one")
    pythons = _dedup(_python(e, f"{where}: pythons[{i}]") for i, e in enumerate(raw_pys) if e not in (CURRENT, ALL))
    if not pythons and not {"pythons"} & (follows | every):
        raise SpecError(f"{where}: pythons: must name at least one")
    platforms = _dedup(_platform(e, f"{where}: platforms[{i}]") for i, e in enumerate(raw_plats) if e != ALL)
    if not platforms and "platforms" not in every:
        raise SpecError(f"{where}: platforms: must name at least one")
    for acc in accs:
        for plat in platforms:
            _check_combination(acc, plat, f"{where}: accelerators")

    spec = MirrorSpec(accelerators=accs, pythons=pythons, platforms=platforms, follow=follows, every=every, **fields)
    if spec.connections and spec.connections_per_host and spec.connections_per_host > spec.connections:
        raise SpecError(f"{where}: connections_per_host: {spec.connections_per_host} is more than "
                        f"connections ({spec.connections})")
    conda = data.get("conda")
    if conda is None:
        return spec
    if not isinstance(conda, dict):
        raise SpecError(f"{where}: conda: expected a mapping (or leave it out)")
    try:
        config = parse_conda_section(conda, pip_side(spec))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return dataclasses.replace(spec, conda=config)


def _every(data: dict[Any, Any], lists: dict[str, list[object]], follows: frozenset[str],
           where: str) -> frozenset[str]:
    """Which lists say ``all``; ``all`` and the keys a regional mirror has no use for are
    refused in the spec that does not (or does) set ``releases``."""
    every = frozenset(key for key, raw in lists.items() if ALL in raw)
    if data.get("releases") is None:
        if every:
            key = sorted(every)[0]
            raise SpecError(f"{where}: {key}: 'all' needs releases: (a regional mirror, e.g. releases: 'torch>=2.0'); "
                            "name the values, or use 'current' for upstream's newest release")
        for key in ("max_files", "max_bytes"):
            if data.get(key) is not None:
                raise SpecError(f"{where}: {key}: applies only to a regional mirror (releases:)")
        return every
    for key in ("targets", "keep", "conda"):
        if data.get(key):
            raise SpecError(f"{where}: {key}: does not apply to a regional mirror (releases: mirrors every matching "
                            "release as upstream lists it); leave it out")
    if follows:
        raise SpecError(f"{where}: {sorted(follows)[0]}: 'current' does not apply with releases:; write 'all' or name them")
    return every


def pip_side(spec: MirrorSpec) -> PipSide:
    """The fields of ``spec`` the conda section is validated against."""
    return PipSide(packages=tuple((p.name, p.constraint) for p in spec.packages),
                   extra_packages=tuple(spec.extra_packages), accelerators=tuple(spec.accelerators),
                   pythons=tuple(spec.pythons), platforms=tuple(spec.platforms))


def with_overrides(spec: MirrorSpec, **changes: object) -> MirrorSpec:
    """A copy of ``spec`` with keys replaced from the command line (``None`` = not given).

    Each value is validated by its key's own check (``jobs=0`` fails as the spec would);
    ``targets`` replaces the extra targets and is given as spec data (tools/fetch).
    """
    unknown = sorted(k for k in changes if k not in _FIELDS)
    if unknown:
        raise TypeError(f"with_overrides: not an overridable key: {unknown[0]}")
    replaced: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        field, check = _FIELDS[key]
        replaced[field] = check(value, "command line")
    return dataclasses.replace(spec, **replaced) if replaced else spec
