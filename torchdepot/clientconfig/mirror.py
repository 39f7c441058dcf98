"""What a served mirror offers, as the config writers need it: variants, channels, pins.

Read from the mirror's own ``manifest.json`` (http(s) or file://, via
:func:`torchdepot.sources.served.fetch_manifest`), so ``--variant`` and ``--channel`` are checked
against what the mirror really has, and pip's constraint pins name the builds it serves.
:func:`facts` is pure; :func:`probe` does the fetch.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from torchdepot.clientconfig.common import ConfigValueError
from torchdepot.sources.served import fetch_manifest
from torchdepot.store import manifest as mf


@dataclass(frozen=True)
class MirrorFacts:
    url: str
    variants: tuple[str, ...]  # pip accelerator indexes: whl/<variant>
    channels: tuple[str, ...]  # conda channels: conda/<name>
    pins: tuple[tuple[str, tuple[str, ...]], ...]  # variant -> ("torch==2.13.0+cu126", ...)

    def pins_for(self, variant: str) -> tuple[str, ...]:
        return dict(self.pins).get(variant, ())

    def check_variant(self, variant: str) -> str:
        if variant not in self.variants:
            have = ", ".join(self.variants) or "none"
            raise ConfigValueError(f"--variant {variant!r}: {self.url} has no such index (it has: {have})")
        return variant

    def check_channels(self, channels: list[str]) -> list[str]:
        for c in channels:
            if c not in self.channels:
                have = ", ".join(self.channels) or "none"
                raise ConfigValueError(f"--channel {c!r}: {self.url} has no such conda channel (it has: {have})")
        return channels


def _version(v: str) -> Version | None:
    try:
        return Version(v)
    except InvalidVersion:
        return None


def facts(url: str, m: mf.Manifest) -> MirrorFacts:
    """Variants from pip targets' ``whl/<variant>`` indexes; channels from conda targets; pins:
    per variant, the newest version of every project whose mirror build carries the variant's
    local label (``+cu126``) -- the builds the mirror exists for."""
    variants: set[str] = set()
    channels: set[str] = set()
    newest: dict[tuple[str, str], Version] = {}
    for t in m.targets:
        if t.kind == "conda" and t.channel:
            channels.add(t.channel.split("/", 1)[-1])
        if t.kind != "pip" or not t.index:
            continue
        variant = t.index.rstrip("/").rsplit("/", 1)[-1]
        variants.add(variant)
        for p in t.packages:
            v = _version(p.version)
            if v is None or v.local != variant.replace("-", "."):
                continue
            key = (variant, canonicalize_name(p.name))
            if key not in newest or v > newest[key]:
                newest[key] = v
    pins: dict[str, list[str]] = {}
    for (variant, name), v in sorted(newest.items()):
        pins.setdefault(variant, []).append(f"{name}=={v}")
    return MirrorFacts(url=url, variants=tuple(sorted(variants)), channels=tuple(sorted(channels)),
                       pins=tuple((k, tuple(v)) for k, v in sorted(pins.items())))


def probe(url: str) -> MirrorFacts:
    """Fetch and read ``<url>/manifest.json`` (raises a one-line TorchdepotError when it can't)."""
    return facts(url, fetch_manifest(url))
