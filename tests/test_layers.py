"""The package's layers, read from the source (every import, lazy ones inside functions too): no stage imports the
runner, and no first-level part of wpo reaches back to one that imports it. `benchmarks/code_shape.py` prints the
same graph at two revisions."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "wpo"
RUNNER_USERS = {"wpo", "wpo.cli", "wpo.sweeps"}  # the public API and the two commands that run whole pipelines


def module_of(path: Path) -> str:
    return ".".join(("wpo", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def project_imports() -> dict[str, set[str]]:
    """Each module → the project's modules it imports."""
    paths = list(PACKAGE.rglob("*.py"))
    known = {module_of(path) for path in paths}
    found: dict[str, set[str]] = {}
    for path in paths:
        module = module_of(path)
        targets = found.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
    return found


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_stage_imports_the_runner():
    users = {module for module, targets in project_imports().items() if "wpo.pipeline" in targets}
    assert users <= RUNNER_USERS, users - RUNNER_USERS


def test_the_parts_of_the_package_form_layers():
    graph: dict[str, set[str]] = {}
    for module, targets in project_imports().items():
        if module != "wpo":  # the public API imports everything, lazily
            graph.setdefault(part(module), set()).update(
                part(t) for t in targets if t != "wpo" and part(t) != part(module)
            )
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle between parts of wpo: {' → '.join(reversed(error.args[1]))}") from None
    assert order.index("pages") < order.index("evaluation") < order.index("reporting")  # the pages below both
    assert order.index("layout") < order.index("training") and order.index("exporting") < order.index("reporting")
