"""Step time and peak memory of one WPO optimizer step on SmolLM2-135M: chunked vs full logits vs TRL, side by side.

Every variant trains the embedded SmolLM2-135M-Instruct (fp32, as loaded by `wpo.models.load_causal_lm`) on the
same `--pairs` synthetic pairs of exactly `--tokens` tokens per sequence (half prompt, half response; the words are
single tokens, so TRL's own tokenization of the text gives the same ids, which the TRL child checks). Each runs in a
fresh subprocess; `process s` is a child's whole life, cold start to end (imports, model load, reference pass, every
step); memory is the peak resident set of the training steps over what was resident before the first (model,
precomputed reference log-probs and optimizer object included in that baseline; gradients, Adam state and
activations not), and the process's peak over its whole life. Variants:

- `chunked`:      the trainer's default, `train.loss_chunk_size: 256` (`wpo.training.chunked_loss`) and
                  `train.share_prompts: auto` (a row per pair, its prompt computed once for both answers, where that
                  costs fewer FLOPs than two padded rows)
- `padded`:       `chunked` with `train.share_prompts: never`: two padded rows per pair, the prompt computed twice
- `shared`:       `chunked` with `train.share_prompts: always`
- `chunked-bf16`: the same under `train.mixed_precision: bf16` (bf16 compute over fp32 master weights, the ones
                  on a bf16 rounding tie rounded); run only on a CPU with bf16 instructions (or with
                  `--bf16-anywhere`, slowly)
- `chunked-bf16-keep`: `chunked-bf16` with `train.bf16_ties: keep` (tie weights as loaded: the embedded
                  model's weights on bf16 ties move the forward further than the update, benchmarks/bf16_update.py)
- `chunked-compiled`, `chunked-bf16-compiled`: `chunked` and `chunked-bf16` with `train.compile: true` (each
                  decoder layer compiled by torch.compile; the untimed first step compiles)
- `in-backward`:  `chunked` with `train.optimizer_in_backward: true` (and no clipping): each gradient freed once used
- `adamw-8bit`:   `chunked` with `train.optimizer: adamw_8bit` (bitsandbytes' AdamW8bit: moments in 8 bits)
- `lean`:         both memory options; `lean-bf16` the same under bf16
- `full-logits`:  `train.loss_chunk_size: 0`, logits from the shortest prompt on (`logits_to_keep`)
- `trl`:          TRL 1.16 `DPOTrainer(use_weighting=True)` set up like ours: reference log-probs precomputed
                  (`precompute_ref_log_probs=True`), gradient checkpointing as `--gradient-checkpointing`, and
                  `bf16=False`: TRL autocasts to bf16 by default, ~10x slower on a CPU without bf16 units
- `trl-bf16`:     `trl` with `bf16=True` (its default), the autocast the issue saw run ~10x slower than fp32; run
                  only on a CPU with bf16 instructions, as `chunked-bf16`
- `trl-defaults`: TRL's defaults apart from `bf16=False` and no truncation: a reference model kept in memory and
                  run every step, gradient checkpointing on (not run unless named in `--variants`)

`--lora` trains a LoRA adapter instead (r 16, alpha 32, dropout 0, every linear layer of the body; TRL through its
`peft_config` with the same settings): gradients and Adam state shrink to the adapter's, so the step's peak is what
the forward and backward hold, the loss's logits included.

Our trainer's first-step losses (policy = reference, weight unclamped as TRL's) must equal TRL's logged ones; each
bf16 variant's losses are printed step by step against its fp32 twin's (and `adamw-8bit`'s against `chunked`'s). Each step's achieved GFLOP/s (the model's matmul FLOPs: 6 per
weight per token for forward and backward, 2 more with checkpointing, plus attention's, over the step's CPU time;
the tokens the model computed, so a shared prompt counts once) is printed beside the per-core matmul peak measured
in the same run at SmolLM2's layer shapes, fp32 and bf16.

`--profile DIR` writes each variant's torch profile of its steps (the ops by CPU time) to DIR: on a CPU with bf16
units, `--variants chunked chunked-bf16 trl trl-bf16 --profile DIR` shows which ops an autocast spends its time in.
Profiling slows the steps; time without it. Every child sets malloc up as the `wpo` command does (`wpo.allocator`),
TRL's too, so the ratios compare code; `--glibc-malloc` keeps glibc's default in all of them.

Run: python benchmarks/train_step.py [--tokens 512 1024 2048] [--variants chunked full-logits trl] [--pairs 1]
     [--steps 2] [--gradient-checkpointing] [--lora] [--profile DIR] [--bf16-anywhere] [--glibc-malloc]
     (the defaults: ~25 min on a 2-core CPU; ~40 min on one core)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import peak_memory
from bare_step import bare_train_state
from peak_memory import ratio
from transformers import TrainerCallback

MODEL = "embedded:smollm2-135m-instruct"
VARIANTS = (
    "chunked",
    "padded",
    "shared",
    "chunked-bf16",
    "chunked-bf16-keep",
    "chunked-compiled",
    "chunked-bf16-compiled",
    "full-logits",
    "in-backward",
    "adamw-8bit",
    "lean",
    "lean-bf16",
    "trl",
    "trl-bf16",
    "trl-defaults",
)
BF16_VARIANTS = ("chunked-bf16", "chunked-bf16-keep", "chunked-bf16-compiled", "lean-bf16", "trl-bf16")
IN_BACKWARD = ("train.optimizer_in_backward=true", "train.max_grad_norm=null")
EXTRA_SETTINGS = {  # the recipe keys each variant adds to the trainer's defaults
    "padded": ["train.share_prompts=never"],
    "shared": ["train.share_prompts=always"],
    "full-logits": ["train.loss_chunk_size=0"],
    "chunked-bf16": ["train.mixed_precision=bf16"],
    "chunked-bf16-keep": ["train.mixed_precision=bf16", "train.bf16_ties=keep"],
    "chunked-compiled": ["train.compile=true"],
    "chunked-bf16-compiled": ["train.mixed_precision=bf16", "train.compile=true"],
    "in-backward": [*IN_BACKWARD],
    "adamw-8bit": ["train.optimizer=adamw_8bit"],
    "lean": [*IN_BACKWARD, "train.optimizer=adamw_8bit"],
    "lean-bf16": [*IN_BACKWARD, "train.optimizer=adamw_8bit", "train.mixed_precision=bf16"],
}
LEARNING_RATE, BETA = 1e-6, 0.1
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


def synthetic_pairs(tokenizer, pairs: int, tokens: int) -> list[dict]:
    """Texts of single-token words and their ids: `tokens // 2` random prompt words, then responses that repeat an
    8-word phrase (predictable in context, so log-probs and WPO weights are not vanishingly small), then the EOS.

    TRL tokenizes the text itself and appends the EOS to each response; ours is given the same ids directly.
    """
    vocab = tokenizer.get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and len(t) > 3)
    rng = random.Random(0)

    def text_and_ids(count: int, period: int | None = None) -> tuple[str, list[int]]:
        phrase = [rng.choice(words) for _ in range(period or count)]
        chosen = [phrase[i % len(phrase)] for i in range(count)]
        return "".join(" " + word for word in chosen), [vocab["Ġ" + word] for word in chosen]

    rows = []
    for _ in range(pairs):
        prompt, prompt_ids = text_and_ids(tokens // 2)
        (chosen, chosen_ids), (rejected, rejected_ids) = (text_and_ids(tokens - tokens // 2 - 1, 8) for _ in "cr")
        eos = [tokenizer.eos_token_id]
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "prompt_ids": prompt_ids,
                "chosen_ids": chosen_ids + eos,
                "rejected_ids": rejected_ids + eos,
            }
        )
    return rows


def wpo_child(
    variant: str, pairs: int, tokens: int, steps: int, checkpointing: bool, lora: bool, profile: Path | None
) -> dict:
    import torch

    from wpo.config import load_recipe
    from wpo.models import load_causal_lm, load_tokenizer, resolve_model_path
    from wpo.training import layer_compile, precision, trainer
    from wpo.training.forward import prompt_sharing
    from wpo.training.reference_logps import ReferenceLogps, compute_reference_logps
    from wpo.training.tokenize import TokenizedPair, TokenizedPairs

    torch.manual_seed(0)
    recipe = load_recipe(
        None,
        [
            f"model.name_or_path={MODEL}",
            f"train.per_device_batch_size={pairs}",
            "train.warmup_ratio=0",
            f"train.learning_rate={LEARNING_RATE}",
            f"train.beta={BETA}",
            "train.clamp=false",
            f"train.gradient_checkpointing={str(checkpointing).lower()}",
            f"train.max_length={tokens + 1}",
            f"train.max_prompt_length={tokens // 2}",
            *EXTRA_SETTINGS.get(variant, []),
            *([f"model.lora={json.dumps(LORA)}"] if lora else []),
        ],
    )
    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    rows = synthetic_pairs(tokenizer, pairs, tokens)
    tokenized = TokenizedPairs(
        [TokenizedPair(str(i), r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for i, r in enumerate(rows)], 0, 0
    )
    model = trainer._make_trainable(load_causal_lm(path, recipe.model), recipe.train, recipe.model.lora, None)
    accelerator = precision.make_accelerator(
        recipe.train.mixed_precision
    )  # the precision the recipe gets, as in the trainer
    chunk = recipe.train.loss_chunk_size
    sharing = prompt_sharing(model, recipe.train.share_prompts, recipe.train.max_length)
    share = sharing.applies_to(tokenized.pairs)  # the pairs all have the same lengths
    if recipe.train.compile:  # as the trainer's setup does: before the reference pass; the untimed first step compiles
        layer_compile.compile_decoder_layers(model, accelerator.distributed_type)
    with accelerator.autocast():  # the reference in the policy's compute precision, as the trainer does
        chosen, rejected = compute_reference_logps(
            model, tokenized, pairs, tokenizer.pad_token_id, accelerator.device, loss_chunk_size=chunk, sharing=sharing
        )
    references = ReferenceLogps(chosen, rejected, None, False)  # policy = reference: step-1 loss is ln 2 x weight
    state = bare_train_state(model, recipe, accelerator, tokenized, references, tokenizer.pad_token_id, sharing)
    setup_peak = peak_memory.peak_mib()
    start = peak_memory.reset_peak()
    wall, cpu, losses = [], [], []
    profiler = OpProfile(profile)
    for _ in range(steps + 1):
        profiler.start()
        started, started_cpu = time.perf_counter(), time.process_time()
        row = trainer.train_step(state, 0)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        losses.append(row["loss"])
    profiler.stop()
    computed = round(row["tokens_per_second"] * row["step_seconds"])
    settings = (
        f"loss_chunk_size={chunk}, share_prompts={share}, mixed_precision={accelerator.mixed_precision}, "
        f"lora={lora}, {' '.join(EXTRA_SETTINGS.get(variant, []))}"
    )
    return result(variant, wall, cpu, setup_peak, start, losses, settings, computed)


def trl_child(
    variant: str, pairs: int, tokens: int, steps: int, checkpointing: bool, lora: bool, profile: Path | None
) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from wpo.config import ModelConfig
    from wpo.models import load_causal_lm, load_tokenizer, resolve_model_path

    torch.manual_seed(0)
    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    rows = synthetic_pairs(tokenizer, pairs, tokens)
    matched = variant in ("trl", "trl-bf16")
    settings = {"precompute_ref_log_probs": True, "gradient_checkpointing": checkpointing} if matched else {}
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(
            output_dir=output_dir,
            use_weighting=True,
            bf16=variant == "trl-bf16",
            max_length=None,
            beta=BETA,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            per_device_train_batch_size=pairs,
            max_steps=steps + 1,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            **settings,
        )
        dataset = Dataset.from_list([{key: r[key] for key in ("prompt", "chosen", "rejected")} for r in rows])
        peft_config = (
            LoraConfig(
                r=LORA["r"],
                lora_alpha=LORA["alpha"],
                lora_dropout=LORA["dropout"],
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            if lora
            else None
        )
        dpo = DPOTrainer(
            model=load_causal_lm(path, ModelConfig()),
            args=config,
            processing_class=tokenizer,
            train_dataset=dataset,
            peft_config=peft_config,
        )
        for row, prepared in zip(rows, dpo.train_dataset, strict=True):
            for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
                assert prepared[key] == row[key], f"TRL tokenized {key} differently"
        timer = StepTimer(OpProfile(profile))
        dpo.add_callback(timer)
        dpo.train()
        losses = [entry["loss"] for entry in dpo.state.log_history if "loss" in entry]
        settings_text = ", ".join(
            f"{k}={getattr(config, k)}" for k in ("precompute_ref_log_probs", "gradient_checkpointing", "bf16")
        )
        settings_text += f", lora={lora}"
    # TRL computes chosen and rejected as two sequences, each with the prompt (equal lengths here: no padding)
    computed = 2 * pairs * tokens
    return result(variant, timer.wall, timer.cpu, timer.setup_peak, timer.start, losses, settings_text, computed)


class OpProfile:
    """With `--profile DIR`: the torch profiler over the training steps (from the first step's start to the end),
    written to DIR as a table of the ops that took the CPU time, most first — where an autocast spends it."""

    def __init__(self, path: Path | None):
        self.path, self.profiler = path, None

    def start(self) -> None:
        if self.path is not None and self.profiler is None:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.path.write_text(self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
            self.profiler = None


class StepTimer(TrainerCallback):
    """Peak memory from the start of training; the time of each step, from the end of the one before."""

    def __init__(self, profiler: OpProfile):
        self.profiler = profiler
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.mark: tuple[float, float] | None = None
        self.setup_peak = self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.setup_peak = peak_memory.peak_mib()
        self.start = peak_memory.reset_peak()

    def on_step_begin(self, args, state, control, **kwargs):
        self.profiler.start()
        self.mark = self.mark or (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self.mark[0])
        self.cpu.append(now[1] - self.mark[1])
        self.mark = now

    def on_train_end(self, args, state, control, **kwargs):
        self.profiler.stop()


def result(
    variant, wall: list[float], cpu: list[float], setup_peak, start, losses: list[float], settings: str, tokens: int
) -> dict:
    """The first step allocates the optimizer state and is left out of the median times, not out of the peak;
    `tokens` is how many the model computes per step (a shared prompt counts once).

    CPU seconds (of this single-threaded process) are what the ratios use: on a machine shared with other jobs the
    wall time of a step depends on what else runs meanwhile, its CPU time much less.
    """
    return {
        "variant": variant,
        "settings": settings,
        "step_seconds": statistics.median(wall[1:]),
        "step_cpu_seconds": statistics.median(cpu[1:]),
        "process_peak_mib": max(setup_peak, peak_memory.peak_mib()),
        "step_peak_over_start_mib": peak_memory.peak_mib() - start,
        "computed_tokens": tokens,
        "first_loss": losses[0],
        "losses": losses,
    }


def model_flops_per_token(checkpointing: bool, lora: bool, tokens: int) -> float:
    """Matmul FLOPs per trained token of one policy forward and backward (the reference is precomputed): 2 per weight
    forward, 4 backward (2 with LoRA: no weight gradients for the frozen body), 2 more forward with checkpointing;
    attention's scores and mix (4·T·d per layer forward, causal half) count alike; LoRA's own small matmuls do not."""
    from transformers import AutoConfig

    from wpo.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(MODEL))
    d, layers, head_dim = config.hidden_size, config.num_hidden_layers, config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    weights = layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size) + d * config.vocab_size
    attention = layers * 4 * tokens * d / 2
    passes = 2 + (2 if lora else 4) + (2 if checkpointing else 0)
    return passes * weights + passes * attention


def matmul_peaks() -> dict[str, float]:
    """One core's matmul GFLOP/s at SmolLM2's MLP shape (512 tokens x 576 @ 576 x 1536), fp32 and bf16."""
    import torch
    from matmul_peak import gflops

    from wpo.training import precision

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    supported = precision.cpu_has_bf16_units()  # without the units a bf16 product takes ~0.5 s: time fewer
    peaks = {
        name: gflops(0, repeats, dtype, (512, 576, 1536))
        for name, dtype, repeats in (
            ("float32", torch.float32, 100),
            ("bfloat16", torch.bfloat16, 100 if supported else 3),
        )
    }
    torch.set_num_threads(threads)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["chunked", "padded", "chunked-bf16", "full-logits", "trl"]
    )
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one untimed first step")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for ours and `trl` alike")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (ours and TRL's alike)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write each variant's op profile of its steps to DIR/<variant>-T<tokens>.txt",
    )
    parser.add_argument(
        "--bf16-anywhere",
        action="store_true",
        help="run the bf16 variants on a CPU without bf16 units too (same numerics, ~10-100x slower)",
    )
    parser.add_argument(
        "--glibc-malloc",
        action="store_true",
        help="every child keeps glibc's default malloc, not what the wpo command sets up (wpo.allocator)",
    )
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        if not args.glibc_malloc:
            from wpo import allocator

            allocator.keep_freed_memory()  # as the wpo command does; TRL's children alike, so ratios compare code
        if args.bf16_anywhere:
            from wpo.training import precision

            precision.cpu_has_bf16_units = lambda: True  # the trainer's bf16 path, run by the reference kernels
        run = trl_child if args.child.startswith("trl") else wpo_child
        profile = args.profile / f"{args.child}-T{args.tokens[0]}.txt" if args.profile else None
        measured = run(
            args.child, args.pairs, args.tokens[0], args.steps, args.gradient_checkpointing, args.lora, profile
        )
        print(json.dumps(measured))
        return
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    import torch

    from wpo.training import precision

    trl_version = "not run"
    if any(variant.startswith("trl") for variant in args.variants):
        import trl  # pip install 'wpo[bench]'

        trl_version = trl.__version__
    variants = list(args.variants)
    if not precision.cpu_has_bf16_units() and not args.bf16_anywhere:
        for variant in [v for v in variants if v in BF16_VARIANTS]:
            variants.remove(variant)
            print(
                f"{variant}: not run, this CPU has no bf16 instructions (AVX512-BF16): bf16 matmuls run a "
                "reference kernel ~100x slower than fp32 here (benchmarks/matmul_peak.py)"
            )
    peaks = matmul_peaks()
    print(
        f"one core's matmul peak at 512x576 @ 576x1536: fp32 {peaks['float32']:.1f} GFLOP/s, "
        f"bf16 {peaks['bfloat16']:.1f} GFLOP/s"
    )
    print(
        f"SmolLM2-135M fp32, {'LoRA' if args.lora else 'full fine-tuning'}, {args.pairs} pair(s) x T tokens per "
        f"sequence (half prompt), median of {args.steps} steps "
        f"after the first, ratios of CPU time; gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} "
        f"(trl-defaults: on); torch {torch.__version__} ({torch.get_num_threads()} threads), trl {trl_version}"
    )
    print(
        f"{'T':>5} {'variant':<13} {'process s':>9} {'x trl':>6} {'wall s':>7} {'CPU s':>7} {'x trl':>6} "
        f"{'x full':>7} {'GFLOP/s':>8} {'x peak':>7} {'peak RSS MiB':>13} {'x trl':>6} {'step peak MiB':>14} "
        f"{'x trl':>6} {'x full':>7}  {'first loss':<12}  settings"
    )
    for tokens in args.tokens:
        flops_per_token = model_flops_per_token(args.gradient_checkpointing, args.lora, tokens)
        results = {}
        for variant in variants:
            arguments = [
                "--child",
                variant,
                "--pairs",
                str(args.pairs),
                "--tokens",
                str(tokens),
                "--steps",
                str(args.steps),
                *(["--gradient-checkpointing"] * args.gradient_checkpointing),
                *(["--lora"] * args.lora),
                *(["--profile", str(args.profile)] if args.profile else []),
                *(["--bf16-anywhere"] * args.bf16_anywhere),
                *(["--glibc-malloc"] * args.glibc_malloc),
            ]
            started = time.perf_counter()
            results[variant] = peak_memory.run_child(__file__, arguments)
            results[variant]["process_seconds"] = time.perf_counter() - started  # cold start to end
        trl_result, full = results.get("trl"), results.get("full-logits")
        for variant, r in results.items():
            # the FLOPs of what the model computed, per core (CPU seconds over every thread)
            achieved = flops_per_token * r["computed_tokens"] / r["step_cpu_seconds"] / 1e9
            peak = peaks["bfloat16" if variant in BF16_VARIANTS else "float32"]
            print(
                f"{tokens:>5} {variant:<13} {r['process_seconds']:>9.1f} {ratio(r, trl_result, 'process_seconds'):>6} "
                f"{r['step_seconds']:>7.2f} {r['step_cpu_seconds']:>7.2f} "
                f"{ratio(r, trl_result, 'step_cpu_seconds'):>6} {ratio(r, full, 'step_cpu_seconds'):>7} "
                f"{achieved:>8.1f} {achieved / peak:>7.2f} {r['process_peak_mib']:>13.0f} "
                f"{ratio(r, trl_result, 'process_peak_mib'):>6} "
                f"{r['step_peak_over_start_mib']:>14.0f} {ratio(r, trl_result, 'step_peak_over_start_mib'):>6} "
                f"{ratio(r, full, 'step_peak_over_start_mib'):>7}  {r['first_loss']:.6e}   {r['settings']}",
                flush=True,
            )
        losses = [r["first_loss"] for variant, r in results.items() if variant not in BF16_VARIANTS]
        agree = all(math.isclose(loss, losses[0], rel_tol=1e-3) for loss in losses)
        print(f"{tokens:>5} fp32 first-step losses agree to 1e-3: {agree}", flush=True)
        for bf16, fp32 in (
            ("chunked-bf16", "chunked"),
            ("chunked-bf16-keep", "chunked"),
            ("chunked-bf16-compiled", "chunked"),
            ("lean-bf16", "lean"),
            ("trl-bf16", "trl"),
        ):
            if bf16 in results and fp32 in results:
                pairs = zip(results[bf16]["losses"], results[fp32]["losses"], strict=True)
                print(
                    f"{tokens:>5} {bf16} loss vs {fp32}'s, step by step: "
                    + "  ".join(f"{a:.4g} vs {b:.4g} ({a / b - 1:+.1%})" for a, b in pairs),
                    flush=True,
                )
        if "adamw-8bit" in results and "chunked" in results:
            offs = [abs(a / b - 1) for a, b in zip(results["adamw-8bit"]["losses"], results["chunked"]["losses"])]
            print(
                f"{tokens:>5} adamw-8bit loss vs chunked's, step by step: {' '.join(f'{off:.2%}' for off in offs)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
