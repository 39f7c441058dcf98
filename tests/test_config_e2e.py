"""End to end, as a lab user: ``torchdepot config pip|uv`` against a plain-HTTP mirror on a LAN
host name, then the real installer in a throwaway venv with only the config file written.

Two loopback indexes behind LAN names (tests/kit/lanproxy.py, via HTTP_PROXY):
- ``torchlab:8000``   the torchdepot mirror: torch 2.13.0+cu126 (and its manifest.json);
- ``regional.lab``   the user's own index (a regional mirror of the public index): an
                     unlabelled, NEWER torch 2.14.0 and ``pandalike`` (pandas' stand-in).
The user's config points at ``regional.lab`` before ``config`` runs. After it:
``pip install torch`` gives 2.13.0+cu126 (the newer torch must not win), and
``pip install pandalike`` still works. A control run without the pins shows 2.14.0 WOULD win.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.kit.lanproxy import LanProxy
from tests.kit.upstream import pep503
from tests.kit.wheels import build_wheel
from tests.mirror_fixture import _add_wheel, write_pages
from tests.venvs import hermetic_env, make_venv
from torchdepot.store import manifest as mf

MIRROR = "http://torchlab:8000"
REGIONAL = "http://regional.lab"
TORCHDEPOT = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "torchdepot"


def _mirror(root: Path, scratch: Path) -> None:
    files: list[mf.FileEntry] = []
    cu126 = [_add_wheel(root, build_wheel(scratch, "torch", "2.13.0+cu126"), files)]
    write_pages(root, "g1", {"whl/cu126": cu126}, {f.path: f for f in files})
    target = mf.Target(id="cu126-py311-linux-x86_64", kind="pip", accelerator="cu126", python="3.11",
                       platform="linux-x86_64", index="whl/cu126",
                       packages=tuple(mf.TargetPackage(name=e.project, version=e.version, path=e.path) for e in cu126))
    mf.save(root, mf.Manifest(files=files, targets=[target], spec={"packages": ["torch"]}))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    _mirror(base / "mirror", base / "scratch")
    # a plain PEP 503 index, as a regional mirror of the public index serves it
    pep503([build_wheel(base / "scratch2", "torch", "2.14.0"), build_wheel(base / "scratch2", "pandalike", "1.0")],
           pages=["/simple"], files="/files", metadata=False).write(base / "regional")
    with Server(base / "mirror") as m, Server(base / "regional") as r, \
            LanProxy({"torchlab:8000": m.httpd.server_address[:2], "regional.lab": r.httpd.server_address[:2]}) as proxy:
        yield base, proxy


def _env(proxy: LanProxy, tmp: Path, **extra: str) -> dict[str, str]:
    env = proxy.env(hermetic_env(PIP_CACHE_DIR=str(tmp / "pip-cache"), UV_CACHE_DIR=str(tmp / "uv-cache")))
    env.update(extra)
    return env


def _torchdepot(proxy: LanProxy, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # pip's global/user file locations in tmp: this machine's own pip config is not the user's
    env = _env(proxy, tmp, XDG_CONFIG_DIRS=str(tmp / "xdg"), XDG_CONFIG_HOME=str(tmp / "home" / ".config"),
               HOME=str(tmp / "home"))
    proc = subprocess.run([str(TORCHDEPOT), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_pip_install_torch_from_mirror_pandas_from_users_index(lab, tmp_path):
    _, proxy = lab
    conf = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(textwrap.dedent(f"""\
        [global]
        index-url = {REGIONAL}/simple
        trusted-host = regional.lab
        """))
    _torchdepot(proxy, tmp_path, "config", "pip", "--url", MIRROR, "--variant", "cu126", "--file", str(conf))
    assert f"index-url = {REGIONAL}/simple" in conf.read_text()

    py = make_venv(tmp_path / "venv")
    env = _env(proxy, tmp_path, PIP_CONFIG_FILE=str(conf))  # only the file `config pip` wrote
    # control: without the pins pip takes the highest version across both indexes (the fixture bites)
    ctl = subprocess.run([str(py), "-m", "pip", "download", "torch", "--no-deps", "-d", str(tmp_path / "dl")],
                         capture_output=True, text=True, env={**env, "PIP_CONSTRAINT": os.devnull})
    assert ctl.returncode == 0, ctl.stderr
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["torch-2.14.0-py3-none-any.whl"]

    for project in ("torch", "pandalike"):
        proc = subprocess.run([str(py), "-m", "pip", "install", project], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    out = subprocess.run([str(py), "-c", "import torch, pandalike; print(torch.__version__, pandalike.__version__)"],
                         capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["2.13.0+cu126", "1.0"], out.stderr
    seen = proxy.seen
    assert any(s.startswith(f"GET {MIRROR}/whl/cu126/torch") for s in seen)  # pip asked the LAN name
    assert any(s.startswith(f"GET {REGIONAL}/simple/pandalike") for s in seen)


def test_uv_pip_install_torch_from_mirror_pandas_from_users_index(lab, tmp_path):
    from torchdepot.resolve.uv import uv_bin

    _, proxy = lab
    cfg = tmp_path / "uv.toml"
    cfg.write_text(f'[[index]]\nname = "regional"\nurl = "{REGIONAL}/simple"\ndefault = true\n')
    _torchdepot(proxy, tmp_path, "config", "uv", "--url", MIRROR, "--variant", "cu126", "--file", str(cfg))
    py = make_venv(tmp_path / "venv")
    env = _env(proxy, tmp_path, UV_CONFIG_FILE=str(cfg))
    env.pop("UV_NO_CONFIG", None)
    proc = subprocess.run([uv_bin(), "pip", "install", "--python", str(py), "torch", "pandalike"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = subprocess.run([str(py), "-c", "import torch, pandalike; print(torch.__version__, pandalike.__version__)"],
                         capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["2.13.0+cu126", "1.0"], out.stderr


def test_config_pip_refuses_a_variant_the_lan_mirror_lacks(lab, tmp_path):
    _, proxy = lab
    conf = tmp_path / "pip.conf"
    proc = subprocess.run([str(TORCHDEPOT), "config", "pip", "--url", MIRROR, "--variant", "cu128", "--file", str(conf)],
                          capture_output=True, text=True, env=_env(proxy, tmp_path))
    assert proc.returncode == 1
    assert not conf.exists()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cu128" in lines[0], proc.stderr
    assert "cu126" in lines[0], proc.stderr
