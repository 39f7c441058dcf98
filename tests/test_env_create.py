"""``torchdepot env create`` (issue 14 part 5), end to end with the real ipykernel and jupyter_client.

A hand-built mirror (stand-in torch + filelock, locked) also serves ipykernel and its real
dependency wheels (fetched once with the machine's pip configuration into a cache outside the
repo) in its ``whl/cpu`` index, unlocked. It is reached as ``http://torchlab:8000`` through
the LAN proxy. The command runs as a user runs it; Jupyter's own ``jupyter kernelspec list``
(from the created env) must show the kernel, and a kernel started from it must import torch.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.conftest import TORCH_CACHE
from tests.httpserver import Server
from tests.kit.lanproxy import LanProxy
from tests.kit.lockmirror import build_mirror, cli, fake_torch_wheels
from tests.venvs import hermetic_env
from torchdepot.store.fsutil import sha256_file

LAN = "http://torchlab:8000"
TID = "cpu-py311-linux-x86_64"
TD = Path(sys.executable).parent / "torchdepot"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def jupyter_wheels() -> list[Path]:
    cache = TORCH_CACHE / f"jupyter-py{sys.version_info[0]}{sys.version_info[1]}"
    if not (cache / "done").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "ipykernel",
                               "-d", str(cache)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot obtain ipykernel and its dependencies: {proc.stderr.strip()[-300:]}")
        (cache / "done").write_text("ok\n")
    return sorted(cache.glob("*.whl"))


def add_unlocked(root: Path, wheels: list[Path], acc: str = "cpu") -> None:
    """Serve ``wheels`` in ``whl/<acc>/`` (and packages/) without putting them in any lock."""
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        by_project.setdefault(str(canonicalize_name(parse_wheel_filename(w.name)[0])), []).append(w)
    for proj, ws in by_project.items():
        links = []
        for w in ws:
            dest = root / "packages" / proj / w.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(w, dest)
            links.append(f'<a href="../../../packages/{proj}/{urllib.parse.quote(w.name)}#sha256={sha256_file(dest)[0]}">'
                         f"{html.escape(w.name)}</a><br/>")
        page = root / "whl" / acc / proj / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")


@pytest.fixture
def site(tmp_path, jupyter_wheels):
    root = tmp_path / "mirror"
    build_mirror(root, fake_torch_wheels(tmp_path / "w"))
    assert cli("lock", "--mirror", root, "--out", tmp_path / "envs").exit_code == 0
    add_unlocked(root, jupyter_wheels)
    home = tmp_path / "home"
    home.mkdir()
    with Server(root) as server, LanProxy({"torchlab:8000": server.httpd.server_address[:2]}) as proxy:
        env = proxy.env(hermetic_env(HOME=str(home), JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data")))
        yield {"root": root, "envs": tmp_path / "envs", "env": env, "tmp": tmp_path, "proxy": proxy}


def td(site, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([TD, *map(str, args)], env=site["env"], capture_output=True, text=True, timeout=300, **kw)


def test_env_create_registers_a_kernel_jupyter_lists_and_runs(site):
    prefix = site["tmp"] / "envs-persistent" / "torch-cpu"
    proc = td(site, "env", "create", site["envs"] / TID, "--prefix", prefix, "--mirror", LAN,
              "--register-kernel", "torch-cpu", "--display-name", "PyTorch (CPU, lab mirror)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"created {prefix} in ")
    assert "registered Jupyter kernel torch-cpu" in proc.stdout
    assert "smoke" not in proc.stderr or "fail" not in proc.stderr
    assert any(r.startswith(f"GET {LAN}/whl/cpu/ipykernel/") for r in site["proxy"].seen)  # from the mirror only
    # Jupyter's own view, from the created env (jupyter_client came from the mirror)
    listed = subprocess.run([prefix / "bin" / "jupyter", "kernelspec", "list", "--json"], env=site["env"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    specs = json.loads(listed.stdout)["kernelspecs"]
    spec = specs["torch-cpu"]
    assert Path(spec["resource_dir"]).parent.parent == site["tmp"] / "jupyter-data"
    assert spec["spec"]["display_name"] == "PyTorch (CPU, lab mirror)"
    assert Path(spec["spec"]["argv"][0]).parent.parent == prefix  # the persistent env's python
    # the locked packages are exactly the locked versions; a kernel started from the spec imports torch
    run = subprocess.run([prefix / "bin" / "python", "-c", (
        "from jupyter_client.manager import start_new_kernel\n"
        "km, kc = start_new_kernel(kernel_name='torch-cpu', startup_timeout=60)\n"
        "out = []\n"
        "kc.execute_interactive('import torch, filelock, sys; print(torch.__version__, sys.prefix)', timeout=60,\n"
        "                       output_hook=lambda m: out.append(m['content'].get('text', '')))\n"
        "kc.stop_channels(); km.shutdown_kernel(now=True)\n"
        "print(''.join(out).strip())\n")], env=site["env"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == f"2.13.0+cpu {prefix}"


def test_mirror_without_ipykernel_says_so_in_one_line_before_creating_anything(site):
    shutil.rmtree(site["root"] / "whl" / "cpu" / "ipykernel")
    prefix = site["tmp"] / "p"
    proc = td(site, "env", "create", site["envs"] / TID, "--prefix", prefix, "--mirror", LAN, "--register-kernel", "k")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("torchdepot: error: ipykernel is not on the mirror")
    assert proc.stderr.count("\n") == 1
    assert "add ipykernel to extra_packages" in proc.stderr
    assert not prefix.exists()


def test_env_without_kernel_and_prefix_never_overwritten(site):
    prefix = site["tmp"] / "plain"
    proc = td(site, "env", "create", site["envs"] / TID, "--prefix", prefix, "--mirror", LAN)
    assert proc.returncode == 0, proc.stderr
    assert "install (hash-checked, mirror only): pass" in proc.stderr
    assert "tensor op: pass" in proc.stderr
    assert not (prefix / "lib" / "python3.11" / "site-packages" / "ipykernel").exists()
    # the same prefix again: refused, nothing touched
    before = sorted(p.relative_to(prefix) for p in prefix.rglob("*"))
    again = td(site, "env", "create", site["envs"] / TID, "--prefix", prefix, "--mirror", LAN)
    assert again.returncode == 1
    assert "already exists and is not an empty directory" in again.stderr
    assert sorted(p.relative_to(prefix) for p in prefix.rglob("*")) == before


def test_tampered_lock_is_refused_before_install(site):
    req = site["envs"] / TID / "requirements.lock"
    text = req.read_text()
    sha = text.split("--hash=sha256:")[1][:64]
    req.write_text(text.replace(sha, "0" * 64))
    proc = td(site, "env", "create", site["envs"] / TID, "--prefix", site["tmp"] / "t", "--mirror", LAN)
    assert proc.returncode == 1
    assert proc.stderr.startswith("torchdepot: error: ")
    assert proc.stderr.count("\n") == 1
    assert not (site["tmp"] / "t").exists()


def test_usage_errors_exit_2(site):
    bad = td(site, "env", "create", site["envs"] / TID, "--prefix", site["tmp"] / "x", "--register-kernel", "no spaces")
    assert bad.returncode == 2
    assert "--register-kernel" in bad.stderr
    bad = td(site, "env", "create", site["envs"] / TID, "--prefix", site["tmp"] / "x", "--display-name", "X")
    assert bad.returncode == 2
    assert "--display-name needs --register-kernel" in bad.stderr


def _floor_2_28(wheel: Path, dest: Path) -> Path:
    """A cached wheel built for a newer glibc (debugpy: manylinux_2_34), re-tagged manylinux_2_28:
    the mirror's linux-x86_64 target takes glibc <= 2.28, as the public index's older builds are.
    The bytes still run here (this host's glibc is newer); WHEEL and RECORD say the new tag."""
    import base64
    import hashlib
    import zipfile

    m = re.search(r"manylinux_2_(\d+)_x86_64", wheel.name)
    if m is None or int(m.group(1)) <= 28:
        return wheel
    out = dest / re.sub(r"manylinux_2_\d+_x86_64", "manylinux_2_28_x86_64", wheel.name)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        members = {i.filename: src.read(i) for i in src.infolist()}
        info = next(n for n in members if n.endswith(".dist-info/WHEEL"))
        members[info] = re.sub(rb"manylinux_2_\d+_x86_64", b"manylinux_2_28_x86_64", members[info])
        record = next(n for n in members if n.endswith(".dist-info/RECORD"))
        digest = base64.urlsafe_b64encode(hashlib.sha256(members[info]).digest()).rstrip(b"=").decode()
        lines = [f"{info},sha256={digest},{len(members[info])}" if ln.startswith(info + ",") else ln
                 for ln in members[record].decode().splitlines()]
        members[record] = ("\n".join(lines) + "\n").encode()
        for name, data in members.items():
            dst.writestr(name, data)
    return out


def test_walkthrough_step5_ipykernel_comes_from_extra_packages(tmp_path, jupyter_wheels):
    """README step 5 as written (issue 22 item 23): ipykernel is added to the spec's
    extra_packages and the mirror synced with the real `torchdepot mirror`; then the lock is
    written with --base-url http://torchlab:8000 and `env create --register-kernel` runs against
    it through the LAN name. Before, the walkthrough skipped the first step and failed."""
    from tests.kit.upstream import pep503
    from tests.loopback_upstream import mirror_env

    wheels = fake_torch_wheels(tmp_path / "w")
    torch = [w for w in wheels if w.name.startswith("torch-")]
    deps = [w for w in wheels if not w.name.startswith("torch-")]
    deps += [_floor_2_28(w, tmp_path / "w") for w in jupyter_wheels]
    tree = pep503(torch, pages=["/whl/cpu"], files="/whl/cpu", indexes=False)
    tree |= pep503(deps, pages=["/simple"], files="/files", metadata=False)
    tree.write(tmp_path / "up")
    root, home = tmp_path / "mirror", tmp_path / "home"
    home.mkdir()
    with Server(tmp_path / "up") as up:
        spec = tmp_path / "mirror.yaml"
        spec.write_text(f"packages: [torch]\nextra_packages: [filelock, ipykernel]\naccelerators: [cpu]\n"
                        f"pythons: ['3.11']\nplatforms: [linux-x86_64]\nupstreams: ['{up.url}/whl']\nout: {root}\n")
        synced = subprocess.run([TD, "mirror", "--spec", str(spec)], env=mirror_env(up.url, tmp_path),
                                capture_output=True, text=True, timeout=600)
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert list((root / "packages" / "ipykernel").glob("ipykernel-*.whl"))
    locked = subprocess.run([TD, "lock", "--mirror", str(root), "--out", str(tmp_path / "envs"), "--base-url", LAN],
                            capture_output=True, text=True, timeout=120)
    assert locked.returncode == 0, locked.stderr
    with Server(root) as server, LanProxy({"torchlab:8000": server.httpd.server_address[:2]}) as proxy:
        env = proxy.env(hermetic_env(HOME=str(home), JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data")))
        prefix = tmp_path / "envs-persistent" / "torch-cpu"
        proc = subprocess.run([TD, "env", "create", str(tmp_path / "envs" / TID), "--prefix", str(prefix),
                               "--mirror", LAN, "--register-kernel", "torch-cpu"],
                              env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "registered Jupyter kernel torch-cpu" in proc.stdout
    assert any(r.startswith(f"GET {LAN}/whl/cpu/ipykernel/") for r in proxy.seen)
