"""Hermetic pip/venv helpers for end-to-end tests.

The machine's pip has its own config (find-links, extra indexes, a torch cap); every
install a test makes runs with PIP_CONFIG_FILE=/dev/null and explicit index options.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path


def hermetic_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "CONDA_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    env.update(extra)
    return env


def make_venv(path: Path) -> Path:
    """Create a throwaway venv (with pip) and return its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / ("Scripts" if sys.platform == "win32" else "bin") / "python"


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", hermetic_env())
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(c) for c in cmd], **kw)
