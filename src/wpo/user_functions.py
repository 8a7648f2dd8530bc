"""The user's own Python functions named in a recipe (`module:function`): rewards, judges, eval measures.

Each is imported from the working directory or PYTHONPATH (the working directory first on sys.path) and its
signature checked when the recipe loads, so a wrong name or parameter list fails before any model is touched. A
function may take one parameter more than the documented ones, named `record` or last: the prompt's whole record,
its extra fields (e.g. `reference`) included.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wpo.errors import ConfigError

# What each recipe key's function receives, before the optional `record`.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "score.function": ("messages", "text"),
    "eval.reward": ("messages", "text"),
    "eval.measures": ("messages", "text"),
    "eval.function": ("messages", "reference_output", "model_output"),
}


@dataclass(frozen=True)
class UserFunction:
    spec: str
    function: Callable[..., Any]
    record_as: str | None  # "positional", "keyword" (a keyword-only `record`), or None: not passed

    def __call__(self, *args: Any, record: dict[str, Any]) -> Any:
        if self.record_as == "positional":
            return self.function(*args, record)
        if self.record_as == "keyword":
            return self.function(*args, record=record)
        return self.function(*args)


def load_function(spec: str, key: str) -> UserFunction:
    """Import `module:function` for the recipe key `key` and check it accepts that key's parameters."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"{key}: {spec!r} must be 'module:function' (e.g. my_rewards:reward)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the user's module failing as it imports
        raise ConfigError(
            f"{key}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); it must be "
            "importable from the working directory or PYTHONPATH"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"{key}: module {module_name} has no function {function_name!r}")
    expected = PARAMETERS[".".join(key.split(".")[:2])]
    return UserFunction(spec, function, _record_as(function, expected, key, spec))


def _record_as(function: Callable[..., Any], expected: tuple[str, ...], key: str, spec: str) -> str | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: called with the documented parameters
        return None
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if len(required) > len(expected) + 1 or (len(positional) < len(expected) and not varargs):
        raise ConfigError(
            f"{key}: {spec}{signature} must take ({', '.join(expected)}) or ({', '.join(expected)}, record)"
        )
    if len(positional) > len(expected):
        return "positional"
    record = signature.parameters.get("record")
    return "keyword" if record is not None and record.kind is record.KEYWORD_ONLY else None


def prompt_record(record_id: str, messages: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """The record a function's `record` parameter receives: the prompt as the prompts file holds it."""
    return {"id": record_id, "messages": messages, **extra}
