"""A hand-made torchdepot mirror for tests (no network, no mirror code needed).

``make_mirror(root)`` lays out what ``torchdepot mirror`` publishes (see torchdepot/manifest.py):
packages/ with tiny but real, pip-installable wheels and PEP 658 ``.metadata`` files, PEP 503
pages under ``.publish/<gen>/whl`` behind a ``whl`` symlink, a conda channel with repodata,
``targets/``, ``envs/<id>/requirements.lock`` (hashed) and ``manifest.json`` written last.

Targets: ``cpu-py311-linux-x86_64`` (installable: torch 2.13.0+cpu + filelock),
``cu126-py311-linux-x86_64``, ``cu118-py310-windows-amd64`` (pip) and a conda
``cpu-py311-linux-x86_64`` target. ``cpu_wheels=[...]`` replaces the CPU target's files with
real wheels (e.g. the real torch wheel and its dependencies).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
import urllib.parse
import zipfile
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import sha256_file

CPU_ID = "cpu-py311-linux-x86_64"
CONDA_CHANNEL = "pytorch-fixture"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, name: str, version: str, tag: str = "py3-none-any",
                requires: tuple[str, ...] = (), module: str | None = None) -> Path:
    """A minimal valid wheel: ``import <module>`` gives ``__version__ == version``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    module = module or dist
    fname = f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    metadata = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: mirror_fixture\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out_dir / fname
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in files.items():
            zi = zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0))
            zf.writestr(zi, d)
    return path


def wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        for n in zf.namelist():
            if n.endswith(".dist-info/METADATA") and n.count("/") == 1:
                return zf.read(n)
    raise ValueError(f"{wheel}: no METADATA")


def _add_wheel(root: Path, wheel: Path, files: list[mf.FileEntry], link: bool = False) -> mf.FileEntry:
    name, version, _, _ = parse_wheel_filename(wheel.name)
    project = canonicalize_name(name)
    dest = root / "packages" / project / wheel.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.link(wheel, dest) if wheel.stat().st_dev == dest.parent.stat().st_dev else shutil.copyfile(wheel, dest)
    else:
        shutil.copyfile(wheel, dest)
    sha, size = sha256_file(dest)
    entry = mf.FileEntry(path=f"packages/{project}/{wheel.name}", sha256=sha, size=size, kind="wheel",
                         project=project, version=str(version))
    meta = dest.with_name(dest.name + ".metadata")
    meta.write_bytes(wheel_metadata(dest))
    msha, msize = sha256_file(meta)
    files += [entry, mf.FileEntry(path=entry.path + ".metadata", sha256=msha, size=msize, kind="metadata",
                                  project=project, version=str(version))]
    return entry


def _project_page(project: str, entries: list[mf.FileEntry], by_path: dict[str, mf.FileEntry]) -> str:
    rows = []
    for e in sorted(entries, key=lambda e: e.path):
        fname = e.path.rsplit("/", 1)[1]
        href = "../../../" + urllib.parse.quote(e.path) + f"#sha256={e.sha256}"
        meta = by_path.get(e.path + ".metadata")
        attr = f' data-dist-info-metadata="sha256={meta.sha256}" data-core-metadata="sha256={meta.sha256}"' if meta else ""
        rows.append(f'<a href="{html.escape(href)}"{attr}>{html.escape(fname)}</a><br/>')
    return f"<!DOCTYPE html>\n<html><body><h1>Links for {project}</h1>\n" + "\n".join(rows) + "\n</body></html>\n"


def _aggregate_page(project: str, entries: list[mf.FileEntry], by_path) -> str:
    # whl/<project>/index.html sits one level higher than whl/<acc>/<project>/
    return _project_page(project, entries, by_path).replace('href="../../../', 'href="../../')


def write_pages(root: Path, gen: str, by_index: dict[str, list[mf.FileEntry]], by_path) -> None:
    """PEP 503 pages for every index (``whl/cpu`` ...) into .publish/<gen>/whl, then swap the symlink."""
    tree = root / ".publish" / gen / "whl"
    everything: dict[str, list[mf.FileEntry]] = {}
    for index, entries in by_index.items():
        acc = index.split("/", 1)[1]
        projects: dict[str, list[mf.FileEntry]] = {}
        for e in entries:
            projects.setdefault(e.project, []).append(e)
            everything.setdefault(e.project, []).append(e)
        for project, pe in projects.items():
            page = tree / acc / project / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(_project_page(project, pe, by_path))
        links = "\n".join(f'<a href="{p}/">{p}</a><br/>' for p in sorted(projects))
        (tree / acc / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n")
    for project, pe in everything.items():
        page = tree / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(_aggregate_page(project, list({e.path: e for e in pe}.values()), by_path))
    link = root / "whl"
    tmp = root / ".whl.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(f".publish/{gen}/whl", tmp)
    os.replace(tmp, link)


def write_requirements_lock(path: Path, entries: list[mf.FileEntry]) -> Path:
    lines = [f"{e.project}=={e.version} \\\n    --hash=sha256:{e.sha256}" for e in sorted(entries, key=lambda e: e.project)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# generated by tests/mirror_fixture.py\n" + "\n".join(lines) + "\n")
    return path


def make_mirror(root: Path, envs: Path | None = None, cpu_wheels: list[Path] | None = None) -> mf.Manifest:
    """Build the fixture mirror at ``root`` (lock files in ``envs``, default ``root/../envs``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    envs = Path(envs) if envs is not None else root.parent / "envs"
    scratch = root / ".torchdepot" / "fixture-build"
    files: list[mf.FileEntry] = []
    if cpu_wheels:
        cpu = [_add_wheel(root, w, files, link=True) for w in cpu_wheels]
    else:
        cpu = [
            _add_wheel(root, build_wheel(scratch, "torch", "2.13.0+cpu", requires=("filelock",)), files),
            _add_wheel(root, build_wheel(scratch, "filelock", "3.16.1"), files),
        ]
    cu126 = [_add_wheel(root, build_wheel(scratch, "torch", "2.13.0+cu126", tag="cp311-cp311-manylinux_2_28_x86_64"), files)]
    cu118 = [_add_wheel(root, build_wheel(scratch, "torch", "2.7.0+cu118", tag="cp310-cp310-win_amd64"), files)]
    shutil.rmtree(scratch, ignore_errors=True)
    by_path = {f.path: f for f in files}
    write_pages(root, "g1", {"whl/cpu": cpu, "whl/cu126": cu126, "whl/cu118": cu118}, by_path)

    # a conda channel: one (fake) package + repodata for linux-64, empty noarch
    chan = root / "conda" / CONDA_CHANNEL
    pkg_name = "pytorch-2.13.0-cpu_py311_0.conda"
    pkg = chan / "linux-64" / pkg_name
    pkg.parent.mkdir(parents=True, exist_ok=True)
    pkg.write_bytes(b"not really a conda package, just bytes for the fixture\n" * 10)
    psha, psize = sha256_file(pkg)
    conda_entry = mf.FileEntry(path=f"conda/{CONDA_CHANNEL}/linux-64/{pkg_name}", sha256=psha, size=psize,
                               kind="conda", project="pytorch", version="2.13.0")
    files.append(conda_entry)
    repodata = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {pkg_name: {
        "name": "pytorch", "version": "2.13.0", "build": "cpu_py311_0", "build_number": 0,
        "depends": [], "sha256": psha, "size": psize, "subdir": "linux-64"}}}
    (chan / "linux-64" / "repodata.json").write_text(json.dumps(repodata, indent=1, sort_keys=True))
    (chan / "noarch").mkdir(parents=True, exist_ok=True)
    (chan / "noarch" / "repodata.json").write_text(json.dumps({"info": {"subdir": "noarch"}, "packages": {}, "packages.conda": {}}))

    def pkgs(entries):
        return tuple(mf.TargetPackage(name=e.project, version=e.version, path=e.path) for e in entries)

    targets = [
        mf.Target(id=CPU_ID, kind="pip", accelerator="cpu", python="3.11", platform="linux-x86_64",
                  packages=pkgs(cpu), index="whl/cpu"),
        mf.Target(id="cu126-py311-linux-x86_64", kind="pip", accelerator="cu126", python="3.11",
                  platform="linux-x86_64", packages=pkgs(cu126), index="whl/cu126"),
        mf.Target(id="cu118-py310-windows-amd64", kind="pip", accelerator="cu118", python="3.10",
                  platform="windows-amd64", packages=pkgs(cu118), index="whl/cu118"),
        mf.Target(id=CPU_ID, kind="conda", accelerator="cpu", python="3.11", platform="linux-x86_64",
                  packages=(mf.TargetPackage(name="pytorch", version="2.13.0", path=conda_entry.path, build="cpu_py311_0"),),
                  channel=f"conda/{CONDA_CHANNEL}", subdir="linux-64"),
    ]
    for t in targets:
        if t.kind == "pip":
            lock = root / "targets" / t.id / "pylock.toml"
            lock.parent.mkdir(parents=True, exist_ok=True)
            lock.write_text('lock-version = "1.0"\ncreated-by = "mirror_fixture"\n')
    write_requirements_lock(envs / CPU_ID / "requirements.lock", cpu)
    m = mf.Manifest(files=files, targets=targets, spec={"packages": ["torch"], "fixture": True})
    mf.save(root, m)
    return m
