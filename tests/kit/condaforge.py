"""A conda-forge-shaped channel for tests and benches, with conda-forge's real names and shapes.

- :data:`FORGE` — the packages of a current PyTorch closure as conda-forge lays it out:
  ``_libgcc_mutex`` / ``_openmp_mutex`` (``.tar.bz2``, as on conda-forge), ``libgcc``,
  ``libgomp``, ``python``, ``python_abi``, ``cuda-version`` (noarch), ``cuda-cudart``,
  ``pytorch`` with a CUDA build (``cuda126_generic_py311_h…_300``, depends on ``__cuda`` and
  ``cuda-version``) and a CPU build (``cpu_generic_py311_h…_0``, no CUDA at all), and the
  ``pytorch-gpu`` metapackage. The CUDA build's higher build number is how conda-forge makes
  a GPU machine prefer it; a CPU machine (no ``__cuda``) cannot take it.
- :func:`build_forge_channel` writes those as small but valid packages (rattler-build's
  assembler; both formats) and indexes them with ``rattler.index.index_fs``: every subdir
  has ``repodata.json``, ``repodata.json.zst`` and a CEP-16 shard index with its shards.
  The ``python`` package is an empty placeholder (no interpreter; see condapython.py).
- :func:`synthetic_repodata` — the same closure inside a conda-forge-sized ``linux-64``
  (hundreds of thousands of filler records over thousands of names), repodata only, for
  bench/conda.py.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TORCH = "2.7.1"
PY = "3.11"
CUDA = "12.6"


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    build: str
    subdir: str
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()
    build_number: int = 0
    tar_bz2: bool = False  # the legacy format (conda-forge's oldest packages are only in it)

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.{'tar.bz2' if self.tar_bz2 else 'conda'}"


FORGE: tuple[Pkg, ...] = (
    Pkg("_libgcc_mutex", "0.1", "conda_forge", "linux-64", tar_bz2=True),
    Pkg("_openmp_mutex", "4.5", "2_gnu", "linux-64", ("_libgcc_mutex 0.1 conda_forge", "libgomp >=7.5.0"),
        build_number=16, tar_bz2=True),
    Pkg("libgomp", "15.1.0", "h767d61c_2", "linux-64", ("__glibc >=2.17,<3.0.a0",), build_number=2),
    Pkg("libgcc", "15.1.0", "h767d61c_2", "linux-64", ("__glibc >=2.17,<3.0.a0", "_openmp_mutex >=4.5"),
        build_number=2),
    Pkg("python", "3.11.9", "0_placeholder", "linux-64", ("libgcc >=13",)),
    Pkg("python_abi", "3.11", "8_cp311", "linux-64", constrains=("python 3.11.* *_placeholder",), build_number=8),
    Pkg("cuda-version", CUDA, "h7480c83_3", "noarch", constrains=("__cuda >=12.6", "cudatoolkit 12.6|12.6.*"),
        build_number=3),
    Pkg("cuda-cudart", "12.6.77", "h5888daf_0", "linux-64", ("cuda-version >=12.6,<12.7.0a0", "libgcc >=13")),
    Pkg("pytorch", TORCH, "cuda126_generic_py311_h1b7f4f2_300", "linux-64",
        ("__cuda", "__glibc >=2.28", "cuda-version >=12.6,<13", "cuda-cudart >=12.6.77,<13.0a0",
         "_openmp_mutex >=4.5", "libgcc >=13", "python >=3.11,<3.12.0a0", "python_abi 3.11.* *_cp311"),
        build_number=300),
    Pkg("pytorch", TORCH, "cpu_generic_py311_h5d7a3e1_0", "linux-64",
        ("_openmp_mutex >=4.5", "libgcc >=13", "python >=3.11,<3.12.0a0", "python_abi 3.11.* *_cp311")),
    Pkg("pytorch-gpu", TORCH, "cuda126_ha999a5f_300", "linux-64", (f"pytorch {TORCH} cuda*",), build_number=300),
)


def record(p: Pkg, sha256: str = "0" * 64, size: int = 1) -> dict:
    """The repodata record of ``p`` (placeholder hashes for repodata-only channels)."""
    rec: dict = {"name": p.name, "version": p.version, "build": p.build, "build_number": p.build_number,
                 "depends": list(p.depends), "constrains": list(p.constrains), "subdir": p.subdir,
                 "sha256": sha256, "md5": "0" * 32, "size": size, "timestamp": 1_750_000_000_000,
                 "license": "BSD-3-Clause"}
    if p.subdir == "noarch":
        rec["noarch"] = "generic"
    return rec


def build_forge_channel(channel: Path, packages: tuple[Pkg, ...] = FORGE, shards: bool = True) -> Path:
    """Small valid packages for ``packages`` under ``channel/<subdir>/``, indexed by rattler
    (repodata.json, .zst and, with ``shards``, the CEP-16 shard index). -> ``channel``."""
    import rattler_build as rb
    from rattler.index import index_fs
    from rattler_build.package_assembler import ArchiveType

    channel = Path(channel)
    stamp = datetime(2025, 6, 1, tzinfo=timezone.utc)
    for p in packages:
        dest = channel / p.subdir
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="td-forge-") as files:
            (Path(files) / "share" / "td-forge").mkdir(parents=True)
            (Path(files) / "share" / "td-forge" / f"{p.name}.txt").write_text(f"{p.name} {p.version} {p.build}\n")
            rb.assemble_package(name=p.name, version=p.version, target_platform=p.subdir, build_string=p.build,
                                output_dir=str(dest), files_dir=files, depends=list(p.depends),
                                constrains=list(p.constrains), build_number=p.build_number,
                                noarch="generic" if p.subdir == "noarch" else None, license="BSD-3-Clause",
                                summary=f"{p.name} (test package, conda-forge shape)", homepage=None,
                                description=None, timestamp=stamp, compression_level=1, detect_prefix=False,
                                archive_type=ArchiveType.TarBz2 if p.tar_bz2 else ArchiveType.Conda)
    (channel / "noarch").mkdir(exist_ok=True)
    asyncio.run(index_fs(channel, write_zst=True, write_shards=shards, force=True))
    write_channel_metadata(channel, packages)
    return channel


# what conda-forge's run_exports.json says for a few of these (the rest export nothing)
RUN_EXPORTS = {"libgcc": {"strong": ["libgcc >=15.1.0"]}, "libgomp": {"weak": ["libgomp >=15.1.0"]},
               "cuda-cudart": {"weak": ["cuda-cudart >=12.6.77,<13.0a0"]}}


def write_channel_metadata(channel: Path, packages: tuple[Pkg, ...] = FORGE) -> None:
    """``channeldata.json`` and per subdir ``run_exports.json``, as conda-forge publishes them."""
    subdirs = sorted({p.subdir for p in packages} | {"noarch"})
    for sd in subdirs:
        doc: dict = {"info": {"subdir": sd}, "packages": {}, "packages.conda": {}}
        for p in packages:
            if p.subdir == sd:
                doc["packages" if p.tar_bz2 else "packages.conda"][p.filename] = {
                    "run_exports": RUN_EXPORTS.get(p.name, {})}
        (channel / sd / "run_exports.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    names = sorted({p.name for p in packages})
    channeldata = {"channeldata_version": 1, "subdirs": subdirs, "packages": {
        n: {"subdirs": sorted({p.subdir for p in packages if p.name == n}),
            "version": max(p.version for p in packages if p.name == n), "license": "BSD-3-Clause",
            "run_exports": {}} for n in names}}
    (channel / "channeldata.json").write_text(json.dumps(channeldata, indent=1, sort_keys=True))


def synthetic_repodata(n_records: int, names: int = 20_000) -> dict:
    """A conda-forge-sized linux-64 repodata: the :data:`FORGE` closure plus ``n_records``
    filler records over ``names`` names, each depending on a couple of other filler names."""
    pkgs: dict[str, dict] = {}
    conda: dict[str, dict] = {}
    for p in FORGE:
        if p.subdir == "linux-64":
            (pkgs if p.tar_bz2 else conda)[p.filename] = record(p)
    per_name = max(1, n_records // names)
    i = 0
    for n in range(names):
        name = f"lib{n:05d}-forge"
        for v in range(per_name):
            if i >= n_records:
                break
            i += 1
            build = f"py311h{(n * 7919 + v) % 16**8:08x}_{v % 4}"
            deps = [f"lib{(n * 31 + 7) % names:05d}-forge >={v % 3}.0", "libgcc >=13", "python >=3.11,<3.12.0a0"]
            conda[f"{name}-{v // 4}.{v % 4}.0-{build}.conda"] = {
                "name": name, "version": f"{v // 4}.{v % 4}.0", "build": build, "build_number": v % 4,
                "depends": deps, "constrains": [], "subdir": "linux-64", "sha256": f"{i:064x}",
                "md5": f"{i:032x}", "size": 1000 + i, "timestamp": 1_700_000_000_000 + i, "license": "MIT"}
    return {"info": {"subdir": "linux-64"}, "packages": pkgs, "packages.conda": conda, "repodata_version": 1}


def noarch_repodata() -> dict:
    return {"info": {"subdir": "noarch"}, "packages": {},
            "packages.conda": {p.filename: record(p) for p in FORGE if p.subdir == "noarch"}, "repodata_version": 1}


def write_synthetic_channel(channel: Path, n_records: int) -> Path:
    """``channel/{linux-64,noarch}/repodata.json(.zst)`` of :func:`synthetic_repodata`."""
    import zstandard

    for sd, doc in (("linux-64", synthetic_repodata(n_records)), ("noarch", noarch_repodata())):
        d = Path(channel) / sd
        d.mkdir(parents=True, exist_ok=True)
        data = json.dumps(doc).encode()
        (d / "repodata.json").write_bytes(data)
        (d / "repodata.json.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    return Path(channel)
