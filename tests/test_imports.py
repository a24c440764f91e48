"""One direction between modules: no import cycle among the project's modules, counting the imports made inside
functions (they load late, so a cycle through one only fails once someone moves it to the top), and every module of
common/ imports on its own in a fresh interpreter."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((ROOT / "common").rglob("*.py"))}
SCRIPTS = {module_name(p): p for p in sorted(ROOT.glob("*.py"))}
KNOWN = MODULES.keys() | SCRIPTS.keys()


def type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def project_imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports anywhere in its file (top, functions, methods), resolved. `from . import
    faces` (a submodule, from a package `name` is in, so already initialised) is an edge to the submodule only;
    any other name taken from a package is an edge to the package too, since it must be initialised first."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(package.split(".")[:i]) for i in range(1, len(package.split(".")) + 1)}
    skipped, found = type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            modules = {f"{base}.{a.name}" for a in node.names} & KNOWN
            found |= modules
            if len(modules) < len(node.names) or base not in ancestors:
                found.add(base)
    return {m for m in found if m in KNOWN and m != name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}                        # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_resolution_sees_relative_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .cli import from_flags\n\ndef late():\n    from .training import Run\n"
                 "    from .data import synthetic\n")
    assert project_imports("common.m", f) == {"common.cli", "common.training", "common.data",
                                              "common.data.synthetic"}
    f.write_text("from . import faces\n")                        # a sibling submodule: not its package's names
    assert project_imports("common.data.m", f) == {"common.data.faces"}
    f.write_text("from . import SYNTHETIC_SPLITS, faces\n")      # a name of the package: needs it initialised
    assert project_imports("common.data.m", f) == {"common.data", "common.data.faces"}


def test_no_import_cycle_among_the_projects_modules():
    graph = {name: project_imports(name, path) for name, path in {**MODULES, **SCRIPTS}.items()}
    assert graph["common.training"] and "common.cli" not in graph["common.training"]
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


# one fresh interpreter loads the heavy libraries once, then each module is imported in a fork of it, with no
# module of the project loaded before it
ALONE = """
import importlib, os, sys, traceback
import numpy, torch, datasets, accelerate, safetensors, einops, rich
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        failed.append(name)
print("failed:", *failed)
"""


def test_every_module_of_common_imports_on_its_own():
    proc = subprocess.run([sys.executable, "-c", ALONE, *MODULES], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "failed:", proc.stdout + proc.stderr[-3000:]
