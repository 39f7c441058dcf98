"""Config writers against real files and a served mirror: merge keeps the user's settings
(index-url, channels, mirrors), files stay the user's (owner, mode, symlink, read-only, CRLF),
every value is checked (against the mirror too), hostile files are one-line errors, and a
writer SIGKILLed mid-write leaves the old or the new file, never a truncated one."""

from __future__ import annotations

import configparser
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomlkit
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from tests.httpserver import Server
from tests.mirror_fixture import CONDA_CHANNEL, make_mirror
from torchdepot.cli import main
from torchdepot.clientconfig import conda as conda_cfg
from torchdepot.clientconfig import ini
from torchdepot.clientconfig import pip as pip_cfg
from torchdepot.clientconfig import uv as uv_cfg
from torchdepot.clientconfig.common import ConfigFileError, logical
from torchdepot.errors import TorchdepotError

PIP_OLD = textwrap.dedent("""\
    # lab pip settings -- keep this comment
    [global]
    timeout = 60
    ; the regional mirror of the public index
    index_url = https://regional.example/simple
    trusted-host = regional.example
    constraint = /etc/lab-constraints.txt

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

# a TUNA-style .condarc: the user's own mirrors of the public channels
CONDA_TUNA = textwrap.dedent("""\
    # my condarc
    channels:
      - defaults
      - conda-forge   # community
    show_channel_urls: true
    default_channels:
      - https://mirrors.example/anaconda/pkgs/main
      - https://mirrors.example/anaconda/pkgs/r
    custom_channels:
      conda-forge: https://mirrors.example/anaconda/cloud
    channel_alias: https://mirrors.example/anaconda
    ssl_verify: false   # corporate proxy
    envs_dirs:
      - /data/envs  # big disk
    """)


@pytest.fixture(autouse=True)
def hermetic_pip_files(tmp_path, monkeypatch):
    """pip's global/user config locations point into tmp: this machine's own pip config
    (which lower-priority files the writer inherits from) must not leak into the tests."""
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for k in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    return tmp_path / "xdg" / "pip" / "pip.conf"


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror") / "m"
    make_mirror(root)
    return root


@pytest.fixture(scope="module")
def URL(mirror_dir):
    with Server(mirror_dir) as s:
        yield s.url


def run(*args, **kw):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kw)


def one_line_error(res, *needles):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1, res.output
    assert lines[0].startswith("torchdepot: error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def backups(p: Path) -> list[Path]:
    return sorted(p.parent.glob(p.name + ".bak-*"))


def host(url: str) -> str:
    return url.split("://", 1)[1]


# --- pip --------------------------------------------------------------------------------

def test_pip_keeps_index_url_adds_extra_index_and_pin(tmp_path, URL):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    res = run("config", "pip", "--url", URL, "--file", str(f), "--variant", "cu126")
    assert res.exit_code == 0, res.output
    new = f.read_text()
    for line in PIP_OLD.splitlines():  # every line we do not extend survives byte for byte
        if not line.startswith(("trusted-host", "constraint")):
            assert line in new.splitlines()
    cp = configparser.RawConfigParser()
    cp.read_string(new)
    assert cp.get("global", "index_url") == "https://regional.example/simple"  # the user's index stays
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cu126"
    assert cp.get("global", "trusted-host").split() == ["regional.example", host(URL)]
    cfile = tmp_path / pip_cfg.CONSTRAINTS_NAME
    assert cp.get("global", "constraint").split() == ["/etc/lab-constraints.txt", str(cfile)]
    pins = [ln for ln in cfile.read_text().splitlines() if not ln.startswith("#")]
    assert pins == ["torch==2.13.0+cu126"]
    assert [b.read_text() for b in backups(f)] == [PIP_OLD]
    # A PIP_* variable replaces the file's whole value: the CI lines keep the user's hosts and constraints.
    assert f"export PIP_EXTRA_INDEX_URL={URL}/whl/cu126" in res.output
    assert f"export PIP_TRUSTED_HOST='regional.example {host(URL)}'" in res.output
    assert f"export PIP_CONSTRAINT='/etc/lab-constraints.txt {cfile}'" in res.output


def test_pip_ci_variables_keep_the_existing_extra_indexes_hosts_and_constraints(tmp_path, URL):
    """Issue 22 item 18: the printed "equivalent environment variables" would have dropped them."""
    f = tmp_path / "pip.conf"
    f.write_text("[global]\nextra-index-url =\n    https://extra.example/simple\n    https://more.example/simple\n"
                 "trusted-host = extra.example\nconstraint = /etc/c1.txt\n")
    res = run("config", "pip", "--url", URL, "--file", str(f))
    assert res.exit_code == 0, res.output
    exports = dict(ln[len("export "):].split("=", 1) for ln in res.output.splitlines() if ln.startswith("export "))
    env = {k: shlex.split(v)[0] for k, v in exports.items()}
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    for key in ("extra-index-url", "trusted-host", "constraint"):
        assert env["PIP_" + key.upper().replace("-", "_")].split() == cp.get("global", key).split()
    assert env["PIP_EXTRA_INDEX_URL"].split() == ["https://extra.example/simple", "https://more.example/simple",
                                                   f"{URL}/whl/cpu"]
    assert env["PIP_TRUSTED_HOST"].split() == ["extra.example", host(URL)]
    assert env["PIP_CONSTRAINT"].split() == ["/etc/c1.txt", str(tmp_path / pip_cfg.CONSTRAINTS_NAME)]


@pytest.mark.parametrize("suffix", ["/whl/cu126", "/whl/cu126/"])
def test_pip_url_of_a_variant_index_is_taken_as_root_and_variant(tmp_path, URL, suffix):
    """Issue 22 item 18: the URL serve's banner prints (``<root>/whl/<variant>``) got a bare HTTP 404."""
    f = tmp_path / "pip.conf"
    res = run("config", "pip", "--url", URL + suffix, "--file", str(f))
    assert res.exit_code == 0, res.output
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cu126"
    assert "torch==2.13.0+cu126" in (tmp_path / pip_cfg.CONSTRAINTS_NAME).read_text()


def test_pip_url_of_one_variant_with_another_variant_is_refused(tmp_path, URL):
    res = CliRunner().invoke(main, ["config", "pip", "--url", URL + "/whl/cu126", "--variant", "cpu",
                                    "--file", str(tmp_path / "pip.conf")])
    one_line_error(res, "--url", "cu126", f"--url {URL}")
    assert not (tmp_path / "pip.conf").exists()


def test_pip_url_that_is_not_the_mirror_root_says_so(tmp_path, URL):
    res = CliRunner().invoke(main, ["config", "pip", "--url", URL + "/packages", "--file", str(tmp_path / "pip.conf")])
    one_line_error(res, "HTTP 404", "--url wants the mirror root")


def test_pip_command_sections_that_override_global_get_ours_too(tmp_path, URL):
    f = tmp_path / "pip.conf"
    f.write_text("[global]\nindex-url = https://regional.example/simple\n[install]\n"
                 "extra-index-url =\n    https://extra.example/simple\n[freeze]\ntimeout = 3\n")
    assert run("config", "pip", "--url", URL, "--file", str(f)).exit_code == 0
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    assert cp.get("install", "extra-index-url").split() == ["https://extra.example/simple", f"{URL}/whl/cpu"]
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cpu"
    assert not cp.has_option("freeze", "extra-index-url")


def test_pip_https_new_file_and_rerun_and_variant_switch(tmp_path, URL):
    f = tmp_path / "sub" / "pip.conf"
    assert run("config", "pip", "--url", URL, "--file", str(f)).exit_code == 0
    assert backups(f) == []
    once = f.read_text()
    res = run("config", "pip", "--url", URL, "--file", str(f))
    assert f.read_text() == once
    assert "already up to date" in res.output
    assert backups(f) == []
    run("config", "pip", "--url", URL, "--file", str(f), "--variant", "cu126")
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cu126"  # the cpu entry is replaced, not kept
    assert cp.get("global", "trusted-host") == host(URL)
    assert "torch==2.13.0+cu126" in (f.parent / pip_cfg.CONSTRAINTS_NAME).read_text()


def test_pip_user_file_keeps_what_global_files_set(tmp_path, URL, hermetic_pip_files):
    """pip merges files by key: a user-level constraint would hide the global one, so it is carried."""
    hermetic_pip_files.parent.mkdir(parents=True)
    hermetic_pip_files.write_text("[global]\nconstraint = /etc/site-constraints.txt\n"
                                  "extra-index-url = file:///opt/local/simple\n")
    res = run("config", "pip", "--url", URL, "--scope", "user")
    assert res.exit_code == 0, res.output
    user = pip_cfg.scope_file("user")
    assert str(user).startswith(str(tmp_path / "home"))
    cp = configparser.RawConfigParser()
    cp.read_string(user.read_text())
    assert cp.get("global", "constraint").split() == ["/etc/site-constraints.txt", str(user.parent / pip_cfg.CONSTRAINTS_NAME)]
    assert cp.get("global", "extra-index-url").split() == ["file:///opt/local/simple", f"{URL}/whl/cpu"]
    assert "kept from lower-priority pip config files" in res.output


def test_pip_refuses_a_constraints_file_it_did_not_write(tmp_path, URL):
    f = tmp_path / "pip.conf"
    (tmp_path / pip_cfg.CONSTRAINTS_NAME).write_text("numpy<2\n")
    res = CliRunner().invoke(main, ["config", "pip", "--url", URL, "--file", str(f)])
    one_line_error(res, pip_cfg.CONSTRAINTS_NAME, "not written by torchdepot")
    assert not f.exists()
    assert (tmp_path / pip_cfg.CONSTRAINTS_NAME).read_text() == "numpy<2\n"


@pytest.mark.parametrize(("args", "needle"), [
    (["--variant", "cu999"], "--variant 'cu999'"),
    (["--variant", "cu126\nindex-url = http://evil.example/simple"], "--variant"),
    (["--variant", "cu126 "], "--variant"),
    (["--url", "http://127.0.0.1:1/x\n[global]\nindex-url=http://evil.example"], "--url"),
    (["--url", "http://exa mple.lab"], "--url"),
    (["--url", "http://host:99999"], "--url"),
    (["--url", "mirror.lab"], "--url"),
    (["--url", "ftp://mirror.lab"], "--url"),
])
def test_pip_values_are_checked_before_anything_is_written(tmp_path, URL, args, needle):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    argv = ["config", "pip", "--file", str(f)] + (["--url", URL] if "--url" not in args else []) + args
    res = CliRunner().invoke(main, argv)
    one_line_error(res, needle)
    assert f.read_text() == PIP_OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pip.conf"]


def test_variant_not_on_mirror_names_what_it_has(tmp_path, URL):
    res = CliRunner().invoke(main, ["config", "uv", "--url", URL, "--file", str(tmp_path / "uv.toml"), "--variant", "cu128"])
    one_line_error(res, "cu128", "cpu, cu118, cu126")


def test_unreachable_mirror_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["config", "pip", "--url", (tmp_path / "nothing-here").as_uri(), "--file", str(tmp_path / "p")])
    one_line_error(res, "manifest.json")


def test_scope_site_is_the_active_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "venv"))
    assert pip_cfg.scope_file("site") == tmp_path / "venv" / "pip.conf"
    assert pip_cfg.scope_file("site") != Path(sys.prefix) / "pip.conf"
    monkeypatch.delenv("VIRTUAL_ENV")
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path / "env"))
    assert pip_cfg.scope_file("site") == tmp_path / "env" / "pip.conf"
    assert conda_cfg.scope_file("site") == tmp_path / "env" / ".condarc"
    monkeypatch.delenv("CONDA_PREFIX")
    with pytest.raises(TorchdepotError, match="no active environment"):
        pip_cfg.scope_file("site")
    res = CliRunner().invoke(main, ["config", "pip", "--url", "http://127.0.0.1:1", "--scope", "site"])
    one_line_error(res, "--scope site")


def test_scopes_follow_pip(monkeypatch, tmp_path):
    from pip._internal.configuration import get_configuration_files, kinds

    monkeypatch.delenv("XDG_CONFIG_HOME")
    files = get_configuration_files()
    assert pip_cfg.scope_file("user") == Path(files[kinds.USER][-1])
    assert pip_cfg.scope_file("global") == Path(files[kinds.GLOBAL][-1])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert uv_cfg.scope_file("user") == tmp_path / "uv" / "uv.toml"


# --- uv ---------------------------------------------------------------------------------

def test_uv_mirror_first_user_default_kept(tmp_path, URL):
    f = tmp_path / "uv.toml"
    f.write_text(UV_OLD)
    res = run("config", "uv", "--url", URL, "--file", str(f))
    assert res.exit_code == 0, res.output
    new = f.read_text()
    assert "# uv settings, hand written" in new
    assert "# our proxy" in new
    assert "# company index" in new
    doc = tomlkit.parse(new).unwrap()
    assert doc["index"] == [
        {"name": "torchdepot", "url": f"{URL}/whl/cpu"},
        {"name": "torchdepot-cpu", "url": f"{URL}/whl/cpu", "explicit": True},
        {"name": "internal", "url": "https://internal.example/simple", "default": True},  # still the default
    ]
    assert doc["allow-insecure-host"] == [host(URL)]
    assert doc["pip"]["compile-bytecode"] is True
    assert doc["native-tls"] is True
    assert [b.read_text() for b in backups(f)] == [UV_OLD]
    assert f"UV_INSECURE_HOST={host(URL)}" in res.output
    assert "[tool.uv.sources]" in res.output
    run("config", "uv", "--url", URL, "--file", str(f), "--variant", "cu126")  # re-run replaces, never duplicates
    names = [str(e["name"]) for e in tomlkit.parse(f.read_text())["index"]]
    assert names == ["torchdepot", "torchdepot-cu126", "internal"]
    assert tomlkit.parse(f.read_text())["allow-insecure-host"] == [host(URL)]


def test_uv_inline_index_array_is_merged_not_a_traceback(tmp_path, URL):
    f = tmp_path / "uv.toml"
    f.write_text('index = [{ name = "corp", url = "https://corp.example/simple", default = true }]\n')
    res = run("config", "uv", "--url", URL, "--file", str(f), "--default-index")
    assert res.exit_code == 0, res.output
    doc = tomlkit.parse(f.read_text()).unwrap()
    assert [e["name"] for e in doc["index"]] == ["torchdepot", "torchdepot-cpu", "corp"]
    assert doc["index"][0]["default"] is True
    assert "default" not in doc["index"][2]
    assert "index = [" in f.read_text()  # stays inline


def test_uv_is_understood_by_uv(tmp_path, URL):
    """uv itself accepts the file we wrote (parse errors would fail this)."""
    from torchdepot.resolve.uv import uv_bin

    f = tmp_path / "uv.toml"
    f.write_text(UV_OLD)
    run("config", "uv", "--url", URL, "--file", str(f))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    proc = subprocess.run([uv_bin(), "--config-file", str(f), "pip", "list", "--python", sys.executable],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


# --- conda ------------------------------------------------------------------------------

def test_conda_tuna_condarc_keeps_the_users_mirrors(tmp_path, URL):
    f = tmp_path / ".condarc"
    f.write_text(CONDA_TUNA)
    res = run("config", "conda", "--url", URL, "--file", str(f), "--channel", CONDA_CHANNEL)
    assert res.exit_code == 0, res.output
    new = f.read_text()
    assert "# my condarc" in new
    assert "# corporate proxy" in new
    assert "# big disk" in new
    assert "# community" in new
    old, doc = YAML(typ="safe").load(CONDA_TUNA), YAML(typ="safe").load(new)
    assert doc["channels"] == [f"{URL}/conda/{CONDA_CHANNEL}", "defaults", "conda-forge"]
    for key in ("default_channels", "channel_alias", "ssl_verify", "envs_dirs"):
        assert doc[key] == old[key], key
    # the user's custom channels stay; the mirrored channel's name now resolves to the mirror
    assert doc["custom_channels"] == {**old["custom_channels"], CONDA_CHANNEL: f"{URL}/conda"}
    assert doc["mirrored_channels"] == {CONDA_CHANNEL: [f"{URL}/conda/{CONDA_CHANNEL}"]}
    assert "offline" not in doc
    assert [b.read_text() for b in backups(f)] == [CONDA_TUNA]
    assert f"export CONDA_CHANNELS={URL}/conda/{CONDA_CHANNEL},defaults,conda-forge" in res.output
    res = run("config", "conda", "--url", URL, "--file", str(f))  # re-run (channels from the mirror)
    assert YAML(typ="safe").load(f.read_text())["channels"] == doc["channels"]
    assert "already up to date" in res.output


def test_conda_without_channels_keeps_defaults(tmp_path, URL):
    f = tmp_path / ".condarc"
    f.write_text("ssl_verify: true\n")
    assert run("config", "conda", "--url", URL, "--file", str(f)).exit_code == 0
    assert YAML(typ="safe").load(f.read_text())["channels"] == [f"{URL}/conda/{CONDA_CHANNEL}", "defaults"]


def test_conda_offline_http_refused_local_path_gets_file_channel(tmp_path, URL, mirror_dir):
    f = tmp_path / ".condarc"
    f.write_text(CONDA_TUNA)
    one_line_error(CliRunner().invoke(main, ["config", "conda", "--url", URL, "--file", str(f), "--offline"]),
                   "--offline", "file://")
    assert f.read_text() == CONDA_TUNA
    res = run("config", "conda", "--url", str(mirror_dir), "--file", str(f), "--offline")
    assert res.exit_code == 0, res.output
    doc = YAML(typ="safe").load(f.read_text())
    assert doc["offline"] is True
    assert doc["channels"][0] == f"{mirror_dir.as_uri()}/conda/{CONDA_CHANNEL}"


def test_conda_channel_checked_against_mirror(tmp_path, URL):
    f = tmp_path / ".condarc"
    one_line_error(CliRunner().invoke(main, ["config", "conda", "--url", URL, "--file", str(f), "--channel", "conda-forge"]),
                   "--channel 'conda-forge'", CONDA_CHANNEL)
    one_line_error(CliRunner().invoke(main, ["config", "conda", "--url", URL, "--file", str(f), "--channel", "a\nb"]),
                   "--channel")
    assert not f.exists()


# --- all three: dry run, malformed, hostile -----------------------------------------------

KINDS = [("pip", "pip.conf", PIP_OLD), ("uv", "uv.toml", UV_OLD), ("conda", ".condarc", CONDA_TUNA)]


@pytest.mark.parametrize(("kind", "name", "old"), KINDS)
def test_dry_run_writes_nothing(tmp_path, URL, kind, name, old):
    f = tmp_path / name
    f.write_text(old)
    before = f.stat().st_mtime_ns
    res = run("config", kind, "--url", URL, "--file", str(f), "--dry-run")
    assert res.exit_code == 0
    assert f.read_text() == old
    assert f.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no backup, no temp file, no constraints
    assert f"--- {f}" in res.output
    assert f"+++ {f}" in res.output
    assert any(ln.startswith("+") and URL in ln for ln in res.output.splitlines())


DEEP = 100_000


@pytest.mark.parametrize(("kind", "name", "bad"), [
    ("pip", "pip.conf", "[global\nindex-url = x\n"),
    ("pip", "pip.conf", "index-url = no-section\n"),
    ("pip", "pip.conf", b"[global]\nindex-url = \xff\n"),
    ("uv", "uv.toml", "[[index]\nname = 'x'\n"),
    ("uv", "uv.toml", "index = 3\n"),
    ("uv", "uv.toml", "x = " + "[" * DEEP + "]" * DEEP + "\n"),
    ("uv", "uv.toml", "index = [1, 2]\n"),
    ("conda", ".condarc", "channels: [a, b\nfoo: : :\n"),
    ("conda", ".condarc", "- just\n- a list\n"),
    ("conda", ".condarc", "channels: " + "[" * DEEP + "]" * DEEP + "\n"),
    ("conda", ".condarc", "".join(" " * i + f"k{i}:\n" for i in range(2000))),
    ("conda", ".condarc", "channels: 3\n"),
])
def test_malformed_file_clear_error_untouched(tmp_path, URL, kind, name, bad):
    f = tmp_path / name
    f.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    before = f.read_bytes()
    res = CliRunner().invoke(main, ["config", kind, "--url", URL, "--file", str(f)])
    one_line_error(res, str(f))
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --- the file stays the user's ------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root (CI runs as root)")
@pytest.mark.parametrize(("kind", "name", "old"), KINDS)
def test_owner_group_mode_kept_for_file_and_backup(tmp_path, URL, kind, name, old):
    f = tmp_path / name
    f.write_text(old)
    os.chown(f, 1234, 2345)
    f.chmod(0o640)
    res = run("config", kind, "--url", URL, "--file", str(f))
    assert res.exit_code == 0, res.output
    for p in [f, *backups(f)]:
        st = p.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o640), p
    assert len(backups(f)) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root (CI runs as root)")
def test_new_file_under_sudo_belongs_to_the_home_owner(tmp_path, URL):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 1234, 2345)
    f = home / ".config" / "pip" / "pip.conf"
    assert run("config", "pip", "--url", URL, "--file", str(f)).exit_code == 0
    for p in (f, f.parent, f.parent.parent, f.parent / pip_cfg.CONSTRAINTS_NAME):
        assert (p.stat().st_uid, p.stat().st_gid) == (1234, 2345), p


@pytest.mark.parametrize(("kind", "name", "old"), KINDS)
def test_symlink_is_written_through(tmp_path, URL, kind, name, old):
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / name
    real.write_text(old)
    link = tmp_path / "home" / name
    link.parent.mkdir()
    link.symlink_to(real)
    res = run("config", kind, "--url", URL, "--file", str(link))
    assert res.exit_code == 0, res.output
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_text() != old
    assert URL in real.read_text()
    assert [b.read_text() for b in backups(link)] == [old]
    assert not backups(real)


@pytest.mark.parametrize(("kind", "name", "old"), KINDS)
def test_read_only_file_is_refused(tmp_path, URL, kind, name, old):
    f = tmp_path / name
    f.write_text(old)
    f.chmod(0o444)
    res = CliRunner().invoke(main, ["config", kind, "--url", URL, "--file", str(f)])
    one_line_error(res, str(f), "read-only")
    assert f.read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize(("kind", "name", "old"), KINDS)
def test_crlf_and_bom_are_kept(tmp_path, URL, kind, name, old):
    f = tmp_path / name
    raw = ("\ufeff" + old.replace("\n", "\r\n")).encode()
    f.write_bytes(raw)
    res = run("config", kind, "--url", URL, "--file", str(f))
    assert res.exit_code == 0, res.output
    new = f.read_bytes()
    assert new.startswith("\ufeff".encode())
    assert URL.encode() in new
    assert new.count(b"\n") == new.count(b"\r\n") > old.count("\n")
    assert [b.read_bytes() for b in backups(f)] == [raw]


def test_file_mode_is_kept(tmp_path, URL):
    f = tmp_path / "pip.conf"
    f.write_text(PIP_OLD)
    f.chmod(0o600)  # a config with a token in it must not become world-readable
    run("config", "pip", "--url", URL, "--file", str(f))
    assert f.stat().st_mode & 0o777 == 0o600
    assert backups(f)[0].stat().st_mode & 0o777 == 0o600


# --- fuzz: the three readers raise only TorchdepotError -----------------------------------

_CONF_ALPHABET = st.sampled_from(list("[]{}=:#;,'\"-_ .\n\r\t\\%&*!|>?@aeiklnrux019") + ["index-url", "channels",
                                 "global", "  - ", "\ufeff", "\x00", "é"])
_fuzz_text = st.lists(_CONF_ALPHABET, max_size=80).map("".join) | st.text(max_size=120)
FUZZ_URL = "http://torchlab:8000"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_text)
def test_fuzz_pip_conf_reader(text):
    try:
        plan = pip_cfg.plan(Path("/cfg/pip.conf"), text, FUZZ_URL, "cu126", ("torch==2.13.0+cu126",))
    except TorchdepotError:
        return
    new = plan.changes[0].new
    cp = ini.validate(logical(new), "t")  # what we wrote parses again
    assert FUZZ_URL + "/whl/cu126" in cp.get("global", "extra-index-url").split()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_text)
def test_fuzz_uv_toml_reader(text):
    try:
        plan = uv_cfg.plan(Path("/cfg/uv.toml"), text, FUZZ_URL, "cu126")
    except TorchdepotError:
        return
    doc = tomlkit.parse(plan.changes[0].new.lstrip("\ufeff")).unwrap()
    assert doc["index"][0]["name"] == "torchdepot"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_text)
def test_fuzz_condarc_reader(text):
    try:
        plan = conda_cfg.plan(Path("/cfg/.condarc"), text, FUZZ_URL, ["pytorch"])
    except TorchdepotError:
        return
    doc = YAML(typ="safe").load(plan.changes[0].new.lstrip("\ufeff"))
    assert doc["channels"][0] == FUZZ_URL + "/conda/pytorch"


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
    except ConfigFileError:
        before = None
    assume(before is not None)  # duplicate keys etc.: the writer refuses those files (tested above)
    new = ini.set_value(text, "global", "index-url", value)
    after = ini.validate(new, "t")
    assert after.get("global", "index-url") == value
    for sec in before.sections():
        for k, v in before.items(sec):
            if not (sec == "global" and ini.norm_key(k) == "index-url"):
                assert after.get(sec, k) == v
    removed = [ln for ln in text.splitlines() if ln not in new.splitlines()]
    assert all(ini.norm_key(ln.split("=")[0]) == "index-url" for ln in removed)


def test_spaced_header_is_not_global(tmp_path, URL):
    """Issue 22 item 14: configparser (so pip) reads ``[ global ]`` as a section named " global ",
    not [global]: the writer adds a real [global] instead of writing where pip never looks."""
    f = tmp_path / "pip.conf"
    f.write_text("[ global ]\ntimeout = 5\n")
    assert run("config", "pip", "--url", URL, "--file", str(f)).exit_code == 0
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cpu"
    assert dict(cp.items(" global ")) == {"timeout": "5"}


def test_fake_header_inside_a_continuation_line_is_part_of_the_value(tmp_path, URL):
    """Issue 22 item 14: an indented ``[global]`` under a key continues that key's value."""
    f = tmp_path / "pip.conf"
    old = ("[install]\nextra-index-url =\n    https://one.example/simple\n\n    [global]\n"
           "    extra-index-url = https://two.example/simple\n[global]\ntimeout = 5\n")
    f.write_text(old)
    before = configparser.RawConfigParser()
    before.read_string(old)
    assert run("config", "pip", "--url", URL, "--file", str(f)).exit_code == 0
    cp = configparser.RawConfigParser()
    cp.read_string(f.read_text())
    assert cp.get("global", "extra-index-url") == f"{URL}/whl/cpu"
    assert cp.get("global", "timeout") == "5"
    assert cp.get("install", "extra-index-url").split() == [
        *before.get("install", "extra-index-url").split(), f"{URL}/whl/cpu"]


_sec_name = st.sampled_from(["global", "install", " global ", "global ", "download"])
_indent = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def tricky_ini_docs(draw):
    """Headers with spaces, indented keys, multi-line values whose lines look like headers or
    keys, blank and comment lines inside values: every shape configparser has a rule for."""
    lines = []
    for sec in draw(st.lists(_sec_name, unique=True, max_size=4)):
        lines.append(f"{draw(_indent)}[{sec}]")
        for _ in range(draw(st.integers(0, 3))):
            key_indent = draw(st.sampled_from(["", " "]))
            lines.append(f"{key_indent}{draw(st.sampled_from(['index-url', 'timeout', 'extra_index_url']))} = "
                         f"{draw(_val)}")
            for _ in range(draw(st.integers(0, 3))):
                cont = draw(st.sampled_from(["[global]", "index-url = x", "v", "", "# c", "; c"]))
                lines.append(cont if cont in ("", "# c", "; c") and draw(st.booleans())
                             else key_indent + "    " + cont)
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None)
@given(tricky_ini_docs(), _val)
def test_ini_set_value_follows_configparser(text, value):
    try:
        before = ini.validate(text, "t")
    except TorchdepotError:
        return  # duplicate sections or keys: the writer refuses those files
    new = ini.set_value(text, "global", "index-url", value)
    after = ini.validate(new, "t")
    assert after.get("global", "index-url") == value
    for sec in before.sections():
        for k, v in before.items(sec):
            if not (sec == "global" and ini.norm_key(k) == "index-url"):
                assert after.get(sec, k) == v, (sec, k)
    assert sorted(ini.sections_with(text, "index-url")) == sorted(
        sec for sec in before.sections() if any(ini.norm_key(k) == "index-url" for k in before.options(sec)))


# --- crash safety: SIGKILL the writer at random points -----------------------------------

_WRITER = """
import sys
from pathlib import Path
from torchdepot.clientconfig.common import FileChange, commit_one
path = Path(sys.argv[1])
texts = [Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_text()]
print("ready", flush=True)
i = 0
while True:
    old = path.read_text()
    commit_one(FileChange(path, old, texts[i % 2]), backup=False)
    i += 1
"""


@pytest.mark.slow
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


@pytest.mark.parametrize("text", ["? ?\n", "? [a, b]\n: 1\n", "1: x\n", "null: x\n"])
def test_condarc_with_a_key_that_is_not_a_name_is_left_untouched(text):
    """Found by the fuzzer: ``? ?`` loaded as a null key and was written back as YAML that conda's
    own (safe) loader refuses."""
    with pytest.raises(TorchdepotError, match=r"^/cfg/\.condarc: a key that is not a name \(\w+\), left untouched$"):
        conda_cfg.plan(Path("/cfg/.condarc"), text, FUZZ_URL, ["pytorch"])
