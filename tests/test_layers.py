"""The package's imports run one way: commands -> sync/verify/ship -> ... -> model.

Each top-level package of ``torchdepot`` has a rank; a module may import only from packages
of a LOWER rank (or from its own package). Lazy imports inside functions count too.
docs/architecture.md explains each layer; a new package needs a rank here and a paragraph there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "torchdepot"

RANK = {
    "errors": 0,
    "model": 1,
    "spec": 2,
    "net": 3,
    "store": 4,
    "sources": 5,
    "resolve": 6, "fetch": 6,
    "lockfiles": 7, "clientconfig": 7,
    "site": 8, "doctor": 8,
    "sync": 9, "verify": 9, "ship": 9,
    "commands": 10,
    "cli": 11, "__main__": 12,
}
# The model is pure: no network, no subprocesses, no filesystem writes.
MODEL_MAY_NOT_IMPORT = {"requests", "urllib3", "httpx", "subprocess", "socket", "shutil", "tempfile", "os"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "torchdepot" and len(parts) > 1 else None


def _imports(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute module) for every torchdepot import in ``path``, relative ones resolved."""
    rel = path.relative_to(pkg.parent).with_suffix("")
    here = list(rel.parts if rel.name != "__init__" else rel.parts[:-1])
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "torchdepot":  # from torchdepot import x: x is the module
                out += [(node.lineno, f"torchdepot.{a.name}") for a in node.names if a.name != "__version__"]
            else:
                out.append((node.lineno, mod))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_package_has_a_rank():
    top = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in MODULES} - {"__init__"}
    assert top <= set(RANK), f"give these a rank (and a paragraph in docs/architecture.md): {top - set(RANK)}"


def _violations(path: Path, pkg: Path = PKG) -> list[str]:
    src = path.relative_to(pkg).parts[0].removesuffix(".py")
    if src == "__init__":
        return []
    bad = []
    for line, mod in _imports(path, pkg):
        dst = _layer(mod)
        if dst is None or dst == src:
            continue
        if RANK[dst] >= RANK[src]:
            bad.append(f"{path.relative_to(pkg.parent)}:{line} imports {mod} ({src} rank {RANK[src]} -> {dst} rank {RANK[dst]})")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_down_the_layers(path: Path):
    bad = _violations(path)
    assert not bad, "imports that go up or across a layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted((PKG / "model").glob("*.py")), ids=lambda p: p.name)
def test_model_does_no_io(path: Path):
    bad = [f"{path.name}:{line} imports {mod}" for line, mod in _imports(path)
           if mod.split(".")[0] in MODEL_MAY_NOT_IMPORT or (mod.startswith("torchdepot.") and _layer(mod) not in ("model", "errors"))]
    assert not bad, bad


def test_the_checker_catches_upward_and_relative_imports(tmp_path):
    """The rule must be able to fail: model importing the store, absolutely or relatively."""
    pkg = tmp_path / "torchdepot"
    (pkg / "model").mkdir(parents=True)
    (pkg / "model" / "a.py").write_text("from torchdepot.store import manifest\n")
    (pkg / "model" / "b.py").write_text("def f():\n    from ..sync.pip import sync\n")
    (pkg / "model" / "c.py").write_text("from .accel import Accelerator\nfrom torchdepot.errors import ParseError\n")
    assert "store rank" in _violations(pkg / "model" / "a.py", pkg)[0]
    assert "torchdepot.sync.pip" in _violations(pkg / "model" / "b.py", pkg)[0]
    assert _violations(pkg / "model" / "c.py", pkg) == []
