"""A user function `module:function(prompt_messages, response_text) -> float`: the path for verifiable rewards.

The module is imported from the working directory or PYTHONPATH (the working directory is put first on sys.path).
"""

from __future__ import annotations

import importlib
import os
import sys

from wpo.errors import ConfigError, WpoError
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
    """Calls the user's function per response; its exceptions and non-numeric results fail naming the prompt.

    Non-finite numbers are returned as they are: each caller refuses them naming its own record (file and line).
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.function = load_function(spec)

    def _one(self, request: ScoreRequest) -> float:
        prompt = request.messages[-1]["content"][:80] if request.messages else ""
        try:
            value = self.function(request.messages, request.response)
        except Exception as exc:  # the user's code: report which prompt broke it, not a bare traceback
            raise WpoError(f"{self.spec} failed on the prompt {prompt!r}: {type(exc).__name__}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WpoError(f"{self.spec} returned {value!r} for the prompt {prompt!r}; expected a number")
        return float(value)

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        return [self._one(r) for r in requests]
