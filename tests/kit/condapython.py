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
