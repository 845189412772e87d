"""The import graph of the source tree, and the rules of the design's rooms checked against it.

A room is a package under `services/` that owns data (schema, profiles,
aliases, imports). `_runtime` is the plumbing, `domain` the shared core, and
the modules directly under `services/` plus the wiring packages assemble
processes. The gateway translates REST onto the rooms' RPCs.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PLUMBING = "_runtime"
CORE = "domain"
WIRING_PACKAGES = frozenset({"wiring"})
"""Packages under services/ that decide which process runs what: like the modules beside them, they import any room."""


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolved(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def edges(root: Path, packages: tuple[str, ...] = ("services", "gateway")) -> Iterator[Edge]:
    """Every import of a first-party module, at any depth of the code (lazy imports included)."""
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield Edge(importer, alias.name, node.lineno)
                elif isinstance(node, ast.ImportFrom):
                    target = _resolved(importer, path.name == "__init__.py", node)
                    for alias in node.names:
                        submodule = f"{target}.{alias.name}"
                        yield Edge(importer, submodule if _is_module(root, submodule) else target, node.lineno)


def place(root: Path, module: str) -> str:
    """Where a module stands: a room's name, "_runtime", "domain", "wiring", "gateway", or "outside"."""
    parts = module.split(".")
    if parts[0] == "gateway":
        return "gateway"
    if parts[0] != "services":
        return "outside"
    if len(parts) == 1 or parts[1] in WIRING_PACKAGES:
        return "wiring"
    if parts[1] in (PLUMBING, CORE):
        return parts[1]
    # services/<name>/ is a room; a module directly under services/ (cli, commands, ...) is wiring.
    return parts[1] if (root / "services" / parts[1] / "__init__.py").is_file() else "wiring"


def is_published_client(module: str) -> bool:
    """A room's module that other rooms and the gateway may import: client.py or <thing>_client.py."""
    parts = module.split(".")
    return len(parts) == 3 and parts[0] == "services" and (parts[2] == "client" or parts[2].endswith("_client"))


def is_standard_library(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in sys.stdlib_module_names or module == "__future__"


def violations(root: Path, all_edges: list[Edge]) -> list[str]:
    """Each import that breaks a rule, with the rule it breaks."""
    found: list[str] = []
    for edge in all_edges:
        source, target = place(root, edge.importer), place(root, edge.imported)
        if target == "outside":
            if source == CORE and not is_standard_library(edge.imported):
                found.append(f"{edge}: the core depends on nothing but the standard library and _runtime")
        elif source == PLUMBING and target != PLUMBING:
            found.append(f"{edge}: _runtime imports nothing of ours but itself")
        elif source == CORE and target not in (PLUMBING, CORE):
            found.append(f"{edge}: the core imports no room, gateway or wiring")
        elif is_published_client(edge.importer) and target not in (PLUMBING, CORE):
            found.append(f"{edge}: a published client imports only the generated stubs, _runtime and the core")
        elif source == "wiring":
            continue
        elif target == "wiring":
            found.append(f"{edge}: only wiring imports wiring")
        elif target == "gateway" and source != "gateway":
            found.append(f"{edge}: only wiring starts the gateway")
        elif source != target and target not in (PLUMBING, CORE, "gateway") and not is_published_client(edge.imported):
            found.append(f"{edge}: another room is reached only through its published client module")
    return found


def room_cycles(root: Path, all_edges: list[Edge]) -> list[list[str]]:
    """Cycles between rooms (the gateway counted as one), each as the rooms along it."""
    graph: dict[str, set[str]] = {}
    for edge in all_edges:
        source, target = place(root, edge.importer), place(root, edge.imported)
        if {source, target} & {PLUMBING, CORE, "wiring", "outside"}:
            continue
        graph.setdefault(source, set())
        graph.setdefault(target, set())
        if source != target:
            graph[source].add(target)
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(room: str) -> None:
        state[room] = "open"
        path.append(room)
        for following in sorted(graph[room]):
            if state.get(following) == "open":
                cycles.append([*path[path.index(following) :], following])
            elif following not in state:
                visit(following)
        path.pop()
        state[room] = "done"

    for room in sorted(graph):
        if room not in state:
            visit(room)
    return cycles
