"""The package's layers, read from its source: imports run downwards and never in a circle, and importing the
package loads no trainer, model or leaderboard module.

Every ``import`` statement counts, those inside functions included (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "recbole_ext"

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one. A name
# matches a module and everything under it; the longest matching prefix decides.
LAYERS = [
    ("foundation", ["recbole_ext.errors", "recbole_ext.version", "recbole_ext.utils"]),
    ("options", ["recbole_ext.options"]),
    ("data and metrics", ["recbole_ext.data", "recbole_ext.evaluation", "recbole_ext.checkpoint",
                           "recbole_ext.run_status"]),
    ("models", ["recbole_ext.models"]),
    ("retrieval", ["recbole_ext.retrieval"]),
    ("training and tasks", ["recbole_ext.training"]),
    ("config and registry", ["recbole_ext.config", "recbole_ext.config_keys", "recbole_ext.registry",
                             "recbole_ext.compat"]),
    ("run", ["recbole_ext.quick_start"]),
    ("applications", ["recbole_ext.cli", "recbole_ext.cli_reference", "recbole_ext.catalog", "recbole_ext.serving",
                      "recbole_ext.leaderboard", "recbole_ext.grid_search", "recbole_ext.testing", "recbole_ext"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from pkg import sub`` names the submodule ``sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "recbole_ext"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "recbole_ext":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer of tests/test_architecture.py: add it to LAYERS"
    return rank


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_imports_run_downwards():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert upward == []


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_the_checks_see_a_circle_and_an_upward_import():
    """The helpers above on planted graphs: a circle through three modules, and a data module importing the CLI."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("recbole_ext.cli") > layer_of("recbole_ext.data.medrec")
    graph = import_graph()
    assert "recbole_ext.options" in graph["recbole_ext.config"]  # function-level imports count too:
    assert "recbole_ext.registry" in graph["recbole_ext.config"]  # config imports registry inside build_config


def test_importing_the_package_loads_no_trainer_model_or_leaderboard():
    code = ("import sys, recbole_ext; print('\\n'.join(sorted(m for m in sys.modules "
            "if m.startswith('recbole_ext'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent).stdout.split()
    assert "recbole_ext.registry" in loaded and "recbole_ext.compat" in loaded  # the hooks are installed
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in
             ("training", "leaderboard", "models", "serving", "retrieval", "testing", "data")]
    assert heavy == []
