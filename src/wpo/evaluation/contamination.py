"""Eval instructions the training saw: a long word n-gram (13, as GPT-3's and Llama's contamination studies use)
shared with the run's training prompts or pairs, or the same words as a whole training text.

An n-gram that several different eval instructions contain is the set's own wording — IFEval's constraint sentences,
a benchmark's fixed instruction — and says nothing about whether the training saw *this* item; it is set aside (and
counted). Without that rule the quickstart's 120 held-out prompts, on topics never trained on, were 55 "contaminated"
by the constraint sentences every prompt of their kind carries. A leaked templated item is still found: as a whole
text, or by its own n-grams.

Only the eval instructions' n-grams are held in memory (805 instructions: about 30 000); the training files are
streamed once, and an n-gram of theirs is built only where one of the instructions' could start (its first two
words): 805 instructions against 60 000 prompts and their pairs took 8.3 s and 13 MiB on 2 cores
(`benchmarks/contamination_check.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wpo.config import Recipe
from wpo.data.io import read_records, resolve_local
from wpo.errors import DataError
from wpo.layout import stage_output

NGRAM = 13
SKIPPED_KEYS = {"id", "role", "prompt_id", "source", "generator", "constraint", "finish_reason"}


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class Overlap:
    """Which eval instructions (by position) share a long n-gram with the training texts, and one such n-gram each;
    and how many n-grams were set aside as the eval set's shared wording."""

    ngram: int
    sources: list[str]
    texts_read: int
    found: dict[int, str]
    template_ngrams: int = 0


def find_overlaps(
    instructions: list[str], training_texts: Iterable[str], sources: list[str], n: int = NGRAM
) -> Overlap:
    """Every instruction that shares an `n`-word sequence (lower-cased words) with a training text, not counting
    sequences that other eval instructions contain too, or whose words are a whole training text's."""
    whole: dict[tuple[str, ...], list[int]] = {}
    for index, instruction in enumerate(instructions):
        if tokens := tuple(words(instruction)):
            whole.setdefault(tokens, []).append(index)
    holders: dict[tuple[str, ...], set[tuple[str, ...]]] = {}  # n-gram → the distinct instructions that contain it
    for tokens in whole:
        for gram in ngrams(list(tokens), n):
            holders.setdefault(gram, set()).add(tokens)
    by_ngram = {
        gram: [index for tokens in texts for index in whole[tokens]]
        for gram, texts in holders.items()
        if len(texts) == 1
    }
    openings = {gram[:2] for gram in by_ngram}  # an n-gram is built only where one of theirs could start
    found: dict[int, str] = {}
    read = 0
    for text in training_texts:
        read += 1
        tokens = words(text)
        for index in whole.get(tuple(tokens), []):
            found.setdefault(index, " ".join(tokens))
        for start, opening in enumerate(zip(tokens, tokens[1 : max(1, len(tokens) - n + 2)])):
            if opening in openings:
                gram = tuple(tokens[start : start + n])
                for index in by_ngram.get(gram, ()):
                    found.setdefault(index, " ".join(gram))
    return Overlap(n, sources, read, dict(sorted(found.items())), len(holders) - len(by_ngram))


def texts_of(data: Any) -> Iterator[str]:
    """Every string in a record (messages' contents, prompt, chosen, rejected, reference, ...) except identifiers."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            if key not in SKIPPED_KEYS:
                yield from texts_of(value)
    elif isinstance(data, list):
        for value in data:
            yield from texts_of(value)


def training_sources(recipe: Recipe) -> list[str]:
    """The run's training prompts (`sample.prompts`) and pairs (`train.pairs`, or each round's pair output) that are
    local files or built-in sets; a hub id is not fetched for the check."""
    candidates = [recipe.sample.prompts, recipe.train.pairs]
    candidates += [str(stage_output(recipe, "pair", number)) for number in range(1, recipe.rounds + 1)]
    sources = []
    for source in candidates:
        if source and source not in sources and _local(source):
            sources.append(source)
    return sources


def _local(source: str) -> bool:
    try:
        return resolve_local(source) is not None
    except DataError:  # a pair output not written (yet), a path that went away
        return False


def check_contamination(sources: list[str], instructions: list[str]) -> Overlap:
    """The eval instructions' long n-grams found in the training texts of `sources` (`training_sources`)."""

    def texts() -> Iterator[str]:
        for source in sources:
            for record in tqdm(read_records(source), desc=f"eval: contamination ({Path(source).name})", unit="record"):
                yield from texts_of(record.data)

    return find_overlaps(instructions, texts(), sources)
