"""Running the CLI as a user does: ``python -m torchdepot ...`` in a subprocess.

Invariants: hermetic by default (tests/venvs.py ``hermetic_env``: no machine pip config);
run from the repository root; bounded by a timeout; output captured as text.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.venvs import hermetic_env

ROOT = Path(__file__).resolve().parent.parent.parent


def td(*args: object, env: Mapping[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchdepot <args>`` (each argument passed through ``str``)."""
    return subprocess.run([sys.executable, "-m", "torchdepot", *map(str, args)], capture_output=True, text=True,
                          env=dict(env) if env is not None else hermetic_env(), cwd=ROOT, timeout=timeout)
