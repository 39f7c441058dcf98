"""Why no build was pinned, in words a lab admin can act on (issue 22 items 21 and 22).

- torch + torchvision + torchaudio CPU with no PyTorch index: the public index's Linux wheels
  are unlabelled CUDA builds; say so and name what to add (the PyTorch index or a preset);
- a Python 3.9 target: "torch 2.13.0 needs Python >=3.10", not "no torch wheel"."""

from __future__ import annotations

import urllib.parse

from tests.httpserver import Server
from tests.kit.upstream import Tree, page, pep503
from tests.kit.wheels import wheel_bytes
from tests.loopback_upstream import mirror_env, run_mirror
from torchdepot.model.presets import UPSTREAM_PRESETS
from torchdepot.resolve.pin import no_pin_reason
from torchdepot.sources.links import Link

LINUX = "manylinux_2_28_x86_64"


def _links(names: list[str], requires_python: str | None = None) -> list[Link]:
    return [Link(url=f"http://idx.example/files/{urllib.parse.quote(n)}", filename=n,
                 requires_python=requires_python) for n in names]


def test_a_python_the_builds_do_not_support_names_the_python_they_need():
    links = _links([f"torch-2.13.0+cpu-cp{v}-cp{v}-{LINUX}.whl" for v in (310, 311, 312, 313, 314)], ">=3.10")
    why = no_pin_reason(links, "torch", "cpu", "3.9", "linux-x86_64")
    assert why == ("torch 2.13.0 needs Python >=3.10 (its cpu wheels for linux-x86_64 are for Python "
                   "3.10, 3.11, 3.12, 3.13, 3.14); this target is Python 3.9")
    without_metadata = no_pin_reason(_links([f"torch-2.13.0+cpu-cp{v}-cp{v}-{LINUX}.whl" for v in (310, 311)]),
                                     "torch", "cpu", "3.9", "linux-x86_64")
    assert without_metadata.startswith("torch 2.13.0 needs Python 3.10 to 3.11")


def test_only_cuda_builds_names_them_and_what_to_add():
    """The public index's Linux torchvision: no local label (a CUDA build); a cu128 build too."""
    links = _links([f"torchvision-0.28.0-cp311-cp311-{LINUX}.whl",
                    f"torchvision-0.28.0+cu128-cp311-cp311-{LINUX}.whl",
                    "torchvision-0.28.0-cp311-cp311-win_amd64.whl"])
    why = no_pin_reason(links, "torchvision", "cpu", "3.11", "linux-x86_64")
    assert why.startswith("the torchvision wheels found for Python 3.11, linux-x86_64 are cu128, "
                          "unlabelled (CUDA) builds, none cpu: add the PyTorch index to upstreams (official")
    for name in UPSTREAM_PRESETS:
        assert name in why


def test_nothing_to_say_when_there_is_nothing():
    assert no_pin_reason([], "torch", "cpu", "3.11", "linux-x86_64") is None
    assert no_pin_reason(_links(["torch-2.0-cp311-cp311-win_amd64.whl"]), "torch", "cpu", "3.11",
                         "linux-x86_64") is None


def test_python_39_target_gets_the_python_it_needs_from_the_cli(tmp_path):
    wheels = [wheel_bytes("torch", "2.13.0+cpu", f"cp{v}-cp{v}-{LINUX}", (), ">=3.10") for v in (310, 311)]
    tree = Tree()
    for w in wheels:
        tree.add(f"/whl/cpu/{w.filename}", w.data)
    tree.add("/whl/cpu/torch/index.html", page(
        f'<a href="/whl/cpu/{urllib.parse.quote(w.filename)}#sha256={w.sha256}" data-requires-python="&gt;=3.10">'
        f"{w.filename}</a>" for w in wheels))
    tree |= pep503([], pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    spec = tmp_path / "spec.yaml"
    with Server(tmp_path / "up") as srv:
        spec.write_text(f"packages: [torch]\nextra_packages: []\naccelerators: [cpu]\npythons: ['3.9']\n"
                        f"platforms: [linux-x86_64]\nupstreams: ['{srv.url}/whl']\nout: {tmp_path / 'out'}\n")
        proc = run_mirror(spec, mirror_env(srv.url, tmp_path))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("torchdepot: error: cpu-py39-linux-x86_64: no torch wheel for cpu, Python 3.9, linux-x86_64: "
                    "torch 2.13.0 needs Python >=3.10 (its cpu wheels for linux-x86_64 are for Python 3.10, 3.11); "
                    "this target is Python 3.9"), proc.stderr


def test_a_plain_folder_of_wheels_is_a_find_links_upstream(tmp_path):
    """Issue 22 item 21: ``upstreams: [file:///srv/wheels]`` with the wheels right in it (no
    ``cpu/`` below) was refused ("has no cpu torch index"); pip reads such a folder as
    find-links, and so does the mirror now."""
    from torchdepot.net.http import HttpConfig, make_session
    from torchdepot.net.pipconfig import PipSources
    from torchdepot.spec.mirror import parse_spec
    from torchdepot.store import manifest as mf
    from torchdepot.sync.pip import sync

    torch = wheel_bytes("torch", "2.13.0+cpu", f"cp311-cp311-{LINUX}", ("filelock",), ">=3.10")
    filelock = wheel_bytes("filelock", "3.20.0")
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / torch.filename).write_bytes(torch.data)
    pep503([filelock], pages=["/simple"], files="/files", metadata=False).write(tmp_path / "up")
    with Server(tmp_path / "up") as srv:
        spec = parse_spec({"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
                           "extra_packages": [], "upstreams": [folder.as_uri()], "out": str(tmp_path / "out"),
                           "jobs": 2}, "test spec")
        lines: list[str] = []
        sync(spec, client=make_session(HttpConfig(retries=0)), progress=False, echo=lines.append,
             pip_sources=PipSources(index_url=srv.url + "/simple"))
    assert not [ln for ln in lines if "has no cpu torch index" in ln], lines
    files = {e.path: e for e in mf.load(tmp_path / "out").files}
    assert f"packages/torch/{torch.filename}" in files
    assert files[f"packages/torch/{torch.filename}"].sha256 == torch.sha256
    assert "packages/filelock/filelock-3.20.0-py3-none-any.whl" in files
