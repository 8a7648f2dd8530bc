"""Size, perplexity and mean KL(HF ‖ GGUF) of every supported GGUF type for a model (default: the embedded SmolLM2).

Runs `wpo export` with every type into a temporary run directory and prints the quantization report as a table, the
HF fp32 model's perplexity on the same held-out text as the baseline.

Run: python benchmarks/quant_quality.py [--model embedded:smollm2-135m-instruct] [--tokens 256]
"""

from __future__ import annotations

import argparse
import tempfile

from wpo.config import load_recipe
from wpo.exporting.convert import CONVERTER_TYPES, QUANTIZER_TYPES
from wpo.exporting.stage import run_export
from wpo.models import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    types = [*CONVERTER_TYPES, *QUANTIZER_TYPES]
    with tempfile.TemporaryDirectory() as directory:
        recipe = load_recipe(
            None,
            [
                f"output_dir={directory}",
                f"export.model={resolve_model_path(args.model)}",
                f"export.quantizations=[{', '.join(types)}]",
                f"export.verify_tokens={args.tokens}",
                "export.name=model",
            ],
        )
        report = run_export(recipe)["report"]
    print(f"{args.model}: {args.tokens} held-out tokens; HF fp32 perplexity {report[0]['hf_perplexity']:.3f}")
    print(f"{'type':<8} {'size MB':>8} {'perplexity':>11} {'x HF':>6} {'mean KL':>9} {'max KL':>8}")
    for entry in report:
        print(
            f"{entry['type']:<8} {entry['size_bytes'] / 1e6:>8.1f} {entry['perplexity']:>11.3f} "
            f"{entry['perplexity'] / entry['hf_perplexity']:>6.3f} {entry['kl_mean']:>9.5f} {entry['kl_max']:>8.4f}"
        )


if __name__ == "__main__":
    main()
