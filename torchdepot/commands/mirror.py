"""``torchdepot mirror`` (and ``tools/fetch``): build or update the offline mirror from a spec.

Argument parsing and printing only: the spec is loaded and validated whole (conda section
included), command-line values replace spec keys through ``with_overrides``, and the output
directory is checked by :func:`torchdepot.store.outdir.check_out_dir` before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from torchdepot.commands import loading
from torchdepot.commands.guard import one_line_errors
from torchdepot.net.pipconfig import PendingRead
from torchdepot.spec.mirror import load_spec, with_overrides
from torchdepot.store import layout as L
from torchdepot.store.outdir import check_out_dir

if TYPE_CHECKING:
    from torchdepot.sync.locked import LockedEnv
    from torchdepot.sync.result import MirrorResult

DEFAULT_SPEC = "mirror/mirror.yaml"


@click.command("mirror")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), default=DEFAULT_SPEC, show_default=True,
              help="Mirror spec (YAML).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (overrides the spec's out).")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="PyTorch index base, in failover order (repeatable; overrides the spec's upstreams).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--dry-run", is_flag=True, help="Print the plan (per target: packages, files, size); write nothing.")
@click.option("--on-hash-mismatch", type=click.Choice(["fail", "warn"]),
              help="When upstream's sha256 disagrees with the bytes: fail (default) or publish and record.")
@click.option("--fsync", is_flag=True, default=None,
              help="fsync every file before publishing it (survives power loss; slower on large mirrors).")
@click.option("--wait", type=float, default=None, metavar="SECONDS",
              help="Wait this long for another run holding the mirror lock (default: fail at once).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST[:PORT]",
              help="Also download from this host (HOST:PORT: that port only; repeatable; adds to the spec's allow_hosts).")
@click.option("--exclude-newer", metavar="TIME",
              help="Ignore files uploaded after this UTC time or date, e.g. 2026-06-01T00:00:00Z "
                   "(overrides the spec's exclude_newer).")
@click.option("--prune", is_flag=True,
              help="Drop the targets the mirror recorded (tools/fetch, earlier specs) that this spec does not "
                   "ask for; each is listed with its size. Without it every recorded target is kept.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run's figures as JSON on stdout (targets, torch versions, size, request counts, "
                   "refused links, removals).")
@click.option("--from-locks", "from_locks", type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="DIR", help="Mirror exactly the wheels the lock folders in DIR pinned (each folder's "
                                  "variant.json + pylock.toml, as 'torchdepot lock' writes envs/), instead of "
                                  "resolving the spec's targets; upstreams and hosts still come from the spec.")
@click.option("--from-misses", "from_misses", type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="DIR", help="Make the files 'serve --pull-through' was asked for in mirror DIR (its miss log) "
                                  "the mirror's own: fetched if needed and listed on its index, for the next bundle.")
def mirror_cmd(spec_path, out, upstreams, jobs, dry_run, on_hash_mismatch, fsync, wait, allow_hosts,
               exclude_newer, prune, as_json, from_locks, from_misses) -> MirrorResult | None:
    """Mirror torch (+ dependencies) for every target in the spec, laid out like download.pytorch.org.

    The mirror keeps every target it has recorded (targets tools/fetch added, and those of
    earlier specs) unless --prune is given, and every torch version it published unless the
    spec says keep: N (older versions then go at this sync, listed with their sizes).

    OUT must be new, empty, or an existing torchdepot mirror; /, your home directory and
    directories of other files are refused before anything is written.

    \b
    Example:
      torchdepot mirror --spec mirror/mirror.yaml --out /srv/torch --jobs 8
      torchdepot mirror --out /srv/torch --prune
      torchdepot mirror --from-locks envs/ --out /srv/torch-ci
      torchdepot mirror --from-misses /srv/torch
      torchdepot mirror --exclude-newer 2026-06-01T00:00:00Z --allow-host files.mirror.example
      pip install --index-url file:///srv/torch/whl/cpu torch
    """
    # Returns the run's result to a caller invoking it with standalone_mode=False (bench/mirror.py).
    if from_misses is not None:
        _from_misses(from_misses, spec_path, upstreams)
        return None
    spec = load_spec(spec_path)
    hosts = [*spec.allow_hosts, *allow_hosts] if allow_hosts else None
    spec = with_overrides(spec, out=out, upstreams=list(upstreams) or None, jobs=jobs,
                          on_hash_mismatch=on_hash_mismatch, fsync=fsync or None, allow_hosts=hosts,
                          exclude_newer=exclude_newer)
    check_out_dir(spec.out)
    # Where sync() keeps pip's configuration in the mirror's state (a pip spec's own run, not a dry
    # run) and the mirror holds no valid one, a new read starts now, in a copy of this process on
    # another core (net/pipconfig.py), while the sync modules load; sync() ends it if unused.
    pip_config = None
    if not dry_run and from_locks is None and spec.conda is None and spec.releases is None:
        # the HTTP client's modules first (the sync needs them anyway): the copy then shares their
        # standard library ones and imports only pip's own (~0.07 s of CPU, not ~0.11 s)
        with loading():
            import torchdepot.net.http  # noqa: F401
        pip_config = PendingRead.start(Path(spec.out) / L.PIP_CONFIG)
    try:
        with loading():
            from torchdepot.sync.pip import sync
        locks: tuple[LockedEnv, ...] = ()
        if from_locks is not None:
            from torchdepot.sync.locked import read_locks

            locks = read_locks(from_locks)
        result = sync(spec, dry_run=dry_run, wait=wait, out=Path(spec.out), prune=prune, locks=locks,
                      spec_targets=not locks, pip_config=pip_config, **_json_progress(as_json))
    finally:
        if pip_config is not None:
            pip_config.close()
    _report(result, dry_run, as_json)
    _fail_if_partial(result)
    return result


def _fail_if_partial(result: MirrorResult) -> None:
    """Exit non-zero, in one line, when some targets could not be synced (each named above)."""
    from torchdepot.errors import TorchdepotError

    if result.failed:
        ids = [f.target for f in result.failed]
        raise TorchdepotError(f"{len(ids)} target(s) not synced: {', '.join(ids)} (the others are published)")


def _from_misses(root: Path, spec_path: str, upstreams: tuple[str, ...]) -> None:
    """``--from-misses DIR``: the pull-through miss log of DIR into DIR's own index."""
    from torchdepot.commands.serve import pull_sources
    from torchdepot.net.http import make_session
    from torchdepot.ship.pullthrough import publish_misses

    check_out_dir(root, what="--from-misses")
    spec = Path(spec_path) if Path(spec_path).is_file() or spec_path != DEFAULT_SPEC else None
    sources = pull_sources(spec, upstreams)
    with make_session() as client:
        done = publish_misses(root, client, sources.policy)
    for line in done.failed:
        click.echo(f"not mirrored: {line}", err=True)
    click.echo(f"{root}: {done.files} files asked for through pull-through are now in the index "
               f"({done.fetched} fetched now, {done.unknown} requests for files no page offered)"
               + (f"; generation {done.generation}" if done.generation else ""))
    if done.failed:
        raise click.exceptions.Exit(1)


def _json_progress(as_json: bool) -> dict:
    """Under --json: no bar; each download progress event is one JSON line on stderr
    (``{"event": "progress", "done": ..., "total": ..., "rate": ..., "eta": ...}``),
    while stdout keeps the one result document."""
    if not as_json:
        return {}
    import dataclasses
    import json

    def emit(ev) -> None:
        doc = {"event": ev.kind, **{k: v for k, v in dataclasses.asdict(ev).items() if k != "kind" and v is not None}}
        click.echo(json.dumps(doc, sort_keys=True), err=True)

    return {"progress": False, "on_progress": emit}


def _report(result, dry_run: bool, as_json: bool, added: str | None = None) -> None:
    """The run's closing lines (or its JSON): what it did, then what is on the mirror and what to run next."""
    import json

    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1, sort_keys=True))
        return
    if dry_run:
        return
    from torchdepot.model.sizes import format_size

    idx = "published" if result.index_changed else "unchanged"
    # What the mirror holds is counted as `torchdepot status` counts it (every manifest file,
    # .metadata included); what this run fetched is counted in packages.
    held = len(result.manifest.files) if result.manifest is not None else len(result.files)
    fetched = result.report.summary("packages fetched") if result.report is not None else result.summary
    click.echo(f"mirror {result.out}: {f'added {added}; ' if added else ''}{len(result.targets)} targets, "
               f"{held} files ({format_size(result.size)}); this run: {fetched}; index {idx} "
               f"(generation {result.generation}); verify-mirror {result.verify}; total {result.seconds:.1f} s")
    versions: dict[str, list[str]] = {}
    for target, version in sorted(result.torch_versions.items()):
        versions.setdefault(version, []).append(target)
    regional = result.manifest.spec.get("releases") if result.manifest is not None else None
    torch = "; ".join(f"torch {v} for {', '.join(ts)}" for v, ts in versions.items()) or (
        f"every torch{regional} release upstream ships for the spec" if regional else "no pip targets")
    click.echo(f"ready: {torch}; {format_size(result.size)} in {result.out}; "
               f"next: torchdepot serve --root {result.out}  (or: torchdepot lock --mirror {result.out})")


def _base_spec(out: str | None):
    """The spec stored in the mirror's manifest, else the default spec file."""
    from torchdepot.spec.mirror import parse_spec
    from torchdepot.store import manifest as mf

    spec = load_spec(DEFAULT_SPEC) if Path(DEFAULT_SPEC).is_file() else parse_spec({}, "default spec")
    root = Path(out) if out else spec.out
    if (root / mf.MANIFEST_NAME).is_file():
        stored = mf.load(root).spec
        if stored:
            spec = parse_spec(stored, str(root / mf.MANIFEST_NAME))
    return spec, root


@click.command("fetch", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cuda", metavar="CUXYZ", help="CUDA variant, e.g. cu118 (or 11.8).")
@click.option("--cpu", is_flag=True, help="CPU variant (the default when --cuda is not given).")
@click.option("--accelerator", metavar="NAME", help="Any variant name: rocm6.2, xpu ...")
@click.option("--py", "python", default="host", show_default=True, help="Target Python, e.g. 3.10.")
@click.option("--torch", "torch_version", metavar="VERSION", help="torch version or constraint (default: newest).")
@click.option("--platform", default="host", show_default=True, help="linux-x86_64, windows-amd64, macos-arm64 ...")
@click.option("--out", type=click.Path(file_okay=False), help="Mirror directory (default: the spec's out).")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL", help="PyTorch index base (repeatable).")
@click.option("--jobs", type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--dry-run", is_flag=True, help="Print the plan only.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's figures as JSON on stdout.")
@click.option("--debug", is_flag=True, envvar="TORCHDEPOT_DEBUG",
              help="Show the traceback of an unexpected error instead of one line.")
def fetch_tool(cuda, cpu, accelerator, python, torch_version, platform, out, upstreams, jobs, dry_run, as_json,
               debug) -> None:
    """Add one target to the mirror and sync it.

    The mirror records the target, so later runs (tools/fetch or torchdepot mirror) keep it
    until 'torchdepot mirror --prune'. Into a new directory only this target is mirrored; into
    an existing mirror, this target plus every target it already holds.

    \b
    Example:
      tools/fetch --cuda cu118 --py 3.10 --torch 2.1.0 --out /srv/torch
    """
    from torchdepot.model.accel import cuda_from_dotted
    from torchdepot.sync.pip import sync

    with one_line_errors("tools/fetch", "tools/fetch", debug=debug):
        if sum(bool(x) for x in (cuda, cpu, accelerator)) > 1:
            raise click.UsageError("give one of --cuda, --cpu, --accelerator")
        acc = accelerator or "cpu"
        if cuda:
            acc = cuda_from_dotted(cuda).name if "." in cuda else cuda
        spec, root = _base_spec(out)
        check_out_dir(root)
        entry = {"accelerator": acc, "python": python, "platform": platform}
        if torch_version:
            entry["torch"] = torch_version
        # validated as a spec `targets:` entry would be; recorded by the sync, not in the spec
        (target,) = with_overrides(spec, targets=[entry]).extra_targets
        spec = with_overrides(spec, out=str(root), upstreams=list(upstreams) or None, jobs=jobs)
        result = sync(spec, dry_run=dry_run, out=root, add=[target], spec_targets=False, **_json_progress(as_json))
        _report(result, dry_run, as_json, added=target.id)
        _fail_if_partial(result)


COMMANDS = [mirror_cmd]
