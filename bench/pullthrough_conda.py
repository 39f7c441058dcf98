"""Pull-through's conda repodata refresh on a conda-forge-sized subdir: what it costs now
(upstream's body spliced as bytes: depth check, splice, py-rattler's native check, one package
looked up by name) against the baseline measured in the same run (the previous way: every
record parsed and validated in Python by ``parse_repodata``, merged, dumped again). Each side
runs in its own process on the same synthetic ``linux-64`` (:func:`tests.kit.condaforge.
write_synthetic_channel`); printed: seconds and peak RSS of each, and the ratios. The download
itself (the sync's bounded reader) is the same for both and not timed.

    python bench/pullthrough_conda.py [--records 300000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OWN = {"labtool-1.0-h0_0.conda": {"name": "labtool", "version": "1.0", "build": "h0_0", "build_number": 0,
                                  "depends": [], "sha256": "0" * 64, "size": 1}}

NEW = """
import json, resource, sys, time
import rattler
from torchdepot.sources.repodata import splice_repodata
src, dest = sys.argv[1], sys.argv[2]
t = time.monotonic()
splice_repodata(__import__("pathlib").Path(src), __import__("pathlib").Path(dest), "linux-64", OWN, src)
sparse = rattler.SparseRepoData(rattler.Channel("http://mirror.invalid/c"), "linux-64", dest)
found = [r for r in sparse.load_records(rattler.PackageName("pytorch")) if r.sha256 is not None]
print(json.dumps({"seconds": time.monotonic() - t, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "found": len(found)}))
"""

OLD = """
import json, resource, sys, time
from torchdepot.sources.repodata import parse_repodata
src, dest = sys.argv[1], sys.argv[2]
t = time.monotonic()
up = parse_repodata(open(src, "rb").read(), "conda-forge", "linux-64", src)
doc = {"info": {"subdir": "linux-64"}, "packages": {}, "packages.conda": {}, "repodata_version": 1}
for fn, rec in {**up.records, **OWN}.items():
    doc["packages.conda" if fn.endswith(".conda") else "packages"][fn] = dict(getattr(rec, "raw", rec))
open(dest, "wb").write(json.dumps(doc, sort_keys=True).encode())
found = [r for r in up.records.values() if r.name == "pytorch" and r.sha256]
print(json.dumps({"seconds": time.monotonic() - t, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "found": len(found)}))
"""


def side(code: str, src: Path, dest: Path) -> dict:
    prog = f"OWN = {OWN!r}\n" + code
    out = subprocess.run([sys.executable, "-c", prog, str(src), str(dest)], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="td-ptconda-") as d:
        # written by a child: a parent grown by it would pass its peak RSS on to the measured children
        subprocess.run([sys.executable, "-c", "import sys; from tests.kit.condaforge import write_synthetic_channel; "
                        "write_synthetic_channel(sys.argv[1], int(sys.argv[2]))", f"{d}/conda-forge", str(args.records)],
                       cwd=ROOT, check=True, timeout=600)
        src = Path(d) / "conda-forge" / "linux-64" / "repodata.json"
        old = side(OLD, src, Path(d) / "old.json")
        new = side(NEW, src, Path(d) / "new.json")
        mb = src.stat().st_size / 1e6
    print(f"pull-through conda refresh, linux-64 with {args.records} filler records ({mb:.0f} MB of repodata.json)")
    print(f"baseline (every record parsed in Python): {old['seconds']:.2f} s, peak RSS {old['rss_kib'] // 1024} MiB")
    print(f"now (spliced, checked by py-rattler):    {new['seconds']:.2f} s, peak RSS {new['rss_kib'] // 1024} MiB")
    print(f"ratio: {new['seconds'] / old['seconds']:.2f}x the time, {new['rss_kib'] / old['rss_kib']:.2f}x the memory "
          f"(pytorch records found: {new['found']} now, {old['found']} before)")
    return 0 if new["found"] == old["found"] else 1


if __name__ == "__main__":
    sys.exit(main())
