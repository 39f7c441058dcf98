"""Class (a): the published mirror is corrupted.

- upstream re-publishes torch's wheel under the same name with new bytes; the re-sync is
  SIGKILLed at several points (half the new bytes sent, all sent, the moment the bytes at the
  published path change, shortly after), runs to completion, or fails later (a second changed
  file upstream answers 404);
- unbundle of a bundle that labels a wheel as an index page or a lock file;
- a late failure in unbundle (a split bundle's last part truncated; a member whose parent
  path is a file in the destination, so the commit fails after the first files moved);
- a re-sync whose spec's conda section is invalid.

Class (f) (:func:`run_republish`, issue 22 items 5 and 7, issue 21 item 3):

- upstream re-publishes filelock under the same name; the second sync runs with ``--prune`` (so
  the old path goes); over three syncs no package URL may serve two byte strings, and the third
  sync downloads nothing and leaves the index unchanged;
- unbundle SIGKILLed 0-28 ms after its commit moves its first file in, into a new directory and into an existing
  mirror that lacks filelock: the live mirror stays verify-clean, and ``verify-mirror --repair``
  then the next unbundle converge.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import yaml

from bench.attacks.harness import (
    Outcome,
    Sandbox,
    changed,
    judge,
    live_corrupt,
    manifest_files,
    run_cli,
    sha256_of,
    snapshot,
    verify_bad,
)
from bench.attacks.upstream import (
    PAYLOAD,
    Site,
    build_mirror,
    fresh_copy,
    make_wheel,
    mirror_env,
    original_wheels,
)
from tests.faultserver import Fault, FaultServer
from tests.loopback_upstream import write_spec

CLS = "a"
BUNDLE_HEAD = "torchdepot-bundle-head.json"
BUNDLE_MANIFEST = "torchdepot-bundle.json"


def _new_torch(site: Site) -> tuple[str, bytes]:
    from tests.loopback_upstream import TORCH
    name, version, tag, req = TORCH
    return make_wheel(name, version, tag, req, PAYLOAD, 999)  # same name, other bytes


def _attempt(base: Path, tmp: Path, site: Site, name: str, *, trigger=None, late_404: bool = False,
             spec_edit=None) -> Outcome:
    sb = Sandbox(tmp / name)
    root = fresh_copy(base, sb.work / "mirror")
    published = manifest_files(root)
    originals = original_wheels()
    site.publish(originals)
    site.server.always(Site.path(site.torch_name()), Fault("drip", rate=400_000))
    fname, new = _new_torch(site)
    changed_wheels = {fname: new}
    if late_404:
        sym = next(f for f in originals if f.startswith("sympy-"))
        changed_wheels[sym] = make_wheel("sympy", "1.13.1", "py3-none-any", ("mpmath<1.4,>=1.1",), PAYLOAD, 998)[1]
    site.publish({**originals, **changed_wheels})
    if late_404:
        site.server.always(Site.path(sym), Fault("status", status=404))
    spec = write_spec(sb.work / "spec.yaml", site.url, root)
    if spec_edit is not None:
        data = yaml.safe_load(spec.read_text())
        spec_edit(data, site)
        spec.write_text(yaml.safe_dump(data))
    site.server.reset_counters()
    torch_path = root / "packages" / "torch" / fname
    old_sha = published.get(f"packages/torch/{fname}")
    before = snapshot(sb.base, sb.scratch)
    kill_when = None
    fired: list[float] = []
    if trigger is not None:
        kind, arg = trigger

        def kill_when() -> bool:
            now = time.monotonic()
            if not fired:
                if kind == "sent":
                    hit = site.server.body_bytes[Site.path(fname)] >= arg * len(new)
                else:  # the bytes at the published path are no longer the published ones
                    hit = sha256_of(torch_path) not in (old_sha, None) if torch_path.exists() else False
                if hit:
                    fired.append(now)
            return bool(fired) and now - fired[0] >= (arg if kind == "changed" else 0)
    r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site), kill_when=kill_when)
    site.server.always(Site.path(fname), Fault())
    if late_404:
        site.server.always(Site.path(sym), Fault())
    corrupt, note = live_corrupt(sb, root, published)
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    trig = "" if trigger is None else (f"trigger {trigger} fired" if fired else f"trigger {trigger} never fired")
    return judge(CLS, name, r, corrupt=corrupt, outside=outside, note="; ".join(x for x in (trig, note) if x),
                 expect_kill=True)


# -- bundles --------------------------------------------------------------------------------------

def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def _forge(good: Path, out: Path, path: str, data: bytes, role: str) -> Path:
    """``good`` with member ``path`` replaced by ``data`` under ``role``, head and hashes consistent."""
    members = dict(_members(good))
    head = json.loads(members.pop(BUNDLE_HEAD))
    doc = json.loads(members.pop(BUNDLE_MANIFEST))
    members[path] = data
    entry = {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "role": role}
    doc["files"] = [f for f in doc["files"] if f["path"] != path] + [entry]
    head["files"] = [f for f in head["files"] if f["path"] != path] + [{"path": path, "size": len(data), "role": role}]
    return _write_tar(out, [(BUNDLE_HEAD, json.dumps(head).encode()), *members.items(),
                            (BUNDLE_MANIFEST, json.dumps(doc).encode())])


def _unbundle_attempt(base: Path, tmp: Path, name: str, make_bundle, prepare_dest=None, planted=()) -> Outcome:
    sb = Sandbox(tmp / name)
    src = fresh_copy(base, sb.work / "src")
    dest = fresh_copy(base, sb.work / "dest")
    if prepare_dest is not None:
        prepare_dest(dest, src)
    published = manifest_files(dest)
    planted = set(planted) | verify_bad(sb, dest)
    bundle = make_bundle(sb, src)
    if bundle is None:
        return judge(CLS, name, run_cli(sb, ["--version"]), check=False, note="could not build the bundle")
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["unbundle", str(bundle), "--to", str(dest)])
    corrupt, note = live_corrupt(sb, dest, published, planted)
    outside = changed(before, snapshot(sb.base, sb.scratch), (dest,))
    return judge(CLS, name, r, corrupt=corrupt, outside=outside, note=note)


def _cli_bundle(sb: Sandbox, src: Path, *extra: str, out: str = "good.tar") -> Path | None:
    r = run_cli(sb, ["bundle", "--mirror", str(src), "--envs", str(sb.work / "no-envs"), "--out",
                     str(sb.work / out), *extra])
    if r.rc != 0:
        return None
    parts = sorted(sb.work.glob(out + "*"))
    return parts[0] if parts else None


def _role_bundle(role: str):
    def make(sb: Sandbox, src: Path) -> Path | None:
        good = _cli_bundle(sb, src)
        if good is None:
            return None
        wheel = next(p for p in manifest_files(src) if p.endswith(".whl") and "/filelock/" in p)
        return _forge(good, sb.work / f"forged-{role}.tar", wheel, b"attacker bytes, not a wheel", role)
    return make


def _drop_filelock(dest: Path, _src: Path) -> None:
    """The destination lacks filelock (so the bundle really adds files)."""
    m = json.loads((dest / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if "/filelock/" not in f["path"]]
    (dest / "manifest.json").write_text(json.dumps(m, indent=1))
    for p in (dest / "packages" / "filelock").iterdir():
        p.unlink()
    (dest / "packages" / "filelock").rmdir()


def _truncated_split(sb: Sandbox, src: Path) -> Path | None:
    first = _cli_bundle(sb, src, "--split", "64K", out="split.tar")
    parts = sorted(sb.work.glob("split.tar.*"))
    if first is None or len(parts) < 2:
        return None
    last = parts[-1]
    last.write_bytes(last.read_bytes()[: max(1, last.stat().st_size // 2)])
    return first


def _blocked_commit(dest: Path, src: Path) -> None:
    """filelock missing from dest AND a regular file where its package dir must go: the commit
    fails when it reaches that member, after earlier members may have moved in."""
    _drop_filelock(dest, src)
    (dest / "packages" / "filelock").write_bytes(b"a file where a directory must go\n")


def _conda_invalid(kind: str):
    def edit(data: dict, site: Site) -> None:
        data["extra_packages"] = ["mpmath"]  # a real change, so the pip index would be rewritten
        if kind == "specs":
            data["conda"] = {"channels": [site.url + "/conda/pytorch"], "specs": ["pytorch >=>=1 ]["]}
        elif kind == "subdirs":
            data["conda"] = {"channels": [site.url + "/conda/pytorch"], "subdirs": ["not-a-subdir"]}
        else:
            data["conda"] = {"channels": [{"name": "bad name/..", "mirrors": ["ftp://x"]}]}
    return edit


def run(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    with FaultServer() as server:
        site = Site(server, original_wheels())
        sb0 = Sandbox(tmp / "a-base")
        base = build_mirror(site, sb0, sb0.work / "mirror")
        for name, kw in [
            ("resync-kill-half-sent", dict(trigger=("sent", 0.5))),
            ("resync-kill-all-sent", dict(trigger=("sent", 1.0))),
            ("resync-kill-when-published-bytes-change", dict(trigger=("changed", 0.0))),
            ("resync-kill-20ms-after-change", dict(trigger=("changed", 0.02))),
            ("resync-kill-150ms-after-change", dict(trigger=("changed", 0.15))),
            ("resync-completes", dict()),
            ("resync-fails-later-404", dict(late_404=True)),
            ("resync-conda-specs-invalid", dict(spec_edit=_conda_invalid("specs"))),
            ("resync-conda-subdir-invalid", dict(spec_edit=_conda_invalid("subdirs"))),
            ("resync-conda-channel-invalid", dict(spec_edit=_conda_invalid("channel"))),
        ]:
            out.append(_attempt(base, tmp, site, name, **kw))
        out.append(_unbundle_attempt(base, tmp, "unbundle-wheel-labelled-index", _role_bundle("index")))
        out.append(_unbundle_attempt(base, tmp, "unbundle-wheel-labelled-lock", _role_bundle("lock")))
        out.append(_unbundle_attempt(base, tmp, "unbundle-split-last-part-truncated", _truncated_split,
                                     prepare_dest=_drop_filelock))
        out.append(_unbundle_attempt(base, tmp, "unbundle-late-commit-failure", _cli_bundle,
                                     prepare_dest=_blocked_commit))
    return out


# -- class (f): a URL never reused, re-publication settles, unbundle's commit killed -----------------

CLS_REPUB = "f"


def _republish_attempt(base: Path, tmp: Path, site: Site) -> Outcome:
    """Upstream re-publishes filelock twice (X -> Z, then Z stays): over three syncs no package
    URL may serve two different byte strings, the third sync downloads and publishes nothing."""
    sb = Sandbox(tmp / "republish-three-syncs")
    root = fresh_copy(base, sb.work / "mirror")
    spec = write_spec(sb.work / "spec.yaml", site.url, root)
    served: dict[str, set[str]] = {}

    def record() -> None:
        for path, sha in manifest_files(root).items():
            served.setdefault(path, set()).add(sha)
    record()
    originals = dict(site.wheels)
    fname = next(f for f in originals if f.startswith("filelock-"))
    site.republish(fname, make_wheel("filelock", "3.16.1", "py3-none-any", (), PAYLOAD, 997)[1])
    before = snapshot(sb.base, sb.scratch)
    try:
        # --prune lets the old path go (without it the old bytes stay listed for the recorded target)
        second = run_cli(sb, ["mirror", "--spec", str(spec), "--prune"], env=mirror_env(sb, site))
        record()
        site.server.reset_counters()
        third = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site))
        record()
        fetched = sum(site.server.body_bytes[Site.path(f)] for f in site.wheels)
    finally:
        site.publish(originals)
    reused = sorted(p for p, shas in served.items() if len(shas) > 1)
    settled = third.rc == 0 and "index unchanged" in third.stdout and fetched == 0
    corrupt, note = live_corrupt(sb, root, manifest_files(root))
    outside = changed(before, snapshot(sb.base, sb.scratch), (root,))
    bits = [note] + ([f"reused for other bytes: {', '.join(Path(p).name for p in reused)}"] if reused else []) + \
        ([] if settled else [f"third sync not a no-op (rc={third.rc}, {fetched} wheel bytes fetched)"])
    return judge(CLS_REPUB, "republish-three-syncs", third if second.rc == 0 else second, corrupt=corrupt,
                 outside=outside, check=second.rc == 0 and not reused and settled, note="; ".join(b for b in bits if b))


def _unbundle_kill_attempt(base: Path, tmp: Path, bundle: Path, name: str, delay: float, fresh: bool) -> Outcome:
    """SIGKILL unbundle ``delay`` s after its commit moves its first file in: the live mirror must
    be verify-clean, then ``verify-mirror --repair`` and the next unbundle must converge to a
    verify-clean mirror."""
    sb = Sandbox(tmp / name)
    dest = sb.work / "dest"
    if not fresh:
        fresh_copy(base, dest)
        _drop_filelock(dest, base)
    published = manifest_files(dest)
    planted = verify_bad(sb, dest) if not fresh else set()
    was_bad = _not_ok(sb, dest)
    fired: list[float] = []
    first = dest / "packages" / ("" if fresh else "filelock")  # appears with the commit's first file

    def kill_when() -> bool:
        if not fired and first.exists():
            fired.append(time.monotonic())
        return bool(fired) and time.monotonic() - fired[0] >= delay
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["unbundle", str(bundle), "--to", str(dest)], kill_when=kill_when, poll=0.001)
    corrupt, note = live_corrupt(sb, dest, published, planted)
    new_bad = _not_ok(sb, dest) - was_bad  # orphans and bad JSON pages too, not only broken links
    corrupt = max(corrupt, len(new_bad))
    notes = [note, "" if fired else "commit never reached",
             f"verify-mirror NOT OK: {', '.join(sorted(f'{k} {Path(p).name}' for k, p in new_bad))[:160]}"
             if new_bad else ""]
    converged = True
    if (dest / "manifest.json").exists():
        repair = run_cli(sb, ["verify-mirror", str(dest), "--repair"])
        converged = repair.rc == 0 or bool(planted)
        notes.append("" if converged else f"--repair: {repair.stderr.strip()[-120:]}")
    again = run_cli(sb, ["unbundle", str(bundle), "--to", str(dest)])
    after_corrupt, after_note = live_corrupt(sb, dest, manifest_files(dest), planted)
    converged = converged and again.rc == 0 and after_corrupt == 0
    if not converged:
        notes.append(f"did not converge: rc={again.rc} {after_note} {again.stderr.strip()[-120:]}")
    outside = changed(before, snapshot(sb.base, sb.scratch), (dest,))
    return judge(CLS_REPUB, name, r, corrupt=corrupt, outside=outside, check=converged,
                 note="; ".join(n for n in notes if n), expect_kill=True)


def _not_ok(sb: Sandbox, root: Path) -> set[tuple[str, str]]:
    """(kind, path) of every problem that makes ``verify-mirror`` say NOT OK (leftovers aside)."""
    if not (root / "manifest.json").exists():
        return set()
    r = run_cli(sb, ["verify-mirror", str(root), "--json"])
    try:
        problems = json.loads(r.stdout)["problems"]
    except (ValueError, KeyError, TypeError):
        return {("unreadable", (r.stderr.strip().splitlines() or ["verify-mirror failed"])[-1][:80])}
    return {(p["kind"], p["path"]) for p in problems if p["kind"] not in ("partial", "temp", "staging", "staged")}


def run_republish(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    with FaultServer() as server:
        site = Site(server, original_wheels())
        sb0 = Sandbox(tmp / "f-base")
        base = build_mirror(site, sb0, sb0.work / "mirror")
        out.append(_republish_attempt(base, tmp, site))
        bundle = _cli_bundle(sb0, base)
        if bundle is None:
            raise RuntimeError("bundle of the base mirror failed")
        for i in range(8):
            for fresh in (True, False):
                delay = i * 0.004
                kind = "fresh" if fresh else "existing"
                out.append(_unbundle_kill_attempt(base, tmp, bundle, f"unbundle-kill-{kind}-{i * 4}ms", delay, fresh))
    return out
