"""Eval instructions the training saw: a long word n-gram (13, as GPT-3's and Llama's contamination studies use)
shared with the run's training prompts or pairs, or, for an instruction shorter than that, the same words as a whole
training prompt.

Only the eval instructions' n-grams are held in memory (805 instructions: about 30 000); the training files are
streamed once, and an n-gram of theirs is built only where one of the instructions' could start (its first two
words): 805 instructions against 60 000 prompts and their pairs took 60 s and 7 MiB on 2 busy cores
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
    """Which eval instructions (by position) share a long n-gram with the training texts, and one such n-gram each."""

    ngram: int
    sources: list[str]
    texts_read: int
    found: dict[int, str]


def find_overlaps(
    instructions: list[str], training_texts: Iterable[str], sources: list[str], n: int = NGRAM
) -> Overlap:
    """Every instruction that shares an `n`-word sequence with a training text (lower-cased words), or whose words
    are a whole training text's when it has fewer than `n`."""
    by_ngram: dict[tuple[str, ...], list[int]] = {}
    short: dict[tuple[str, ...], list[int]] = {}
    for index, instruction in enumerate(instructions):
        tokens = words(instruction)
        if len(tokens) < n:
            short.setdefault(tuple(tokens), []).append(index)
        for gram in set(ngrams(tokens, n)):
            by_ngram.setdefault(gram, []).append(index)
    openings = {gram[:2] for gram in by_ngram}  # an n-gram is built only where one of theirs could start
    found: dict[int, str] = {}
    read = 0
    for text in training_texts:
        read += 1
        tokens = words(text)
        for index in short.get(tuple(tokens), []):
            found.setdefault(index, " ".join(tokens))
        for start, opening in enumerate(zip(tokens, tokens[1 : max(1, len(tokens) - n + 2)])):
            if opening in openings:
                gram = tuple(tokens[start : start + n])
                for index in by_ngram.get(gram, ()):
                    found.setdefault(index, " ".join(gram))
    return Overlap(n, sources, read, dict(sorted(found.items())))


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


def check_contamination(recipe: Recipe, instructions: list[str]) -> Overlap:
    sources = training_sources(recipe)

    def texts() -> Iterator[str]:
        for source in sources:
            for record in tqdm(read_records(source), desc=f"eval: contamination ({Path(source).name})", unit="record"):
                yield from texts_of(record.data)

    return find_overlaps(instructions, texts(), sources)
