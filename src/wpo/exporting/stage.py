"""`wpo export`: merge → convert → quantize → verify → `quantization_report.json` + `README.md` (model card)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from wpo.config import Recipe
from wpo.data.io import atomic_writer, resolve_local, write_json
from wpo.errors import WpoError
from wpo.exporting.card import write_card
from wpo.exporting.convert import check_architecture, check_export_name, check_quantizations, export_gguf
from wpo.exporting.verify import hf_logits, log_probs, perplexity, verify_gguf
from wpo.layout import converted_policy_path, final_model, gguf_cache
from wpo.machine import Lack
from wpo.manifest import Counts, write_manifest
from wpo.rules import exists
from wpo.stage_run import StageRun, input_fingerprint, resolved

log = logging.getLogger(__name__)
REPORT, CARD = "quantization_report.json", "README.md"
GGUF_CONFIG = ".gguf-config"  # the config hash the GGUF files in the stage directory were made under


def check(recipe: Recipe, stages: list[str], lacks: list[Lack | None]) -> None:
    """The quantization types and the name, and that the model and the verification text are here."""
    check_quantizations(recipe.export.quantizations)
    if recipe.export.name:
        check_export_name(recipe.export.name, recipe.stage_dir("export"))
    exists("export.model", recipe.export.model, lacks)
    exists("export.verify_text", recipe.export.verify_text, lacks)


def run_config(recipe: Recipe) -> dict[str, Any]:
    """`model` is the model exported: `export.model`, else the model the run ends with."""
    model = recipe.export.model or final_model(recipe)
    return {
        "model": model,
        "export": recipe.export.model_dump(mode="json"),
        "inputs": {"export.model": input_fingerprint(model)},
    }


def run_export(target: StageRun | Recipe) -> dict[str, Any]:
    from wpo.models import generator_name, merged_model_dir, resolve_model_path

    started = time.perf_counter()
    run = resolved(target, "export", run_config)
    recipe = run.recipe
    cfg = recipe.export
    stage_dir = recipe.stage_dir("export")
    types = check_quantizations(cfg.quantizations)
    model = run.config["model"]
    name = cfg.name or generator_name(model)
    check_export_name(name, stage_dir)
    trust = recipe.model.trust_remote_code
    model_dir = merged_model_dir(Path(resolve_model_path(model)), stage_dir, trust_remote_code=trust)
    if not (model_dir / "config.json").is_file():
        raise WpoError(f"export.model {model}: not a local HF model directory")
    check_architecture(model_dir)
    discard_files_of_another_config(stage_dir, run.config_hash)
    files = export_gguf(
        model_dir, stage_dir, name, types, f16_source=evaluated_conversion(recipe.output_dir, model_dir)
    )

    text_path = resolve_local(cfg.verify_text)
    if text_path is None:
        raise WpoError(f"export.verify_text {cfg.verify_text}: no such file")
    report, verified_tokens = compare_with_hf(files, model_dir, text_path, cfg.verify_tokens, trust)
    write_json(stage_dir / REPORT, {"model": name, "verify_tokens": verified_tokens, "files": report})
    write_card(
        stage_dir / CARD,
        name=name,
        run_dir=Path(recipe.output_dir),
        model_dir=model_dir,
        report=report,
        license_name=cfg.license,
    )
    write_manifest(
        stage_dir,
        stage="export",
        config=run.config,
        config_hash=run.config_hash,
        seed=recipe.seed,
        counts=Counts(read=None, written=len(files)),
        wall_seconds=time.perf_counter() - started,
        outputs=[p.name for p in files.values()] + [REPORT, CARD],
    )
    return {
        "output": str(stage_dir / REPORT),
        "counts": Counts(read=None, written=len(files)).to_json(),
        "files": [str(p) for p in files.values()],
        "report": report,
    }


def compare_with_hf(
    files: dict[str, Path], model_dir: Path, text_path: Path, max_tokens: int, trust_remote_code: bool
) -> tuple[list[dict[str, Any]], int]:
    """Each GGUF file against the HF model in fp32 on the first `max_tokens` tokens of a held-out text: perplexity of
    both, and the KL of the file's next-token distribution from the HF model's. Returns the entries and the tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    ids = tokenizer(text_path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:max_tokens]
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype="float32", trust_remote_code=trust_remote_code, use_safetensors=True
    ).eval()
    reference_logits = hf_logits(hf_model, ids)
    hf_ppl = perplexity(log_probs(reference_logits), ids)
    del hf_model
    report = []
    for type_name, path in files.items():
        entry = {"type": type_name, **verify_gguf(path, ids, reference_logits), "hf_perplexity": hf_ppl}
        log.info(
            "export: %s %.1f MB, perplexity %.3f (HF %.3f), mean KL %.5f",
            path.name,
            entry["size_bytes"] / 1e6,
            entry["perplexity"],
            hf_ppl,
            entry["kl_mean"],
        )
        report.append(entry)
    return report, len(ids)


def evaluated_conversion(output_dir: str, model_dir: Path) -> Path | None:
    """The F16 GGUF the llama.cpp eval (or sampling) of the run under `output_dir` converted these very weights to,
    if there is one."""
    cache = gguf_cache(output_dir)
    converted = converted_policy_path(model_dir, cache) if cache.is_dir() else None
    return converted if converted is not None and converted.is_file() else None


def discard_files_of_another_config(stage_dir: Path, run_hash: str) -> None:
    """GGUF files left by a run under the same config (one that was killed) are reused; any others are stale (another
    model, other settings) and are removed, so a file is never reused across configs."""
    marker = stage_dir / GGUF_CONFIG
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == run_hash:
        return
    for stale in stage_dir.glob("*.gguf"):
        log.info("export: removing %s, made under another config", stale)
        stale.unlink()
    with atomic_writer(marker) as handle:
        handle.write(run_hash + "\n")
