"""A loopback variant upstream for tests, from one PEP 825/850 ``variants.json`` document.

Layout (what ``channel: variant`` with ``upstreams: [<url>/whl]`` and a dependency index at
``<url>/simple`` read): ``whl/variant/torch/`` holds one stand-in torch wheel per label, the
index-level ``torch-<version>-variants.json`` (the document as given) and an ``index.html``
linking both with their sha256; ``simple/<dep>/`` holds each dependency's wheel and page.

Invariants:
- Each wheel's ``*.dist-info/variant.json`` is the document with ``variants`` narrowed to the
  wheel's own label, every other key kept (``providers`` included): uv 0.13.9 checks the wheel it
  installs against the providers in that file, as real variant wheels carry them.
- ``import torch; torch.LABEL`` names the label installed, so a test sees what was selected.
- Same arguments, same bytes (the wheel builder is deterministic).
"""

from __future__ import annotations

import html
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.kit.wheels import build_wheel, sha256

TAG = "py3-none-any"  # installs on any interpreter the fast tier runs (3.10-3.13)
VERSION = "2.10.0"


def wheel_variant_json(doc: Mapping, label: str) -> dict:
    """The dist-info ``variant.json`` of the ``label`` wheel: ``doc`` with only that label."""
    return {**doc, "variants": {label: doc["variants"][label]}}


def _page(paths: Iterable[Path]) -> str:
    anchors = "".join(f'<a href="{urllib.parse.quote(p.name)}#sha256={sha256(p)}">{html.escape(p.name)}</a><br/>\n'
                      for p in sorted(paths))
    return f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n"


def write_variant_upstream(root: Path, doc: Mapping, *, labels: Iterable[str] | None = None,
                           requires: tuple[str, ...] = ("filelock",), deps: Mapping[str, str] | None = None,
                           version: str = VERSION, tag: str = TAG, wheel_doc: Mapping | None = None) -> Path:
    """Write the tree under ``root`` (see the module docstring) and return ``root``.

    ``labels``: the wheels to build (default: every label in ``doc``); ``requires``: each torch
    wheel's Requires-Dist; ``deps``: dependency name -> version on ``simple/`` (default: filelock);
    ``wheel_doc``: what the wheels' own ``variant.json`` says instead of ``doc`` (a disagreement)."""
    torch = root / "whl" / "variant" / "torch"
    for label in labels if labels is not None else doc["variants"]:
        build_wheel(torch, "torch", version, tag, requires, ">=3.10", variant=label,
                    variant_json=wheel_variant_json({**(wheel_doc or doc), "variants": doc["variants"]}, label),
                    files={"torch/__init__.py": f"__version__ = {version!r}\nLABEL = {label!r}\n"})
    (torch / f"torch-{version}-variants.json").write_text(json.dumps(doc, indent=1))
    (torch / "index.html").write_text(_page(p for p in torch.iterdir() if p.name.endswith((".whl", ".json"))))
    for name, dep_version in (deps if deps is not None else {"filelock": "3.20.0"}).items():
        d = root / "simple" / name
        wheel = build_wheel(d, name, dep_version)
        (d / "index.html").write_text(_page([wheel]))
    return root
