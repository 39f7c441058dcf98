"""A loopback host that drops packets: a listening socket whose accept queue is full, so new
SYNs go unanswered and a client's connect times out, as with a host that vanished off the LAN."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


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
