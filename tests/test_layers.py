"""The package's layers, read from the source (every import, lazy ones inside functions too): no stage imports the
runner, and no first-level part of wpo reaches back to one that imports it. The import graph is the one
`benchmarks/code_shape.py` prints at two revisions."""

from __future__ import annotations

import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from code_shape import imports_of, package_graph  # noqa: E402 - a script's module, from its folder

RUNNER_USERS = {"wpo", "wpo.cli", "wpo.sweeps"}  # the public API and the two commands that run whole pipelines


def working_tree_imports() -> dict[str, set[str]]:
    sources = {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for path in (ROOT / "src" / "wpo").rglob("*.py")
    }
    return imports_of(sources)


def test_no_stage_imports_the_runner():
    users = {module for module, targets in working_tree_imports().items() if "wpo.pipeline" in targets}
    assert users <= RUNNER_USERS, users - RUNNER_USERS


def test_the_parts_of_the_package_form_layers():
    try:
        order = list(TopologicalSorter(package_graph(working_tree_imports())).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle between parts of wpo: {' → '.join(reversed(error.args[1]))}") from None
    assert order.index("pages") < order.index("evaluation") < order.index("reporting")  # the pages below both
    assert order.index("layout") < order.index("training") and order.index("exporting") < order.index("reporting")
