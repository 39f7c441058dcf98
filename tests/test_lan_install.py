"""Issue 14 part 2, end to end: every install command torchdepot prints for a plain-HTTP
mirror on a LAN host works verbatim.

The mirror (small real wheels: torch stand-in requiring filelock) is served on loopback and
reached as ``http://torchlab:8000`` through tests/kit/lanproxy.py, so pip applies its
plain-HTTP trust rule exactly as on a lab LAN. Each printed command runs exactly as printed
(``bash -c``) in a throwaway venv whose ``bin`` is first on PATH, hermetic otherwise
(PIP_CONFIG_FILE=/dev/null, no UV config); afterwards ``import torch`` must work.
Sources of printed commands: requirements.lock's header (``lock --base-url``), the landing
page rendered for the address (``landing --base-url``), and the landing page as a browser
shows it when loaded from ``http://torchlab:8000`` (its script fills address and trust in).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.httpserver import Server
from tests.kit.lanproxy import LanProxy
from tests.kit.lockmirror import build_mirror
from tests.kit.wheels import build_wheel
from tests.venvs import hermetic_env, make_venv
from torchdepot.cli import main
from torchdepot.site.landing import write_landing
from torchdepot.store import manifest as mf

LAN = "http://torchlab:8000"
TID = "cpu-py311-linux-x86_64"
VENV_PY = "bin/python"
pytestmark = pytest.mark.e2e


def _cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def printed_commands(page: str) -> list[str]:
    """The commands in the page's ``<pre class="cmd">`` blocks, as a user would copy them."""
    blocks = re.findall(r'<pre class="cmd"><code>(.*?)</code></pre>', page, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", b)).strip() for b in blocks]


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lan")
    wheels = [build_wheel(tmp / "w", "torch", "2.13.0+cpu", requires=("filelock>=3",)),
              build_wheel(tmp / "w", "filelock", "3.0.0")]
    root = tmp / "mirror"
    build_mirror(root, wheels)
    _cli("lock", "--mirror", str(root), "--out", str(root / "envs"))  # placeholder base, served with the mirror
    _cli("lock", "--mirror", str(root), "--out", str(tmp / "lan-envs"), "--base-url", LAN)
    venv = tmp / "venv"
    make_venv(venv)
    with Server(root) as server, LanProxy({"torchlab:8000": server.httpd.server_address[:2]}) as proxy:
        path = os.pathsep.join([str(venv / "bin"), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # no caches: every run must fetch through the LAN name, as a first install does
        env = proxy.env(hermetic_env(PATH=path, VIRTUAL_ENV=str(venv), PIP_NO_CACHE_DIR="1", UV_NO_CACHE="1"))
        yield {"root": root, "tmp": tmp, "venv": venv, "env": env, "proxy": proxy}


def run_printed(lan, command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` exactly as printed; check torch imports; leave the venv clean again."""
    seen = len(lan["proxy"].seen)
    proc = subprocess.run(["bash", "-c", command], cwd=cwd or lan["tmp"], env=lan["env"], capture_output=True,
                          text=True, timeout=180)
    if proc.returncode == 0:
        py = lan["venv"] / VENV_PY
        check = subprocess.run([py, "-c", "import torch, filelock; print(torch.__version__)"], capture_output=True,
                               text=True, env=lan["env"])
        assert check.stdout.strip() == "2.13.0+cpu", (command, check.stderr)
        assert any("torchlab:8000" in r for r in lan["proxy"].seen[seen:]), "did not go through the LAN name"
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "torch", "filelock"], env=lan["env"], check=True,
                       capture_output=True)
    return proc


def test_requirements_lock_header_command_verbatim(lan):
    d = lan["tmp"] / "lan-envs" / TID
    header = next(ln for ln in (d / "requirements.lock").read_text().splitlines() if ln.startswith("# install: "))
    command = header.removeprefix("# install: ")
    assert command == "pip install --require-hashes --no-deps -r requirements.lock"
    proc = run_printed(lan, command, cwd=d)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]


def test_landing_commands_for_a_given_address_verbatim(lan):
    root = lan["root"]
    _cli("landing", "--mirror", str(root), "--base-url", LAN)
    commands = [c for c in printed_commands((root / "index.html").read_text()) if "pip install" in c]
    ran = 0
    for command in commands:
        if "/whl/cpu " not in command and TID not in command:
            continue  # other variants of the page; this mirror holds cpu only
        proc = run_printed(lan, command)
        assert proc.returncode == 0, (command, proc.stdout[-1500:] + proc.stderr[-1500:])
        ran += 1
    assert ran == 3, commands  # pip, uv pip, and the hashed requirements.lock install
    assert f"pip install --index-url {LAN}/whl/cpu --trusted-host torchlab:8000 torch==2.13.0+cpu" in commands
    assert f"uv pip install --index-url {LAN}/whl/cpu --allow-insecure-host torchlab:8000 torch==2.13.0+cpu" in commands


def test_without_trust_pip_refuses_the_lan_host(lan):
    """The control that makes the tests above able to fail: the same command minus --trusted-host."""
    proc = run_printed(lan, f"pip install --index-url {LAN}/whl/cpu torch==2.13.0+cpu")
    assert proc.returncode != 0
    assert "not a trusted or secure host" in proc.stdout + proc.stderr


def test_landing_page_as_a_browser_shows_it_from_the_lan_host(lan, tmp_path):
    """Default page (no --base-url): headless Chromium loads it as http://torchlab:8000/ through the
    proxy; its script fills address and trust options in; those commands run verbatim."""
    exe = shutil.which("chromium")
    assert exe, "chromium not installed: apt-get install -y chromium (.ci/run installs it)"
    root = lan["root"]
    write_landing(root, mf.load(root))
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-server={lan['proxy'].url}", "--dump-dom", LAN + "/"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)})
    assert dom.returncode == 0, dom.stderr[-2000:]
    commands = [c for c in printed_commands(dom.stdout) if "pip install" in c and ("/whl/cpu " in c or TID in c)]
    assert f"pip install --index-url {LAN}/whl/cpu --trusted-host torchlab:8000 torch==2.13.0+cpu" in commands
    assert len(commands) == 3, commands
    for command in commands:
        proc = run_printed(lan, command)
        assert proc.returncode == 0, (command, proc.stdout[-1500:] + proc.stderr[-1500:])


@pytest.mark.parametrize(("url", "host"), [
    ("http://torchlab:8000", "torchlab:8000"), ("http://TorchLab/whl/cpu", "torchlab"), ("http://u:p@lab:81/x", "lab:81"),
    ("http://[fd00::1]:8000/", "[fd00::1]:8000"), ("http://10.0.0.5:8000", "10.0.0.5:8000"),
    ("https://torchlab", None), ("http://localhost:8000", None), ("http://127.9.9.9", None), ("http://[::1]:80", None),
    ("file:///srv/m", None), ("${TORCHDEPOT_MIRROR}", None), ("http://h:bad/", None),
])
def test_which_hosts_need_trust(url, host):
    from torchdepot.model.trust import insecure_host, pip_trust_args, uv_trust_args

    assert insecure_host(url) == host
    assert pip_trust_args(url) == (("--trusted-host", host) if host else ())
    assert uv_trust_args(url) == (("--allow-insecure-host", host) if host else ())
