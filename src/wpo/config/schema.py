"""The recipe's schema: one typed section per stage, each key with its default and the description `wpo keys`
prints; keys that only make sense together are checked here, so nothing combines silently at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

STAGES: tuple[str, ...] = ("sample", "score", "pair", "train", "eval", "export")
LossType = Literal["sigmoid", "robust", "ipo", "hinge", "length_normalized"]  # `wpo.training.loss` implements each
REFERENCE_FREE_LOSSES: frozenset[str] = frozenset({"length_normalized"})
EMBEDDED_DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


def unhashed(default: Any = None, **constraints: Any) -> Any:
    """A key that changes how a stage runs or is observed, not what it computes (batch sizes, logging, input paths
    whose content is fingerprinted on its own): left out of the stage's config hash, so changing it never blocks a
    resume or reruns a finished stage. Declared here, on the field, and nowhere else."""
    return Field(default, json_schema_extra={"hashed": False}, **constraints)


class Section(BaseModel):
    """Every config section: unknown keys fail, types are strict (an int is still accepted where a float is)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, use_attribute_docstrings=True)

    def explicitly_set(self, name: str) -> bool:
        """Set in the recipe to something other than its default: a combination check fires on what the user asked
        for, not on a default written out (`wpo config` prints every default, and its output must load again)."""
        return name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].default

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
    """LoRA rank: the inner dimension of each adapter's two low-rank matrices."""
    alpha: int = Field(32, gt=0)
    """LoRA scale numerator: adapter updates are multiplied by alpha / r."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout probability on the adapters' input during training, in [0, 1)."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Names of the modules that get adapters, or all-linear for every linear layer but the output head."""


class ModelConfig(Section):
    name_or_path: str = EMBEDDED_DEFAULT_MODEL
    """The policy (and default reference) model: an HF hub id, a local directory or embedded:NAME."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype the weights load in; auto is bfloat16 on a GPU that supports it, float32 otherwise."""
    trust_remote_code: bool = False
    """Let transformers run the model repository's own Python code (ArmoRM-style reward models need it)."""
    lora: LoraConfig | None = None
    """LoRA adapter settings; null (the default) trains every weight (full fine-tuning)."""


class EndpointConfig(Section):
    """An OpenAI-compatible chat endpoint (`wpo.endpoints`); the API key comes from the variable named in
    `api_key_env`, never stored. `base_url` may be a list of servers of the same model: requests are spread over them."""

    # where and how to ask do not change the answers: only the model and what is sent (extra_body) key them
    base_url: str | list[str] = unhashed(...)
    """The API's base URL, e.g. http://127.0.0.1:8000/v1, or a list of servers to spread requests over."""
    model: str
    """Model name sent with every request."""
    api_key_env: str | None = unhashed()
    """Name of the environment variable holding the API key (never stored); unset: no key is sent."""
    timeout: float = unhashed(60.0, gt=0.0)
    """Seconds to wait for one request before it counts as failed and is retried."""
    max_retries: int = unhashed(5, ge=0)
    """Retries of a request after a timeout, 408/409/429 or 5xx, with exponential backoff."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields sent with every request: server extensions, e.g. {grammar: "root ::= [0-9]"}."""
    max_concurrency: int = unhashed(8, gt=0)
    """Most requests in flight at once."""

    @model_validator(mode="after")
    def _some_url(self) -> EndpointConfig:
        if isinstance(self.base_url, list) and not self.base_url:
            raise ValueError("base_url: give a URL, or a non-empty list of URLs")
        return self


class OffPolicyModelConfig(EndpointConfig):
    """A model that answers every prompt once, joining the pool as `offpolicy:<name>` (the seed's GPT-4-turbo)."""

    name: str = Field(pattern=r"^[\w.-]+$")
    """Source name: answers join the candidates as offpolicy:<name> (letters, digits, '_', '.', '-')."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature of this model's answers (0: greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set with this total probability, in (0, 1]."""
    max_tokens: int = Field(2048, gt=0)
    """Most tokens in each answer."""


class SampleConfig(Section):
    prompts: str | None = unhashed()
    """Prompts to sample for: a JSONL/Parquet file, datasets directory, hub id or builtin:NAME; required."""
    n: int = Field(5, ge=0)
    """Samples drawn from the policy per prompt (0: off-policy candidates only)."""
    temperature: float = Field(0.8, ge=0.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set with this total probability, in (0, 1]."""
    top_k: int = Field(0, ge=0)
    """Sample from the k most likely tokens only (0: off); backend openai takes it in endpoint.extra_body."""
    max_new_tokens: int = Field(512, gt=0)
    """Most tokens generated per sample."""
    stop: list[str] = Field(default_factory=list)
    """Strings that end a sample; its text is cut just before the first one."""
    backend: Literal["transformers", "llamacpp", "vllm", "openai"] = "transformers"
    """Generator: transformers, llamacpp (a GGUF, on CPU), vllm (GPU) or openai (servers: sample.endpoint)."""
    endpoint: EndpointConfig | None = None
    """The server(s) behind sample.backend: openai (required with it, refused otherwise)."""
    batch_size: int = unhashed(8, gt=0)
    """Prompts generated for together, each with its n samples."""
    # llamacpp: samples decoded together, one llama.cpp sequence (and KV stream) each; unset, a whole stage batch
    # (batch_size x n) at once, up to llama.cpp's 256. KV memory grows with it. A sample's text is fixed by the seed,
    # the GGUF, the CPU and this (on AVX2 it came out the same for any value; on AVX512 it does not).
    parallel_sequences: int | None = unhashed(None, gt=0, le=256)
    """llamacpp: samples decoded together, 1–256 (unset: batch_size × n, up to 256); KV memory grows with it."""
    # llamacpp: CPU threads, all cores when unset. Its threads spin at each layer's barrier, so on a machine shared
    # with other work fewer threads than cores can be many times faster. Like parallel_sequences, it may change the
    # text on some CPUs (docs/performance.md).
    threads: int | None = unhashed(None, gt=0)
    """llamacpp: CPU threads (unset: all cores); on a shared machine fewer can be many times faster."""
    gguf: str | None = None
    """llamacpp: the GGUF file to sample from; unset: an F16 conversion of model.name_or_path."""
    context_length: int = Field(4096, gt=0)
    """llamacpp: most tokens per sequence (prompt plus max_new_tokens); a longer prompt fails."""
    tensor_parallel_size: int = Field(1, gt=0)
    """vllm: GPUs the model is split over (above 1 needs backend vllm)."""
    offpolicy_fields: list[str] = Field(default_factory=list)
    """Prompt-record fields whose text joins the candidates as offpolicy:<field>, e.g. [reference]."""
    # error: a record without one (absent, null or blank) is a bad record, so on_bad_record decides (stop at its
    # file:line, or skip it counted as missing_offpolicy); skip_record drops it whatever on_bad_record says;
    # skip_candidate keeps it and its on-policy samples, counted by field in the manifest's offpolicy_missing
    offpolicy_missing: Literal["error", "skip_record", "skip_candidate"] = "error"
    """A record without an off-policy field: error (a bad record, per on_bad_record), skip_record or skip_candidate."""
    offpolicy_models: list[OffPolicyModelConfig] = Field(default_factory=list)
    """API models that answer every prompt once, each joining the candidates as offpolicy:<name>."""

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
            raise ValueError(
                f"sample.offpolicy_fields and sample.offpolicy_models names must be unique (each is a "
                f"source offpolicy:<name>), got {sources}"
            )
        if self.backend == "openai" and self.top_k:
            raise ValueError(
                "sample.top_k is not part of the OpenAI API (sample.backend is 'openai'): pass it through "
                "sample.endpoint.extra_body (vLLM and llama.cpp read top_k there)"
            )
        if (self.backend == "openai") != (self.endpoint is not None):
            raise ValueError(
                f"sample.endpoint is the server of sample.backend: openai, and only of it (backend is "
                f"{self.backend!r}, endpoint is {'set' if self.endpoint else 'not set'})"
            )
        misplaced = [key for key in ("gguf", "parallel_sequences", "threads") if getattr(self, key) is not None]
        if misplaced and self.backend != "llamacpp":
            raise ValueError(
                f"sample.{misplaced[0]} is only used by sample.backend: llamacpp (backend is {self.backend!r})"
            )
        if self.tensor_parallel_size > 1 and self.backend != "vllm":
            raise ValueError("sample.tensor_parallel_size > 1 needs sample.backend: vllm")
        return self


class ScoreConfig(Section):
    candidates: str | None = unhashed()
    """Candidates to score; unset: this run's sample/candidates.jsonl."""
    scorer: Literal["reward_model", "judge", "python"] = "reward_model"
    """How to score: reward_model (score.model), judge (score.judge, an API) or python (score.function)."""
    model: str | None = None
    """scorer reward_model: the sequence-classification reward model (hub id or directory)."""
    function: str | None = None
    """scorer python: module:function(messages, text[, record]) -> float, from the working dir or PYTHONPATH."""
    judge: EndpointConfig | None = None
    """scorer judge: the OpenAI-compatible endpoint asked to rate each candidate with one digit 0–9."""
    batch_size: int = unhashed(8, gt=0)
    """scorer reward_model: conversations scored per forward pass."""
    max_length: int = Field(4096, gt=1)
    """scorer reward_model: most tokens per conversation; longer ones are cut from the left and counted."""

    @model_validator(mode="after")
    def _settings_match_scorer(self) -> ScoreConfig:
        for key, scorer in (("function", "python"), ("model", "reward_model"), ("judge", "judge")):
            if getattr(self, key) is not None and self.scorer != scorer:
                raise ValueError(f"score.{key} is only used by score.scorer: {scorer} (scorer is {self.scorer!r})")
        return self


class PairConfig(Section):
    candidates: str | None = unhashed()
    """Scored candidates to pair; unset: this run's score/candidates.jsonl."""
    min_margin: float = Field(0.0, ge=0.0)
    """Smallest chosen-minus-rejected score gap that makes a pair; a prompt below it gives none."""
    length_unit: Literal["tokens", "characters"] = "tokens"
    """Unit of response length for tie-breaks: tokens (the policy's tokenizer) or characters."""
    # allow by default, as measured on the quickstart's dev prompts (docs/reliability.md): with an on-policy pool
    # never_chosen dropped 55 of 85 pairs and the gains in reward and content with them; with the hybrid pool it
    # changed no pair. never_chosen or drop keep a cut-off answer from being chosen over a complete one.
    cut_off: Literal["allow", "never_chosen", "drop"] = "allow"
    """Answers cut off at the token limit (finish_reason length): allow, never_chosen, or drop them."""


class TrainConfig(Section):
    pairs: str | None = unhashed()
    """Preference pairs to train on (TRL conversational format); unset: this run's pair/pairs.jsonl."""
    reference_model: str | None = None
    """Frozen reference model of the loss; unset: the untrained policy itself (no second copy)."""
    # keyed by what determines the log-probs (wpo.training.reference_logps.cache_key), so runs that differ only in what
    # comes after them (beta, the loss, the learning rate) read one pass; `wpo sweep` points its runs at one directory
    reference_cache_dir: str | None = unhashed()
    """Directory of the reference log-probs cache, shareable between runs; unset: <output_dir>/train/reference_cache."""
    loss: LossType = "sigmoid"
    """Preference loss: sigmoid (DPO), robust, ipo, hinge or length_normalized (SimPO, reference-free)."""
    weighting: Literal["wpo", "none"] = "wpo"
    """wpo scales each pair's loss by its weight, the policy's likelihood of both answers; none: unweighted."""
    clamp: bool = True
    """Cap the WPO weight at 1, as the released code does; only with weighting: wpo."""
    # the paper's code does not normalize: the weights (averaging ~0.5 in the quickstart) also scale the loss, which
    # AdamW mostly cancels (gradient clipping does not); normalized, they only share each step out among its pairs
    # (docs/training.md, "What the WPO weights did")
    normalize_weights: bool = False
    """Scale the WPO weights to mean 1 over each optimizer step's pairs (all processes); only with weighting: wpo."""
    beta: float = Field(0.1, gt=0.0)
    """DPO's β: how far the policy may move from the reference (the seed used 0.01)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """Assumed label-flip rate ε in [0, 0.5) for sigmoid-type losses; robust needs it above 0."""
    sft_weight: float = Field(0.0, ge=0.0)
    """Weight α of the chosen answer's per-token NLL added to the loss (RPO; 0: off)."""
    simpo_gamma: float = Field(0.0, ge=0.0)
    """SimPO's target margin γ, only for loss: length_normalized."""
    # bf16 compute (autocast) over fp32 master weights and optimizer state; the loss's statistics stay fp32, and the
    # reference pass runs in the same precision, so the first step still sees z = 0
    # auto: bf16 where the CPU has AMX or AVX512-BF16 units or the GPU supports bf16, else no
    # (wpo.training.auto_precision); the default stays no until a measurement on such a CPU says auto pays there
    mixed_precision: Literal["auto", "bf16", "no"] = "no"
    """bf16 (autocast over fp32 masters), no (the weights' dtype), or auto: bf16 where the CPU or GPU has bf16 units."""
    # weights converted from a finer format (fp16, a dequantized GGUF) can sit halfway between two bf16 values, where
    # any update flips the forward's rounding: at lr 1e-6 the embedded SmolLM2 moved ~12x further along the gradient
    # than fp32 (benchmarks/bf16_update.py, wpo.training.precision); rounding them changes nothing the forward saw
    bf16_ties: Literal["round", "keep"] = "round"
    """Under bf16 compute, round master weights exactly halfway between two bf16 values as the forward does, or keep."""
    report_to: list[Literal["tensorboard", "trackio"]] = unhashed(
        ["tensorboard"]
    )  # trackio: pip install 'wpo[trackio]'
    """Trackers that get the training metrics: tensorboard and/or trackio."""
    # 5e-6 moves a small model (135M-1B) in a short first run; at 5e-7 such a run left every answer as it was. The
    # seed's 9B recipe, with 128 pairs per step, sets its card's 1e-6.
    learning_rate: float = Field(5e-6, ge=0.0)
    """Peak learning rate of AdamW (large models and batches usually want less, e.g. the seed's 1e-6)."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule: cosine, linear, constant (no warmup) or constant_with_warmup."""
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Fraction of the training steps over which the learning rate warms up from 0."""
    num_epochs: int = Field(1, gt=0)
    """Passes over the pairs (max_steps, when set, overrides it)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimizer steps to train, cycling epochs, instead of num_epochs' steps; unset: off."""
    per_device_batch_size: int = Field(1, gt=0)
    """Pairs per micro-batch on each process."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step."""
    global_batch_size: int | None = Field(None, gt=0)
    """Expected pairs per optimizer step (per-device batch × accumulation × processes); else it fails."""
    max_length: int = Field(1024, gt=1)
    """Most tokens of prompt plus response per pair; the response is cut to fit."""
    max_prompt_length: int | None = Field(512, gt=0)
    """Most prompt tokens (cut from the left); null: never cut, and a too-long prompt is a bad record."""
    logging_steps: int = unhashed(10, gt=0)
    """Log metrics every this many optimizer steps (also at step 1 and the last step)."""
    save_steps: int = unhashed(500, ge=0)
    """Save a checkpoint every this many optimizer steps (0: only at the end)."""
    save_total_limit: int | None = unhashed(2, gt=0)
    """Checkpoints kept, the newest; null keeps them all."""
    # response tokens projected at a time; 0 = full logits (wpo.training.chunked_loss). Only memory (and float rounding)
    # changes with it: a run that ran out of memory can resume with a smaller one.
    loss_chunk_size: int = unhashed(256, ge=0)
    """Response tokens projected to logits at a time (0: full logits); changes memory, not results."""
    # a pair's prompt computed once for both answers (wpo.training.tokenize.PairBatch) rather than once per answer:
    # auto where that costs fewer FLOPs (PromptSharing), always, or never; models whose attention cannot take the
    # custom mask get padded rows, with one logged line
    share_prompts: Literal["auto", "always", "never"] = unhashed("auto")
    """Compute a pair's prompt once for both answers: auto (when cheaper), always or never."""
    resume: Literal["auto", "never"] = unhashed("auto")
    """auto continues from the newest checkpoint; never removes old checkpoints and starts over."""
    # full fine-tuning of bf16/fp16 weights rounds small updates away: refused unless asked for (low_precision_problem)
    low_precision_weights: bool = False
    """Allow full fine-tuning of bf16/fp16 weights, where small updates can round away."""
    gradient_checkpointing: bool = False
    """Recompute activations during backward to save memory, at extra compute."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay (biases and norm weights get none)."""
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    """AdamW's β1: decay rate of the gradient's running mean."""
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    """AdamW's β2: decay rate of the squared gradient's running mean."""
    adam_epsilon: float = Field(1e-8, gt=0.0)
    """AdamW's ε, added to the denominator for numerical stability."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the gradients' global norm to this; null: no clipping."""
    # full fine-tuning holds 16 bytes a parameter (weights, gradients, two moments): wpo.training.optimizers
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    """adamw (torch), or adamw_8bit: moments in 8 bits (bitsandbytes, pip install 'wpo[lowbit]'), 4x less state."""
    optimizer_in_backward: bool = False
    """Step each parameter as soon as backward has its gradient and free it; needs max_grad_norm: null."""
    # inductor fuses the elementwise work between the matmuls (wpo.training.layer_compile): the steps run faster once
    # compiled, the first ones pay the compile; only float rounding changes, so, like loss_chunk_size, not hashed
    compile: bool = unhashed(False)
    """Compile each decoder layer with torch.compile: faster steps after a compile of tens of seconds; for long runs."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_as_written(cls, value: Any) -> Any:
        """YAML reads a plain `no` as false: `mixed_precision: no` and `train.mixed_precision=no` mean the value no."""
        return "no" if value is False else value

    @model_validator(mode="after")
    def _keys_combine(self) -> TrainConfig:
        if self.explicitly_set("clamp") and self.weighting == "none":
            raise ValueError("train.clamp only applies to train.weighting: wpo (weighting is 'none')")
        if self.normalize_weights and self.weighting == "none":
            raise ValueError("train.normalize_weights only applies to train.weighting: wpo (weighting is 'none')")
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
        if self.optimizer_in_backward and self.max_grad_norm is not None:
            raise ValueError(
                "train.optimizer_in_backward steps each parameter before the others have gradients, so there is no "
                f"global norm to clip: set train.max_grad_norm: null (it is {self.max_grad_norm})"
            )
        if self.optimizer_in_backward and self.gradient_accumulation_steps > 1:
            raise ValueError(
                "train.optimizer_in_backward steps at every backward: it needs train.gradient_accumulation_steps: 1 "
                f"(it is {self.gradient_accumulation_steps}); raise train.per_device_batch_size instead"
            )
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be below train.max_length "
                f"({self.max_length}) to leave room for the response"
            )
        return self


class EvalConfig(Section):
    model: str | None = None
    """Model to evaluate; unset: this run's trained model, else model.name_or_path."""
    prompts: str | None = unhashed()
    """Eval set: prompts with reference answers, or an alpaca_eval eval set / outputs file; required."""
    compare_to: Literal["reference", "base_model"] = "reference"
    """Baseline the model is judged against: the prompts' reference answers, or the base model's answers."""
    reference_field: str = "reference"
    """Prompt-record field that holds the reference answer."""
    reference_generator: str = "reference"
    """Name of the reference answers' generator where a record names none (compare_to: reference)."""
    reward: str | None = None
    """Held-out task reward of both models' answers: module:function(messages, text[, record]) -> float."""
    measures: dict[str, str] = Field(default_factory=dict)
    """Extra held-out measures, {name: module:function}; each must improve for the verdict better."""
    content_margin: float = Field(2.0, ge=0.0)
    """Most chrF points (0–100) the model may lose to the base (delta CI's low end) and still be better."""
    min_length_ratio: float = Field(0.5, ge=0.0)
    """Least mean answer length, as a fraction of the base model's, for the verdict better."""
    repetition_margin: float = Field(0.05, ge=0.0)
    """Most distinct-2 drop from the base (delta CI's low end) allowed for the verdict better."""
    generator_name: str | None = None
    """The model's leaderboard name; unset: <base model>-wpo for a trained run, else the model's name."""
    backend: Literal["transformers", "llamacpp", "vllm"] = "transformers"
    """Generator of the eval answers: transformers, llamacpp or vllm."""
    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature of the eval answers (0: greedy, the default)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: sample from the smallest token set with this total probability, in (0, 1]."""
    max_new_tokens: int = Field(512, gt=0)
    """Most tokens generated per eval answer."""
    batch_size: int = unhashed(8, gt=0)
    """Eval prompts generated for together."""
    judge: Literal["api", "alpaca_eval", "reward_model", "python"] = "api"
    """Judge of model vs baseline: api, alpaca_eval (eval.annotator via eval.api), reward_model or python."""
    api: EndpointConfig | None = None
    """judge api or alpaca_eval: the OpenAI-compatible server that judges (wpo's pairwise prompt, or the annotator's)."""
    annotator: str | None = None
    """judge alpaca_eval: an annotator config shipped with alpaca_eval (weighted_alpaca_eval_gpt4_turbo) or its path."""
    reward_model: str | None = None
    """judge reward_model: the reward model that scores both answers (hub id or directory)."""
    function: str | None = None
    """judge python: module:function(messages, reference, output[, record]) -> P(model better)."""
    instruction_difficulty: str | None = None
    """CSV of AlpacaEval's per-instruction difficulties for the length-controlled win rate."""
    gamed_baselines: str | None = None
    """CSV of AlpacaEval's gamed-baseline rows for the length-controlled win rate; needs instruction_difficulty."""
    leaderboard: str | None = unhashed()
    """Leaderboard CSV that gets this model's row, shared across runs; unset: eval/leaderboard.csv."""

    @model_validator(mode="after")
    def _settings_match_judge(self) -> EvalConfig:
        for key, judges in (
            ("api", ("api", "alpaca_eval")),
            ("annotator", ("alpaca_eval",)),
            ("reward_model", ("reward_model",)),
            ("function", ("python",)),
        ):
            if getattr(self, key) is not None and self.judge not in judges:
                raise ValueError(
                    f"eval.{key} is only used by eval.judge: {' or '.join(judges)} (judge is {self.judge!r})"
                )
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
    """Model to export (a LoRA adapter is merged first); unset: this run's trained model."""
    quantizations: list[str] = Field(default_factory=lambda: ["Q4_K_M"])
    """GGUF types to write, e.g. F16, BF16, Q8_0, Q4_K_M (IQ types are refused)."""
    name: str | None = None
    """File name stem, <name>.<TYPE>.gguf; unset: the model's leaderboard name."""
    license: str | None = None
    """License written into the model card's front matter; unset: none."""
    verify_text: str = "builtin:heldout.txt"
    """Held-out text on which each GGUF's perplexity and KL from the HF model are measured."""
    verify_tokens: int = Field(256, gt=8)
    """Tokens of verify_text used for that check (more than 8)."""


ROUND_STAGES: tuple[str, ...] = ("sample", "score", "pair", "train")


class Recipe(Section):
    output_dir: str = "runs/wpo"
    """Run directory: each stage writes under <output_dir>/<stage>."""
    seed: int = 42
    """Run seed: every sample's seed, the training order and the eval bootstrap derive from it."""
    rounds: int = Field(1, gt=0)
    """Rounds of sample → score → pair → train (iterative on-policy WPO); 1: a single pass."""
    stages: list[Literal["sample", "score", "pair", "train", "eval", "export"]] = Field(
        default_factory=lambda: list(STAGES)
    )
    """Stages to run, unique and in pipeline order: sample, score, pair, train, eval, export."""
    on_bad_record: Literal["error", "skip"] = "error"
    """A malformed input record: error stops with file:line; skip drops it, counted by reason."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The policy model: where it comes from, its dtype and an optional LoRA adapter."""
    sample: SampleConfig = Field(default_factory=SampleConfig)
    """Stage sample: candidate answers per prompt from the policy and off-policy sources."""
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    """Stage score: a score for every candidate."""
    pair: PairConfig = Field(default_factory=PairConfig)
    """Stage pair: the best and worst candidate of each prompt as a preference pair."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Stage train: preference training (WPO, or DPO and its variants) on the pairs."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Stage eval: the trained model's answers judged against a baseline, with held-out measures."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """Stage export: GGUF files, verified, with a model card."""
    _source: str = PrivateAttr("(defaults)")  # the recipe's file, named by errors found after loading

    @property
    def source(self) -> str:
        return self._source

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
                raise ValueError(
                    f"rounds: {self.rounds} re-samples and retrains each round, so stages must include "
                    f"{list(ROUND_STAGES)} (missing {missing})"
                )
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

    def for_round(self, round_number: int, policy: str | None = None) -> Recipe:
        """Round `round_number` of iterative on-policy WPO as a one-round recipe, validated like a loaded one: it
        writes under `round_output_dir(round_number)` and, from round 2 on, samples from and trains `policy` (round
        k-1's model, also its reference). Only the keys the recipe set are carried, so a default stays a default."""
        data = self.model_dump(exclude_unset=True)
        data["rounds"] = 1
        if round_number > 1:
            if policy is None:
                raise ValueError(f"round {round_number} needs the policy round {round_number - 1} trained")
            data["output_dir"] = str(self.round_output_dir(round_number))
            data["model"] = {**data.get("model", {}), "name_or_path": policy}
        recipe = Recipe.model_validate(data)
        recipe._source = self._source
        return recipe


def low_precision_problem(dtype: str, recipe: Recipe) -> str | None:
    """Why full fine-tuning in `dtype` (resolved, or as written) would quietly not train, unless the recipe asks for
    it with train.low_precision_weights: true."""
    if dtype not in ("bfloat16", "float16") or recipe.model.lora is not None or recipe.train.low_precision_weights:
        return None
    return (
        f"model.dtype {dtype} with full fine-tuning (model.lora is null) keeps the trained weights in {dtype}, "
        f"where a step of train.learning_rate {recipe.train.learning_rate:g} rounds away against the weights' "
        "resolution; load float32 weights (bf16 compute comes from the launcher's mixed_precision), train LoRA, "
        "or set train.low_precision_weights: true to train so anyway"
    )
