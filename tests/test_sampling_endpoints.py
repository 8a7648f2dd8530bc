"""Sampling through OpenAI-compatible endpoints: off-policy answers from a model (`sample.offpolicy_models`) and
on-policy samples from a server (`sample.backend: openai`), against loopback servers."""

from __future__ import annotations

import json

import pytest
from helpers import PLANTED_KEY, write_lines
from judge_server import FakeJudge, digit_for

from wpo.config import load_recipe
from wpo.errors import ConfigError, WpoError
from wpo.pairing.stage import run_pair
from wpo.sampling.stage import run_sample
from wpo.scoring.stage import run_score


def prompts(tmp_path, count=4):
    return write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"Name a colour, number {i}."}]}
            for i in range(count)
        ],
    )


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # starts llama.cpp's server on the real SmolLM2
def test_sample_score_pair_with_offpolicy_answers_from_a_local_llama_cpp_server(
    tmp_path, tiny_llama, llama_server, monkeypatch
):
    """The hybrid pool as the seed builds it, at CPU size: on-policy samples from the policy plus one answer per
    prompt from a 'strong model' behind an OpenAI-compatible server (here the embedded SmolLM2 on llama.cpp's)."""
    monkeypatch.setenv("WPO_TEST_KEY", PLANTED_KEY)
    (tmp_path / "longer.py").write_text("def reward(messages, text):\n    return float(len(text))\n")
    monkeypatch.chdir(tmp_path)
    strong = (
        f"{{name: strong, base_url: '{llama_server}', model: smollm2, api_key_env: WPO_TEST_KEY, "
        "max_tokens: 12, temperature: 0.0, max_concurrency: 2}"
    )
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "seed=2",
            f"model.name_or_path={tiny_llama}",
            f"sample.prompts={prompts(tmp_path)}",
            "sample.n=2",
            "sample.max_new_tokens=4",
            f"sample.offpolicy_models=[{strong}]",
            "score.scorer=python",
            "score.function=longer:reward",
            "pair.length_unit=characters",
        ],
    )
    result = run_sample(recipe)
    records = read(tmp_path / "run" / "sample" / "candidates.jsonl")
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    for record in records:
        sources = [c["source"] for c in record["candidates"]]
        assert sources == ["policy", "policy", "offpolicy:strong"]
        assert record["candidates"][2]["text"].strip() and record["candidates"][2]["seed"] is None
    usage = result["counts"]["api_usage"]["strong"]
    assert usage["completions"] == usage["requests"] == 4 and usage["prompt_tokens"] > 4 * 5
    assert 4 <= usage["completion_tokens"] <= 4 * 12 and result["counts"]["offpolicy_models"] == {"strong": 4}

    (tmp_path / "run" / "sample" / "manifest.json").unlink()  # rerun: every answer comes from the cache
    again = run_sample(recipe)
    assert again["counts"]["api_usage"]["strong"]["requests"] == 0
    assert again["counts"]["api_usage"]["strong"]["cache_hits"] == 4
    assert read(tmp_path / "run" / "sample" / "candidates.jsonl") == records

    run_score(recipe)
    run_pair(recipe)
    pairs = read(tmp_path / "run" / "pair" / "pairs.jsonl")
    assert pairs and {p["source_chosen"] for p in pairs} | {p["source_rejected"] for p in pairs} <= {
        "policy",
        "offpolicy:strong",
    }
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert PLANTED_KEY not in path.read_text(errors="replace"), path


def test_on_policy_samples_from_servers_carry_their_seeds(tmp_path, tiny_llama):
    """`sample.backend: openai` over two servers: every sample is one request with its own seed and the recipe's
    settings, spread over both servers; the candidate records the seed it was sent with."""
    with FakeJudge() as first, FakeJudge() as second:
        recipe = load_recipe(
            None,
            [
                f"output_dir={tmp_path / 'run'}",
                "seed=4",
                f"model.name_or_path={tiny_llama}",
                f"sample.prompts={prompts(tmp_path, 3)}",
                "sample.n=2",
                "sample.backend=openai",
                "sample.temperature=0.7",
                "sample.top_p=0.9",
                "sample.max_new_tokens=16",
                f"sample.endpoint={{base_url: ['{first.url}', '{second.url}'], model: policy, max_concurrency: 4}}",
            ],
        )
        run_sample(recipe)
    bodies = first.bodies + second.bodies
    assert (first.received, second.received) == (3, 3)
    assert {(b["model"], b["temperature"], b["top_p"], b["max_tokens"]) for b in bodies} == {("policy", 0.7, 0.9, 16)}
    records = read(tmp_path / "run" / "sample" / "candidates.jsonl")
    sent = {(b["messages"][-1]["content"], b["seed"]) for b in bodies}
    for record in records:
        prompt = record["messages"][-1]["content"]
        seeds = [c["seed"] for c in record["candidates"]]
        assert len(set(seeds)) == 2 and all((prompt, seed) in sent for seed in seeds)
        assert [c["text"] for c in record["candidates"]] == [str(digit_for(prompt))] * 2 or len(
            {c["text"] for c in record["candidates"]}
        ) < 2


def test_a_failing_offpolicy_model_names_the_prompt_or_is_counted(tmp_path, tiny_llama):
    with FakeJudge(fail_status=500, fail_from=3) as judge:
        model = f"{{name: strong, base_url: '{judge.url}', model: m, max_retries: 0, max_concurrency: 1}}"
        settings = [
            f"output_dir={tmp_path / 'run'}",
            f"model.name_or_path={tiny_llama}",
            "sample.n=2",
            "sample.max_new_tokens=2",
            f"sample.prompts={prompts(tmp_path)}",
            f"sample.offpolicy_models=[{model}]",
        ]
        with pytest.raises(
            WpoError,
            match=r"sample.offpolicy_models strong \(m at .*\) answered HTTP 500 after 1 "
            r"attempts for the prompt 'q2'; 2 answers are saved",
        ):
            run_sample(load_recipe(None, settings))
        skipped = run_sample(load_recipe(None, [*settings, "on_bad_record=skip"]))
    assert skipped["counts"]["skipped"] == {"offpolicy_failed:strong": 2}
    assert skipped["counts"]["offpolicy_models"] == {"strong": 2}  # q0 and q1 from the cache, q2 and q3 failed


def test_endpoint_settings_are_checked_when_the_recipe_loads():
    with pytest.raises(ConfigError, match=r"sample.endpoint is the server of sample.backend: openai"):
        load_recipe(None, ["sample.backend=openai"])
    with pytest.raises(ConfigError, match=r"sample.top_k is not part of the OpenAI API"):
        load_recipe(None, ["sample.backend=openai", "sample.top_k=5", "sample.endpoint={base_url: u, model: m}"])
    with pytest.raises(ConfigError, match=r"names must be unique"):
        load_recipe(
            None, ["sample.offpolicy_fields=[gpt]", "sample.offpolicy_models=[{name: gpt, base_url: u, model: m}]"]
        )
