"""`wpo sample`: prompts → on-policy samples + off-policy answers → `sample/candidates.jsonl`.

Prompts are grouped into batches by length (a plan fixed by the prompts file alone), each finished batch is appended
to a progress file, and the final file is written in input order once every prompt is done — so a killed and
rerun stage writes exactly the file an uninterrupted run writes. Off-policy answers come from prompt fields
(`sample.offpolicy_fields`) and from models behind OpenAI-compatible endpoints (`sample.offpolicy_models`, one answer
per prompt each, asked concurrently and cached as they arrive in `sample/offpolicy_cache.jsonl`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wpo import machine
from wpo.config import ModelConfig, OffPolicyModelConfig, Recipe, SampleConfig
from wpo.data.io import BadRecordPolicy, write_jsonl
from wpo.data.progress import ProgressFile
from wpo.data.schemas import PromptRecord, RecordInvalid, RecordLeftOut, parse_all, parse_prompt
from wpo.distributed import process_state
from wpo.endpoints import cached_answer
from wpo.errors import ConfigError, DataError
from wpo.layout import STAGE_OUTPUTS
from wpo.machine import Lack
from wpo.manifest import Counts, write_manifest
from wpo.models import ChatTemplateError
from wpo.rules import exists, required
from wpo.sampling import Generation, SampleRequest, make_sampler, render_prompt, sample_seed
from wpo.stage_run import StageRun, input_fingerprint, resolved

log = logging.getLogger(__name__)
OUTPUT = STAGE_OUTPUTS["sample"]
OFFPOLICY_CACHE = "offpolicy_cache.jsonl"


def run_config(recipe: Recipe) -> dict[str, Any]:
    return {
        "seed": recipe.seed,
        "model": recipe.model.model_dump(mode="json"),
        "sample": recipe.sample.hashed_settings(),
        "inputs": {
            "model.name_or_path": input_fingerprint(recipe.model.name_or_path),
            "sample.prompts": input_fingerprint(recipe.sample.prompts),
        },
    }


class ContextCheck:
    """Whether a rendered prompt plus `sample.max_new_tokens` fits the policy's context window; a prompt that does
    not is a bad record (named, or counted as `prompt_too_long`), not a crash or an out-of-memory mid-run. The
    tokenizer is loaded on first use, after the prompts file itself has been checked."""

    def __init__(self, model: ModelConfig, cfg: SampleConfig):
        self.model, self.cfg = model, cfg
        self.tokenizer = None
        self.limit: int | None = None

    def problem(self, messages: list[dict[str, str]]) -> str | None:
        from transformers import AutoConfig

        from wpo.models import load_tokenizer, resolve_model_path

        cfg, model = self.cfg, self.model
        if self.tokenizer is None:
            path = resolve_model_path(model.name_or_path)
            self.tokenizer = load_tokenizer(path, model.trust_remote_code)
            config = AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code).get_text_config()
            context = getattr(config, "max_position_embeddings", None)
            self.limit = cfg.context_length if cfg.backend == "llamacpp" else context
        if self.limit is None:
            return None
        length = len(self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)["input_ids"])
        if length + cfg.max_new_tokens <= self.limit:
            return None
        return (
            f"prompt has {length} tokens; with sample.max_new_tokens {cfg.max_new_tokens} it exceeds the "
            f"model's context of {self.limit} tokens"
        )


def prompts_source(cfg: SampleConfig) -> str:
    return required(
        "sample.prompts",
        cfg.prompts,
        "the sample stage",
        "a JSONL/Parquet file of {id, messages} records, a datasets directory, a hub id or builtin:NAME",
    )


def check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    """What sampling needs from the recipe and this machine (`wpo.checks` asks before any stage runs)."""
    cfg = recipe.sample
    exists("sample.prompts", prompts_source(cfg), lacks)
    exists("sample.gguf", cfg.gguf, lacks)
    if cfg.n > 0:
        lacks += machine.generation_backend(cfg.backend, "sample.backend", cfg.tensor_parallel_size)


def read_input(recipe: Recipe, source: str, policy: BadRecordPolicy) -> None:
    load_prompts(recipe.sample, policy)  # without the context check: it loads the tokenizer, and sampling does it


def load_prompts(cfg: SampleConfig, policy: BadRecordPolicy, context: ContextCheck | None = None) -> list[PromptRecord]:
    """Prompts with unique ids, each carrying every configured off-policy field as a non-empty string, or lacking
    one as `sample.offpolicy_missing` allows (and, given a `context` check, fitting the model's context); none at all
    is an error naming what was skipped."""
    source = prompts_source(cfg)
    offpolicy_fields, missing = cfg.offpolicy_fields, cfg.offpolicy_missing

    def parse(raw: dict[str, Any], where: str) -> PromptRecord:
        prompt = parse_prompt(raw, where)
        for name in offpolicy_fields:
            value = prompt.extra.get(name)
            if value is not None and not isinstance(value, str):
                raise RecordInvalid("wrong_type", f"off-policy field {name!r} must be text, got {type(value).__name__}")
            if offpolicy_text(prompt, name) is None and missing != "skip_candidate":
                problem = f"off-policy field {name!r} is missing or empty"
                if missing == "skip_record":
                    raise RecordLeftOut("missing_offpolicy", problem)
                raise RecordInvalid("missing_offpolicy", f"{problem}{MISSING_OFFPOLICY_HINT}")
        try:
            problem = context.problem(prompt.messages) if context else None
        except ChatTemplateError as exc:  # e.g. a system message the template does not support
            raise RecordInvalid("chat_template_error", str(exc)) from None
        if problem:
            raise RecordInvalid("prompt_too_long", problem)
        return prompt

    prompts = [item.record for item in parse_all(source, parse, policy, unique_ids=True)]
    if not prompts:
        raise DataError(f"{source}: no usable prompts (skipped {dict(policy.skipped)})")
    return prompts


MISSING_OFFPOLICY_HINT = (
    " (sample.offpolicy_missing: skip_candidate keeps such a record with its on-policy samples; skip_record drops it)"
)


def offpolicy_text(prompt: PromptRecord, name: str) -> str | None:
    """The prompt's answer in off-policy field `name`; None where it is absent, null or blank."""
    value = prompt.extra.get(name)
    return value if isinstance(value, str) and value.strip() else None


def batch_plan(prompts: list[PromptRecord], batch_size: int) -> list[list[PromptRecord]]:
    """Prompts sorted by length (ties in input order), cut into batches: less padding, and fixed by the input."""
    ordered = sorted(prompts, key=lambda p: sum(len(m["content"]) for m in p.messages))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def run_sample(target: StageRun | Recipe) -> dict[str, Any]:
    from wpo.models import resolve_model_path

    started = time.perf_counter()
    run = resolved(target, "sample", run_config)
    recipe = run.recipe
    cfg = recipe.sample
    stage_dir = recipe.stage_dir("sample")
    policy = BadRecordPolicy(recipe.on_bad_record)
    prompts = load_prompts(cfg, policy, ContextCheck(recipe.model, cfg) if cfg.n > 0 else None)
    state = process_state()
    if state.num_processes > 1 and cfg.backend == "vllm":
        raise ConfigError(
            "sample.backend vllm runs in one process (it spreads over GPUs by tensor_parallel_size); "
            f"launch wpo sample without a launcher, not as {state.num_processes} processes"
        )
    progress = ProgressFile(stage_dir, "candidates", run.config_hash, state.process_index, state.num_processes)
    done = progress.load()
    state.wait_for_everyone()  # every process has read (and repaired) the progress files before any appends
    already_done = sum(p.id in done for p in prompts)
    if already_done:
        log.info("sample: resuming, %d of %d prompts already sampled in %s", already_done, len(prompts), stage_dir)
    pending = [batch for batch in batch_plan(prompts, cfg.batch_size) if any(p.id not in done for p in batch)]
    # Whole batches of the one-process plan go to each process, so every sample is computed in the same batch, with
    # the same padding, as a one-process run computes it: the merged file is the same bytes.
    mine = pending[state.process_index :: state.num_processes]
    generation_seconds = 0.0
    if mine and cfg.n > 0:
        sampler = make_sampler(
            resolve_model_path(recipe.model.name_or_path),
            recipe.model,
            Generation.for_sampling(cfg, recipe.seed, recipe.output_dir),
        )
        for batch in tqdm(mine, desc="sample", unit="batch", disable=not state.is_main_process):
            requests = [
                SampleRequest(p.messages, sample_seed(recipe.seed, p.id, k)) for p in batch for k in range(cfg.n)
            ]
            batch_started = time.perf_counter()
            samples = sampler.generate(requests)
            generation_seconds += time.perf_counter() - batch_started
            records = [
                {
                    "id": p.id,
                    "samples": [
                        {
                            "text": samples[i * cfg.n + k].text,
                            "seed": requests[i * cfg.n + k].seed,
                            "finish_reason": samples[i * cfg.n + k].finish_reason,
                        }
                        for k in range(cfg.n)
                    ],
                }
                for i, p in enumerate(batch)
            ]
            progress.append(records)

    state.wait_for_everyone()
    if state.num_processes > 1:
        log.info("sample: process %d sampled %d of %d batches", state.process_index, len(mine), len(pending))
    result = _write_candidates(run, prompts, progress, policy, already_done, started) if state.is_main_process else {}
    state.wait_for_everyone()  # no process moves on before the merged file exists
    return {**result, "generation_seconds": generation_seconds}


def _write_candidates(
    run: StageRun,
    prompts: list[PromptRecord],
    progress: ProgressFile,
    policy: BadRecordPolicy,
    already_done: int,
    started: float,
) -> dict[str, Any]:
    """Merge every process's samples with the off-policy answers, in input order; write the file and the manifest."""
    recipe = run.recipe
    cfg = recipe.sample
    stage_dir = recipe.stage_dir("sample")
    done = progress.load()
    prompts_read = len(prompts) + sum(policy.skipped.values())
    generated, usage = offpolicy_answers(cfg.offpolicy_models, prompts, policy, stage_dir)
    if cfg.backend == "openai":  # the policy's server: what its answers (in its cache, with their costs) cost in all
        from wpo.endpoints import AnswerCache
        from wpo.sampling.openai_backend import CACHE_FILE

        cache = AnswerCache(recipe.stage_dir("sample") / CACHE_FILE)
        usage["sample.endpoint"] = cache.cost_of(cache.values)
    samples = {prompt.id: done[prompt.id]["samples"] for prompt in prompts} if cfg.n > 0 else {}
    merged = merge_candidates(prompts, samples, cfg.offpolicy_fields, generated)
    written = write_jsonl(stage_dir / OUTPUT, merged.records)
    progress.remove()
    counts = Counts(
        read=prompts_read,
        written=written,
        skipped=dict(policy.skipped + merged.dropped),
        other={
            "samples_per_prompt": cfg.n,
            "empty_samples_left_out": merged.empty_samples,
            "finish_reasons": {source: dict(reasons) for source, reasons in merged.finish_reasons.items()},
            "offpolicy_fields": cfg.offpolicy_fields,
            "offpolicy_missing": dict(merged.offpolicy_missing),
            "offpolicy_models": {name: len(answers) for name, answers in generated.items()},
            "api_usage": usage,
            "prompts_done_before_this_run": already_done,
        },
    )
    wall = time.perf_counter() - started
    write_manifest(
        stage_dir,
        stage="sample",
        config=run.config,
        config_hash=run.config_hash,
        seed=recipe.seed,
        counts=counts,
        wall_seconds=wall,
        outputs=[OUTPUT],
    )
    log.info(
        "sample: read %d prompts from %s, wrote %d to %s; skipped %s, dropped %s",
        prompts_read,
        cfg.prompts,
        written,
        stage_dir / OUTPUT,
        dict(policy.skipped) or "none",
        dict(merged.dropped) or "none",
    )
    return {"output": str(stage_dir / OUTPUT), "counts": counts.to_json()}


@dataclass
class MergedCandidates:
    """Each kept prompt's record with its candidates, in input order, and what was left out."""

    records: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    offpolicy_missing: Counter[str] = field(default_factory=Counter)  # kept prompts without the field, by field
    empty_samples: int = 0
    finish_reasons: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def merge_candidates(
    prompts: list[PromptRecord],
    samples: dict[str, list[dict[str, Any]]],
    offpolicy_fields: list[str],
    generated: dict[str, dict[str, Any]],
) -> MergedCandidates:
    """The policy's samples (an empty one — end of turn first — is no candidate), the prompt's off-policy fields (a
    field the prompt lacks, as `sample.offpolicy_missing: skip_candidate` allows, is none, counted), and each
    off-policy model's answer; a prompt whose candidates are all one text is dropped, as no pair can come of it.
    Finish reasons are counted by source (None for a field's text)."""
    merged = MergedCandidates()
    for prompt in prompts:
        own = samples.get(prompt.id, [])
        kept = [s for s in own if s["text"].strip()]
        merged.empty_samples += len(own) - len(kept)
        candidates = [_candidate(s["text"], "policy", s["seed"], s.get("finish_reason")) for s in kept]
        for name in offpolicy_fields:
            text = offpolicy_text(prompt, name)
            if text is None:
                merged.offpolicy_missing[name] += 1
            else:
                candidates.append(_candidate(text, f"offpolicy:{name}"))
        for name, answers in generated.items():
            if prompt.id in answers:
                text, reason = cached_answer(answers[prompt.id])
                candidates.append(_candidate(text, f"offpolicy:{name}", finish_reason=reason))
        for candidate in candidates:
            merged.finish_reasons[candidate["source"]][str(candidate["finish_reason"])] += 1
        if len({c["text"] for c in candidates}) < 2:
            merged.dropped["all_candidates_identical"] += 1
            log.warning("dropped prompt %s: all %d candidates are identical", prompt.id, len(candidates))
            continue
        merged.records.append({"id": prompt.id, "messages": prompt.messages, **prompt.extra, "candidates": candidates})
    return merged


def _candidate(text: str, source: str, seed: int | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    return {"text": text, "source": source, "seed": seed, "score": None, "scores": None, "finish_reason": finish_reason}


def offpolicy_answers(
    models: list[OffPolicyModelConfig], prompts: list[PromptRecord], policy: BadRecordPolicy, stage_dir: Path
):
    """`{model name: {prompt id: answer}}` from every `sample.offpolicy_models` endpoint (answers cached in
    `stage_dir`), and each one's usage. A prompt whose request still fails stops the stage, naming it, or with
    `on_bad_record: skip` (the `policy`'s mode) is counted as `offpolicy_failed:<name>` and keeps its other
    candidates."""
    from wpo.endpoints import AnswerCache, ChatRequest, EmptyAnswer, Endpoint, nonempty_answer

    cache = AnswerCache(stage_dir / OFFPOLICY_CACHE)
    generated: dict[str, dict[str, str]] = {}
    usage: dict[str, dict[str, int]] = {}
    for model in models:
        endpoint = Endpoint(model, f"sample.offpolicy_models {model.name}", cache)
        params = {"temperature": model.temperature, "top_p": model.top_p, "max_tokens": model.max_tokens}
        requests = [
            ChatRequest(
                AnswerCache.key(model.name, model.model, model.extra_body, params, p.messages),
                p.messages,
                params,
                f"the prompt {p.id!r}",
            )
            for p in prompts
        ]

        def count_failure(request: ChatRequest, error: Exception, name: str = model.name) -> None:
            policy.skipped[f"offpolicy_{'empty' if isinstance(error, EmptyAnswer) else 'failed'}:{name}"] += 1
            log.warning("sample: skipped the %s answer for %s: %s", name, request.label, error)

        failure = count_failure if policy.mode == "skip" else None
        answers = endpoint.ask_all(requests, nonempty_answer, on_failure=failure, desc=f"sample: {model.name}")
        generated[model.name] = {p.id: text for p, text in zip(prompts, answers, strict=True) if text is not None}
        usage[model.name] = endpoint.usage_report()
        log.info(
            "sample: %d answers from %s (%s); %s",
            len(generated[model.name]),
            model.name,
            model.model,
            usage[model.name],
        )
    return generated, usage
