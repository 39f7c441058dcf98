"""CLI command modules. Each module defines ``COMMANDS = [...]`` of click commands and is
named in ``torchdepot.cli.COMMAND_MODULES``, which imports it only when one of its commands runs
(under :func:`loading`, as are the modules a command imports when it starts)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a command loads its modules: they allocate
    ~50k objects that nearly all live on, which the collector would otherwise scan some 80 times
    (~10 % of ``mirror``'s ~0.17 s of imports). It resumes afterwards if it was running."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
