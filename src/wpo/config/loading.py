"""`load_recipe`: a recipe file, a mapping or the defaults, with overrides, validated once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from wpo.config.messages import validation_message
from wpo.config.overrides import apply_overrides
from wpo.config.schema import Recipe
from wpo.config.yaml_loader import DuplicateKeyError, parse_yaml
from wpo.errors import ConfigError


def load_recipe(path: str | Path | dict[str, Any] | None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file, a mapping (as a notebook builds one) or the defaults (`None`), then apply
    `key=value` overrides."""
    if isinstance(path, dict):
        try:
            recipe = Recipe.model_validate(apply_overrides(copy.deepcopy(path), overrides or []))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "(mapping)")) from None
        recipe._source = "(mapping)"
        return recipe
    source = str(path) if path is not None else "(defaults)"
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"recipe {source} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"recipe {source} is a directory: give the recipe's YAML file") from None
        except PermissionError:
            raise ConfigError(f"recipe {source} cannot be read (permission denied)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {source} is not valid UTF-8") from None
        try:
            data = parse_yaml(text) or {}
        except DuplicateKeyError as exc:
            raise ConfigError(f"{source}:{exc.problem_mark.line + 1}: {exc.problem}; keep one") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source)) from None
    recipe._source = source
    return recipe
