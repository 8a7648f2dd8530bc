"""One forward pass over a chosen+rejected batch → per-sequence statistics for each half."""

from __future__ import annotations

from wpo.loss import SequenceStatistics, sequence_statistics
from wpo.train.tokenize import PairBatch


def split_statistics(stats: SequenceStatistics, pair_count: int) -> tuple[SequenceStatistics, SequenceStatistics]:
    halves = [slice(0, pair_count), slice(pair_count, 2 * pair_count)]
    chosen, rejected = (
        SequenceStatistics(stats.logps[rows], stats.aligned_logps[rows], stats.token_counts[rows]) for rows in halves
    )
    return chosen, rejected


def pair_statistics(model, batch: PairBatch) -> tuple[SequenceStatistics, SequenceStatistics]:
    """Chosen and rejected statistics from one concatenated forward pass.

    Logits are computed only for the positions from the shortest prompt's last token on (`logits_to_keep`). The
    model's own forward applies Gemma-2's final-logit soft-capping, so the logits reaching the loss are already capped.
    """
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        logits_to_keep=batch.logits_to_keep,
        use_cache=False,
    )
    return split_statistics(sequence_statistics(output.logits, batch.labels), batch.pair_count)
