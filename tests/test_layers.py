"""The package's layers, read from the source (every import, lazy ones inside functions too): no stage imports the
runner, and no first-level part of wpo reaches back to one that imports it. The import graph is the one
`benchmarks/code_shape.py` prints at two revisions (both read it with tests/import_graph.py)."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from import_graph import imports_of, package_graph

ROOT = Path(__file__).resolve().parents[1]

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


def test_each_stage_keeps_its_config_run_and_checks_beside_it():
    """The runner and the checks only iterate over `wpo.layout.STAGE_MODULES`: each stage module holds what the stage
    is resolved, checked, read and run by."""
    import importlib

    from wpo.layout import STAGE_MODULES

    for stage, name in STAGE_MODULES.items():
        module = importlib.import_module(name)
        assert callable(module.run_config) and callable(getattr(module, f"run_{stage}")), stage
        if stage != "pair":  # pair needs nothing of the recipe beyond its upstream output
            assert callable(module.check), stage
        if stage != "export":  # export reads a model directory, not records
            assert callable(module.read_input), stage
    checks = (ROOT / "src" / "wpo" / "checks.py").read_text(encoding="utf-8")
    assert "is required by" not in checks and "def _eval" not in checks and "NEEDS" not in checks


def test_a_rule_fails_with_the_same_words_at_check_and_at_run_time(tmp_path):
    """`wpo config` (the stage's check) and the code that needs the setting (the scorer's, the judge's factory) call
    one rule: the same line either way."""
    import pytest

    from wpo.checks import check_stages
    from wpo.config import load_recipe
    from wpo.errors import ConfigError
    from wpo.evaluation.judges import JUDGES
    from wpo.scoring import make_scorer

    for overrides, stage, at_run_time in (
        (
            ["score.scorer=python", "score.candidates=" + str(tmp_path)],
            "score",
            lambda r: make_scorer(r.score, r.model, tmp_path),
        ),
        (
            ["eval.judge=python", "eval.prompts=builtin:ifeval-heldout.jsonl"],
            "eval",
            lambda r: JUDGES["python"](r.eval, r.model, tmp_path),
        ),
    ):
        recipe = load_recipe(None, overrides)
        with pytest.raises(ConfigError) as checked:
            check_stages(recipe, [stage])
        with pytest.raises(ConfigError) as ran:
            at_run_time(recipe)
        assert str(checked.value) == f"{recipe.source}: {ran.value}", stage
