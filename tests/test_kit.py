"""The shared test builders (tests/kit) make what they claim: valid wheels whose RECORD,
METADATA and sidecar agree, PEP 825 variant names the parser reads, and upstream pages that
the project's own PEP 503 parser reads back with the right hashes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from email.parser import Parser

from packaging.utils import parse_wheel_filename

from tests.kit.torchmirror import TorchMirror, _state
from tests.kit.upstream import Tree, pep503, pytorch_upstreams
from tests.kit.wheels import build_wheel, wheel_bytes, wheel_metadata
from torchdepot.model.wheelname import parse_wheel
from torchdepot.sources.pep503 import parse_html


def test_wheel_record_metadata_and_sidecar_agree(tmp_path):
    path = build_wheel(tmp_path, "typing-extensions", "4.12.2", requires=("a>=1",), requires_python=">=3.9",
                       sidecar=True)
    assert path.name == "typing_extensions-4.12.2-py3-none-any.whl"
    assert parse_wheel_filename(path.name)[1].public == "4.12.2"
    with zipfile.ZipFile(path) as zf:
        record = zf.read("typing_extensions-4.12.2.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = zf.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert len(record) == len(zf.namelist())
    meta = Parser().parsestr(wheel_metadata(path).decode())
    assert (meta["Name"], meta["Version"], meta["Requires-Python"]) == ("typing-extensions", "4.12.2", ">=3.9")
    assert meta.get_all("Requires-Dist") == ["a>=1"]
    assert path.with_name(path.name + ".metadata").read_bytes() == wheel_metadata(path)
    assert wheel_bytes("typing-extensions", "4.12.2", requires=("a>=1",), requires_python=">=3.9").data == path.read_bytes()


def test_variant_wheel_name_and_variant_json():
    wheel = wheel_bytes("torch", "2.10.0", "cp311-cp311-manylinux_2_28_x86_64", variant="cuda12.8", purelib=False)
    parsed = parse_wheel(wheel.filename)
    assert parsed.variant_label == "cuda12.8"
    with zipfile.ZipFile(io.BytesIO(wheel.data)) as zf:
        doc = json.loads(zf.read("torch-2.10.0.dist-info/variant.json"))
        assert "Root-Is-Purelib: false" in zf.read("torch-2.10.0.dist-info/WHEEL").decode()
    assert list(doc["variants"]) == ["cuda12.8"]


def test_pep503_pages_read_back_with_hashes_and_lies():
    good, dep = wheel_bytes("torch", "2.5.0+cpu", "cp311-cp311-manylinux_2_28_x86_64"), wheel_bytes("filelock", "3.0")
    a, b = pytorch_upstreams([good], [dep], "http://b.lab:81", wrong_sha={"filelock"})
    torch_page = parse_html(a.files["/whl/cpu/torch/index.html"], "http://a.lab/whl/cpu/torch/")
    (link,) = torch_page.links
    assert link.url == "http://a.lab/whl/cpu/torch-2.5.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert link.sha256 == good.sha256
    assert link.metadata_sha256 == hashlib.sha256(good.metadata).hexdigest()
    assert a.files["/whl/cpu/" + good.filename + ".metadata"] == good.metadata
    (dep_link,) = parse_html(a.files["/whl/cpu/filelock/index.html"], "http://a.lab/whl/cpu/filelock/").links
    assert dep_link.url == f"http://b.lab:81/files/{dep.filename}"
    assert dep_link.sha256 == "f" * 64
    assert "/files/" + dep.filename not in a.files
    assert b.files["/files/" + dep.filename] == dep.data
    (simple,) = parse_html(b.files["/simple/filelock/index.html"], "http://b.lab:81/simple/filelock/").links
    assert simple.sha256 == dep.sha256
    assert b"filelock/" in b.files["/simple/index.html"]


def test_tree_writes_and_links_files(tmp_path):
    real = build_wheel(tmp_path / "w", "demo", "1.0")
    tree = pep503([real], pages=["/simple"], files="/files") | Tree({"/extra.txt": b"x"})
    tree.write(tmp_path / "root")
    assert (tmp_path / "root/files/demo-1.0-py3-none-any.whl").resolve() == real.resolve()
    assert (tmp_path / "root/extra.txt").read_bytes() == b"x"
    before = _state(tmp_path / "root")
    (tmp_path / "root/extra.txt").write_bytes(b"yy")
    assert {p for p in before if before[p] != _state(tmp_path / "root").get(p)} == {"extra.txt"}


def test_torch_mirror_copy_shares_wheels_but_not_the_lock_file(tmp_path):
    root = tmp_path / "mirror"
    wheel = build_wheel(root / "packages" / "demo", "demo", "1.0")
    (root / ".torchdepot.lock").write_text("")
    shared = TorchMirror(root=root, spec=tmp_path / "spec", env={}, dead="", first_run=None, state=_state(root))
    copy = shared.copy(tmp_path / "copy")
    assert (copy / "packages/demo" / wheel.name).stat().st_ino == wheel.stat().st_ino
    (copy / ".torchdepot.lock").write_text("4242")  # what a run in the copy does to its lock
    assert shared.changed() == []
    (root / ".torchdepot.lock").write_text("4242")
    assert shared.changed() == [".torchdepot.lock"]
