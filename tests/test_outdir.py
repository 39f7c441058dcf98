"""``out:`` safety (issue 13.3): a mirror is written only into a new or empty directory or an
existing mirror; /, $HOME (and above) and directories of other files are refused in one line,
before anything is written, by ``torchdepot mirror`` and ``tools/fetch`` alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from torchdepot.cli import main
from torchdepot.commands.mirror import fetch_tool
from torchdepot.errors import UnsafePathError
from torchdepot.store.outdir import check_out_dir, is_mirror


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home" / "alice"
    h.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    return h


def refused(path, expected: str) -> str:
    with pytest.raises(UnsafePathError) as info:
        check_out_dir(path)
    msg = str(info.value)
    assert expected in msg, msg
    assert "\n" not in msg, msg
    return msg


def test_new_empty_and_existing_mirrors_are_accepted(home):
    assert check_out_dir(home / "mirror") == (home / "mirror").resolve()
    assert check_out_dir(home / "a" / "b" / "c") == (home / "a" / "b" / "c").resolve()
    (home / "empty").mkdir()
    assert check_out_dir(home / "empty")
    for marker in ("manifest.json", ".torchdepot", ".torchdepot.lock"):
        m = home / f"m-{marker}"
        m.mkdir()
        (m / "index.html").write_text("old landing page")
        content = '{"files": [], "format": "torchdepot-manifest", "targets": []}' if marker == "manifest.json" else ""
        (m / marker).mkdir() if marker == ".torchdepot" else (m / marker).write_text(content)
        assert is_mirror(m)
        assert check_out_dir(m) == m.resolve()


def test_a_manifest_json_of_something_else_is_not_a_mirror(home):
    """Web apps and browser extensions have a manifest.json: the name alone must not let a sync
    overwrite that directory's index.html and manifest.json."""
    app = home / "webapp"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my app", "start_url": "."}')
    (app / "index.html").write_text("my page")
    assert not is_mirror(app)
    refused(app, "not empty and not a torchdepot mirror")
    (app / "manifest.json").write_text("not json at all")
    refused(app, "not empty and not a torchdepot mirror")


def test_refusals(home, tmp_path):
    docs = home / "docs"
    docs.mkdir()
    (docs / "index.html").write_text("my page")
    refused(docs, "not empty and not a torchdepot mirror (it has 'index.html', no torchdepot manifest.json)")
    (home / "notes.txt").write_text("x")
    refused(home / "notes.txt", "exists and is not a directory")
    refused("/", "refusing the file system root")
    refused(home, "refusing your home directory")
    refused(f"{home}/./", "refusing your home directory")
    refused(home.parent, "a directory above your home")
    (tmp_path / "link").symlink_to(home)
    refused(tmp_path / "link", "refusing your home directory")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UnsafePathError):
        check_out_dir(tmp_path / "loop" / "x")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mirror_and_tools_fetch_refuse_before_writing(home, tmp_path):
    user = home / "site"
    user.mkdir()
    (user / "index.html").write_text("<h1>my site</h1>")
    (user / "manifest.json.tmp").write_text("not ours")  # looks like a temp name a sync cleans up
    before = _snapshot(user)
    spec = tmp_path / "mirror.yaml"
    spec.write_text(f"out: {user}\naccelerators: [cpu]\npythons: ['3.11']\nplatforms: [linux-x86_64]\n"
                    "upstreams: ['http://torchlab.invalid:8000/whl']\n")
    runner = CliRunner()
    for args in (["mirror", "--spec", str(spec)], ["mirror", "--spec", str(spec), "--dry-run"],
                 ["mirror", "--spec", str(spec), "--out", str(home)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 1, res.output
        assert res.stderr.count("\n") == 1
        assert "Traceback" not in res.output
        assert res.stderr.startswith("torchdepot: error: out ")
    res = runner.invoke(fetch_tool, ["--cpu", "--py", "3.11", "--platform", "linux-x86_64", "--out", str(user),
                                     "--upstream", "http://torchlab.invalid:8000/whl"])
    assert res.exit_code == 1
    assert res.stderr.startswith("tools/fetch: error: out ")
    assert res.stderr.count("\n") == 1
    assert _snapshot(user) == before
    assert sorted(os.listdir(user)) == ["index.html", "manifest.json.tmp"]


def test_a_hostile_manifest_in_the_mirror_is_one_line_for_tools_fetch(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "manifest.json").write_text(json.dumps([1, 2, 3]))
    res = CliRunner().invoke(fetch_tool, ["--cpu", "--out", str(m)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    assert res.stderr.count("\n") == 1, res.output


def test_unbundle_has_the_same_destination_rules_as_mirror(home, tmp_path):
    """Issue 22 item 3: unbundle --to a non-empty non-mirror dir or $HOME overwrote index.html
    and whl/... with no backup and exited 0."""
    from tests.mirror_fixture import make_mirror
    from torchdepot.ship.bundle import plan_bundle, write_bundle

    src = tmp_path / "src" / "mirror"
    make_mirror(src)
    parts, _ = write_bundle(plan_bundle(src, None, None, None), tmp_path / "b.tar")
    user = home / "site"
    (user / "whl").mkdir(parents=True)
    (user / "index.html").write_text("<h1>my site</h1>")
    (user / "whl" / "notes.txt").write_text("mine")
    (home / "index.html").write_text("home page")
    before, home_before = _snapshot(user), _snapshot(home)
    runner = CliRunner()
    for dest, why in ((user, "not empty and not a torchdepot mirror"), (home, "refusing your home directory"),
                      (home.parent, "a directory above your home")):
        res = runner.invoke(main, ["unbundle", str(parts[0]), "--to", str(dest)])
        assert res.exit_code == 1, res.output
        assert res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("torchdepot: error: unbundle --to "), res.stderr
        assert why in res.stderr, res.stderr
    assert _snapshot(user) == before
    assert _snapshot(home) == home_before
    res = runner.invoke(main, ["unbundle", str(parts[0]), "--to", str(home / "new-mirror")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["unbundle", str(parts[0]), "--to", str(home / "new-mirror")])  # a mirror now
    assert res.exit_code == 0, res.output


def test_tilde_in_out_is_expanded_once_and_the_banner_names_that_path(home, tmp_path, monkeypatch):
    """Issue 22 item 4: ``out: ~/site`` was checked as $HOME/site but written to ./~/site."""
    from torchdepot.errors import SpecError
    from torchdepot.spec.mirror import parse_spec, with_overrides

    monkeypatch.chdir(tmp_path)
    base = {"accelerators": ["cpu"], "pythons": ["3.11"], "platforms": ["linux-x86_64"],
            "upstreams": ["http://127.0.0.1:9/whl"]}
    assert parse_spec({**base, "out": "~/site"}).out == home / "site"
    assert with_overrides(parse_spec(base), out="~/site").out == home / "site"
    for raw in ("./~/site", "~no-such-user-here/site"):
        with pytest.raises(SpecError, match="starts with '~'"):
            parse_spec({**base, "out": raw})
    with pytest.raises(UnsafePathError, match="leading '~'"):
        check_out_dir("~/site")
    # the refusal of $HOME itself is checked at the expanded path, where it would be written
    spec = tmp_path / "mirror.yaml"
    spec.write_text("out: '~'\n" + "".join(f"{k}: {v!r}\n" for k, v in base.items()).replace("'", '"'))
    res = CliRunner().invoke(main, ["mirror", "--spec", str(spec)])
    assert res.exit_code == 1, res.output
    assert "refusing your home directory" in res.stderr, res.output
    assert not (tmp_path / "~").exists()
