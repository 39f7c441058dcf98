"""A loopback host that drops packets: a listening socket whose accept queue is full, so new
SYNs go unanswered and a client's connect times out, as with a host that vanished off the LAN.

Each connect attempt against it lasts the full connect timeout. The tests inject a short one
(``CONNECT_ENV``: ``TORCHDEPOT_CONNECT_TIMEOUT``, a cap the product honours) so a command's
attempts show in about a second instead of 3-10 s each; what they check (one line, exit 1,
a bounded number of attempts) is unchanged."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

CONNECT_TIMEOUT = 0.25  # seconds per attempt against the blackhole
CONNECT_ENV = {"TORCHDEPOT_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT)}


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """Yield the port of a loopback address that never answers a connect."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fill = []
    try:
        for _ in range(3):  # backlog 0 still queues one or two: fill them
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fill.append(s)
        yield port
    finally:
        for s in (*fill, srv):
            s.close()
