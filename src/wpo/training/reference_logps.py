"""Reference log-probs, computed once before training and cached, keyed by what determines them.

The key covers the reference model (its path and weight files' sizes and times), a digest of every token id the
model sees (so the pairs, the tokenizer, the chat template and the truncation settings, as far as they change what
the model reads), and how the pass computes (`ReferencePass`). Nothing that only acts after the log-probs — beta, the
loss, the weighting, the learning rate, the seed — is in it, so the runs of a sweep over those read one pass: the
cache lives in `train.reference_cache_dir` (`wpo sweep` gives its runs one, `<output_dir>/sweep/reference_cache`),
else in the run's own `train/reference_cache`. Files are written atomically, so runs sharing the directory at once
never read a half-written one (two that compute the same key write the same numbers). The cache never sits beside
the pairs: a run does not write inside its inputs (a `datasets` directory would change its own fingerprint, and the
pairs may be read-only or shared).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from wpo.data.io import atomic_writer
from wpo.errors import NonFiniteError
from wpo.training.forward import pair_statistics
from wpo.training.tokenize import NO_SHARING, PromptSharing, TokenizedPairs, collate_pairs

log = logging.getLogger(__name__)

CACHE_DIR_NAME = "reference_cache"


@dataclass(frozen=True)
class ReferenceLogps:
    chosen: torch.Tensor
    rejected: torch.Tensor
    cache_path: Path
    from_cache: bool


def model_fingerprint(resolved_path: str) -> str:
    path = Path(resolved_path)
    if not path.is_dir():
        return resolved_path
    parts = [str(path.resolve())]
    for file in sorted(path.iterdir()):
        if file.suffix in (".safetensors", ".json"):
            stat = file.stat()
            parts.append(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_directory(configured: str | None, train_dir: Path) -> Path:
    """`train.reference_cache_dir` when set (shared between runs), else the run's own `train/reference_cache`."""
    return Path(configured) if configured else train_dir / CACHE_DIR_NAME


@dataclass(frozen=True)
class ReferencePass:
    """How the pass computes, beyond the weights and the token ids. Each of these changes the log-probs, at least in
    their last bits, so a run reads only what it would have computed itself: a sweep's run gives the numbers it gives
    alone."""

    dtype: str  # the weights as loaded
    autocast: str  # the compute precision: train.mixed_precision as resolved, or the launcher's
    device: str
    prompt_sharing: str  # shared-prompt rows round differently from padded ones
    loss_chunk_size: int  # chunks of the output layer, or full logits (0)
    output_layer: str  # the output layer's products: "fp32", or autocast's dtype (so since wpo's bf16 rework, #40)
    attention: str  # how attention computes (cpu_attention.how_attention_computes)
    compiled: bool  # the policy's decoder layers compiled (train.compile): inductor's fused ops round otherwise
    batch_size: int  # which pairs are padded together
    processes: int  # each process computes every n-th pair


def cache_key(fingerprint: str, computed_by: ReferencePass, tokens: TokenizedPairs) -> str:
    payload = json.dumps({"reference": fingerprint, **asdict(computed_by), "tokens": tokens.digest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(
    model,
    tokens: TokenizedPairs,
    batch_size: int,
    pad_token_id: int,
    device,
    *,
    loss_chunk_size: int,
    sharing: PromptSharing = NO_SHARING,
    indices: list[int] | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the pairs at `indices` (default: all), in that order, by the same forward as
    training (chunked or not), without autograd. The pairs are batched shortest first, so little is padding."""
    pairs = tokens.pairs if indices is None else [tokens.pairs[i] for i in indices]
    by_length = sorted(range(len(pairs)), key=lambda i: pairs[i].token_count)
    was_training = model.training
    model.eval()
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    batches = [by_length[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    for batch_indices in tqdm(batches, desc="reference log-probs", unit="batch", disable=not show_progress):
        batch_pairs = [pairs[i] for i in batch_indices]
        batch = collate_pairs(batch_pairs, pad_token_id, share_prompts=sharing.applies_to(batch_pairs)).to(device)
        try:
            chosen_stats, rejected_stats = pair_statistics(model, batch, loss_chunk_size=loss_chunk_size)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc} in the reference pass, pairs {[p.id for p in batch_pairs]}") from None
        chosen[batch_indices] = chosen_stats.logps.float().cpu()
        rejected[batch_indices] = rejected_stats.logps.float().cpu()
    model.train(was_training)
    return chosen, rejected


def load_or_compute(
    *,
    cache_dir: Path,
    key: str,
    tokens: TokenizedPairs,
    load_model,
    batch_size: int,
    pad_token_id: int,
    accelerator,
    loss_chunk_size: int,
    sharing: PromptSharing,
) -> ReferenceLogps:
    """Read the cached log-probs for `key`, or load the reference with `load_model()`, compute and cache them.

    With several processes each computes every `num_processes`-th pair, the shards are gathered once, and the main
    process writes the cache; every process then holds all of them (the training schedule draws from all pairs).
    """
    path = cache_dir / f"reference-{key}.safetensors"
    if path.is_file():
        cached = load_file(str(path))
        if cached["chosen"].numel() == len(tokens.pairs):
            log.info("reference log-probs: read %d pairs from %s", len(tokens.pairs), path)
            return ReferenceLogps(cached["chosen"], cached["rejected"], path, from_cache=True)
        log.warning("reference cache %s has the wrong length; recomputing", path)
    model = load_model()
    count, world = len(tokens.pairs), accelerator.num_processes
    shard = list(range(accelerator.process_index, count, world))
    chosen, rejected = (
        gather_strided(values, count, accelerator)
        for values in compute_reference_logps(
            model,
            tokens,
            batch_size,
            pad_token_id,
            accelerator.device,
            loss_chunk_size=loss_chunk_size,
            sharing=sharing,
            indices=shard,
            show_progress=accelerator.is_main_process,
        )
    )
    if accelerator.is_main_process:
        with atomic_writer(path, "wb") as handle:
            handle.write(save({"chosen": chosen, "rejected": rejected}))
        log.info("reference log-probs: computed %d pairs on %d process(es), cached in %s", count, world, path)
    accelerator.wait_for_everyone()
    return ReferenceLogps(chosen, rejected, path, from_cache=False)


def gather_strided(values: torch.Tensor, count: int, accelerator) -> torch.Tensor:
    """All `count` values, in order, from every process's shard `process_index::num_processes` (shards differ in
    length by at most one, so each is padded to the longest for the collective)."""
    world = accelerator.num_processes
    if world == 1:
        return values
    longest = math.ceil(count / world)
    padded = torch.zeros(longest, dtype=values.dtype, device=accelerator.device)
    padded[: len(values)] = values.to(accelerator.device)
    gathered = accelerator.gather(padded).cpu()  # process 0's shard, then process 1's, ...
    return gathered.view(world, longest).t().reshape(-1)[:count]
