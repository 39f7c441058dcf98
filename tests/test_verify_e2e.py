"""END TO END with the real torch-2.13.0+cpu wheel: loopback upstreams -> `torchdepot mirror`
-> `torchdepot lock` (twice, identical) -> `torchdepot verify` against the served mirror, and a
plain `pip install --require-hashes -r requirements.lock` into a fresh venv from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.httpserver import Server
from tests.kit.cli import td
from tests.venvs import hermetic_env, make_venv, run

CPU = "cpu-py311-linux-x86_64"


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.e2e
def test_mirror_lock_verify_pip_install(tmp_path, torch_mirror):
    # the session's `torchdepot mirror` run; dependencies came from "the user's pip
    # configuration": there a loopback simple index
    proc, out = torch_mirror.first_run, torch_mirror.root
    assert proc.returncode == 0, proc.stderr[-2000:]

    # lock twice -> byte-identical
    proc = td("lock", "--mirror", out, "--out", tmp_path / "envs")
    assert proc.returncode == 0, proc.stderr
    first = snapshot(tmp_path / "envs")
    assert td("lock", "--mirror", out, "--out", tmp_path / "envs").returncode == 0
    assert snapshot(tmp_path / "envs") == first
    env_dir = tmp_path / "envs" / CPU
    req = (env_dir / "requirements.lock").read_text()
    assert "torch==2.13.0+cpu \\\n    --hash=sha256:" in req
    assert "numpy==" in req
    variant = json.loads((env_dir / "variant.json").read_text())
    assert variant["torch"] == "2.13.0+cpu"
    assert variant["cuda"] is None
    assert variant["min_nvidia_driver"] is None

    with Server(out) as mirror:
        # verify: throwaway env, mirror only, hashes, real import torch + numpy interop
        proc = td("verify", env_dir, "--mirror", mirror.url, "--json")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        r = json.loads(proc.stdout)["results"][0]
        status = {c["name"]: c["status"] for c in r["checks"]}
        assert r["result"] == "pass"
        assert r["mode"] == "installed"
        for name in ("hashes vs mirror manifest", "install (hash-checked, mirror only)", "import torch", "version",
                     "torch.version.cuda", "tensor op", "numpy interop"):
            assert status[name] == "pass", (name, r["checks"])

        # a user's plain pip, fresh venv, from the served mirror with hash checking
        py = make_venv(tmp_path / "venv")
        proc = run([py, "-m", "pip", "install", "--require-hashes", "--no-deps", "--only-binary", ":all:",
                    "-r", env_dir / "requirements.lock"], env=hermetic_env(TORCHDEPOT_MIRROR=mirror.url))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = run([py, "-c", "import torch, numpy; print(torch.__version__, torch.from_numpy(numpy.ones(3)).sum().item())"])
    assert proc.stdout.split() == ["2.13.0+cpu", "3.0"], proc.stderr[-2000:]

    # doctor --check on the real install, on this GPU-less machine (no driver recorded)
    proc = td("doctor", "--check", "--python", py, "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["driver"] is None
    assert report["recommended"] == "cpu"
    check = report["check"]
    assert check["result"]["torch"] == "2.13.0+cpu", check
    assert check["result"]["cuda"] is None, check
    assert check["result"]["cuda_available"] is False, check
    assert check["result"]["numpy"], check
    assert check["problems"] == [], check

    # tampering with the committed lock is caught and named
    lock = env_dir / "requirements.lock"
    sha = req.split("torch==2.13.0+cpu \\\n    --hash=sha256:")[1][:64]
    lock.write_text(req.replace(sha, "e" * 64))
    proc = td("verify", env_dir, "--mirror", out)
    assert proc.returncode == 1
    assert f"{lock}: torch==2.13.0+cpu hash sha256:eeeeeeeeeeee... matches no mirror file: torch-2.13.0+cpu-cp311" in proc.stdout
