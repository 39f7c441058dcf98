"""Reading the user's pip configuration (parsing + the real pip with a temp config file)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.venvs import hermetic_env
from torchdepot.net.pipconfig import (
    PipSources,
    parse_config_list,
    pip_default_index,
    read_pip_config,
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
