"""Any extra packages (issue 12): a lab's real environment, not torch plus numpy.

The dependency index is built from REAL wheels that pip downloads here with the machine's
own configuration (requests, ipykernel, matplotlib and their closures, for a
manylinux_2_28 / CPython 3.11 target; cached outside the repository), plus the pure-Python
wheel of charset-normalizer beside its compiled one: several compatible wheels for one
version. A CPU target is mirrored with them as extra_packages, then everything is
installed into a fresh venv from the mirror alone with hermetic pip and imported.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.httpserver import Server
from tests.mirror_upstream import build_upstreams, make_wheel, sha256, wheel_metadata
from tests.venvs import hermetic_env, make_venv
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.spec.mirror import parse_spec
from torchdepot.sync.pip import sync

pytestmark = pytest.mark.e2e  # real wheels from the machine's index, installed and imported

CACHE = Path.home() / ".cache" / "torchdepot-tests" / "extra-deps"
EXTRAS = ("requests", "ipykernel", "matplotlib")
IMPORTS = ("requests", "ipykernel", "matplotlib", "charset_normalizer", "torch")
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]


def _download(*args: str) -> None:
    """pip download with the machine's pip configuration (not hermetic: that is where wheels come from)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--python-version", "3.11",
           "-d", str(CACHE), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def real_wheels() -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    _download("--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], *EXTRAS)
    _download("--no-deps", "--implementation", "py", "--platform", "any", "charset-normalizer==3.5.3")
    wheels = sorted(CACHE.glob("*.whl"))
    assert len([w for w in wheels if w.name.startswith("charset_normalizer-3.5.3-")]) == 2
    return wheels


def _dependency_index(root: Path, wheels: list[Path]) -> None:
    """A PEP 503 index; every other project offers PEP 658 metadata, the rest make the
    mirror read METADATA from the wheel itself."""
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        by_project.setdefault(str(canonicalize_name(parse_wheel_filename(w.name)[0])), []).append(w)
    (root / "files").mkdir(parents=True)
    for i, (project, ws) in enumerate(sorted(by_project.items())):
        anchors = []
        for w in ws:
            (root / "files" / w.name).symlink_to(w)
            attrs = f'href="../../files/{urllib.parse.quote(w.name)}#sha256={sha256(w)}"'
            if i % 2:
                meta = wheel_metadata(w)
                (root / "files" / (w.name + ".metadata")).write_bytes(meta)
                import hashlib

                attrs += f' data-core-metadata="sha256={hashlib.sha256(meta).hexdigest()}"'
            anchors.append(f"<a {attrs}>{w.name}</a><br/>")
        (root / "simple" / project).mkdir(parents=True)
        (root / "simple" / project / "index.html").write_text("<html><body>\n" + "\n".join(anchors) + "\n</body></html>\n")


def test_real_extra_packages_mirror_install_and_import(real_wheels, tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    torch = make_wheel(tmp_path / "t", "torch", "2.13.0+cpu", "cp311-cp311-manylinux_2_28_x86_64", (), ">=3.10")
    a.mkdir()
    (tmp_path / "unused" / "simple").mkdir(parents=True)  # build_upstreams' dependency side: not used here
    _dependency_index(b, real_wheels)
    with Server(a) as sa, Server(b) as sb:
        build_upstreams(a, tmp_path / "unused", sb.url, [torch], [])
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": list(EXTRAS), "upstreams": [sa.url + "/whl"],
                           "out": str(tmp_path / "out"), "jobs": 4}, "test spec")
        msgs: list[str] = []
        t = time.monotonic()
        res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
                   pip_sources=PipSources(index_url=sb.url + "/simple"))
        took = time.monotonic() - t
    print(f"\nFIGURES links_refused={res.refused} requests={res.requests} files={len(res.plans[0].files)} "
          f"seconds={took:.2f}")
    got = {f.filename for f in res.plans[0].files}
    charset = {n for n in got if n.startswith("charset_normalizer-")}
    assert len(charset) == 2, charset  # both compatible wheels of one version are mirrored
    assert {"requests", "ipykernel", "matplotlib", "tornado", "pyzmq", "numpy"} <= {f.name for f in res.plans[0].files}
    # at most one request per page and per metadata file: each project's page on the PyTorch
    # variant (missing for all but torch) and on the dependency index, each asked once
    projects = {f.name for f in res.plans[0].files}
    assert res.requests["pages"] <= 2 * len(projects) + 1, res.requests
    assert res.requests["metadata"] <= len(got), res.requests

    python = make_venv(tmp_path / "venv")
    index = (tmp_path / "out" / "whl" / "cpu").as_uri()
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--index-url", index, "--only-binary", ":all:",
                              "torch", *EXTRAS], env=hermetic_env(), capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import " + ", ".join(IMPORTS)], env=hermetic_env(),
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
