"""Numbers that must agree (issue 22 item 19): the plain-text progress never ends past its
total, and ``mirror``'s closing line counts the files ``status`` counts."""

from __future__ import annotations

import io
import re

from torchdepot.fetch.progress import Progress


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().strip().splitlines()


def test_retried_bytes_do_not_push_the_count_past_the_total():
    out = io.StringIO()
    p = Progress(None, stream=out, line_interval=0.0)
    p.add_file(100_000_000, "a")
    p.advance(100_000_000)
    p.advance(15_000_000)  # a failed attempt's bytes, received again
    p.file_done("a", "downloaded", 100_000_000)
    p.close()
    last = _lines(out)[-1]
    assert last.startswith("fetch: 100.0 MB / 100.0 MB, +15.0 MB retried,"), last
    assert "(1/1 files)" in last


def test_sizes_known_late_and_present_files_settle_the_total():
    """A file whose size no index stated counts once it is known (a response, or when it is
    done); a file already present leaves the total: the last line reads done == total."""
    out = io.StringIO()
    p = Progress(None, stream=out, line_interval=0.0)
    p.add_file(None, "find-links")  # file:// find-links dir: no size until it is copied
    p.add_file(None, "html-index")  # an HTML index: the response states it
    p.add_file(50_000_000, "present")
    p.learn_size(40_000_000, "html-index")
    p.learn_size(40_000_000, "html-index")  # a second attempt learns it again: counted once
    p.advance(40_000_000)
    p.advance(30_000_000)
    p.file_done("html-index", "downloaded", 40_000_000)
    p.file_done("find-links", "downloaded", 30_000_000)
    p.file_done("present", "present")
    p.close()
    last = _lines(out)[-1]
    assert last.startswith("fetch: 70.0 MB / 70.0 MB,"), last
    for line in _lines(out):
        done, total = (float(x) for x in re.match(r"fetch: ([\d.]+) MB / ([\d.]+) MB", line).groups())
        assert done <= total, line
