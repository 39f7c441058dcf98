"""Shared fixtures. Skips are failures under CI (TORCHDEPOT_NO_SKIP=1 or CI=true):
an end-to-end test that cannot run there is a defect, not a pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"

NO_SKIP = os.environ.get("TORCHDEPOT_NO_SKIP") == "1" or os.environ.get("CI", "").lower() in ("1", "true")

# Three hypothesis profiles. `dev` (the default) keeps a local run fast and randomized, so it
# keeps finding new counterexamples; `ci` runs the full 2,000 examples per property over a
# fixed, reproducible set (a failure there is a regression, not a new random draw); `fast` is
# the fast tier's (`make test`): every property still runs, with at most 50 examples.
# Property tests that want "the full count" leave max_examples to the profile; a test that
# sets its own max_examples keeps it under dev and ci. HYPOTHESIS_PROFILE=ci runs CI's set locally.
DEV_EXAMPLES = 200
CI_EXAMPLES = 2000
FAST_EXAMPLES = 50
PROFILE_EXAMPLES = {"dev": DEV_EXAMPLES, "ci": CI_EXAMPLES, "fast": FAST_EXAMPLES}
settings.register_profile("dev", max_examples=DEV_EXAMPLES)
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, print_blob=True)
settings.register_profile("fast", max_examples=FAST_EXAMPLES, derandomize=NO_SKIP, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if NO_SKIP else "dev")
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under the `fast` profile a property's own max_examples is capped at FAST_EXAMPLES too."""
    if PROFILE != "fast":
        return
    for item in items:
        test = getattr(item, "obj", None)
        own = getattr(test, "_hypothesis_internal_use_settings", None)  # what @settings attached
        if isinstance(own, settings) and own.max_examples > FAST_EXAMPLES:
            test._hypothesis_internal_use_settings = settings(own, max_examples=FAST_EXAMPLES)


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


# torch 2.13.0's runtime dependencies, plus numpy (the default spec adds it to every env).
TORCH_DEPS = frozenset({"filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2", "fsspec",
                        "mpmath", "markupsafe", "numpy"})


def wheel_project(path: Path) -> str:
    from packaging.utils import parse_wheel_filename

    return str(parse_wheel_filename(path.name)[0])


@pytest.fixture(scope="session")
def dep_wheels(torch_wheel) -> list[Path]:
    """torch's dependency wheels + numpy, fetched once with the MACHINE's pip config into the
    cache outside the repo (as the torch wheel is); the tests then serve them on loopback."""
    import subprocess
    import sys

    deps = TORCH_CACHE / "deps"

    def have() -> list[Path]:
        return sorted(p for p in deps.glob("*.whl") if wheel_project(p) in TORCH_DEPS)

    if {wheel_project(p) for p in have()} != TORCH_DEPS:
        deps.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--find-links", str(TORCH_CACHE),
             f"torch=={TORCH_VERSION}", "numpy", "-d", str(deps)],
            capture_output=True, text=True,
        )
        missing = TORCH_DEPS - {wheel_project(p) for p in have()}
        if missing:
            pytest.skip(f"cannot obtain torch's dependency wheels {sorted(missing)}: {proc.stderr.strip()[-300:]}")
    # One wheel per project (the newest name sorts last) so upstream pages stay unambiguous.
    return sorted({wheel_project(p): p for p in have()}.values())


@pytest.fixture(scope="session")
def torch_mirror(tmp_path_factory, torch_wheel, dep_wheels):
    """The real torch CPU wheel mirrored ONCE per session by ``torchdepot mirror`` from loopback
    upstreams (tests/kit/torchmirror.py), shared by the end-to-end tests that only read a
    mirror. A test that would change it works on ``torch_mirror.copy(dest)``; teardown fails if
    anything under the shared mirror was written."""
    from tests.kit.torchmirror import torch_mirror as make

    with make(tmp_path_factory.mktemp("torch-mirror"), torch_wheel, dep_wheels) as mirror:
        yield mirror
        changed = mirror.changed()
        assert not changed, f"tests wrote into the shared torch mirror: {changed[:10]}"
