"""The availability matrix: which versions x accelerators x Pythons x platforms a source offers.

One matrix for both ecosystems: ``torchdepot ls`` feeds it wheels from a PEP 503 index and
``torchdepot conda ls`` feeds it records from a conda channel. Each becomes a list of
:class:`Entry` (version, accelerator, Python column, platform); :func:`build_matrix` groups
them into :class:`Matrix` rows (newest version first, then accelerators in
:func:`~torchdepot.model.accel.accelerator_sort_key` order, ``unknown`` last) and
:func:`render` lays the rows out as a fixed-width table.

Invariants: the rendering is deterministic (cells list platform codes in legend order, never
in set order, which changes with the hash seed); numeric Python columns sort numerically
with free-threaded (``3.13t``) after its plain column, and labels that name no Python
(``?`` for a wheel with no CPython tag, ``-`` for a conda build that states none) go last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torchdepot.model.accel import Accelerator, accelerator_sort_key
from torchdepot.model.condabuild import CondaRecord
from torchdepot.model.platforms import subdir_platform
from torchdepot.model.wheelname import WheelFile, version_sort_key

# Short platform codes keep a cell narrow enough for a terminal; the legend prints below.
PLATFORM_CODES = {
    "linux-x86_64": "L",
    "linux-aarch64": "A",
    "windows-amd64": "W",
    "macos-arm64": "M",
    "macos-x86_64": "X",
    "any": "*",
}
_CODE_ORDER = {c: i for i, c in enumerate(PLATFORM_CODES.values())}
_CODES = ", ".join(f"{c}={p}" for p, c in PLATFORM_CODES.items())
WHEEL_LEGEND = f"platforms: {_CODES}; 't' = free-threaded"
CONDA_LEGEND = f"subdirs: {_CODES}; '-' = build states no Python"
UNKNOWN = "unknown"  # the accelerator column for a build that states none


@dataclass(frozen=True)
class Entry:
    """One build: a wheel (or a conda record) for one Python column on one platform."""

    version: str
    accelerator: Accelerator | None
    python: str  # column label: "3.11", "3.13t", or "?"/"-" when the build names no Python
    platform: str  # cell code: PLATFORM_CODES value, or the platform/subdir name without one

    @property
    def accelerator_name(self) -> str:
        return self.accelerator.name if self.accelerator else UNKNOWN


@dataclass(frozen=True)
class Row:
    version: str
    accelerator: str
    cells: tuple[tuple[str, str], ...]  # (python column, platform codes), only non-empty ones

    def cell(self, python: str) -> str:
        return dict(self.cells).get(python, "")


@dataclass(frozen=True)
class Matrix:
    title: str
    columns: tuple[str, ...]  # Python columns, left to right
    rows: tuple[Row, ...]


def _code_key(code: str) -> tuple[int, str]:
    """Legend order; platforms without a code (``linux-s390x``) after, by name."""
    return (_CODE_ORDER.get(code, 99), code)


def _python_key(label: str) -> tuple:
    digits = label.rstrip("t")
    parts = tuple(int(p) for p in digits.split(".") if p.isdigit())
    return (0, parts, label.endswith("t")) if parts else (1, (), False)


def _accelerator_key(accelerator: Accelerator | None) -> tuple:
    return (1, ()) if accelerator is None else (0, accelerator_sort_key(accelerator))


def wheel_entries(wheels: Iterable[WheelFile]) -> list[Entry]:
    """A wheel counts once per CPython it supports (``?`` when it names none)."""
    out = []
    for w in wheels:
        code = PLATFORM_CODES.get(w.platform.name, w.platform.name)
        for py in w.pythons or ("?",):
            out.append(Entry(version=w.public_version, accelerator=w.accelerator,
                             python=py + ("t" if w.free_threaded else ""), platform=code))
    return out


def conda_entries(records: Iterable[CondaRecord]) -> list[Entry]:
    """A record sits in the column of the Python its build string states (``-`` if none)."""
    out = []
    for r in records:
        plat = subdir_platform(r.subdir)
        code = PLATFORM_CODES.get(plat, r.subdir) if plat else r.subdir
        out.append(Entry(version=r.version, accelerator=r.accelerator, python=r.python or "-", platform=code))
    return out


def build_matrix(title: str, entries: Sequence[Entry]) -> Matrix:
    cells: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    accs: dict[str, Accelerator | None] = {}
    for e in entries:
        accs[e.accelerator_name] = e.accelerator
        cells[(e.version, e.accelerator_name)][e.python].add(e.platform)
    keys = sorted(cells, key=lambda k: _accelerator_key(accs[k[1]]))
    keys = sorted(keys, key=lambda k: version_sort_key(k[0]), reverse=True)  # stable: version, then accelerator
    rows = tuple(
        Row(version=v, accelerator=a,
            cells=tuple((py, "".join(sorted(codes, key=_code_key))) for py, codes in sorted(cells[(v, a)].items())))
        for v, a in keys)
    columns = tuple(sorted({e.python for e in entries}, key=_python_key))
    return Matrix(title=title, columns=columns, rows=rows)


def format_table(title: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """``title``, then the header, a dash rule and ``body``, in left-aligned columns."""
    table = [list(header)] + [list(r) for r in body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [title]
    for i, r in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(matrix: Matrix) -> str:
    body = [[row.version, row.accelerator, *(row.cell(c) for c in matrix.columns)] for row in matrix.rows]
    return format_table(matrix.title, ["version", "accelerator", *matrix.columns], body)


def wheel_matrix(project: str, wheels: Sequence[WheelFile]) -> Matrix:
    return build_matrix(f"{project}: {len(wheels)} wheels", wheel_entries(wheels))


def wheel_matrices(wheels: Iterable[WheelFile]) -> list[Matrix]:
    """One matrix per project, by project name."""
    by_project: dict[str, list[WheelFile]] = defaultdict(list)
    for w in wheels:
        by_project[w.name].append(w)
    return [wheel_matrix(p, by_project[p]) for p in sorted(by_project)]


def conda_matrix(package: str, records: Sequence[CondaRecord]) -> Matrix:
    return build_matrix(f"{package}: {len(records)} records", conda_entries(records))


def _python_ok(wheel: WheelFile, python: str | None) -> bool:
    if not python:
        return True
    return python in wheel.pythons or python.split(".", 1)[0] in wheel.pythons


def select_wheels(items, accelerators: set[str] | None, python: str | None, platform: str | None):
    """The ``(link, wheel)`` pairs that match every given filter (``unknown`` matches a wheel
    whose accelerator is not stated; ``any`` wheels match every platform)."""
    out = []
    for link, wheel in items:
        acc = wheel.accelerator.name if wheel.accelerator else UNKNOWN
        if accelerators and acc not in accelerators:
            continue
        if _python_ok(wheel, python) and (not platform or wheel.platform.name in (platform, "any")):
            out.append((link, wheel))
    return out


@dataclass(frozen=True)
class Listing:
    """What ``ls`` shows: the matching ``(link, wheel)`` pairs, the one line for what the
    crawl skipped (None if nothing), and the requests it took (one per page)."""

    items: tuple
    skipped: str | None
    requests: int


def index_wheels(index_url: str, projects: Sequence[str], accelerators: set[str] | None = None,
                 python: str | None = None, platform: str | None = None) -> Listing:
    """Crawl a PyTorch-style index through the one upstream reader and keep the pairs that
    match the filters. Bounded by :data:`QUERY_HTTP`: a host that cannot be reached fails
    in seconds; redirects stay on the index's own host (and the hosts it is known to link to)."""
    from torchdepot.net.hostpolicy import default_policy
    from torchdepot.net.http import QUERY_HTTP, make_session
    from torchdepot.sources.upstream import UpstreamReader, crawl_wheels

    with make_session(QUERY_HTTP) as client:
        reader = UpstreamReader(client, default_policy([index_url]))
        crawl = crawl_wheels(reader, index_url, list(projects))
    return Listing(items=tuple(select_wheels(crawl.items, accelerators, python, platform)),
                   skipped=crawl.summary(index_url), requests=reader.request_counts()["pages"])


def channel_records(url: str, subdirs: Sequence[str], names: Sequence[str] = ()) -> list[CondaRecord]:
    """The records of ``url``'s ``subdirs`` (fetched, bounded, into a throwaway cache), sorted by
    subdir and file name. With ``names``, only those packages, read natively per name (py-rattler's
    SparseRepoData: a conda-forge subdir is never parsed record by record); without, every record,
    through the same validating parser as a sync's chosen records."""
    import tempfile
    from pathlib import Path

    import rattler

    from torchdepot.net.http import QUERY_HTTP, make_session
    from torchdepot.resolve.conda import SubdirSource, open_sources
    from torchdepot.sources.channel import RepodataCache, fetch_repodata
    from torchdepot.sources.repodata import chosen_record

    records: list[CondaRecord] = []
    with make_session(QUERY_HTTP) as client, tempfile.TemporaryDirectory(prefix="td-condals-") as tmp:
        cache = RepodataCache(Path(tmp))
        for sd in subdirs:
            got = fetch_repodata(client, "channel", (url,), sd, cache, label=url)
            sparse = open_sources([SubdirSource("channel", sd, url, got.path, where=got.url)])["channel"][sd]
            have = set(sparse.package_names())
            for name in sorted(have & set(names)) if names else sorted(have):
                for r in sparse.load_records(rattler.PackageName(name)):
                    records.append(chosen_record(url, sd, r.file_name, r.to_json(), got.url))
    return sorted(records, key=lambda r: (r.subdir, r.filename))
