"""Target ids: ``<accelerator>-py<XY>-<platform>``, the one name a target has everywhere
(``envs/<id>/``, ``targets/<id>/``, the manifest, CI matrices)."""

from __future__ import annotations

# The torch package of a target: its pip name and its conda name.
TORCH_NAMES = ("torch", "pytorch")


def target_id(accelerator: str, python: str, platform: str) -> str:
    return f"{accelerator}-py{python.replace('.', '')}-{platform}"
