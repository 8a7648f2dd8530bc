"""`dotted.key=value` overrides, applied to a recipe's mapping before validation."""

from __future__ import annotations

from typing import Any

import yaml

from wpo.config.yaml_loader import parse_yaml
from wpo.errors import ConfigError


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` strings; values are parsed as YAML (`train.beta=0.05`, `stages=[train]`)."""
    for override in overrides:
        key, sep, raw_value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form key=value")
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        try:
            node[parts[-1]] = parse_yaml(raw_value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {override!r}: value is not valid YAML ({exc.problem})") from None
    return data
