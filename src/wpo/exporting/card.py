"""The model card (`README.md` beside the GGUF files), in the shape of the seed's card.

Everything comes from the run's own records: the trainer's `wpo_training.json` (hyperparameters exactly as trained),
the sample/score/pair manifests (how the preference data was built), `eval/metrics.json` with the eval manifest (what
the model was compared with, the win rates, the held-out measures and the verdict) and the quantization report.
Local paths are reduced to file names; no secrets are read.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from wpo.data.io import atomic_writer, looks_like_local_path
from wpo.figures import paired_measures
from wpo.layout import output_in
from wpo.manifest import Counts
from wpo.models import EMBEDDED_HUB_IDS

WPO_CITATION = """@article{zhou2024wpo,
  title={WPO: Enhancing RLHF with Weighted Preference Optimization},
  author={Zhou, Wenxuan and Agrawal, Ravi and Zhang, Shujian and Indurthi, Sathish Reddy and Zhao, Sanqiang and
          Song, Kaiqiang and Xu, Silei and Zhu, Chenguang},
  journal={arXiv preprint arXiv:2406.11827},
  year={2024}
}"""


HF_OPTIMIZER_NAMES = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}  # train.optimizer → the HF Trainer's


def public_name(reference: str | None) -> str | None:
    """A hub id stays; a local path becomes its last component; `embedded:x` becomes x."""
    if not reference:
        return None
    if reference in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[reference]
    reference = reference.removeprefix("builtin:")
    path = Path(reference)
    return path.name if path.is_absolute() or path.exists() or reference.startswith(".") else reference


def is_hub_dataset(source: str) -> bool:
    return not source.startswith("builtin:") and not looks_like_local_path(source) and not Path(source).exists()


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def data_section(run_dir: Path) -> str:
    sample = _read_json(run_dir / "sample" / "manifest.json")
    score = _read_json(run_dir / "score" / "manifest.json")
    pair = _read_json(run_dir / "pair" / "manifest.json")
    if not (sample and score and pair):
        return "The preference pairs were provided directly to the trainer (no sample/score/pair stages in this run).\n"
    sample_cfg, score_cfg = sample["config"]["sample"], score["config"]["score"]
    pair_counts = Counts.from_json(pair["counts"], "pair")
    fields = ", ".join(f"`{f}`" for f in sample_cfg["offpolicy_fields"])
    scorer = {
        "reward_model": f"the reward model {public_name(score_cfg.get('model'))}",
        "judge": f"an LLM judge ({(score_cfg.get('judge') or {}).get('model')})",
        "python": f"a programmatic reward ({score_cfg.get('function')})",
    }[score_cfg["scorer"]]
    return (
        f"Hybrid preference data: {sample_cfg['n']} samples per prompt (temperature {sample_cfg['temperature']}, "
        f"top_p {sample_cfg['top_p']}, backend {sample_cfg['backend']})"
        f"{f', plus the off-policy answers in the prompts field(s) {fields}' if fields else ''}, scored by {scorer}. "
        "Each prompt's highest- and lowest-scored candidates form a pair "
        f"(ties: shortest chosen, rejected closest in length); {pair_counts.written} pairs from "
        f"{pair_counts.read} prompts.\n"
    )


def hyperparameters(trained: dict[str, Any]) -> dict[str, Any]:
    """As trained, under the names the HF Trainer's cards use."""
    train = trained["train"]
    items = {
        "learning_rate": train["learning_rate"],
        "beta": train["beta"],
        "loss": train["loss"],
        "weighting": train["weighting"],
        "clamp": train["clamp"],
        "per_device_train_batch_size": train["per_device_batch_size"],
        "gradient_accumulation_steps": train["gradient_accumulation_steps"],
        "seed": trained["seed"],
        "num_devices": trained["num_processes"],
        "optim": HF_OPTIMIZER_NAMES[train.get("optimizer", "adamw")],
        "lr_scheduler_type": train["lr_scheduler"],
        "lr_scheduler_warmup_ratio": train["warmup_ratio"],
        "num_train_epochs": float(train["num_epochs"]),
        "max_steps": train["max_steps"],
        "total_steps": trained["total_steps"],
        "max_length": train["max_length"],
        "max_prompt_length": train["max_prompt_length"],
        "lora": trained["lora"],
    }
    return {key: value for key, value in items.items() if value is not None}


def write_card(
    path: Path, *, name: str, run_dir: Path, model_dir: Path, report: list[dict[str, Any]], license_name: str | None
) -> str:
    """The card from `card.md.j2` through huggingface_hub's ModelCard, which writes and checks the YAML metadata the
    hub reads."""
    from huggingface_hub import ModelCard, ModelCardData

    trained = _read_json(model_dir / "wpo_training.json")
    base = public_name(trained["base_model"]) if trained else public_name(str(model_dir))
    # a hub dataset is named; a local pairs file is described under "Data" instead (no local paths in the card)
    datasets = [trained["pairs"].split(":")[0]] if trained and is_hub_dataset(trained["pairs"]) else []
    metadata = ModelCardData(
        base_model=base,
        library_name="transformers",
        datasets=datasets,
        tags=["wpo", "alignment", "gguf", "llama.cpp"],
        license=license_name,
    )
    metrics = _read_json(output_in(run_dir, "eval"))
    eval_manifest = _read_json(run_dir / "eval" / "manifest.json")
    card = ModelCard.from_template(
        metadata,
        template_str=resources.files("wpo.exporting").joinpath("card.md.j2").read_text(encoding="utf-8"),
        name=name,
        base=base,
        data=data_section(run_dir),
        metrics=metrics,
        compared_with=compared_with(metrics, eval_manifest) if metrics else None,
        judged_by=judged_by(metrics) if metrics else None,
        heldout=heldout(metrics, eval_manifest) if metrics else None,
        report=report,
        hyperparameters=hyperparameters(trained) if trained else None,
        license=license_name,
        citation=WPO_CITATION,
    )
    text = card.content.rstrip("\n") + "\n"  # jinja drops the template's last newline
    with atomic_writer(path) as handle:
        handle.write(text)
    return text


def compared_with(metrics: dict[str, Any], eval_manifest: dict[str, Any] | None) -> str:
    """What the model's answers were judged against, by name: the base model's answers or the reference outputs."""
    config = (eval_manifest or {}).get("config", {})
    if config.get("eval", {}).get("compare_to") == "base_model":
        return f"the base model {public_name(config['base_model'])}"
    generator = metrics.get("reference_generator")
    return f"the reference outputs ({generator})" if generator else "the reference outputs"


def heldout(metrics: dict[str, Any], eval_manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The held-out measures, base (by name) → trained with each delta's paired 95% CI (three decimals for measures
    in [0, 1], one for chrF and lengths), and the verdict with each of its rules; None when eval measured nothing."""
    measures = paired_measures(metrics)
    if not measures:
        return None
    rows = []
    for measure in measures:
        base, trained = measure.base.mean, measure.trained.mean
        low, high = measure.delta.ci95 or (float("nan"), float("nan"))
        digits = 1 if max(abs(base), abs(trained)) >= 10 else 3
        rows.append(
            {
                "name": measure.name,
                "base": f"{base:.{digits}f}",
                "trained": f"{trained:.{digits}f}",
                "delta": f"{measure.delta.mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]",
            }
        )
    rules = [
        {"rule": check["rule"], "value": f"{check['value']:.3g}", "held": check["passed"]}
        for check in metrics.get("verdict", {}).values()
    ]
    base = public_name((eval_manifest or {}).get("config", {}).get("base_model")) or "the base model"
    return {
        "prompts": measures[0].n,
        "base": base,
        "rows": rows,
        "better": metrics.get("better"),
        "rules": rules,
    }


def judged_by(metrics: dict[str, Any]) -> str:
    """Who judged, and whether the figures stand beside the public AlpacaEval 2 leaderboard's."""
    protocol = metrics.get("alpaca_eval")
    if not protocol:
        return (
            f"Judged by wpo's `{metrics.get('judge')}` judge: not AlpacaEval 2's annotator, so not comparable with its "
            "leaderboard."
        )
    verdict = (
        "comparable with the public AlpacaEval 2 leaderboard"
        if protocol["comparable_with_leaderboard"]
        else "not comparable with the public AlpacaEval 2 leaderboard: " + "; ".join(protocol["not_comparable_because"])
    )
    return (
        f"Judged by alpaca_eval's annotator `{protocol['annotator']}` (AlpacaEval 2's protocol) with "
        f"{protocol['judged_by']}: {verdict}."
    )
