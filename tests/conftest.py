"""Shared fixtures. Skips are failures under CI (TORCHDEPOT_NO_SKIP=1 or CI=true):
an end-to-end test that cannot run there is a defect, not a pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"

NO_SKIP = os.environ.get("TORCHDEPOT_NO_SKIP") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI (skips are failures here): {reason}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


TORCH_VERSION = "2.13.0"
TORCH_CACHE = Path(os.environ.get("TORCHDEPOT_TEST_CACHE", Path.home() / ".cache" / "torchdepot-tests"))


@pytest.fixture(scope="session")
def torch_wheel() -> Path:
    """The real torch-2.13.0+cpu wheel (~190 MB), cached outside the repo.

    Obtained exactly as the machine documents: ``pip download --no-deps torch==2.13.0``
    with the machine's own pip configuration (its find-links hold the CPU build).
    """
    import subprocess
    import sys

    TORCH_CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(TORCH_CACHE.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
    if not found:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"torch=={TORCH_VERSION}", "-d", str(TORCH_CACHE)],
            capture_output=True, text=True,
        )
        found = sorted(TORCH_CACHE.glob(f"torch-{TORCH_VERSION}+cpu-*.whl"))
        if not found:
            pytest.skip(f"cannot obtain torch=={TORCH_VERSION} CPU wheel: {proc.stderr.strip()[-300:]}")
    return found[0]
