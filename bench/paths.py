"""safe_join's cost: the component check against the old two-realpath join, in one run.

``store/fsutil.safe_join`` was 19-31 % of a 227-target no-op (issue 21): it resolved the root
and the joined path on every call. It now lstats each component below the root and resolves
only when a symlink is on the way. This builds a mirror-shaped tree (``--projects`` x
``--files`` under ``packages/``, a few levels below a root that is itself several directories
deep) and prints microseconds per call for both and their ratio; the answers must agree.

    python bench/paths.py [--projects 200] [--files 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchdepot.errors import UnsafePathError  # noqa: E402
from torchdepot.store.fsutil import safe_join  # noqa: E402


def realpath_join(root: Path, *parts: str) -> Path:
    """The previous safe_join (lexical checks elided: both get the same clean keys)."""
    real = Path(root).resolve()
    norm = posixpath.normpath(posixpath.join(*parts))
    out = (real / norm).resolve()
    if out != real and real not in out.parents:
        raise UnsafePathError(norm)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projects", type=int, default=200)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="td-paths-") as d:
        root = Path(d) / "srv" / "lab" / "torch" / "mirror"
        keys = []
        for p in range(args.projects):
            (root / "packages" / f"p{p}").mkdir(parents=True)
            for i in range(args.files):
                key = f"packages/p{p}/p{p}-{i}.0-py3-none-any.whl"
                (root / key).write_bytes(b"")
                keys.append(key)
        keys += [f"packages/p{p}/new-{p}.whl" for p in range(args.projects)]  # not there yet
        assert all(safe_join(root, k) == realpath_join(root, k) for k in keys)
        timings = {}
        for name, fn in (("realpath (before)", realpath_join), ("component check (now)", safe_join)):
            best = float("inf")
            for _ in range(args.rounds):
                t = time.perf_counter()
                for k in keys:
                    fn(root, k)
                best = min(best, time.perf_counter() - t)
            timings[name] = best / len(keys) * 1e6
    for name, us in timings.items():
        print(f"{name:24s} {us:7.1f} us/call")
    before, now = timings.values()
    print(f"ratio now/before: {now / before:.2f} ({len(keys)} paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
