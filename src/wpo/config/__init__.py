"""Recipes: YAML → one typed, validated config per stage, with `key=value` overrides.

Validation happens once, on load: an unknown key, a wrong type or an invalid combination of keys fails with the
key's dotted path (and the recipe's file name), before any model is touched. Keys that only make sense together are
checked here too, so nothing combines silently at run time.

Each job in its own module: the schema (`schema`), the YAML reader (`yaml_loader`), overrides (`overrides`), error
wording (`messages`), loading (`loading`) and the config hash (`hashing`); this package exports their names.
"""

from wpo.config.hashing import config_hash
from wpo.config.loading import load_recipe
from wpo.config.overrides import apply_overrides
from wpo.config.schema import (
    EMBEDDED_DEFAULT_MODEL,
    REFERENCE_FREE_LOSSES,
    ROUND_STAGES,
    STAGES,
    EndpointConfig,
    EvalConfig,
    ExportConfig,
    LoraConfig,
    LossType,
    ModelConfig,
    OffPolicyModelConfig,
    PairConfig,
    Recipe,
    SampleConfig,
    ScoreConfig,
    Section,
    TrainConfig,
    low_precision_problem,
    unhashed,
)
from wpo.config.yaml_loader import parse_yaml

__all__ = [
    "EMBEDDED_DEFAULT_MODEL",
    "REFERENCE_FREE_LOSSES",
    "ROUND_STAGES",
    "STAGES",
    "EndpointConfig",
    "EvalConfig",
    "ExportConfig",
    "LoraConfig",
    "LossType",
    "ModelConfig",
    "OffPolicyModelConfig",
    "PairConfig",
    "Recipe",
    "SampleConfig",
    "ScoreConfig",
    "Section",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "load_recipe",
    "low_precision_problem",
    "parse_yaml",
    "unhashed",
]
