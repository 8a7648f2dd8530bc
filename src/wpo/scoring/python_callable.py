"""A user function `module:function(prompt_messages, response_text) -> float`: the path for verifiable rewards.

The module is imported from the working directory or PYTHONPATH (the working directory is put first on sys.path).
"""

from __future__ import annotations

import importlib
import os
import sys

from wpo.errors import ConfigError
from wpo.scoring import ScoreRequest


def load_function(spec: str):
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"score.function {spec!r} must be 'module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"score.function: cannot import {module_name!r} ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"score.function: {module_name} has no callable {function_name!r}")
    return function


class PythonScorer:
    def __init__(self, spec: str):
        self.function = load_function(spec)

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        return [self.function(r.messages, r.response) for r in requests]
