"""Several processes do what one process does: `torchrun --nproc_per_node 2 -m wpo train` over gloo on CPU, with one
pair per device, against one process with two pairs per device — the same global batch, so the same updates; and
`wpo sample` split across two processes writes the same candidates file as one process."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    COMPILED_LOG_LINE,
    DISTRIBUTED_ENV,
    PAIRS,
    SMOOTH_ADAM,
    assert_ok,
    assert_trained_alike,
    free_port,
    pair_record,
    prompts_file,
    run_wpo,
    train_recipe,
    two_rounds_of_lora_and_eval,
    write_lines,
)
from safetensors.torch import load_file
from torch.testing import assert_close

from wpo.training.metrics import read_metrics
from wpo.training.reference_logps import gather_strided

LOGGED = ("loss", "weight_mean", "reward_margin", "logps_chosen", "logps_rejected", "grad_norm", "learning_rate")


@pytest.mark.slow  # launches processes
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
    for run in (one, two):  # each run computes its own reference cache, in its own train directory
        run.mkdir()
        write_lines(run / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={one}",
            f"train.pairs={one / 'pairs.jsonl'}",
            "train.per_device_batch_size=2",
            *SMOOTH_ADAM,
            env=DISTRIBUTED_ENV,
        )
    )
    launched = assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={two}",
            f"train.pairs={two / 'pairs.jsonl'}",
            "train.per_device_batch_size=1",
            *SMOOTH_ADAM,
            processes=2,
            env=DISTRIBUTED_ENV,
        )
    )

    assert "schedule: 3 steps of 2 pairs (1 per device x 1 accumulation x 2 processes)" in launched.stderr
    assert "reference log-probs: computed 6 pairs on 2 process(es)" in launched.stderr
    (one_cache,), (two_cache,) = ((run / "train" / "reference_cache").glob("*.safetensors") for run in (one, two))
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
    assert_trained_alike(two_weights, one_weights, load_file(tiny_llama / "model.safetensors"))


def one_and_two_processes(tmp_path: Path, model: Path, two_processes_also: tuple[str, ...] = (), **train) -> dict:
    """A 3-step training as one process with two pairs a micro-batch (in tmp_path/p1) and as two with one each
    (tmp_path/p2, with `two_processes_also` overrides): each launch's completed process, by process count."""
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    recipe = train_recipe(
        tmp_path / "train.yaml",
        model,
        pairs,
        seed=4,
        stages=None,
        max_steps=3,
        lr_scheduler="constant",
        warmup_ratio=0,
        max_length=64,
        max_prompt_length=32,
        logging_steps=1,
        save_steps=0,
        **train,
    )
    launched = {}
    for processes, batch in ((1, 2), (2, 1)):
        launched[processes] = assert_ok(
            run_wpo(
                "train",
                recipe,
                f"output_dir={tmp_path / f'p{processes}'}",
                f"train.per_device_batch_size={batch}",
                *(two_processes_also if processes == 2 else ()),
                *SMOOTH_ADAM,
                processes=processes,
                env=DISTRIBUTED_ENV,
            )
        )
    return launched


def assert_two_follow_one(tmp_path: Path, initial: Path, loss_rel: float, weight_rel: float) -> None:
    """The two-process run of `one_and_two_processes` logs the one-process run's losses and trains its weights."""
    one, two = (read_metrics(tmp_path / f"p{n}" / "train" / "metrics.jsonl") for n in (1, 2))
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=loss_rel), (a["loss"], b["loss"])
    one_weights, two_weights = (load_file(tmp_path / f"p{n}" / "train" / "final" / "model.safetensors") for n in (1, 2))
    assert_trained_alike(two_weights, one_weights, load_file(initial / "model.safetensors"), rel=weight_rel)


@pytest.mark.slow  # launches processes
def test_two_processes_under_auto_precision_train_what_one_process_trains(tmp_path, tiny_llama):
    """`train.mixed_precision: auto` as this machine resolves it (bf16 on a CPU with AMX or AVX512-BF16, fp32
    elsewhere): both runs log the same resolution, and two processes (one pair each) follow one process (both pairs)
    to bf16's rounding: a micro-batch of another shape rounds its bf16 products differently (on the AMX Xeon the
    losses agreed to 1e-4 and the weights to 1% of their update; the bounds leave room for other CPUs)."""
    from wpo.training.auto_precision import auto_mixed_precision, this_machine

    launched = one_and_two_processes(tmp_path, tiny_llama, loss_chunk_size=8, mixed_precision="auto")
    resolved, reason = auto_mixed_precision(this_machine())
    for run in launched.values():
        assert f"train.mixed_precision: auto -> {resolved} ({reason})" in run.stderr
        assert f"mixed precision: {resolved}" in run.stderr
    assert_two_follow_one(tmp_path, tiny_llama, loss_rel=1e-3, weight_rel=3e-2)


@pytest.mark.slow  # launches processes and compiles
def test_two_processes_with_compiled_layers_train_what_one_eager_process_trains(tmp_path, tiny_llama):
    """`train.compile` under plain data parallel: each process compiles its own layers in place, the gradients are
    reduced as without it, and the run follows one eager process to the fused ops' rounding."""
    launched = one_and_two_processes(tmp_path, tiny_llama, two_processes_also=("train.compile=true",))
    assert COMPILED_LOG_LINE in launched[2].stderr and COMPILED_LOG_LINE not in launched[1].stderr
    assert_two_follow_one(tmp_path, tiny_llama, loss_rel=1e-4, weight_rel=1e-3)


@pytest.mark.slow  # launches processes
def test_a_killed_multi_process_training_resumes_to_the_same_weights(tmp_path, tiny_llama):
    """Two processes checkpoint what one process checkpoints (whole weights, Adam state keyed by parameter name),
    and a two-process run stopped after its step-2 checkpoint resumes from it to the uninterrupted run's weights."""
    recipe = tmp_path / "train.yaml"
    write_lines(tmp_path / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    recipe.write_text(
        f"seed: 4\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"train: {{pairs: {tmp_path / 'pairs.jsonl'}, max_steps: 3, learning_rate: 1.0e-3, lr_scheduler: linear, "
        "warmup_ratio: 0, max_length: 64, max_prompt_length: 32, logging_steps: 1, save_steps: 1, "
        "loss_chunk_size: 8}\n"
    )
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(
        run_wpo(
            "train", recipe, f"output_dir={one}", "train.per_device_batch_size=2", *SMOOTH_ADAM, env=DISTRIBUTED_ENV
        )
    )
    launched = assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={two}",
            "train.per_device_batch_size=1",
            *SMOOTH_ADAM,
            processes=2,
            env=DISTRIBUTED_ENV,
        )
    )
    assert "accelerate: MULTI_CPU, 2 process(es) on cpu" in launched.stderr

    def weights(run: Path, directory: str) -> dict[str, torch.Tensor]:
        return load_file(run / "train" / directory / "model.safetensors")

    uninterrupted = weights(two, "final")
    initial = load_file(tiny_llama / "model.safetensors")
    for directory in ("checkpoint-2/model", "final"):  # whole tensors, equal to one process's
        assert_trained_alike(weights(two, directory), weights(one, directory), initial, directory)
    one_adam = load_file(one / "train" / "checkpoint-2" / "optimizer.safetensors")
    two_adam = load_file(two / "train" / "checkpoint-2" / "optimizer.safetensors")
    assert one_adam.keys() == two_adam.keys() and "model.layers.0.mlp.up_proj.weight.exp_avg_sq" in two_adam
    for name, tensor in one_adam.items():
        assert_close(two_adam[name], tensor, rtol=1e-4, atol=1e-8, msg=name)

    for stale in ("checkpoint-3", "final", "manifest.json"):  # as if killed after the step-2 checkpoint
        path = two / "train" / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = assert_ok(
        run_wpo(
            "train",
            recipe,
            f"output_dir={two}",
            "train.per_device_batch_size=1",
            *SMOOTH_ADAM,
            processes=2,
            env=DISTRIBUTED_ENV,
        )
    )
    assert "(step 2)" in resumed.stderr
    assert json.loads((two / "train" / "manifest.json").read_text())["counts"]["resumed_from_step"] == 2
    for name, tensor in uninterrupted.items():
        assert_close(weights(two, "final")[name], tensor, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.slow  # launches processes
def test_weights_are_normalized_over_the_global_batch(tmp_path, tiny_llama):
    """train.normalize_weights over 4 pairs a step: two processes with 1 pair a micro-batch and 2 micro-batches each
    against one process with 2 x 2. At step 1 (learning rate 0, policy = reference: every pair's loss is ln 2) the
    normalized loss is ln 2, and the scale is 1 / (the mean weight of all 4 pairs): had each process scaled its own
    pairs, its scale (and the gradient) would follow its own 2 pairs' mean. The weight figures, gathered over both
    processes, and the per-pair table equal one process's."""
    records = [pair_record(*pair) for pair in PAIRS]
    for record in records[:3]:
        record["source_chosen"] = "offpolicy:reference"
    pairs = write_lines(tmp_path / "pairs.jsonl", records)
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        f"seed: 4\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"train: {{pairs: {pairs}, max_steps: 1, gradient_accumulation_steps: 2, normalize_weights: true, "
        "max_length: 64, max_prompt_length: 32, logging_steps: 1, save_steps: 0, loss_chunk_size: 8}\n"
    )
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(run_wpo("train", recipe, f"output_dir={one}", "train.per_device_batch_size=2", env=DISTRIBUTED_ENV))
    launched = assert_ok(
        run_wpo("train", recipe, f"output_dir={two}", "train.per_device_batch_size=1", processes=2, env=DISTRIBUTED_ENV)
    )
    assert "schedule: 1 steps of 4 pairs (1 per device x 2 accumulation x 2 processes)" in launched.stderr
    (one_row,), (two_row,) = (read_metrics(run / "train" / "metrics.jsonl") for run in (one, two))
    assert two_row["pairs"] == 4 and two_row["learning_rate"] == 0.0
    assert two_row["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert two_row["weight_scale"] == pytest.approx(1 / two_row["weight_mean"], rel=1e-6)
    for key in ("loss", "weight_scale", "weight_mean", "weight_ess", "weight_clamped_share", "grad_norm"):
        assert two_row[key] == pytest.approx(one_row[key], rel=1e-5), key
    assert two_row["weight_mean_by_source"] == pytest.approx(one_row["weight_mean_by_source"], rel=1e-5)

    def table(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "train" / "pair_weights.jsonl").read_text().splitlines()]
        return sorted(rows, key=lambda row: row["id"])

    numbers = ("weight_first", "weight_last", "margin_first", "margin_last")
    for a, b in zip(table(one), table(two), strict=True):
        assert {k: v for k, v in b.items() if k not in numbers} == {k: v for k, v in a.items() if k not in numbers}
        assert [b[k] for k in numbers] == pytest.approx([a[k] for k in numbers], rel=1e-5, abs=1e-6)


@pytest.mark.slow  # launches processes
@pytest.mark.parametrize("layout", ["head", "root"])
def test_chunked_loss_with_an_fsdp_sharded_output_layer(tmp_path, tiny_llama, layout):
    """FSDP2 shards the output layer on its own (`head`: its weight is a DTensor shard outside its forward, so the
    loss must run as that layer's forward) or with the root module (`root`); values and gradients equal the unsharded
    full-logits path's, and the sharded Adam state saved whole by a checkpoint loads back into the shards
    (`tests/fsdp_chunked_head.py`: accelerate runs FSDP only on GPUs, so this drives `fully_shard` directly)."""
    script = Path(__file__).with_name("fsdp_chunked_head.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(script),
            str(tiny_llama),
            layout,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=DISTRIBUTED_ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"fsdp2 {layout}: values and gradients equal" in result.stdout
    assert f"fsdp2 {layout}: optimizer state saved whole and restored into the shards" in result.stdout


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


@pytest.mark.slow  # launches processes
def test_two_processes_sample_the_same_candidates_as_one(tmp_path, tiny_llama):
    """Whole batches of the one-process plan are dealt to the processes (5 batches: 3 and 2), each appends to its own
    progress file, and the main process merges them in input order."""
    prompts = prompts_file(tmp_path, count=9)
    recipe = tmp_path / "sample.yaml"
    recipe.write_text(
        f"seed: 5\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 12, batch_size: 2, "
        "offpolicy_fields: [reference]}\n"
    )
    assert_ok(run_wpo("sample", recipe, f"output_dir={tmp_path / 'one'}", env=DISTRIBUTED_ENV))
    launched = assert_ok(run_wpo("sample", recipe, f"output_dir={tmp_path / 'two'}", processes=2, env=DISTRIBUTED_ENV))

    assert "sample: process 0 sampled 3 of 5 batches" in launched.stderr
    assert "sample: process 1 sampled 2 of 5 batches" in launched.stderr
    one, two = (tmp_path / run / "sample" for run in ("one", "two"))
    assert (two / "candidates.jsonl").read_bytes() == (one / "candidates.jsonl").read_bytes()
    assert json.loads((two / "manifest.json").read_text())["counts"]["written"] == 9
    assert not list(two.glob(".*progress*"))  # every process's progress file is gone once merged


@pytest.mark.slow  # launches processes
def test_two_processes_score_what_one_process_scores(tmp_path, tiny_reward_model):
    """The reward model runs in each process on its share of the chunks (20 records in chunks of 8: two and one);
    the merged file is the same bytes, and the manifest counts every process's work."""
    records = [
        {
            "id": f"q{i}",
            "messages": [{"role": "user", "content": f"Tell me about topic number {i}."}],
            "candidates": [
                {"text": text, "source": "policy", "seed": None, "score": None, "scores": None}
                for text in (f"Topic {i} is {'long ' * (i % 5)}fine.", f"No idea about {i}.")
            ],
        }
        for i in range(20)
    ]
    candidates = write_lines(tmp_path / "candidates.jsonl", records)
    recipe = tmp_path / "score.yaml"
    recipe.write_text(
        f"score: {{candidates: {candidates}, model: {tiny_reward_model}, batch_size: 3, max_length: 60}}\n"
    )
    assert_ok(run_wpo("score", recipe, f"output_dir={tmp_path / 'one'}", env=DISTRIBUTED_ENV))
    launched = assert_ok(run_wpo("score", recipe, f"output_dir={tmp_path / 'two'}", processes=2, env=DISTRIBUTED_ENV))

    assert "score: process 0 scored 2 of 3 chunks" in launched.stderr
    assert "score: process 1 scored 1 of 3 chunks" in launched.stderr
    one, two = (tmp_path / run / "score" for run in ("one", "two"))
    assert (two / "candidates.jsonl").read_bytes() == (one / "candidates.jsonl").read_bytes()
    scored = [json.loads(line) for line in (two / "candidates.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [f"q{i}" for i in range(20)]
    assert all(isinstance(c["score"], float) for r in scored for c in r["candidates"])
    one_counts, two_counts = (json.loads((run / "manifest.json").read_text())["counts"] for run in (one, two))
    assert two_counts == one_counts
    assert (two_counts["candidates_scored"], two_counts["written"]) == (40, 20)
    assert 0 < two_counts["truncated"] < 40  # the long ones, counted in whichever process scored them
    assert not list(two.glob(".*progress*"))


@pytest.mark.slow  # launches processes
def test_wpo_run_under_a_launcher_does_what_one_process_does(tmp_path, tiny_llama):
    """Two rounds of LoRA WPO then eval: sample, score and train split across the two processes, pair and the
    round-2 merge run on the main process between barriers, and eval on the main process once the other is done.
    Round 1 is compared file by file with one process (2 steps: both runs' first epoch holds them, whatever the
    pair count); round 2 samples from round 1's weights, equal only to float rounding, so it is checked for what
    ran where."""
    recipe = two_rounds_of_lora_and_eval(tmp_path, tiny_llama)
    one, two = tmp_path / "one", tmp_path / "two"
    assert_ok(
        run_wpo("run", recipe, f"output_dir={one}", "train.per_device_batch_size=2", *SMOOTH_ADAM, env=DISTRIBUTED_ENV)
    )

    def launch_two_processes():
        return assert_ok(
            run_wpo(
                "run",
                recipe,
                f"output_dir={two}",
                "train.per_device_batch_size=1",
                *SMOOTH_ADAM,
                processes=2,
                env=DISTRIBUTED_ENV,
            )
        )

    launched = launch_two_processes()

    assert "pair: running on the main process" in launched.stderr
    assert "run: process 1 is done; the main process goes on with ['eval']" in launched.stderr
    for produced in ("sample/candidates.jsonl", "score/candidates.jsonl", "pair/pairs.jsonl"):
        assert (two / produced).read_bytes() == (one / produced).read_bytes(), produced
    one_adapter, two_adapter = (load_file(run / "train/final/adapter_model.safetensors") for run in (one, two))
    assert_trained_alike(two_adapter, one_adapter, None, "adapter")

    (merged,) = (two / "train").glob("merged-*")  # round 1's adapter, merged once, by the main process
    sampled = json.loads((two / "round-2" / "sample" / "manifest.json").read_text())
    assert sampled["config"]["model"]["name_or_path"] == str(merged)
    assert json.loads((two / "round-2" / "train" / "manifest.json").read_text())["counts"]["num_processes"] == 2
    two_summary = json.loads((two / "summary.json").read_text())
    assert list(two_summary["stages"]) == list(json.loads((one / "summary.json").read_text())["stages"])
    assert json.loads((two / "eval" / "manifest.json").read_text())["config"]["model"] == str(
        two / "round-2" / "train" / "final"
    )
    assert 0.0 <= two_summary["reward_trained"] <= 1.0 and "win_rate" in two_summary

    def inputs(run: Path, stage: str) -> dict:  # each stage's inputs as resolved (by the main process, for all)
        config = json.loads((run / stage / "manifest.json").read_text())["config"]
        return {key: entry["fingerprint"] for key, entry in config["inputs"].items()}

    for stage in ("sample", "score", "pair"):
        assert inputs(two, stage) == inputs(one, stage), stage
    again = launch_two_processes()
    assert "is redone" not in again.stderr and again.stderr.count("already done under this config") >= 8


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

    recipe = load_recipe(
        None,
        [
            f"model.name_or_path={tiny_llama}",
            f"sample.prompts={prompts_file(tmp_path)}",
            f"output_dir={tmp_path / 'run'}",
            "sample.max_new_tokens=8",
            "sample.backend=vllm",  # vLLM is not installed here: the launch check comes before anything loads it
        ],
    )
    monkeypatch.setattr(stage, "process_state", lambda: SimpleNamespace(num_processes=2, process_index=0))
    with pytest.raises(ConfigError, match="sample.backend vllm runs in one process .* not as 2 processes"):
        stage.run_sample(recipe)


@pytest.mark.parametrize("command", ["pair", "eval", "export"])
def test_stages_that_do_not_split_refuse_a_launcher(command, monkeypatch):
    """Under a launcher they would repeat the whole job in every process, writing the same files at once."""
    from wpo.config import load_recipe
    from wpo.errors import ConfigError
    from wpo.pipeline import run_stage

    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = load_recipe(None, [])
    with pytest.raises(
        ConfigError,
        match=rf"^wpo {command} runs in one process, not as 2: launch it without "
        r"torchrun or accelerate \(only sample, score and train split",
    ):
        run_stage(recipe, command)


def test_a_command_ends_its_process_group_before_the_interpreter_exits(monkeypatch):
    """The CLI registers `wpo.distributed.end_process_group` at exit: it destroys an initialized group (rather than
    leaving its threads to the interpreter's teardown) and does nothing without one. In a fresh interpreter, so no
    other test's group is touched."""
    import atexit

    from wpo import cli

    code = (
        "import torch.distributed as dist\n"
        "from wpo.distributed import end_process_group\n"
        "end_process_group()\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)\n"
        "assert dist.is_initialized()\n"
        "end_process_group()\n"
        "print('ended' if not dist.is_initialized() else 'still initialized')\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "ended"

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(cli, "app", lambda: None)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    cli.main()
    assert registered == [cli._end_process_group]
