"""Property tests for the fetch-adjacent pure pieces: whatever the input, they return a safe
answer or raise the project's own error, never anything else. The example count comes from the
hypothesis profile loaded in tests/conftest.py (dev: fast; ci: the full 2,000 each)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchdepot.errors import TorchdepotError, UnsafePathError
from torchdepot.net.hostpolicy import (
    NOT_A_PACKAGE,
    default_policy,
    filename_refusal,
    host_of,
    netloc_of,
    screen_links,
)
from torchdepot.net.http import Client, HttpConfig, retry_after_seconds, stated_length
from torchdepot.sources.links import Link
from torchdepot.store import manifest as mf
from torchdepot.store.fsutil import safe_filename, safe_join

# max_examples is left to the loaded profile (dev: fast; ci: 2,000).
MANY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path("/srv/mirror-root")

# Path-ish text: separators, dots, encodings, drive letters, NULs and unicode mixed in.
pieces = st.sampled_from(["..", ".", "/", "\\", "%2e", "%2f", "%2E%2E", "%5c", "C:", "\x00", "~", "a", "b.whl",
                          "packages", " ", "é", "\u2215", "\uff0e", ":", "//"])
pathish = st.one_of(st.text(max_size=40), st.lists(pieces, max_size=12).map("".join))


@MANY
@given(pathish, pathish)
def test_safe_join_stays_under_root(a, b):
    try:
        out = safe_join(ROOT, a, b)
    except TorchdepotError:
        return
    assert out == ROOT.resolve() or ROOT.resolve() in out.parents
    rel = out.relative_to(ROOT.resolve()).as_posix()
    assert ".." not in rel.split("/")


@MANY
@given(pathish)
def test_safe_filename_is_a_bare_name(name):
    try:
        out = safe_filename(name)
    except UnsafePathError:
        return
    assert out
    assert "/" not in out
    assert "\\" not in out
    assert "\x00" not in out
    assert out not in (".", "..")
    assert posixpath.basename(out) == out
    assert safe_join(ROOT, "packages", out).parent == ROOT.resolve() / "packages"


@MANY
@given(pathish)
def test_filename_refusal_never_passes_an_unsafe_name(name):
    why = filename_refusal(name)
    if why is None:
        stored = safe_filename(name)  # must not raise: a name the policy accepts is storable
        assert safe_join(ROOT, "packages/p", stored).parent == ROOT.resolve() / "packages/p"
        assert stored.endswith((".whl", ".conda", ".tar.bz2", ".metadata"))


urls = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["http", "https", "file", "ftp", "HTTP", "", "javascript"]),
              st.one_of(st.sampled_from(["download.pytorch.org", "DOWNLOAD.pytorch.org.", "evil.example", "u:p@h",
                                         "[::1]", "[::1", "h:99999", "h:x", "", "127.0.0.1:8080"]), st.text(max_size=15)),
              st.text(max_size=20)),
)


@MANY
@given(urls)
def test_host_policy_answers_for_any_url(url):
    pol = default_policy(["http://127.0.0.1:8080/whl"])
    why = pol.refusal(url)
    assert why is None or isinstance(why, str)
    if why is None:  # host AND port: an entry with a port allows that port only
        assert netloc_of(url) in pol.hosts or url.strip().lower().startswith("file:")
    host_of(url)


@MANY
@given(st.lists(st.tuples(urls, pathish, st.one_of(st.none(), st.sampled_from(["a" * 64, "b" * 64]))), max_size=8))
def test_screen_links_keeps_only_safe_unambiguous_links(entries):
    links = [Link(url=u, filename=f, sha256=h) for u, f, h in entries]
    pol = default_policy(["http://127.0.0.1:8080/whl"])
    s = screen_links(links, pol)
    names = [link.filename for link in s.kept]
    assert len(names) == len(set(names))
    for link in s.kept:
        assert pol.allows(link.url)
        assert filename_refusal(link.filename) is None
    # a file on an allowed URL that is simply not a package (an sdist) is skipped, not refused
    refused = sum(1 for lk in links if pol.refusal(lk.url)
                  or filename_refusal(lk.filename) not in (None, NOT_A_PACKAGE))
    assert sum(s.warnings.values()) >= refused  # every refusal is counted
    assert len(s.kept) + sum(s.warnings.values()) <= len(links)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
file_entry = st.fixed_dictionaries({
    "path": pathish, "sha256": st.text(max_size=64), "size": st.one_of(st.integers(), st.text(max_size=3)),
    "kind": st.sampled_from(["wheel", "metadata", "conda", "x"]),
}, optional={"url": st.one_of(st.none(), urls), "bogus": json_values})


@MANY
@given(st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda files, targets: json.dumps({"format": "torchdepot-manifest", "version": 1, "spec": {},
                                                 "files": files, "targets": targets}),
              st.lists(file_entry, max_size=4), st.lists(json_values, max_size=2)),
    st.text(max_size=80),
))
def test_manifest_from_json_only_raises_project_errors(text):
    try:
        m = mf.Manifest.from_json(text, "test.json")
    except TorchdepotError:
        return
    for f in m.files:
        safe_join(ROOT, f.path)  # anything accepted is confined to the root


@MANY
@given(st.one_of(st.none(), st.text(max_size=40), st.integers(min_value=0, max_value=10**30).map(str),
                 st.sampled_from(["Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "0", "²", "-1",
                                  "1.5", "Mon, 99 Foo 2020", "Thu, 01 Jan 1970 00:00:00 GMT"])))
def test_retry_after_parses_or_ignores(value):
    got = retry_after_seconds(value)
    assert got is None or got >= 0
    # whatever upstream says, the client never waits longer than its cap
    c = Client(HttpConfig(backoff=0.01, max_backoff=2.0))
    assert 0 <= c.backoff_delay(3, got) <= 2.0


@MANY
@given(st.one_of(st.text(max_size=30), st.integers(min_value=0, max_value=10**30).map(str),
                 st.sampled_from(["²", "١٢", " 12", "12 ", "1_000", "+5", "-1", "0x10", ""])))
def test_a_stated_length_is_a_plain_decimal_or_none(value):
    # a hostile Content-Length is ignored, never an exception: int() alone takes " 12", "+5" and
    # "1_000", and raises on "²" (the wheel-size note in UpstreamReader.open checked isdigit() only)
    got = stated_length({"Content-Length": value})
    assert got == (int(value) if value.isascii() and value.isdigit() else None)
    assert got is None or str(got) == value.lstrip("0") or (got == 0 and set(value) == {"0"})
    assert stated_length({}) is None


def test_example_count_follows_the_profile():
    """These properties take their example count from the loaded profile (dev fast, ci 2,000)."""
    assert MANY.max_examples == settings().max_examples
