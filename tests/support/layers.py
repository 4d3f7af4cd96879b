"""The layering contract of agent/ and handlers/: which stage may import which.

Data flows capture -> VAD -> spool -> admission -> runner -> transcriber -> summarizer -> event
sink -> outbox -> MQTT, and the code is layered the same way: a layer may import any layer below
it, never one above, so a part can be read (and tested) knowing only what lies under it. Imports
under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

#: Highest first. Names in one tuple are siblings: independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("agent.__main__",),
    ("agent.app",),
    ("agent.sources", "agent.ops"),
    ("agent.mqtt",),
    ("handlers",),
    ("agent.jobs",),
    ("agent.engines",),
    ("agent.audio",),
    ("agent.config",),
    ("agent.settings", "agent.errors", "agent"),
)


@dataclass(frozen=True)
class Violation:
    importer: str
    imported: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}: {self.why}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> list[tuple[str, int]]:
    """(module, line) for every import in the file, except those under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skipped.update(id(n) for n in ast.walk(inner))
    package = module_name(path, root).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.append((base, node.lineno))
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
    return found


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None   # (prefix length, layer index)
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    return None if best is None else best[1]


def group_of(module: str) -> str:
    """The layer entry a module belongs to (the longest matching name)."""
    names = [n for names in LAYERS for n in names if module == n or module.startswith(n + ".")]
    return max(names, key=len)


def check(root: Path, packages: tuple[str, ...] = ("agent", "handlers")) -> list[Violation]:
    """Every upward or sideways import between layers, and every import cycle between modules."""
    violations: list[Violation] = []
    graph: dict[str, set[str]] = {}
    modules = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    for importer, path in sorted(modules.items()):
        graph[importer] = set()
        for imported, line in imports(path, root):
            if imported not in modules:
                continue   # a name imported from a module, or a third-party module
            if imported == importer or importer.startswith(imported + "."):
                continue   # a package's own parent is implied, not a dependency
            graph[importer].add(imported)
            low, high = layer_of(imported), layer_of(importer)
            if low is None or high is None:
                continue
            if low < high:
                violations.append(Violation(importer, imported, line, "a lower layer imports a higher one"))
            elif low == high and group_of(importer) != group_of(imported):
                violations.append(Violation(importer, imported, line, "sibling layers depend on each other"))
    violations.extend(_cycles(graph, modules, root))
    return violations


def _cycles(graph: dict[str, set[str]], modules: dict[str, Path], root: Path) -> list[Violation]:
    found: list[Violation] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                found.append(Violation(node, nxt, 0, "import cycle: " + " -> ".join(cycle)))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found
