"""Every recipe key with its type, default and description, read from the config models (`wpo keys`), and the two
ways it is printed besides the terminal's table: tab-separated lines for a pipe, and the docs' Markdown page."""

from __future__ import annotations

import json
import re
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


def plain_lines(rows: list[RecipeKey]) -> str:
    """One tab-separated line per key, under a header: what a pipe gets (`cut`, `grep`, `column -t -s$'\\t'`)."""
    lines = ["key\ttype\tdefault\tdescription"]
    lines += [f"{row.key}\t{row.type}\t{row.default}\t{row.description}" for row in rows]
    return "\n".join(lines) + "\n"


MARKDOWN_INTRO = """\
# Recipe keys

<!-- Written by `wpo keys --markdown > docs/recipe-keys.md` from the recipe's own field descriptions; edit those
(src/wpo/config/schema.py), never this page: tests/test_docs.py fails when the two differ. -->

Every key a recipe can set, with its type, its default and what it does. Set a key in the recipe's YAML (`train:`
then `beta: 0.05`) or override it on the command line with its dotted name (`wpo run recipe.yaml train.beta=0.05`).
A key inside a list of mappings is written `name[].key` (`sample.offpolicy_models[].model`). `wpo keys [SECTION]`
prints the same in a terminal, `wpo keys --json` for programs.
"""


def markdown_page(rows: list[RecipeKey]) -> str:
    """The key reference of the docs site: one table per section, top-level keys first, in declaration order."""
    sections: dict[str, list[RecipeKey]] = {"Top-level keys": []}
    intros: dict[str, str] = {}
    for row in rows:
        section, _, rest = row.key.partition(".")
        if not rest and row.default == "(section)":
            sections[section], intros[section] = [], row.description
        elif not rest:
            sections["Top-level keys"].append(row)
        else:
            sections.setdefault(section, []).append(row)
    parts = [MARKDOWN_INTRO]
    for title, members in sections.items():
        if not members:
            continue
        parts.append(f"## {title}\n")
        if title in intros:
            parts.append(_markdown_text(intros[title]) + "\n")
        table = ["| key | type | default | description |", "|---|---|---|---|"]
        table += [
            f"| `{row.key}` | {_code(row.type)} | {_code(row.default)} | {_markdown_text(row.description)} |"
            for row in members
        ]
        parts.append("\n".join(table) + "\n")
    return "\n".join(parts)


def _code(text: str) -> str:
    """Literal text set as code in a table cell: an HTML code element, since a Markdown code span keeps the backslash
    of an escaped pipe (and an unescaped one would split the cell)."""
    return f"<code>{_markdown_text(text)}</code>"


MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]|#])")


def _markdown_text(text: str) -> str:
    """A description as literal text: Markdown's specials escaped and `<...>` kept visible, not read as HTML."""
    escaped = MARKDOWN_SPECIALS.sub(r"\\\1", text)
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
