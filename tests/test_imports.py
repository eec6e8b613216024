"""The package's import structure: no cycles, only relative imports
inside it, and a copy vendored under another name works."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from typing import Dict, List, Set

from tests.util import PYTHON, ROOT

PACKAGE = os.path.join(ROOT, "ucspi")


def modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


def _is_package(name: str, mods: Dict[str, str]) -> bool:
    return mods[name].endswith("__init__.py")


def _with_packages(target: str, importer: str, mods: Dict[str, str]) -> Set[str]:
    """``target`` and the packages Python initialises to import it: each
    enclosing package that is not also one of ``importer``'s (those are
    initialised already).  ``from ..server import child`` runs
    ``server/__init__.py`` first, which is how a cycle can hide."""
    found = {target}
    parts = target.split(".")
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        if package in mods and not (importer + ".").startswith(package + "."):
            found.add(package)
    return found


def imports_of(name: str, mods: Dict[str, str]) -> Set[str]:
    """The package's modules that ``name`` imports (lazy and
    TYPE_CHECKING imports included), with the packages whose
    ``__init__`` runs on the way."""
    with open(mods[name], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    here = name if _is_package(name, mods) else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    found |= _with_packages(sub, name, mods)
                elif target in mods:
                    found |= _with_packages(target, name, mods)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods:
                    found |= _with_packages(alias.name, name, mods)
    found.discard(name)
    return found


def subpackage(name: str) -> str:
    """``ucspi.server.loop`` -> ``ucspi.server``; a top-level module of
    the package stands for itself."""
    return ".".join(name.split(".")[:2])


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle, or [] (depth-first search)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: imports_of(name, mods) for name in mods}
    assert graph["ucspi.server.loop"] >= {"ucspi.server.conn", "ucspi.server.service"}
    assert "ucspi.reactor" in graph["ucspi.server.service"]
    assert find_cycle(graph) == []


def test_package_inits_count_as_imports() -> None:
    """Importing a module of another sub-package runs that package's
    ``__init__``: the walk sees it."""
    mods = modules()
    assert "ucspi.tls" in imports_of("ucspi.server.service", mods)
    assert "ucspi.server" not in imports_of("ucspi.server.loop", mods)


def test_no_cycles_between_subpackages() -> None:
    """``proc/`` is the bottom layer: ``server/``, ``tls/``, ``plugin/``
    build on it, and no sub-package imports one that imports it back."""
    mods = modules()
    graph: Dict[str, Set[str]] = {}
    for name in mods:
        owner = subpackage(name)
        graph.setdefault(owner, set())
        graph[owner] |= {subpackage(m) for m in imports_of(name, mods)} - {owner}
    assert find_cycle(graph) == []
    # the commands' dispatcher (python -m ucspi, the zipapp) aside
    assert [src for src, dsts in graph.items()
            if "ucspi.server" in dsts and src not in ("ucspi.server", "ucspi.__main__")] == []
    assert graph["ucspi.proc"] <= {"ucspi.errors", "ucspi.log", "ucspi.reactor", "ucspi.scan",
                                   "ucspi.timeouts"}


def test_server_package_is_light() -> None:
    """``import ucspi.server`` (every ``ucspi.server.X`` import runs it)
    loads nothing else of the package."""
    code = ("import sys; import ucspi.server; "
            "print(sorted(m for m in sys.modules if m.startswith('ucspi')))")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, timeout=30,
                         check=True)
    assert out.stdout.decode().strip() == "['ucspi', 'ucspi.server']"


def test_imports_inside_the_package_are_relative() -> None:
    absolute = []
    for name, path in modules().items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    (node.module or "").split(".")[0] == "ucspi":
                absolute.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.Import) and \
                    any(a.name.split(".")[0] == "ucspi" for a in node.names):
                absolute.append(f"{name}:{node.lineno}")
    assert absolute == []


def test_vendored_copy_works(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``ucspi/`` copied as ``myproj/_vendor/ucspi`` imports every module
    and runs tcprules, with no ``ucspi`` on the path."""
    vendor = tmp_path / "myproj" / "_vendor"
    vendor.mkdir(parents=True)
    for pkg in (tmp_path / "myproj", vendor):
        (pkg / "__init__.py").write_text("")
    shutil.copytree(PACKAGE, vendor / "ucspi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    names = sorted("myproj._vendor." + m for m in modules())
    code = ("import importlib, sys\n"
            "for name in %r:\n"
            "    importlib.import_module(name)\n"
            "assert 'ucspi' not in sys.modules\n"
            "from myproj._vendor.ucspi.tools.tcprules import main\n"
            "sys.exit(main(['rules.cdb', 'rules.tmp']))\n" % names)
    out = subprocess.run([PYTHON, "-E", "-s", "-c", code], cwd=tmp_path, input=b"1.2.3.4:deny\n",
                         capture_output=True, timeout=30,
                         env={"PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "rules.cdb", "rb") as f:
        assert b"1.2.3.4" in f.read()
