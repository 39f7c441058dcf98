"""End to end with the real torch-2.13.0+cpu wheel: recipes/ repackage it (and its pure
dependencies) as conda packages, an upstream channel is indexed by rattler.index and served
on 127.0.0.1, sync_conda mirrors it, the LOCAL channel is solved for linux-64 CPU,
linux-64 with __cuda=12.6 and win-64, and the CPU solution is installed with
rattler.install and imported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.test_conda_channel import fast_client, stub_torch_wheels
from torchdepot.model.accel import parse_accelerator
from torchdepot.ship import recipes as R
from torchdepot.resolve.conda import SubdirSource, solve_target
from torchdepot.spec.conda import CondaTarget
from torchdepot.sync.conda import sync_conda
from torchdepot.spec.mirror import MirrorSpec

DEPS = ("filelock", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "setuptools")


@pytest.fixture(scope="module")
def dep_wheels(dep_wheels) -> list[Path]:
    """The shared dependency wheels (tests/conftest.py), minus numpy: torch's runtime deps only."""
    return [p for p in dep_wheels if p.name.split("-")[0].lower().replace("_", "-") in DEPS]


def test_repackaged_real_torch_mirrors_solves_installs_and_imports(torch_wheel, dep_wheels, tmp_path):
    up = tmp_path / "srv" / "up"
    (tmp_path / "srv").mkdir()
    stubs = [w for w in stub_torch_wheels(tmp_path) if "+cpu-cp311-cp311-manylinux" not in w.name]
    R.build_metapackages(up, ("12.6",))
    built = R.build_wheels([torch_wheel, *dep_wheels, *stubs], up, compression_level=1)
    R.index_channel(up)
    cpu_pkg = next(b for b in built if b.name == "pytorch" and b.subdir == "linux-64" and b.build == "cpu_py311_0")
    meta = json.loads((up / "linux-64" / "repodata.json").read_text())["packages.conda"][cpu_pkg.path.name]
    assert "sympy >=1.13.3" in meta["depends"] and "pytorch-mutex ==1.0 cpu" in meta["depends"]

    out = tmp_path / "out"
    with Server(tmp_path / "srv") as s:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64", "windows-amd64"),
                          conda={"channels": [{"name": "local-up", "mirrors": [f"{s.url}/up"]}], "specs": ["pytorch"]})
        with fast_client() as c:
            res = sync_conda(spec, out, client=c, jobs=4)
    chan = out / "conda" / "local-up"
    linux = json.loads((chan / "linux-64" / "repodata.json").read_text())["packages.conda"]
    assert cpu_pkg.path.name in linux and linux[cpu_pkg.path.name]["sha256"] == meta["sha256"]
    assert {"sympy", "filelock", "typing-extensions"} <= {r["name"] for r in linux.values()}
    assert (chan / "noarch" / "repodata.json").is_file()
    assert len(res.targets) == 4

    # Solve against the LOCAL channel.
    sources = [SubdirSource("local", sd, chan.as_uri(), chan / sd / "repodata.json") for sd in ("linux-64", "win-64", "noarch")]
    solved = {}
    for acc, plat, sd in (("cpu", "linux-x86_64", "linux-64"), ("cu126", "linux-x86_64", "linux-64"),
                          ("cpu", "windows-amd64", "win-64")):
        t = CondaTarget(parse_accelerator(acc), "3.11", plat, sd)
        solved[t.id] = solve_target(["pytorch"], [x for x in sources if x.subdir in (sd, "noarch")], t)
    cpu = solved["cpu-py311-linux-x86_64"]
    torch_rec = next(r for r in cpu.records if str(r.name.normalized) == "pytorch")
    assert str(torch_rec.build) == "cpu_py311_0" and "sympy" in {str(r.name.normalized) for r in cpu.records}
    cuda = solved["cu126-py311-linux-x86_64"]
    assert next(str(r.build) for r in cuda.records if str(r.name.normalized) == "pytorch") == "cuda126_py311_0"
    win = solved["cpu-py311-windows-amd64"]
    assert next(str(r.subdir) for r in win.records if str(r.name.normalized) == "pytorch") == "win-64"

    # Install the CPU solution into a throwaway prefix and import torch from it.
    import rattler

    prefix = tmp_path / "prefix"
    asyncio.run(rattler.install(list(cpu.records), prefix, cache_dir=tmp_path / "pkgs", show_progress=False))
    site = prefix / "lib" / "python3.11" / "site-packages"
    assert (site / "torch" / "__init__.py").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "CONDA_"))}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-s", "-c",
                           "import torch, sys; print(torch.__version__); print(torch.__file__)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, where = proc.stdout.split()
    assert version == "2.13.0+cpu"
    assert Path(where).is_relative_to(prefix)
