"""Which mirror hosts an installer must be told to trust, and the options that say so. Pure.

pip refuses a plain-HTTP index ("not a trusted or secure host") unless the HOST STRING of
the URL is ``localhost``, an address in 127.0.0.0/8 or ``::1``, or is named with
``--trusted-host``; it decides from the string, not from the address the name resolves to.
So every install command printed for a mirror on ``http://torchlab:8000`` carries
``--trusted-host torchlab:8000``. uv (0.13) fetches plain HTTP without an option, but the
printed uv commands name the host with ``--allow-insecure-host`` too, so they keep working
should uv ever apply the same rule. https, file:// and loopback URLs need nothing.

The host is written as in the URL, ``host[:port]`` lower-cased without credentials
(``[fd00::1]:8000`` for IPv6), which both tools match.
"""

from __future__ import annotations

import ipaddress
import shlex
import urllib.parse

PIP_TRUST_OPTION = "--trusted-host"
UV_TRUST_OPTION = "--allow-insecure-host"


def _pip_trusts_by_default(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback  # 127.0.0.0/8, ::1
    except ValueError:
        return False


def insecure_host(url: str) -> str | None:
    """``host[:port]`` of a plain-HTTP URL whose host pip does not trust by default; else None
    (https, file://, loopback, or not a URL at all, e.g. the ``${TORCHDEPOT_MIRROR}`` placeholder)."""
    try:
        u = urllib.parse.urlsplit(url)
        hostname = u.hostname
        u.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if u.scheme != "http" or not hostname or _pip_trusts_by_default(hostname):
        return None
    return u.netloc.rpartition("@")[2].lower()


def pip_trust_args(url: str) -> tuple[str, ...]:
    """``("--trusted-host", "torchlab:8000")`` when pip needs it for ``url``; else ``()``."""
    host = insecure_host(url)
    return (PIP_TRUST_OPTION, host) if host else ()


def uv_trust_args(url: str) -> tuple[str, ...]:
    """``("--allow-insecure-host", "torchlab:8000")`` for the same hosts; else ``()``."""
    host = insecure_host(url)
    return (UV_TRUST_OPTION, host) if host else ()


def install_commands(index_url: str, requirement: str = "torch") -> tuple[str, str]:
    """The pip and the uv command that install ``requirement`` from ``index_url`` verbatim,
    trust options included where the host needs them. Every printed install line (doctor,
    serve's banner, the landing page, lock headers) comes from here."""
    def line(tool: str, trust: tuple[str, ...]) -> str:
        return " ".join([tool, "--index-url", *map(shlex.quote, (index_url, *trust, requirement))])

    return line("pip install", pip_trust_args(index_url)), line("uv pip install", uv_trust_args(index_url))
