"""Config writers against real files: merge keeps unrelated content, backup, dry-run, malformed,
and a writer SIGKILLed mid-write leaves the old or the new file, never a truncated one."""

from __future__ import annotations

import configparser
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomlkit
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from torchdepot.cli import main
from torchdepot.clientconfig import ini
from torchdepot.clientconfig import pip as pip_cfg
from torchdepot.clientconfig import uv as uv_cfg

URL = "http://127.0.0.1:8080"

PIP_OLD = textwrap.dedent("""\
    # lab pip settings -- keep this comment
    [global]
    timeout = 60
    ; an old mirror
    index_url = https://old.example/simple
    trusted-host = old.example

    [install]
    # never cache here
    no-cache-dir = true
    """)

UV_OLD = textwrap.dedent("""\
    # uv settings, hand written
    native-tls = true  # our proxy

    [[index]]
    name = "internal"   # company index
    url = "https://internal.example/simple"
    default = true

    [pip]
    compile-bytecode = true
    """)

CONDA_OLD = textwrap.dedent("""\
    # my condarc
    channels:
      - defaults
    ssl_verify: false   # corporate proxy
    envs_dirs:
      - /data/envs  # big disk
    """)


def run(*args, **kw):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False, **kw)
    return res


def backups(p: Path) -> list[Path]:
    return sorted(p.parent.glob(p.name + ".bak-*"))


def test_pip_merge_keeps_comments_and_keys(tmp_path):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    res = run("config", "pip", "--url", URL, "--file", str(f), "--variant", "cu128")
    assert res.exit_code == 0, res.output
    new = f.read_text()
    # every untouched line survives byte for byte
    for line in PIP_OLD.splitlines():
        if not line.startswith(("index_url", "trusted-host")):
            assert line in new.splitlines()
    cp = configparser.RawConfigParser()
    cp.read_string(new)
    assert cp.get("global", "index_url") == f"{URL}/whl/cu128"  # original spelling kept, value replaced
    assert cp.get("global", "trusted-host").split() == ["old.example", "127.0.0.1:8080"]
    assert cp.get("install", "no-cache-dir") == "true"
    assert [b.read_text() for b in backups(f)] == [PIP_OLD]
    assert f"export PIP_INDEX_URL={URL}/whl/cu128" in res.output
    assert "export PIP_TRUSTED_HOST=127.0.0.1:8080" in res.output


def test_pip_https_gets_no_trusted_host_and_new_file(tmp_path):
    f = tmp_path / "sub" / "pip.conf"
    res = run("config", "pip", "--url", "https://mirror.lab", "--file", str(f))
    assert res.exit_code == 0, res.output
    assert f.read_text() == "[global]\nindex-url = https://mirror.lab/whl/cpu\n"
    assert backups(f) == []  # nothing to back up
    assert "PIP_TRUSTED_HOST" not in res.output


def test_pip_rerun_is_idempotent(tmp_path):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    run("config", "pip", "--url", URL, "--file", str(f))
    once = f.read_text()
    res = run("config", "pip", "--url", URL, "--file", str(f))
    assert f.read_text() == once and "already up to date" in res.output
    assert len(backups(f)) == 1


def test_uv_merge(tmp_path):
    f = tmp_path / "uv.toml"
    f.write_text(UV_OLD)
    res = run("config", "uv", "--url", URL, "--file", str(f))
    assert res.exit_code == 0, res.output
    new = f.read_text()
    assert "# uv settings, hand written" in new and "# our proxy" in new and "# company index" in new
    doc = tomlkit.parse(new)
    idx = [dict(e) for e in doc["index"]]
    assert idx[0] == {"name": "torchdepot-cpu", "url": f"{URL}/whl/cpu", "explicit": True}
    assert idx[1] == {"name": "torchdepot", "url": f"{URL}/whl/cpu", "default": True}
    assert idx[2] == {"name": "internal", "url": "https://internal.example/simple"}  # default moved to the mirror
    assert doc["pip"]["compile-bytecode"] is True and doc["native-tls"] is True
    assert [b.read_text() for b in backups(f)] == [UV_OLD]
    assert f"UV_INDEX=torchdepot-cpu={URL}/whl/cpu" in res.output
    assert f"UV_DEFAULT_INDEX={URL}/whl/cpu" in res.output
    # re-run replaces our entries instead of duplicating them
    run("config", "uv", "--url", URL, "--file", str(f), "--variant", "cu126")
    names = [str(e["name"]) for e in tomlkit.parse(f.read_text())["index"]]
    assert names.count("torchdepot") == 1 and "torchdepot-cu126" in names


def test_uv_is_understood_by_uv(tmp_path):
    """uv itself accepts the file we wrote (parse errors would fail this)."""
    from torchdepot.verify.run import uv_bin

    f = tmp_path / "uv.toml"
    f.write_text(UV_OLD)
    run("config", "uv", "--url", URL, "--file", str(f))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    proc = subprocess.run([uv_bin(), "--config-file", str(f), "pip", "list", "--python", sys.executable],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_conda_merge(tmp_path):
    f = tmp_path / ".condarc"
    f.write_text(CONDA_OLD)
    res = run("config", "conda", "--url", URL, "--file", str(f), "--channel", "conda-forge", "--channel", "pytorch", "--offline")
    assert res.exit_code == 0, res.output
    new = f.read_text()
    assert "# my condarc" in new and "# corporate proxy" in new and "# big disk" in new
    doc = YAML(typ="safe").load(new)
    assert doc["channels"] == ["conda-forge", "pytorch"]
    assert "defaults" not in new.split("custom_channels")[0].split("channels:")[1]
    assert doc["channel_alias"] == f"{URL}/conda"
    assert doc["custom_channels"] == {"conda-forge": f"{URL}/conda", "pytorch": f"{URL}/conda"}
    assert doc["default_channels"] == [f"{URL}/conda/conda-forge", f"{URL}/conda/pytorch"]
    assert doc["offline"] is True and doc["show_channel_urls"] is True
    assert doc["ssl_verify"] is False and doc["envs_dirs"] == ["/data/envs"]
    assert [b.read_text() for b in backups(f)] == [CONDA_OLD]
    assert "export CONDA_CHANNELS=conda-forge,pytorch" in res.output and "CONDA_OFFLINE=true" in res.output


@pytest.mark.parametrize("kind,name,old", [("pip", "pip.conf", PIP_OLD), ("uv", "uv.toml", UV_OLD), ("conda", ".condarc", CONDA_OLD)])
def test_dry_run_writes_nothing(tmp_path, kind, name, old):
    f = tmp_path / name
    f.write_text(old)
    before = f.stat().st_mtime_ns
    extra = ["--channel", "conda-forge"] if kind == "conda" else []
    res = run("config", kind, "--url", URL, "--file", str(f), "--dry-run", *extra)
    assert res.exit_code == 0
    assert f.read_text() == old and f.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no backup, no temp file
    assert f"--- {f}" in res.output and f"+++ {f}" in res.output
    assert any(ln.startswith("+") and URL in ln for ln in res.output.splitlines())


@pytest.mark.parametrize("kind,name,bad", [
    ("pip", "pip.conf", "[global\nindex-url = x\n"),
    ("pip", "pip.conf", "index-url = no-section\n"),
    ("uv", "uv.toml", "[[index]\nname = 'x'\n"),
    ("uv", "uv.toml", "index = 3\n"),
    ("conda", ".condarc", "channels: [a, b\nfoo: : :\n"),
    ("conda", ".condarc", "- just\n- a list\n"),
])
def test_malformed_file_clear_error_untouched(tmp_path, kind, name, bad):
    f = tmp_path / name
    f.write_text(bad)
    extra = ["--channel", "conda-forge"] if kind == "conda" else []
    res = CliRunner().invoke(main, ["config", kind, "--url", URL, "--file", str(f), *extra])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("torchdepot: error: ") and str(f) in lines[0], res.output
    assert f.read_text() == bad
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_bad_url_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["config", "pip", "--url", "mirror.lab", "--file", str(tmp_path / "p.conf")])
    assert res.exit_code == 1 and "torchdepot: error: --url" in res.output


def test_scopes_follow_pip(monkeypatch, tmp_path):
    from pip._internal.configuration import get_configuration_files, kinds

    files = get_configuration_files()
    assert pip_cfg.scope_file("user") == Path(files[kinds.USER][-1])
    assert pip_cfg.scope_file("site") == Path(sys.prefix) / "pip.conf"
    assert pip_cfg.scope_file("global") == Path(files[kinds.GLOBAL][-1])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert uv_cfg.scope_file("user") == tmp_path / "uv" / "uv.toml"


def test_file_mode_is_kept(tmp_path):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    f.chmod(0o600)  # a config with a token in it must not become world-readable
    run("config", "pip", "--url", URL, "--file", str(f))
    assert f.stat().st_mode & 0o777 == 0o600
    assert backups(f)[0].stat().st_mode & 0o777 == 0o600


# --- property: the INI editor changes only the key it sets --------------------------------

_key = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
_val = st.from_regex(r"[A-Za-z0-9:/._-]{1,12}", fullmatch=True)
_comment = st.from_regex(r"[#;][ A-Za-z0-9]{0,15}", fullmatch=True)


@st.composite
def ini_docs(draw):
    lines = []
    for sec in draw(st.lists(st.sampled_from(["global", "install", "download", "freeze"]), unique=True, max_size=4)):
        lines.append(f"[{sec}]")
        for _ in range(draw(st.integers(0, 4))):
            if draw(st.booleans()):
                lines.append(draw(_comment))
            lines.append(f"{draw(_key)} = {draw(_val)}")
        lines.append("")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(ini_docs(), _val)
def test_ini_set_value_property(text, value):
    try:
        before = ini.validate(text, "t")
    except Exception:
        return  # duplicate keys etc.: the writer refuses those files (tested above)
    new = ini.set_value(text, "global", "index-url", value)
    after = ini.validate(new, "t")
    assert after.get("global", "index-url") == value
    for sec in before.sections():
        for k, v in before.items(sec):
            if not (sec == "global" and ini.norm_key(k) == "index-url"):
                assert after.get(sec, k) == v
    removed = [ln for ln in text.splitlines() if ln not in new.splitlines()]
    assert all(ini.norm_key(ln.split("=")[0]) == "index-url" for ln in removed)


# --- crash safety: SIGKILL the writer at random points -----------------------------------

_WRITER = """
import sys
from pathlib import Path
from torchdepot.clientconfig.common import Planned, commit
path = Path(sys.argv[1])
texts = [Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_text()]
print("ready", flush=True)
i = 0
while True:
    old = path.read_text()
    commit(Planned(path, old, texts[i % 2]), backup=False)
    i += 1
"""


def test_sigkill_mid_write_leaves_old_or_new(tmp_path):
    a = "[global]\n" + "".join(f"key{i} = {'a' * 60}\n" for i in range(40000))  # ~2.8 MB: writes take time
    b = "[global]\n" + "".join(f"key{i} = {'b' * 60}\n" for i in range(40000))
    (tmp_path / "a").write_text(a)
    (tmp_path / "b").write_text(b)
    target = tmp_path / "cfg" / "pip.conf"
    target.parent.mkdir()
    target.write_text(a)
    rng = random.Random(1234)
    kills, seen, torn_temps = 0, set(), 0
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(tmp_path / "a"), str(tmp_path / "b")],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        content = target.read_text()
        assert content in (a, b), f"truncated/mixed file after kill: {len(content)} bytes"
        seen.add(content[-2])
        torn_temps += sum(1 for p in target.parent.iterdir() if p.name.startswith(".pip.conf."))
    assert kills == 25
    assert seen == {"a", "b"}  # the writer really alternated between the two versions
    assert torn_temps > 0  # and some kills did land mid-write (a half-written temp file was left)
    # leftover temp files are hidden dot-files next to the target, never the target itself
    assert all(p.name.startswith(".pip.conf.") for p in target.parent.iterdir() if p != target)
