"""The import graph of the vggrpo package, checked (``make lint`` runs it from the project root).

Fails (exit 1, one line per problem) when:

* modules import each other in a circle, counting imports made inside functions;
* a library module imports ``vggrpo.cli`` (the CLI is the edge: it imports the library, never
  the other way round);
* a module imports another module's private name (``from .x import _y``).

A package's ``__init__`` importing its own children is not a circle, and edges into the root
package (its re-exports) are not design dependencies. docs/architecture.md is the map this
keeps true.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple


def modules(package: Path) -> Dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Dict[str, Path]) -> List[Tuple[str, str]]:
    """``(module, imported name or "")`` of every import in ``path``, resolved to package
    modules (``from .a import b`` is module ``a.b`` when that is a module, else name ``b`` of
    ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                child = f"{source}.{alias.name}"
                out.append((child, "") if child in known else (source, alias.name))
    resolved = []
    for module, imported in out:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module.startswith(name.split(".")[0] + ".") and module != name:
            resolved.append((module, imported))
    return resolved


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main(package: Path = Path("vggrpo")) -> int:
    known = modules(package)
    cli = f"{package.name}.cli"
    edges: Dict[str, Set[str]] = {name: set() for name in known}
    problems = []
    for name, path in known.items():
        for module, imported in imports(name, path, known):
            # A package's __init__ and its children are one face of the package.
            if not (module.startswith(name + ".") or name.startswith(module + ".")):
                edges[name].add(module)
            if imported.startswith("_") and not imported.startswith("__"):
                problems.append(f"{name} imports the private name {module}.{imported}")
            in_cli = name == cli or name.startswith(cli + ".")
            if (module == cli or module.startswith(cli + ".")) and not in_cli \
                    and name != f"{package.name}.__main__":
                problems.append(f"{name} imports the CLI ({module})")
    problems += ["import circle: " + " -> ".join(c) for c in circles(edges)]
    for problem in problems:
        print(problem)
    if not problems:
        print(f"house: {len(known)} modules, no import circle, the CLI at the edge, no private "
              f"name imported across modules")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("vggrpo")))
