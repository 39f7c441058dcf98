"""A placeholder ``python`` conda package for test channels.

Packages that `torchdepot recipes build` makes depend on ``python >=X.Y,<X.(Y+1).0a0`` (the
wheel's cp tag). A real channel gets python from conda-forge; a test channel built offline has
no interpreter package, so this puts an empty one in (no files: a test runs the host python
on the prefix's site-packages, as ``torchdepot verify`` does when a channel has no python).
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path


def build_python_placeholder(channel: Path, subdirs: tuple[str, ...] = ("linux-64",), version: str = "3.11.9") -> list[Path]:
    import rattler_build as rb

    out = []
    with tempfile.TemporaryDirectory(prefix="td-python-") as empty:
        for subdir in subdirs:
            dest = Path(channel) / subdir
            dest.mkdir(parents=True, exist_ok=True)
            pkg = rb.assemble_package(name="python", version=version, target_platform=subdir,
                                      build_string="0_placeholder", output_dir=str(dest), files_dir=empty,
                                      depends=[], constrains=[], build_number=0, noarch=None, license=None,
                                      summary="placeholder interpreter for offline test channels", homepage=None,
                                      description=None, timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                                      compression_level=1, detect_prefix=False)
            out.append(Path(pkg.path))
    return out


# -- a runnable conda `python` from this machine's interpreter ------------------------------------
# What it is: the Debian interpreter's binary (/usr/bin/python3.X, linked only against the host's
# libc, libm, libz and libexpat, no libpython) and its standard library (without tests, tkinter,
# idlelib, __pycache__ and dist-packages), put under the conda layout (bin/python3.X, bin/python,
# lib/python3.X/). Debian's site.py looks for <prefix>/lib/python3.X/dist-packages, so the package
# adds lib/python3.X/dist-packages/conda-site-packages.pth -> ../site-packages, where conda
# packages install. Not a conda-forge python (no openssl/sqlite/ncurses of its own): enough for
# `import torch` and the smoke test inside an environment installed by py-rattler.
DEBIAN_PYTHON = "/usr/bin/python{v}"


def host_python_available(version: str = "3.11") -> bool:
    return Path(DEBIAN_PYTHON.format(v=version)).is_file() and Path(f"/usr/lib/python{version}/os.py").is_file()


def build_host_python(channel: Path, version: str = "3.11", subdir: str = "linux-64") -> Path:
    """A ``python`` conda package made from this machine's Debian interpreter (see above)."""
    import shutil
    import subprocess

    import rattler_build as rb

    exe = Path(DEBIAN_PYTHON.format(v=version))
    full = subprocess.run([str(exe), "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dest = Path(channel) / subdir
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="td-hostpy-") as files:
        root = Path(files)
        (root / "bin").mkdir()
        shutil.copy2(exe, root / "bin" / f"python{version}")
        (root / "bin" / "python").symlink_to(f"python{version}")
        (root / "bin" / "python3").symlink_to(f"python{version}")
        lib = root / "lib" / f"python{version}"
        shutil.copytree(f"/usr/lib/python{version}", lib, symlinks=True, ignore=shutil.ignore_patterns(
            "dist-packages", "test", "tests", "__pycache__", "idlelib", "tkinter", "turtledemo", "EXTERNALLY-MANAGED"))
        (lib / "site-packages").mkdir(exist_ok=True)
        (lib / "dist-packages").mkdir()
        (lib / "dist-packages" / "conda-site-packages.pth").write_text("../site-packages\n")
        pkg = rb.assemble_package(name="python", version=full, target_platform=subdir,
                                  build_string="0_host", output_dir=str(dest), files_dir=files,
                                  depends=[], constrains=[], build_number=0, noarch=None, license="PSF-2.0",
                                  summary="this machine's Debian CPython, for offline test channels", homepage=None,
                                  description=None, timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                                  compression_level=1, detect_prefix=False)
    return Path(pkg.path)
