"""Reproducible per-target lockfiles (``envs/<target-id>/``) rendered from a mirror's manifest.

Rendering is pure (manifest -> {relative path: text}); :mod:`.write` puts them on disk.
Every URL is ``<base>/<path in the mirror>`` with ``base`` defaulting to the literal
``${TORCHDEPOT_MIRROR}``, so the files carry no path or host of the machine that made them.
"""

DEFAULT_BASE = "${TORCHDEPOT_MIRROR}"
BASE_ENV = "TORCHDEPOT_MIRROR"
