"""Sampling: per-sample seeds, batch independence, the candidates file, off-policy joins, and surviving a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import prompts_file, write_lines

from wpo.config import load_recipe
from wpo.errors import ConfigError, DataError, MachineLacks
from wpo.sampling import Generation, SampleRequest, sample_seed
from wpo.sampling.stage import run_sample
from wpo.sampling.transformers_backend import PerRowSampling, TransformersSampler, nucleus


def sample_recipe(tmp_path, model, prompts, *overrides, run="run"):
    settings = [f"model.name_or_path={model}", f"sample.prompts={prompts}", f"output_dir={tmp_path / run}", "seed=5"]
    return load_recipe(None, [*settings, "sample.n=3", "sample.max_new_tokens=8", *overrides])


def test_seeds_are_stable_and_distinct():
    assert sample_seed(1, "q1", 0) == sample_seed(1, "q1", 0)
    seeds = {sample_seed(run, prompt, k) for run in (1, 2) for prompt in ("q1", "q2") for k in range(4)}
    assert len(seeds) == 16 and all(0 <= s < 2**31 for s in seeds)


def test_per_row_sampling_filters():
    """top_k=1 and a tiny top_p leave only the argmax; temperature 0 is greedy; sampling follows the row's seed."""
    scores = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    for processor in (
        PerRowSampling([1, 2], 1.0, 1.0, 1, torch.device("cpu")),
        PerRowSampling([1, 2], 1.0, 0.01, 0, torch.device("cpu")),
        PerRowSampling([1, 2], 0.0, 1.0, 0, torch.device("cpu")),
    ):
        assert processor(None, scores).argmax(-1).tolist() == [1, 0]

    def draws(seed):
        processor = PerRowSampling([seed], 5.0, 1.0, 0, torch.device("cpu"))
        return [processor(None, scores[:1]).argmax(-1).item() for _ in range(30)]

    assert draws(7) == draws(7) and draws(7) != draws(8)


def full_sort_nucleus(logits, top_p):
    """Top-p the plain way, the reference for the candidate-limited version."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    return logits.scatter(-1, order, sorted_logits.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf")))


def test_nucleus_keeps_what_a_full_sort_keeps():
    """Peaked rows take the 64-candidate path, flat rows the full sort; a batch mixes both. The kept sets match the
    full sort's up to a token whose cumulative mass sits on the boundary within rounding."""
    generator = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 12.0):
        logits = torch.randn(16, 5000, generator=generator) * scale
        logits[::3] *= 4  # every third row much more peaked than its neighbours
        ours, theirs = nucleus(logits, 0.9), full_sort_nucleus(logits, 0.9)
        kept_ours, kept_theirs = ours > float("-inf"), theirs > float("-inf")
        assert (kept_ours != kept_theirs).sum(-1).max() <= 1
        assert torch.equal(ours[kept_ours & kept_theirs], logits[kept_ours & kept_theirs])  # kept logits unchanged
    peaked = torch.tensor([[10.0, 9.0, 0.0, -1.0] + [-30.0] * 100])
    assert (nucleus(peaked, 0.5) > float("-inf")).nonzero()[:, 1].tolist() == [0]
    assert (nucleus(peaked, 0.8) > float("-inf")).nonzero()[:, 1].tolist() == [0, 1]  # 0.731 < 0.8 needs the second


def test_a_sample_does_not_depend_on_its_batch(tmp_path, tiny_llama):
    recipe = sample_recipe(tmp_path, tiny_llama, prompts_file(tmp_path), "sample.max_new_tokens=12")
    sampler = TransformersSampler(
        str(tiny_llama), recipe.model, Generation.for_sampling(recipe.sample, recipe.seed, recipe.output_dir)
    )
    requests = [
        SampleRequest([{"role": "user", "content": text}], seed)
        for text, seed in (("Hi", 11), ("What is the capital of France? Answer.", 12), ("Seven", 13))
    ]
    together = sampler.generate(requests)
    alone = [sampler.generate([request])[0] for request in requests]
    assert together == alone
    assert {s.finish_reason for s in together} <= {"stop", "length"}
    stop = next(character for character in together[0].text if character.strip())  # a string the sample holds
    with_stop = sample_recipe(
        tmp_path, tiny_llama, prompts_file(tmp_path), "sample.max_new_tokens=12", f"sample.stop=[{stop!r}]"
    )
    stopped = TransformersSampler(
        str(tiny_llama),
        with_stop.model,
        Generation.for_sampling(with_stop.sample, with_stop.seed, with_stop.output_dir),
    ).generate(requests)
    for cut, free in zip(stopped, together, strict=True):
        if stop in free.text:  # ended at the stop string: the text before it, and why
            assert (cut.text, cut.finish_reason) == (free.text[: free.text.index(stop)], "stop")
    assert sampler.generate(requests[:1]) != sampler.generate([SampleRequest(requests[0].messages, 99)])


def test_sample_stage_writes_the_hybrid_pool(tmp_path, tiny_llama):
    prompts = prompts_file(tmp_path)
    result = run_sample(
        sample_recipe(tmp_path, tiny_llama, prompts, "sample.offpolicy_fields=[reference]", "sample.batch_size=2")
    )
    lines = (tmp_path / "run" / "sample" / "candidates.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [f"q{i}" for i in range(5)]  # input order, whatever the batching
    first = records[0]
    assert first["messages"] == [{"role": "user", "content": "What is 0 plus 0?"}]
    assert first["reference"] == "0 plus 0 is 0."
    assert [c["source"] for c in first["candidates"]] == ["policy"] * 3 + ["offpolicy:reference"]
    assert [c["seed"] for c in first["candidates"]] == [sample_seed(5, "q0", k) for k in range(3)] + [None]
    assert first["candidates"][3]["text"] == "0 plus 0 is 0."
    assert all(c["score"] is None and c["scores"] is None for c in first["candidates"])
    assert result["counts"]["written"] == 5
    manifest = json.loads((tmp_path / "run" / "sample" / "manifest.json").read_text())
    assert manifest["completed"] and manifest["counts"]["samples_per_prompt"] == 3
    assert not list((tmp_path / "run" / "sample").glob(".*progress*"))

    again = run_sample(
        sample_recipe(
            tmp_path, tiny_llama, prompts, "sample.offpolicy_fields=[reference]", "sample.batch_size=5", run="again"
        )
    )
    assert (tmp_path / "again" / "sample" / "candidates.jsonl").read_text() == "\n".join(lines) + "\n"
    assert again["counts"]["written"] == 5


def test_identical_candidates_drop_the_prompt(tmp_path, tiny_llama):
    result = run_sample(
        sample_recipe(tmp_path, tiny_llama, prompts_file(tmp_path, 2), "sample.temperature=0", "sample.n=2")
    )
    assert result["counts"]["skipped"] == {"all_candidates_identical": 2}
    assert (tmp_path / "run" / "sample" / "candidates.jsonl").read_text() == ""


def without_reference(path, ids: set[str]):
    """The prompts file at `path` with the `reference` of the prompts `ids` taken out."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return write_lines(path, [{k: v for k, v in r.items() if k != "reference" or r["id"] not in ids} for r in records])


def test_a_prompt_without_its_offpolicy_field_keeps_its_samples_or_is_left_out(tmp_path, tiny_llama):
    """skip_candidate: a prompt lacking the field keeps its on-policy samples and gets no off-policy candidate,
    counted by field; skip_record: it is left out, counted, though on_bad_record is error."""
    prompts = without_reference(prompts_file(tmp_path), {"q1", "q3"})
    settings = ["sample.offpolicy_fields=[reference]", "sample.batch_size=5"]
    kept = run_sample(
        sample_recipe(tmp_path, tiny_llama, prompts, *settings, "sample.offpolicy_missing=skip_candidate")
    )
    lines = (tmp_path / "run" / "sample" / "candidates.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    sources = {r["id"]: [c["source"] for c in r["candidates"]] for r in records}
    assert sources == {
        prompt: ["policy"] * 3 + ([] if prompt in ("q1", "q3") else ["offpolicy:reference"])
        for prompt in ("q0", "q1", "q2", "q3", "q4")
    }
    assert kept["counts"]["offpolicy_missing"] == {"reference": 2} and kept["counts"]["skipped"] == {}
    manifest = json.loads((tmp_path / "run" / "sample" / "manifest.json").read_text())
    assert manifest["counts"]["offpolicy_missing"] == {"reference": 2}

    left_out = run_sample(
        sample_recipe(tmp_path, tiny_llama, prompts, *settings, "sample.offpolicy_missing=skip_record", run="records")
    )
    assert left_out["counts"]["skipped"] == {"missing_offpolicy": 2} and left_out["counts"]["offpolicy_missing"] == {}
    written = (tmp_path / "records" / "sample" / "candidates.jsonl").read_text().splitlines()
    assert written == [line for line in lines if json.loads(line)["id"] in ("q0", "q2", "q4")]  # the same samples


def test_candidates_merge_samples_fields_and_models_in_order():
    """Hand-made: an empty sample is left out and counted, a prompt whose candidates are one text is dropped, finish
    reasons are counted by source, the records keep the input's order and the prompt's own fields."""
    from wpo.data.schemas import PromptRecord
    from wpo.sampling.stage import merge_candidates

    def prompt(id_, reference):
        return PromptRecord(id_, [{"role": "user", "content": id_}], {"reference": reference})

    prompts = [prompt("b", "B ref"), prompt("a", "same"), prompt("c", "C ref")]
    samples = {
        "b": [{"text": "b1", "seed": 1, "finish_reason": "stop"}, {"text": "  ", "seed": 2, "finish_reason": "stop"}],
        "a": [{"text": "same", "seed": 3, "finish_reason": "length"}],
        "c": [{"text": "c1", "seed": 4}],
    }
    generated = {"gpt": {"b": {"text": "b gpt", "finish_reason": "length"}, "c": "c gpt (old cache: text only)"}}
    merged = merge_candidates(prompts, samples, ["reference"], generated)

    assert [record["id"] for record in merged.records] == ["b", "c"]
    assert merged.dropped == {"all_candidates_identical": 1} and merged.empty_samples == 1
    first = merged.records[0]
    assert first["reference"] == "B ref" and first["messages"] == [{"role": "user", "content": "b"}]
    assert [(c["text"], c["source"], c["seed"], c["finish_reason"]) for c in first["candidates"]] == [
        ("b1", "policy", 1, "stop"),
        ("B ref", "offpolicy:reference", None, None),
        ("b gpt", "offpolicy:gpt", None, "length"),
    ]
    assert merged.finish_reasons == {
        "policy": {"stop": 1, "length": 1, "None": 1},
        "offpolicy:reference": {"None": 3},
        "offpolicy:gpt": {"length": 1, "None": 1},
    }


def test_bad_prompts_and_settings(tmp_path, tiny_llama):
    prompts = write_lines(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "messages": [{"role": "user", "content": "x"}]},
            {"id": "a", "messages": [{"role": "user", "content": "y"}], "reference": "r"},
        ],
    )
    with pytest.raises(DataError, match=r"p.jsonl:1: off-policy field 'reference' is missing or empty"):
        run_sample(sample_recipe(tmp_path, tiny_llama, prompts, "sample.offpolicy_fields=[reference]"))
    numbered = write_lines(tmp_path / "n.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "x"}], "n": 5}])
    with pytest.raises(DataError, match=r"n.jsonl:1: off-policy field 'n' must be text, got int"):  # not missing
        run_sample(
            sample_recipe(
                tmp_path, tiny_llama, numbered, "sample.offpolicy_fields=[n]", "sample.offpolicy_missing=skip_candidate"
            )
        )
    with pytest.raises(DataError, match=r"p.jsonl:2: duplicate id 'a'"):
        run_sample(sample_recipe(tmp_path, tiny_llama, prompts))
    vllm = load_recipe(None, ["sample.backend=vllm"])  # the recipe loads: the backend is checked when sampling starts
    with pytest.raises(MachineLacks, match=r"vllm \(sample.backend: vllm\): pip install vllm on a GPU machine"):
        run_sample(
            sample_recipe(
                tmp_path,
                tiny_llama,
                write_lines(tmp_path / "one.jsonl", [{"id": "a", "messages": [{"role": "user", "content": "x"}]}]),
                "sample.backend=vllm",
                run="vllm",
            )
        )
    assert vllm.sample.backend == "vllm"
    with pytest.raises(ConfigError, match=r"must give at least 2 candidates per prompt"):
        load_recipe(None, ["sample.n=1"])
    with pytest.raises(ConfigError, match=r"sample.prompts is required"):
        run_sample(load_recipe(None, [f"output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"llamacpp needs a GGUF of the policy"):
        from wpo.sampling.llamacpp_backend import gguf_to_sample

        gguf_to_sample(load_recipe(None, [f"model.name_or_path={tiny_llama}"]).model, None, None, tmp_path / "gguf")


@pytest.mark.slow  # launches processes
def test_killed_sampling_resumes_to_the_same_file(tmp_path, tiny_llama):
    """SIGKILL `wpo sample` once it has written some batches; the rerun's file equals an uninterrupted run's."""
    prompts = prompts_file(tmp_path, count=24)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"seed: 5\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 24, batch_size: 1}}\n"
    )
    env = {**os.environ, "WPO_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "wpo", "sample", str(recipe)]
    subprocess.run([*command, f"output_dir={tmp_path / 'straight'}"], check=True, capture_output=True, env=env)

    killed_dir = tmp_path / "killed" / "sample"
    process = subprocess.Popen(
        [*command, f"output_dir={tmp_path / 'killed'}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = list(killed_dir.glob(".candidates.*.progress.jsonl"))
        if progress and progress[0].read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "candidates.jsonl").exists(), "the run finished before it could be killed"
    done_before = progress[0].read_text().count("\n")
    assert 3 <= done_before < 24

    subprocess.run([*command, f"output_dir={tmp_path / 'killed'}"], check=True, capture_output=True, env=env)
    straight = (tmp_path / "straight" / "sample" / "candidates.jsonl").read_bytes()
    assert (killed_dir / "candidates.jsonl").read_bytes() == straight
    manifest = json.loads((killed_dir / "manifest.json").read_text())
    assert manifest["counts"]["prompts_done_before_this_run"] >= done_before
