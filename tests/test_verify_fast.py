"""`torchdepot verify` with a stand-in torch wheel (seconds): pass, tampered hash, wrong
variant, resolve-only for other Pythons, --json, --keep, served over HTTP."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.httpserver import Server
from tests.kit.lockmirror import (
    FAKE_TORCH,
    build_mirror,
    cli,
    fake_torch_wheels,
    private_tmp_fixture,  # noqa: F401 (autouse)
)
from tests.kit.wheels import build_wheel
from torchdepot.cli import main
from torchdepot.verify.smoke import judge

CPU = "cpu-py311-linux-x86_64"


def remove_kept(kept: Path, private_tmp: Path) -> None:
    assert kept.parent == private_tmp, kept
    assert kept.name.startswith("torchdepot-verify-"), kept
    shutil.rmtree(kept)


@pytest.fixture
def locked(tmp_path):
    build_mirror(tmp_path / "m", fake_torch_wheels(tmp_path / "w"), extra_targets=(("cpu", "3.9"),))
    res = cli("lock", "--mirror", tmp_path / "m", "--out", tmp_path / "envs")
    assert res.exit_code == 0, res.output
    return tmp_path


def results(res) -> dict:
    return {r["env"]: r for r in json.loads(res.stdout)["results"]}


def test_verify_passes_and_removes_env(locked, private_tmp):
    res = cli("verify", locked / "envs" / CPU, "--mirror", locked / "m", "--json")
    assert res.exit_code == 0, res.output
    r = results(res)[CPU]
    assert r["result"] == "pass"
    assert r["mode"] == "installed"
    assert r["kept"] is None
    status = {c["name"]: c["status"] for c in r["checks"]}
    assert status == {
        "hashes vs mirror manifest": "pass", "install (hash-checked, mirror only)": "pass", "import torch": "pass",
        "version": "pass", "torch.version.cuda": "pass", "cuda.is_available": "info", "tensor op": "pass",
        "numpy interop": "not run"}
    assert list(private_tmp.iterdir()) == []  # throwaway env removed


def test_other_python_is_resolve_only(locked):
    res = cli("verify", locked / "envs" / "cpu-py39-linux-x86_64", "--mirror", locked / "m")
    assert res.exit_code == 0, res.output
    assert "resolved (dry run only)" in res.stdout
    assert "resolve (dry run): pass" in res.stdout


def test_other_python_missing_package_fails_resolve(locked):
    # a lock pin the mirror cannot serve for that target must fail even in resolve-only mode
    req = locked / "envs" / "cpu-py39-linux-x86_64" / "requirements.lock"
    req.write_text(req.read_text().replace("filelock==3.0.0", "filelock==9.9.9"))
    (locked / "m" / "manifest.json").unlink()  # no precheck: the resolver itself must notice
    res = cli("verify", req.parent, "--mirror", locked / "m")
    assert res.exit_code == 1
    assert "resolve (dry run): fail" in res.stdout


def test_tampered_hash_fails_naming_the_file(locked):
    req = locked / "envs" / CPU / "requirements.lock"
    text = req.read_text()
    sha = re.search(r"torch==.*\n    --hash=sha256:([0-9a-f]{64})", text).group(1)
    req.write_text(text.replace(sha, "0" * 64))
    res = cli("verify", req.parent, "--mirror", locked / "m")
    assert res.exit_code == 1
    assert f"{req}: torch==2.13.0+cpu hash sha256:000000000000... matches no mirror file: torch-2.13.0+cpu-py3-none-any.whl" in res.stdout


def test_tampered_hash_caught_by_installer_without_manifest(locked):
    """With no manifest to pre-check (e.g. a plain served copy), the hashed install itself fails."""
    req = locked / "envs" / CPU / "requirements.lock"
    text = req.read_text()
    sha = re.search(r"filelock==.*\n    --hash=sha256:([0-9a-f]{64})", text).group(1)
    req.write_text(text.replace(sha, "f" * 64))
    (locked / "m" / "manifest.json").unlink()
    res = cli("verify", req.parent, "--mirror", locked / "m")
    assert res.exit_code == 1
    assert "install (hash-checked, mirror only): fail" in res.stdout
    assert str(req) in res.stdout
    assert "filelock" in res.stdout


def test_wrong_variant_fails_cuda_check(tmp_path):
    # a lock that claims cu126 but whose torch reports no CUDA (a CPU build slipped in)
    wheels = [build_wheel(tmp_path / "w", "torch", "2.13.0+cu126",
                          files={"torch/__init__.py": FAKE_TORCH.format(version="2.13.0+cpu", cuda=None)})]
    build_mirror(tmp_path / "m", wheels, acc="cu126")
    cli("lock", "--mirror", tmp_path / "m", "--out", tmp_path / "envs")
    res = cli("verify", tmp_path / "envs" / "cu126-py311-linux-x86_64", "--mirror", tmp_path / "m", "--json")
    assert res.exit_code == 1
    checks = {c["name"]: c for c in results(res)["cu126-py311-linux-x86_64"]["checks"]}
    assert checks["version"]["status"] == "fail"
    assert "2.13.0+cpu != lock's 2.13.0+cu126" in checks["version"]["detail"]
    assert checks["torch.version.cuda"]["status"] == "fail"
    assert "None != variant's 12.6" in checks["torch.version.cuda"]["detail"]


def test_verify_over_http_and_keep(locked, private_tmp):
    with Server(locked / "m") as srv:
        res = cli("verify", locked / "envs" / CPU, "--mirror", srv.url, "--keep", "--json")
    assert res.exit_code == 0, res.output
    kept = Path(results(res)[CPU]["kept"])
    assert (kept / "venv" / "bin" / "python").exists()
    assert list(kept.glob("venv/lib/python3.11/site-packages/torch/__init__.py"))
    remove_kept(kept, private_tmp)


def test_register_kernel_points_to_env_create(locked):
    """A throwaway env is no place for a kernel: verify says, in click's usage format, what to run."""
    res = CliRunner().invoke(main, ["verify", str(locked / "envs" / CPU), "--mirror", str(locked / "m"),
                                    "--register-kernel", "torch-cpu"])
    assert res.exit_code == 2
    assert "torchdepot env create ENV_DIR --prefix DIR --register-kernel torch-cpu" in res.stderr


def test_not_a_lock_folder_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["verify", str(tmp_path), "--mirror", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.startswith("torchdepot: error: ")
    assert "variant.json" in res.output


@pytest.mark.parametrize(("result", "want", "cuda", "gpu", "failing"), [
    ({"version": "2.1.0+cpu", "cuda": None, "cuda_available": False, "tensor_sum": 12.0, "numpy": None}, "2.1.0+cpu", None, False, []),
    ({"version": "2.1.0+cu121", "cuda": "12.1", "cuda_available": False, "tensor_sum": 12.0, "numpy": "1.26", "from_numpy_sum": 3.0},
     "2.1.0+cu121", "12.1", True, ["cuda.is_available"]),
    ({"version": "2.1.0+cu121", "cuda": "12.1", "cuda_available": False, "tensor_sum": 12.0, "numpy": "1.26", "from_numpy_sum": 3.0},
     "2.1.0+cu121", "12.1", False, []),
    ({"version": "2.1.0", "cuda": None, "tensor_sum": 12.0, "numpy": "2.0", "numpy_error": "ImportError: numpy.core.multiarray failed to import"},
     "2.1.0", None, False, ["numpy interop"]),
    ({"import_error": "ImportError: libcudnn.so.9"}, "2.1.0", None, False, ["import torch"]),
])
def test_judge(result, want, cuda, gpu, failing):
    assert [c.name for c in judge(result, want, cuda, gpu) if c.status == "fail"] == failing


def test_lock_written_with_base_url_is_installed_from_mirror(tmp_path, private_tmp):
    """Issue 22 item 15: the air-gap case. The lock was written for another URL (lock --base-url,
    a host this machine cannot reach); verify and env create check hashes against --mirror AND
    install from it, saying so with both URLs."""
    build_mirror(tmp_path / "m", fake_torch_wheels(tmp_path / "w"))
    dead = "http://127.0.0.1:9"
    assert cli("lock", "--mirror", tmp_path / "m", "--out", tmp_path / "envs", "--base-url", dead).exit_code == 0
    assert f"--index-url {dead}/whl/cpu" in (tmp_path / "envs" / CPU / "requirements.lock").read_text()
    with Server(tmp_path / "m") as srv:
        res = cli("verify", tmp_path / "envs" / CPU, "--mirror", srv.url, "--json")
        assert res.exit_code == 0, res.output
        checks = {c["name"]: c for c in results(res)[CPU]["checks"]}
        assert checks["install (hash-checked, mirror only)"]["status"] == "pass"
        assert dead in checks["index"]["detail"]
        assert f"{srv.url}/whl/cpu" in checks["index"]["detail"]
        made = cli("env", "create", tmp_path / "envs" / CPU, "--prefix", tmp_path / "env", "--mirror", srv.url)
    assert made.exit_code == 0, made.output
    assert f"index: pass (the lock names {dead}/whl/cpu" in made.output
    assert list((tmp_path / "env").glob("lib/python3.11/site-packages/torch/__init__.py"))


def test_lock_index_that_is_no_mirror_index_fails_naming_both_urls(tmp_path):
    from torchdepot.errors import TorchdepotError
    from torchdepot.verify.locks import EnvLock
    from torchdepot.verify.run import requirements_for
    (tmp_path / "requirements.lock").write_text("--index-url http://old.example/simple\nx==1 \\\n    --hash=sha256:"
                                                + "0" * 64 + "\n")
    lock = EnvLock(tmp_path, {}, ())
    with pytest.raises(TorchdepotError, match="http://old.example/simple.*--mirror http://new.example"):
        requirements_for(lock, "http://new.example", tmp_path)
    (tmp_path / "requirements.lock").write_text("--index-url ${TORCHDEPOT_MIRROR}/whl/cpu\n")
    assert requirements_for(lock, "http://new.example", tmp_path) == (lock.requirements, None)
