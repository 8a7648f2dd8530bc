"""Recipes load, validate on load with dotted key paths, and take key=value overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from wpo.config import apply_overrides, config_hash, load_recipe
from wpo.errors import ConfigError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads(recipe):
    """Each shipped recipe validates, runs the stages its file lists (or every stage), and its resolved form (what
    `wpo config` prints) loads back to the same recipe."""
    import yaml

    loaded = load_recipe(recipe)
    listed = yaml.safe_load(recipe.read_text(encoding="utf-8")).get("stages")
    assert loaded.stages == (listed or ["sample", "score", "pair", "train", "eval", "export"])
    assert load_recipe(loaded.to_dict()).to_dict() == loaded.to_dict()


def test_seed_recipe_carries_the_cards_hyperparameters():
    """gemma-2-9b-it-WPO-HB: lr 1e-6, β 0.01, 1 x 16 x 8 = 128 pairs per step, seed 1, cosine, warmup 0.1, 2 epochs."""
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "gemma-2-9b-it-wpo-hb-train.yaml")
    train = recipe.train
    assert recipe.model.name_or_path == "google/gemma-2-9b-it" and recipe.seed == 1
    assert (train.learning_rate, train.beta, train.lr_scheduler, train.warmup_ratio) == (1e-6, 0.01, "cosine", 0.1)
    assert (train.per_device_batch_size, train.gradient_accumulation_steps, train.global_batch_size) == (1, 16, 128)
    assert (train.num_epochs, train.max_length, train.max_prompt_length) == (2, 2048, 1800)
    assert train.weighting == "wpo" and train.clamp is True and train.loss == "sigmoid"
    assert recipe.model.dtype == "float32"  # fp32 masters; bf16 compute: the accelerate config
    assert train.loss_chunk_size > 0  # the chunked loss gathers the FSDP-sharded output layer
    assert train.pairs.startswith("wzhouad/gemma-2-ultrafeedback-hybrid")


def test_the_seed_system_recipe_names_every_stage_and_trains_as_the_card():
    """The hybrid pool (5 vLLM samples at T 0.8 / top-p 0.95 + a GPT-4-turbo answer), ArmoRM, AlpacaEval 2 with a
    GPT-4-turbo judge, GGUF export; the training section is the published-pairs recipe's, pairs aside."""
    recipes = Path(__file__).parent.parent / "recipes"
    system, published = (
        load_recipe(recipes / name) for name in ("gemma-2-9b-it-wpo-hb.yaml", "gemma-2-9b-it-wpo-hb-train.yaml")
    )
    assert system.stages == ["sample", "score", "pair", "train", "eval", "export"]
    sample = system.sample
    assert (sample.n, sample.temperature, sample.top_p, sample.backend) == (5, 0.8, 0.95, "vllm")
    (gpt,) = sample.offpolicy_models
    assert (gpt.name, gpt.model, gpt.api_key_env) == ("gpt-4-turbo", "gpt-4-turbo", "OPENAI_API_KEY")
    assert (system.score.scorer, system.score.model) == ("reward_model", "RLHFlow/ArmoRM-Llama3-8B-v0.1")
    assert system.model.trust_remote_code
    assert system.train.model_dump(exclude={"pairs"}) == published.train.model_dump(exclude={"pairs"})
    assert system.train.pairs is None  # the pair stage's output
    assert (system.eval.judge, system.eval.annotator, system.eval.api.model) == (
        "alpaca_eval",
        "weighted_alpaca_eval_gpt4_turbo",
        "gpt-4-1106-preview",  # the annotator's own model: figures comparable with the leaderboard's
    )
    assert system.eval.instruction_difficulty and system.eval.gamed_baselines
    assert system.export.quantizations == ["Q4_K_M", "Q8_0"]


def test_public_keys_only_recipe_is_valid(tmp_path):
    """A recipe setting only the public keys (docs/design.md) loads; everything else has a default."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        """
output_dir: out
seed: 3
stages: [sample, score, pair, train, eval, export]
model: {name_or_path: some/model, dtype: auto, trust_remote_code: false, lora: {r: 8}}
sample: {prompts: p.jsonl, n: 4, temperature: 0.7, top_p: 0.9, max_new_tokens: 64, backend: transformers,
         offpolicy_fields: [reference]}
score: {scorer: python, function: "mod:fn", candidates: c.jsonl}
pair: {candidates: s.jsonl}
train: {pairs: p.jsonl, loss: sigmoid, weighting: wpo, clamp: false, beta: 0.05, label_smoothing: 0.1,
        learning_rate: 1e-6, lr_scheduler: cosine, warmup_ratio: 0.1, num_epochs: 2, max_steps: 10,
        per_device_batch_size: 2, gradient_accumulation_steps: 4, max_length: 512, max_prompt_length: 256,
        logging_steps: 1, save_steps: 5, loss_chunk_size: 0, resume: auto}
eval: {model: m}
export: {model: m, quantizations: [Q4_K_M, Q8_0]}
"""
    )
    recipe = load_recipe(recipe)
    assert recipe.train.learning_rate == 1e-6  # YAML 1.1 would read 1e-6 as a string
    assert recipe.model.lora.r == 8 and recipe.train.clamp is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.bta=0.1"], r"\(defaults\): train.bta: unknown key; did you mean train.beta\?"),
        (["trian.beta=0.1"], r"trian: unknown key; did you mean train\?"),
        (["train.beta=high"], r"train.beta: Input should be a valid number"),
        (["train.beta=-1"], r"train.beta: Input should be greater than 0"),
        (["train.num_epochs=1.5"], r"train.num_epochs: Input should be a valid integer"),
        (
            ["sample.offpolicy_missing=skip"],
            r"sample.offpolicy_missing: Input should be 'error', 'skip_record' or 'skip_candidate'",
        ),
        (["train.loss=kto"], r"train.loss: Input should be 'sigmoid', 'robust', 'ipo', 'hinge' or 'length_normalized'"),
        (["model.lora.alph=4"], r"model.lora.alph: unknown key; did you mean model.lora.alpha\?"),
        (["train.weighting=none", "train.clamp=false"], r"train.clamp only applies to train.weighting: wpo"),
        (
            ["train.weighting=none", "train.normalize_weights=true"],
            r"train.normalize_weights only applies to train.weighting: wpo",
        ),
        (["train.loss=ipo", "train.label_smoothing=0.1"], r"train.label_smoothing applies to sigmoid losses only"),
        (["train.max_prompt_length=600", "train.max_length=512"], r"train.max_prompt_length \(600\) must be below"),
        (["train.loss=length_normalized", "train.reference_model=x"], r"train.reference_model is unused"),
        (["train.loss_chunk_size=-1"], r"train.loss_chunk_size: Input should be greater than or equal to 0"),
        (["score.scorer=judge", "score.function=a:b"], r"score.function is only used by score.scorer: python"),
        (["stages=[train, pair]"], r"stages must be unique and in pipeline order"),
        (["rounds=2", "stages=[train, eval]"], r"rounds: 2 re-samples .* \(missing \['sample', 'score', 'pair'\]\)"),
        (["rounds=2", "sample.n=0", "sample.offpolicy_fields=[a, b]"], r"rounds: 2 needs on-policy samples"),
        (["rounds=2", "train.pairs=p.jsonl"], r"train.pairs is set, but with rounds: 2 each round must read its own"),
        (["rounds=0"], r"rounds: Input should be greater than 0"),
        (
            ["eval.compare_to=base_model", "eval.reference_generator=gpt"],
            r"eval.reference_generator is only used by eval.compare_to: reference",
        ),
        (["eval.measures={chrf: a:b}"], r"eval.measures.chrf: a measure needs its own name"),
        (["train.loss=robust"], r"train.loss: robust needs train.label_smoothing > 0"),
        (
            ["train.simpo_gamma=0.5"],
            r"train.simpo_gamma is SimPO's margin for train.loss: length_normalized \(train.loss "
            r"is 'sigmoid'\)",
        ),
        (
            ["model.dtype=bfloat16"],
            r"model.dtype bfloat16 with full fine-tuning \(model.lora is null\) keeps the trained "
            r"weights in bfloat16, where a step of train.learning_rate 5e-06 rounds away",
        ),
        (["train"], r"override 'train' is not of the form key=value"),
        (["seed.x=1"], r"override 'seed.x=1': seed is not a section"),
    ],
)
def test_invalid_recipes_fail_with_the_key_path(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, ["seed=1", *overrides])


def test_low_precision_weights_are_fine_for_lora_inference_or_when_asked_for():
    assert load_recipe(None, ["model.dtype=bfloat16", "model.lora={r: 8}"]).model.dtype == "bfloat16"
    assert load_recipe(None, ["model.dtype=float16", "stages=[sample, score]"]).model.dtype == "float16"
    assert load_recipe(None, ["model.dtype=bfloat16", "train.low_precision_weights=true"]).train.low_precision_weights


def test_the_chunked_loss_is_the_default():
    assert load_recipe(None, []).train.loss_chunk_size > 0
    assert load_recipe(None, ["train.loss_chunk_size=0"]).train.loss_chunk_size == 0  # the full-logits path


def test_errors_name_the_recipe_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  beta: 0.1\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.warmup: unknown key; did you mean train.warmup_ratio\?"):
        load_recipe(recipe)
    recipe.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: invalid YAML"):
        load_recipe(recipe)
    recipe.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe must be a mapping"):
        load_recipe(recipe)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_overrides_parse_values_as_yaml():
    data = apply_overrides({"train": {"beta": 0.1}}, ["train.beta=2e-2", "stages=[train]", "model.lora.r=4"])
    assert data == {"train": {"beta": 0.02}, "stages": ["train"], "model": {"lora": {"r": 4}}}
    recipe = load_recipe(None, ["train.learning_rate=3e-7", "model.lora={r: 4, alpha: 8}"])
    assert recipe.train.learning_rate == 3e-7 and recipe.model.lora.alpha == 8


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_dpo_ablation_differs_from_the_quickstart_only_in_the_weighting():
    """WPO vs DPO means something only if everything else is equal: pairs, hyperparameters, eval settings."""
    quickstart, ablation = (
        load_recipe(RECIPES[0].parent / name) for name in ("quickstart.yaml", "quickstart-dpo.yaml")
    )
    assert ablation.train.pairs == f"{quickstart.output_dir}/pair/pairs.jsonl"
    assert ablation.train.weighting == "none" and quickstart.train.weighting == "wpo"
    differing = {key for key, value in ablation.train if getattr(quickstart.train, key) != value}
    assert differing == {"pairs", "weighting"}
    assert ablation.model == quickstart.model and ablation.seed == quickstart.seed
    differing = {key for key, value in ablation.eval if getattr(quickstart.eval, key) != value}
    assert differing == {"generator_name"}  # the same prompts, base, measures and judge


def test_mixed_precision_no_is_written_plainly(tmp_path):
    """YAML reads a plain `no` as false; the documented value `no` still loads, from a recipe and from an override,
    and anything else that is not a value names the key."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  mixed_precision: no\n")
    assert load_recipe(recipe).train.mixed_precision == "no"
    assert load_recipe(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_recipe(None, ["train.mixed_precision='no'"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: .*'bf16'.*\(got True\)"):
        load_recipe(None, ["train.mixed_precision=yes"])


def test_a_round_is_a_validated_one_round_recipe(tmp_path):
    """Round k ≥ 2 writes under output_dir/round-k and samples from round k-1's model; the rest of the recipe, its
    source and its unset defaults carry over; round 1 is the recipe with rounds: 1."""
    recipe = load_recipe(
        None,
        [f"output_dir={tmp_path}", "rounds=3", "model.dtype=float32", "sample.n=2", "model.lora={r: 4}"],
    )
    first, third = recipe.for_round(1), recipe.for_round(3, str(tmp_path / "round-2-final"))
    assert first.rounds == 1 and first.output_dir == str(tmp_path) and first.model == recipe.model
    assert third.rounds == 1 and third.output_dir == str(tmp_path / "round-3")
    assert third.model.name_or_path == str(tmp_path / "round-2-final") and third.model.lora == recipe.model.lora
    assert (third.sample, third.source) == (recipe.sample, recipe.source)
    assert not third.sample.explicitly_set("temperature") and third.sample.explicitly_set("n")
