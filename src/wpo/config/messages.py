"""A validation error in the user's words: each problem as `source: dotted.key: what`, an unknown key with the
closest known one."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from wpo.config.schema import Recipe


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        candidates = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def validation_message(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        path = ".".join(str(p) for p in loc) or "(recipe)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(Recipe, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?" if close else ""
            lines.append(f"{source}: {path}: unknown key{hint}")
        elif error["type"] == "value_error":
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{source}: {message}" if loc == () else f"{source}: {path}: {message}")
        else:
            lines.append(f"{source}: {path}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(dict.fromkeys(lines))
