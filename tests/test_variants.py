"""PEP 825 variant wheels end to end (issue 16 parts 2 and 3), loopback only.

A variant upstream laid out like ``/whl/variant/``: torch's ``-null`` (CPU) and ``-cuda12.8``
wheels on one page, each with a ``*.dist-info/variant.json``, beside the index-level
``torch-2.10.0-variants.json``; the cuda12.8 wheel's METADATA uses variant markers. The
mirror selects the label per target, publishes the variants.json (read anew each sync,
content-addressed when it changes), locks it into pylock.toml, and uv's
``--preview-features wheel-variants`` installs the null variant from the mirror alone.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from tests.httpserver import Server
from tests.mirror_upstream import make_wheel, sha256
from tests.venvs import hermetic_env
from torchdepot.errors import TorchdepotError
from torchdepot.net.http import HttpConfig, make_session
from torchdepot.net.pipconfig import PipSources
from torchdepot.resolve.uv import uv_bin
from torchdepot.sources.variants import (
    VariantsJsonError,
    evaluate_marker_text,
    evaluate_variant_markers,
    parse_variants_json,
    variants_json_key,
    variants_json_name,
)
from torchdepot.spec.mirror import parse_spec
from torchdepot.store import manifest as mf
from torchdepot.sync.pip import sync

SCHEMA = "https://variants-schema.wheelnext.dev/peps/825/v0.1.1.json"
TAG = "cp311-cp311-manylinux_2_28_x86_64"
CUDA = {"nvidia": {"cuda_version_lower_bound": ["12.8"], "sm_arch": ["100_real", "120_real", "80_real", "90_real"]}}
VARIANTS = {"null": {}, "cuda12.8": CUDA}
PRIORITIES = {"namespace": ["nvidia"]}
# the providers section (PEP 850) as torch's variants.json writes it: uv 0.13.9 accepts it, and
# the locks keep it (tests/test_variants_providers.py)
PROVIDERS = {"nvidia": {"requires": ["nvidia-variant-provider>=0.0.1,<1.0.0"],
                        "plugin-api": "nvidia_variant_provider.plugin:NvidiaVariantPlugin"}}
# what the smoke test of `torchdepot verify` touches, in a few lines (the real wheel is 190 MB)
FAKE_TORCH = '''__version__ = "2.10.0"
LABEL = {label!r}
class version:
    cuda = {cuda!r}
class cuda:
    @staticmethod
    def is_available():
        return False
class _T(list):
    def __mul__(self, k):
        return _T(x * k for x in self)
    def sum(self):
        return sum(self)
def tensor(values):
    return _T(values)
'''


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    dist_info = next(n.split("/")[0] for n in files if n.endswith("/METADATA"))
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()]
    files = {**files, f"{dist_info}/RECORD": ("\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n").encode()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in files.items():
            zf.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), d)
    return path


def variant_wheel(dest: Path, label: str, requires: tuple[str, ...]) -> Path:
    info = "torch-2.10.0.dist-info"
    meta = "Metadata-Version: 2.1\nName: torch\nVersion: 2.10.0\nRequires-Python: >=3.10\n" + \
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    variant = {"$schema": SCHEMA, "default-priorities": PRIORITIES, "variants": {label: VARIANTS[label]}}
    dest.mkdir(parents=True, exist_ok=True)
    return _zip(dest / f"torch-2.10.0-{TAG}-{label}.whl", {
        "torch/__init__.py": FAKE_TORCH.format(label=label, cuda="12.8" if label != "null" else None).encode(),
        f"{info}/METADATA": meta.encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\nTag: {TAG}\n".encode(),
        f"{info}/variant.json": json.dumps(variant).encode(),
    })


def _anchor(href: str, name: str, sha: str) -> str:
    return f'<a href="{html.escape(href)}#sha256={sha}">{html.escape(name)}</a><br/>\n'


def _page(anchors: list[str]) -> str:
    return "<!DOCTYPE html><html><body>\n" + "".join(anchors) + "</body></html>\n"


def write_variants_json(root: Path, doc: dict) -> None:
    """(Re)write the variants.json and the torch page that links it (with its new hash)."""
    torch = root / "whl" / "variant" / "torch"
    (torch / variants_json_name("torch", "2.10.0")).write_text(json.dumps(doc, indent=1))
    anchors = [_anchor(urllib.parse.quote(p.name), p.name, sha256(p))
               for p in sorted(torch.iterdir()) if p.name.endswith((".whl", "-variants.json"))]
    (torch / "index.html").write_text(_page(anchors))


@pytest.fixture
def upstream(tmp_path):
    """/whl/variant/ (torch variants) and /simple/ (dependencies) on one loopback server."""
    root = tmp_path / "up"
    torch = root / "whl" / "variant" / "torch"
    variant_wheel(torch, "null", ("filelock",))
    variant_wheel(torch, "cuda12.8", ("filelock", "nvidia-fake-cu12 ; variant_label == 'cuda12.8'",
                                      "nvidia-extra ; 'nvidia' in variant_namespaces and sys_platform == 'win32'"))
    write_variants_json(root, {"$schema": SCHEMA, "default-priorities": PRIORITIES, "variants": VARIANTS,
                               "providers": PROVIDERS})
    for name, version in (("filelock", "3.20.0"), ("nvidia-fake-cu12", "12.8.1"), ("nvidia-extra", "1.0")):
        w = make_wheel(root / "simple" / name, name, version)
        (root / "simple" / name / "index.html").write_text(_page([_anchor(w.name, w.name, sha256(w))]))
    with Server(root) as s:
        yield root, s.url


def mirror(url: str, out: Path, accelerators=("cpu", "cu128")):
    spec = parse_spec({"accelerators": list(accelerators), "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "channel": "variant", "upstreams": [f"{url}/whl"], "out": str(out),
                       "jobs": 2}, "test spec")
    msgs: list[str] = []
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
               pip_sources=PipSources(index_url=f"{url}/simple"))
    return res, msgs


def files_of(res, acc: str) -> dict[str, str]:
    plan = next(p for p in res.plans if p.target.accelerator == acc)
    return {f.name: f.filename for f in plan.files}


# -- pure parts -------------------------------------------------------------------------------
def test_variants_json_shape_is_checked():
    doc = {"$schema": SCHEMA, "default-priorities": PRIORITIES, "variants": VARIANTS}
    v = parse_variants_json(json.dumps(doc).encode(), "t-variants.json")
    assert v.namespaces == ("nvidia",)
    assert v.properties("null") == {}
    assert v.properties("cuda12.8")["nvidia"]["cuda_version_lower_bound"] == ("12.8",)
    bad = [
        {**doc, "variants": {"null": CUDA}},  # null has no properties
        {**doc, "default-priorities": {"namespace": []}} | {"variants": {"cuda12.8": CUDA}},
        {**doc, "default-priorities": {"namespace": ["nvidia", "nvidia"]}},
        {**doc, "variants": {"Bad-Label": {}}},
        {**doc, "variants": {"x": {"nvidia": {"f": ["UPPER"]}}}},
        {k: v for k, v in doc.items() if k != "$schema"},
    ]
    for b in bad:
        with pytest.raises(VariantsJsonError, match="^t-variants.json: not PEP 825"):
            parse_variants_json(json.dumps(b).encode(), "t-variants.json")
    assert variants_json_key("torch-2.10.0-variants.json") == ("torch", "2.10.0")
    assert variants_json_key("torch-2.10.0-cp311-cp311-linux_x86_64-null.whl") is None


def test_variant_markers_are_evaluated_for_the_label():
    props = parse_variants_json(json.dumps({"$schema": SCHEMA, "default-priorities": PRIORITIES,
                                            "variants": VARIANTS}).encode(), "v").properties("cuda12.8")
    meta = (b"Name: torch\nRequires-Dist: filelock\nRequires-Dist: a ; variant_label == 'cuda12.8'\n"
            b"Requires-Dist: b ; 'nvidia' in variant_namespaces and python_version >= \"3.9\"\n"
            b"Requires-Dist: c ; \"nvidia :: sm_arch :: 90_real\" in variant_properties\n"
            b"Requires-Dist: d ; 'nvidia :: sm_arch' not in variant_features\n")
    cuda = evaluate_variant_markers(meta, "cuda12.8", props).decode()
    null = evaluate_variant_markers(meta, "null", {}).decode()
    assert "Requires-Dist: filelock\n" in cuda
    assert "variant_" not in cuda
    assert "variant_" not in null
    from packaging.requirements import Requirement
    env = {"python_version": "3.11", "python_full_version": "3.11.7"}

    def active(text: str) -> set[str]:
        reqs = [Requirement(ln.split(":", 1)[1]) for ln in text.splitlines() if ln.startswith("Requires-Dist")]
        return {r.name for r in reqs if r.marker is None or r.marker.evaluate(env)}

    assert active(cuda) == {"filelock", "a", "b", "c"}
    assert active(null) == {"filelock", "d"}


@given(st.text(max_size=200))
def test_marker_text_without_variant_atoms_is_unchanged(text):
    if "variant_" not in text:
        assert evaluate_marker_text(text, "null", {}) == text


@given(st.binary(max_size=300) | st.recursive(st.none() | st.booleans() | st.text(max_size=8) | st.integers(),
                                              lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                              max_leaves=12).map(lambda d: json.dumps(d).encode()))
def test_variants_json_parser_fails_only_with_its_error(data):
    with contextlib.suppress(VariantsJsonError):
        parse_variants_json(data, "x")


# -- the mirror ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_variant_channel_mirror_lock_and_uv_install(upstream, tmp_path):
    root, url = upstream
    out = tmp_path / "mirror"
    res, msgs = mirror(url, out)
    cpu, cu = files_of(res, "cpu"), files_of(res, "cu128")
    assert cpu["torch"] == f"torch-2.10.0-{TAG}-null.whl", msgs
    assert "nvidia-fake-cu12" not in cpu, msgs
    assert cu["torch"] == f"torch-2.10.0-{TAG}-cuda12.8.whl", msgs
    assert "nvidia-fake-cu12" in cu, msgs
    assert "nvidia-extra" not in cu  # its marker holds only on win32

    man = mf.load(out)
    (vj,) = [f for f in man.files if f.kind == "variants-json"]
    upstream_file = root / "whl/variant/torch/torch-2.10.0-variants.json"
    assert vj.path == "packages/torch/torch-2.10.0-variants.json"
    assert vj.sha256 == sha256(upstream_file)
    assert (out / vj.path).read_bytes() == upstream_file.read_bytes()
    # the wheels' PEP 658 metadata is their own (variant markers kept), not the view's evaluation
    cu_meta = next(f for f in man.files if f.path.endswith("cuda12.8.whl.metadata"))
    assert b"variant_label == 'cuda12.8'" in (out / cu_meta.path).read_bytes()
    # pages link the variants.json beside the wheels (HTML and PEP 691 JSON)
    for page in ("whl/cpu/torch/index.html", "whl/cu128/torch/index.html", "whl/torch/index.html"):
        assert "torch-2.10.0-variants.json#sha256=" + vj.sha256 in (out / page).read_text(), page
    doc = json.loads((out / "whl/cpu/torch/index.json").read_text())
    assert {f["filename"] for f in doc["files"]} == {cpu["torch"], "torch-2.10.0-variants.json"}
    assert doc.get("versions", ["2.10.0"]) == ["2.10.0"]
    # the mirror's own pylock carries the PEP 825 data of the locked label
    lock = tomllib.loads((out / "targets/cu128-py311-linux-x86_64/pylock.toml").read_text())
    torch = next(p for p in lock["packages"] if p["name"] == "torch")
    assert torch["variants-json"] == {"$schema": SCHEMA, "default-priorities": PRIORITIES, "providers": PROVIDERS,
                                      "variants": {"cuda12.8": CUDA}}
    assert "variants-json" not in next(p for p in lock["packages"] if p["name"] == "filelock")

    # the landing page says which label each target is, and how to install it
    landing = (out / "index.html").read_text()
    assert "variant cuda12.8" in landing
    assert "variant null" in landing
    assert "uv pip install --preview-features wheel-variants --index-url" in landing
    assert "pip install --index-url MIRROR_URL/whl/cpu" not in landing  # pip cannot install variant wheels

    # uv --preview-features wheel-variants, from the mirror alone, picks null on this CPU host
    venv = tmp_path / "venv"
    env = hermetic_env()
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, venv], check=True, env=env)
    with Server(out) as s:
        for index in (f"{s.url}/whl/cpu", f"{s.url}/whl"):  # the target's index, and every label together
            proc = subprocess.run([uv_bin(), "pip", "install", "--preview-features", "wheel-variants", "--reinstall",
                                   "--python", venv / "bin/python", "--index-url", index, "--no-cache", "torch"],
                                  capture_output=True, text=True, env=env)
            assert proc.returncode == 0, proc.stderr
            got = subprocess.run([venv / "bin/python", "-c", "import torch; print(torch.LABEL)"],
                                 capture_output=True, text=True)
            assert got.stdout.strip() == "null", got.stderr

        # ls: rows by the accelerator each label names, and the labels
        proc = subprocess.run([sys.executable, "-m", "torchdepot", "ls", "--index", f"{s.url}/whl"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "cu128" in proc.stdout, proc.stdout
        assert "cpu" in proc.stdout, proc.stdout
        assert "variant labels (PEP 825): cpu=null, cu128=cuda12.8" in proc.stdout, proc.stdout

        # `torchdepot lock` + `torchdepot verify`: the null lock installs with uv's preview flag
        td = [sys.executable, "-m", "torchdepot"]
        proc = subprocess.run([*td, "lock", "--mirror", out, "--out", tmp_path / "envs"], capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        envdir = tmp_path / "envs" / "cpu-py311-linux-x86_64"
        assert json.loads((envdir / "variant.json").read_text())["variant_labels"] == {"torch": "null"}
        assert "variants-json" in (envdir / "pylock.toml").read_text()
        proc = subprocess.run([*td, "verify", envdir, "--mirror", s.url, "--json"], capture_output=True, text=True,
                              env=env)
        report = proc.stdout
        assert '"install (hash-checked, mirror only)"' in report, report + proc.stderr
        assert proc.returncode == 0, report + proc.stderr
        (result,) = json.loads(report)["results"]
        assert result["result"] == "pass", report
        assert result["mode"] == "installed", report
        # the cuda12.8 lock: uv never selects a GPU variant on a host without one: said, not failed
        proc = subprocess.run([*td, "verify", tmp_path / "envs" / "cu128-py311-linux-x86_64", "--mirror", s.url,
                               "--json"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cuda12.8 needs its accelerator" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_changed_variants_json_is_fetched_again_and_republished(upstream, tmp_path):
    root, url = upstream
    out = tmp_path / "mirror"
    mirror(url, out, accelerators=("cpu",))
    first = next(f for f in mf.load(out).files if f.kind == "variants-json")
    old_bytes = (out / first.path).read_bytes()
    # upstream adds a label (a new xpu build): same name, new bytes
    write_variants_json(root, {"$schema": SCHEMA, "default-priorities": {"namespace": ["nvidia", "intel"]},
                               "variants": {**VARIANTS, "xpu": {"intel": {"device": ["xpu"]}}}})
    res, msgs = mirror(url, out, accelerators=("cpu",))
    second = next(f for f in mf.load(out).files if f.kind == "variants-json")
    new_sha = sha256(root / "whl/variant/torch/torch-2.10.0-variants.json")
    # the mirror holds only the null build: its file lists only null (PEP 825: the variants
    # available on the index), upstream's claim is recorded beside it
    assert second.upstream_sha256 == new_sha
    assert second.sha256 != first.sha256
    assert second.path == f"packages/torch/{second.sha256[:16]}/torch-2.10.0-variants.json"
    stored = json.loads((out / second.path).read_text())
    assert list(stored["variants"]) == ["null"]
    assert stored["default-priorities"] == {"namespace": ["nvidia", "intel"]}
    # nothing published is changed in place: the old path keeps its bytes while listed (the
    # publication step may drop it once superseded), the new bytes live at their own path
    old = out / first.path
    assert not old.exists() or old.read_bytes() == old_bytes
    assert (out / second.path).read_bytes() != old_bytes
    assert res.index_changed
    assert second.path.split("/", 2)[2] in (out / "whl/cpu/torch/index.html").read_text()
    # unchanged upstream: the next sync reads it again (not cached as immutable) and changes nothing
    res, _ = mirror(url, out, accelerators=("cpu",))
    assert not res.index_changed
    assert res.requests["metadata"] >= 1


def test_test_variant_channel_reads_its_own_tree(upstream, tmp_path):
    """``channel: test/variant`` reads ``/whl/test/variant/``, not the stable variant tree."""
    root, url = upstream
    (root / "whl" / "test").mkdir()
    (root / "whl" / "variant").rename(root / "whl" / "test" / "variant")
    spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "channel": "test/variant", "upstreams": [f"{url}/whl"],
                       "out": str(tmp_path / "m")}, "spec")
    res = sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lambda m: None,
               pip_sources=PipSources(index_url=f"{url}/simple"))
    assert files_of(res, "cpu")["torch"].endswith("-null.whl")
    assert res.plans[0].variant_url == f"{url}/whl/test/variant"


def test_variants_json_hash_mismatch_fails_or_is_recorded(upstream, tmp_path):
    root, url = upstream
    page = root / "whl/variant/torch/index.html"
    real = sha256(root / "whl/variant/torch/torch-2.10.0-variants.json")
    page.write_text(page.read_text().replace(real, "0" * 64))
    with pytest.raises(TorchdepotError, match=r"torch-2.10.0-variants.json: upstream declares sha256 0{64} but the file "
                                        rf"hashes to {real} \(on_hash_mismatch: fail\)"):
        mirror(url, tmp_path / "m1", accelerators=("cpu",))
    # both builds mirrored: the stored file is upstream's, byte for byte (a subset would be ours)
    spec = parse_spec({"accelerators": ["cpu", "cu128"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                       "extra_packages": [], "channel": "variant", "upstreams": [f"{url}/whl"],
                       "out": str(tmp_path / "m2"), "on_hash_mismatch": "warn"}, "spec")
    msgs: list[str] = []
    sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=msgs.append,
         pip_sources=PipSources(index_url=f"{url}/simple"))
    (vj,) = [f for f in mf.load(tmp_path / "m2").files if f.kind == "variants-json"]
    assert vj.sha256 == real
    assert vj.upstream_sha256 == "0" * 64
    assert vj.hash_mismatch
    assert any(m.startswith("warning: torch-2.10.0-variants.json: upstream declares") for m in msgs), msgs
