"""The small rules every stage's `check` is made of, each written once.

A stage's `check` (beside its run, in its `stage.py`) and the code that needs a setting at run time call the same
rule, so `wpo config` and `wpo run` fail with the same words: a setting that a choice needs (`needed`), a path that
must be on this machine (`exists`, a lack otherwise: `wpo.machine`), a user function that must import and take its
parameters (`user_function`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wpo import machine
from wpo.data.io import BUILTIN_PREFIX, resolve_builtin
from wpo.errors import ConfigError
from wpo.machine import Lack


def required(key: str, value: Any, why: str, fix: str) -> Any:
    """`value`, or a ConfigError saying `key` is required by `why` and how to set it."""
    if value is None or value == "":
        raise ConfigError(f"{key} is required by {why}: {fix}")
    return value


@dataclass(frozen=True)
class Need:
    """The setting one kind of scorer or judge cannot run without, and what to set it to."""

    setting: str
    fix: str


def needed(section: str, config: Any, kind_key: str, needs: dict[str, Need]) -> Any:
    """The setting that the section's chosen kind (`score.scorer`, `eval.judge`) needs, or the error naming it."""
    kind = getattr(config, kind_key)
    need = needs[kind]
    return required(
        f"{section}.{need.setting}", getattr(config, need.setting), f"{section}.{kind_key}: {kind}", need.fix
    )


def exists(key: str, source: str | None, lacks: list[Lack | None]) -> None:
    """A `builtin:` name in `key` that the package does not ship (the recipe's mistake), or a local path that is not
    on this machine (a lack); hub ids are left to the hub."""
    if source and source.startswith(BUILTIN_PREFIX):
        resolve_builtin(source)
    else:
        lacks.append(machine.local_path(key, source))


def user_function(spec: str, key: str) -> None:
    """The function imports and takes the parameters `key` documents."""
    from wpo.user_functions import load_function

    load_function(spec, key)


def needed_and_there(
    section: str, config: Any, kind_key: str, needs: dict[str, Need], lacks: list[Lack | None]
) -> None:
    """The chosen kind's setting is set, and names a function that imports or a path that is here."""
    value = needed(section, config, kind_key, needs)
    key = f"{section}.{needs[getattr(config, kind_key)].setting}"
    if needs[getattr(config, kind_key)].setting == "function":
        user_function(value, key)
    elif isinstance(value, str):
        exists(key, value, lacks)
