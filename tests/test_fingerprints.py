"""Every input of a stage fingerprinted once, the user's own code included: what `code_fingerprint` follows, how a
changed input is named, and one resolution for every process of a launch."""

from __future__ import annotations

import hashlib
import sys

import pytest

from wpo import stage_run
from wpo.config import load_recipe
from wpo.manifest import fingerprinted
from wpo.stage_run import StageRun, input_fingerprint, what_changed
from wpo.user_functions import code_fingerprint, load_function, recipe_functions


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A working directory with a reward module that imports a helper module, a package with a relative import,
    and an installed package (yaml) and the standard library (math), which are not the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    files = {
        "my_reward.py": "import math\nimport yaml\nfrom scaling import factor\n\n"
        "def reward(messages, text):\n    from shapes.lengths import size\n    return factor() * size(text)\n",
        "scaling.py": "def factor():\n    return 2.0\n",
        "shapes/__init__.py": "",
        "shapes/lengths.py": "from .units import UNIT\n\ndef size(text):\n    return len(text) * UNIT\n",
        "shapes/units.py": "UNIT = 1\n",
        "unused.py": "X = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    yield files
    for name in ("my_reward", "scaling", "shapes", "shapes.lengths", "shapes.units"):
        sys.modules.pop(name, None)


def test_the_users_code_is_followed_through_its_imports(user_folder):
    """The reward's module, the helper it imports at the top, the package module it imports inside the function and
    that module's relative import; not yaml (installed), math (standard library) or a file nothing imports."""
    expected = ["my_reward.py", "scaling.py", "shapes/__init__.py", "shapes/lengths.py", "shapes/units.py"]
    assert code_fingerprint("my_reward:reward") == {name: sha(user_folder[name]) for name in expected}


def test_installed_functions_have_no_code_fingerprint():
    assert code_fingerprint("wpo.tasks.ifeval:reward") == {}  # wpo's own built-ins: its version identifies them
    assert code_fingerprint("json:dumps") == {}


def test_a_changed_helper_is_imported_again_in_the_same_process(user_folder, tmp_path):
    """A notebook or sweep that loads the reward again after an edit runs the edited code, helpers included."""
    assert load_function("my_reward:reward", "score.function")([], "abc", record={}) == 6.0
    (tmp_path / "scaling.py").write_text("def factor():\n    return 10.0\n")
    assert load_function("my_reward:reward", "score.function")([], "abc", record={}) == 30.0


def test_recipe_functions_are_those_the_stage_calls():
    recipe = load_recipe(
        None,
        [
            "score.scorer=python",
            "score.function=my_reward:reward",
            "eval.judge=python",
            "eval.function=my_judge:prefer",
            "eval.reward=my_reward:reward",
            "eval.measures={format: my_measures:format}",
        ],
    )
    assert recipe_functions("score", recipe.score) == {"score.function": "my_reward:reward"}
    assert recipe_functions("eval", recipe.eval) == {
        "eval.function": "my_judge:prefer",
        "eval.reward": "my_reward:reward",
        "eval.measures.format": "my_measures:format",
    }
    assert recipe_functions("score", load_recipe(None, []).score) == {}


def config_with(code: dict, candidates: str = "aaa", beta: float = 0.1) -> dict:
    return {
        "score": {"beta": beta},
        "inputs": {"score.candidates": {"source": "run/sample/candidates.jsonl", "fingerprint": candidates}},
        "code": code,
    }


def test_what_changed_names_the_code_file_then_the_input_then_the_settings():
    old = config_with({"my_reward.py": "1", "scaling.py": "2"})
    assert what_changed(old, config_with({"my_reward.py": "1", "scaling.py": "3"})) == "scaling.py changed"
    assert (
        what_changed(old, config_with({"my_reward.py": "9", "scaling.py": "3"})) == "my_reward.py, scaling.py changed"
    )
    assert what_changed(old, config_with({"my_reward.py": "1", "scaling.py": "2", "new.py": "4"})) == "new.py is new"
    assert what_changed(old, config_with(old["code"], candidates="bbb")) == (
        "score.candidates (run/sample/candidates.jsonl) changed"
    )
    assert what_changed(old, config_with(old["code"], candidates="bbb", beta=0.2)) == (
        "its config changed (differs in: inputs.score.candidates.fingerprint, score.beta)"
    )


def test_the_manifest_lists_what_was_fingerprinted(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("{}\n")
    config = {"inputs": {"sample.prompts": input_fingerprint(str(prompts)), "eval.model": input_fingerprint(None)}}
    config["code"] = {"my_reward.py": "1"}
    assert config["inputs"]["sample.prompts"] == {"source": str(prompts), "fingerprint": sha("{}\n")}
    assert fingerprinted(config) == [f"sample.prompts: {prompts}", "code: my_reward.py"]


class FakeLaunch:
    def __init__(self, is_main_process: bool):
        self.is_main_process = is_main_process
        self.num_processes = 2


def test_every_process_of_a_launch_uses_the_main_processs_resolution(monkeypatch):
    """A process other than the main one never resolves: it takes what the main process broadcast."""
    import accelerate.utils

    import wpo.distributed

    main_config = {"score": {}, "inputs": {}, "code": {"my_reward.py": "main"}}
    broadcast = []

    def broadcast_object_list(objects):
        broadcast.append(list(objects))
        return [main_config]

    def never(recipe):
        raise AssertionError("a non-main process resolved its own config")

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(wpo.distributed, "process_state", lambda: FakeLaunch(is_main_process=False))
    recipe = load_recipe(None, [])
    run = stage_run.resolve("score", recipe, never, every_process=True)
    assert broadcast == [[None]] and run == StageRun.of("score", recipe, main_config)
    assert stage_run.resolved(recipe, "score", never) == run  # a stage called with a recipe under a launch, too
