"""Every recipe key with its type, default and description, read from the config models (`wpo keys`)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from wpo.config import Recipe, Section


@dataclass(frozen=True)
class RecipeKey:
    key: str
    type: str
    default: str
    description: str


def recipe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[RecipeKey]:
    """Depth first, in declaration order; a nested section (`model.lora`) is listed, then its keys."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        default = field.get_default(call_default_factory=True)
        shown = "(required)" if field.is_required() else _default_text(default)
        rows.append(RecipeKey(key, type_name(field.annotation), shown, field.description or ""))
        nested = _nested_section(field.annotation)
        if nested is not None:
            inner, is_list = nested
            rows += recipe_keys(inner, f"{key}[]." if is_list else f"{key}.")
    return rows


def _nested_section(annotation: Any) -> tuple[type[Section], bool] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is list and arguments:
        found = _nested_section(arguments[0])
        return (found[0], True) if found else None
    if origin in (typing.Union, types.UnionType):
        for argument in arguments:
            found = _nested_section(argument)
            if found:
                return found
    return None


def type_name(annotation: Any) -> str:
    """A type as a recipe writer reads it: `sigmoid | ipo`, `int | null`, `list[str]`, `mapping`."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(value) for value in arguments)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(argument) for argument in arguments)
    if origin is list:
        return f"list[{type_name(arguments[0])}]" if arguments else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(value, default=str)
