"""Tokenizing pairs with the chat template: response boundaries, truncation, batch layout."""

from __future__ import annotations

import pytest
import torch
from helpers import GEMMA_TEMPLATE, build_tokenizer

from wpo.data import BadRecordPolicy, Pair
from wpo.errors import DataError
from wpo.training.loss import IGNORE_INDEX
from wpo.training.tokenize import TokenizedPair, collate_pairs, render_response, tokenize_pairs


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return build_tokenizer(GEMMA_TEMPLATE, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>")


def pair(prompt="What is seven plus five?", chosen="Twelve.", rejected="Eleven.", pair_id="a") -> Pair:
    return Pair(pair_id, [{"role": "user", "content": prompt}], chosen, rejected)


def test_response_is_everything_after_the_generation_prompt(gemma_tokenizer):
    """The response ends with the template's end-of-turn token (and the newline after it); the prompt ends with
    the generation prompt `<start_of_turn>model\\n`."""
    prompt_ids, response_ids = render_response(gemma_tokenizer, pair().prompt, "Twelve.")
    assert gemma_tokenizer.decode(prompt_ids).endswith("<start_of_turn>model\n")
    assert gemma_tokenizer.decode(prompt_ids).startswith("<bos><start_of_turn>user\n")
    assert gemma_tokenizer.decode(response_ids) == "Twelve.<end_of_turn>\n"
    assert gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>") in response_ids


def test_truncation_keeps_the_prompt_end_and_the_response_start(gemma_tokenizer):
    long_prompt = "seven " * 40
    full = tokenize_pairs(
        [pair(prompt=long_prompt)], gemma_tokenizer, max_length=1000, max_prompt_length=None, policy=BadRecordPolicy()
    ).pairs[0]
    cut = tokenize_pairs(
        [pair(prompt=long_prompt, chosen="x " * 50)],
        gemma_tokenizer,
        max_length=30,
        max_prompt_length=20,
        policy=BadRecordPolicy(),
    )
    assert cut.truncated_prompts == 1 and cut.truncated_responses == 1
    tokenized = cut.pairs[0]
    assert tokenized.prompt_ids == full.prompt_ids[-20:]
    assert len(tokenized.prompt_ids) + len(tokenized.chosen_ids) == 30
    assert tokenized.rejected_ids == full.rejected_ids  # short enough to stay whole


def test_prompt_longer_than_max_length_is_rejected_or_skipped(gemma_tokenizer):
    long = pair(prompt="seven " * 40, pair_id="long")
    with pytest.raises(DataError, match=r"pair long: prompt has \d+ tokens, leaving no room .* max_length 16"):
        tokenize_pairs([long], gemma_tokenizer, max_length=16, max_prompt_length=None, policy=BadRecordPolicy())
    policy = BadRecordPolicy("skip")
    result = tokenize_pairs([long, pair()], gemma_tokenizer, max_length=40, max_prompt_length=None, policy=policy)
    assert [p.id for p in result.pairs] == ["a"] and policy.skipped == {"prompt_too_long": 1}


def test_template_without_prompt_prefix_is_rejected(gemma_tokenizer):
    tokenizer = build_tokenizer(
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>>>{% endif %}",
        [],
        None,
        "<pad>",
    )
    with pytest.raises(DataError, match="does not start with its rendering of the prompt"):
        tokenize_pairs([pair()], tokenizer, max_length=100, max_prompt_length=None, policy=BadRecordPolicy())


def test_collated_labels_line_up_with_kept_logits(gemma_tokenizer):
    """Labels at column t are the token at position start + t + 1; only response tokens are labelled."""
    tokens = tokenize_pairs(
        [pair(), pair(prompt="Hi", chosen="Hello there, friend.", pair_id="b")],
        gemma_tokenizer,
        max_length=100,
        max_prompt_length=None,
        policy=BadRecordPolicy(),
    ).pairs
    batch = collate_pairs(tokens, pad_token_id=0)
    assert batch.input_ids.shape[0] == 4 and batch.pair_count == 2
    start = batch.input_ids.shape[1] - batch.logits_to_keep
    assert start == min(len(t.prompt_ids) for t in tokens) - 1
    sequences = [(t.prompt_ids, t.chosen_ids) for t in tokens] + [(t.prompt_ids, t.rejected_ids) for t in tokens]
    for row, (prompt, response) in enumerate(sequences):
        labelled = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert labelled == response
        columns = (batch.labels[row] != IGNORE_INDEX).nonzero().flatten() + start + 1
        assert batch.input_ids[row, columns].tolist() == response
        assert batch.attention_mask[row].sum().item() == len(prompt) + len(response)
    assert torch.equal(batch.input_ids[0, : len(tokens[0].prompt_ids)], torch.tensor(tokens[0].prompt_ids))


def test_a_shared_prompt_batch_holds_each_prompt_once_and_hides_each_answer_from_the_other():
    """Worked by hand: a row per pair (prompt, chosen, rejected, padding), both answers positioned from the prompt's
    end, each answer seeing its prompt and itself, padding only itself; labels and the slots predicting them."""
    pairs = [
        TokenizedPair("a", [11, 12, 13], [21, 22], [31]),
        TokenizedPair("b", [14, 15], [23], [32, 33, 34]),
        TokenizedPair("c", [16, 17], [24], [35]),
    ]
    batch = collate_pairs(pairs, pad_token_id=0, share_prompts=True)
    assert batch.shares_prompts and batch.pair_count == 3 and batch.token_count == 16
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 31], [14, 15, 23, 32, 33, 34], [16, 17, 24, 35, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 2, 3, 4], [0, 1, 2, 2, 0, 0]]
    assert batch.attention_mask.shape == (3, 1, 6, 6) and batch.attention_mask.dtype == torch.bool
    assert batch.attention_mask[:, 0].int().tolist() == [
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],  # prompt
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],  # chosen
            [1, 1, 1, 0, 0, 1],
        ],  # rejected: not the chosen answer
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 1, 1, 0],
            [1, 1, 0, 1, 1, 1],
        ],
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],  # padding
    ]
    # chosen rows, then rejected rows; the shortest prompt (2 tokens) puts the first kept position at 1, so a row
    # keeps its last 5 positions and slot = row * 5 + position - 1
    assert batch.logits_to_keep == 5
    assert batch.labels.tolist() == [
        [21, 22, IGNORE_INDEX],
        [23, IGNORE_INDEX, IGNORE_INDEX],
        [24, IGNORE_INDEX, IGNORE_INDEX],
        [31, IGNORE_INDEX, IGNORE_INDEX],
        [32, 33, 34],
        [35, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch.response_positions.tolist() == [[1, 2, 0], [5, 0, 0], [10, 0, 0], [1, 0, 0], [5, 7, 8], [10, 0, 0]]
