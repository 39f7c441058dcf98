"""What a torchdepot mirror (or any PyTorch-style index) offers: its accelerators and the
torch version to pin for each. Reads ``<mirror>/manifest.json`` when present, else the
``<mirror>/whl/`` root page and ``<mirror>/whl/<acc>/torch/`` pages, all through the one
upstream reader (:class:`torchdepot.sources.upstream.UpstreamReader`: one request per page,
redirects confined to the mirror's host).

Bounded: :data:`DOCTOR_HTTP` keeps connect and read timeouts short with no retry, a mirror
that cannot be reached at all (no connection to manifest.json) fails at once instead of
being asked again for its pages, and the whole read has a deadline (:data:`DOCTOR_DEADLINE`,
checked before each page): ``doctor --mirror`` on a dead host, or on one that accepts and
never answers, ends in seconds.

A mirror given without a scheme (``torchlab:8000``, as people type it) is read as
``http://torchlab:8000`` (an existing directory as ``file://``), and doctor says so."""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from torchdepot.errors import ParseError, UpstreamError, load_json
from torchdepot.model.accel import accelerator_from_dir
from torchdepot.model.wheelname import version_sort_key
from torchdepot.net.hostpolicy import default_policy
from torchdepot.net.http import QUERY_HTTP, HttpStatusError
from torchdepot.sources.upstream import UpstreamReader, crawl_wheels, root_page
from torchdepot.store.layout import pip_index

# doctor answers a person at a terminal: one try per request, a few seconds each, and a
# deadline on the whole read (a host that accepts and never answers took 2 x 10 s + backoff).
DOCTOR_HTTP = dataclasses.replace(QUERY_HTTP, read_timeout=4.0, retries=0, page_deadline=8.0)
DOCTOR_DEADLINE = 12.0  # seconds for every page of one mirror, checked before each request


def mirror_url(text: str) -> tuple[str, str | None]:
    """-> (URL to read, a note when it was completed). ``torchlab:8000`` -> ``http://torchlab:8000``;
    an existing directory -> its ``file://`` URL; a URL with a scheme comes back as given."""
    text = text.strip()
    if "://" in text:
        return text, None
    if text.startswith(("/", ".", "~")) or Path(text).is_dir():
        path = Path(text).expanduser().resolve()
        return path.as_uri(), f"{text!r} has no scheme; read as the directory {path.as_uri()}"
    url = f"http://{text}"
    if not urllib.parse.urlsplit(url).hostname:
        return text, None  # not a host either: the reader refuses it, naming it
    return url, f"{text!r} has no scheme; assumed {url} (give https:// for a TLS mirror)"


@dataclass
class MirrorOffer:
    url: str
    # accelerator -> torch versions (public) per python ("3.11") ; "" key = any python
    versions: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    index: dict[str, str] = field(default_factory=dict)  # accelerator -> relative index path
    source: str = ""

    @property
    def accelerators(self) -> list[str]:
        return sorted(self.versions)

    def index_url(self, acc: str) -> str:
        return f"{self.url.rstrip('/')}/{self.index.get(acc) or 'whl/' + acc}"

    def versions_for(self, acc: str, python: str) -> tuple[str, ...]:
        """Torch versions of ``acc`` for ``python`` ("3.11"), newest first."""
        per_py = self.versions.get(acc, {})
        pool = per_py.get(python) or per_py.get("") or set()
        return tuple(sorted(pool, key=version_sort_key, reverse=True))

    def best_version(self, acc: str, python: str) -> str | None:
        pool = self.versions_for(acc, python)
        return pool[0] if pool else None

    def offered(self, python: str) -> dict[str, tuple[str, ...]]:
        """accelerator -> its torch versions for ``python``: what doctor judges."""
        return {acc: self.versions_for(acc, python) for acc in self.accelerators}


def offer_from_manifest(url: str, doc: dict) -> MirrorOffer:
    offer = MirrorOffer(url=url, source="manifest.json")
    for t in doc.get("targets") or []:
        if not isinstance(t, dict) or t.get("kind", "pip") != "pip" or not isinstance(t.get("accelerator"), str):
            continue
        acc = t["accelerator"]
        per_py = offer.versions.setdefault(acc, {})
        if isinstance(t.get("index"), str):
            offer.index[acc] = t["index"].strip("/")
        for p in t.get("packages") or []:
            if isinstance(p, dict) and p.get("name") == "torch" and isinstance(p.get("version"), str):
                per_py.setdefault(str(t.get("python") or ""), set()).add(p["version"].split("+", 1)[0])
    return offer


class _Deadline:
    """Refuses the next page once ``seconds`` have passed since the first."""

    def __init__(self, base: str, seconds: float) -> None:
        self.base, self.seconds, self.end = base, seconds, time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise UpstreamError(f"{self.base}: no complete answer within {self.seconds:g} s; gave up")


def read_mirror(client, url: str, deadline: float = DOCTOR_DEADLINE) -> MirrorOffer:
    """Ask the mirror what it holds: manifest.json first, then the whl/ pages.

    ``client`` is a :data:`DOCTOR_HTTP` session (worst case on a host that drops packets:
    one 3 s connect; on one that accepts and never answers: one 4 s read), and no page is
    asked for after ``deadline`` seconds."""
    base = url.rstrip("/")
    clock = _Deadline(base, deadline)
    reader = UpstreamReader(client, default_policy([base]))
    try:
        body = reader.get(f"{base}/manifest.json", "metadata")
        doc = load_json(body.data, f"{base}/manifest.json", error=ParseError) if body is not None else None
        if isinstance(doc, dict) and isinstance(doc.get("targets"), list):
            return offer_from_manifest(base, doc)
    except (HttpStatusError, ValueError):
        pass  # not a torchdepot mirror (or no manifest yet): read the index pages
    # any other UpstreamError (refused, DNS, timeout) propagates: the host is unreachable
    clock.check()
    root = root_page(reader, f"{base}/whl")
    accs = [p.strip("/") for p in root.projects if accelerator_from_dir(p.strip("/")) is not None]
    offer = MirrorOffer(url=base, source="whl/ root page")
    if not accs:
        raise UpstreamError(f"{base}/whl/: lists no accelerator directories (cpu/, cu121/, ...)")
    for acc in accs:
        parsed = accelerator_from_dir(acc)
        assert parsed is not None  # accs holds only the directories it parses
        name = parsed.name
        per_py = offer.versions.setdefault(name, {})
        offer.index[name] = pip_index(acc)
        clock.check()
        try:
            wheels = crawl_wheels(reader, f"{base}/{pip_index(acc)}", ["torch"]).items
        except UpstreamError:
            continue  # an accelerator dir without torch: listed, nothing to pin
        for _, w in wheels:
            for py in w.pythons or ("",):
                per_py.setdefault(py, set()).add(w.public_version)
    return offer
