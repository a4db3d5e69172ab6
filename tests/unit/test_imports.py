"""The layering of ``layerif_core`` (architecture §10): no import cycle, and nothing imports upwards.

The graph is read from the source with :mod:`ast`, every ``import`` and ``from ... import`` counted,
including those inside functions (the lazy imports that keep torch out of ``layerif --help``): a
cycle through a lazy import is still a cycle, only hidden from Python until the call. An edge runs
from a module to the module it names (``from layerif_core import logs`` names
``layerif_core.logs``; a lazy package export names the module that defines it). The builtins'
``"module:attr"`` strings are not edges: the registry resolves them when a component is built, not
when a module is imported.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import layerif_core

REPO = Path(__file__).resolve().parents[2]
CORE = Path(layerif_core.__file__).resolve().parent
PLUGINS = REPO / "plugins"

# The orchestrators and the command line: components (what the orchestrators call) never import them.
UPPER = ("layerif_core.pipeline", "layerif_core.cli", "layerif_core.cli_kit", "layerif_core.study")
COMPONENTS = ("layerif_core.scorers", "layerif_core.estimators", "layerif_core.allocators",
              "layerif_core.aggregators")


def _modules(root: Path) -> dict[str, Path]:
    """Module name → file, for the package at ``root`` (its folder name is the package name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, known: dict[str, Path],
             lazy: dict[str, str]) -> list[str]:
    """The modules of ``known`` that one import statement of module ``name`` names."""
    if isinstance(node, ast.Import):
        return [t for t in (_longest_known(alias.name, known) for alias in node.names) if t]
    assert not node.level, f"{name}: a relative import; write it absolute (from layerif_core... import)"
    base = node.module or ""
    out = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        if full in known:
            out.append(full)
        elif full in lazy:
            out.append(lazy[full])
        elif (target := _longest_known(base, known)) is not None:
            out.append(target)
    return out


def _longest_known(dotted: str, known: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def import_graph(roots: list[Path], lazy: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Module → the modules (of the packages at ``roots``) it imports anywhere in its source.

    ``lazy`` maps a lazily exported ``package.name`` to the module defining it (default: the
    exports of ``layerif_core/__init__.py``).
    """
    known: dict[str, Path] = {}
    for root in roots:
        known.update(_modules(root))
    if lazy is None:
        lazy = {f"layerif_core.{name}": module for name, module in layerif_core._EXPORTS.items()}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(_targets(node, name, known, lazy))
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one module
    (Tarjan's algorithm for the components, then a breadth-first search inside each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, min(c), c) for c in components]


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & within):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def _plugin_packages() -> list[Path]:
    return sorted(p.parent for p in PLUGINS.glob("*/*/__init__.py") if p.parent.name.startswith("layerif_"))


def test_the_walker_counts_every_kind_of_import_and_finds_the_cycle(tmp_path):
    files = {"__init__.py": "",
             "a.py": "import pkg.b\n",
             "b.py": "def f():\n    from pkg import c\n",  # function-local, a submodule by name
             "c.py": "from pkg.a import thing\n",
             "d.py": "from pkg import exported\n"}  # a lazy package export defined in pkg.c
    (tmp_path / "pkg").mkdir()
    for name, text in files.items():
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph([tmp_path / "pkg"], lazy={"pkg.exported": "pkg.c"})
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"},
                     "pkg.d": {"pkg.c"}}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_layerif_core_has_no_import_cycle():
    found = cycles(import_graph([CORE]))
    assert not found, "import cycles in layerif_core:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_plugins_and_the_core_have_no_import_cycle():
    found = cycles(import_graph([CORE, *_plugin_packages()]))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_components_do_not_import_the_orchestrators():
    graph = import_graph([CORE])
    upward = sorted(f"{module} imports {target}" for module, targets in graph.items()
                    if module.startswith(COMPONENTS) for target in targets if target.startswith(UPPER))
    assert not upward, "components import the layer above them:\n" + "\n".join(upward)


def test_only_the_entry_point_is_layerif_core_cli():
    graph = import_graph([CORE, *_plugin_packages()])
    importers = sorted(module for module, targets in graph.items() if "layerif_core.cli" in targets)
    assert not importers, ("these modules import layerif_core.cli; the shared command pieces are in "
                           "layerif_core.cli_kit: " + ", ".join(importers))
