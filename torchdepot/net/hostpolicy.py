"""Which hosts a mirror may download from, and which index links it may follow. Pure.

Default policy: the spec's upstreams, the hosts the PyTorch index is known to link to
(``download-r2.pytorch.org`` for torch/vision/audio/triton/fbgemm, the CloudFront
distribution ``pytorch/test-infra: s3_management/manage_v2.py`` writes for other
packages, ``pypi.nvidia.com`` for ``nvidia-*``), and the dependency hosts the user's
pip configuration names (index hosts plus, for pip's built-in default index, the file
host pip itself knows; see :func:`torchdepot.net.pipconfig.pip_file_host`). Nothing about
the public index is written here: those hosts come from pip at run time.

A link is refused (and counted, never raised) when its path has a ``.`` or ``..`` segment
(``%2e%2e`` included, once decoded), its scheme is not http(s), its host
and port are outside the policy (an entry ``host`` allows the scheme's default port only,
``host:port`` that port only), its decoded filename could escape a directory, it is not a valid
wheel / conda package name, or the same filename appears with two different hashes.
"""

from __future__ import annotations

import collections
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

PYTORCH_LINKED_HOSTS = frozenset({
    "download.pytorch.org",
    "download-r2.pytorch.org",
    "d21usjoq99fcb9.cloudfront.net",  # test-infra manage_v2.py: absolute links for non-foundation packages
    "pypi.nvidia.com",
})
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_port(entry: str) -> tuple[str, int | None]:
    """``"host:8080"`` -> ("host", 8080); ``"host"`` -> ("host", None); IPv6 literals kept whole."""
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and "]" not in port and (host.endswith("]") or ":" not in host):
        return host.strip("[]"), int(port)
    return entry.strip("[]"), None


def netloc_of(url: str) -> str:
    """``host`` for a URL on its scheme's default port, ``host:port`` otherwise ("" if none).

    A policy entry with a port allows only that port; one without allows only the default
    ports: another service on an allowed host is another origin."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(parts.scheme.lower()):
        return host
    return f"{host}:{port}"


def host_of(url: str) -> str:
    """Lower-case host name of an http(s) URL ("" when there is none or it is unparseable)."""
    try:
        return (urllib.parse.urlsplit(url.strip()).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


def _has_dot_segment(path: str) -> bool:
    """A ``.`` or ``..`` segment in a URL path, as written or once percent-decoded (``%2e%2e``),
    with ``\\`` taken as a separator too (some servers do): where it leads is the server's
    normalisation, not the link's host policy, so such a URL is refused, not followed."""
    for text in (path, urllib.parse.unquote(path)):
        if any(seg in (".", "..") for seg in text.replace("\\", "/").split("/")):
            return True
    return False


@dataclass(frozen=True)
class HostPolicy:
    hosts: frozenset[str]
    allow_file: bool = False  # file:// links (only for local indexes the user configured)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` must not be fetched under this policy, or None."""
        try:
            parts = urllib.parse.urlsplit(url.strip())
            scheme = parts.scheme.lower()
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return "unparseable URL"
        if _has_dot_segment(parts.path):
            return "dot segment in URL path refused"
        if scheme == "file":
            return None if self.allow_file else "file: link refused"
        if scheme not in SCHEMES:
            return f"{scheme or 'schemeless'}: link refused"
        if parts.username is not None or parts.password is not None:
            return "credentials in link refused"
        host = host_of(url)
        if not host:
            return "link without host"
        port = parts.port
        if port is None or port == DEFAULT_PORTS[scheme]:
            if host in self.hosts or f"{host}:{DEFAULT_PORTS[scheme]}" in self.hosts:
                return None
        elif f"{host}:{port}" in self.hosts:
            return None
        where = host if port is None else f"{host}:{port}"
        return f"host {where} not allowed by the host policy"

    def allows(self, url: str) -> bool:
        return self.refusal(url) is None

    @property
    def hostnames(self) -> frozenset[str]:
        """Host names without ports (for checks that see only a host, like the fetcher's)."""
        return frozenset(_split_port(h)[0] for h in self.hosts)

    def with_hosts(self, *more: str) -> HostPolicy:
        return HostPolicy(self.hosts | {h.lower() for h in more if h}, self.allow_file)


def default_policy(upstreams: Iterable[str] = (), dependency_urls: Iterable[str] = (),
                   extra_hosts: Iterable[str] = (), allow_file: bool = False) -> HostPolicy:
    """Upstream hosts + hosts the PyTorch index links to + pip-config dependency hosts
    (``dependency_urls``: index / find-links URLs, or bare host names) + ``extra_hosts``."""
    hosts = set(PYTORCH_LINKED_HOSTS)
    for url in list(upstreams) + list(dependency_urls):
        h = netloc_of(url) if "://" in url else url.strip().lower()
        if h:
            hosts.add(h)
    hosts.update(h.strip().lower() for h in extra_hosts if h and h.strip())
    return HostPolicy(frozenset(hosts), allow_file)


# -- links -------------------------------------------------------------------------------
PACKAGE_SUFFIXES = (".whl", ".conda", ".tar.bz2")
NOT_A_PACKAGE = "not a wheel or conda package"


def filename_refusal(name: str) -> str | None:
    """Why a decoded file name must not be stored, or None for a valid wheel/conda name."""
    from torchdepot.errors import TorchdepotError
    from torchdepot.model.names import safe_filename, safe_path_name
    from torchdepot.model.wheelname import METADATA_SUFFIX

    if not name:
        return "empty file name"
    decoded = urllib.parse.unquote(name)
    if decoded in (".", "..") or "/" in decoded or "\\" in decoded or ".." in decoded.split("/"):
        return "path traversal in file name"
    try:
        safe_path_name(name)
        if not decoded.endswith((".conda", ".tar.bz2")):
            safe_filename(name)
    except TorchdepotError:
        return "unsafe file name"
    if decoded.endswith(".whl"):
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        from torchdepot.model.wheelname import split_variant_label

        try:  # a PEP 825 variant label is valid too (packaging does not know labels yet)
            parse_wheel_filename(split_variant_label(decoded)[0])
        except (InvalidWheelFilename, ValueError, TorchdepotError):
            return "invalid wheel file name"
        return None
    if decoded.endswith((".conda", ".tar.bz2")):
        from torchdepot.model.names import conda_filename

        try:  # conda's own name rule (``_libgcc_mutex`` is valid), checked as a path
            conda_filename(name)
        except TorchdepotError:
            return "invalid conda package file name"
        return None
    if decoded.endswith(METADATA_SUFFIX) and decoded[: -len(METADATA_SUFFIX)].endswith(".whl"):
        return filename_refusal(decoded[: -len(METADATA_SUFFIX)])
    return NOT_A_PACKAGE


@dataclass(frozen=True)
class Screened:
    kept: tuple  # links (any object with .url, .filename, .sha256)
    warnings: collections.Counter
    refused: tuple = ()  # (link, reason) for every link refused (identical duplicates are not refusals)


def screen_links(links: Iterable, policy: HostPolicy) -> Screened:
    """Keep the links a mirror may fetch; count every refusal by reason. A file on an allowed
    URL that is simply not a wheel or conda package (the sdists of the user's own index) is
    left out without being counted: a refusal is what the screen stops, not what the mirror
    never takes.

    A file name listed twice with different hashes is ambiguous (one of them is not what
    it claims): every copy is refused. Identical duplicates are kept once."""
    warnings: collections.Counter = collections.Counter()
    refused = []
    candidates = []
    for link in links:
        why = policy.refusal(link.url)
        if why is None:
            why = filename_refusal(link.filename)
            if why == NOT_A_PACKAGE:
                continue  # an sdist or any other file the policy allows: not mirrored, not a refusal
        if why:
            warnings[why] += 1
            refused.append((link, why))
            continue
        candidates.append(link)
    hashes: dict[str, set] = collections.defaultdict(set)
    for link in candidates:
        if link.sha256:
            hashes[link.filename].add(link.sha256)
    kept, seen = [], set()
    for link in candidates:
        if len(hashes[link.filename]) > 1:
            why = "same file name with different hashes"
            warnings[why] += 1
            refused.append((link, why))
            continue
        if link.filename in seen:
            continue
        seen.add(link.filename)
        kept.append(link)
    return Screened(tuple(kept), warnings, tuple(refused))
