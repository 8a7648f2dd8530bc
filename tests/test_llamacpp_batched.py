"""The llamacpp backend's batched decoding on the embedded SmolLM2-135M: the same settings give the same texts.

The backend samples the embedded model from an F16 copy of its weights: llama.cpp multiplies F16 weights with a
different kernel for one row than for several, so F16 is also where a batch-dependent rounding shows.
"""

from __future__ import annotations

import pytest

from wpo.config import load_recipe
from wpo.errors import ConfigError
from wpo.layout import gguf_cache
from wpo.sampling import Generation, SampleRequest, cut_at_stop

SYSTEM = {"role": "system", "content": "You are a concise assistant."}
EARLY_EOS = [{"role": "user", "content": "Hi!"}]  # the model answers in 9 tokens, then its end-of-turn token


def user(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


# Three prompts, two of them sharing the system prompt, interleaved: requests of one prompt are not adjacent.
MIXED = [
    SampleRequest(messages, seed)
    for seed in (11, 12, 13)
    for messages in (user("Tell me about the moon."), user("Name three rivers."), [{"role": "user", "content": "Hi"}])
]


@pytest.fixture(scope="module")
def model_path() -> str:
    from wpo.models import resolve_model_path

    return resolve_model_path("embedded:smollm2-135m-instruct")


def sampler(model_path: str, *overrides: str):
    from wpo.sampling.llamacpp_backend import LlamaCppSampler

    recipe = load_recipe(None, ["sample.backend=llamacpp", "sample.threads=1", *overrides])
    return LlamaCppSampler(
        model_path, recipe.model, Generation.for_sampling(recipe.sample, recipe.seed, recipe.output_dir)
    )


@pytest.mark.slow
def test_the_same_settings_give_the_same_texts_on_a_rerun(model_path):
    """What holds on every CPU: the texts are fixed by the seeds, the GGUF, the CPU and what decodes together. With
    one sequence at a time, 4 sequences for 9 requests (slots are reused) and all at once, a sampler built afresh —
    as a rerun or a resumed stage builds one — gives the same texts, and each seed of a prompt its own text.

    Not asserted: the same texts across those parallelisms. That held on AVX2, but on AVX512 llama.cpp's kernels
    change their rounding with the number of rows, and one text parted after 14 words (docs/performance.md)."""
    for parallel in (1, 4, 16):
        settings = ("sample.max_new_tokens=24", "sample.temperature=1.0", f"sample.parallel_sequences={parallel}")
        first = sampler(model_path, *settings).generate(MIXED)
        assert sampler(model_path, *settings).generate(MIXED) == first, parallel
        assert len({sample.text for sample in first[0::3]}) == 3  # one prompt, three seeds, three texts
        assert all(sample.text for sample in first), parallel
        assert {sample.finish_reason for sample in first} <= {"stop", "length"}


@pytest.mark.slow
def test_greedy_decoding_matches_llama_cpps_own_completion(model_path):
    """Temperature 0 is greedy, whatever the seed, and gives the text `Llama.create_completion` gives one prompt
    at a time (with the same attention kernel): the same tokenization, detokenization and end-of-turn handling as the
    backend had before batching."""
    from wpo.llamacpp import open_llama
    from wpo.models import load_tokenizer
    from wpo.sampling import render_prompt
    from wpo.sampling.llamacpp_backend import gguf_to_sample

    prompts = [EARLY_EOS, user("What is the capital of France?"), user("Name a color.")]
    batched = sampler(model_path, "sample.temperature=0.0", "sample.max_new_tokens=24")
    assert batched.parallel == 8 * 5  # unset: a whole stage batch, sample.batch_size x sample.n
    samples = batched.generate([SampleRequest(messages, seed) for seed, messages in enumerate(prompts)])
    assert samples == batched.generate([SampleRequest(messages, 99) for messages in prompts])
    texts = [sample.text for sample in samples]

    embedded = load_recipe(None, ["sample.backend=llamacpp"])
    gguf = str(gguf_to_sample(embedded.model, None, None, gguf_cache(embedded.output_dir)))
    llm = open_llama(gguf, n_ctx=512, n_threads=1, n_threads_batch=1, flash_attn=True, verbose=False)
    tokenizer = load_tokenizer(model_path)
    for messages, text in zip(prompts, texts, strict=True):
        tokens = llm.tokenize(render_prompt(tokenizer, messages).encode(), add_bos=False, special=True)
        llm.reset()
        assert llm.create_completion(tokens, max_tokens=24, temperature=0.0)["choices"][0]["text"] == text
    assert len(batched.tokenize(texts[0])) < 24 and "<|im_end|>" not in texts[0]  # ended by its end-of-turn token
    assert samples[0].finish_reason == "stop"


@pytest.mark.slow
def test_stop_strings_and_max_new_tokens_end_each_sample_alone(model_path):
    requests = [*MIXED, SampleRequest(EARLY_EOS, 5)]
    free = [
        s.text
        for s in sampler(model_path, "sample.max_new_tokens=16", "sample.parallel_sequences=3").generate(requests)
    ]
    stopped = sampler(
        model_path, "sample.max_new_tokens=16", "sample.parallel_sequences=3", "sample.stop=['.', ',']"
    ).generate(requests)
    assert [s.text for s in stopped] == [cut_at_stop(text, [".", ","]) for text in free]
    early = [s.finish_reason for s, f in zip(stopped, free, strict=True) if len(s.text) < len(f)]
    assert early and set(early) == {"stop"}  # some stopped early, at a stop string

    short = sampler(model_path, "sample.max_new_tokens=4", "sample.parallel_sequences=3")
    capped = short.generate(requests)
    assert all(f.startswith(c.text) and len(short.tokenize(c.text)) <= 4 for c, f in zip(capped, free, strict=True))
    assert [c.finish_reason for c in capped[:-1]] == ["length"] * len(MIXED)  # cut off at 4 tokens
    assert short.generate([]) == []


@pytest.mark.slow
def test_eval_generates_greedily_with_llamacpp_from_the_evaluated_models_gguf(model_path):
    """eval.backend: llamacpp answers greedily from the GGUF of the model under evaluation, not from sample.gguf."""
    from wpo.data.schemas import PromptRecord
    from wpo.evaluation.stage import generate_outputs

    prompts = [PromptRecord("a", EARLY_EOS), PromptRecord("b", user("Name a color."))]
    recipe = load_recipe(
        None,
        [
            "sample.backend=llamacpp",
            "sample.gguf=/nonexistent/policy.gguf",
            "sample.threads=1",
            "eval.backend=llamacpp",
            "eval.max_new_tokens=8",
        ],
    )
    greedy = sampler(model_path, "sample.temperature=0.0", "sample.max_new_tokens=8")
    expected = [s.text for s in greedy.generate([SampleRequest(p.messages, 0) for p in prompts])]
    generation = Generation.for_eval(recipe.eval, recipe.sample, recipe.seed, recipe.output_dir)
    assert generate_outputs("embedded:smollm2-135m-instruct", recipe.model, generation, prompts) == expected


def test_llamacpp_settings_need_the_llamacpp_backend():
    for setting in ("sample.parallel_sequences=4", "sample.threads=1"):
        with pytest.raises(ConfigError, match="only used by sample.backend: llamacpp"):
            load_recipe(None, [setting])
    recipe = load_recipe(None, ["sample.backend=llamacpp", "sample.parallel_sequences=4", "sample.threads=1"])
    assert (recipe.sample.parallel_sequences, recipe.sample.threads) == (4, 1)
    for bad in ("sample.parallel_sequences=0", "sample.parallel_sequences=257", "sample.threads=0"):
        with pytest.raises(ConfigError):
            load_recipe(None, ["sample.backend=llamacpp", bad])


@pytest.mark.slow  # runs llama.cpp's converter in a subprocess
def test_an_hf_policy_is_converted_to_f16_once_per_weights(tmp_path, model_path):
    """Round k's policy is an HF directory: llamacpp samples an F16 GGUF of it, cached by the weights' hash."""
    from helpers import tiny_model

    from wpo.models import load_tokenizer
    from wpo.sampling.llamacpp_backend import LlamaCppSampler, gguf_to_sample

    tokenizer = load_tokenizer(model_path)  # llama.cpp's converter accepts only tokenizers it knows
    policy = tiny_model(tmp_path / "policy", "llama", tokenizer)

    def recipe_for(model):
        return load_recipe(
            None,
            [
                f"model.name_or_path={model}",
                f"output_dir={tmp_path / 'run'}",
                "sample.backend=llamacpp",
                "sample.threads=1",
                "sample.max_new_tokens=6",
            ],
        )

    def converted(model):
        return gguf_to_sample(recipe_for(model).model, None, model, tmp_path / "run" / "gguf")

    gguf = converted(policy)
    assert gguf.parent.parent == tmp_path / "run" / "gguf" and gguf.name == "policy.F16.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    written = gguf.stat().st_mtime_ns
    assert converted(policy) == gguf and gguf.stat().st_mtime_ns == written

    requests = [SampleRequest([{"role": "user", "content": "hello"}], seed) for seed in (1, 2, 1)]
    recipe = recipe_for(policy)
    samples = LlamaCppSampler(
        str(policy), recipe.model, Generation.for_sampling(recipe.sample, recipe.seed, recipe.output_dir)
    ).generate(requests)
    assert len(samples) == 3 and samples[0] == samples[2]

    from safetensors.torch import load_file, save_file

    weights = load_file(policy / "model.safetensors")  # retrained weights: another digest, another file
    save_file(
        {name: tensor + 0.01 if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
        policy / "model.safetensors",
        metadata={"format": "pt"},
    )
    retrained = converted(policy)
    assert retrained != gguf and retrained.is_file()


@pytest.mark.slow  # runs llama.cpp's converter in a subprocess on first use
def test_the_embedded_model_is_sampled_from_an_f16_copy_of_the_weights_training_starts_from():
    """The embedded GGUF is Q4_1; training loads its dequantized weights, and sampling reads their F16 copy, made once
    per machine under the model cache: the same numbers up to F16 rounding, in a type llama.cpp batches fast."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    from wpo.models import cache_root, embedded_gguf
    from wpo.sampling.llamacpp_backend import gguf_to_sample

    recipe = load_recipe(None, ["sample.backend=llamacpp"])
    converted = gguf_to_sample(recipe.model, None, None, gguf_cache(recipe.output_dir))
    assert converted.is_relative_to(cache_root() / "gguf") and converted.name == "policy.F16.gguf"
    written = converted.stat().st_mtime_ns
    assert (
        gguf_to_sample(recipe.model, None, None, gguf_cache(recipe.output_dir)) == converted
        and converted.stat().st_mtime_ns == written
    )  # converted once

    name = "blk.0.ffn_down.weight"
    shipped = next(t for t in GGUFReader(embedded_gguf(recipe.model.name_or_path)).tensors if t.name == name)
    copy = next(t for t in GGUFReader(converted).tensors if t.name == name)
    assert (shipped.tensor_type, copy.tensor_type) == (GGMLQuantizationType.Q4_1, GGMLQuantizationType.F16)
    original = dequantize(shipped.data, shipped.tensor_type)
    np.testing.assert_allclose(dequantize(copy.data, copy.tensor_type), original, rtol=1e-3, atol=1e-5)
