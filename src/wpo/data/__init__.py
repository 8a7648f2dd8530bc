"""Readers, writers and schemas for the data contracts between stages (docs/design.md, "Data contracts")."""

from wpo.data.io import BadRecordPolicy, SourceRecord, atomic_writer, read_records, write_json, write_jsonl
from wpo.data.schemas import (
    Annotation,
    Candidate,
    CandidatesRecord,
    LoadedPairs,
    ModelOutput,
    Pair,
    PromptRecord,
    RecordInvalid,
    load_pairs,
    load_records,
    parse_annotation,
    parse_candidates,
    parse_model_output,
    parse_pair,
    parse_prompt,
)

__all__ = [
    "Annotation",
    "BadRecordPolicy",
    "Candidate",
    "CandidatesRecord",
    "LoadedPairs",
    "ModelOutput",
    "Pair",
    "PromptRecord",
    "RecordInvalid",
    "SourceRecord",
    "atomic_writer",
    "load_pairs",
    "load_records",
    "parse_annotation",
    "parse_candidates",
    "parse_model_output",
    "parse_pair",
    "parse_prompt",
    "read_records",
    "write_json",
    "write_jsonl",
]
