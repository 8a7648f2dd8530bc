"""Run by `tests/test_distributed.py` under torchrun (2 processes, gloo): the chunked loss on a model whose layers
and output layer are sharded by FSDP2 (`fully_shard`) gives the unsharded full-logits path's values and gradients;
and a checkpoint saves the sharded Adam state whole and loads it back into the shards of a fresh copy.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_chunked_head.py MODEL_DIR {head,root} WORK_DIR
  head: the output layer is sharded on its own (its weight is gathered around `call_as_forward`)
  root: the output layer's weight belongs to the root module's shard group
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from wpo.training import checkpoint
from wpo.training.forward import pair_statistics
from wpo.training.tokenize import TokenizedPair, collate_pairs


def statistics(model, batch, loss_chunk_size: int) -> torch.Tensor:
    """Log-probs and aligned log-probs of the chosen and the rejected responses, as one [2, 2 x pairs] tensor."""
    halves = pair_statistics(model, batch, loss_chunk_size=loss_chunk_size)
    return torch.cat([torch.stack([half.logps, half.aligned_logps]) for half in halves], 1)


def shard(model, layout: str) -> None:
    for layer in model.model.layers:
        fully_shard(layer)
    if layout == "head":
        fully_shard(model.lm_head)
    fully_shard(model)


def adam_step(model) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    return optimizer


def check_checkpoint_roundtrip(model_dir: str, work_dir: str, model, reference, untrained, layout: str) -> None:
    """Adam state gathered whole by a checkpoint equals the unsharded run's, and loads into a fresh sharded copy."""
    sharded_adam, whole_adam = adam_step(model), adam_step(reference)
    state = checkpoint.gather_optimizer_state(model, sharded_adam, sharded=True)
    model_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    directory = Path(work_dir)
    if dist.get_rank() == 0:
        for name, parameter in reference.named_parameters():
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state["state"][name][key], whole_adam.state[parameter][key], msg=name)
        scheduler = torch.optim.lr_scheduler.LambdaLR(sharded_adam, lambda step: 1.0)
        checkpoint.save_checkpoint(
            directory,
            step=1,
            model=model,
            model_state=model_state,
            tokenizer=AutoTokenizer.from_pretrained(model_dir),
            optimizer_state=state,
            scheduler=scheduler,
            config_hash="h",
            config={},
            schedule={"global_batch_pairs": 2, "total_steps": 1},
            weight_ledger={},
        )
    dist.barrier()
    point = checkpoint.latest_resume_point(
        directory, "h", {"global_batch_pairs": 2, "total_steps": 1, "num_processes": 2}
    )
    shard(untrained, layout)
    restored = torch.optim.AdamW(untrained.parameters(), lr=1e-3)
    checkpoint.load_optimizer_state(untrained, restored, point, sharded=True)
    for (name, fresh), parameter in zip(untrained.named_parameters(), reference.parameters(), strict=True):
        local = restored.state[fresh]["exp_avg"]
        assert isinstance(local, DTensor) and local.to_local().shape[0] < parameter.shape[0], name  # a shard
        torch.testing.assert_close(local.full_tensor(), whole_adam.state[parameter]["exp_avg"], msg=name)
    if dist.get_rank() == 0:
        print(f"fsdp2 {layout}: optimizer state saved whole and restored into the shards", flush=True)


def main(model_dir: str, layout: str, work_dir: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied: one owner per shard
    model.config.tie_word_embeddings = False
    model.train()
    vocab = model.config.vocab_size
    pairs = [
        TokenizedPair(
            str(i),
            torch.randint(3, vocab, (5 + i,)).tolist(),
            torch.randint(3, vocab, (9,)).tolist(),
            torch.randint(3, vocab, (6 + 2 * i,)).tolist(),
        )
        for i in range(2)
    ]
    batch = collate_pairs(pairs, model.config.pad_token_id)

    reference = copy.deepcopy(model)
    expected = statistics(reference, batch, loss_chunk_size=0)
    expected.sum().backward()

    untrained = copy.deepcopy(model)
    shard(model, layout)
    assert isinstance(model.lm_head.weight, DTensor), type(model.lm_head.weight)
    actual = statistics(model, batch, loss_chunk_size=3)
    actual.sum().backward()  # both processes hold the same batch: the averaged gradient is the one-process gradient

    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    worst = 0.0
    for (name, sharded), whole in zip(model.named_parameters(), reference.parameters(), strict=True):
        gathered = sharded.grad.full_tensor()
        torch.testing.assert_close(gathered, whole.grad, rtol=1e-4, atol=1e-6, msg=name)
        worst = max(worst, (gathered - whole.grad).abs().max().item())
    if dist.get_rank() == 0:
        print(f"fsdp2 {layout}: values and gradients equal (largest gradient difference {worst:.2e})", flush=True)
    check_checkpoint_roundtrip(model_dir, work_dir, model, reference, untrained, layout)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
