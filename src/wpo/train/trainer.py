"""The one WPO trainer: pairs → tokens → cached reference log-probs → weighted preference updates → `train/final/`.

Reading order: `train()` loads and tokenizes the pairs, gets the reference log-probs (cache or one pass), builds the
policy (full or LoRA), then runs `_optimizer_step` for each step of a fixed, seeded schedule of pairs, logging and
checkpointing as it goes. The schedule is a pure function of (seed, epoch), so a resumed run sees exactly the pairs
the uninterrupted run would have.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from wpo.config import Recipe, config_hash, low_precision_problem
from wpo.data.io import BadRecordPolicy, write_json
from wpo.data.schemas import load_pairs
from wpo.distributed import check_launch, state_options
from wpo.errors import ConfigError, DataError, NonFiniteError
from wpo.train.loss import REFERENCE_FREE_LOSSES, preference_loss
from wpo.manifest import source_fingerprint, write_manifest
from wpo.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from wpo.train import checkpoint, reference, zero
from wpo.train.forward import pair_statistics, require_finite
from wpo.train.metrics import MetricsLog
from wpo.train.tokenize import collate_pairs, tokenize_pairs
from wpo.pipeline import stage_output

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


@dataclass(frozen=True)
class Schedule:
    """Which pairs each optimizer step uses: a seeded permutation per epoch, cut into steps of `pairs_per_step`."""

    pair_count: int
    pairs_per_step: int
    steps_per_epoch: int
    total_steps: int
    seed: int
    num_processes: int

    def step_indices(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.pair_count, generator=generator).tolist()
        return order[within * self.pairs_per_step : (within + 1) * self.pairs_per_step]

    def fingerprint(self) -> dict[str, int]:
        """What a checkpoint must match to resume exactly: the global batch, the step count, and (for the message) the
        process count it came from."""
        return {"global_batch_pairs": self.pairs_per_step, "total_steps": self.total_steps,
                "num_processes": self.num_processes}  # fmt: skip


def build_schedule(pair_count: int, recipe: Recipe, num_processes: int) -> Schedule:
    cfg = recipe.train
    per_step = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * num_processes
    if cfg.global_batch_size is not None and cfg.global_batch_size != per_step:
        raise ConfigError(
            f"train.global_batch_size is {cfg.global_batch_size}, but per_device_batch_size "
            f"{cfg.per_device_batch_size} x gradient_accumulation_steps {cfg.gradient_accumulation_steps} x "
            f"{num_processes} processes = {per_step}; launch with the intended number of processes "
            "(accelerate launch --config_file ...) or change the accumulation"
        )
    if num_processes > 1:
        steps_per_epoch = pair_count // per_step  # every process must see full micro-batches
    else:
        steps_per_epoch = math.ceil(pair_count / per_step)  # the last step of an epoch may be smaller
    if steps_per_epoch == 0:
        raise DataError(f"{pair_count} pairs are fewer than one optimizer step's {per_step} pairs")
    total = cfg.max_steps or steps_per_epoch * cfg.num_epochs
    return Schedule(pair_count, per_step, steps_per_epoch, total, recipe.seed, num_processes)


@dataclass(frozen=True)
class TrainResult:
    final_dir: Path
    steps: int
    last_metrics: dict[str, Any] | None
    reference_from_cache: bool | None
    counts: dict[str, Any]


def _shared_run_config(recipe: Recipe, accelerator: Accelerator) -> dict[str, Any]:
    """The run config as the main process computes it, so every process keys checkpoints with the same hash (file
    fingerprints read by each process could differ)."""
    if accelerator.num_processes == 1:
        return run_config(recipe)
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([run_config(recipe) if accelerator.is_main_process else None])[0]


def make_accelerator() -> Accelerator:
    """accelerate's Accelerator, on CPU (gloo) when the machine has no accelerator device (`wpo.distributed`)."""
    options = state_options()
    backend = options.pop("backend", None)
    accelerator = Accelerator(**options, kwargs_handlers=[InitProcessGroupKwargs(backend=backend)] if backend else [])
    check_launch(accelerator.num_processes)
    if zero.is_deepspeed(accelerator):
        zero.load_models_whole()
    log.info("accelerate: %s, %d process(es) on %s", accelerator.distributed_type.value, accelerator.num_processes,
             accelerator.device.type)  # fmt: skip
    return accelerator


def train(recipe: Recipe) -> TrainResult:
    cfg = recipe.train
    started = time.perf_counter()
    train_dir = recipe.stage_dir("train")
    problem = low_precision_problem(str(resolve_dtype(recipe.model.dtype)).removeprefix("torch."), recipe)
    if problem:  # model.dtype: auto resolved to bf16 on this machine, or the recipe's stages did not name train
        raise ConfigError(problem)
    accelerator = make_accelerator()
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

    if cfg.resume == "never" and accelerator.is_main_process:
        checkpoint.prune_checkpoints(train_dir, keep=0)
    accelerator.wait_for_everyone()
    schedule = build_schedule(len(tokens.pairs), recipe, accelerator.num_processes)
    resume_point = checkpoint.latest_resume_point(train_dir, run_hash, config, schedule.fingerprint())
    log.info(
        "schedule: %d steps of %d pairs (%d per device x %d accumulation x %d processes), %d steps per epoch",
        schedule.total_steps, schedule.pairs_per_step, cfg.per_device_batch_size, cfg.gradient_accumulation_steps,
        accelerator.num_processes, schedule.steps_per_epoch,
    )  # fmt: skip

    model = load_causal_lm(_policy_weights_path(model_path, resume_point, recipe), recipe.model)
    model.to(accelerator.device)
    references = _reference_logps(recipe, model_path, model, tokens, tokenizer, resume_point, accelerator)
    model = _make_trainable(model, recipe, resume_point)

    optimizer = _build_optimizer(model, recipe)
    group_names = _parameter_group_names(model, optimizer)
    deepspeed = zero.is_deepspeed(accelerator)
    if deepspeed:
        zero.configure(accelerator, recipe, schedule.pairs_per_step)
    # ZeRO-3 in bf16 builds its fp32 masters from its bf16 copy of the weights: put the loaded ones back instead
    masters = _trainable_weights(model) if deepspeed and zero.computes_in_bf16(accelerator) else None
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * schedule.total_steps),
        num_training_steps=schedule.total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if masters is not None:
        zero.set_masters(model, masters)
        del masters
    start_step = 0
    if resume_point is not None:
        if deepspeed:
            zero.restore_optimizer(model, checkpoint.read_optimizer_state(resume_point), str(resume_point.path))
        else:
            checkpoint.load_optimizer_state(model, optimizer.optimizer, resume_point, sharded=_is_fsdp(accelerator))
        checkpoint.restore_training_state(resume_point, scheduler)
        start_step = resume_point.step

    metrics = MetricsLog(train_dir, start_step, enabled=accelerator.is_main_process)
    last_row = None
    progress = tqdm(
        total=schedule.total_steps, initial=start_step, desc="train", unit="step",
        disable=not accelerator.is_main_process,
    )  # fmt: skip
    try:
        for step in range(start_step, schedule.total_steps):
            row = _optimizer_step(model, optimizer, scheduler, accelerator, recipe, schedule, step, tokens, references,
                                  tokenizer.pad_token_id)  # fmt: skip
            number = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", weight=f"{row['weight_mean']:.3f}")
            if number == 1 or number % cfg.logging_steps == 0 or number == schedule.total_steps:
                metrics.write(row)
                last_row = row
            if (cfg.save_steps and number % cfg.save_steps == 0) or number == schedule.total_steps:
                _save_checkpoint(train_dir, number, model, tokenizer, optimizer, group_names, scheduler, accelerator,
                                 run_hash, config, recipe, schedule)  # fmt: skip
    finally:
        progress.close()
        metrics.close()

    final_dir = _save_final(train_dir, model, tokenizer, accelerator, recipe, schedule)
    counts = {
        "pairs_read": loaded.records_read,
        "pairs_trained": len(tokens.pairs),
        "skipped": dict(policy.skipped),
        "truncated_prompts": tokens.truncated_prompts,
        "truncated_responses": tokens.truncated_responses,
        "steps": schedule.total_steps,
        "resumed_from_step": start_step,
        "num_processes": accelerator.num_processes,
        "global_batch_pairs": schedule.pairs_per_step,
    }
    if accelerator.is_main_process:
        write_manifest(
            train_dir, stage="train", config=config, config_hash=run_hash, seed=recipe.seed, counts=counts,
            wall_seconds=time.perf_counter() - started, outputs=["final", "metrics.jsonl"],
            extra={"reference_cache": str(references.cache_path) if references else None},
        )  # fmt: skip
    return TrainResult(
        final_dir=final_dir,
        steps=schedule.total_steps,
        last_metrics=last_row,
        reference_from_cache=references.from_cache if references else None,
        counts=counts,
    )


def run_train(recipe: Recipe) -> dict[str, Any]:
    """The stage entry point: train, and report the headline figures."""
    result = train(recipe)
    return {
        "final_dir": str(result.final_dir),
        "steps": result.steps,
        "final_metrics": result.last_metrics,
        "reference_from_cache": result.reference_from_cache,
    }


def _policy_weights_path(model_path: str, resume_point, recipe: Recipe) -> str:
    """Full fine-tuning resumes from the checkpoint's weights; LoRA always starts from the base."""
    if resume_point is not None and recipe.model.lora is None:
        return str(resume_point.path / "model")
    return model_path


def _reference_logps(recipe, model_path, policy_model, tokens, tokenizer, resume_point, accelerator):
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

    key = reference.cache_key(reference.model_fingerprint(reference_path), resolve_dtype(recipe.model.dtype), tokens)
    result = reference.load_or_compute(
        cache_dir=reference.cache_directory(recipe.stage_dir("train")),
        key=key,
        tokens=tokens,
        load_model=load_reference,
        batch_size=cfg.per_device_batch_size,
        pad_token_id=tokenizer.pad_token_id,
        accelerator=accelerator,
        loss_chunk_size=cfg.loss_chunk_size,
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


def _build_optimizer(model, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; like HF Trainer, biases and norm weights (1-D parameters) get no weight decay."""
    cfg = recipe.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )


def _optimizer_step(model, optimizer, scheduler, accelerator, recipe, schedule, step, tokens, references, pad_id):
    """One optimizer step over this step's pairs; returns the logged row (means over all the step's pairs)."""
    cfg = recipe.train
    started = time.perf_counter()
    indices = schedule.step_indices(step)
    world, rank, per_device = accelerator.num_processes, accelerator.process_index, cfg.per_device_batch_size
    micro_batches = []
    for k in range(cfg.gradient_accumulation_steps):
        begin = (k * world + rank) * per_device
        if indices[begin : begin + per_device]:
            micro_batches.append(indices[begin : begin + per_device])
    local_pairs = sum(len(micro) for micro in micro_batches)
    collected: dict[str, list[torch.Tensor]] = {}
    token_count = 0
    deepspeed = zero.is_deepspeed(accelerator)
    for position, micro in enumerate(micro_batches):
        batch = collate_pairs([tokens.pairs[i] for i in micro], pad_id).to(accelerator.device)
        token_count += batch.token_count
        last = position == len(micro_batches) - 1
        if deepspeed:  # the engine reduces the gradients at the boundary; the step comes once, below
            model.set_gradient_accumulation_boundary(last)
        sync = nullcontext() if last or deepspeed else accelerator.no_sync(model)
        where = f" at step {step + 1}, pairs {[tokens.pairs[i].id for i in micro]}"
        with sync:
            try:
                chosen, rejected = pair_statistics(model, batch, loss_chunk_size=cfg.loss_chunk_size)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc}{where}") from None
            index = torch.tensor(micro)
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
            )
            loss = result.pair_losses.sum() / local_pairs
            require_finite("loss", loss.detach(), where)
            if deepspeed:
                model.backward(loss, scale_wrt_gas=False)  # already the step's mean: no division by accumulation
            else:
                accelerator.backward(loss)
        for name, value in (
            ("loss", result.pair_losses), ("weight", result.weights),
            ("rewards_chosen", result.chosen_rewards), ("rewards_rejected", result.rejected_rewards),
            ("logps_chosen", chosen.logps), ("logps_rejected", rejected.logps),
        ):  # fmt: skip
            collected.setdefault(name, []).append(value.detach().float())

    learning_rate = scheduler.get_last_lr()[0]
    if deepspeed:
        norm = zero.step(model)
        grad_norm = norm if cfg.max_grad_norm else None  # logged as without DeepSpeed: only when clipping
    else:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
        if grad_norm is not None:
            require_finite("gradient norm", torch.as_tensor(grad_norm), f" at step {step + 1}, pairs "
                           f"{[tokens.pairs[i].id for micro in micro_batches for i in micro]}")  # fmt: skip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scheduler.step()

    stats = {name: accelerator.gather(torch.cat(values)).cpu().double() for name, values in collected.items()}
    tokens_seen = accelerator.gather(torch.tensor([token_count], device=accelerator.device)).sum().item()
    margins = stats["rewards_chosen"] - stats["rewards_rejected"]
    seconds = time.perf_counter() - started
    return {
        "step": step + 1,
        "epoch": (step + 1) / schedule.steps_per_epoch,
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
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "pairs": int(stats["loss"].numel()),
        "tokens_per_second": tokens_seen / seconds,
        "step_seconds": seconds,
    }


def _is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def _parameter_group_names(model, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of each optimizer group's parameters, taken before DeepSpeed flattens the groups into partitions."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [[names[id(param)] for param in group["params"]] for group in optimizer.param_groups]


def _trainable_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable weights as loaded (the base, or a checkpoint's), by name."""
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()
            if param.requires_grad}  # fmt: skip


def _whole_model_state(model, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """The whole weights to save, gathered by every process: under ZeRO-3 the fp32 masters of the trained parameters
    (enough for full fine-tuning and for a LoRA adapter), else accelerate's full state dict (FSDP gathers it)."""
    if zero.is_deepspeed(accelerator):
        return zero.gather_weights(model, keep=accelerator.is_main_process)
    return accelerator.get_state_dict(model)


def _save_checkpoint(train_dir, step, model, tokenizer, optimizer, group_names, scheduler, accelerator, run_hash,
                     config, recipe, schedule):  # fmt: skip
    """Every process takes part in gathering sharded weights and optimizer state; the main process writes them."""
    accelerator.wait_for_everyone()
    model_state = _whole_model_state(model, accelerator)
    if zero.is_deepspeed(accelerator):
        optimizer_state = zero.gather_optimizer_state(model, group_names, keep=accelerator.is_main_process)
    else:
        optimizer_state = checkpoint.gather_optimizer_state(model, optimizer.optimizer, sharded=_is_fsdp(accelerator))
    if accelerator.is_main_process:
        checkpoint.save_checkpoint(
            train_dir, step=step, model=accelerator.unwrap_model(model), model_state=model_state, tokenizer=tokenizer,
            optimizer_state=optimizer_state, scheduler=scheduler, config_hash=run_hash, config=config,
            schedule=schedule.fingerprint(),
        )  # fmt: skip
        checkpoint.prune_checkpoints(train_dir, keep=recipe.train.save_total_limit)
    accelerator.wait_for_everyone()


def _lineage(model_path: str) -> dict[str, Any]:
    """The untrained base model and how many WPO rounds led here: training a wpo-trained model continues its line."""
    previous = Path(model_path) / "wpo_training.json"
    if previous.is_file():
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        return {"base_model": earlier["base_model"], "round": earlier.get("round", 1) + 1, "trained_from": model_path}
    return {"base_model": model_path, "round": 1, "trained_from": model_path}


def _save_final(train_dir, model, tokenizer, accelerator, recipe: Recipe, schedule: Schedule) -> Path:
    """Weights (or the LoRA adapter), tokenizer and the hyperparameters exactly as trained, for the model card."""
    final_dir = stage_output(recipe, "train")
    accelerator.wait_for_everyone()
    state_dict = _whole_model_state(model, accelerator)
    if accelerator.is_main_process:
        staging = train_dir / ".final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(staging)
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
