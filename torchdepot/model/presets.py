"""Named PyTorch wheel upstreams (``upstreams: [ustc, official]``): pure data.

Each preset is a base URL plus the layout its pages have; ``torchdepot.sources`` reads every
layout, and the spec turns a preset name into its base. The layouts below were gathered from
the mirrors' own tooling and issue trackers (docs/upstreams.md has the sources); regional
mirrors change, so a preset says what a mirror looked like, not what it promises.

Invariants: names are lower-case; every base is an absolute https URL; a FINDLINKS base is the
page itself, a SIMPLE or FLAT base is the directory that holds ``<variant>/``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Layout(enum.Enum):
    # PEP 503 (and maybe PEP 691) tree: <base>/<variant>/<project>/ lists that project's files.
    SIMPLE = "simple"
    # One find-links page listing files of every variant (relative links like cu121/torch-...whl).
    FINDLINKS = "findlinks"
    # A bare directory listing of <base>/<variant>/ with every file of that variant in it.
    FLAT = "flat"


@dataclass(frozen=True)
class UpstreamPreset:
    name: str
    base: str
    layout: Layout
    note: str = ""


# The origin; pytorch/test-infra s3_management/manage_v2.py generates its PEP 503 HTML pages.
OFFICIAL = UpstreamPreset(
    name="official", base="https://download.pytorch.org/whl", layout=Layout.SIMPLE,
    note="origin; files often on download-r2.pytorch.org and other absolute hosts")

UPSTREAM_PRESETS: dict[str, UpstreamPreset] = {
    p.name: p
    for p in (
        OFFICIAL,
        # USTC mirrors the origin's tree with .metadata files; its pages once linked back to the
        # origin's absolute R2 URLs (ustclug/ustcmirror-images#154): allow that host or screen it out.
        UpstreamPreset(name="ustc", base="https://mirrors.ustc.edu.cn/pytorch/whl", layout=Layout.SIMPLE,
                       note="PEP 503 tree; absolute origin links seen (ustcmirror-images#154)"),
        # NJU: the same layout as USTC; the same leak happened (NJU-Mirror-Issue#109).
        UpstreamPreset(name="nju", base="https://mirrors.nju.edu.cn/pytorch/whl", layout=Layout.SIMPLE,
                       note="PEP 503 tree; absolute origin links seen (NJU-Mirror-Issue#109)"),
        # SJTU: a caching reverse proxy (sjtug/mirror-clone#288, #373, #415) offering
        # pytorch-wheels/<variant>/ and a torch_stable.html find-links page; the page is the preset.
        UpstreamPreset(name="sjtu", base="https://mirror.sjtu.edu.cn/pytorch-wheels/torch_stable.html",
                       layout=Layout.FINDLINKS,
                       note="find-links page; may redirect to the origin (mirror-clone#288)"),
        # Aliyun: pytorch-wheels/<variant>/ is a flat directory listing, usable only as
        # find-links, with '+' written as '&#43;' in its hrefs.
        UpstreamPreset(name="aliyun", base="https://mirrors.aliyun.com/pytorch-wheels", layout=Layout.FLAT,
                       note="flat listing per variant; '+' escaped as &#43;"),
    )
}


def preset_for(url: str) -> UpstreamPreset | None:
    """The preset whose base ``url`` is (trailing slashes ignored), else None."""
    want = url.rstrip("/")
    for preset in UPSTREAM_PRESETS.values():
        if preset.base.rstrip("/") == want:
            return preset
    return None
