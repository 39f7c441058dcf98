"""Class (b): the user's own files; class (e) (:func:`run_links`): planted symlinks, unbundle's
destination and ``~`` in ``out:``.

- ``out:`` at a non-empty directory that is not a mirror (with files named like the mirror's own
  index, manifest and temp files), at ``/`` and at ``$HOME`` (a fake HOME in the sandbox);
- ``verify-mirror --repair`` (and ``--repair --move-unknown``) on a mirror holding the user's files;
- the config writers (run as this user, root here) on a file owned by another user, a symlinked
  file (a dotfiles repo), a read-only file, a CRLF file, and a newline in ``--url``/``--variant``.
  Every config path is under the sandbox's HOME/XDG dirs; PIP_CONFIG_FILE points there too.

Class (e): ``.torchdepot.lock``, ``.torchdepot``, ``.torchdepot/partial`` and ``.publish``
planted as symlinks to the user's files, met by ``verify-mirror`` (with and without
``--repair``), ``mirror`` and ``unbundle``: held when refused in one line naming the link, with
nothing changed anywhere. ``unbundle --to`` a non-empty directory of the user's and ``$HOME``:
held when refused with nothing changed. ``out: ~/site``: held when the mirror is at
``$HOME/site``, no ``./~`` was made, and the banner's ``serve --root`` names ``$HOME/site``.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.attacks.harness import (
    Outcome,
    Sandbox,
    changed,
    judge,
    live_corrupt,
    manifest_files,
    run_cli,
    snapshot,
)
from bench.attacks.upstream import Site, build_mirror, fresh_copy, mirror_env, original_wheels
from tests.faultserver import FaultServer
from tests.loopback_upstream import write_spec

CLS = "b"
OTHER_UID = 4242  # a user that is not the one running the bench

USER_FILES = {
    "index.html": b"<html>my own homepage</html>\n",
    "manifest.json": b'{"my": "project manifest"}\n',
    "notes.txt": b"do not lose this\n",
    ".index.html.abc123.tmp": b"my file that looks like a temp\n",
    ".whl.tmp-1": b"also mine\n",
    "packages/readme.txt": b"my packages folder\n",
}


def _plant(d: Path, files: dict[str, bytes] = USER_FILES) -> None:
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)


def _out_attempt(tmp: Path, site: Site, name: str, out_for, project: dict[str, bytes] | None = None) -> Outcome:
    sb = Sandbox(tmp / name)
    _plant(sb.home / "project", project if project is not None else USER_FILES)
    _plant(sb.home, {".bashrc": b"export PS1='$ '\n", "thesis.tex": b"\\documentclass{article}\n"})
    out = out_for(sb)
    spec = write_spec(sb.work / "spec.yaml", site.url, sb.work / "unused-out")
    top_before = set(os.listdir("/")) if out == Path("/") else set()
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["mirror", "--spec", str(spec), "--out", str(out)], env=mirror_env(sb, site))
    # New files inside the out dir are the run's own; any pre-existing file changed or deleted, or
    # anything new elsewhere, is damage.
    outside = [p for p in changed(before, snapshot(sb.base, sb.scratch), ())
               if p in before or not p.startswith(str(out).rstrip("/") + "/")]
    note = ""
    if out == Path("/"):
        new_top = set(os.listdir("/")) - top_before
        outside += [f"/{n}" for n in new_top]
        note = f"new entries at /: {sorted(new_top)}" if new_top else ""
    # Nothing may be written to a refused dir, and a user's dir may not lose or change a file.
    return judge(CLS, name, r, outside=outside, check=r.rc != 0, note=note or ("accepted" if r.rc == 0 else ""))


def _repair_attempt(base: Path, tmp: Path, name: str, *flags: str) -> Outcome:
    sb = Sandbox(tmp / name)
    root = fresh_copy(base, sb.work / "mirror")
    published = manifest_files(root)
    mine = {"notes.txt": b"my notes\n", "data/results.csv": b"a,b\n1,2\n",
            "packages/torch/my-patch.diff": b"--- a\n+++ b\n", ".whl.tmp-1": b"mine, looks like a build temp\n"}
    _plant(root, mine)
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["verify-mirror", str(root), "--repair", *flags])
    after = snapshot(sb.base, sb.scratch)
    # The user's bytes must still be somewhere under the root (moved aside only when asked).
    contents = {v[-1] for v in after.values() if v[0] == "file"}
    import hashlib
    lost = [rel for rel, data in mine.items() if hashlib.sha256(data).hexdigest() not in contents]
    moved_ok = "--move-unknown" in flags
    outside = [p for p in changed(before, after, ())
               if not (moved_ok and (p.startswith(str(root / ".torchdepot")) or
                                     any(p == str(root / rel) for rel in mine)))]
    outside = [p for p in outside if not p.startswith(str(root / ".torchdepot/hashes"))]
    corrupt, note = live_corrupt(sb, root, published)
    return judge(CLS, name, r, corrupt=corrupt, outside=outside, check=not lost,
                 note="; ".join(x for x in (note, f"user files lost: {lost}" if lost else "") if x))


# -- config writers -------------------------------------------------------------------------------

PIP_CONF = "[global]\nindex-url = http://regional.lab/simple\ntimeout = 30\n"


def _config_attempt(tmp: Path, mirror: Path, name: str, tool: str, setup, extra_args=(), expect_refusal=False,
                    post=None) -> Outcome:
    """``setup(sb) -> (file or None, allowed paths)``; ``post(sb, file) -> (ok, note)`` checks the result."""
    sb = Sandbox(tmp / name)
    target, allowed = setup(sb)
    before = snapshot(sb.base, sb.scratch)
    args = ["config", tool, "--url", str(mirror), *extra_args]
    if target is not None:
        args += ["--file", str(target)]
    r = run_cli(sb, args)
    after = snapshot(sb.base, sb.scratch)
    outside = changed(before, after, () if (expect_refusal and r.rc != 0) else allowed)
    if expect_refusal and r.rc == 0:
        outside = changed(before, after, ())
    ok, note = post(sb, target) if post is not None else (True, "")
    if expect_refusal:
        ok = ok and r.rc != 0
        note = note or ("accepted" if r.rc == 0 else "")
    return judge(CLS, name, r, outside=outside, check=ok, note=note)


def _pip_file(sb: Sandbox, text: str = PIP_CONF, newline: str = "\n") -> Path:
    f = sb.xdg / "pip" / "pip.conf"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(text.replace("\n", newline).encode())
    return f


def _backups(f: Path) -> list[Path]:
    return sorted(f.parent.glob(f.name + ".bak-*"))


def _setup_chowned(sb: Sandbox):
    f = _pip_file(sb)
    os.chown(f, OTHER_UID, OTHER_UID)
    os.chmod(f, 0o640)
    return f, (f.parent,)


def _post_chowned(sb: Sandbox, f: Path):
    bad = [f"{p.name}: {st.st_uid}:{st.st_gid} {oct(st.st_mode & 0o777)}"
           for p in [f, *_backups(f)] for st in [p.lstat()]
           if (st.st_uid, st.st_gid, st.st_mode & 0o777) != (OTHER_UID, OTHER_UID, 0o640)]
    return not bad, f"owner/mode not kept: {bad}" if bad else ""


def _setup_symlink(sb: Sandbox):
    real = sb.home / "dotfiles" / "pip.conf"
    real.parent.mkdir(parents=True)
    real.write_text(PIP_CONF)
    link = sb.xdg / "pip" / "pip.conf"
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    return None, (link.parent, real.parent)


def _post_symlink(sb: Sandbox, _f):
    link, real = sb.xdg / "pip" / "pip.conf", sb.home / "dotfiles" / "pip.conf"
    if not link.is_symlink():
        return False, "symlink replaced by a regular file"
    return ("extra-index-url" in real.read_text()), "" if "extra-index-url" in real.read_text() else "target not updated"


def _setup_readonly(sb: Sandbox):
    f = _pip_file(sb)
    os.chmod(f, 0o444)
    return f, (f.parent,)


def _post_readonly(sb: Sandbox, f: Path):
    return f.read_text() == PIP_CONF, "" if f.read_text() == PIP_CONF else "read-only file rewritten"


def _setup_crlf(sb: Sandbox):
    f = _pip_file(sb, newline="\r\n")
    return f, (f.parent,)


def _post_crlf(sb: Sandbox, f: Path):
    data = f.read_bytes()
    baks = _backups(f)
    lf_only = data.count(b"\n") != data.count(b"\r\n")
    bak_ok = all(b.read_bytes() == PIP_CONF.replace("\n", "\r\n").encode() for b in baks)
    bits = (["LF lines in the CRLF file"] if lf_only else []) + ([] if bak_ok else ["backup is not the old bytes"])
    return not bits, ", ".join(bits)


def _setup_plain(sb: Sandbox):
    f = _pip_file(sb)
    return f, (f.parent,)


def _post_no_injection(sb: Sandbox, f: Path):
    text = f.read_text() if f is not None and f.exists() else ""
    return "evil" not in text, "injected setting written" if "evil" in text else ""


def _setup_uv(sb: Sandbox):
    f = sb.xdg / "uv" / "uv.toml"
    f.parent.mkdir(parents=True)
    f.write_text('[pip]\nindex-url = "http://regional.lab/simple"\n')
    return f, (f.parent,)


def _setup_condarc(sb: Sandbox):
    f = sb.home / ".condarc"
    f.write_text("channels:\n  - defaults\n")
    return f, (sb.home / ".condarc",)


def run(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    with FaultServer() as server:
        site = Site(server, original_wheels(payload=20_000))
        sb0 = Sandbox(tmp / "b-base")
        base = build_mirror(site, sb0, sb0.work / "mirror")
        no_manifest = {k: v for k, v in USER_FILES.items() if k != "manifest.json"}
        out.append(_out_attempt(tmp, site, "out-nonempty-user-dir", lambda sb: sb.home / "project", no_manifest))
        # a web project or browser extension has its own manifest.json (not a torchdepot one)
        out.append(_out_attempt(tmp, site, "out-user-dir-with-foreign-manifest", lambda sb: sb.home / "project"))
        out.append(_out_attempt(tmp, site, "out-slash", lambda sb: Path("/")))
        out.append(_out_attempt(tmp, site, "out-home", lambda sb: sb.home))
        out.append(_out_attempt(tmp, site, "out-home-parent", lambda sb: sb.home.parent))
        out.append(_repair_attempt(base, tmp, "repair-with-user-files"))
        out.append(_repair_attempt(base, tmp, "repair-move-unknown", "--move-unknown"))
        evil = f"{server.url}\nindex-url = http://evil.example/simple"
        for name, tool, setup, args, refuse, post in [
            ("config-pip-chowned-file", "pip", _setup_chowned, (), False, _post_chowned),
            ("config-pip-symlinked-file", "pip", _setup_symlink, (), False, _post_symlink),
            ("config-pip-readonly-file", "pip", _setup_readonly, (), True, _post_readonly),
            ("config-pip-crlf-file", "pip", _setup_crlf, (), False, _post_crlf),
            ("config-pip-newline-in-variant", "pip", _setup_plain, ("--variant", "cpu\nindex-url = http://evil/"),
             True, _post_no_injection),
            ("config-uv-newline-in-variant", "uv", _setup_uv, ("--variant", 'cpu"\nindex-url = "http://evil/'), True,
             _post_no_injection),
            ("config-conda-newline-in-channel", "conda", _setup_condarc, ("--channel", "pytorch\n  - http://evil/"),
             True, _post_no_injection),
        ]:
            out.append(_config_attempt(tmp, base, name, tool, setup, args, refuse, post))
        # a newline in --url: the URL is the attack, not the mirror directory
        for tool, setup in (("pip", _setup_plain), ("uv", _setup_uv)):
            sb = Sandbox(tmp / f"config-{tool}-newline-in-url")
            f, _allowed = setup(sb)
            before = snapshot(sb.base, sb.scratch)
            r = run_cli(sb, ["config", tool, "--url", evil, "--file", str(f)])
            after = snapshot(sb.base, sb.scratch)
            ok, note = _post_no_injection(sb, f)
            out.append(judge(CLS, f"config-{tool}-newline-in-url", r, outside=changed(before, after, ()),
                             check=ok and r.rc != 0, note=note or ("accepted" if r.rc == 0 else "")))
    return out


# -- class (e): planted symlinks, unbundle's destination, ``~`` in out: (issue 22 items 1-4) -------

CLS_LINKS = "e"
LOCK = ".torchdepot.lock"
PLANTED = (LOCK, ".torchdepot", ".torchdepot/partial", ".publish")


def _planted_attempt(base: Path, tmp: Path, site: Site, bundle: Path, rel: str, command: str) -> Outcome:
    """``rel`` moved out of the root (or a victim file made) and a symlink left in its place:
    the command must refuse in one line naming the link and change nothing it points at."""
    name = f"planted-{rel.strip('.').replace('/', '-')}-{command.replace(' ', '')}"
    sb = Sandbox(tmp / name)
    root = fresh_copy(base, sb.work / "mirror")
    victim = sb.home / "victim" / rel.strip(".").replace("/", "_")
    victim.parent.mkdir(parents=True)
    own = root / rel
    if rel == LOCK:
        own.unlink(missing_ok=True)
        victim.write_bytes(b"the user's file behind the lock link\n")
    else:
        if own.exists():
            os.rename(own, victim)
        else:
            victim.mkdir()
        (victim / "mine.txt").write_bytes(b"mine\n")
    own.symlink_to(victim)
    spec = write_spec(sb.work / "spec.yaml", site.url, root)
    before = snapshot(sb.base, sb.scratch)
    if command.startswith("verify-mirror"):
        r = run_cli(sb, [*command.split(), str(root)])
    elif command == "mirror":
        r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site))
    else:
        r = run_cli(sb, ["unbundle", str(bundle), "--to", str(root)])
    outside = changed(before, snapshot(sb.base, sb.scratch), ())
    named = str(own) in r.stderr and "symlink" in r.stderr
    return judge(CLS_LINKS, name, r, outside=outside, check=r.rc != 0 and named,
                 note="" if named else "the planted link is not named" if r.rc else "accepted")



def _unbundle_dest_attempt(tmp: Path, bundle: Path, name: str, dest_for) -> Outcome:
    sb = Sandbox(tmp / name)
    _plant(sb.home / "project", {k: v for k, v in USER_FILES.items() if k != "manifest.json"})
    _plant(sb.home, {".bashrc": b"export PS1='$ '\n"})
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["unbundle", str(bundle), "--to", str(dest_for(sb))])
    outside = changed(before, snapshot(sb.base, sb.scratch), ())
    return judge(CLS_LINKS, name, r, outside=outside, check=r.rc != 0, note="accepted" if r.rc == 0 else "")


def _tilde_attempt(tmp: Path, site: Site) -> Outcome:
    """``out: ~/site``: written at $HOME/site, where it was checked, and the banner names it."""
    sb = Sandbox(tmp / "out-tilde")
    spec = write_spec(sb.work / "spec.yaml", site.url, Path("unused"))
    spec.write_text(spec.read_text().replace("out: unused", "out: ~/site"))
    before = snapshot(sb.base, sb.scratch)
    r = run_cli(sb, ["mirror", "--spec", str(spec)], env=mirror_env(sb, site))
    site_dir = sb.home / "site"
    outside = changed(before, snapshot(sb.base, sb.scratch), (site_dir,))
    ok = r.rc == 0 and (site_dir / "manifest.json").is_file() and f"serve --root {site_dir}" in r.stdout \
        and not (sb.work / "~").exists()
    return judge(CLS_LINKS, "out-tilde-home-site", r, outside=outside, check=ok,
                 note="" if ok else f"./~ exists: {(sb.work / '~').exists()}; banner: {r.stdout.strip()[-160:]!r}")


def run_links(tmp: Path) -> list[Outcome]:
    out: list[Outcome] = []
    with FaultServer() as server:
        site = Site(server, original_wheels(payload=20_000))
        sb0 = Sandbox(tmp / "e-base")
        base = build_mirror(site, sb0, sb0.work / "mirror")
        r = run_cli(sb0, ["bundle", "--mirror", str(base), "--envs", str(sb0.work / "no-envs"), "--out",
                          str(sb0.work / "b.tar")])
        if r.rc != 0:
            raise RuntimeError(f"bundle failed: {r.stderr.strip()[-300:]}")
        bundle = sb0.work / "b.tar"
        for rel in PLANTED:
            for command in ("verify-mirror", "verify-mirror --repair", "mirror", "unbundle"):
                out.append(_planted_attempt(base, tmp, site, bundle, rel, command))
        out.append(_unbundle_dest_attempt(tmp, bundle, "unbundle-to-nonempty-user-dir", lambda sb: sb.home / "project"))
        out.append(_unbundle_dest_attempt(tmp, bundle, "unbundle-to-home", lambda sb: sb.home))
        out.append(_tilde_attempt(tmp, site))
    return out
