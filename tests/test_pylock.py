"""pylock.toml (PEP 751): one ``[[packages]]`` entry per release, with every fitting wheel.

A release published as several wheels that fit one target (a compiled wheel beside the pure
one, several manylinux tags: charset-normalizer, numpy) is one entry with a ``wheels`` array;
a name and version repeated as two entries is not a valid lock. uv installs both locks the
mirror makes from the local files: ``envs/<id>/pylock.toml`` (URLs, served over HTTP) and the
mirror's own ``targets/<id>/pylock.toml`` (paths relative to the lock).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from tests.httpserver import Server
from tests.kit.lockmirror import build_mirror, cli, fake_torch_wheels
from tests.kit.wheels import build_wheel
from tests.venvs import hermetic_env, run
from torchdepot.lockfiles.render import pins_for, pylock_toml
from torchdepot.verify.locks import parse_requirements

UV = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "uv"
PY = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
TID = "cpu-py311-linux-x86_64"
CN = "charset_normalizer"
PURE = f"{CN}-3.4.0-py3-none-any.whl"
COMPILED = f"{CN}-3.4.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A mirror whose cpu target locks charset-normalizer 3.4.0 as two wheels: compiled + pure."""
    w = tmp_path / "w"
    wheels = [*fake_torch_wheels(w),
              build_wheel(w, "charset-normalizer", "3.4.0", files={f"{CN}/__init__.py": "KIND = 'pure'\n"}),
              build_wheel(w, "charset-normalizer", "3.4.0", tag="cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
                          files={f"{CN}/__init__.py": "KIND = 'compiled'\n"})]
    assert sorted(p.name for p in wheels if p.name.startswith(CN)) == sorted([PURE, COMPILED])
    root = tmp_path / "m"
    m = build_mirror(root, wheels)
    t = m.targets[0]
    lock = root / "targets" / t.id / "pylock.toml"
    lock.parent.mkdir(parents=True)  # as sync.pipindex writes it: the one writer, paths relative to the lock
    lock.write_text(pylock_toml(t, pins_for(t, m.by_path()), "../..", location="path"))
    return root


def uv_install(tmp_path: Path, lock: Path, *, offline: bool) -> Path:
    """Install ``lock`` with uv into a fresh venv under tmp_path, nothing but the lock to go by
    (``offline``: no network at all, so every wheel must come from a local path)."""
    venv = tmp_path / "venv"
    env = hermetic_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), **({"UV_OFFLINE": "1"} if offline else {}))
    r = run([UV, "venv", "--python", PY, venv], env=env)
    assert r.returncode == 0, r.stderr
    r = run([UV, "pip", "install", "--preview-features", "pylock",
             "--python", venv / "bin" / "python", "-r", lock], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Installed 3 packages" in r.stderr, r.stderr
    return venv / "bin" / "python"


def imported(python: Path) -> str:
    r = run([python, "-c", f"import torch, filelock, {CN}; print(torch.__version__, {CN}.KIND)"])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def entries(doc: dict, name: str) -> list[dict]:
    return [p for p in doc["packages"] if p["name"] == name]


def test_one_entry_per_release_with_every_wheel(mirror):
    doc = tomllib.loads((mirror / "targets" / TID / "pylock.toml").read_text())
    names = [(p["name"], p["version"]) for p in doc["packages"]]
    assert names == [("charset-normalizer", "3.4.0"), ("filelock", "3.0.0"), ("torch", "2.13.0+cpu")]
    (cn,) = entries(doc, "charset-normalizer")
    assert [w["name"] for w in cn["wheels"]] == sorted([COMPILED, PURE])
    assert [w["path"] for w in cn["wheels"]] == [f"../../packages/charset-normalizer/{n}" for n in sorted([COMPILED, PURE])]
    assert len({w["hashes"]["sha256"] for w in cn["wheels"]}) == 2


def test_mirror_own_lock_installs_with_uv(tmp_path, mirror):
    python = uv_install(tmp_path, mirror / "targets" / TID / "pylock.toml", offline=True)
    assert imported(python) == "2.13.0+cpu compiled"  # uv picked the wheel that fits best


def test_env_lock_over_http_installs_with_uv(tmp_path, mirror):
    """``torchdepot lock`` output: URL wheels, one entry per release; the same for requirements.lock."""
    with Server(mirror) as srv:
        res = cli("lock", "--mirror", mirror, "--out", tmp_path / "envs", "--base-url", srv.url)
        assert res.exit_code == 0, res.output
        d = tmp_path / "envs" / TID
        doc = tomllib.loads((d / "pylock.toml").read_text())
        (cn,) = entries(doc, "charset-normalizer")
        assert cn["index"] == f"{srv.url}/whl/cpu"
        assert [w["url"].rsplit("/", 1)[1] for w in cn["wheels"]] == sorted([COMPILED, PURE])
        pins = parse_requirements((d / "requirements.lock").read_text(), "x")
        assert [(p.name, p.version, len(p.sha256)) for p in pins] == [
            ("charset-normalizer", "3.4.0", 2), ("filelock", "3.0.0", 1), ("torch", "2.13.0+cpu", 1)]
        python = uv_install(tmp_path, d / "pylock.toml", offline=False)
    assert imported(python) == "2.13.0+cpu compiled"
