"""PyPI project name -> conda-forge package name, from the mapping grayskull maintains.

Source: ``grayskull/strategy/config.yaml`` (top-level keys are normalised PyPI names, each
with ``conda_forge: <name>``). An installed grayskull's copy is read first (it is the
newer one); otherwise the snapshot shipped as ``recipes_data/pypi-conda-names.yaml``
(its header says which release it was taken from and how to refresh it). A name the
mapping does not list keeps its normalised PyPI name, which is conda-forge's rule too.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

from torchdepot.errors import TorchdepotError, one_line

SNAPSHOT = Path(__file__).resolve().parent / "recipes_data" / "pypi-conda-names.yaml"


@dataclass(frozen=True)
class CondaNames:
    mapping: dict  # canonical PyPI name -> conda-forge name
    source: str  # where the mapping was read from (for messages)

    def conda_name(self, pypi_name: str) -> str:
        key = canonicalize_name(pypi_name)
        return self.mapping.get(key, key)


def parse_mapping(text: str, source: str) -> CondaNames:
    """grayskull's config.yaml text -> CondaNames (entries without ``conda_forge`` are skipped)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TorchdepotError(f"{source}: not YAML ({one_line(exc, 200)})") from None
    if not isinstance(doc, dict):
        raise TorchdepotError(f"{source}: not a PyPI -> conda name mapping")
    mapping = {canonicalize_name(str(k)): str(v["conda_forge"]) for k, v in doc.items()
               if isinstance(v, dict) and isinstance(v.get("conda_forge"), str) and v["conda_forge"].strip()}
    return CondaNames(mapping, source)


def load_conda_names() -> CondaNames:
    """The installed grayskull's mapping, else the shipped snapshot."""
    try:
        ref = importlib.resources.files("grayskull.strategy").joinpath("config.yaml")
        return parse_mapping(ref.read_text(encoding="utf-8"), "grayskull (installed)")
    except (ImportError, OSError, TorchdepotError):
        pass
    return parse_mapping(SNAPSHOT.read_text(encoding="utf-8"), str(SNAPSHOT))
