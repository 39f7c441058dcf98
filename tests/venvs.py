"""Hermetic pip/venv helpers for end-to-end tests.

The machine's pip has its own config (find-links, extra indexes, a torch cap); every
install a test makes runs with PIP_CONFIG_FILE=/dev/null and explicit index options.

Speed without weakening: venvs are created without ensurepip (it spends ~6 s compiling pip
into each one). A venv that a test runs pip in gets the very pip ensurepip would install
(the interpreter's bundled wheels), put there by uv from those local files, uncompiled.
Installs skip byte-compilation (``PIP_COMPILE=0``): what is under test is what gets
installed and imported, not the .pyc files pip would write beside it.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys
import venv
from pathlib import Path

# ensurepip's own wheels (pip, and setuptools before Python 3.12): what `python -m venv` installs.
BUNDLED = Path(ensurepip.__file__).parent / "_bundled"


def hermetic_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "CONDA_"))}
    # PIP_COMPILE=0 is `--compile` off (pip reads PIP_NO_COMPILE=0 the same way, inverted, so not that).
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_COMPILE="0",
               UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    env.update(extra)
    return env


def venv_python(path: Path) -> Path:
    return path / ("Scripts" if sys.platform == "win32" else "bin") / "python"


def make_venv(path: Path, *, pip: bool = True) -> Path:
    """Create a throwaway venv and return its python. ``pip=True``: with the pip (and, before
    3.12, setuptools) that ensurepip would put there; ``pip=False``: a bare venv, for tests that
    install with ``uv pip install --python``."""
    venv.EnvBuilder(with_pip=False, clear=True).create(path)
    py = venv_python(path)
    if pip:
        wheels = sorted(BUNDLED.glob("*.whl"))
        if not wheels:  # a distribution that strips ensurepip's wheels: let ensurepip do it
            venv.EnvBuilder(with_pip=True, clear=True).create(path)
            return py
        from torchdepot.resolve.uv import uv_bin

        proc = run([uv_bin(), "pip", "install", "--python", py, "--no-index", "--no-cache", "--quiet", *wheels])
        assert proc.returncode == 0, proc.stderr
    return py


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", hermetic_env())
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(c) for c in cmd], **kw)
