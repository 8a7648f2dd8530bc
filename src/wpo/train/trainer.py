"""The one WPO trainer, shaped as torchtune's recipes are: `setup()` builds one `TrainState` in a fixed order,
`train_step()` runs one optimizer step over it, and `train()` is the loop that logs and checkpoints.

setup: launch → run config → pairs → tokens → schedule → resume point → policy → reference log-probs (cache or one
pass) → trainable (full or LoRA) → optimizer → learning-rate schedule → launcher.prepare → resumed optimizer and RNG.
What differs between one process/DDP, FSDP and DeepSpeed ZeRO-3 (backward, step, gathering, restoring) lives behind
`wpo.train.launchers`; the loss is `wpo.train.loss`, pure. The schedule is a pure function of (seed, epoch), so a
resumed run sees exactly the pairs the uninterrupted run would have; a checkpoint records the global batch and the
step count, and one from another schedule is refused.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from wpo.config import Recipe, TrainConfig, config_hash, low_precision_problem
from wpo.data.io import BadRecordPolicy, write_json
from wpo.data.schemas import LoadedPairs, load_pairs
from wpo.distributed import check_launch, state_options
from wpo.errors import ConfigError, DataError, NonFiniteError, Stopped
from wpo.layout import stage_output
from wpo.manifest import move_aside, source_fingerprint, write_manifest
from wpo.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from wpo.train import checkpoint, reference, zero
from wpo.train.forward import pair_statistics, prompt_sharing, require_finite
from wpo.train.launchers import Launcher, make_launcher
from wpo.train.loss import REFERENCE_FREE_LOSSES, preference_loss
from wpo.train.metrics import MetricsLog
from wpo.train.optimizers import build_optimizer, step_in_backward
from wpo.train.precision import start_masters_on_bf16_grid
from wpo.train.reference import ReferenceLogps
from wpo.train.schedule import Schedule, build_schedule, micro_batches
from wpo.train.stopping import EXIT_CODES, StopSignals
from wpo.train.tokenize import PromptSharing, TokenizedPairs, collate_pairs, tokenize_pairs

log = logging.getLogger(__name__)


def pairs_source(recipe: Recipe) -> str:
    return recipe.train.pairs or str(stage_output(recipe, "pair"))


def run_config(recipe: Recipe) -> dict[str, Any]:
    """Everything that determines the trained weights; its hash keys checkpoints and the stage manifest."""
    return {
        "seed": recipe.seed,
        "model": recipe.model.model_dump(mode="json"),
        "model_files": source_fingerprint(recipe.model.name_or_path),
        "train": recipe.train.hashed_settings(),
        "pairs_sha256": source_fingerprint(pairs_source(recipe)),
    }


@dataclass
class TrainState:
    """Everything a step reads or changes. `setup()` builds it; `train_step()` advances it by one optimizer step."""

    recipe: Recipe
    accelerator: Accelerator
    launcher: Launcher
    model: Any
    optimizer: Any
    scheduler: Any
    tokens: TokenizedPairs
    references: ReferenceLogps | None
    schedule: Schedule
    pad_token_id: int
    sharing: PromptSharing
    # what the run saves and reports
    tokenizer: Any = None
    config: dict[str, Any] | None = None
    run_hash: str = ""
    start_step: int = 0
    loaded: LoadedPairs | None = None
    skipped: dict[str, int] | None = None


@dataclass(frozen=True)
class TrainResult:
    final_dir: Path
    steps: int
    last_metrics: dict[str, Any] | None
    reference_from_cache: bool | None
    counts: dict[str, Any]


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16; every CPU with AMX has it too): without it a bf16
    matmul runs a slow reference kernel, with the same numerics."""
    return torch.cpu._is_avx512_bf16_supported()


def compute_precision(recipe: Recipe, on_cpu: bool) -> str:
    """The autocast precision this training runs in: `train.mixed_precision: bf16` (fp32 on a CPU without bf16 units,
    with one line), else the launcher's choice (`accelerate launch --mixed_precision`, which sets
    ACCELERATE_MIXED_PRECISION), else none."""
    if recipe.train.mixed_precision == "no":
        return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if on_cpu and not cpu_has_bf16_units():
        log.warning(
            "train.mixed_precision: bf16, but this CPU has no bf16 instructions (AVX512-BF16): training in fp32"
        )
        return "no"
    return "bf16"


def make_accelerator(recipe: Recipe) -> Accelerator:
    """accelerate's Accelerator, on CPU (gloo) when the machine has no accelerator device (`wpo.distributed`), in the
    precision this recipe asks for. accelerate keeps one process-wide state and refuses to change its precision, so
    a second training in the process (a notebook, a sweep over train.mixed_precision) drops that state first; the
    process group, kept in accelerate's PartialState, stays."""
    from accelerate.state import AcceleratorState

    options = state_options()
    precision = compute_precision(recipe, options.get("cpu", False))
    earlier = AcceleratorState._shared_state.get("_mixed_precision")  # set once the state is initialized
    if earlier is not None and earlier != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    backend = options.pop("backend", None)
    accelerator = Accelerator(**options, mixed_precision=precision,
                              kwargs_handlers=[InitProcessGroupKwargs(backend=backend)] if backend else [])  # fmt: skip
    check_launch(accelerator.num_processes)
    if zero.is_deepspeed(accelerator):
        zero.load_models_whole()
    log.info("accelerate: %s, %d process(es) on %s, mixed precision: %s", accelerator.distributed_type.value,
             accelerator.num_processes, accelerator.device.type, accelerator.mixed_precision)  # fmt: skip
    return accelerator


def _shared_run_config(recipe: Recipe, accelerator: Accelerator) -> dict[str, Any]:
    """The run config as the main process computes it, so every process keys checkpoints with the same hash (file
    fingerprints read by each process could differ)."""
    if accelerator.num_processes == 1:
        return run_config(recipe)
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([run_config(recipe) if accelerator.is_main_process else None])[0]


def masters_and_optimizer(model, cfg: TrainConfig, accelerator: Accelerator, resuming: bool) -> torch.optim.Optimizer:
    """The trainable weights' starting point under bf16 (`train.bf16_masters`) and the optimizer that steps them:
    after backward, or inside it (`train.optimizer_in_backward`, one plain process only)."""
    if accelerator.mixed_precision == "bf16" and cfg.bf16_masters == "grid" and not resuming:
        weights, moved = start_masters_on_bf16_grid(model)  # a resumed run's masters are on their own course already
        log.info("bf16: the fp32 masters start on the bf16 grid (%d of %d weights of linear layers rounded; the "
                 "forward computed with those values already)", moved, weights)  # fmt: skip
    optimizer = build_optimizer(model, cfg)
    if cfg.optimizer_in_backward:
        if accelerator.distributed_type != DistributedType.NO:
            raise ConfigError(
                f"train.optimizer_in_backward runs in one plain process (this launch is "
                f"{accelerator.distributed_type.value}, {accelerator.num_processes} process(es)): it steps each "
                "gradient before it could be reduced or sharded"
            )
        step_in_backward(optimizer)
    return optimizer


def setup(recipe: Recipe) -> TrainState:
    cfg = recipe.train
    train_dir = recipe.stage_dir("train")
    if "trackio" in cfg.report_to and importlib.util.find_spec("trackio") is None:
        raise ConfigError("train.report_to names trackio, which is not installed: pip install 'wpo[trackio]'")
    problem = low_precision_problem(str(resolve_dtype(recipe.model.dtype)).removeprefix("torch."), recipe)
    if problem:  # model.dtype: auto resolved to bf16 on this machine, or the recipe's stages did not name train
        raise ConfigError(problem)
    accelerator = make_accelerator(recipe)
    set_seed(recipe.seed)
    config = _shared_run_config(recipe, accelerator)
    run_hash = config_hash(config)

    source = pairs_source(recipe)
    policy = BadRecordPolicy(recipe.on_bad_record)
    loaded = load_pairs(source, policy)
    model_path = resolve_model_path(recipe.model.name_or_path)
    tokenizer = load_tokenizer(model_path, recipe.model.trust_remote_code)
    tokens = tokenize_pairs(
        loaded.pairs, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, policy=policy
    )
    if not tokens.pairs:
        raise DataError(f"{source}: no usable pairs (read {loaded.records_read}, skipped {dict(policy.skipped)})")
    log.info(
        "pairs: read %d from %s, training on %d; skipped %s; truncated %d prompts, %d responses",
        loaded.records_read, source, len(tokens.pairs), dict(policy.skipped) or "none",
        tokens.truncated_prompts, tokens.truncated_responses,
    )  # fmt: skip

    schedule = build_schedule(len(tokens.pairs), recipe, accelerator.num_processes)
    log.info(
        "schedule: %d steps of %d pairs (%d per device x %d accumulation x %d processes), %d steps per epoch",
        schedule.total_steps, schedule.pairs_per_step, cfg.per_device_batch_size, cfg.gradient_accumulation_steps,
        accelerator.num_processes, schedule.steps_per_epoch,
    )  # fmt: skip
    stale = checkpoint.stale_checkpoints(train_dir, run_hash, config)
    if accelerator.is_main_process:
        if stale:
            move_aside(train_dir, stale[0], f"train is redone: its checkpoints were written by another config "
                                            f"(differs in: {', '.join(stale[1]) or 'unknown'})")  # fmt: skip
        elif cfg.resume == "never":
            checkpoint.prune_checkpoints(train_dir, keep=0)
    accelerator.wait_for_everyone()
    resume_point = checkpoint.latest_resume_point(train_dir, run_hash, schedule.fingerprint())

    model = load_causal_lm(_policy_weights_path(model_path, resume_point, recipe), recipe.model)
    model.to(accelerator.device)
    sharing = prompt_sharing(model, cfg.share_prompts, cfg.max_length)
    references = _reference_logps(recipe, model_path, model, tokens, tokenizer, resume_point, accelerator, sharing)
    model = _make_trainable(model, recipe, resume_point)
    optimizer = masters_and_optimizer(model, cfg, accelerator, resuming=resume_point is not None)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * schedule.total_steps),
        num_training_steps=schedule.total_steps,
    )
    launcher = make_launcher(accelerator)
    model, optimizer = launcher.prepare(model, optimizer, recipe, schedule.pairs_per_step)
    start_step = 0
    if resume_point is not None:
        launcher.restore_optimizer(model, optimizer, resume_point)
        checkpoint.restore_training_state(resume_point, scheduler)
        start_step = resume_point.step
    return TrainState(
        recipe=recipe, accelerator=accelerator, launcher=launcher, model=model, optimizer=optimizer,
        scheduler=scheduler, tokens=tokens, references=references, schedule=schedule,
        pad_token_id=tokenizer.pad_token_id, sharing=sharing, tokenizer=tokenizer, config=config, run_hash=run_hash,
        start_step=start_step, loaded=loaded, skipped=dict(policy.skipped),
    )  # fmt: skip


def train_step(state: TrainState, step: int) -> dict[str, Any]:
    """One optimizer step over the schedule's pairs for `step`; returns the logged row (means over all its pairs)."""
    cfg, accelerator, launcher = state.recipe.train, state.accelerator, state.launcher
    started = time.perf_counter()
    # the step's gradient is a sum over its pairs, whichever micro-batch each is in: grouping them by length pads less
    step_pairs = sorted(state.schedule.step_indices(step), key=lambda i: state.tokens.pairs[i].token_count)
    batches = micro_batches(step_pairs, cfg.per_device_batch_size, cfg.gradient_accumulation_steps,
                            accelerator.num_processes, accelerator.process_index)  # fmt: skip
    local_pairs = sum(len(batch) for batch in batches)
    collected: dict[str, list[torch.Tensor]] = {}
    token_count = 0
    for position, indices in enumerate(batches):
        pairs = [state.tokens.pairs[i] for i in indices]
        batch = collate_pairs(pairs, state.pad_token_id, share_prompts=state.sharing.applies_to(pairs))
        batch = batch.to(accelerator.device)
        token_count += batch.token_count
        where = f" at step {step + 1}, pairs {[state.tokens.pairs[i].id for i in indices]}"
        with launcher.accumulating(state.model, last=position == len(batches) - 1):
            try:
                with accelerator.autocast():  # bf16 compute under train.mixed_precision; a no-op otherwise
                    chosen, rejected = pair_statistics(state.model, batch, loss_chunk_size=cfg.loss_chunk_size)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc}{where}") from None
            index = torch.tensor(indices)
            references = state.references
            result = preference_loss(
                chosen,
                rejected,
                references.chosen[index].to(accelerator.device) if references else None,
                references.rejected[index].to(accelerator.device) if references else None,
                loss_type=cfg.loss,
                beta=cfg.beta,
                label_smoothing=cfg.label_smoothing,
                weighting=cfg.weighting,
                clamp=cfg.clamp,
                sft_weight=cfg.sft_weight,
                simpo_gamma=cfg.simpo_gamma,
            )
            loss = result.pair_losses.sum() / local_pairs
            require_finite("loss", loss.detach(), where)
            launcher.backward(state.model, loss)
        for name, value in (
            ("loss", result.pair_losses), ("weight", result.weights),
            ("rewards_chosen", result.chosen_rewards), ("rewards_rejected", result.rejected_rewards),
            ("logps_chosen", chosen.logps), ("logps_rejected", rejected.logps),
        ):  # fmt: skip
            collected.setdefault(name, []).append(value.detach().float())

    learning_rate = state.scheduler.get_last_lr()[0]
    grad_norm = launcher.step(state.model, state.optimizer, cfg.max_grad_norm)
    if grad_norm is not None:
        step_pairs = [state.tokens.pairs[i].id for indices in batches for i in indices]
        require_finite("gradient norm", torch.tensor(grad_norm), f" at step {step + 1}, pairs {step_pairs}")
    state.scheduler.step()

    stats = {name: accelerator.gather(torch.cat(values)).cpu().double() for name, values in collected.items()}
    tokens_seen = accelerator.gather(torch.tensor([token_count], device=accelerator.device)).sum().item()
    margins = stats["rewards_chosen"] - stats["rewards_rejected"]
    seconds = time.perf_counter() - started
    return {
        "step": step + 1,
        "epoch": (step + 1) / state.schedule.steps_per_epoch,
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
        "learning_rate": learning_rate,
        "grad_norm": grad_norm,
        "pairs": int(stats["loss"].numel()),
        "tokens_per_second": tokens_seen / seconds,
        "step_seconds": seconds,
    }


def train(recipe: Recipe) -> TrainResult:
    started = time.perf_counter()
    state = setup(recipe)
    cfg, accelerator, schedule = recipe.train, state.accelerator, state.schedule
    train_dir = recipe.stage_dir("train")
    metrics = MetricsLog(train_dir, state.start_step, enabled=accelerator.is_main_process,
                         report_to=tuple(cfg.report_to), run_name=f"{Path(recipe.output_dir).name}-seed{recipe.seed}",
                         config=state.config)  # fmt: skip
    last_row = None
    progress = tqdm(total=schedule.total_steps, initial=state.start_step, desc="train", unit="step",
                    disable=not accelerator.is_main_process)  # fmt: skip
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
    if accelerator.is_main_process:
        write_manifest(
            train_dir, stage="train", config=state.config, config_hash=state.run_hash, seed=recipe.seed,
            counts=counts, wall_seconds=time.perf_counter() - started, outputs=["final", "metrics.jsonl"],
            extra={"reference_cache": str(state.references.cache_path) if state.references else None},
        )  # fmt: skip
    return TrainResult(
        final_dir=final_dir,
        steps=schedule.total_steps,
        last_metrics=last_row,
        reference_from_cache=state.references.from_cache if state.references else None,
        counts=counts,
    )


def _stop(state: TrainState, step: int, signal_number: int, started: float) -> None:
    """After a signal: the manifest says the stage is incomplete and where it stopped; then the command stops."""
    name = signal.Signals(signal_number).name
    if state.accelerator.is_main_process:
        write_manifest(state.recipe.stage_dir("train"), stage="train", config=state.config,
                       config_hash=state.run_hash, seed=state.recipe.seed,
                       counts={**_counts(state), "stopped_at_step": step, "stopped_by": name},
                       wall_seconds=time.perf_counter() - started, outputs=[f"checkpoint-{step}"],
                       completed=False)  # fmt: skip
    raise Stopped(f"training stopped by {name} after step {step} of {state.schedule.total_steps}: checkpoint-{step} "
                  "is saved, and the rerun resumes from it", EXIT_CODES[signal_number])  # fmt: skip


def _counts(state: TrainState) -> dict[str, Any]:
    return {
        "pairs_read": state.loaded.records_read,
        "pairs_trained": len(state.tokens.pairs),
        "skipped": state.skipped,
        "truncated_prompts": state.tokens.truncated_prompts,
        "truncated_responses": state.tokens.truncated_responses,
        "steps": state.schedule.total_steps,
        "resumed_from_step": state.start_step,
        "num_processes": state.accelerator.num_processes,
        "global_batch_pairs": state.schedule.pairs_per_step,
    }


def run_train(recipe: Recipe) -> dict[str, Any]:
    """The stage entry point: train, and report the headline figures."""
    result = train(recipe)
    return {
        "output": str(result.final_dir),
        "counts": result.counts,
        "final_dir": str(result.final_dir),
        "steps": result.steps,
        "final_metrics": result.last_metrics,
        "reference_from_cache": result.reference_from_cache,
    }


def save_checkpoint(state: TrainState, step: int) -> None:
    """Every process takes part in gathering sharded weights and optimizer state; the main process writes them. The
    last step is always checkpointed: `final/` is made from it."""
    accelerator, train_dir = state.accelerator, state.recipe.stage_dir("train")
    accelerator.wait_for_everyone()
    model_state = state.launcher.whole_weights(state.model)
    optimizer_state = state.launcher.whole_optimizer_state(state.model, state.optimizer)
    if accelerator.is_main_process:
        checkpoint.save_checkpoint(
            train_dir, step=step, model=accelerator.unwrap_model(state.model), model_state=model_state,
            tokenizer=state.tokenizer, optimizer_state=optimizer_state, scheduler=state.scheduler,
            config_hash=state.run_hash, config=state.config, schedule=state.schedule.fingerprint(),
        )  # fmt: skip
        checkpoint.prune_checkpoints(train_dir, keep=state.recipe.train.save_total_limit)
    accelerator.wait_for_everyone()


def save_final(state: TrainState) -> Path:
    """`final/`: the last step's checkpointed weights (or LoRA adapter) and tokenizer, hard-linked rather than written
    again (at 9B a second copy is 36 GB of writes; checkpoints are only ever renamed or removed whole, never changed
    in place), and the hyperparameters exactly as trained, for the model card."""
    recipe, accelerator, schedule = state.recipe, state.accelerator, state.schedule
    train_dir, final_dir = recipe.stage_dir("train"), stage_output(recipe, "train")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = train_dir / ".final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(train_dir / f"checkpoint-{schedule.total_steps}" / "model", staging, copy_function=os.link)
        write_json(
            staging / "wpo_training.json",
            {
                **_lineage(recipe.model.name_or_path),
                "seed": recipe.seed,
                "num_processes": accelerator.num_processes,
                "global_batch_pairs": schedule.pairs_per_step,
                "total_steps": schedule.total_steps,
                "pairs": pairs_source(recipe),
                "lora": recipe.model.lora.model_dump() if recipe.model.lora else None,
                "train": recipe.train.model_dump(mode="json"),
            },
        )
        shutil.rmtree(final_dir, ignore_errors=True)
        staging.rename(final_dir)
    accelerator.wait_for_everyone()
    return final_dir


def _policy_weights_path(model_path: str, resume_point, recipe: Recipe) -> str:
    """Full fine-tuning resumes from the checkpoint's weights; LoRA always starts from the base."""
    if resume_point is not None and recipe.model.lora is None:
        return str(resume_point.path / "model")
    return model_path


def _reference_logps(recipe, model_path, policy_model, tokens, tokenizer, resume_point, accelerator, sharing):
    cfg = recipe.train
    if cfg.loss in REFERENCE_FREE_LOSSES:
        return None
    reference_path = resolve_model_path(cfg.reference_model) if cfg.reference_model else model_path
    policy_is_reference = (
        reference_path == model_path and _policy_weights_path(model_path, resume_point, recipe) == model_path
    )

    def load_reference():
        if policy_is_reference:
            return policy_model  # the untrained policy is the reference: no second copy in memory
        return load_causal_lm(reference_path, recipe.model).to(accelerator.device)

    # the layout too: log-probs computed with a shared prompt differ from padded rows' in the float rounding
    precision = f"{resolve_dtype(recipe.model.dtype)}|autocast={accelerator.mixed_precision}|shared={sharing.mode}"
    key = reference.cache_key(reference.model_fingerprint(reference_path), precision, tokens)
    with accelerator.autocast():  # the policy's compute precision, so step 1 sees z = 0
        result = reference.load_or_compute(
            cache_dir=reference.cache_directory(recipe.stage_dir("train")),
            key=key,
            tokens=tokens,
            load_model=load_reference,
            batch_size=cfg.per_device_batch_size,
            pad_token_id=tokenizer.pad_token_id,
            accelerator=accelerator,
            loss_chunk_size=cfg.loss_chunk_size,
            sharing=sharing,
        )
    gc.collect()
    return result


def _make_trainable(model, recipe: Recipe, resume_point):
    cfg = recipe.train
    if recipe.model.lora is not None:
        from peft import LoraConfig, PeftModel, get_peft_model

        lora = recipe.model.lora
        if resume_point is not None:
            model = PeftModel.from_pretrained(model, resume_point.path / "model", is_trainable=True)
        else:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                    target_modules=lora.target_modules, task_type="CAUSAL_LM",
                ),
            )  # fmt: skip
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
