"""`eval.judge: alpaca_eval`: AlpacaEval 2's judging, by the installed `alpaca_eval` package's own annotator.

The annotator config (`eval.annotator`: a name shipped with alpaca_eval, e.g. `weighted_alpaca_eval_gpt4_turbo`, or
a path to a `configs.yaml`) is loaded and run by alpaca_eval's `PairwiseAnnotator` itself: its prompt template, its
output order (switched per instruction, seeded on the instruction as alpaca_eval seeds it), its completion settings
and its parser (for the weighted annotators, the judge's probability of one model identifier among the two, read
from the first token's top log-probs) are the package's. Only the transport is wpo's: the prompts alpaca_eval builds
go through wpo's endpoint client (`eval.api`: concurrency, the answer cache, usage, retries) to any OpenAI-compatible
server — OpenAI, vLLM, llama.cpp's server — exactly as alpaca_eval's `openai_completions` would send them.

Figures are comparable with the public AlpacaEval 2 leaderboard only with its own annotator
(`weighted_alpaca_eval_gpt4_turbo`), judged by that annotator's model, on its 805 instructions against its reference
outputs (gpt4_turbo's); `comparability()` says which of these hold.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from wpo import machine
from wpo.config import EvalConfig
from wpo.endpoints import CACHE_FILE, AnswerCache, ChatRequest, Endpoint, message_text
from wpo.errors import ConfigError, WpoError

log = logging.getLogger(__name__)

LEADERBOARD_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
LEADERBOARD_INSTRUCTIONS = 805
LEADERBOARD_REFERENCE = "gpt4_turbo"  # AlpacaEval 2's baseline outputs (gpt-4-1106-preview's)
# What alpaca_eval's OpenAI helper sends when the annotator's config does not say (decoders/openai.py).
ALPACA_EVAL_DEFAULTS = {"temperature": 0.7, "top_p": 1.0}


def annotator_config_path(annotator: str) -> Path:
    """The annotator's `configs.yaml`: a path, or the name of a config shipped with alpaca_eval."""
    machine.refuse([machine.alpaca_eval()])
    from alpaca_eval import constants

    given = Path(annotator).expanduser()
    if given.suffix in (".yaml", ".yml") or given.is_dir():
        path = given / "configs.yaml" if given.is_dir() else given
        if not path.is_file():
            raise ConfigError(f"eval.annotator: no such file or directory: {path}")
        return path
    path = Path(constants.EVALUATORS_CONFIG_DIR) / annotator / "configs.yaml"
    if not path.is_file():
        shipped = sorted(p.parent.name for p in Path(constants.EVALUATORS_CONFIG_DIR).glob("*/configs.yaml"))
        raise ConfigError(
            f"eval.annotator: {annotator!r} is not an annotator shipped with alpaca_eval nor a configs.yaml path; "
            f"weighted ones: {', '.join(name for name in shipped if name.startswith('weighted_'))}"
        )
    return path


def annotator_settings(annotator: str) -> dict[str, Any]:
    """The annotator's one config, as alpaca_eval loads it."""
    from alpaca_eval import utils

    configs = utils.load_configs(annotator_config_path(annotator))
    if len(configs) != 1:
        raise ConfigError(f"eval.annotator: {annotator} holds {len(configs)} annotators; wpo runs configs of one")
    settings = next(iter(configs.values()))
    if settings.get("fn_completions", "openai_completions") != "openai_completions":
        raise ConfigError(
            f"eval.annotator: {annotator} completes with {settings['fn_completions']}; wpo sends alpaca_eval's "
            "prompts to OpenAI-compatible chat servers (annotators with fn_completions: openai_completions)"
        )
    return settings


class AlpacaEvalJudge:
    """alpaca_eval's `PairwiseAnnotator` with its completions sent through wpo's endpoint (`eval.api`)."""

    def __init__(self, cfg: EvalConfig, cache_dir: Path):
        from alpaca_eval.annotators import PairwiseAnnotator

        if cfg.api is None or cfg.annotator is None:
            raise WpoError("eval.judge: alpaca_eval needs eval.annotator and eval.api")
        self.config = cfg.api
        self.annotator_name = cfg.annotator
        self.settings = annotator_settings(cfg.annotator)
        self.endpoint = Endpoint(self.config, "eval.api", AnswerCache(cache_dir / CACHE_FILE))
        self.prompts_sent: list[str] = []  # alpaca_eval's prompts, in the order it built them
        self.annotator = PairwiseAnnotator(
            annotators_config=str(annotator_config_path(cfg.annotator)),
            seed=0,  # alpaca_eval's default: the order switch is seeded on the instruction and this
            caching_path=None,  # wpo's answer cache keeps the judge's answers, never inside the package
            is_avoid_reannotations=False,
        )
        for single in self.annotator.annotators.values():
            single.fn_completions = self._completions

    def _completions(self, prompts: list[str], model_name: str, **completion_kwargs: Any) -> dict[str, list]:
        """What alpaca_eval's `openai_completions` returns for these prompts, asked through wpo's endpoint: the
        prompt stripped and turned into chat messages by alpaca_eval, its completion settings as it sends them."""
        from alpaca_eval import utils
        from alpaca_eval.decoders.openai import _requires_chatml

        settings = copy.deepcopy(completion_kwargs)
        for unused in ("num_procs", "price_per_token", "is_strip"):
            settings.pop(unused, None)
        if (
            settings.pop("requires_chatml", _requires_chatml(model_name)) is False
            or settings.pop("is_chat", True) is False
        ):
            raise WpoError(f"eval.annotator {self.annotator_name} uses text completions; wpo asks chat servers")
        if settings.pop("tokens_to_avoid", None) or settings.pop("tokens_to_favor", None):
            raise WpoError(f"eval.annotator {self.annotator_name} biases tokens by OpenAI's tokenizer: not supported")
        params = {**ALPACA_EVAL_DEFAULTS, **settings}
        stripped = [prompt.strip() for prompt in prompts]
        self.prompts_sent += stripped
        requests = [
            ChatRequest(
                key=AnswerCache.key("alpaca_eval", self.config.model, self.config.extra_body, prompt, params),
                messages=utils.prompt_to_chatml(prompt),
                params=params,
                label=f"the alpaca_eval prompt {index} of {len(prompts)}",
            )
            for index, prompt in enumerate(stripped, 1)
        ]
        completions = self.endpoint.ask_all(requests, _as_alpaca_eval_completion, desc="eval: alpaca_eval judge")
        return {
            "completions": [completion["text"] for completion in completions],
            "completions_all": completions,
            "price_per_example": [0.0] * len(completions),  # wpo counts tokens, not prices (the usage report)
            "time_per_example": [0.0] * len(completions),
        }

    def preferences(self, comparisons: list) -> list[float]:
        """alpaca_eval's preference (1: the reference's output, 2: the model's) for every comparison."""
        pairs = [
            {"instruction": item.instruction, "output_1": item.reference, "output_2": item.output}
            for item in comparisons
        ]
        annotated = self.annotator.annotate_pairs(pairs)
        preferences = [row.get("preference") for row in annotated]
        missing = [pairs[i]["instruction"][:60] for i, p in enumerate(preferences) if p is None or p != p]
        if missing:
            raise WpoError(
                f"eval.annotator {self.annotator_name}: the judge's answer gave no preference for {len(missing)} "
                f"instruction(s), e.g. {missing[0]!r} (no model identifier among its top log-probs)"
            )
        return [float(p) for p in preferences]


def _as_alpaca_eval_completion(choice: dict[str, Any]) -> dict[str, Any]:
    """A chat choice as alpaca_eval's OpenAI helper keeps it: the choice, with `text` (a space when empty)."""
    completion = dict(choice)
    completion["text"] = message_text(choice) or " "
    return completion


def comparability(cfg: EvalConfig, instructions: int, reference_generator: str) -> dict[str, Any]:
    """Whether these figures can stand beside the public AlpacaEval 2 leaderboard's, and what differs if not."""
    annotator_model = annotator_settings(cfg.annotator)["completions_kwargs"].get("model_name")
    differences = []
    if Path(cfg.annotator).name.removesuffix(".yaml") != LEADERBOARD_ANNOTATOR:
        differences.append(f"annotator {cfg.annotator}, not the leaderboard's {LEADERBOARD_ANNOTATOR}")
    if cfg.api.model != annotator_model:
        differences.append(f"judged by {cfg.api.model}, not the annotator's {annotator_model}")
    if instructions != LEADERBOARD_INSTRUCTIONS:
        differences.append(f"{instructions} instructions, not AlpacaEval's {LEADERBOARD_INSTRUCTIONS}")
    if cfg.compare_to != "reference" or reference_generator != LEADERBOARD_REFERENCE:
        differences.append(f"against {reference_generator}'s outputs, not AlpacaEval 2's {LEADERBOARD_REFERENCE}")
    return {
        "annotator": cfg.annotator,
        "annotator_model": annotator_model,
        "judged_by": cfg.api.model,
        "comparable_with_leaderboard": not differences,
        "not_comparable_because": differences,
    }
