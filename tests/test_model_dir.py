"""`wpo model-dir`: the embedded model written out as an HF directory (safetensors, tokenizer, chat template) that a
recipe names as `model.name_or_path` and that loads to the very weights wpo uses for `embedded:NAME`."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_ok, assert_one_line_error, cli

from wpo.config import EMBEDDED_DEFAULT_MODEL, ModelConfig
from wpo.models import apply_chat_template, load_causal_lm, load_tokenizer, resolve_model_path


@pytest.mark.slow  # dequantizes the real SmolLM2 on first use, then loads it twice
def test_the_embedded_model_as_a_folder_a_recipe_names(tmp_path):
    folder = tmp_path / "smollm2"
    written = assert_ok(cli("model-dir", EMBEDDED_DEFAULT_MODEL, folder))
    assert f"model.name_or_path: {folder}" in written.stdout
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert not any(name.endswith((".bin", ".pt", ".tmp")) for name in names)
    assert not (tmp_path / ".smollm2.tmp").exists()

    checked = assert_ok(cli("config", "recipes/quickstart.yaml", f"model.name_or_path={folder}", "stages=[sample]"))
    assert f"name_or_path: {folder}" in checked.stdout
    assert resolve_model_path(str(folder)) == str(folder)  # an ordinary HF directory, used as it is
    tokenizer = load_tokenizer(str(folder))
    rendered = apply_chat_template(
        tokenizer, [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    settings = ModelConfig(dtype="float32")
    ids = torch.tensor([tokenizer(rendered)["input_ids"]])
    with torch.no_grad():
        from_folder = load_causal_lm(str(folder), settings)(input_ids=ids).logits
        embedded = load_causal_lm(resolve_model_path(EMBEDDED_DEFAULT_MODEL), settings)(input_ids=ids).logits
    assert torch.equal(from_folder, embedded)


def test_model_dir_refuses_what_it_cannot_write(tmp_path, tiny_llama):
    assert_one_line_error(
        cli("model-dir", str(tiny_llama), tmp_path / "copy"), "an embedded:NAME model or a .gguf file", "is neither"
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert_one_line_error(
        cli("model-dir", EMBEDDED_DEFAULT_MODEL, taken), f"{taken} already exists and is not an empty directory"
    )
    assert [path.name for path in taken.iterdir()] == ["notes.txt"]
