"""The ``conda:`` section of ``mirror.yaml`` -> :class:`CondaConfig`.

Shape (every key optional except ``channels``)::

    conda:
      channels:
        - name: conda-forge                 # or pytorch, nvidia, or any URL
          mirrors: [https://mirror.example/conda-forge, https://conda.anaconda.org/conda-forge]
        - https://my.host/channels/extra    # a bare URL: name = last path segment
      specs: ["pytorch", "numpy >=1.26"]    # default: from packages + extra_packages
      subdirs: [linux-64]                   # default: from platforms; noarch always

Targets are the pip side's accelerators x pythons x platforms, the platform giving
the conda subdir. Errors are one line naming the key (``conda.channels[0].mirrors[1]``).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from torchdepot.errors import ParseError, SpecError, one_line
from torchdepot.model.accel import Accelerator, parse_accelerator
from torchdepot.model.platforms import subdir_platform, target_platform
from torchdepot.spec.bounds import quote_key, show, show_text

DEFAULT_ORIGIN = "https://conda.anaconda.org"
KNOWN_SUBDIRS = ("linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
# pip project -> conda package, where they differ on the channels PyTorch ships on.
PIP_TO_CONDA = {"torch": "pytorch"}


# The legacy ``pytorch`` channel stopped at 2.5.x (PyTorch's conda builds ended there), before the
# fix for CVE-2025-32434 (torch.load(weights_only=True) can still run code); conda-forge carries
# current PyTorch. It stays an opt-in source; selecting it says so once per sync.
LEGACY_PYTORCH_FROZEN = "2.5.x"
LEGACY_PYTORCH_CVE = "CVE-2025-32434"


@dataclass(frozen=True)
class ChannelSpec:
    name: str  # directory under <out>/conda/
    mirrors: tuple[str, ...]  # base URLs, tried in order

    @property
    def legacy_pytorch(self) -> bool:
        """The (frozen) ``pytorch`` channel, by name or by any mirror's last path segment."""
        return self.name == "pytorch" or any(
            urllib.parse.urlsplit(m).path.rstrip("/").rsplit("/", 1)[-1] == "pytorch" for m in self.mirrors)

    def legacy_notice(self) -> str:
        return (f"conda: channel {self.name!r} is the legacy pytorch channel, frozen at PyTorch "
                f"{LEGACY_PYTORCH_FROZEN}, before the fix for {LEGACY_PYTORCH_CVE} (torch.load with "
                "weights_only=True); current PyTorch for conda is on conda-forge (pytorch, pytorch-gpu)")

    def to_data(self) -> dict[str, object]:
        return {"name": self.name, "mirrors": list(self.mirrors)}


@dataclass(frozen=True)
class CondaTarget:
    accelerator: Accelerator
    python: str  # "3.11"
    platform: str  # "linux-x86_64"
    subdir: str  # "linux-64"

    @property
    def id(self) -> str:
        from torchdepot.model.targets import target_id

        return target_id(self.accelerator.name, self.python, self.platform)


@dataclass(frozen=True)
class CondaConfig:
    channels: tuple[ChannelSpec, ...]
    specs: tuple[str, ...]
    subdirs: tuple[str, ...]  # without noarch
    targets: tuple[CondaTarget, ...]

    @property
    def all_subdirs(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.subdirs) | {"noarch"}))

    def to_data(self) -> dict[str, object]:
        """The section as spec data; parses back (with the same pip side) to an equal config."""
        return {"channels": [c.to_data() for c in self.channels], "specs": list(self.specs),
                "subdirs": list(self.subdirs) or ["noarch"]}


def _err(key: str, msg: str) -> SpecError:
    return SpecError(f"{key}: {msg}")


def _check_url(key: str, url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise _err(key, "must be a URL string")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        raise _err(key, f"{show(url)} is not a URL") from None
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not hostname):
        raise _err(key, f"{show(url)} is not an http(s):// or file:// URL")
    return url.strip().rstrip("/")


def _channel(key: str, item: object) -> ChannelSpec:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise _err(key, "must be a channel name, a URL, or a mapping with name and mirrors")
    unknown = set(item) - {"name", "mirrors"}
    if unknown:
        raise _err(f"{key}.{quote_key(sorted(unknown, key=str)[0])}", "unknown key (expected name, mirrors)")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(f"{key}.name", "must be a non-empty string")
    name = name.strip()
    default_mirror: str
    if "://" in name:
        url = _check_url(f"{key}.name", name)
        path = urllib.parse.urlsplit(url).path.rstrip("/")
        name = path.rsplit("/", 1)[-1] or (urllib.parse.urlsplit(url).hostname or "")
        default_mirror = url
    else:
        default_mirror = f"{DEFAULT_ORIGIN}/{name}"
    if not _CHANNEL_NAME.fullmatch(name) or ".." in name:
        raise _err(f"{key}.name", f"{show(name)} is not a usable channel name (letters, digits, . _ -)")
    mirrors = item.get("mirrors")
    urls: tuple[str, ...]
    if mirrors is None:
        urls = (default_mirror,)
    else:
        if isinstance(mirrors, str):
            mirrors = [mirrors]
        if not isinstance(mirrors, list) or not mirrors:
            raise _err(f"{key}.mirrors", "must be a non-empty list of URLs")
        urls = tuple(_check_url(f"{key}.mirrors[{i}]", u) for i, u in enumerate(mirrors))
    return ChannelSpec(name, tuple(dict.fromkeys(urls)))


def pip_constraint_to_conda(constraint: str) -> str:
    """PEP 440 specifier -> conda version spec (``>=2.5,<2.6``; ``==2.5.1``; ``~=2.5`` -> ``>=2.5,<3``).

    Local labels are dropped: the accelerator is chosen per target, not per spec.
    Raises :class:`ParseError` for text that is not a PEP 440 specifier set.
    """
    text = (constraint or "").strip()
    if not text:
        return ""
    try:
        sset = SpecifierSet(text)
    except InvalidSpecifier:
        raise ParseError(f"{constraint!r} is not a version constraint") from None
    out = []
    for s in sorted(sset, key=str):
        ver = s.version.split("+", 1)[0]
        if s.operator == "~=":
            parts = ver.split(".")
            upper = parts[:-1]
            upper[-1] = str(int(upper[-1]) + 1) if upper and upper[-1].isdigit() else upper[-1]
            out += [f">={ver}", f"<{'.'.join(upper)}"]
        elif s.operator == "===":
            out.append(f"=={ver}")
        else:
            out.append(f"{s.operator}{ver}")
    return ",".join(out)


@dataclass(frozen=True)
class PipSide:
    """What the conda section reads from the rest of the spec (spec/mirror.py builds it: the
    conda section is parsed before a MirrorSpec exists to hold it)."""

    packages: tuple[tuple[str, str | None], ...] = ()  # (pip project, PEP 440 constraint or None)
    extra_packages: tuple[str, ...] = ()
    accelerators: tuple[str | Accelerator, ...] = ()
    pythons: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()


def default_specs(side: PipSide) -> tuple[str, ...]:
    """Conda specs from the pip side's ``packages`` and ``extra_packages``."""
    out: list[str] = []
    for i, (name, constraint) in enumerate(side.packages):
        conda_name = PIP_TO_CONDA.get(name.lower(), name.lower())
        try:
            ver = pip_constraint_to_conda(constraint or "")
        except ParseError as exc:
            raise _err(f"packages[{i}]", str(exc)) from None
        out.append(f"{conda_name} {ver}".strip())
    for extra in side.extra_packages:
        out.append(PIP_TO_CONDA.get(extra.lower(), extra.lower()))
    return tuple(dict.fromkeys(out))


def parse_conda_section(raw: object, side: PipSide) -> CondaConfig | None:
    """Validate the ``conda:`` section (``raw``) against the pip side. None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _err("conda", "must be a mapping with channels (and optionally specs, subdirs)")
    unknown = set(raw) - {"channels", "specs", "subdirs"}
    if unknown:
        raise _err(f"conda.{quote_key(sorted(unknown, key=str)[0])}", "unknown key (expected channels, specs, subdirs)")
    chans = raw.get("channels")
    if not isinstance(chans, list) or not chans:
        raise _err("conda.channels", "must be a non-empty list")
    channels = tuple(_channel(f"conda.channels[{i}]", c) for i, c in enumerate(chans))
    seen: set[str] = set()
    for i, c in enumerate(channels):
        if c.name in seen:
            raise _err(f"conda.channels[{i}].name", f"duplicate channel name {c.name!r}")
        seen.add(c.name)

    specs_raw = raw.get("specs")
    if specs_raw is None:
        specs = default_specs(side)
    else:
        if not isinstance(specs_raw, list) or not all(isinstance(s, str) and s.strip() for s in specs_raw):
            raise _err("conda.specs", "must be a list of match specs (strings)")
        specs = tuple(s.strip() for s in specs_raw)
    if not specs:
        raise _err("conda.specs", "no packages to mirror (set conda.specs or packages)")
    import rattler  # validate with the solver's own parser

    for i, s in enumerate(specs):
        try:
            rattler.MatchSpec(s)
        except Exception as exc:  # rattler raises its own InvalidMatchSpecError
            raise _err(f"conda.specs[{i}]", f"{show(s)} is not a match spec ({show_text(one_line(exc), 100)})") from None

    platforms = list(side.platforms)
    subdirs_raw = raw.get("subdirs")
    if subdirs_raw is None:
        subdirs = []
        for i, p in enumerate(platforms):
            try:
                subdirs.append(target_platform(p).conda_subdir)
            except ParseError as exc:
                raise _err(f"platforms[{i}]", str(exc)) from None
    else:
        if not isinstance(subdirs_raw, list) or not subdirs_raw:
            raise _err("conda.subdirs", "must be a non-empty list of conda subdirs")
        subdirs = []
        for i, s in enumerate(subdirs_raw):
            if not isinstance(s, str):
                raise _err(f"conda.subdirs[{i}]", f"{show(s)} is not a conda subdir name")
            if s == "noarch":
                continue  # always mirrored
            if s not in KNOWN_SUBDIRS:
                raise _err(f"conda.subdirs[{i}]", f"{show(s)} is not a conda subdir ({', '.join(KNOWN_SUBDIRS)}, noarch)")
            subdirs.append(s)
    subdirs = list(dict.fromkeys(subdirs))

    accels = []
    for i, a in enumerate(side.accelerators or ("cpu",)):
        try:
            accels.append(a if isinstance(a, Accelerator) else parse_accelerator(str(a)))
        except ParseError as exc:
            raise _err(f"accelerators[{i}]", str(exc)) from None
    pythons = list(side.pythons)
    if not pythons:
        raise _err("pythons", "the conda targets need at least one Python version")
    targets = tuple(
        CondaTarget(acc, py, subdir_platform(sd) or sd, sd) for sd in subdirs for acc in accels for py in pythons
    )
    return CondaConfig(channels, specs, tuple(subdirs), targets)
