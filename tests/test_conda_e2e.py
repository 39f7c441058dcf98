"""End to end with the real torch-2.13.0+cpu wheel: the shipped recipes repackage it (and its
pure dependencies) as conda packages that depend on python (the wheel's cp tag) and on the
wheel's requirements under conda-forge names, an upstream channel is indexed by rattler.index and served
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
from tests.kit.condapython import build_python_placeholder
from tests.test_conda_channel import fast_client, stub_torch_wheels
from torchdepot.model.accel import parse_accelerator
from torchdepot.resolve.conda import SubdirSource, solve_target
from torchdepot.ship import recipes as R
from torchdepot.spec.conda import CondaTarget
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.sync.conda import sync_conda

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
    build_python_placeholder(up, ("linux-64", "win-64"))  # what conda-forge would provide
    R.index_channel(up)
    cpu_pkg = next(b for b in built if b.name == "pytorch" and b.subdir == "linux-64" and b.build == "cpu_py311_0")
    meta = json.loads((up / "linux-64" / "repodata.json").read_text())["packages.conda"][cpu_pkg.path.name]
    assert "python >=3.11,<3.12.0a0" in meta["depends"]
    assert "pytorch-mutex ==1.0 cpu" in meta["depends"]
    assert "sympy >=1.13.3" in meta["depends"]
    # every runtime requirement of the wheel, under its conda-forge name (typing-extensions -> typing_extensions)
    dep_names = {d.split()[0] for d in meta["depends"]}
    assert {"filelock", "typing_extensions", "sympy", "networkx", "jinja2", "fsspec"} <= dep_names, dep_names
    assert not any("-" in n and n.startswith("typing") for n in dep_names)

    out = tmp_path / "out"
    with Server(tmp_path / "srv") as s:
        spec = MirrorSpec(accelerators=("cpu", "cu126"), pythons=("3.11",), platforms=("linux-x86_64", "windows-amd64"),
                          conda={"channels": [{"name": "local-up", "mirrors": [f"{s.url}/up"]}], "specs": ["pytorch"]})
        with fast_client() as c:
            res = sync_conda(spec, out, client=c, jobs=4)
    chan = out / "conda" / "local-up"
    linux = json.loads((chan / "linux-64" / "repodata.json").read_text())["packages.conda"]
    assert cpu_pkg.path.name in linux
    assert linux[cpu_pkg.path.name]["sha256"] == meta["sha256"]
    assert {"sympy", "filelock", "typing_extensions", "python"} <= {r["name"] for r in linux.values()}
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
    assert str(torch_rec.build) == "cpu_py311_0"
    # the solve of `pytorch` alone pulls in python and the wheel's dependencies (and theirs: mpmath, markupsafe)
    got = {str(r.name.normalized): str(r.version) for r in cpu.records}
    assert got["python"].startswith("3.11."), got
    assert {"sympy", "mpmath", "filelock", "typing_extensions", "networkx", "jinja2", "markupsafe", "fsspec"} <= set(got)
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


# -- recipes build: the CLI as a user runs it (fast, stub wheels) --------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _cli(args: list[str], cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {prelude}\nfrom torchdepot.cli import main\nsys.exit(main({args!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_recipes_build_takes_several_wheels_outside_a_checkout(tmp_path):
    from tests.mirror_fixture import build_wheel

    torch = build_wheel(tmp_path / "w", "torch", "2.13.0+cpu", "cp312-cp312-manylinux_2_28_x86_64",
                        requires=("typing-extensions>=4.10.0", "sympy>=1.13.3; python_version >= '3.9'",
                                  "intel-openmp==1; platform_system == 'Windows'", "opt-einsum>=3.3; extra == 'opt-einsum'"))
    dep = build_wheel(tmp_path / "w", "typing-extensions", "4.12.2", requires=())
    work = tmp_path / "elsewhere"  # not a checkout: the recipes come from the package
    work.mkdir()
    proc = _cli(["recipes", "build", "--no-metapackages", "--out", str(tmp_path / "chan"), "--wheel", str(torch), str(dep)],
                work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 packages in channel" in proc.stdout, proc.stdout
    # progress before each package (a torch wheel takes minutes): never silent
    assert "[1/2] repackaging torch-2.13.0+cpu" in proc.stderr, proc.stderr
    assert "[2/2] repackaging typing_extensions-4.12.2" in proc.stderr, proc.stderr
    linux = json.loads((tmp_path / "chan" / "linux-64" / "repodata.json").read_text())["packages.conda"]
    by_name = {r["name"]: r for r in linux.values()}
    assert set(by_name) == {"pytorch", "typing_extensions"}
    deps = by_name["pytorch"]["depends"]
    assert "python >=3.12,<3.13.0a0" in deps
    assert "typing_extensions >=4.10.0" in deps
    assert "sympy >=1.13.3" in deps
    assert not any(d.startswith(("intel-openmp", "opt-einsum", "opt_einsum")) for d in deps), deps
    assert "python >=3.12,<3.13.0a0" in by_name["typing_extensions"]["depends"]
    assert R.RECIPES_DIR.is_relative_to(Path(R.__file__).resolve().parent)


def test_recipes_build_without_rattler_build_says_how_to_install_it(tmp_path):
    proc = _cli(["recipes", "build", "--out", str(tmp_path / "chan")], tmp_path,
                prelude="sys.modules['rattler_build'] = None")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("torchdepot: error: recipes build needs py-rattler-build, an optional extra: "
                                   "pip install 'torchdepot[conda-build]'"), proc.stderr
    assert not (tmp_path / "chan").exists()


def test_pypi_conda_name_mapping():
    from torchdepot.errors import TorchdepotError
    from torchdepot.ship.conda_names import SNAPSHOT, load_conda_names, parse_mapping

    names = load_conda_names()
    assert names.conda_name("torch") == "pytorch"
    assert names.conda_name("Typing_Extensions") == "typing_extensions"
    assert names.conda_name("SymPy") == "sympy"  # unlisted: the normalised PyPI name
    assert len(parse_mapping(SNAPSHOT.read_text(), "snap").mapping) > 100
    for bad in ("- a\n- b\n", "a: [", "&a [*a]"):
        with pytest.raises(TorchdepotError):
            parse_mapping(bad, "bad.yaml")
