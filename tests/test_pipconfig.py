"""Reading the user's pip configuration (parsing + the real pip with a temp config file)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.venvs import hermetic_env
from torchdepot.net.pipconfig import (
    ConfigSnapshot,
    PipSources,
    parse_config_list,
    pip_default_index,
    read_pip_config,
    read_pip_config_kept,
)

SAMPLE = """\
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.index-url='https://global.example/simple'
install.index-url='https://install.example/simple/'
"""


def test_parse_sections_env_and_precedence():
    src = parse_config_list(SAMPLE, env={}, cwd=Path("/"))
    assert src.index_url == "https://install.example/simple"  # install section beats global
    assert src.extra_index_urls == ("file:///opt/pypi/simple", "file:///opt/pypi-more/simple")
    assert src.find_links == ("file:///opt/wheels",)  # a plain directory becomes a file:// URL
    assert not src.no_index
    assert src.indexes == ("file:///opt/pypi/simple", "file:///opt/pypi-more/simple", "https://install.example/simple")


def test_env_vars_win_and_are_space_separated_lists(tmp_path):
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "http://a/simple  http://b/simple",
           "PIP_FIND_LINKS": "links other", "PIP_NO_INDEX": "yes"}
    src = parse_config_list(SAMPLE, env=env, cwd=tmp_path)
    assert src.index_url == "http://127.0.0.1:9/simple"
    assert src.extra_index_urls == ("http://a/simple", "http://b/simple")
    assert src.find_links == ((tmp_path / "links").as_uri(), (tmp_path / "other").as_uri())
    assert src.no_index
    assert "no-index" in src.describe()


def test_nothing_configured_means_pips_default():
    src = parse_config_list("", env={})
    assert src == PipSources(note="pip config list")
    assert src.index_url is None
    assert "index-url=(pip default)" in src.describe()


def test_real_pip_reads_a_config_file(tmp_path):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:1/simple\nextra-index-url =\n  http://127.0.0.1:2/a\n"
                   "  http://127.0.0.1:3/b\n[install]\nfind-links = /srv/wheels\n")
    src = read_pip_config(env=hermetic_env(PIP_CONFIG_FILE=str(cfg)))
    assert src.note == "pip config list"
    assert src.index_url == "http://127.0.0.1:1/simple"
    assert src.extra_index_urls == ("http://127.0.0.1:2/a", "http://127.0.0.1:3/b")
    assert src.find_links == ("file:///srv/wheels",)


def test_pip_default_index_is_asked_from_pip():
    url = pip_default_index(env=hermetic_env())
    assert url
    assert url.startswith("https://")
    assert url.endswith("/simple")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.dictionaries(st.sampled_from(["PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"]),
                                              st.text(alphabet="abc /:.\n", max_size=20)))
def test_parser_never_crashes(text, env):
    src = parse_config_list(text, env=env, cwd=Path("/tmp"))
    assert isinstance(src, PipSources)


def test_in_process_read_equals_pip_cli(tmp_path, monkeypatch):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nextra-index-url = file:///srv/a file:///srv/b\n[download]\nindex-url = http://127.0.0.1:4/s\n")
    for k in [k for k in __import__("os").environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(cfg))
    fast = read_pip_config()
    cli = read_pip_config(env=dict(__import__("os").environ))
    assert fast.note == "pip configuration"
    assert cli.note == "pip config list"
    assert (fast.index_url, fast.extra_index_urls, fast.find_links) == (cli.index_url, cli.extra_index_urls, cli.find_links)
    assert fast.index_url == "http://127.0.0.1:4/s"
    assert fast.extra_index_urls == ("file:///srv/a", "file:///srv/b")


def _clean_pip_env(monkeypatch, cfg: Path) -> None:
    for k in [k for k in __import__("os").environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(cfg))


def test_snapshot_replays_until_a_file_or_variable_pip_reads_changes(tmp_path, monkeypatch):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:5/one\n")
    _clean_pip_env(monkeypatch, cfg)
    sources, snap = read_pip_config_kept(None)
    assert snap is not None
    assert snap.valid()
    assert sources.index_url == "http://127.0.0.1:5/one"
    assert str(cfg) in [name for name, _sig in snap.files]
    again, same = read_pip_config_kept(ConfigSnapshot.from_data(json.loads(json.dumps(snap.to_data()))))
    assert same == snap
    assert again == sources
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:5/two\n")  # same size, maybe same tick: re-read
    assert not snap.valid()
    changed, snap2 = read_pip_config_kept(snap)
    assert changed.index_url == "http://127.0.0.1:5/two"
    assert snap2 != snap
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://127.0.0.1:6/x")  # a variable pip reads: re-read
    assert snap2 is not None
    assert not snap2.valid()
    assert read_pip_config_kept(snap2)[0].extra_index_urls == ("http://127.0.0.1:6/x",)


def test_a_valid_snapshot_does_not_import_pip(tmp_path):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[install]\nfind-links = /srv/w\n")
    env = hermetic_env(PIP_CONFIG_FILE=str(cfg))
    code = ("import json, sys\nfrom torchdepot.net.pipconfig import ConfigSnapshot, read_pip_config_kept\n"
            "kept = ConfigSnapshot.from_data(json.loads(sys.stdin.read()))\n"
            "src, snap = read_pip_config_kept(kept)\n"
            "print(json.dumps([src.find_links, snap == kept, 'pip._internal' in sys.modules]))\n")
    first = subprocess.run([sys.executable, "-c", "import json\nfrom torchdepot.net.pipconfig import "
                            "read_pip_config_kept\nprint(json.dumps(read_pip_config_kept(None)[1].to_data()))"],
                           env=env, capture_output=True, text=True, check=True).stdout
    out = subprocess.run([sys.executable, "-c", code], input=first, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == [["file:///srv/w"], True, False]


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                        st.sampled_from(["key", "files", "text", "default_index", "file_host", "x"]), kids, max_size=6),
                    max_leaves=20))
def test_snapshot_from_any_json_is_a_snapshot_or_none(data):
    snap = ConfigSnapshot.from_data(data)
    assert snap is None or ConfigSnapshot.from_data(snap.to_data()) == snap


def test_a_mirror_keeps_the_read_in_its_state_and_rereads_a_changed_or_broken_record(tmp_path, monkeypatch):
    from torchdepot.store import layout as L
    from torchdepot.sync.session import _kept_pip_config

    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:7/a\n")
    _clean_pip_env(monkeypatch, cfg)
    out = tmp_path / "mirror"
    out.mkdir()
    record = out / L.PIP_CONFIG
    assert _kept_pip_config(out)[0].index_url == "http://127.0.0.1:7/a"
    kept = record.read_bytes()
    assert _kept_pip_config(out)[0].index_url == "http://127.0.0.1:7/a"
    assert record.read_bytes() == kept  # replayed, not rewritten
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:7/b\n")
    assert _kept_pip_config(out)[0].index_url == "http://127.0.0.1:7/b"
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://user:s3cret@127.0.0.1:8/x")
    assert _kept_pip_config(out)[0].extra_index_urls == ("http://user:s3cret@127.0.0.1:8/x",)
    assert b"s3cret" not in record.read_bytes()  # the environment's values are not kept
    assert record.stat().st_mode & 0o777 == 0o600
    record.write_text('{"key": 1')  # a broken record is read again and replaced
    assert _kept_pip_config(out)[0].index_url == "http://127.0.0.1:7/b"
    assert ConfigSnapshot.from_data(json.loads(record.read_text())) is not None


def _fresh(code: str, cfg: Path) -> dict:
    """``code`` run in a new interpreter (one thread: pytest's may have others running, and then
    no copy is made), with pip reading ``cfg``; it prints one JSON document."""
    env = hermetic_env(PIP_CONFIG_FILE=str(cfg))
    prog = ("import json, os, sys\nfrom pathlib import Path\nfrom torchdepot.net.pipconfig import PendingRead, config_key, "
            "read_pip_config_kept, snapshot_in_process\n" + code)
    out = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_read_started_early_in_a_copy_equals_the_in_process_read(tmp_path):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:9/one\n[install]\nfind-links = /srv/w\n")
    kept = tmp_path / "kept.json"
    got = _fresh(f"""
pending = PendingRead.start(Path({str(tmp_path / "mirror" / "pipconfig.json")!r}))  # nothing kept there: a copy reads
started = pending.started
sources, snap = read_pip_config_kept(None, pending)
joined = not pending.started
same = snap == snapshot_in_process() and snap.key == config_key()
with open({str(kept)!r}, "w") as fh:
    json.dump(snap.to_data(), fh)
idle = PendingRead.start(Path({str(kept)!r}))  # a valid kept snapshot: no copy starts, the kept one is replayed
again = read_pip_config_kept(snap, idle) == (sources, snap)
print(json.dumps([started, joined, same, sources.index_url, sources.find_links, idle.started, again]))
""", cfg)
    assert got == [True, True, True, "http://127.0.0.1:9/one", ["file:///srv/w"], False, True]


def test_a_copy_read_under_other_variables_than_the_run_is_not_used(tmp_path):
    cfg, cfg2 = tmp_path / "pip.conf", tmp_path / "other.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:9/one\n")
    cfg2.write_text("[global]\nindex-url = http://127.0.0.1:9/two\n")
    got = _fresh(f"""
pending = PendingRead.start(None)  # where it is kept is not known yet: a copy reads
started = pending.started
os.environ["PIP_CONFIG_FILE"] = {str(cfg2)!r}  # the copy read pip.conf; this process now reads other.conf
sources, snap = read_pip_config_kept(None, pending)
print(json.dumps([started, sources.index_url, snap.key == config_key(), [n for n, _sig in snap.files]]))
""", cfg)
    assert got[:3] == [True, "http://127.0.0.1:9/two", True]
    assert str(cfg2) in got[3]


def test_a_read_nobody_needs_is_ended(tmp_path):
    got = _fresh("""
pending = PendingRead.start(None)
pid = pending._pid
pending.close()
try:
    os.waitpid(pid, os.WNOHANG)
    reaped = False
except ChildProcessError:  # ended and reaped
    reaped = True
after = pending.snapshot()
pending.close()  # idempotent
print(json.dumps([pid is not None, reaped, after]))
""", tmp_path / "absent.conf")
    assert got == [True, True, None]


def test_no_copy_starts_while_another_thread_runs(tmp_path, monkeypatch):
    from torchdepot.net.pipconfig import PendingRead

    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = http://127.0.0.1:9/three\n")
    _clean_pip_env(monkeypatch, cfg)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        pending = PendingRead.start(None)
        assert not pending.started  # a copy could inherit that thread's locks held: read in process
        assert read_pip_config_kept(None, pending)[0].index_url == "http://127.0.0.1:9/three"
    finally:
        stop.set()
        other.join()
