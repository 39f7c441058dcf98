"""Check a mirror against its manifest, and optionally repair it.

Re-hashes every file ``manifest.json`` lists (or trusts the fetcher's hash cache when
size and mtime are unchanged, ``trust_cache=True``, which is what a sync uses), and
looks for what a crash or a hand edit leaves behind:

- ``missing`` / ``corrupt`` (wrong size or sha256): refetched from the entry's ``url``
  through :class:`~torchdepot.fetch.Fetcher` (temp + hash + rename), or, for PEP 658
  ``.metadata`` files, rewritten from their wheel;
- ``orphan``: a package file under ``packages/`` or ``conda/`` the manifest does not list;
- ``unknown``: an entry at the root that is not part of a mirror's layout;
- ``partial``: a leftover download in ``.torchdepot/partial/``;
- ``temp``: a leftover temporary file or index build from an interrupted write;
- ``staging``: the staging dir of a killed unbundle or repair (``.torchdepot/stage-*``);
- ``staged``: a package file a sync created or superseded (it is in the publication
  journal, :mod:`torchdepot.store.publication`) that the committed manifest does not list:
  an interrupted run's download, or a superseded copy waiting for the post-commit cleanup;
- ``dangling-link``: an index page under ``whl/`` linking to a file that is not in the
  manifest, whose ``#sha256`` disagrees with it, or that points outside the mirror; or a
  ``targets/<id>/pylock.toml`` naming a wheel the manifest does not list with that sha256
  or the live index does not link (a lock newer than the index).
- ``bad-json-page``: a PEP 691 ``index.json`` under ``whl/`` that does not parse, whose file
  entries name a file the manifest does not list (or outside the mirror) or with another
  ``hashes.sha256`` or ``size``, or that lists other files (or projects) than its
  ``index.html`` twin. One problem per page.

``partial``, ``temp``, ``staging`` and ``staged`` are leftovers of an interrupted run
(:data:`LEFTOVER_KINDS`): no live page or manifest names them, so they are reported but
do not make the mirror NOT OK; the next sync or ``--repair`` removes them. This is what
makes "a SIGKILL at any moment leaves the live mirror verify-clean" checkable.

Every name is recognised with the predicates of :mod:`torchdepot.store.layout`, the same
module the writers build them with.

Repair (``repair=True``) is bounded by what the mirror itself chose:

- a refetch goes only to a URL the host policy allows (:func:`repair_policy`: the
  upstreams of the mirror's own spec, the hosts the PyTorch index links to, the hosts of
  the local pip configuration, and ``--allow-host``); it takes exactly the manifest's size;
- a ``file:`` URL is read only under a local upstream or find-links directory of that
  policy, and only when it names a regular file of exactly the manifest's size (never a
  device such as ``/dev/zero``); unbundle drops the ``file:`` URLs a bundle carries;
- temp files, partial downloads and staging dirs are the mirror's own (named by
  :mod:`torchdepot.store.layout` in its own directories) and are removed; an orphan or an
  unknown entry may be the user's: it is only reported, or with ``move_unknown`` moved
  under ``.torchdepot/aside/<stamp>/``, never deleted.

``repair=True`` fixes missing, corrupt, partial, temp, staging and staged; a dangling link is fixed by the next sync
(the index is rebuilt from the manifest), so it stays a problem here. A bad JSON page is
rebuilt: the page writer (:func:`torchdepot.store.pages.build_pages`) is fed the records read
back from the live ``whl/<acc>/<project>/index.html`` pages (sizes and upload times from the
manifest) and, only when it gives back exactly the live HTML pages, its output is published
as a new ``whl/`` generation (one symlink swap); otherwise the problem stays, naming the
sync that rebuilds the pages.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from torchdepot.errors import TorchdepotError, UnsafePathError, load_json
from torchdepot.fetch import FetchItem, HashCache, hash_present
from torchdepot.net.hostpolicy import HostPolicy, default_policy
from torchdepot.net.http import file_url_path
from torchdepot.store import layout as L
from torchdepot.store import manifest as mf
from torchdepot.store import publication as pub
from torchdepot.store.fsutil import MirrorLock, safe_join
from torchdepot.store.index_file import IndexFile
from torchdepot.store.simple_json import HTML_PAGE, JSON_PAGE

# Root entries a mirror (or a unbundle) creates; anything else at the top is reported as unknown.
ROOT_ENTRIES = frozenset({L.PACKAGES_DIR, L.CONDA_DIR, L.INDEX_LINK, L.PUBLISH_DIR, L.TARGETS_DIR, L.ENVS_DIR,
                          L.MANIFEST_NAME, L.LANDING_NAME, L.LOCK_FILE, L.STATE_DIR})
# Names the mirror writes atomically at its root (their temps are its own leftovers).
ROOT_ATOMIC = frozenset({L.MANIFEST_NAME, L.LANDING_NAME})


ProblemKind = Literal["missing", "corrupt", "dangling-link", "bad-json-page", "orphan", "unknown", "partial", "temp", "staging",
                      "staged"]
KINDS: tuple[ProblemKind, ...] = get_args(ProblemKind)  # also the report's sort order
# The mirror's own leftovers of an interrupted run: nothing live names them (reported, not NOT OK).
LEFTOVER_KINDS: frozenset[ProblemKind] = frozenset({"partial", "temp", "staging", "staged"})


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    path: str  # relative POSIX path under the root
    detail: str
    repaired: bool = False


@dataclass
class VerifyReport:
    root: Path
    checked: int = 0  # manifest files checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def ok(self) -> bool:
        """The live mirror serves exactly what its manifest says (leftovers aside)."""
        return not [p for p in self.unrepaired if p.kind not in LEFTOVER_KINDS]

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if p.kind == kind)

    def summary(self) -> str:
        found = ", ".join(f"{self.count(k)} {k}" for k in KINDS if self.count(k))
        repaired = sum(1 for p in self.problems if p.repaired)
        state = "ok" if self.ok else "NOT OK"
        leftovers = sum(1 for p in self.unrepaired if p.kind in LEFTOVER_KINDS)
        return (f"verify-mirror {self.root}: {state}: {self.checked} files checked"
                + (f"; {found}" if found else "; no problems")
                + (f"; {repaired} repaired" if repaired else "")
                + (f" ({leftovers} leftovers of an interrupted run: the next sync or --repair removes them)"
                   if leftovers else ""))

    def to_json(self) -> dict:
        return {"root": str(self.root), "ok": self.ok, "checked": self.checked,
                "problems": [asdict(p) for p in self.problems]}


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_files(root: Path, manifest: mf.Manifest, cache: HashCache | None,
                 on_step: Callable[[int], None] | None = None) -> tuple[list[Problem], int]:
    problems = []
    for entry in manifest.files:
        if on_step is not None:  # before the checks: every path below ends in continue or the loop's end
            on_step(1)
        try:
            present = hash_present(root, entry.path, cache)
        except UnsafePathError as exc:
            problems.append(Problem(kind="corrupt", path=entry.path, detail=str(exc)))
            continue
        if present is None:
            problems.append(Problem(kind="missing", path=entry.path, detail="listed in manifest.json but not on disk"))
            continue
        digest, size = present
        if size != entry.size:
            problems.append(Problem(kind="corrupt", path=entry.path, detail=f"{size} bytes, manifest says {entry.size}"))
        elif digest != entry.sha256:
            problems.append(Problem(kind="corrupt", path=entry.path, detail=f"sha256 {digest}, manifest says {entry.sha256}"))
    return problems, len(manifest.files)


def _scan_leftovers(root: Path, listed: set[str], journal: frozenset[str] = frozenset()) -> list[Problem]:
    problems = []
    for top in L.PACKAGE_DIRS:
        base = root / top
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                rel = _rel(root, Path(dirpath) / name)
                if rel in listed:
                    continue
                if L.is_atomic_temp(name):
                    problems.append(Problem(kind="temp", path=rel, detail="leftover temporary file from an interrupted write"))
                elif rel in journal:
                    problems.append(Problem(kind="staged", path=rel, detail="written or superseded by a sync, not in the committed "
                                                           "manifest (removed after the next commit)"))
                elif top == L.CONDA_DIR and L.is_conda_index_file(name):
                    continue
                else:
                    problems.append(Problem(kind="orphan", path=rel, detail="not listed in manifest.json"))
    partial = root / L.PARTIAL_DIR
    if partial.is_dir():
        for p in sorted(partial.iterdir()):
            problems.append(Problem(kind="partial", path=_rel(root, p), detail=f"leftover partial download ({p.lstat().st_size} bytes)"))
    state = root / L.STATE_DIR
    if state.is_dir():
        for p in sorted(state.iterdir()):
            if L.stage_pid(p.name) is not None:  # under the mirror lock: its run was killed
                problems.append(Problem(kind="staging", path=_rel(root, p), detail="staging dir of an interrupted unbundle or repair"))
    for p in sorted(root.iterdir()):
        name = p.name
        if L.build_temp_of(name) == L.INDEX_LINK and p.is_symlink():  # the mirror only ever makes a symlink here
            problems.append(Problem(kind="temp", path=name, detail="leftover index symlink from an interrupted publish"))
        elif L.atomic_temp_of(name) in ROOT_ATOMIC and p.is_file() and not p.is_symlink():
            problems.append(Problem(kind="temp", path=name, detail="leftover from an interrupted write"))
        elif name not in ROOT_ENTRIES:
            problems.append(Problem(kind="unknown", path=name, detail="not part of a torchdepot mirror (reported, never deleted)"))
    pub = root / L.PUBLISH_DIR
    if pub.is_dir() and not pub.is_symlink():
        for p in sorted(pub.iterdir()):
            if L.is_build_temp(p.name):
                problems.append(Problem(kind="temp", path=_rel(root, p), detail="leftover index build from an interrupted publish"))
    return problems


def _link_key(root: Path, url: str) -> str | None:
    """The path under ``root`` a page's (``file:``-resolved) link names, or None when it leaves the mirror."""
    if urllib.parse.urlsplit(url).scheme != "file":
        return None
    try:
        return file_url_path(url).relative_to(root).as_posix()
    except ValueError:
        return None


def _check_html_page(root: Path, page_path: Path, by_path: dict[str, mf.FileEntry],
                     linked: set[str] | None = None) -> list[Problem]:
    from torchdepot.sources.pep503 import parse_html

    # Resolve relative links against the page's logical URL (through the whl symlink), as pip does.
    page = parse_html(page_path.read_bytes(), page_path.as_uri())
    rel_page = _rel(root, page_path)
    problems = []
    for link in page.links:
        key = _link_key(root, link.url)
        if key is None:
            problems.append(Problem(kind="dangling-link", path=rel_page, detail=f"links outside the mirror: {link.url}"))
            continue
        if linked is not None:
            linked.add(key)
        entry = by_path.get(key)
        if entry is None:
            problems.append(Problem(kind="dangling-link", path=rel_page, detail=f"links {key}, which manifest.json does not list"))
        elif link.sha256 is not None and link.sha256 != entry.sha256:
            problems.append(Problem(kind="dangling-link", path=rel_page, detail=f"links {key} with sha256 {link.sha256}, "
                                                               f"manifest says {entry.sha256}"))
    return problems


def _json_page_issues(root: Path, page_path: Path, by_path: dict[str, mf.FileEntry]) -> list[str]:
    """What is wrong with one PEP 691 ``index.json``: it must parse, every file entry must name
    a listed file with its sha256 (and size), and it must list what its ``index.html`` twin lists."""
    from torchdepot.sources.pep503 import parse_html
    from torchdepot.sources.pep691 import parse_json

    body = page_path.read_bytes()
    try:
        doc = load_json(body, page_path.name)
    except TorchdepotError as exc:
        return [f"not JSON ({exc})"]
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or \
            not (isinstance(doc.get("files"), list) or isinstance(doc.get("projects"), list)):
        return ["not a PEP 691 page (no meta, or neither files nor projects)"]
    page = parse_json(body, page_path.as_uri())
    issues = [f"{n} {why}" for why, n in sorted(page.warnings.items())]
    for link in page.links:
        key = _link_key(root, link.url)
        entry = by_path.get(key) if key is not None else None
        if key is None:
            issues.append(f"{link.filename}: url outside the mirror: {link.href}")
        elif entry is None:
            issues.append(f"{link.filename}: url {key}, which manifest.json does not list")
        elif link.sha256 != entry.sha256:
            issues.append(f"{link.filename}: hashes.sha256 {link.sha256}, manifest says {entry.sha256}")
        elif link.size is not None and link.size != entry.size:
            issues.append(f"{link.filename}: size {link.size}, manifest says {entry.size}")
    twin = page_path.with_name(HTML_PAGE)
    if not twin.is_file():
        return issues + [f"no {HTML_PAGE} twin beside it"]
    html = parse_html(twin.read_bytes(), twin.as_uri())
    listed, twin_listed = {ln.url for ln in page.links}, {ln.url for ln in html.links}
    if listed != twin_listed:
        only = sorted(listed - twin_listed)[:1] or sorted(twin_listed - listed)[:1]
        issues.append(f"lists {len(listed)} files, its {HTML_PAGE} twin {len(twin_listed)} "
                      f"(first difference: {only[0].rsplit('/', 1)[-1]})")
    yanked = {ln.url: ln.yanked for ln in html.links}  # a retired copy (sync/tombstones.py) yanked in both
    unlike = sorted(ln.filename for ln in page.links if ln.url in yanked and ln.yanked != yanked[ln.url])
    if unlike:
        issues.append(f"{unlike[0]}: yanked is not what its {HTML_PAGE} twin says")
    if sorted(set(page.projects)) != sorted(set(html.projects)):
        issues.append(f"lists projects {sorted(set(page.projects))[:5]}, its {HTML_PAGE} twin "
                      f"{sorted(set(html.projects))[:5]}")
    return issues


def _check_index(root: Path, manifest: mf.Manifest) -> list[Problem]:
    """Every link on every page under ``whl/`` must resolve to a listed, hash-valid file, and
    every PEP 691 ``index.json`` must agree with the manifest and with its ``index.html`` twin
    (one ``bad-json-page`` problem per page: the page is rebuilt whole)."""
    whl = root / L.INDEX_LINK
    if not whl.is_dir():
        return []
    by_path = manifest.by_path()
    problems = []
    linked: set[str] = set()
    for dirpath, _dirs, files in os.walk(whl, followlinks=False):
        for name in files:
            page_path = Path(dirpath) / name
            if name.endswith(".html"):
                problems += _check_html_page(root, page_path, by_path, linked)
            elif name == JSON_PAGE:
                issues = _json_page_issues(root, page_path, by_path)
                if issues:
                    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
                    problems.append(Problem(kind="bad-json-page", path=_rel(root, page_path), detail="; ".join(issues[:3]) + more))
    return problems + _check_target_locks(root, by_path, linked)


def _check_target_locks(root: Path, by_path: dict[str, mf.FileEntry], linked: set[str]) -> list[Problem]:
    """Every wheel a ``targets/<id>/pylock.toml`` names must be listed with that sha256 and
    linked by the live index or the previous generation kept beside it (a run killed between
    the index swap and its lock writes leaves the old locks over the new index: they still
    name listed files of the generation before). A lock whose files no generation links was
    written by a run whose index never went live: a ``dangling-link``, fixed by the next sync."""
    targets = root / L.TARGETS_DIR
    if not targets.is_dir() or targets.is_symlink():
        return []
    problems = []
    kept: set[str] | None = None  # links of the kept generations, read only when needed
    journal = pub.load_journal(root)
    for lock in sorted(targets.glob(f"*/{L.PYLOCK_NAME}")):
        if f"{L.TARGETS_DIR}/{lock.parent.name}" in journal:
            continue  # a pruned target's folder, removed after the commit (a leftover, not live)
        rel_lock = _rel(root, lock)
        try:
            doc = tomllib.loads(lock.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(Problem(kind="dangling-link", path=rel_lock, detail=f"unreadable lock ({exc})"))
            continue
        issues, unlinked = _lock_issues(lock.parent.name, doc, by_path, linked)
        if unlinked and not issues:
            kept = _kept_generation_links(root) if kept is None else kept
            issues = [f"names {key}, which no live or kept index generation links (a lock newer than the index)"
                      for key in unlinked if key not in kept]
        if issues:
            problems.append(Problem(kind="dangling-link", path=rel_lock, detail=issues[0]))  # one per lock: rewritten whole
    return problems


def _lock_issues(tid: str, doc: dict[str, object], by_path: dict[str, mf.FileEntry],
                 linked: set[str]) -> tuple[list[str], list[str]]:
    """-> (problems, listed keys the live index does not link)."""
    issues, unlinked = [], []
    packages = doc.get("packages")
    for pkg in packages if isinstance(packages, list) else []:
        for wheel in (pkg.get("wheels") or []) if isinstance(pkg, dict) else []:
            where = wheel.get("path") if isinstance(wheel, dict) else None
            if not isinstance(where, str):
                continue  # a url= lock (not written by a sync) names no file of this mirror
            key = posixpath.normpath(posixpath.join(L.TARGETS_DIR, tid, where))
            sha = (wheel.get("hashes") or {}).get("sha256")
            entry = by_path.get(key)
            if entry is None:
                issues.append(f"names {key}, which manifest.json does not list")
            elif sha != entry.sha256:
                issues.append(f"names {key} with sha256 {sha}, manifest says {entry.sha256}")
            elif key not in linked:
                unlinked.append(key)
    return issues, unlinked


def _kept_generation_links(root: Path) -> set[str]:
    """Every file linked by the HTML pages of the index generations under ``.publish/``."""
    from torchdepot.sources.pep503 import parse_html

    keys: set[str] = set()
    pub_dir = root / L.PUBLISH_DIR
    if not pub_dir.is_dir() or pub_dir.is_symlink():
        return keys
    for gen in sorted(p for p in pub_dir.iterdir() if p.is_dir() and not p.is_symlink() and not L.is_build_temp(p.name)):
        # pages are read where a reader of that generation would resolve them: through whl/
        for page_path in (gen / L.INDEX_LINK).glob(f"*/*/{HTML_PAGE}"):
            logical = root / L.INDEX_LINK / page_path.relative_to(gen / L.INDEX_LINK)
            for link in parse_html(page_path.read_bytes(), logical.as_uri()).links:
                key = _link_key(root, link.url)
                if key is not None:
                    keys.add(key)
    return keys


def _live_index_files(root: Path, manifest: mf.Manifest) -> dict[str, list[IndexFile]] | None:
    """The live ``whl/<acc>/<project>/index.html`` pages read back into the records the page
    writer builds from (sizes and upload times from the manifest), or None when a page links
    something the manifest does not list."""
    from torchdepot.sources.pep503 import parse_html

    whl = root / L.INDEX_LINK
    by_path = manifest.by_path()
    variants: dict[str, list[IndexFile]] = {}
    for acc_dir in sorted(p for p in whl.iterdir() if p.is_dir()):
        for page_path in sorted(acc_dir.glob(f"*/{HTML_PAGE}")):
            page = parse_html(page_path.read_bytes(), page_path.as_uri())
            for link in page.links:
                key = _link_key(root, link.url)
                entry = by_path.get(key) if key is not None else None
                if key is None or entry is None:
                    return None
                variants.setdefault(acc_dir.name, []).append(IndexFile(
                    project=page_path.parent.name, filename=key.rsplit("/", 1)[-1], path=key, sha256=entry.sha256, requires_python=link.requires_python,
                    metadata_sha256=link.metadata_sha256, size=entry.size, upload_time=entry.upload_time,
                    yanked=link.yanked))
    return variants


def _rebuild_json_pages(root: Path, manifest: mf.Manifest) -> str | None:
    """Publish a new ``whl/`` generation whose JSON twins are rebuilt by the page writer from
    the live HTML pages (through one atomic symlink swap). -> None when done, else why not:
    only when the writer, fed the live pages' records, gives back exactly the live HTML pages
    is it certain the new JSON says what the HTML says."""
    from torchdepot.store.pages import (
        build_pages,
        current_generation,
        install_generation,
        new_build_dir,
        prune,
    )

    variants = _live_index_files(root, manifest)
    if variants is None:
        return "the index.html pages link files manifest.json does not list"
    pages = build_pages(variants)
    whl = root / L.INDEX_LINK
    live = {_rel(whl, p): p.read_bytes() for p in whl.rglob("*.html") if p.is_file()}
    if live != {k: v for k, v in pages.items() if k.endswith(".html")}:
        return "the live index.html pages are not the ones the page writer makes from them"
    # Not pages.publish: the generation is named by its pages' hash, which the damaged live
    # generation already bears (it was damaged in place), so publish would see nothing to do.
    live_gen = current_generation(root)
    gen = f"repair-{time.time_ns()}"
    build = new_build_dir(root, gen)
    for rel, data in pages.items():
        path = safe_join(build / L.INDEX_LINK, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    install_generation(root, build, gen)
    prune(root, keep={g for g in (gen, live_gen) if g is not None})  # the old one stays for a reader mid-install
    return None


def _remove(root: Path, rel: str) -> None:
    path = root / rel
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if package_dir := L.package_top(rel):  # an emptied packages/<p>/<digest16>/ goes too
        top = root / package_dir
        parent = path.parent
        while parent != top and parent.is_relative_to(top):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _move_aside(root: Path, rel: str, stamp: str) -> str:
    """Move ``rel`` under ``.torchdepot/aside/<stamp>/`` (never deleted) -> its new path."""
    dest = root / L.ASIDE_DIR / stamp / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / rel, dest)
    return _rel(root, dest)


@dataclass(frozen=True)
class RepairPolicy:
    """Where a repair may read from: ``hosts`` for http(s), ``file_roots`` for ``file:``."""
    hosts: HostPolicy
    file_roots: tuple[Path, ...] = ()

    def refusal(self, url: str, size: int) -> str | None:
        """Why repair must not read ``url`` for a file of ``size`` bytes, or None."""
        why = self.hosts.refusal(url)
        if why is not None:
            return why
        if urllib.parse.urlsplit(url).scheme.lower() != "file":
            return None
        path = Path(os.path.abspath(file_url_path(url)))
        if not any(path.is_relative_to(r) for r in self.file_roots):
            return "file: URL outside the mirror's local upstreams and find-links"
        try:
            st = os.stat(path)
        except OSError as exc:
            return f"file: URL unreadable ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "file: URL is not a regular file"
        if st.st_size != size:
            return f"file: URL has {st.st_size} bytes, manifest.json says {size}"
        return None


def repair_policy(manifest: mf.Manifest, pip=None, extra_hosts=()) -> RepairPolicy:
    """The policy a sync of this mirror used: its spec's upstreams, the PyTorch-linked hosts
    and the pip configuration's hosts (``pip``: a PipSources; read here when None)."""
    from torchdepot.net.pipconfig import pip_default_index, pip_file_host, read_pip_config

    ups = manifest.spec.get("upstreams") if isinstance(manifest.spec, dict) else None
    upstreams = [u for u in ups if isinstance(u, str)] if isinstance(ups, list) else []
    pip = read_pip_config() if pip is None else pip
    deps = list(pip.indexes) + list(pip.find_links)
    if not pip.index_url and not pip.no_index:
        deps += [pip_default_index() or "", pip_file_host() or ""]
    local = [u for u in upstreams + deps if u.lower().startswith("file:")]
    roots = tuple(Path(os.path.abspath(file_url_path(u))) for u in local)
    hosts = default_policy(upstreams, [d for d in deps if d and not d.lower().startswith("file:")], extra_hosts,
                           allow_file=bool(roots))
    return RepairPolicy(hosts, roots)


def _derived(entry: mf.FileEntry) -> bool:
    """A PEP 658 file the mirror wrote from its wheel (no upstream url to refetch it from)."""
    return L.is_metadata_path(entry.path) and entry.kind == "metadata" and not entry.url


def _repair_metadata(root: Path, entry: mf.FileEntry) -> bool:
    """A PEP 658 file is derived from its wheel: rewrite it rather than fetch it."""
    from torchdepot.store.pages import ensure_metadata

    wheel = L.wheel_of_metadata(entry.path)
    try:
        digest, _req, size = ensure_metadata(root, wheel, entry.project or wheel.rsplit("/", 2)[-2])
    except (TorchdepotError, OSError):
        return False
    return digest == entry.sha256 and size == entry.size


def _triage(root: Path, problems: list[Problem], by_path: dict[str, mf.FileEntry],
            move_unknown: bool) -> tuple[list[Problem], dict[str, Problem]]:
    """Step 1: the mirror's own leftovers removed; orphans and unknown files kept (or, with
    ``move_unknown``, moved aside: never deleted); listed files that are missing or corrupt
    returned to refetch (a derived ``.metadata`` waits for its wheel)."""
    out: list[Problem] = []
    refetch: dict[str, Problem] = {}
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    for p in problems:
        if p.kind in LEFTOVER_KINDS:  # the mirror's own leftovers
            _remove(root, p.path)
            out.append(Problem(kind=p.kind, path=p.path, detail=p.detail + "; removed", repaired=True))
        elif p.kind in ("orphan", "unknown"):  # maybe the user's: never deleted
            if move_unknown:
                moved = _move_aside(root, p.path, stamp)
                out.append(Problem(kind=p.kind, path=p.path, detail=p.detail + f"; moved to {moved}", repaired=True))
            else:
                out.append(Problem(kind=p.kind, path=p.path, detail=p.detail + "; kept (--move-unknown moves it aside)"))
        elif p.kind in ("missing", "corrupt") and p.path in by_path:
            if not _derived(by_path[p.path]):
                refetch[p.path] = p
        else:
            out.append(p)
    return out, refetch


def _refetch(root: Path, manifest: mf.Manifest, refetch: dict[str, Problem], client,
             policy: RepairPolicy | None) -> list[Problem]:
    """Step 2: each missing or corrupt file fetched again from its recorded URL, if the repair
    policy allows that URL, hash-checked against the manifest."""
    if not refetch:
        return []
    by_path = manifest.by_path()
    cache = HashCache(root)
    for key in refetch:
        cache.forget(key)  # a corrupt file may keep size+mtime: never trust the cache for it
    cache.save()
    policy = policy or repair_policy(manifest)
    out: list[Problem] = []
    items = []
    for key, p in refetch.items():
        entry = by_path[key]
        url = entry.url
        why = policy.refusal(url, entry.size) if url else "no url in manifest.json to refetch from"
        if url and why is None:
            items.append(FetchItem(key=key, urls=(url,), sha256=entry.sha256, size=entry.size))
        else:
            out.append(Problem(kind=p.kind, path=p.path, detail=f"{p.detail}; not refetched: {why}"))
    if not items:
        return out
    from torchdepot.fetch import Fetcher  # the engine loads only when something is refetched
    from torchdepot.net.http import make_session

    own = client is None
    client = client or make_session()
    try:
        # the first URL was checked against the whole policy; redirects are held to its hosts
        hops = {urllib.parse.urlsplit("//" + h).hostname or h for h in policy.hosts.hosts}
        report = Fetcher(root, client, on_hash_mismatch="fail", allowed_hosts=hops).run(items)
    finally:
        if own:
            client.close()
    for r in report.results:
        p = refetch[r.key]
        if r.status == "failed":
            out.append(Problem(kind=p.kind, path=p.path, detail=f"{p.detail}; refetch failed: {r.error}"))
        else:
            out.append(Problem(kind=p.kind, path=p.path, detail=f"{p.detail}; refetched from {r.url or 'cache'}",
                               repaired=True))
    return out


def _rewrite_derived(root: Path, problems: list[Problem], by_path: dict[str, mf.FileEntry]) -> list[Problem]:
    """Step 3: each missing or corrupt ``.metadata`` the mirror derived rewritten from its
    wheel (run after step 2, which brings the wheels back)."""
    out: list[Problem] = []
    for p in problems:
        entry = by_path.get(p.path)
        if p.kind in ("missing", "corrupt") and entry is not None and _derived(entry):
            fixed = _repair_metadata(root, entry)
            out.append(Problem(kind=p.kind, path=p.path, repaired=fixed,
                               detail=p.detail + ("; rewritten from its wheel" if fixed
                                                  else "; could not be rewritten from its wheel")))
    return out


def _repair(root: Path, manifest: mf.Manifest, problems: list[Problem], client, policy: RepairPolicy | None,
            move_unknown: bool) -> list[Problem]:
    """Triage, refetch, then rewrite what is derived from the refetched files."""
    by_path = manifest.by_path()
    out, refetch = _triage(root, problems, by_path, move_unknown)
    out += _refetch(root, manifest, refetch, client, policy)
    return out + _rewrite_derived(root, problems, by_path)


def _repair_json_pages(root: Path, manifest: mf.Manifest, problems: list[Problem]) -> list[Problem]:
    """Rebuild the JSON twins (a new generation) and check again: what is gone is repaired."""
    why = _rebuild_json_pages(root, manifest)
    if why is not None:
        return [Problem(kind=p.kind, path=p.path, detail=f"{p.detail}; not rebuilt: {why} (the next `torchdepot mirror` run "
                                        "rebuilds every page from manifest.json)") if p.kind == "bad-json-page" else p
                for p in problems]
    after = _check_index(root, manifest)
    still = {(p.kind, p.path) for p in after}
    fixed = [Problem(kind=p.kind, path=p.path, detail=p.detail + "; rebuilt from its index.html twin", repaired=True)
             for p in problems if p.kind == "bad-json-page" and (p.kind, p.path) not in still]
    return fixed + after


def verify_mirror(root: Path, repair: bool = False, client=None, *, trust_cache: bool = False,
                  check_index: bool = True, clean: bool = False, policy: RepairPolicy | None = None,
                  move_unknown: bool = False, manifest: mf.Manifest | None = None,
                  on_step: Callable[[int], None] | None = None) -> VerifyReport:
    """Check (and with ``repair``, fix) the mirror at ``root``. Caller holds the mirror lock.
    ``manifest``: the one the caller just saved at ``root`` (not read again); ``on_step``:
    called once per manifest file checked (a caller's progress over ``len(manifest.files)``).

    ``clean`` removes only leftovers of interrupted writes (temp files, partial downloads,
    staging dirs of killed runs):
    what a sync does once it has published, since under the lock nothing else is writing.
    Raises :class:`TorchdepotError` when ``root`` has no readable manifest.
    """
    root = Path(root).resolve()
    manifest = manifest if manifest is not None else mf.load(root)
    journal = pub.load_journal(root)
    listed = {f.path for f in manifest.files}
    cache = HashCache(root) if trust_cache else None
    report = VerifyReport(root)
    problems, report.checked = _check_files(root, manifest, cache, on_step)
    problems += _scan_leftovers(root, listed, journal)
    if repair and problems:
        problems = _repair(root, manifest, problems, client, policy, move_unknown)
    elif clean:
        cleaned = []
        for p in problems:
            if p.kind in LEFTOVER_KINDS:
                _remove(root, p.path)
                p = Problem(kind=p.kind, path=p.path, detail=p.detail + "; removed", repaired=True)
            cleaned.append(p)
        problems = cleaned
    if journal and (repair or clean):
        # After a commit (clean) every journaled path is published or gone; a repair between
        # runs forgets only what is gone (a widened manifest's entries may still be superseded).
        pub.forget(root, [p for p in journal if (clean and p in listed) or not (root / p).exists()])
    if check_index:
        index_problems = _check_index(root, manifest)
        if repair and any(p.kind == "bad-json-page" for p in index_problems):
            index_problems = _repair_json_pages(root, manifest, index_problems)
        problems += index_problems
    report.problems = sorted(problems, key=lambda p: (KINDS.index(p.kind), p.path, p.detail))
    return report


def verify_mirror_locked(root: Path, repair: bool = False, client=None, *, wait: float | None = None,
                         trust_cache: bool = False, move_unknown: bool = False,
                         allow_hosts: tuple[str, ...] = ()) -> VerifyReport:
    """:func:`verify_mirror` under the mirror lock (a concurrent sync would look like orphans)."""
    root = Path(root)
    if not (root / mf.MANIFEST_NAME).is_file():
        mf.load(root)  # raises the one-line "no manifest" error without creating a lock file
    with MirrorLock(root, wait, read_only=not repair):
        policy = None
        if repair and allow_hosts:
            base = repair_policy(mf.load(root))
            policy = RepairPolicy(base.hosts.with_hosts(*allow_hosts), base.file_roots)
        return verify_mirror(root, repair, client, trust_cache=trust_cache, policy=policy, move_unknown=move_unknown)


def report_json(report: VerifyReport) -> str:
    return json.dumps(report.to_json(), indent=1, sort_keys=True)


def verify_published(out: Path, say: Callable[[str], None], *, manifest: mf.Manifest | None = None,
                     check_index: bool = True, progress: bool | None = False, desc: str = "verify") -> VerifyReport:
    """A sync's closing check of what it just published: every manifest file hash-valid, every
    index link resolving (the fetcher's hash cache spares re-reading unchanged files), and the
    leftovers of killed runs dropped. Up to 10 problems said; a missing or corrupt file, a
    dangling link or a bad JSON page stops the run. ``check_index`` False: the pages are not
    walked (a no-op re-sync whose index generation and file list are the ones the last check
    passed: :func:`index_settled`); ``manifest``: the one just saved. ``progress``: as the
    fetch's, a ``desc`` bar of files checked (:class:`~torchdepot.sync.reads.Count`)."""
    from torchdepot.sync.reads import Count  # the sources layer loads only for a sync's check

    manifest = manifest if manifest is not None else mf.load(Path(out).resolve())
    with Count(progress, len(manifest.files), desc, "files") as bar:
        check = verify_mirror(out, trust_cache=True, clean=True, manifest=manifest, check_index=check_index,
                              on_step=bar.step)
    if check.ok:
        return check
    serious = [p for p in check.unrepaired if p.kind in ("missing", "corrupt", "dangling-link", "bad-json-page")]
    for p in check.unrepaired[:10]:
        say(f"verify-mirror: {p.kind}: {p.path}: {p.detail}")
    if serious:
        raise TorchdepotError(f"{check.summary()}; first: {serious[0].path}: {serious[0].detail}")
    say(f"{check.summary()} (run 'torchdepot verify-mirror {out} --repair' to clean up)")
    return check


def index_settled(previous: mf.Manifest | None, files: list[mf.FileEntry], index_changed: bool,
                  removed: bool) -> bool:
    """True when a sync published no new index generation, removed nothing and lists the very
    files of a mirror whose last closing check was ok: its pages were walked then and cannot
    link differently now, so the closing check need not walk them again (``verify-mirror``
    still does)."""
    return (previous is not None and not index_changed and not removed and previous.last_sync is not None
            and previous.last_sync.verify == "ok" and previous.files == files)
