"""Class (d): hostile documents that used to end in a traceback instead of one line.

Bundle documents that are a list, hold a list as a path or an int as targets; a uv.toml with an
inline ``index = [{...}]`` array; a deeply nested ``.condarc``, ``manifest.json`` and spec; a
UTF-16 and a Latin-1 spec; 5,000-digit numbers in a version, an accelerator, a Python and a
wheel name; a 5,000-digit variant label, ROCm label and glibc floor; an ``exclude_newer`` that
leaves years 1..9999 in UTC (command line and spec). Held: success, or a non-zero exit with one stderr line; never 'Traceback'.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from bench.attacks.harness import Outcome, Sandbox, changed, judge, run_cli, snapshot
from tests.mirror_fixture import CONDA_CHANNEL, make_mirror

CLS = "d"
DEEP = 100_000
BIG = "9" * 5000
GOOD_FILE = {"path": "packages/a/a-1.0-py3-none-any.whl", "size": 1,
             "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb", "role": "file"}


def _doc_bundle(p: Path, doc: object) -> Path:
    with tarfile.open(p, "w") as tar:
        blob = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        ti = tarfile.TarInfo("torchdepot-bundle.json")
        ti.size = len(blob)
        tar.addfile(ti, io.BytesIO(blob))
    return p


def _spec(sb: Sandbox, text: str | bytes, name: str = "spec.yaml") -> Path:
    p = sb.work / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _attempt(tmp: Path, name: str, make_args) -> Outcome:
    sb = Sandbox(tmp / name)
    args, allowed = make_args(sb)
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, args, timeout=60)
    outside = changed(before, snapshot(sb.base, sb.scratch), allowed)
    return judge(CLS, name, r, outside=outside)


def _unbundle(doc):
    def make(sb: Sandbox):
        return ["unbundle", str(_doc_bundle(sb.work / "b.tar", doc)), "--to", str(sb.work / "dest")], (sb.work / "dest",)
    return make


def _mirror_spec(text, *extra):
    def make(sb: Sandbox):
        return ["mirror", "--spec", str(_spec(sb, text)), "--out", str(sb.work / "out"), *extra], (sb.work / "out",)
    return make


def _mirror(sb: Sandbox) -> Path:
    """A small local mirror (pip indexes and a conda channel) for the config writers to point at."""
    root = sb.work / "mirror"
    make_mirror(root, envs=sb.work / "envs")
    return root


def _uv_inline_index(sb: Sandbox):
    f = sb.xdg / "uv" / "uv.toml"
    f.parent.mkdir(parents=True)
    f.write_text('index = [{ name = "mine", url = "http://regional.lab/simple" }]\n')
    return ["config", "uv", "--url", str(_mirror(sb)), "--file", str(f)], (f.parent,)


def _deep_condarc(sb: Sandbox):
    f = sb.home / ".condarc"
    f.write_text("channels: " + "[" * DEEP + "]" * DEEP + "\n")
    return ["config", "conda", "--url", str(_mirror(sb)), "--channel", CONDA_CHANNEL, "--file", str(f)], (f,)


def _deep_manifest(sb: Sandbox):
    root = sb.work / "m"
    root.mkdir()
    (root / "manifest.json").write_text('{"format": "torchdepot-manifest", "version": 1, "files": '
                                        + "[" * DEEP + "]" * DEEP + "}")
    return ["verify-mirror", str(root)], (root,)


def _parse_big(sb: Sandbox):
    return ["parse", f"torch-{BIG}.0+cu{BIG}-cp311-cp311-manylinux_2_28_x86_64.whl"], ()


def _parse_big_label(sb: Sandbox):
    """A PEP 825 variant label, a ROCm local label and a glibc floor with 5,000 digits."""
    return ["parse", f"torch-2.0-cp311-cp311-linux_x86_64-cuda1.{BIG}.whl",
            f"torch-2.0+rocm6.{BIG}-cp311-cp311-linux_x86_64.whl",
            f"torch-2.0-cp311-cp311-manylinux_2_{BIG}_x86_64.whl"], ()


def _exclude_newer_cli(when: str):
    def make(sb: Sandbox):
        return ["mirror", "--dry-run", "--spec", str(_spec(sb, SPEC_OK)), "--out", str(sb.work / "out"),
                "--exclude-newer", when], (sb.work / "out",)
    return make


SPEC_OK = "packages: [torch]\naccelerators: [cpu]\npythons: ['3.11']\nplatforms: [linux-x86_64]\nupstreams: ['http://127.0.0.1:9/whl']\n"


def run(tmp: Path) -> list[Outcome]:
    base = {"format": "torchdepot-bundle", "version": 1, "manifest": {}}
    cases = [
        ("bundle-doc-is-a-list", _unbundle([{"format": "torchdepot-bundle"}])),
        ("bundle-doc-list-as-path", _unbundle({**base, "files": [{**GOOD_FILE, "path": ["packages", "a"]}]})),
        ("bundle-doc-int-as-targets", _unbundle({**base, "files": [], "targets": 7})),
        ("bundle-doc-nested-deep", _unbundle(("[" * DEEP + "]" * DEEP).encode())),
        ("uv-toml-inline-index-array", _uv_inline_index),
        ("condarc-nested-deep", _deep_condarc),
        ("manifest-json-nested-deep", _deep_manifest),
        ("spec-nested-deep", _mirror_spec("packages: " + "[" * DEEP + "]" * DEEP + "\n")),
        ("spec-utf16", _mirror_spec(SPEC_OK.encode("utf-16"))),
        ("spec-latin1-bytes", _mirror_spec(("# caf\xe9\n" + SPEC_OK).encode("latin-1"))),
        ("spec-5000-digit-version", _mirror_spec(SPEC_OK.replace("[torch]", f"['torch=={BIG}']"), "--dry-run")),
        ("spec-5000-digit-accelerator", _mirror_spec(SPEC_OK.replace("[cpu]", f"[cu{BIG}]"), "--dry-run")),
        ("spec-5000-digit-python", _mirror_spec(SPEC_OK.replace("'3.11'", f"'3.{BIG}'"), "--dry-run")),
        ("parse-5000-digit-wheel-name", _parse_big),
        ("parse-5000-digit-variant-label", _parse_big_label),
        ("exclude-newer-before-year-1-cli", _exclude_newer_cli("0001-01-01T00:00:00+01:00")),
        ("exclude-newer-after-year-9999-cli", _exclude_newer_cli("9999-12-31T23:59:59-01:00")),
        ("exclude-newer-before-year-1-spec",
         _mirror_spec(SPEC_OK + "exclude_newer: 0001-01-01T00:00:00+01:00\n", "--dry-run")),
        ("exclude-newer-after-year-9999-spec",
         _mirror_spec(SPEC_OK + "exclude_newer: '9999-12-31T23:59:59-01:00'\n", "--dry-run")),
    ]
    return [_attempt(tmp, name, make) for name, make in cases]
