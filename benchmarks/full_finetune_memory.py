"""How large a model's full fine-tuning fits in this machine's memory: plain AdamW vs the memory options, measured.

Each run is a fresh process training a randomly initialised Llama of a named shape (built from its config: no
download) in fp32 with wpo's trainer step: one pair of `--tokens` tokens per sequence (half prompt), gradient
checkpointing on, reference log-probs from the policy itself, `--steps` optimizer steps. It prints the process's
peak resident set, that peak per parameter, and each phase's peak (model built, reference pass, optimizer, each step). Variants: `plain` (AdamW after backward: weights, gradients and two
fp32 moments, 16 bytes a parameter) and `lean` (`train.optimizer: adamw_8bit` + `train.optimizer_in_backward`: about
6 bytes a parameter). Do not run `plain` on a shape whose 16 bytes a parameter exceed the machine's memory.

Run: python benchmarks/full_finetune_memory.py --shape llama-3.2-1b --variant plain
     python benchmarks/full_finetune_memory.py --shape llama-3.2-3b --variant lean
"""

from __future__ import annotations

import argparse
import json
import time

import peak_memory
from bare_step import bare_train_state

SHAPES = {  # the published configs' shapes (tied embeddings; Llama-3.2's vocabulary 128256 unless given)
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 49152,
    },
    "llama-3.2-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
    },
}
VARIANTS = {
    "plain": [],
    "lean": ["train.optimizer=adamw_8bit", "train.optimizer_in_backward=true", "train.max_grad_norm=null"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, required=True)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from wpo.config import load_recipe
    from wpo.training import precision, trainer
    from wpo.training.forward import prompt_sharing
    from wpo.training.reference_logps import ReferenceLogps, compute_reference_logps
    from wpo.training.tokenize import TokenizedPair, TokenizedPairs

    started = time.perf_counter()
    torch.manual_seed(0)
    config = LlamaConfig(**{"vocab_size": 128256, **SHAPES[args.shape]}, tie_word_embeddings=True, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    phases = {"model built": peak_memory.peak_mib()}  # each phase's peak resident set, MiB
    peak_memory.reset_peak()
    recipe = load_recipe(
        None,
        [
            "train.per_device_batch_size=1",
            "train.gradient_checkpointing=true",
            "train.learning_rate=1e-6",
            f"train.max_length={args.tokens + 1}",
            f"train.max_prompt_length={args.tokens // 2}",
            *VARIANTS[args.variant],
        ],
    )
    half = args.tokens // 2
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(1, config.vocab_size, (half,), generator=generator).tolist() for _ in range(3)]
    tokens = TokenizedPairs([TokenizedPair("0", ids[0], ids[1], ids[2])], 0, 0)
    model = trainer._make_trainable(model, recipe.train, None, None)
    accelerator = precision.make_accelerator(recipe.train.mixed_precision)
    sharing = prompt_sharing(model, recipe.train.share_prompts, recipe.train.max_length)
    chosen, rejected = compute_reference_logps(
        model, tokens, 1, 0, accelerator.device, loss_chunk_size=recipe.train.loss_chunk_size, sharing=sharing
    )
    phases["reference pass"] = peak_memory.peak_mib()
    peak_memory.reset_peak()
    state = bare_train_state(
        model, recipe, accelerator, tokens, ReferenceLogps(chosen, rejected, None, False), 0, sharing
    )
    phases["optimizer and prepare"] = peak_memory.peak_mib()
    losses = []
    for number in range(1, args.steps + 1):
        peak_memory.reset_peak()
        losses.append(trainer.train_step(state, 0)["loss"])
        phases[f"step {number}"] = peak_memory.peak_mib()
    peak = max(phases.values())
    print(
        json.dumps(
            {
                "shape": args.shape,
                "variant": args.variant,
                "parameters": parameters,
                "peak_rss_mib": round(peak),
                "bytes_per_parameter": round(peak * 2**20 / parameters, 2),
                "peak_mib_by_phase": {phase: round(mib) for phase, mib in phases.items()},
                "losses": losses,
                "seconds": round(time.perf_counter() - started),
            }
        )
    )


if __name__ == "__main__":
    main()
