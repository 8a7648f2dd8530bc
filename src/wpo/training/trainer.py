"""The one WPO trainer, shaped as torchtune's recipes are: `setup()` builds one `TrainState` in a fixed order,
`train_step()` runs one optimizer step over it, and `train()` is the loop that logs and checkpoints.

setup: launch → run config → pairs → tokens → schedule → resume point → policy → reference log-probs (cache or one
pass) → trainable (full or LoRA) → optimizer → learning-rate schedule → launcher.prepare → resumed optimizer and RNG.
What differs between one process/DDP, FSDP and DeepSpeed ZeRO-3 (backward, step, gathering, restoring) lives behind
`wpo.training.launchers`; the loss is `wpo.training.loss`, pure. The schedule is a pure function of (seed, epoch), so a
resumed run sees exactly the pairs the uninterrupted run would have; a checkpoint records the global batch and the
step count, and one from another schedule is refused.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from wpo import machine
from wpo.config import LoraConfig as LoraSettings  # peft's LoraConfig is another class
from wpo.config import ModelConfig, Recipe, TrainConfig, low_precision_problem
from wpo.data.io import BadRecordPolicy, write_json
from wpo.data.schemas import LoadedPairs, load_pairs
from wpo.errors import ConfigError, DataError, NonFiniteError, Stopped
from wpo.layout import stage_output
from wpo.manifest import Counts, move_aside, write_manifest
from wpo.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from wpo.stage_run import StageRun, resolved
from wpo.training import checkpoint, cpu_attention, layer_compile, reference_logps
from wpo.training.forward import pair_statistics, prompt_sharing, require_finite
from wpo.training.launchers import Launcher, make_launcher
from wpo.training.loss import REFERENCE_FREE_LOSSES, PreferenceLoss, SequenceStatistics, preference_loss, wpo_weight
from wpo.training.metrics import PAIR_WEIGHTS_FILE, MetricsLog, WeightLedger, weight_figures
from wpo.training.optimizers import build_optimizer, step_in_backward
from wpo.training.precision import make_accelerator, round_bf16_ties
from wpo.training.reference_logps import ReferenceLogps
from wpo.training.schedule import Schedule, build_schedule, micro_batches
from wpo.training.stage import pairs_source, run_config
from wpo.training.stopping import EXIT_CODES, StopSignals
from wpo.training.tokenize import PromptSharing, TokenizedPair, TokenizedPairs, collate_pairs, tokenize_pairs

log = logging.getLogger(__name__)

UNSHARDED = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)  # one whole optimizer each


@dataclass(frozen=True)
class TrainPlan:
    """What `setup` works out once from the recipe; every helper after it reads this, none works it out again."""

    train_dir: Path
    final_dir: Path
    pairs: str  # the pairs file trained on
    model: ModelConfig  # the model section: how to load the base model, and LoRA's settings
    model_path: str  # the base model as a local directory or hub id
    reference_path: str | None  # the loss's frozen reference; None for reference-free losses
    dtype: torch.dtype  # the weights' dtype as loaded
    config: dict[str, Any]  # everything that determines the trained weights (`run_config`)
    run_hash: str  # its hash: keys checkpoints and the manifest
    seed: int
    run_name: str  # the trackers' name for this run
    resume_point: checkpoint.ResumePoint | None = None

    @property
    def lora(self) -> bool:
        return self.model.lora is not None

    @property
    def policy_weights(self) -> str:
        """Full fine-tuning resumes from the checkpoint's weights; LoRA always starts from the base."""
        if self.resume_point is not None and not self.lora:
            return str(self.resume_point.path / "model")
        return self.model_path

    @property
    def policy_is_reference(self) -> bool:
        """The untrained policy is the reference: its log-probs come from the loaded policy, no second copy."""
        return self.reference_path == self.model_path and self.policy_weights == self.model_path


@dataclass
class StepState:
    """Everything an optimizer step reads or changes, all of it required: `train_step()` advances it by one step (a
    benchmark's bare step builds one too: benchmarks/bare_step.py)."""

    cfg: TrainConfig
    accelerator: Accelerator
    launcher: Launcher
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable[..., PreferenceLoss]  # `preference_loss` with the recipe's loss settings bound once
    tokens: TokenizedPairs
    references: ReferenceLogps | None
    schedule: Schedule
    pad_token_id: int
    sharing: PromptSharing
    weights: WeightLedger  # every pair's WPO weight at its first and last visit, and the run's totals


@dataclass
class TrainState(StepState):
    """A run's steps and what the run saves and reports besides: `setup()` builds it."""

    plan: TrainPlan
    tokenizer: PreTrainedTokenizerBase
    start_step: int
    loaded: LoadedPairs
    skipped: dict[str, int]


@dataclass(frozen=True)
class TrainResult:
    final_dir: Path
    steps: int
    last_metrics: dict[str, Any] | None
    reference_from_cache: bool | None
    counts: dict[str, Any]
    weights: dict[str, Any]  # the WPO weights' figures over the whole run (`WeightLedger.summary`)


def masters_and_optimizer(model, cfg: TrainConfig, accelerator: Accelerator, resuming: bool) -> torch.optim.Optimizer:
    """The trainable weights' starting point under bf16 (`train.bf16_ties`) and the optimizer that steps them:
    after backward, or inside it (`train.optimizer_in_backward`, one plain process only)."""
    if accelerator.mixed_precision == "bf16" and cfg.bf16_ties == "round" and not resuming:
        weights, moved = round_bf16_ties(model)  # a resumed run's masters are on their own course already
        log.info(
            "bf16: %d of %d weights of linear layers sat exactly halfway between two bf16 values, where any update "
            "flips the forward's rounding: rounded to the bf16 value the forward computed with already",
            moved,
            weights,
        )
    # the fused kernel on plain and DDP processes; ZeRO and FSDP shard the state their own way
    fused = accelerator.mixed_precision == "bf16" and accelerator.distributed_type in UNSHARDED
    optimizer = build_optimizer(model, cfg, fused=fused)
    if cfg.optimizer_in_backward:
        if accelerator.distributed_type != DistributedType.NO:
            raise ConfigError(
                f"train.optimizer_in_backward runs in one plain process (this launch is "
                f"{accelerator.distributed_type.value}, {accelerator.num_processes} process(es)): it steps each "
                "gradient before it could be reduced or sharded"
            )
        step_in_backward(optimizer)
    return optimizer


def optimization(
    model,
    cfg: TrainConfig,
    accelerator: Accelerator,
    schedule: Schedule,
    resuming: bool,
    lr_scheduler: str | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, Launcher]:
    """The optimizer, its learning-rate schedule (`train.lr_scheduler` with its warmup, or `lr_scheduler`) and the
    launcher's prepared model and optimizer: what `setup` builds, and a benchmark's bare step with it."""
    optimizer = masters_and_optimizer(model, cfg, accelerator, resuming=resuming)
    scheduler = get_scheduler(
        lr_scheduler or cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * schedule.total_steps),
        num_training_steps=schedule.total_steps,
    )
    launcher = make_launcher(accelerator)
    model, optimizer = launcher.prepare(model, optimizer, cfg, schedule.pairs_per_step)
    return model, optimizer, scheduler, launcher


def bind_loss(cfg: TrainConfig) -> Callable[..., PreferenceLoss]:
    """`preference_loss` with the recipe's loss settings, bound once for every micro-batch."""
    return functools.partial(
        preference_loss,
        loss_type=cfg.loss,
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        weighting=cfg.weighting,
        clamp=cfg.clamp,
        sft_weight=cfg.sft_weight,
        simpo_gamma=cfg.simpo_gamma,
    )


def plan_training(run: StageRun) -> TrainPlan:
    """Paths, the models' sources, the dtype and the run config, resolved once (the resume point comes later, once
    the schedule it must match is known)."""
    recipe = run.recipe
    cfg = recipe.train
    machine.refuse([machine.trackio() if "trackio" in cfg.report_to else None])  # adamw_8bit: build_optimizer
    dtype = resolve_dtype(recipe.model.dtype)
    problem = low_precision_problem(str(dtype).removeprefix("torch."), recipe)
    if problem:  # model.dtype: auto resolved to bf16 on this machine, or the recipe's stages did not name train
        raise ConfigError(problem)
    model_path = resolve_model_path(recipe.model.name_or_path)
    reference_path = None
    if cfg.loss not in REFERENCE_FREE_LOSSES:
        reference_path = resolve_model_path(cfg.reference_model) if cfg.reference_model else model_path
    return TrainPlan(
        train_dir=recipe.stage_dir("train"),
        final_dir=stage_output(recipe, "train"),
        pairs=pairs_source(recipe),
        model=recipe.model,
        model_path=model_path,
        reference_path=reference_path,
        dtype=dtype,
        config=run.config,
        run_hash=run.config_hash,
        seed=recipe.seed,
        run_name=f"{Path(recipe.output_dir).name}-seed{recipe.seed}",
    )


def setup(target: StageRun | Recipe) -> TrainState:
    recipe = target.recipe if isinstance(target, StageRun) else target
    cfg = recipe.train
    # first: under a launch, the resolution is broadcast through its group
    accelerator = make_accelerator(cfg.mixed_precision)
    set_seed(recipe.seed)
    plan = plan_training(resolved(target, "train", run_config))

    tokenizer = load_tokenizer(plan.model_path, plan.model.trust_remote_code)
    loaded, tokens, skipped = _training_pairs(plan.pairs, tokenizer, cfg, BadRecordPolicy(recipe.on_bad_record))
    schedule = build_schedule(len(tokens.pairs), cfg, plan.seed, accelerator.num_processes)
    log.info(
        "schedule: %d steps of %d pairs (%d per device x %d accumulation x %d processes), %d steps per epoch",
        schedule.total_steps,
        schedule.pairs_per_step,
        cfg.per_device_batch_size,
        cfg.gradient_accumulation_steps,
        accelerator.num_processes,
        schedule.steps_per_epoch,
    )
    plan = replace(plan, resume_point=_resume_point(plan, cfg, schedule, accelerator))

    model = load_causal_lm(plan.policy_weights, plan.model)
    model.to(accelerator.device)
    sharing = prompt_sharing(model, cfg.share_prompts, cfg.max_length)
    if cfg.compile:  # before the reference pass: compiled layers round otherwise, and step 1 must see z = 0
        log.info(layer_compile.compile_decoder_layers(model, accelerator.distributed_type))
    references = _reference_logps(plan, cfg, model, tokens, tokenizer.pad_token_id, accelerator, sharing)
    model = _make_trainable(model, cfg, plan.model.lora, plan.resume_point)
    model, optimizer, scheduler, launcher = optimization(
        model, cfg, accelerator, schedule, resuming=plan.resume_point is not None
    )
    start_step, weights = 0, WeightLedger()
    if plan.resume_point is not None:
        launcher.restore_optimizer(model, optimizer, plan.resume_point)
        checkpoint.restore_training_state(plan.resume_point, scheduler)
        start_step = plan.resume_point.step
        weights = WeightLedger(checkpoint.read_weight_ledger(plan.resume_point))
    return TrainState(
        cfg=cfg,
        plan=plan,
        accelerator=accelerator,
        launcher=launcher,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=bind_loss(cfg),
        tokens=tokens,
        references=references,
        schedule=schedule,
        pad_token_id=tokenizer.pad_token_id,
        sharing=sharing,
        tokenizer=tokenizer,
        start_step=start_step,
        loaded=loaded,
        skipped=skipped,
        weights=weights,
    )


def _training_pairs(
    source: str, tokenizer, cfg: TrainConfig, policy: BadRecordPolicy
) -> tuple[LoadedPairs, TokenizedPairs, dict[str, int]]:
    """The pairs read and tokenized, with what was skipped by reason; none usable is an error naming the file."""
    loaded = load_pairs(source, policy)
    tokens = tokenize_pairs(
        loaded.pairs, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, policy=policy
    )
    if not tokens.pairs:
        raise DataError(f"{source}: no usable pairs (read {loaded.records_read}, skipped {dict(policy.skipped)})")
    log.info(
        "pairs: read %d from %s, training on %d; skipped %s; truncated %d prompts, %d responses",
        loaded.records_read,
        source,
        len(tokens.pairs),
        dict(policy.skipped) or "none",
        tokens.truncated_prompts,
        tokens.truncated_responses,
    )
    return loaded, tokens, dict(policy.skipped)


def _resume_point(
    plan: TrainPlan, cfg: TrainConfig, schedule: Schedule, accelerator: Accelerator
) -> checkpoint.ResumePoint | None:
    """The newest checkpoint of this config and schedule; checkpoints of another config are moved aside, and
    `train.resume: never` removes them."""
    stale = checkpoint.stale_checkpoints(plan.train_dir, plan.run_hash, plan.config)
    if accelerator.is_main_process:
        if stale:
            move_aside(
                plan.train_dir,
                stale[0],
                f"train is redone: its checkpoints were written by another config "
                f"(differs in: {', '.join(stale[1]) or 'unknown'})",
            )
        elif cfg.resume == "never":
            checkpoint.prune_checkpoints(plan.train_dir, keep=0)
    accelerator.wait_for_everyone()
    return checkpoint.latest_resume_point(plan.train_dir, plan.run_hash, schedule.fingerprint())


def train_step(state: StepState, step: int) -> dict[str, Any]:
    """One optimizer step over the schedule's pairs for `step`; returns the logged row (means over all its pairs)."""
    cfg, accelerator, launcher = state.cfg, state.accelerator, state.launcher
    started = time.perf_counter()
    # the step's gradient is a sum over its pairs, whichever micro-batch each is in: grouping them by length pads less
    step_pairs = sorted(state.schedule.step_indices(step), key=lambda i: state.tokens.pairs[i].token_count)
    batches = micro_batches(
        step_pairs,
        cfg.per_device_batch_size,
        cfg.gradient_accumulation_steps,
        accelerator.num_processes,
        accelerator.process_index,
    )
    local_pairs = sum(len(batch) for batch in batches)
    collected: dict[str, list[torch.Tensor]] = {}
    token_count = 0
    # One autocast region for the step's forward passes (backward leaves it): autocast casts each trainable weight to
    # bf16 once per region, so once per step instead of once per micro-batch; the weights change only after it.
    with accelerator.autocast():
        weight_scale = _weight_scale(state, batches, step) if cfg.normalize_weights else None
        for position, indices in enumerate(batches):
            with launcher.accumulating(state.model, last=position == len(batches) - 1):
                statistics, tokens = _forward_backward(state, indices, local_pairs, step, weight_scale)
            token_count += tokens
            for name, value in statistics.items():
                collected.setdefault(name, []).append(value)

    learning_rate = state.scheduler.get_last_lr()[0]
    grad_norm = launcher.step(state.model, state.optimizer, cfg.max_grad_norm)
    if grad_norm is not None:
        pair_ids = [state.tokens.pairs[i].id for indices in batches for i in indices]
        require_finite("gradient norm", torch.tensor(grad_norm), f" at step {step + 1}, pairs {pair_ids}")
    state.scheduler.step()

    stats = {name: accelerator.gather(torch.cat(values)).cpu().double() for name, values in collected.items()}
    local_indices = torch.tensor([i for indices in batches for i in indices], device=accelerator.device)
    pairs = [state.tokens.pairs[i] for i in accelerator.gather(local_indices).tolist()]  # in the order of `stats`
    weights, clamped = stats["weight"].tolist(), stats["clamped"].bool().tolist()
    margins = stats["rewards_chosen"] - stats["rewards_rejected"]
    state.weights.record(step + 1, pairs, weights, clamped, margins.tolist())
    tokens_seen = accelerator.gather(torch.tensor([token_count], device=accelerator.device)).sum().item()
    seconds = time.perf_counter() - started
    return {
        "step": step + 1,
        "epoch": (step + 1) / state.schedule.steps_per_epoch,
        **step_means(stats),
        **weight_figures(weights, clamped, [pair.kind for pair in pairs]),
        **({"weight_scale": weight_scale.item()} if weight_scale is not None else {}),
        "learning_rate": learning_rate,
        "grad_norm": grad_norm,
        "pairs": int(stats["loss"].numel()),
        "tokens_per_second": tokens_seen / seconds,
        "step_seconds": seconds,
    }


def _micro_batch_statistics(
    state: StepState, indices: list[int], step: int
) -> tuple[SequenceStatistics, SequenceStatistics, int]:
    """One micro-batch's forward pass: chosen and rejected statistics, and the tokens computed."""
    accelerator = state.accelerator
    pairs = [state.tokens.pairs[i] for i in indices]
    batch = collate_pairs(pairs, state.pad_token_id, share_prompts=state.sharing.applies_to(pairs))
    batch = batch.to(accelerator.device)
    try:
        with accelerator.autocast():  # bf16 compute under train.mixed_precision; a no-op otherwise
            chosen, rejected = pair_statistics(state.model, batch, loss_chunk_size=state.cfg.loss_chunk_size)
    except NonFiniteError as exc:
        raise NonFiniteError(f"{exc} at step {step + 1}, pairs {[pair.id for pair in pairs]}") from None
    return chosen, rejected, batch.token_count


def _weight_scale(state: StepState, batches: list[list[int]], step: int) -> torch.Tensor:
    """`train.normalize_weights`: the step's pair count over the sum of their WPO weights, every process's micro-batches
    summed, so the scaled weights average 1 over the step. Each micro-batch's backward comes before the next one's
    forward, so the weights are found first, by a forward pass without gradient (detached, as in the loss)."""
    cfg, accelerator = state.cfg, state.accelerator
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # weight sum, pairs
    with torch.no_grad():
        for indices in batches:
            chosen, rejected, _ = _micro_batch_statistics(state, indices, step)
            weights = wpo_weight(chosen.aligned_logps, rejected.aligned_logps, clamp=cfg.clamp)
            totals += torch.stack([weights.double().sum(), totals.new_tensor(len(indices))])
    weight_sum, pair_count = accelerator.reduce(totals, reduction="sum").tolist()
    return torch.tensor(pair_count / weight_sum if weight_sum > 0 else 1.0, device=accelerator.device)


def _forward_backward(
    state: StepState, indices: list[int], local_pairs: int, step: int, weight_scale: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """One micro-batch: forward, loss (its share of the step's mean over `local_pairs`), backward. Returns each pair's
    statistics, detached, and the tokens computed."""
    accelerator = state.accelerator
    pairs = [state.tokens.pairs[i] for i in indices]
    where = f" at step {step + 1}, pairs {[pair.id for pair in pairs]}"
    chosen, rejected, token_count = _micro_batch_statistics(state, indices, step)
    index = torch.tensor(indices)
    references = state.references
    result = state.loss_fn(
        chosen,
        rejected,
        references.chosen[index].to(accelerator.device) if references else None,
        references.rejected[index].to(accelerator.device) if references else None,
        weight_scale=weight_scale,
        pair_weights=_pair_weights(pairs, accelerator.device),
    )
    loss = result.pair_losses.sum() / local_pairs
    require_finite("loss", loss.detach(), where)
    with torch.autocast(accelerator.device.type, enabled=False):  # backward computes in its forward's precisions
        state.launcher.backward(state.model, loss)
    statistics = {
        "loss": result.pair_losses,
        "weight": result.weights,
        "clamped": result.clamped,
        "rewards_chosen": result.chosen_rewards,
        "rewards_rejected": result.rejected_rewards,
        "logps_chosen": chosen.logps,
        "logps_rejected": rejected.logps,
    }
    return {name: value.detach().float() for name, value in statistics.items()}, token_count


def _pair_weights(pairs: list[TokenizedPair], device: torch.device) -> torch.Tensor | None:
    """The pairs' own `weight` fields (1 where a pair has none); None when no pair of the micro-batch has one."""
    if all(pair.weight is None for pair in pairs):
        return None
    return torch.tensor([1.0 if pair.weight is None else pair.weight for pair in pairs], device=device)


def step_means(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's logged figures from every pair's statistics (all processes'): means, the weights' range, and the
    implicit reward's margin and accuracy (the share of pairs whose chosen answer earns the larger reward)."""
    margins = stats["rewards_chosen"] - stats["rewards_rejected"]
    return {
        "loss": stats["loss"].mean().item(),
        "weight_mean": stats["weight"].mean().item(),
        "weight_min": stats["weight"].min().item(),
        "weight_max": stats["weight"].max().item(),
        "rewards_chosen": stats["rewards_chosen"].mean().item(),
        "rewards_rejected": stats["rewards_rejected"].mean().item(),
        "reward_margin": margins.mean().item(),
        "reward_accuracy": (margins > 0).double().mean().item(),
        "logps_chosen": stats["logps_chosen"].mean().item(),
        "logps_rejected": stats["logps_rejected"].mean().item(),
    }


def train(target: StageRun | Recipe) -> TrainResult:
    started = time.perf_counter()
    state = setup(target)
    cfg, plan, accelerator, schedule = state.cfg, state.plan, state.accelerator, state.schedule
    metrics = MetricsLog(
        plan.train_dir,
        state.start_step,
        enabled=accelerator.is_main_process,
        report_to=tuple(cfg.report_to),
        run_name=plan.run_name,
        config=plan.config,
    )
    last_row = None
    progress = tqdm(
        total=schedule.total_steps,
        initial=state.start_step,
        desc="train",
        unit="step",
        disable=not accelerator.is_main_process,
    )
    try:
        with StopSignals() as stop:
            for step in range(state.start_step, schedule.total_steps):
                row = train_step(state, step)
                number = step + 1
                progress.update(1)
                progress.set_postfix(loss=f"{row['loss']:.4f}", weight=f"{row['weight_mean']:.3f}")
                if number == 1 or number % cfg.logging_steps == 0 or number == schedule.total_steps:
                    metrics.write(row)
                    last_row = row
                signalled = stop.requested(accelerator)
                if (cfg.save_steps and number % cfg.save_steps == 0) or number == schedule.total_steps or signalled:
                    save_checkpoint(state, number)
                if signalled and number < schedule.total_steps:
                    _stop(state, number, signalled, started)
    finally:
        progress.close()
        metrics.close()

    final_dir = save_final(state)
    counts = _counts(state)
    weights = state.weights.summary()
    if accelerator.is_main_process:
        state.weights.write(plan.train_dir)
        write_manifest(
            plan.train_dir,
            stage="train",
            config=plan.config,
            config_hash=plan.run_hash,
            seed=plan.seed,
            counts=counts,
            wall_seconds=time.perf_counter() - started,
            outputs=["final", "metrics.jsonl", PAIR_WEIGHTS_FILE],
            extra={
                "reference_cache": str(state.references.cache_path) if state.references else None,
                "weights": weights,
            },
        )
    return TrainResult(
        final_dir=final_dir,
        steps=schedule.total_steps,
        last_metrics=last_row,
        reference_from_cache=state.references.from_cache if state.references else None,
        counts=counts.to_json(),
        weights=weights,
    )


def _stop(state: TrainState, step: int, signal_number: int, started: float) -> None:
    """After a signal: the manifest says the stage is incomplete and where it stopped; then the command stops."""
    name = signal.Signals(signal_number).name
    if state.accelerator.is_main_process:
        write_manifest(
            state.plan.train_dir,
            stage="train",
            config=state.plan.config,
            config_hash=state.plan.run_hash,
            seed=state.plan.seed,
            counts=_counts(state, stopped_at_step=step, stopped_by=name),
            wall_seconds=time.perf_counter() - started,
            outputs=[f"checkpoint-{step}"],
            completed=False,
        )
    raise Stopped(
        f"training stopped by {name} after step {step} of {state.schedule.total_steps}: checkpoint-{step} "
        "is saved, and the rerun resumes from it",
        EXIT_CODES[signal_number],
    )


def _counts(state: TrainState, **more: Any) -> Counts:
    return Counts(
        read=state.loaded.records_read,
        written=len(state.tokens.pairs),  # the pairs trained on
        skipped=state.skipped,
        other={
            "pairs_with_weight": sum(pair.weight is not None for pair in state.tokens.pairs),
            "truncated_prompts": state.tokens.truncated_prompts,
            "truncated_responses": state.tokens.truncated_responses,
            "steps": state.schedule.total_steps,
            "resumed_from_step": state.start_step,
            "num_processes": state.accelerator.num_processes,
            "global_batch_pairs": state.schedule.pairs_per_step,
            **more,
        },
    )


def save_checkpoint(state: TrainState, step: int) -> None:
    """Every process takes part in gathering sharded weights and optimizer state; the main process writes them. The
    last step is always checkpointed: `final/` is made from it."""
    accelerator, plan = state.accelerator, state.plan
    accelerator.wait_for_everyone()
    model_state = state.launcher.whole_weights(state.model)
    optimizer_state = state.launcher.whole_optimizer_state(state.model, state.optimizer)
    if accelerator.is_main_process:
        checkpoint.save_checkpoint(
            plan.train_dir,
            step=step,
            model=accelerator.unwrap_model(state.model),
            model_state=model_state,
            tokenizer=state.tokenizer,
            optimizer_state=optimizer_state,
            scheduler=state.scheduler,
            config_hash=plan.run_hash,
            config=plan.config,
            schedule=state.schedule.fingerprint(),
            weight_ledger=state.weights.state(),
        )
        checkpoint.prune_checkpoints(plan.train_dir, keep=state.cfg.save_total_limit)
    accelerator.wait_for_everyone()


def save_final(state: TrainState) -> Path:
    """`final/`: the last step's checkpointed weights (or LoRA adapter) and tokenizer, hard-linked rather than written
    again (at 9B a second copy is 36 GB of writes; checkpoints are only ever renamed or removed whole, never changed
    in place), and the hyperparameters exactly as trained, for the model card."""
    plan, accelerator, schedule = state.plan, state.accelerator, state.schedule
    train_dir, final_dir = plan.train_dir, plan.final_dir
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = train_dir / ".final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(train_dir / f"checkpoint-{schedule.total_steps}" / "model", staging, copy_function=os.link)
        write_json(
            staging / "wpo_training.json",
            {
                **_lineage(plan.model.name_or_path),
                "seed": plan.seed,
                "num_processes": accelerator.num_processes,
                "global_batch_pairs": schedule.pairs_per_step,
                "total_steps": schedule.total_steps,
                "pairs": plan.pairs,
                "lora": plan.model.lora.model_dump() if plan.model.lora else None,
                "train": state.cfg.model_dump(mode="json"),
            },
        )
        shutil.rmtree(final_dir, ignore_errors=True)
        staging.rename(final_dir)
    accelerator.wait_for_everyone()
    return final_dir


def _reference_logps(
    plan: TrainPlan,
    cfg: TrainConfig,
    policy_model: torch.nn.Module,
    tokens: TokenizedPairs,
    pad_token_id: int,
    accelerator: Accelerator,
    sharing: PromptSharing,
) -> ReferenceLogps | None:
    """The reference's log-probs of every pair: from the cache when a run computed them before from the same weights,
    token ids and way of computing (`reference_logps.cache_key`), else one pass (with the policy itself when it is the
    reference)."""
    if plan.reference_path is None:
        return None

    def load_reference():
        if plan.policy_is_reference:
            return policy_model  # the untrained policy is the reference: no second copy in memory
        return load_causal_lm(plan.reference_path, plan.model).to(accelerator.device)

    computed_by = reference_logps.ReferencePass(
        dtype=str(plan.dtype),
        autocast=accelerator.mixed_precision,
        device=accelerator.device.type,
        prompt_sharing=sharing.mode,
        loss_chunk_size=cfg.loss_chunk_size,
        output_layer="bf16" if accelerator.mixed_precision == "bf16" else "fp32",
        attention=cpu_attention.how_attention_computes(accelerator.mixed_precision, accelerator.device.type),
        compiled=cfg.compile and plan.policy_is_reference,
        batch_size=cfg.per_device_batch_size,
        processes=accelerator.num_processes,
    )
    key = reference_logps.cache_key(reference_logps.model_fingerprint(plan.reference_path), computed_by, tokens)
    with accelerator.autocast():  # the policy's compute precision, so step 1 sees z = 0
        result = reference_logps.load_or_compute(
            cache_dir=reference_logps.cache_directory(cfg.reference_cache_dir, plan.train_dir),
            key=key,
            tokens=tokens,
            load_model=load_reference,
            batch_size=cfg.per_device_batch_size,
            pad_token_id=pad_token_id,
            accelerator=accelerator,
            loss_chunk_size=cfg.loss_chunk_size,
            sharing=sharing,
        )
    gc.collect()
    return result


def _make_trainable(model, cfg: TrainConfig, lora: LoraSettings | None, resume_point: checkpoint.ResumePoint | None):
    """LoRA adapters (fresh, or the checkpoint's when resuming) or the whole model, with gradient checkpointing when
    asked, in training mode."""
    if lora is not None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_point is not None:
            model = PeftModel.from_pretrained(model, resume_point.path / "model", is_trainable=True)
        else:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model


def _lineage(model_path: str) -> dict[str, Any]:
    """The untrained base model and how many WPO rounds led here: training a wpo-trained model continues its line."""
    previous = Path(model_path) / "wpo_training.json"
    if previous.is_file():
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        return {"base_model": earlier["base_model"], "round": earlier.get("round", 1) + 1, "trained_from": model_path}
    return {"base_model": model_path, "round": 1, "trained_from": model_path}
