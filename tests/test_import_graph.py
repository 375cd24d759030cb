"""The suite's import graph: no import cycle between its modules, and no library module imports a CLI.

Every ``import`` statement of every module of every suite package is read (also those inside
functions: a lazy import is still a dependency) and resolved to the suite module it names.
"""
import ast
import os
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("atomic_config", "device_api", "device_client", "gmq", "otau", "gwe", "murano_local", "GatewayEngine",
            "exo")


def modules() -> Dict[str, str]:
    """Module name -> file, for every module of every suite package."""
    found = {}
    for package in PACKAGES:
        for directory, _dirs, files in os.walk(os.path.join(ROOT, package)):
            if not os.path.exists(os.path.join(directory, "__init__.py")):
                continue
            parts = os.path.relpath(directory, ROOT).split(os.sep)
            for name in files:
                if name.endswith(".py"):
                    mod = parts + ([] if name == "__init__.py" else [name[:-3]])
                    found[".".join(mod)] = os.path.join(directory, name)
    return found


def imports(name: str, path: str, known: Set[str]) -> Set[str]:
    """The suite modules ``name`` imports explicitly (a submodule's own package is implied, not counted)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = "%s.%s" % (source, alias.name)
                if sub in known:
                    out.add(sub)      # from pkg import submodule
                elif source in known:
                    out.add(source)   # from module import name
    out.discard(name)
    return out


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def is_cli(name: str) -> bool:
    last = name.rpartition(".")[2]
    return last in ("cli", "__main__") or last.endswith("_cli")


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_suite_package_is_walked():
    names = graph()
    for package in PACKAGES:
        assert package in names
    assert {"gmq.cli", "gmq.client", "device_api.contract", "gwe.engine_report"} <= set(names)


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_library_module_imports_a_cli_module():
    wrong = sorted((name, dep) for name, deps in graph().items() if not is_cli(name)
                   for dep in deps if is_cli(dep))
    assert wrong == []


def test_libraries_import_no_daemon():
    """device_api, atomic_config, device_client and otau are libraries: gwe and gmq are daemons built on them."""
    daemons = ("gwe", "gmq", "murano_local")
    wrong = sorted((name, dep) for name, deps in graph().items()
                   if name.split(".")[0] in ("device_api", "atomic_config", "device_client", "otau")
                   for dep in deps if dep.split(".")[0] in daemons)
    assert wrong == []


def test_the_walker_sees_cycles_and_cli_imports():
    """The checks can fail: a made-up graph with a cycle and a library importing a CLI."""
    edges = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.lib": {"a.cli"}, "a.cli": set()}
    assert cycles(edges) == [["a.x", "a.y", "a.z"]]
    assert is_cli("a.cli") and is_cli("gwe.apps_cli") and is_cli("gmq.__main__") and not is_cli("gmq.client")
