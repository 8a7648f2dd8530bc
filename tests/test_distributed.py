"""Several processes do what one process does: `torchrun --nproc_per_node 2 -m wpo train` over gloo on CPU, with one
pair per device, against one process with two pairs per device — the same global batch, so the same updates; and
`wpo sample` split across two processes writes the same candidates file as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PAIRS, pair_record, write_lines
from safetensors.torch import load_file
from test_sampling import prompts_file
from torch.testing import assert_close

from wpo.train.metrics import read_metrics
from wpo.train.reference import gather_strided

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WPO_LOG_LEVEL": "INFO"}
LOGGED = ("loss", "weight_mean", "reward_margin", "logps_chosen", "logps_rejected", "grad_norm", "learning_rate")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wpo(processes: int, stage: str, recipe: Path, *overrides: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m"]
    if processes > 1:  # torchrun, as `torchrun --nproc_per_node N -m wpo ...`
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m"]  # fmt: skip
    result = subprocess.run([*launcher, "wpo", stage, str(recipe), *overrides], capture_output=True, text=True,
                            env=ENV, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_processes_train_what_one_process_trains(tmp_path, tiny_llama):
    """Also: the reference pass is split between the processes (each logs only its own share) and gathered into the
    same cache a single process writes."""
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        f"seed: 4\nmodel: {{name_or_path: {tiny_llama}}}\n"
        "train: {max_steps: 3, learning_rate: 1.0e-3, lr_scheduler: constant, warmup_ratio: 0, max_length: 64, "
        "max_prompt_length: 32, logging_steps: 1, save_steps: 0, loss_chunk_size: 8}\n"
    )
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):  # each run's pairs in its own directory, so each computes its own reference cache
        run.mkdir()
        write_lines(run / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    wpo(1, "train", recipe, f"output_dir={one}", f"train.pairs={one / 'pairs.jsonl'}", "train.per_device_batch_size=2")
    launched = wpo(2, "train", recipe, f"output_dir={two}", f"train.pairs={two / 'pairs.jsonl'}",
                     "train.per_device_batch_size=1")  # fmt: skip

    assert "schedule: 3 steps of 2 pairs (1 per device x 1 accumulation x 2 processes)" in launched.stderr
    assert "reference log-probs: computed 6 pairs on 2 process(es)" in launched.stderr
    (one_cache,), (two_cache,) = ((run / ".wpo_reference_cache").glob("*.safetensors") for run in (one, two))
    for name, tensor in load_file(one_cache).items():
        assert_close(load_file(two_cache)[name], tensor, rtol=1e-6, atol=1e-6)
    manifest = json.loads((two / "train" / "manifest.json").read_text())
    assert (manifest["counts"]["num_processes"], manifest["counts"]["global_batch_pairs"]) == (2, 2)
    trained = json.loads((two / "train" / "final" / "wpo_training.json").read_text())
    assert (trained["num_processes"], trained["global_batch_pairs"]) == (2, 2)
    one_rows, two_rows = read_metrics(one / "train" / "metrics.jsonl"), read_metrics(two / "train" / "metrics.jsonl")
    assert len(one_rows) == len(two_rows) == 3  # one log, written by the main process only
    for a, b in zip(one_rows, two_rows, strict=True):
        for key in LOGGED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    one_weights = load_file(one / "train" / "final" / "model.safetensors")
    two_weights = load_file(two / "train" / "final" / "model.safetensors")
    assert one_weights.keys() == two_weights.keys()
    for name, tensor in one_weights.items():
        assert_close(two_weights[name], tensor, rtol=1e-5, atol=1e-5, msg=name)
    initial = load_file(tiny_llama / "model.safetensors")
    assert any(not initial[name].equal(tensor) for name, tensor in one_weights.items())  # training moved them


class GatheringAccelerator:
    """What `accelerator.gather` returns on process 0 of `world`: every process's padded tensor, concatenated."""

    def __init__(self, values: torch.Tensor, world: int):
        self.num_processes, self.device = world, "cpu"
        longest = -(-len(values) // world)
        shards = [values[rank::world] for rank in range(world)]
        self.gathered = torch.cat([torch.cat([s, torch.zeros(longest - len(s))]) for s in shards])

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        return self.gathered


@pytest.mark.parametrize(("count", "world"), [(7, 3), (6, 2), (2, 4), (1, 1)])
def test_strided_shards_are_gathered_back_in_order(count, world):
    values = torch.arange(1.0, count + 1)
    gathered = gather_strided(values[0::world], count, GatheringAccelerator(values, world))
    assert gathered.tolist() == values.tolist()


def test_two_processes_sample_the_same_candidates_as_one(tmp_path, tiny_llama):
    """Whole batches of the one-process plan are dealt to the processes (5 batches: 3 and 2), each appends to its own
    progress file, and the main process merges them in input order."""
    prompts = prompts_file(tmp_path, count=9)
    recipe = tmp_path / "sample.yaml"
    recipe.write_text(f"seed: 5\nmodel: {{name_or_path: {tiny_llama}}}\n"
                      f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 12, batch_size: 2, "
                      "offpolicy_fields: [reference]}\n")  # fmt: skip
    wpo(1, "sample", recipe, f"output_dir={tmp_path / 'one'}")
    launched = wpo(2, "sample", recipe, f"output_dir={tmp_path / 'two'}")

    assert "sample: process 0 sampled 3 of 5 batches" in launched.stderr
    assert "sample: process 1 sampled 2 of 5 batches" in launched.stderr
    one, two = (tmp_path / run / "sample" for run in ("one", "two"))
    assert (two / "candidates.jsonl").read_bytes() == (one / "candidates.jsonl").read_bytes()
    assert json.loads((two / "manifest.json").read_text())["counts"]["prompts_written"] == 9
    assert not list(two.glob(".*progress*"))  # every process's progress file is gone once merged


def test_progress_of_any_process_count_resumes_and_other_configs_are_removed(tmp_path):
    """A run killed with two processes resumes with one (and vice versa): `load` reads every process's file of the
    same config; a file of another config is removed, another process's file of this config is not."""
    from wpo.data.progress import ProgressFile

    stale = tmp_path / ".candidates.oldhash.process0.progress.jsonl"
    stale.write_text('{"id": "old"}\n')
    first, second = (ProgressFile(tmp_path, "candidates", "abc", rank, 2) for rank in (0, 1))
    first.append([{"id": "q0"}])
    second.append([{"id": "q1"}])
    with second.path.open("a") as torn:
        torn.write('{"id": "q2", "tor')  # a line torn by a kill
    assert not stale.exists()
    alone = ProgressFile(tmp_path, "candidates", "abc")
    assert sorted(alone.load()) == ["q0", "q1"] and second.path.read_text().endswith('"q1"}\n')
    alone.append([{"id": "q2"}])
    assert sorted(ProgressFile(tmp_path, "candidates", "abc", 1, 2).load()) == ["q0", "q1", "q2"]
    alone.remove()
    assert list(tmp_path.iterdir()) == []


def test_vllm_sampling_refuses_a_launcher(tmp_path, tiny_llama, monkeypatch):
    from types import SimpleNamespace

    from wpo.config import load_recipe
    from wpo.errors import ConfigError
    from wpo.sampling import stage

    recipe = load_recipe(None, [f"model.name_or_path={tiny_llama}", f"sample.prompts={prompts_file(tmp_path)}",
                                f"output_dir={tmp_path / 'run'}", "sample.max_new_tokens=8"])  # fmt: skip
    recipe.sample.backend = "vllm"  # past the load-time check that vLLM is installed, which it is not here
    monkeypatch.setattr(stage, "process_state", lambda: SimpleNamespace(num_processes=2, process_index=0))
    with pytest.raises(ConfigError, match="sample.backend vllm runs in one process .* not as 2 processes"):
        stage.run_sample(recipe)


@pytest.mark.parametrize("command", ["score", "pair", "eval", "export", "run"])
def test_stages_that_do_not_split_refuse_a_launcher(command, monkeypatch):
    """Under a launcher they would repeat the whole job in every process, writing the same files at once."""
    from wpo.config import load_recipe
    from wpo.errors import ConfigError
    from wpo.stages import run_pipeline, run_stage

    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(None, [])
    with pytest.raises(ConfigError, match=rf"^wpo {command} runs in one process, not as 2: launch it without "
                                          r"torchrun or accelerate \(only sample and train split"):  # fmt: skip
        run_pipeline(recipe) if command == "run" else run_stage(recipe, command)
