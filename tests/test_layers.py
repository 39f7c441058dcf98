"""The package's layering, checked against docs/architecture.md (the test reads the docs).

The docs hold an allow-list (the fenced ``layers`` block): per top-level package of
``torchdepot``, the packages it may import, listed top to bottom, each allowed only layers
below it. The checks here:

- every import follows the allow-list: absolute, relative, lazy (inside functions),
  ``TYPE_CHECKING``, ``from torchdepot import x`` and ``import torchdepot`` + attribute access;
- no ``importlib.import_module`` / ``__import__`` (or a spec's loader) outside ``cli.py``: a
  dynamic import hides an edge;
- the model imports only what its own allow-list (also in the docs) names;
- no I/O calls in ``model/`` and ``spec/`` (``open``, ``.read_*``/``.write_*``, ``os.*``,
  ``subprocess``), except the spec's one file reader;
- no import cycle among the modules of one package.

Each checker is run on planted violations too (the ``test_checker_*`` tests), so none of them
can pass vacuously.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "torchdepot"
DOCS = ROOT / "docs" / "architecture.md"

# The spec's one file reader: the bounded read of mirror.yaml (module, function).
SPEC_FILE_READER = ("spec/bounds.py", "read_bounded")
DYNAMIC_IMPORTS_ALLOWED = {"cli.py"}  # cli imports each command module only when it runs
IO_MODULES = ("os", "subprocess")


# -- the docs' allow-list ------------------------------------------------------------------
def read_allow_list(text: str) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """(layer -> layers it may import, in docs order; the model's outside imports) from the
    ``layers`` block of architecture.md."""
    m = re.search(r"^```layers\n(.*?)^```", text, re.M | re.S)
    assert m, f"{DOCS}: no ```layers block"
    layers: dict[str, tuple[str, ...]] = {}
    model_imports: frozenset[str] = frozenset()
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(":")
        if name.strip() == "model imports":
            model_imports = frozenset(rest.split())
        else:
            layers[name.strip()] = tuple(rest.split())
    return layers, model_imports


ALLOWED, MODEL_IMPORTS = read_allow_list(DOCS.read_text(encoding="utf-8"))
MODULES = sorted(PKG.rglob("*.py"))


def layer_of(path: Path, pkg: Path = PKG) -> str:
    return path.relative_to(pkg).parts[0].removesuffix(".py")


# -- reading a module's imports ------------------------------------------------------------
def _module_name(path: Path, pkg: Path) -> list[str]:
    rel = path.relative_to(pkg.parent).with_suffix("")
    return list(rel.parts if rel.name != "__init__" else rel.parts[:-1])


def imports_of(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in ``path`` (relative ones resolved; for
    ``from a import b`` the submodule ``a.b`` when it is one), and ``torchdepot.x.y`` for an
    attribute chain on an imported ``torchdepot``."""
    here = _module_name(path, pkg)
    package = here if path.name == "__init__.py" else here[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str]] = []
    roots: set[str] = set()  # local names bound to the bare package (import torchdepot [as td])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                is_module = (pkg.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (pkg.parent / Path(*sub.split(".")) / "__init__.py").is_file()
                out.append((node.lineno, sub if is_module else mod))
        elif isinstance(node, ast.Import):
            for a in node.names:
                out.append((node.lineno, a.name))
                if a.name == pkg.name:
                    roots.add(a.asname or a.name)
    if roots:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain, cur = [], node
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id in roots and not isinstance(getattr(node, "ctx", None), ast.Del):
                    out.append((node.lineno, ".".join([pkg.name, *reversed(chain)])))
    return out


def _target_layer(mod: str, pkg: Path) -> str | None:
    """The top-level package ``mod`` lies in; None for outside modules and the package root."""
    parts = mod.split(".")
    if parts[0] != pkg.name or len(parts) < 2:
        return None
    first = parts[1]
    exists = (pkg / first).is_dir() or (pkg / f"{first}.py").is_file()
    return first if exists else None  # torchdepot.__version__ and the like: the package root


# -- the checkers (each returns its findings; planted sources below prove they can fail) -----
def layer_violations(path: Path, pkg: Path = PKG, allowed: dict[str, tuple[str, ...]] = ALLOWED) -> list[str]:
    src = layer_of(path, pkg)
    if src == "__init__":
        return []
    bad: list[str] = []
    for line, mod in dict.fromkeys(imports_of(path, pkg)):  # each (line, module) once
        dst = _target_layer(mod, pkg)
        if dst is None or dst == src:
            continue
        if dst not in allowed.get(src, ()):
            bad.append(f"{path.relative_to(pkg.parent)}:{line} imports {mod} "
                       f"({src} may import: {' '.join(allowed.get(src, ())) or 'nothing'})")
    return bad


LOADERS = {"import_module", "reload", "module_from_spec", "spec_from_file_location", "spec_from_loader", "__import__"}


def dynamic_imports(path: Path, pkg: Path = PKG) -> list[str]:
    """Calls that load a module by name at run time (``importlib.import_module``,
    ``__import__``, a spec's loader); ``importlib.metadata``/``resources`` read package data
    and ``find_spec`` only looks, so they stay allowed."""
    if str(path.relative_to(pkg)) in DYNAMIC_IMPORTS_ALLOWED:
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and n.id in LOADERS:
            bad.append(f"{path.name}:{n.lineno} uses {n.id}")
        elif isinstance(n, ast.Attribute) and n.attr in LOADERS:
            bad.append(f"{path.name}:{n.lineno} uses .{n.attr}")
        elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "importlib":
            bad += [f"{path.name}:{n.lineno} imports {a.name} from {n.module}" for a in n.names if a.name in LOADERS]
    return bad


def model_outside_imports(path: Path, pkg: Path = PKG, allowed: frozenset[str] = MODEL_IMPORTS) -> list[str]:
    bad = []
    for line, mod in imports_of(path, pkg):
        if mod.split(".")[0] == pkg.name:
            continue  # checked by the layer rule
        if mod not in allowed and mod.split(".")[0] not in allowed:
            bad.append(f"{path.name}:{line} imports {mod}")
    return bad


def io_calls(path: Path, pkg: Path = PKG) -> list[str]:
    """``open(...)``, ``x.read_*(...)`` / ``x.write_*(...)``, any use of ``os`` or ``subprocess``."""
    rel = str(path.relative_to(pkg).as_posix())
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exempt: set[ast.AST] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and (rel, fn.name) == SPEC_FILE_READER:
            exempt |= set(ast.walk(fn))
    bad = []
    for node in ast.walk(tree):
        if node in exempt:
            continue
        what = None
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "open":
                what = "open()"
            elif isinstance(f, ast.Attribute) and f.attr.startswith(("read_", "write_")):
                what = f".{f.attr}()"
        elif isinstance(node, ast.Import):
            hit = [a.name for a in node.names if a.name.split(".")[0] in IO_MODULES]
            what = f"import {hit[0]}" if hit else None
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in IO_MODULES and not node.level:
            what = f"from {node.module} import"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in IO_MODULES:
            what = f"{node.value.id}.{node.attr}"
        if what:
            bad.append(f"{rel}:{node.lineno} {what}")
    return bad


def cycles(pkg: Path, layer: str) -> list[list[str]]:
    """Import cycles among the modules of one top-level package (every import counts)."""
    mods = {".".join(_module_name(p, pkg)): p for p in sorted((pkg / layer).rglob("*.py"))} \
        if (pkg / layer).is_dir() else {}
    graph = {m: sorted({mod for _l, mod in imports_of(p, pkg) if mod in mods and mod != m}) for m, p in mods.items()}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    return found


# -- the package ---------------------------------------------------------------------------
def test_the_allow_list_runs_one_way_and_names_every_package():
    order = list(ALLOWED)
    for i, (layer, allowed) in enumerate(ALLOWED.items()):
        unknown = [d for d in allowed if d not in ALLOWED]
        assert not unknown, f"{DOCS}: {layer} may import unknown layers {unknown}"
        up = [d for d in allowed if order.index(d) <= i]
        assert not up, f"{DOCS}: {layer} may import {up}, listed at or above it (imports run down)"
    top = {layer_of(p) for p in MODULES} - {"__init__"}
    assert top <= set(ALLOWED), f"give these a line in the layers block of {DOCS}: {sorted(top - set(ALLOWED))}"
    assert MODEL_IMPORTS, f"{DOCS}: no 'model imports:' line"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_documented_layers(path: Path):
    bad = layer_violations(path) + dynamic_imports(path)
    assert not bad, f"imports {DOCS.name} does not allow:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted((PKG / "model").glob("*.py")), ids=lambda p: p.name)
def test_model_imports_only_its_allow_list(path: Path):
    bad = model_outside_imports(path)
    assert not bad, bad


@pytest.mark.parametrize("path", sorted([*(PKG / "model").glob("*.py"), *(PKG / "spec").glob("*.py")]),
                         ids=lambda p: str(p.relative_to(PKG)))
def test_model_and_spec_do_no_io(path: Path):
    bad = io_calls(path)
    assert not bad, bad


@pytest.mark.parametrize("layer", sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()))
def test_no_import_cycle_inside_a_package(layer: str):
    found = cycles(PKG, layer)
    assert not found, [" -> ".join(c) for c in found]


# -- each checker fails on a planted violation -----------------------------------------------
def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "torchdepot"
    for rel, text in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        for d in p.parents:
            if d == pkg.parent:
                break
            (d / "__init__.py").touch()
        p.write_text(text)
    return pkg


PLANTED_ALLOWED = {"sync": ("store", "model", "errors"), "store": ("model", "errors"), "model": ("errors",),
                   "errors": ()}


def test_checker_catches_upward_relative_lazy_and_attribute_imports(tmp_path):
    pkg = _plant(tmp_path, {
        "errors.py": "",
        "sync/pip.py": "def sync(): pass\n",
        "store/manifest.py": "",
        "model/a.py": "from torchdepot.store import manifest\n",
        "model/b.py": "def f():\n    from ..sync.pip import sync\n",
        "model/c.py": "import torchdepot\nX = torchdepot.sync.pip.sync\n",
        "model/d.py": "import torchdepot as td\ndef f():\n    return td.store.manifest\n",
        "model/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from torchdepot.sync import pip\n",
        "model/ok.py": "from .a import manifest\nfrom torchdepot.errors import x\nimport torchdepot\nV = torchdepot.__version__\n",
        "sync/ok.py": "from torchdepot.store import manifest\nfrom torchdepot import model\n",
    })
    v = {name: layer_violations(pkg / "model" / f"{name}.py", pkg, PLANTED_ALLOWED) for name in "abcde"}
    assert "torchdepot.store.manifest" in v["a"][0]
    assert "torchdepot.sync.pip" in v["b"][0]
    assert "torchdepot.sync.pip.sync" in v["c"][0]
    assert "torchdepot.store.manifest" in v["d"][0]
    assert "torchdepot.sync.pip" in v["e"][0]
    assert layer_violations(pkg / "model" / "ok.py", pkg, PLANTED_ALLOWED) == []
    assert layer_violations(pkg / "sync" / "ok.py", pkg, PLANTED_ALLOWED) == []


def test_checker_catches_dynamic_imports(tmp_path):
    pkg = _plant(tmp_path, {"sync/a.py": "import importlib\nm = importlib.import_module('torchdepot.cli')\n",
                            "sync/b.py": "m = __import__('torchdepot.cli')\n",
                            "sync/c.py": "from importlib import import_module\n",
                            "sync/d.py": "import importlib.util as u\nm = u.module_from_spec(u.find_spec('x'))\n",
                            "sync/ok.py": "import importlib.metadata\nimport importlib.util\n"
                                          "v = importlib.metadata.version('uv')\nhave = importlib.util.find_spec('x')\n",
                            "cli.py": "import importlib\nm = importlib.import_module('torchdepot.commands.ls')\n"})
    assert dynamic_imports(pkg / "sync" / "a.py", pkg) == ["a.py:2 uses .import_module"]
    assert dynamic_imports(pkg / "sync" / "b.py", pkg) == ["b.py:1 uses __import__"]
    assert dynamic_imports(pkg / "sync" / "c.py", pkg) == ["c.py:1 imports import_module from importlib"]
    assert dynamic_imports(pkg / "sync" / "d.py", pkg) == ["d.py:2 uses .module_from_spec"]
    assert dynamic_imports(pkg / "sync" / "ok.py", pkg) == []
    assert dynamic_imports(pkg / "cli.py", pkg) == []


def test_checker_catches_model_imports_outside_its_allow_list(tmp_path):
    pkg = _plant(tmp_path, {"model/a.py": "import requests\nimport re\nfrom packaging.version import Version\n",
                            "model/b.py": "from urllib.parse import quote\nfrom urllib.request import urlopen\n"})
    allowed = frozenset({"re", "packaging", "urllib.parse", "__future__"})
    assert model_outside_imports(pkg / "model" / "a.py", pkg, allowed) == ["a.py:1 imports requests"]
    assert model_outside_imports(pkg / "model" / "b.py", pkg, allowed) == ["b.py:2 imports urllib.request"]


def test_checker_catches_io_calls(tmp_path):
    pkg = _plant(tmp_path, {
        "model/a.py": "def f(p):\n    return open(p).read()\n",
        "model/b.py": "def f(p):\n    p.write_text('x')\n",
        "model/c.py": "import os\nX = os.environ.get('X')\n",
        "model/d.py": "import subprocess\n",
        "model/e.py": "from os import path\n",
        "model/ok.py": "def f(text):\n    return text.splitlines()\n",
        "spec/bounds.py": "def read_bounded(p):\n    with open(p, 'rb') as fh:\n        return fh.read()\n"
                          "def other(p):\n    return p.read_bytes()\n",
    })
    assert io_calls(pkg / "model" / "a.py", pkg) == ["model/a.py:2 open()"]
    assert io_calls(pkg / "model" / "b.py", pkg) == ["model/b.py:2 .write_text()"]
    assert "model/c.py:1 import os" in io_calls(pkg / "model" / "c.py", pkg)
    assert "model/c.py:2 os.environ" in io_calls(pkg / "model" / "c.py", pkg)
    assert io_calls(pkg / "model" / "d.py", pkg) == ["model/d.py:1 import subprocess"]
    assert io_calls(pkg / "model" / "e.py", pkg) == ["model/e.py:1 from os import"]
    assert io_calls(pkg / "model" / "ok.py", pkg) == []
    assert io_calls(pkg / "spec" / "bounds.py", pkg) == ["spec/bounds.py:5 .read_bytes()"]  # only the reader is exempt


def test_checker_catches_cycles_inside_a_package(tmp_path):
    pkg = _plant(tmp_path, {
        "store/pages.py": "from torchdepot.store import simple_json\n",
        "store/simple_json.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from torchdepot.store.pages import IndexFile\n",
        "store/layout.py": "",
        "store/fsutil.py": "from . import layout\n",
    })
    assert cycles(pkg, "store") == [["torchdepot.store.pages", "torchdepot.store.simple_json", "torchdepot.store.pages"]]
    (pkg / "store" / "simple_json.py").write_text("from torchdepot.store import layout\n")
    assert cycles(pkg, "store") == []


def test_the_docs_block_is_read_as_written():
    layers, model = read_allow_list("x\n```layers\n# comment\na: b c  # why\nb: c\nc:\nmodel imports: re typing\n```\n")
    assert layers == {"a": ("b", "c"), "b": ("c",), "c": ()}
    assert model == {"re", "typing"}
