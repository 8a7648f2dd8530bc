"""Export: conversion and quantization of tiny llama-family models, file metadata, the quality report and the card."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import tiny_model
from safetensors.torch import load_file

from wpo.config import load_recipe
from wpo.errors import ConfigError, WpoError
from wpo.exporting.convert import check_architecture, check_quantizations
from wpo.exporting.stage import run_export
from wpo.models import load_tokenizer, resolve_model_path


@pytest.fixture(scope="module")
def smollm_tokenizer():
    """SmolLM2's real tokenizer (from the embedded GGUF): llama.cpp's converter only accepts tokenizers it knows."""
    return load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))


def test_quantization_types_are_checked():
    assert check_quantizations(["q4_k_m", "F16"]) == ["Q4_K_M", "F16"]
    with pytest.raises(ConfigError, match=r"IQ2_XS needs an importance matrix \(imatrix\)"):
        check_quantizations(["IQ2_XS"])
    with pytest.raises(ConfigError, match=r"unknown type 'Q9_K'; supported: F16, BF16, Q8_0, Q2_K"):
        check_quantizations(["Q9_K"])


TRAINED = {
    "base_model": "/somewhere/local/SmolBase",
    "pairs": "wzhouad/gemma-2-ultrafeedback-hybrid:train",
    "seed": 3,
    "num_processes": 2,
    "total_steps": 24,
    "lora": None,
    "train": {
        "learning_rate": 5e-7,
        "beta": 0.01,
        "loss": "sigmoid",
        "weighting": "wpo",
        "clamp": None,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "optimizer": "adamw_8bit",
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.1,
        "num_epochs": 2,
        "max_steps": None,
        "max_length": 1024,
        "max_prompt_length": 512,
    },
}


def test_the_card_says_how_the_model_was_trained_and_judged(tmp_path):
    """The card field by field from the run's records: the hub's metadata (read back by huggingface_hub), the
    hyperparameters as trained (the 8-bit optimizer under the HF Trainer's name), the evaluation, each quantization;
    weights without a training record are not called WPO-trained."""
    from huggingface_hub import ModelCard

    from wpo.exporting.card import write_card

    model_dir = tmp_path / "run" / "train" / "final"
    model_dir.mkdir(parents=True)
    (model_dir / "wpo_training.json").write_text(json.dumps(TRAINED))
    eval_metrics = {"length_controlled_winrate": 55.126, "win_rate": 60.0, "avg_length": 812.4, "judge": "python"}
    (tmp_path / "run" / "eval").mkdir()
    (tmp_path / "run" / "eval" / "metrics.json").write_text(json.dumps({**eval_metrics, "reference_generator": "ref"}))
    quantized = {"type": "Q4_K_M", "file": "t.Q4_K_M.gguf", "size_bytes": 105_040_000, "perplexity": 12.3456}
    report = [{**quantized, "hf_perplexity": 12.0, "kl_mean": 0.012345}]
    path = tmp_path / "README.md"
    text = write_card(
        path, name="tiny", run_dir=tmp_path / "run", model_dir=model_dir, report=report, license_name="mit"
    )

    assert path.read_text() == text and text.endswith("```\n")
    card = ModelCard(text)
    assert card.data.to_dict() == {
        "base_model": "SmolBase",  # a local path reduced to its name
        "datasets": ["wzhouad/gemma-2-ultrafeedback-hybrid"],
        "library_name": "transformers",
        "license": "mit",
        "tags": ["wpo", "alignment", "gguf", "llama.cpp"],
    }
    hyperparameters = [line for line in card.text.splitlines() if line.startswith("- ")]
    assert hyperparameters == [
        "- learning_rate: 5e-07",
        "- beta: 0.01",
        "- loss: sigmoid",
        "- weighting: wpo",
        "- per_device_train_batch_size: 2",
        "- gradient_accumulation_steps: 4",
        "- seed: 3",
        "- num_devices: 2",
        "- optim: adamw_bnb_8bit",
        "- lr_scheduler_type: cosine",
        "- lr_scheduler_warmup_ratio: 0.1",
        "- num_train_epochs: 2.0",
        "- total_steps: 24",
        "- max_length: 1024",
        "- max_prompt_length: 512",
    ]
    assert "SmolBase fine-tuned with Weighted Preference Optimization (WPO)" in text
    assert "| tiny | 55.13 | 60.00 | 812 |" in text
    assert "| Q4_K_M | t.Q4_K_M.gguf | 105.0 | 12.346 | 12.000 | 0.01235 |" in text
    assert "### Evaluation (AlpacaEval-style, vs the reference outputs (ref))" in text
    assert "Judged by wpo's `python` judge: not AlpacaEval 2's annotator" in text
    assert "\n\n\n" not in text and str(tmp_path) not in text

    (model_dir / "wpo_training.json").unlink()
    shutil.rmtree(tmp_path / "run" / "eval")
    bare = write_card(
        path, name="tiny", run_dir=tmp_path / "run", model_dir=model_dir, report=report, license_name=None
    )
    assert "fine-tuned" not in bare and "final as it was given to `wpo export`" in bare
    assert "### Evaluation" not in bare and "### Training Hyperparameters" not in bare
    assert "See the base model's license." in bare and "license" not in ModelCard(bare).data.to_dict()
    assert "\n\n\n" not in bare


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(
        WpoError,
        match=r"GPT2LMHeadModel is not supported for export; supported: LlamaForCausalLM, "
        r"MistralForCausalLM, Qwen2ForCausalLM, Gemma2ForCausalLM",
    ):
        check_architecture(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gemma2"])
def test_export_converts_quantizes_verifies_and_writes_the_card(tmp_path, kind, request):
    import llama_cpp

    source = request.getfixturevalue("sentencepiece_dir" if kind in ("qwen2", "gemma2") else "smollm_tokenizer")
    model = tiny_model(tmp_path / "model", kind, source)
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"export.model={model}",
            "export.name=tiny",
            "export.quantizations=[F16, Q8_0, Q4_K_M]",
            "export.license=apache-2.0",
            "export.verify_tokens=64",
        ],
    )
    result = run_export(recipe)
    export_dir = tmp_path / "run" / "export"
    assert sorted(p.name for p in export_dir.glob("*.gguf")) == ["tiny.F16.gguf", "tiny.Q4_K_M.gguf", "tiny.Q8_0.gguf"]
    report = {
        entry["type"]: entry for entry in json.loads((export_dir / "quantization_report.json").read_text())["files"]
    }
    expected_types = {
        "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    for type_name, file_type in expected_types.items():
        assert report[type_name]["file_type"] == file_type  # the quantization really is in the file's metadata
        assert report[type_name]["perplexity"] > 1 and report[type_name]["kl_mean"] >= 0
        assert isinstance(report[type_name]["sample_answer"], str)
    assert report["F16"]["kl_mean"] < report["Q8_0"]["kl_mean"] < report["Q4_K_M"]["kl_mean"]
    assert report["F16"]["perplexity"] == pytest.approx(report["F16"]["hf_perplexity"], rel=1e-2)
    assert report["Q4_K_M"]["size_bytes"] < report["Q8_0"]["size_bytes"] < report["F16"]["size_bytes"]
    assert len(result["files"]) == 3

    card = (export_dir / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "wpo" in front["tags"] and front["license"] == "apache-2.0"
    assert front["base_model"] == "model"  # a local path is reduced to its name
    assert "# tiny-GGUF" in card and "created using llama.cpp" in card and "arXiv:2406.11827" in card
    assert "| Q4_K_M | tiny.Q4_K_M.gguf |" in card
    assert str(tmp_path) not in card and "/root" not in card


@pytest.mark.slow
def test_lora_adapter_is_merged_before_conversion(tmp_path, smollm_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_model(tmp_path / "base", "llama", smollm_tokenizer)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)  # a non-zero adapter, so merging changes the weights
    peft_model.save_pretrained(tmp_path / "adapter")
    smollm_tokenizer.save_pretrained(tmp_path / "adapter")
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"export.model={tmp_path / 'adapter'}",
            "export.name=tiny",
            "export.quantizations=[F16]",
            "export.verify_tokens=64",
        ],
    )
    run_export(recipe)
    report = json.loads((tmp_path / "run" / "export" / "quantization_report.json").read_text())["files"][0]
    (merged_file,) = (tmp_path / "run" / "export").glob("merged-*/model.safetensors")
    assert report["kl_mean"] < 1e-3  # the GGUF matches the merged directory ...
    # ... and that directory is base + adapter: its weights are what peft's own merge gives, not the bare base's
    merged, base_weights = load_file(str(merged_file)), load_file(str(base / "model.safetensors"))
    expected = {name: tensor.detach() for name, tensor in peft_model.merge_and_unload().state_dict().items()}
    adapted = [name for name in merged if name.endswith(("q_proj.weight", "v_proj.weight"))]
    assert adapted
    for name in adapted:
        torch.testing.assert_close(merged[name], expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(merged[name], base_weights[name], atol=1e-3), name


@pytest.mark.slow
def test_chat_answers_one_prompt_from_a_gguf(tmp_path, smollm_tokenizer):
    model = tiny_model(tmp_path / "model", "llama", smollm_tokenizer)
    run_export(
        load_recipe(
            None,
            [
                f"output_dir={tmp_path / 'run'}",
                f"export.model={model}",
                "export.name=tiny",
                "export.quantizations=[Q8_0]",
                "export.verify_tokens=32",
            ],
        )
    )
    gguf = tmp_path / "run" / "export" / "tiny.Q8_0.gguf"
    env = {**os.environ, "WPO_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "wpo", "chat", str(gguf), "--prompt", "Hello", "--max-new-tokens", "8"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    interactive = subprocess.run(
        [sys.executable, "-m", "wpo", "chat", str(model), "--max-new-tokens", "4"],
        input="Hi\n/reset\nHello\n/exit\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert interactive.returncode == 0, interactive.stderr
    assert interactive.stdout.count("model> ") == 2 and "(new conversation)" in interactive.stdout


@pytest.mark.slow
def test_export_links_the_f16_conversion_eval_made_of_the_same_weights(tmp_path, smollm_tokenizer, monkeypatch):
    """The llama.cpp eval converted the trained weights already: export links that file (same inode, no second
    conversion), verifies it like any other, and quantizes from it."""
    from wpo.exporting import convert
    from wpo.layout import gguf_cache
    from wpo.sampling.llamacpp_backend import converted_policy

    model = tiny_model(tmp_path / "model", "llama", smollm_tokenizer)
    recipe = load_recipe(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            f"export.model={model}",
            "export.name=tiny",
            "export.quantizations=[F16, Q4_K_M]",
            "export.verify_tokens=64",
        ],
    )
    evaluated = converted_policy(model, gguf_cache(recipe.output_dir))
    conversions = []
    real_convert = convert.convert
    monkeypatch.setattr(convert, "convert", lambda *args: conversions.append(args) or real_convert(*args))
    run_export(recipe)
    exported = tmp_path / "run" / "export" / "tiny.F16.gguf"
    assert os.path.samefile(exported, evaluated) and conversions == []
    report = {e["type"]: e for e in json.loads((exported.parent / "quantization_report.json").read_text())["files"]}
    assert report["F16"]["perplexity"] == pytest.approx(report["F16"]["hf_perplexity"], rel=1e-2)
    assert report["Q4_K_M"]["size_bytes"] < report["F16"]["size_bytes"]
