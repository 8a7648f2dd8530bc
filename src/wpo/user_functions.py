"""The user's own Python functions named in a recipe (`module:function`): rewards, judges, eval measures.

Each is imported from the working directory or PYTHONPATH (the working directory first on sys.path) and its
signature checked when the recipe loads, so a wrong name or parameter list fails before any model is touched. A
function may take one parameter more than the documented ones, named `record` or last: the prompt's whole record,
its extra fields (e.g. `reference`) included.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
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
    _working_directory_first()
    try:
        code = [(name, _sha256(path)) for name, path in reversed(_user_modules(module_name))]  # helpers first
        _reload_changed_user_modules(code)
        module = importlib.import_module(module_name)
        _stamp_user_modules(code)
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


def _working_directory_first() -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    """Top-level module names that belong to an installed distribution (wpo included) or the standard library: their
    code is identified by the versions a manifest records, not by fingerprints."""
    return frozenset(importlib.metadata.packages_distributions()) | frozenset(sys.stdlib_module_names)


def _user_module_file(name: str) -> Path | None:
    """The source file of module `name` if it is the user's own (not installed, not the standard library)."""
    if name.partition(".")[0] in _installed_top_levels():
        return None
    spec, search_path = None, None
    for depth in range(1, name.count(".") + 2):  # found on sys.path as an import would find it now: nothing runs,
        spec = PathFinder.find_spec(".".join(name.split(".")[:depth]), search_path)  # and no earlier import counts
        if spec is None:  # unless it is no longer on the path: then the module this process holds is what runs
            spec = getattr(sys.modules.get(name), "__spec__", None)
            break
        search_path = spec.submodule_search_locations
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def _imported_names(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at the top or inside a function, relative imports resolved against `package`,
    and the packages above each (their `__init__` runs on import)."""
    names: set[str] = set()
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level + (node.module or "")) if node.level else (node.module or "")
            try:
                resolved = importlib.util.resolve_name(base, package) if node.level else base
            except ImportError:
                continue
            names.add(resolved)
            names.update(f"{resolved}.{alias.name}" for alias in node.names)  # `from pkg import module`
    parts = [name.split(".") for name in names]
    return {".".join(part[:depth]) for part in parts for depth in range(1, len(part) + 1)}  # packages run too


def _user_modules(module_name: str) -> list[tuple[str, Path]]:
    """The user's module `module_name` and every user module it imports, transitively, in discovery order."""
    _working_directory_first()
    pending, seen, found = [module_name], set(), []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _user_module_file(name)
        if path is None:
            continue
        found.append((name, path))
        pending.extend(_imported_names(path, name if path.name == "__init__.py" else name.rpartition(".")[0]))
    return found


def _reload_changed_user_modules(code: list[tuple[str, str]]) -> None:
    """A user's module imported earlier in this process (a notebook, a sweep) whose code changed since, its own or a
    helper's, is imported again with every user module it imports, helpers first (a `from helper import X` holds the
    old X until its importer runs again): the code that runs is the code the fingerprint names. `code`: the modules
    by name with their files' sha256, helpers first."""
    imported = [(sys.modules[name], digest) for name, digest in code if name in sys.modules]
    if any(getattr(module, "__wpo_sha256__", None) != digest for module, digest in imported):
        for module, digest in imported:
            importlib.reload(module)
            module.__wpo_sha256__ = digest


def _stamp_user_modules(code: list[tuple[str, str]]) -> None:
    """Record the code each imported user module was loaded from."""
    for name, digest in code:
        if name in sys.modules and not hasattr(sys.modules[name], "__wpo_sha256__"):
            sys.modules[name].__wpo_sha256__ = digest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_fingerprint(spec: str) -> dict[str, str]:
    """The sha256 of the user's code behind `module:function`: the module's file and every module it imports from
    outside installed packages, followed through their own imports. Keyed by path (relative to the working directory
    where it lies below it), so a manifest says which file changed. A function of an installed package (wpo's own
    built-ins) has none: its package's version identifies it."""
    files = {}
    for _, path in _user_modules(spec.partition(":")[0]):
        shown = os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
        files[shown] = _sha256(path)
    return dict(sorted(files.items()))


def recipe_functions(section: str, config: Any) -> dict[str, str]:
    """The user functions a stage will call, by recipe key: `score.function` (python scorer), `eval.function`
    (python judge), `eval.reward`, `eval.measures.NAME`."""
    if section == "score":
        return {"score.function": config.function} if config.scorer == "python" and config.function else {}
    functions = {"eval.function": config.function} if config.judge == "python" and config.function else {}
    if config.reward:
        functions["eval.reward"] = config.reward
    functions.update({f"eval.measures.{name}": spec for name, spec in config.measures.items()})
    return functions


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
