"""Crawl+parse speed on the real Oct-2023 PyTorch simple-index capture, served on 127.0.0.1.

Baseline, same run, same bytes: a plain regex scan ``re.findall(rb'href="([^"]+)"', body)``.
Two comparisons are printed:
  end-to-end  : read every page through the one upstream reader (sources.upstream.UpstreamReader,
                a fresh one per repetition: its cache would answer a second read) + the
                wheel model, vs fetch the same pages + regex scan
  parse only  : torchdepot.sources.pep503.parse_html on the in-memory bytes vs the regex scan
Goal (issue 2): within 3x of the regex scan.
"""

from __future__ import annotations

import collections
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.httpserver import Server  # noqa: E402
from torchdepot.net.hostpolicy import default_policy  # noqa: E402
from torchdepot.net.http import make_session  # noqa: E402
from torchdepot.sources.pep503 import parse_html  # noqa: E402
from torchdepot.sources.upstream import UpstreamReader, page_url, wheels_on  # noqa: E402

CAPTURE = ROOT.parent / "shared" / "data" / "index_pages" / "download.pytorch.org_whl_simple_2023-10"
HREF = re.compile(rb'href="([^"]+)"')
REPEAT = 7


def best(fn):
    times = []
    out = None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    if not CAPTURE.is_dir():
        print(f"capture not found: {CAPTURE}", file=sys.stderr)
        return 1
    projects = sorted(p.name for p in CAPTURE.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "whl").symlink_to(CAPTURE)
        with Server(Path(tmp)) as srv, make_session() as client:
            base = srv.url + "/whl"
            urls = [page_url(base)] + [page_url(base, p) for p in projects]

            def fetch_regex():
                n = 0
                for u in urls:
                    body, _ = client.get_bytes(u)
                    n += len(HREF.findall(body))
                return n

            def fetch_parse():
                n = 0
                warnings = collections.Counter()
                reader = UpstreamReader(client, default_policy([base]))
                for u in urls:
                    page = reader.page(u)
                    n += len(page.links) + len(page.projects)
                    wheels_on(page.links, warnings=warnings)
                assert reader.request_counts()["pages"] == len(urls)  # one request per page
                return n

            def fetch_links():
                # the reader's crawl + page parse into Links, without building the wheel model
                reader = UpstreamReader(client, default_policy([base]))
                return sum(len((p := reader.page(u)).links) + len(p.projects) for u in urls)

            fetch_regex()  # warm the connection pool and page cache
            t_base, n_base = best(fetch_regex)
            t_ours, n_ours = best(fetch_parse)
            t_links, _ = best(fetch_links)
            bodies = [client.get_bytes(u)[0] for u in urls]

    t_rx, n_rx = best(lambda: sum(len(HREF.findall(b)) for b in bodies))

    def parse_only():
        return sum(len(p.links) + len(p.projects) for p in (parse_html(b, u) for b, u in zip(bodies, urls, strict=True)))

    t_p, n_p = best(parse_only)
    warnings = collections.Counter()
    pages = [parse_html(b, u) for b, u in zip(bodies, urls, strict=True)]

    def model_only():
        return sum(len(wheels_on(p.links, warnings=warnings)) for p in pages)

    t_m, n_m = best(model_only)
    size = sum(len(b) for b in bodies)
    assert n_base == n_ours == n_rx == n_p, (n_base, n_ours, n_rx, n_p)
    print(f"capture: {len(urls)} pages, {size / 1e6:.2f} MB, {n_ours} links ({n_m} wheels); best of {REPEAT}")
    print(f"end-to-end  crawl+parse      {t_ours * 1e3:8.1f} ms  {n_ours / t_ours:10.0f} links/s")
    print(f"            fetch+regex scan {t_base * 1e3:8.1f} ms  {n_base / t_base:10.0f} links/s   ratio {t_ours / t_base:.2f}x")
    print(f"            crawl+page parse {t_links * 1e3:8.1f} ms  {n_ours / t_links:10.0f} links/s   ratio {t_links / t_base:.2f}x"
          "  (Links only, no wheel model)")
    print(f"parse only  parse_html       {t_p * 1e3:8.1f} ms  {n_p / t_p:10.0f} links/s")
    print(f"            regex scan       {t_rx * 1e3:8.1f} ms  {n_rx / t_rx:10.0f} links/s   ratio {t_p / t_rx:.2f}x")
    print(f"wheel model parse_wheel      {t_m * 1e3:8.1f} ms  {n_m / t_m:10.0f} wheels/s (included in end-to-end)")
    ratio = t_ours / t_base
    print(f"goal: end-to-end within 3x of the regex scan -> {'met' if ratio <= 3 else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
