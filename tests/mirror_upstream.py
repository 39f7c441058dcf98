"""Loopback upstreams for mirror tests, laid out like download.pytorch.org (built by tests/kit).

Upstream A (``<A>/whl/<acc>/torch/``) lists torch wheels with ``#sha256=`` and PEP 658
``.metadata``; its dependency pages ``<A>/whl/<acc>/<dep>/`` link with ABSOLUTE URLs to
upstream B (another server), which also serves a plain simple index ``<B>/simple/`` that
stands in for the user's pip index. The builders live in ``tests/kit``; the names here stay
importable for the modules that use them.
"""

from __future__ import annotations

from pathlib import Path

from tests.kit.upstream import dead_url, pytorch_upstreams
from tests.kit.wheels import build_wheel as make_wheel
from tests.kit.wheels import sha256, wheel_metadata


def build_upstreams(a_root: Path, b_root: Path, b_url: str, torch_wheels: list[Path], dep_wheels: list[Path],
                    acc: str = "cpu", wrong_sha: set[str] = frozenset()) -> None:
    """Lay out upstream A (PyTorch-like) and B (dependency file host + simple index) on disk.

    ``wrong_sha``: projects whose links on A claim a wrong sha256 (upstream lies).
    """
    a, b = pytorch_upstreams(torch_wheels, dep_wheels, b_url, acc=acc, wrong_sha=wrong_sha)
    a.write(a_root)
    b.write(b_root)


__all__ = ["build_upstreams", "dead_url", "make_wheel", "sha256", "wheel_metadata"]
