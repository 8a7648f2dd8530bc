"""The package's import graph read from its source (every import, lazy ones inside functions too): what
tests/test_layers.py checks and benchmarks/code_shape.py prints."""

from __future__ import annotations

import ast


def module_name(path: str) -> str:
    name = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def imports_of(sources: dict[str, str]) -> dict[str, set[str]]:
    """Each module (by its path under src/) → the project's modules it imports, lazily or not."""
    known = {module_name(path) for path in sources}
    return {
        module_name(path): imported(list(ast.walk(ast.parse(text))), module_name(path), known)
        for path, text in sources.items()
    }


def module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported (not those under `if TYPE_CHECKING:`)."""
    statements = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            statements.extend(node.orelse)
        elif isinstance(node, ast.If | ast.Try):
            statements.extend(ast.walk(node))
        else:
            statements.append(node)
    return statements


def imported(nodes: list[ast.AST], module: str, known: set[str]) -> set[str]:
    """The project's modules that these statements import."""
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else module.rsplit(".", node.level)[0] + "." + node.module
            # `from wpo import pages` imports the module wpo.pages; `from wpo.x import name` imports wpo.x
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def piece(module: str) -> str:
    """The first-level part of wpo a module belongs to: wpo.training.loss → training."""
    return module.split(".")[1] if module.count(".") else module


def package_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """First-level parts of wpo and the others each imports (the package `wpo` itself, the public API, left out)."""
    graph: dict[str, set[str]] = {}
    for module, targets in imports.items():
        if module != "wpo":
            graph.setdefault(piece(module), set()).update(
                piece(t) for t in targets if t != "wpo" and piece(t) != piece(module)
            )
    return graph
