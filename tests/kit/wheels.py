"""The one wheel builder for tests: small but valid wheels that pip, uv and torchdepot accept.

Every wheel has a real ``METADATA`` (Name, Version, optional Requires-Python and Requires-Dist),
a ``WHEEL`` file with its tag, and a ``RECORD`` that lists every member with its sha256 and
size. A PEP 825 variant label (``cuda12.8``) goes into the file name and a ``variant.json``
into the dist-info; the PEP 658 ``.metadata`` sidecar is written beside the wheel on request.

Invariants:
- The same arguments give the same bytes (fixed member dates and order), so tests may hash.
- :func:`wheel_bytes` is pure; :func:`build_wheel` only adds writing the file (and sidecar).
- Member contents are the caller's; a default ``<module>/__init__.py`` sets ``__version__``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torchdepot.store.fsutil import sha256_file

DATE = (2024, 1, 1, 0, 0, 0)
VARIANT_SCHEMA = "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"


@dataclass(frozen=True)
class BuiltWheel:
    """A wheel held in memory: its file name and its bytes."""

    filename: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def metadata(self) -> bytes:
        return wheel_metadata(self.data)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def wheel_bytes(name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
                requires_python: str | None = None, *, files: Mapping[str, str | bytes] | None = None,
                module: str | None = None, payload: bytes = b"", variant: str | None = None,
                variant_json: Mapping | None = None, purelib: bool = True,
                compression: int = zipfile.ZIP_DEFLATED) -> BuiltWheel:
    """A wheel in memory.

    ``files``: the package's own members (default: ``<module>/__init__.py`` with ``__version__``,
    followed by ``payload``); ``variant``: a PEP 825 label for the file name, and the dist-info's
    ``variant.json`` (``variant_json``; default: that label with no properties).
    """
    dist = name.replace("-", "_")
    module = module or dist
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += f"Requires-Python: {requires_python}\n" if requires_python else ""
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    if files is None:
        files = {f"{module}/__init__.py": f"__version__ = {version!r}\n".encode() + payload}
    members = {n: d.encode() if isinstance(d, str) else d for n, d in files.items()}
    members[f"{info}/METADATA"] = meta.encode()
    members[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: tests.kit\nRoot-Is-Purelib: {str(purelib).lower()}\n"
                                f"Tag: {tag}\n").encode()
    if variant is not None:
        doc = variant_json or {"$schema": VARIANT_SCHEMA, "default-priorities": {"namespace": []},
                               "variants": {variant: {}}}
        members[f"{info}/variant.json"] = json.dumps(doc).encode()
    record = [record_line(n, d) for n, d in members.items()] + [f"{info}/RECORD,,"]
    members[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for n, d in members.items():
            zf.writestr(zipfile.ZipInfo(n, date_time=DATE), d, compress_type=compression)
    label = f"-{variant}" if variant is not None else ""
    return BuiltWheel(filename=f"{dist}-{version}-{tag}{label}.whl", data=buf.getvalue())


def build_wheel(dest: Path, name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
                requires_python: str | None = None, *, sidecar: bool = False, **options) -> Path:
    """:func:`wheel_bytes` written into ``dest`` (created); ``sidecar``: also ``<wheel>.metadata``."""
    wheel = wheel_bytes(name, version, tag, requires, requires_python, **options)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / wheel.filename
    path.write_bytes(wheel.data)
    if sidecar:
        write_sidecar(path)
    return path


def wheel_metadata(wheel: Path | bytes) -> bytes:
    """The top-level ``*.dist-info/METADATA`` of a wheel file or of wheel bytes."""
    with zipfile.ZipFile(io.BytesIO(wheel) if isinstance(wheel, bytes) else wheel) as zf:
        for n in zf.namelist():
            if n.endswith(".dist-info/METADATA") and n.count("/") == 1:
                return zf.read(n)
    raise ValueError(f"{wheel if isinstance(wheel, Path) else 'wheel bytes'}: no METADATA")


def write_sidecar(wheel: Path) -> Path:
    """The PEP 658 ``<wheel>.metadata`` file beside ``wheel``."""
    side = wheel.with_name(wheel.name + ".metadata")
    side.write_bytes(wheel_metadata(wheel))
    return side


def sha256(path: Path) -> str:
    return sha256_file(path)[0]
