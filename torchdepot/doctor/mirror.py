"""What a torchdepot mirror (or any PyTorch-style index) offers: its accelerators and the
torch version to pin for each. Reads ``<mirror>/manifest.json`` when present, else the
``<mirror>/whl/`` root page and ``<mirror>/whl/<acc>/torch/`` pages, all through the one
upstream reader (:class:`torchdepot.sources.upstream.UpstreamReader`: one request per page,
redirects confined to the mirror's host).

Bounded: :data:`QUERY_HTTP` keeps connect timeouts short and retries few, and a mirror
that cannot be reached at all (no connection to manifest.json) fails at once instead of
being asked again for its pages: ``doctor --mirror`` on a dead host ends in seconds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from torchdepot.errors import UpstreamError
from torchdepot.model.accel import accelerator_from_dir
from torchdepot.model.wheelname import version_sort_key
from torchdepot.net.hostpolicy import default_policy
from torchdepot.net.http import HttpStatusError
from torchdepot.sources.upstream import UpstreamReader, crawl_wheels, root_page


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


def read_mirror(client, url: str) -> MirrorOffer:
    """Ask the mirror what it holds: manifest.json first, then the whl/ pages.

    ``client`` is a :data:`torchdepot.net.http.QUERY_HTTP` session (worst case on a host
    that drops packets: 2 attempts x 3 s connect + 1 s backoff)."""
    base = url.rstrip("/")
    reader = UpstreamReader(client, default_policy([base]))
    try:
        body = reader.get(f"{base}/manifest.json", "metadata")
        doc = json.loads(body.data) if body is not None else None
        if isinstance(doc, dict) and isinstance(doc.get("targets"), list):
            return offer_from_manifest(base, doc)
    except (HttpStatusError, ValueError):
        pass  # not a torchdepot mirror (or no manifest yet): read the index pages
    # any other UpstreamError (refused, DNS, timeout) propagates: the host is unreachable
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
        offer.index[name] = f"whl/{acc}"
        try:
            wheels = crawl_wheels(reader, f"{base}/whl/{acc}", ["torch"]).items
        except UpstreamError:
            continue  # an accelerator dir without torch: listed, nothing to pin
        for _, w in wheels:
            for py in w.pythons or ("",):
                per_py.setdefault(py, set()).add(w.public_version)
    return offer
