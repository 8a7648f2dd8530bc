"""Recipes: YAML → one typed, validated config per stage, with `key=value` overrides.

Validation happens once, on load: an unknown key, a wrong type or an invalid combination of keys fails with the
key's dotted path (and the recipe's file name), before any model is touched. Keys that only make sense together are
checked here too, so nothing combines silently at run time.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wpo.errors import ConfigError

STAGES: tuple[str, ...] = ("sample", "score", "pair", "train", "eval", "export")
LossType = Literal["sigmoid", "robust", "ipo", "hinge", "length_normalized"]  # `wpo.train.loss` implements each
REFERENCE_FREE_LOSSES: frozenset[str] = frozenset({"length_normalized"})
EMBEDDED_DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


def unhashed(default: Any = None, **constraints: Any) -> Any:
    """A key that changes how a stage runs or is observed, not what it computes (batch sizes, logging, input paths
    whose content is fingerprinted on its own): left out of the stage's config hash, so changing it never blocks a
    resume or reruns a finished stage. Declared here, on the field, and nowhere else."""
    return Field(default, json_schema_extra={"hashed": False}, **constraints)


class Section(BaseModel):
    """Every config section: unknown keys fail, types are strict (an int is still accepted where a float is)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    def explicitly_set(self, name: str) -> bool:
        return name in self.model_fields_set

    def hashed_settings(self) -> dict[str, Any]:
        """The section as JSON without its `unhashed` keys: what a stage's config hash covers."""
        fields = type(self).model_fields
        skip = {name for name, field in fields.items() if (field.json_schema_extra or {}).get("hashed") is False}
        settings = self.model_dump(mode="json", exclude=skip)
        for name in settings:  # nested sections (an endpoint, a list of them) leave out their own unhashed keys
            value = getattr(self, name)
            if isinstance(value, Section):
                settings[name] = value.hashed_settings()
            elif isinstance(value, list) and value and all(isinstance(item, Section) for item in value):
                settings[name] = [item.hashed_settings() for item in value]
        return settings


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(Section):
    name_or_path: str = EMBEDDED_DEFAULT_MODEL
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    lora: LoraConfig | None = None


class EndpointConfig(Section):
    """An OpenAI-compatible chat endpoint (`wpo.endpoints`); the API key comes from the variable named in
    `api_key_env`, never stored. `base_url` may be a list of servers of the same model: requests are spread over them."""

    # where and how to ask do not change the answers: only the model and what is sent (extra_body) key them
    base_url: str | list[str] = unhashed(...)
    model: str
    api_key_env: str | None = unhashed()
    timeout: float = unhashed(60.0, gt=0.0)
    max_retries: int = unhashed(5, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # server extensions, e.g. {grammar: "root ::= [0-9]"}
    max_concurrency: int = unhashed(8, gt=0)

    @model_validator(mode="after")
    def _some_url(self) -> EndpointConfig:
        if isinstance(self.base_url, list) and not self.base_url:
            raise ValueError("base_url: give a URL, or a non-empty list of URLs")
        return self


class OffPolicyModelConfig(EndpointConfig):
    """A model that answers every prompt once, joining the pool as `offpolicy:<name>` (the seed's GPT-4-turbo)."""

    name: str = Field(pattern=r"^[\w.-]+$")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(2048, gt=0)


class SampleConfig(Section):
    prompts: str | None = unhashed()
    n: int = Field(5, ge=0)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(512, gt=0)
    stop: list[str] = Field(default_factory=list)
    backend: Literal["transformers", "llamacpp", "vllm", "openai"] = "transformers"
    endpoint: EndpointConfig | None = None  # the server(s) behind sample.backend: openai
    batch_size: int = unhashed(8, gt=0)
    # llamacpp: samples decoded together, one llama.cpp sequence (and KV stream) each; unset, a whole stage batch
    # (batch_size x n) at once, up to llama.cpp's 256. Text does not depend on it; KV memory grows with it.
    parallel_sequences: int | None = unhashed(None, gt=0, le=256)
    # llamacpp: CPU threads, all cores when unset. Its threads spin at each layer's barrier, so on a machine shared
    # with other work fewer threads than cores can be many times faster. Text does not depend on it.
    threads: int | None = unhashed(None, gt=0)
    gguf: str | None = None
    context_length: int = Field(4096, gt=0)
    tensor_parallel_size: int = Field(1, gt=0)
    offpolicy_fields: list[str] = Field(default_factory=list)
    offpolicy_models: list[OffPolicyModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _backend_and_pool(self) -> SampleConfig:
        offpolicy = len(self.offpolicy_fields) + len(self.offpolicy_models)
        if self.n + offpolicy < 2:
            raise ValueError(
                f"sample.n ({self.n}) plus sample.offpolicy_fields and sample.offpolicy_models ({offpolicy}) must "
                "give at least 2 candidates per prompt to form a pair"
            )
        sources = [*self.offpolicy_fields, *(model.name for model in self.offpolicy_models)]
        if len(set(sources)) != len(sources):
            raise ValueError(f"sample.offpolicy_fields and sample.offpolicy_models names must be unique (each is a "
                             f"source offpolicy:<name>), got {sources}")  # fmt: skip
        if self.backend == "openai" and self.top_k:
            raise ValueError(
                "sample.top_k is not part of the OpenAI API (sample.backend is 'openai'): pass it through "
                "sample.endpoint.extra_body (vLLM and llama.cpp read top_k there)"
            )
        if (self.backend == "openai") != (self.endpoint is not None):
            raise ValueError(f"sample.endpoint is the server of sample.backend: openai, and only of it (backend is "
                             f"{self.backend!r}, endpoint is {'set' if self.endpoint else 'not set'})")  # fmt: skip
        misplaced = [key for key in ("gguf", "parallel_sequences", "threads") if getattr(self, key) is not None]
        if misplaced and self.backend != "llamacpp":
            raise ValueError(f"sample.{misplaced[0]} is only used by sample.backend: llamacpp (backend is "
                             f"{self.backend!r})")  # fmt: skip
        if self.tensor_parallel_size > 1 and self.backend != "vllm":
            raise ValueError("sample.tensor_parallel_size > 1 needs sample.backend: vllm")
        return self


class ScoreConfig(Section):
    candidates: str | None = unhashed()
    scorer: Literal["reward_model", "judge", "python"] = "reward_model"
    model: str | None = None
    function: str | None = None
    judge: EndpointConfig | None = None
    batch_size: int = unhashed(8, gt=0)
    max_length: int = Field(4096, gt=1)

    @model_validator(mode="after")
    def _settings_match_scorer(self) -> ScoreConfig:
        for key, scorer in (("function", "python"), ("model", "reward_model"), ("judge", "judge")):
            if getattr(self, key) is not None and self.scorer != scorer:
                raise ValueError(f"score.{key} is only used by score.scorer: {scorer} (scorer is {self.scorer!r})")
        return self

    def required(self, key: str):
        """A setting the chosen scorer cannot run without, or a ConfigError naming it."""
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"score.{key} is required by score.scorer: {self.scorer}")
        return value


class PairConfig(Section):
    candidates: str | None = unhashed()
    min_margin: float = Field(0.0, ge=0.0)
    length_unit: Literal["tokens", "characters"] = "tokens"


class TrainConfig(Section):
    pairs: str | None = unhashed()
    reference_model: str | None = None
    loss: LossType = "sigmoid"
    weighting: Literal["wpo", "none"] = "wpo"
    clamp: bool = True
    beta: float = Field(0.1, gt=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    sft_weight: float = Field(0.0, ge=0.0)
    simpo_gamma: float = Field(0.0, ge=0.0)
    # bf16 compute (autocast) over fp32 master weights and optimizer state; the loss's statistics stay fp32, and the
    # reference pass runs in the same precision, so the first step still sees z = 0
    mixed_precision: Literal["bf16", "no"] = "no"
    report_to: list[Literal["tensorboard", "trackio"]] = unhashed(
        ["tensorboard"]
    )  # trackio: pip install 'wpo[trackio]'
    learning_rate: float = Field(5e-7, ge=0.0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    num_epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    per_device_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    global_batch_size: int | None = Field(None, gt=0)
    max_length: int = Field(1024, gt=1)
    max_prompt_length: int | None = Field(512, gt=0)
    logging_steps: int = unhashed(10, gt=0)
    save_steps: int = unhashed(500, ge=0)
    save_total_limit: int | None = unhashed(2, gt=0)
    # response tokens projected at a time; 0 = full logits (wpo.train.chunked_loss). Only memory (and float rounding)
    # changes with it: a run that ran out of memory can resume with a smaller one.
    loss_chunk_size: int = unhashed(256, ge=0)
    # a pair's prompt computed once for both answers (wpo.train.tokenize.PairBatch) rather than once per answer:
    # auto where that costs fewer FLOPs (PromptSharing), always, or never; models whose attention cannot take the
    # custom mask get padded rows, with one logged line
    share_prompts: Literal["auto", "always", "never"] = unhashed("auto")
    resume: Literal["auto", "never"] = unhashed("auto")
    # full fine-tuning of bf16/fp16 weights rounds small updates away: refused unless asked for (low_precision_problem)
    low_precision_weights: bool = False
    gradient_checkpointing: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_epsilon: float = Field(1e-8, gt=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _keys_combine(self) -> TrainConfig:
        if self.explicitly_set("clamp") and self.weighting == "none":
            raise ValueError("train.clamp only applies to train.weighting: wpo (weighting is 'none')")
        if self.label_smoothing and self.loss not in ("sigmoid", "robust", "length_normalized"):
            raise ValueError(f"train.label_smoothing applies to sigmoid losses only (train.loss is {self.loss!r})")
        if self.loss == "robust" and not self.label_smoothing:
            raise ValueError(
                "train.loss: robust needs train.label_smoothing > 0, the label-flip rate it corrects for "
                "(with 0 it is train.loss: sigmoid)"
            )
        if self.simpo_gamma and self.loss != "length_normalized":
            raise ValueError(
                f"train.simpo_gamma is SimPO's margin for train.loss: length_normalized (train.loss is {self.loss!r})"
            )
        if self.reference_model is not None and self.loss in REFERENCE_FREE_LOSSES:
            raise ValueError(f"train.reference_model is unused by the reference-free train.loss: {self.loss}")
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be below train.max_length "
                f"({self.max_length}) to leave room for the response"
            )
        return self


class EvalConfig(Section):
    model: str | None = None
    prompts: str | None = unhashed()
    compare_to: Literal["reference", "base_model"] = "reference"
    reference_field: str = "reference"
    reference_generator: str = "reference"
    reward: str | None = None
    measures: dict[str, str] = Field(default_factory=dict)
    content_margin: float = Field(2.0, ge=0.0)
    min_length_ratio: float = Field(0.5, ge=0.0)
    repetition_margin: float = Field(0.05, ge=0.0)
    generator_name: str | None = None
    backend: Literal["transformers", "llamacpp", "vllm"] = "transformers"
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = unhashed(8, gt=0)
    judge: Literal["api", "reward_model", "python"] = "api"
    api: EndpointConfig | None = None
    reward_model: str | None = None
    function: str | None = None
    instruction_difficulty: str | None = None
    gamed_baselines: str | None = None
    leaderboard: str | None = unhashed()

    @model_validator(mode="after")
    def _settings_match_judge(self) -> EvalConfig:
        for key, judge in (("api", "api"), ("reward_model", "reward_model"), ("function", "python")):
            if getattr(self, key) is not None and self.judge != judge:
                raise ValueError(f"eval.{key} is only used by eval.judge: {judge} (judge is {self.judge!r})")
        if self.compare_to == "base_model" and self.explicitly_set("reference_generator"):
            raise ValueError(
                "eval.reference_generator is only used by eval.compare_to: reference (compare_to is 'base_model')"
            )
        for name in self.measures:
            if name in ("reward", "chrf", "length_chars", "distinct_2") or not name.isidentifier():
                raise ValueError(
                    f"eval.measures.{name}: a measure needs its own name (an identifier other than "
                    "reward, chrf, length_chars, distinct_2)"
                )
        if self.gamed_baselines is not None and self.instruction_difficulty is None:
            raise ValueError("eval.gamed_baselines needs eval.instruction_difficulty (AlpacaEval's formula uses both)")
        return self


class ExportConfig(Section):
    model: str | None = None
    quantizations: list[str] = Field(default_factory=lambda: ["Q4_K_M"])
    name: str | None = None
    license: str | None = None
    verify_text: str = "builtin:heldout.txt"
    verify_tokens: int = Field(256, gt=8)


ROUND_STAGES: tuple[str, ...] = ("sample", "score", "pair", "train")


class Recipe(Section):
    output_dir: str = "runs/wpo"
    seed: int = 42
    rounds: int = Field(1, gt=0)
    stages: list[Literal["sample", "score", "pair", "train", "eval", "export"]] = Field(
        default_factory=lambda: list(STAGES)
    )
    on_bad_record: Literal["error", "skip"] = "error"
    model: ModelConfig = Field(default_factory=ModelConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pair: PairConfig = Field(default_factory=PairConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _stages_in_order(self) -> Recipe:
        if not self.stages:
            raise ValueError("stages must name at least one stage")
        order = [STAGES.index(stage) for stage in self.stages]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be unique and in pipeline order {list(STAGES)}, got {self.stages}")
        if self.rounds > 1:
            missing = [stage for stage in ROUND_STAGES if stage not in self.stages]
            if missing:
                raise ValueError(f"rounds: {self.rounds} re-samples and retrains each round, so stages must include "
                                 f"{list(ROUND_STAGES)} (missing {missing})")  # fmt: skip
            if self.sample.n == 0:
                raise ValueError(f"rounds: {self.rounds} needs on-policy samples each round (sample.n is 0)")
            for key in ("score.candidates", "pair.candidates", "train.pairs"):
                section, name = key.split(".")
                if getattr(getattr(self, section), name) is not None:
                    raise ValueError(f"{key} is set, but with rounds: {self.rounds} each round must read its own data")
        if "train" in self.stages:
            problem = low_precision_problem(self.model.dtype, self)
            if problem:
                raise ValueError(problem)
        return self

    def stage_dir(self, stage: str) -> Path:
        return Path(self.output_dir) / stage

    def round_output_dir(self, round_number: int) -> Path:
        """Round 1 writes under `output_dir` (the documented layout); round k ≥ 2 under `output_dir/round-k`."""
        return Path(self.output_dir) if round_number == 1 else Path(self.output_dir) / f"round-{round_number}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def low_precision_problem(dtype: str, recipe: Recipe) -> str | None:
    """Why full fine-tuning in `dtype` (resolved, or as written) would quietly not train, unless the recipe asks for
    it with train.low_precision_weights: true."""
    if dtype not in ("bfloat16", "float16") or recipe.model.lora is not None or recipe.train.low_precision_weights:
        return None
    return (f"model.dtype {dtype} with full fine-tuning (model.lora is null) keeps the trained weights in {dtype}, "
            f"where a step of train.learning_rate {recipe.train.learning_rate:g} rounds away against the weights' "
            "resolution; load float32 weights (bf16 compute comes from the launcher's mixed_precision), train LoRA, "
            "or set train.low_precision_weights: true to train so anyway")  # fmt: skip


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-6` as a float, as YAML 1.2 does (PyYAML's 1.1 rules make it a string)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings; values are parsed as YAML (`train.beta=0.05`, `stages=[train]`)."""
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value")
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        try:
            node[parts[-1]] = parse_yaml(raw_value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {override!r}: value is not valid YAML ({exc.problem})") from None
    return data


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        path = ".".join(str(p) for p in loc) or "(recipe)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(Recipe, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?" if close else ""
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif error["type"] == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{source}: {message}" if loc == () else f"{source}: {path}: {message}")
        else:
            lines.append(f"{source}: {path}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(dict.fromkeys(lines))


def load_recipe(path: str | Path | dict[str, Any] | None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file, a mapping (as a notebook builds one) or the defaults (`None`), then apply
    `key=value` overrides."""
    if isinstance(path, dict):
        try:
            return Recipe.model_validate(apply_overrides(copy.deepcopy(path), overrides or []))
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, "(mapping)")) from None
    source = str(path) if path is not None else "(defaults)"
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"recipe {source} does not exist") from None
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {source} is not valid UTF-8") from None
        try:
            data = parse_yaml(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def config_hash(payload: Any) -> str:
    """A stable short hash of any JSON-serializable config fragment."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
