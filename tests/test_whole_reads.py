"""``sync/download.WholeReads``: a wheel read whole for its METADATA goes to the run's fetcher
at once, at the stored path its fetch step uses, and that step joins it (the one mechanism of
the pip path and the regional mode; their end-to-end guards are tests/test_farlink_real_servers.py,
tests/test_bytes_once.py and tests/test_regional_flat.py).

Here alone, with a real fetcher and files on disk: at most ``max_bytes`` and ``max_files`` are
kept, never bytes whose sha256 disagrees with the claim, one stored file per path, the fetch
step's submission joins the stored one and names upstream's URL (never the read's ``file://``),
what the run did not use is removed unless the committed manifest lists it, and the folder of
reads is emptied. The upstream URLs are on a closed loopback port: a keep never asks them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from torchdepot.fetch import Fetcher, FetchItem
from torchdepot.net.http import make_session
from torchdepot.spec.mirror import MirrorSpec
from torchdepot.sync.download import WholeReads

UP = "http://127.0.0.1:9/whl"  # the discard port: never answered, never asked


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plan(name: str, sha256: str | None = None) -> Callable[[], FetchItem]:
    return lambda: FetchItem(f"packages/x/{name}", (f"{UP}/{name}",), sha256)


def test_whole_reads_keep_within_the_caps_only_claimed_bytes_once_per_path_and_clear(tmp_path: Path) -> None:
    out = tmp_path / "srv"
    with make_session() as client:
        fetcher = Fetcher(out, client, progress=False)
        wholes = WholeReads(out, MirrorSpec(max_bytes=10, max_files=2), fetcher).open()

        def read(data: bytes) -> tuple[Path, str]:
            path = wholes.dir / f"read-{_sha(data)[:8]}"
            path.write_bytes(data)
            return path, _sha(data)

        a, b, c, d = b"aaaaaaaa", b"bbbbbbbb", b"cc", b"dd"
        assert wholes.keep(_plan("a.whl"), *read(a)) == out / "packages/x/a.whl"
        assert wholes.keep(_plan("a.whl"), *read(a)) == out / "packages/x/a.whl"  # the same path: joined
        assert wholes.keep(_plan("b.whl"), *read(b)) is None  # 16 bytes: over max_bytes
        assert wholes.keep(_plan("c.whl", "0" * 64), *read(c)) is None  # upstream says other bytes
        wholes.keeper(_plan("d.whl", _sha(d)))(*read(d))  # remote_metadata's callback
        assert wholes.keep(_plan("e.whl"), *read(b"e")) is None  # a third file: over max_files
        assert (wholes.kept_files, wholes.kept_bytes) == (2, len(a) + len(d))
        assert wholes.paths == {"packages/x/a.whl", "packages/x/d.whl"}
        for name, data in (("a.whl", a), ("d.whl", d)):
            assert (out / "packages/x" / name).read_bytes() == data
        assert not (out / "packages/x/b.whl").exists()
        assert not (out / "packages/x/c.whl").exists()

        # the fetch step's own submission joins the stored file: nothing asked of upstream
        report = fetcher.run([FetchItem("packages/x/a.whl", (f"{UP}/a.whl",)),
                              FetchItem("packages/x/d.whl", (f"{UP}/d.whl",), _sha(d))])
    by_key = {r.key: r for r in report.results}
    assert {k: (r.status, r.sha256, r.url) for k, r in by_key.items()} == {
        "packages/x/a.whl": ("downloaded", _sha(a), f"{UP}/a.whl"),
        "packages/x/d.whl": ("downloaded", _sha(d), f"{UP}/d.whl")}

    wholes.discard({"packages/x/a.whl"}, {})  # d unused: removed
    assert (out / "packages/x/a.whl").exists()
    assert not (out / "packages/x/d.whl").exists()
    wholes.discard(set(), {"packages/x/a.whl": object()})  # listed by the committed manifest: kept
    assert (out / "packages/x/a.whl").read_bytes() == a
    wholes.clear()
    assert not (out / ".torchdepot" / "whole").exists()


def test_whole_reads_open_removes_a_killed_runs_reads(tmp_path: Path) -> None:
    out = tmp_path / "srv"
    killed = out / ".torchdepot" / "whole" / "torchdepot-killed.whl"  # what a SIGKILLed sync leaves
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"half a wheel")
    with make_session() as client:
        wholes = WholeReads(out, MirrorSpec(), Fetcher(out, client, progress=False)).open()
    assert wholes.dir.is_dir()
    assert list(wholes.dir.iterdir()) == []
