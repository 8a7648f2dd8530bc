"""A user function `module:function(messages, text[, record]) -> float`: the path for verifiable rewards.

`record` is the prompt's whole record (`id`, `messages` and its extra fields, e.g. `reference`); see
`wpo.user_functions` for how the function is found and checked.
"""

from __future__ import annotations

from wpo.errors import WpoError
from wpo.scoring import ScoreRequest
from wpo.user_functions import load_function


class PythonScorer:
    """Calls the user's function per response; its exceptions and non-numeric results fail naming the prompt.

    Non-finite numbers are returned as they are: each caller refuses them naming its own record (file and line).
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.function = load_function(spec, "score.function")

    def _one(self, request: ScoreRequest) -> float:
        prompt = request.messages[-1]["content"][:80] if request.messages else ""
        try:
            value = self.function(request.messages, request.response, record=request.record)
        except Exception as exc:  # the user's code: report which prompt broke it, not a bare traceback
            raise WpoError(f"{self.spec} failed on the prompt {prompt!r}: {type(exc).__name__}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WpoError(f"{self.spec} returned {value!r} for the prompt {prompt!r}; expected a number")
        return float(value)

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        return [self._one(r) for r in requests]
