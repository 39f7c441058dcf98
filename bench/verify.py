"""Benchmark: `torchdepot lock` + `verify` of the CPU target vs a bare `uv pip install` of the
same wheel files into a fresh venv, in the same run. Goal: ratio <= 1.3.

Both sides start from an empty uv cache (cold), then both again with a warm cache, so the
ratio compares like with like. Needs a mirror with a CPU target (`make mirror`).

    .venv/bin/python bench/verify.py [--mirror mirror/out] [--target cpu-py311-linux-x86_64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchdepot.lockfiles.write import lock_mirror
from torchdepot.store.manifest import load
from torchdepot.verify.locks import read_env
from torchdepot.verify.run import Options, mirror_url, tool_env, uv_bin, verify_env


def bare_install(mirror: Path, wheels: list[str], work: Path, cache: Path) -> float:
    env = tool_env("", (("UV_CACHE_DIR", str(cache)),))
    t0 = time.perf_counter()
    subprocess.run([uv_bin(), "venv", "--no-config", "--quiet", "--python", sys.executable, work / "venv"], env=env, check=True)
    subprocess.run([uv_bin(), "pip", "install", "--no-config", "--quiet", "--no-deps", "--python", work / "venv" / "bin" / "python",
                    *[mirror / w for w in wheels]], env=env, check=True)
    return time.perf_counter() - t0


def lock_and_verify(mirror: Path, target: str, work: Path, cache: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    lock_mirror(mirror, work / "envs")
    opts = Options(mirror_url=mirror_url(str(mirror)), workdir=work, env_extra=(("UV_CACHE_DIR", str(cache)),))
    r = verify_env(read_env(work / "envs" / target), opts, load(mirror))
    return time.perf_counter() - t0, r.result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", default="mirror/out")
    ap.add_argument("--target", default=f"cpu-py{sys.version_info[0]}{sys.version_info[1]}-linux-x86_64")
    args = ap.parse_args()
    mirror = Path(args.mirror).resolve()
    try:
        m = load(mirror)
    except Exception as exc:  # a benchmark, not a command: say what to do
        print(f"bench/verify.py: {exc}", file=sys.stderr)
        return 1
    t = next((t for t in m.targets if t.id == args.target and t.kind == "pip"), None)
    if t is None:
        print(f"bench/verify.py: {mirror} has no pip target {args.target}", file=sys.stderr)
        return 1
    wheels = sorted(p.path for p in t.packages)
    size = sum(f.size for f in m.files if f.path in set(wheels))
    print(f"target {t.id}: {len(wheels)} wheels, {size / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        tmp = Path(tmp)
        rows = []
        for label in ("cold", "warm"):
            # cold: each side starts from its own empty uv cache; warm: each side has run once, untimed
            cache_a, cache_b = tmp / f"uv-a-{label}", tmp / f"uv-b-{label}"
            if label == "warm":
                bare_install(mirror, wheels, tmp / "warm-a", cache_a)
                lock_and_verify(mirror, t.id, tmp / "warm-b", cache_b)
            base = bare_install(mirror, wheels, tmp / f"{label}-base", cache_a)
            ours, result = lock_and_verify(mirror, t.id, tmp / f"{label}-ours", cache_b)
            rows.append((label, base, ours, result))
            print(f"{label:5s} bare uv pip install: {base:6.2f} s | lock + verify: {ours:6.2f} s ({result}) | ratio {ours / base:.2f}x")
    cold, warm = rows[0][2] / rows[0][1], rows[1][2] / rows[1][1]
    print(f"ratio cold (fresh caches, the goal's case): {cold:.2f}x (goal <= 1.30x) {'OK' if cold <= 1.3 else 'MISSED'}")
    print(f"ratio warm (both cached): {warm:.2f}x -- the smoke test's `import torch` (seconds) dominates a sub-second cached install")
    return 0 if all(r == "pass" for *_, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
