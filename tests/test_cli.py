"""The CLI's command table: every command module is listed, every listed command exists."""

import importlib
import pkgutil

import pytest
from click.testing import CliRunner

from torchdepot import commands
from torchdepot.cli import COMMAND_MODULES, main


def test_every_command_module_is_registered_and_resolves():
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    defined = {}
    for m in modules:
        for cmd in getattr(importlib.import_module(f"torchdepot.commands.{m}"), "COMMANDS", []):
            defined[cmd.name] = m
    assert defined == COMMAND_MODULES


def test_help_lists_every_command_and_errors_are_one_line():
    runner = CliRunner()
    out = runner.invoke(main, ["--help"]).output
    for name in COMMAND_MODULES:
        assert name in out
    res = runner.invoke(main, ["parse", "not-a-wheel"])
    assert res.exit_code == 1
    assert "not a wheel filename" in res.output


# -- zero tracebacks (issue 13.6) ----------------------------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A binary file, a 'mirror' whose manifest.json is binary, one whose manifest is a directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TORCHDEPOT_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)
    binary = bytes(range(256)) * 8 + b"\x7fELF\x00\xff"
    (tmp_path / "bin").write_bytes(binary)
    (tmp_path / "badmirror").mkdir()
    (tmp_path / "badmirror" / "manifest.json").write_bytes(binary)
    (tmp_path / "dirmirror" / "manifest.json").mkdir(parents=True)
    (tmp_path / "listmirror").mkdir()
    (tmp_path / "listmirror" / "manifest.json").write_text("[1, [2, {}]]")
    return tmp_path


def hostile_runs(root: Path) -> list[list[str]]:
    """Each command with input that passes click's checks and is hostile to the code behind them."""
    b, bad, d, lst = (str(root / n) for n in ("bin", "badmirror", "dirmirror", "listmirror"))
    return [
        ["mirror", "--spec", b], ["mirror", "--spec", "/dev/zero"], ["mirror", "--spec", b, "--dry-run"],
        ["mirror", "--spec", str(root / "missing.yaml")],
        ["bundle", "--mirror", bad, "--out", str(root / "x.tar")], ["bundle", "--mirror", d, "--out", str(root / "y.tar")],
        ["unbundle", b, "--to", str(root / "new1")], ["unbundle", bad, "--to", str(root / "new2")],
        ["conda", "ls", "--channel", f"file://{b}"],
        ["config", "pip", "--url", f"file://{bad}", "--variant", "cpu", "--file", str(root / "pip.conf")],
        ["config", "uv", "--url", f"file://{lst}", "--file", str(root / "uv.toml")],
        ["config", "conda", "--url", f"file://{d}", "--file", str(root / "condarc")],
        ["doctor", "--mirror", f"file://{bad}"],
        ["env", "create", bad, "--prefix", str(root / "envp"), "--mirror", bad],
        ["env", "create", b, "--prefix", str(root / "envq"), "--register-kernel", "k"],
        ["landing", "--mirror", bad], ["landing", "--mirror", d], ["landing", "--mirror", lst],
        ["lock", "--mirror", bad, "--out", str(root / "envs")], ["lock", "--spec", b],
        ["ls", "--index", f"file://{b}"], ["ls", "--index", f"file://{bad}"],
        ["matrix", "--mirror", bad], ["matrix", "--mirror", lst],
        ["parse", "--from-file", d],
        ["publish", "--to", str(root / "pub"), "--mirror", bad, "--dry-run"],
        ["recipes", "build", "--wheel", b, "--out", str(root / "rout")],
        ["serve", "--root", d, "--nginx-config"],
        ["status", bad], ["status", d], ["status", lst], ["status", "--json", bad],
        ["verify", str(root / "badmirror"), "--mirror", bad],
        ["verify-mirror", bad], ["verify-mirror", d], ["verify-mirror", lst],
    ]


def test_every_command_with_hostile_input_fails_in_one_line(hostile):
    runner = CliRunner()
    runs = hostile_runs(hostile)
    assert {r[0] for r in runs} == set(COMMAND_MODULES)  # every command is attacked
    for args in runs:
        res = runner.invoke(main, args)
        where = f"torchdepot {' '.join(args)}: exit {res.exit_code}: {res.output!r}"
        assert "Traceback" not in res.output, where
        assert res.exception is None or isinstance(res.exception, SystemExit), where
        if res.exit_code == 2:  # a usage error, click's format
            assert "Error:" in res.stderr, where
            continue
        assert res.exit_code in (0, 1), where
        if res.exit_code == 1:
            assert res.stderr.count("\n") == 1, where
            assert res.stderr.startswith("torchdepot: "), where
            assert "unexpected" not in res.stderr, where  # a known failure, not the last line of defence


def _run_patched(code: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a child with the mirror command's spec loader replaced by ``code``."""
    prog = ("import sys, torchdepot.commands.mirror as m\n"
            f"def boom(path):\n    {code}\n"
            "m.load_spec = boom\n"
            "from torchdepot.cli import main\n"
            "main(sys.argv[1:], prog_name='torchdepot')\n")
    import os

    env = {k: v for k, v in os.environ.items() if k != "TORCHDEPOT_DEBUG"} | (env_extra or {})
    return subprocess.run([sys.executable, "-c", prog, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.slow
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback():
    res = _run_patched("return {}['no such key']", "mirror")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("torchdepot: error: torchdepot mirror: unexpected KeyError: 'no such key'")
    assert "--debug" in res.stderr
    dbg = _run_patched("return {}['no such key']", "--debug", "mirror")
    assert dbg.returncode == 1
    assert "Traceback (most recent call last)" in dbg.stderr
    assert "KeyError" in dbg.stderr
    env = _run_patched("return {}['no such key']", "mirror", env_extra={"TORCHDEPOT_DEBUG": "1"})
    assert "Traceback" in env.stderr
    intr = _run_patched("raise KeyboardInterrupt", "mirror")
    assert intr.returncode == 130
    assert intr.stderr == "torchdepot: interrupted\n"
    mem = _run_patched("raise MemoryError", "mirror")
    assert mem.returncode == 1
    assert "unexpected MemoryError" in mem.stderr
    assert mem.stderr.count("\n") == 1


def test_usage_errors_keep_exit_2_and_help_documents_the_exit_status():
    runner = CliRunner()
    res = runner.invoke(main, ["mirror", "--jobs", "0"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert runner.invoke(main, ["no-such-command"]).exit_code == 2
    help_text = " ".join(runner.invoke(main, ["--help"]).output.split())
    assert "2 usage error" in help_text
    assert "130 interrupted" in help_text
    assert "--debug" in help_text


def test_loading_a_command_pauses_the_collector_and_restores_it_as_it_was():
    import gc

    from torchdepot.commands import loading

    assert gc.isenabled()
    with loading():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with loading():
            pass
        assert not gc.isenabled()  # not turned on by it
    finally:
        gc.enable()
    try:
        with loading():
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.isenabled()  # resumed on an error too
