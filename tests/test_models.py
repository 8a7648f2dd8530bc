"""Model loading refuses what it must: pickle-only weights, and remote code the recipe did not allow."""

from __future__ import annotations

import json

import pytest

from wpo.config import ModelConfig
from wpo.errors import WpoError
from wpo.models import load_causal_lm, resolve_dtype, resolve_model_path


def test_pickle_only_checkpoint_is_refused_with_a_conversion_hint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WpoError, match=r"holds only pickle weights \(pytorch_model.bin\); wpo loads safetensors only"):
        resolve_model_path(str(tmp_path))


def test_remote_code_needs_the_recipes_consent(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "custom-rm", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}})
    )
    (tmp_path / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(WpoError, match=r"needs custom code; set model.trust_remote_code: true if you trust it"):
        load_causal_lm(str(tmp_path), ModelConfig(name_or_path=str(tmp_path)))


def test_missing_model_and_dtypes(tmp_path):
    with pytest.raises(WpoError, match="GGUF file .* does not exist"):
        resolve_model_path(str(tmp_path / "m.gguf"))
    with pytest.raises(WpoError, match="unknown embedded model 'embedded:nope'"):
        resolve_model_path("embedded:nope")
    import torch

    assert resolve_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_tiny_model_loads_from_safetensors(tiny_llama):
    import torch
    from safetensors.torch import load_file

    model = load_causal_lm(resolve_model_path(str(tiny_llama)), ModelConfig(name_or_path=str(tiny_llama)))
    saved = load_file(str(tiny_llama / "model.safetensors"))
    loaded = model.state_dict()
    assert set(saved) <= set(loaded)  # the tied output layer is saved once, as the embedding
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    assert {tensor.dtype for tensor in loaded.values()} == {torch.float32}
