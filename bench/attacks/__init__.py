"""Attack classes of issue 13 for bench/faults.py: each module's ``run(tmp) -> list[Outcome]``
runs a handful of concrete attempts through the real CLI against loopback servers it starts.

``publish`` (a) published mirror corruption, ``userfiles`` (b) user files, ``unbounded`` (c)
unbounded input, ``tracebacks`` (d) one line instead of a traceback; ``harness`` judges them.
"""
