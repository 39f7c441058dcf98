"""Conda build strings and repodata records -> the same accelerator/python model as wheels.

Shapes handled (see ../shared/DOMAIN.md §3):
legacy ``pytorch`` channel  ``py3.10_cuda11.8_cudnn8.7.0_0``, ``py3.7_cuda10.1.243_cudnn7.6.3_0``,
``py3.10_cpu_0``, torchvision ``py310_cu118`` / ``py39_cpu``, faiss ``py3.9_h..._0_cuda11.3``;
conda-forge ``cuda129_mkl_py312_h<hash>_302``, ``cpu_generic_py311_h<hash>_0``,
``cuda118_py310h<hash>_300``, ``cuda112py39h<hash>_1``, ``cpu_py39h<hash>_1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torchdepot.errors import ParseError
from torchdepot.model.accel import Accelerator, cuda_from_dotted

_PY = re.compile(r"(?:^|_|(?<=\d))py(\d)(\.?)(\d{1,2})(t?)(?=_|h[0-9a-f]{4}|cpu|cuda|cu\d|$)")
_CUDA_DOTTED = re.compile(r"(?:^|_)cuda(\d{1,2}\.\d+)(?:\.\d+)*")
_CUDA_DIGITS = re.compile(r"(?:^|_)cuda(\d{2,3})(?=_|py|h[0-9a-f]{4}|$)")
_CU_DIGITS = re.compile(r"(?:^|_)cu(\d{2,3})(?=_|h[0-9a-f]{4}|$)")
_CPU = re.compile(r"(?:^|_)cpu(?=_|h[0-9a-f]{4}|$)")
_XPU = re.compile(r"(?:^|_)xpu(?=_|$)")
_ROCM = re.compile(r"(?:^|_)rocm(\d+(?:\.\d+)+)")
_BLAS = re.compile(r"(?:^|_)(mkl|generic|openblas)(?=_|$)")
_NUMBER = re.compile(r"_(\d+)(?:_|$)")
_VALID = re.compile(r"[A-Za-z0-9_.+]+")


@dataclass(frozen=True)
class CondaBuild:
    build: str
    accelerator: Accelerator | None
    python: str | None  # "3.10"
    free_threaded: bool
    blas: str | None
    build_number: int | None


def parse_build_string(build: str) -> CondaBuild:
    """Parse a conda build string. Raises :class:`ParseError` only for text that cannot
    be a build string at all (empty, or characters conda forbids)."""
    if not isinstance(build, str) or not _VALID.fullmatch(build):
        raise ParseError(f"{build!r} is not a conda build string")
    acc: Accelerator | None = None
    m = _CUDA_DOTTED.search(build)
    if m:
        acc = cuda_from_dotted(m.group(1))
    elif (m := _CUDA_DIGITS.search(build)) or (m := _CU_DIGITS.search(build)):
        d = m.group(1)
        acc = Accelerator("cuda", (int(d[:-1]), int(d[-1])))
    elif m := _ROCM.search(build):
        acc = Accelerator("rocm", tuple(int(p) for p in m.group(1).split(".")))
    elif _CPU.search(build):
        acc = Accelerator("cpu")
    elif _XPU.search(build):
        acc = Accelerator("xpu")
    python, free = None, False
    if m := _PY.search(build):
        python = f"{m.group(1)}.{m.group(3)}"
        free = m.group(4) == "t"
    blas = m.group(1) if (m := _BLAS.search(build)) else None
    number: int | None = None
    if build.isdigit():
        number = int(build)
    else:
        nums = _NUMBER.findall(build)
        number = int(nums[-1]) if nums else None
    return CondaBuild(build, acc, python, free, blas, number)


_FILENAME = re.compile(r"(?P<name>[a-z0-9_.\-]+)-(?P<version>[^-/\\]+)-(?P<build>[^-/\\]+)\.(?P<ext>conda|tar\.bz2)")


def split_conda_filename(filename: str) -> tuple[str, str, str, str]:
    """``pytorch-2.0.0-py3.10_cpu_0.tar.bz2`` -> (name, version, build, ext)."""
    m = _FILENAME.fullmatch(filename)
    if not m:
        raise ParseError(f"{filename!r} is not a conda package filename")
    return m.group("name"), m.group("version"), m.group("build"), m.group("ext")


@dataclass(frozen=True)
class CondaRecord:
    """One repodata entry, with the accelerator and Python its build string states."""

    channel: str
    subdir: str
    filename: str
    name: str
    version: str
    build: str
    build_number: int
    depends: tuple[str, ...]
    constrains: tuple[str, ...]
    sha256: str | None
    md5: str | None
    size: int | None
    timestamp: int | None
    accelerator: Accelerator | None
    python: str | None
    # the original record, for republishing; not part of equality (values may be lists)
    raw: tuple[tuple[str, object], ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "subdir": self.subdir,
            "filename": self.filename,
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": self.build_number,
            "accelerator": self.accelerator.name if self.accelerator else None,
            "python": self.python,
            "sha256": self.sha256,
            "size": self.size,
        }

    def raw_dict(self) -> dict[str, object]:
        return dict(self.raw)


def _strings(value: object) -> tuple[str, ...]:
    """The strings of a JSON list (repodata from the wild may hold anything here)."""
    if not isinstance(value, list):
        return ()
    return tuple(d for d in value if isinstance(d, str))


def package_accelerator(name: str, version: str, build: CondaBuild) -> Accelerator | None:
    """Accelerator of a conda package: metapackages state it in the name/version
    (``pytorch-cuda 12.1`` -> cu121, ``cpuonly`` -> cpu), everything else in the build."""
    if name == "pytorch-cuda":
        try:
            return cuda_from_dotted(version)
        except ParseError:
            return None
    if name == "cpuonly":
        return Accelerator("cpu")
    return build.accelerator


def record_from_repodata(channel: str, subdir: str, filename: str, rec: object) -> CondaRecord:
    """Build a :class:`CondaRecord` from one ``packages``/``packages.conda`` entry.

    Raises :class:`ParseError` for records that are not usable (bad filename, missing
    name/version/build, name that disagrees with the filename).
    """
    if not isinstance(rec, dict):
        raise ParseError(f"{filename!r}: record is not an object")
    fname, fver, fbuild, _ = split_conda_filename(filename)
    name, version, build = rec.get("name"), rec.get("version"), rec.get("build")
    if not (isinstance(name, str) and isinstance(version, str) and isinstance(build, str)):
        raise ParseError(f"{filename!r}: record lacks name/version/build")
    if (name, version, build) != (fname, fver, fbuild):
        raise ParseError(f"{filename!r}: record says {f'{name}-{version}-{build}'!r}")  # repr: upstream text stays one line
    parsed = parse_build_string(build)
    bn = rec.get("build_number")
    if not isinstance(bn, int) or isinstance(bn, bool):
        bn = parsed.build_number if parsed.build_number is not None else 0
    sha = rec.get("sha256")
    md5 = rec.get("md5")
    size = rec.get("size")
    ts = rec.get("timestamp")
    return CondaRecord(
        channel=channel,
        subdir=subdir,
        filename=filename,
        name=name,
        version=version,
        build=build,
        build_number=bn,
        depends=_strings(rec.get("depends")),
        constrains=_strings(rec.get("constrains")),
        sha256=sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None,
        md5=md5 if isinstance(md5, str) else None,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        timestamp=ts if isinstance(ts, int) and not isinstance(ts, bool) else None,
        accelerator=package_accelerator(name, version, parsed),
        python=parsed.python,
        raw=tuple(sorted(rec.items())),
    )
