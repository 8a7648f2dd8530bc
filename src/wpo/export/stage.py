"""`wpo export`: merge → convert → quantize → verify → `quantization_report.json` + `README.md` (model card)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from wpo.config import Recipe, config_hash
from wpo.data.io import resolve_local, write_json
from wpo.errors import WpoError
from wpo.export.card import write_card
from wpo.export.convert import check_architecture, check_quantizations, export_gguf
from wpo.export.verify import hf_log_probs, perplexity, verify_gguf
from wpo.manifest import source_fingerprint, write_manifest

log = logging.getLogger(__name__)
REPORT, CARD = "quantization_report.json", "README.md"


def export_model(recipe: Recipe) -> str:
    if recipe.export.model:
        return recipe.export.model
    final = recipe.final_model_dir()
    return str(final) if final.is_dir() else recipe.model.name_or_path


def run_config(recipe: Recipe) -> dict[str, Any]:
    model = export_model(recipe)
    return {
        "model": model,
        "model_files": source_fingerprint(model) if Path(model).exists() else model,
        "export": recipe.export.model_dump(mode="json"),
    }


def run_export(recipe: Recipe) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wpo.eval.stage import generator_name
    from wpo.models import merged_model_dir, resolve_model_path

    started = time.perf_counter()
    cfg = recipe.export
    stage_dir = recipe.stage_dir("export")
    types = check_quantizations(cfg.quantizations)
    model = export_model(recipe)
    model_dir = merged_model_dir(Path(resolve_model_path(model)), stage_dir)
    if not (model_dir / "config.json").is_file():
        raise WpoError(f"export.model {model}: not a local HF model directory")
    check_architecture(model_dir)
    name = cfg.name or generator_name(model)
    files = export_gguf(model_dir, stage_dir, name, types)

    text_path = resolve_local(cfg.verify_text)
    if text_path is None:
        raise WpoError(f"export.verify_text {cfg.verify_text}: no such file")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer(text_path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][: cfg.verify_tokens]
    hf_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32").eval()
    reference = hf_log_probs(hf_model, ids)
    hf_ppl = perplexity(reference, ids)
    del hf_model
    report = []
    for type_name, path in files.items():
        entry = {"type": type_name, **verify_gguf(path, ids, reference), "hf_perplexity": hf_ppl}
        log.info("export: %s %.1f MB, perplexity %.3f (HF %.3f), mean KL %.5f", path.name, entry["size_bytes"] / 1e6,
                 entry["perplexity"], hf_ppl, entry["kl_mean"])  # fmt: skip
        report.append(entry)
    write_json(stage_dir / REPORT, {"model": name, "verify_tokens": len(ids), "files": report})
    write_card(stage_dir / CARD, name=name, run_dir=Path(recipe.output_dir), model_dir=model_dir, report=report,
               license_name=cfg.license)  # fmt: skip
    config = run_config(recipe)
    write_manifest(stage_dir, stage="export", config=config, config_hash=config_hash(config), seed=recipe.seed,
                   counts={"files": len(files)}, wall_seconds=time.perf_counter() - started,
                   outputs=[p.name for p in files.values()] + [REPORT, CARD])  # fmt: skip
    return {"files": [str(p) for p in files.values()], "report": report}
