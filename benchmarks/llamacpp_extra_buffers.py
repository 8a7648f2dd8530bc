"""What llama.cpp's extra buffer types (AMX tiles, repacked weights) are worth on this CPU, and whether they run.

    python benchmarks/llamacpp_extra_buffers.py [--types F16 Q8_0 Q4_0 Q4_K_M] [--repeats 3]
        [--llama-cpp-path DIR]   # another llama-cpp-python build, e.g. one made without AMX (pip install --target)

The embedded SmolLM2-135M, converted to F16 (wpo's cache) and quantized to each type, is loaded with extra buffer
types on and off, each in its own child process (a crash is reported as the signal that ended it, not the end of the
benchmark). Per type and setting: prompt processing (one call of 128 tokens), generation of one sequence (one token
per call) and of 16 sequences together (one token of each per call, as wpo's llamacpp sampler decodes), in tokens per
second, best of `--repeats`; then off/on as ratios. wpo keeps them on wherever they run (`wpo.llamacpp`), so these
ratios are what an AMX CPU that cannot run them pays.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT_TOKENS, GENERATED, SEQUENCES = 128, 32, 16


def child(gguf: str, extra: bool, repeats: int) -> dict:
    import llama_cpp

    from wpo.llamacpp import model_params

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), model_params(extra=extra))
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_seq_max = 1024, 512, SEQUENCES
    params.n_threads = params.n_threads_batch = os.cpu_count() or 1
    context = llama_cpp.llama_init_from_model(model, params)
    memory = llama_cpp.llama_get_memory(context)
    batch = llama_cpp.llama_batch_init(512, 0, SEQUENCES)

    def decode(rows: list[tuple[int, int, int]]) -> None:  # (token, position, sequence)
        for index, (token, position, sequence) in enumerate(rows):
            batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
            batch.seq_id[index][0], batch.logits[index] = sequence, True
        batch.n_tokens = len(rows)
        if llama_cpp.llama_decode(context, batch) != 0:
            raise SystemExit("llama_decode failed")

    def timed(run) -> float:
        best = float("inf")
        for _ in range(repeats):
            llama_cpp.llama_memory_clear(memory, False)
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        return best

    prompt = [(100 + i, i, 0) for i in range(PROMPT_TOKENS)]
    results = {"prompt_tps": PROMPT_TOKENS / timed(lambda: decode(prompt))}
    one = timed(lambda: [decode([(100 + step, step, 0)]) for step in range(GENERATED)])
    results["generate_1_tps"] = GENERATED / one
    many = timed(lambda: [decode([(100 + step, step, s) for s in range(SEQUENCES)]) for step in range(GENERATED)])
    results["generate_16_tps"] = GENERATED * SEQUENCES / many
    return results


def measure(gguf: Path, extra: bool, repeats: int, env: dict[str, str]) -> dict | str:
    command = [sys.executable, __file__, "--child", str(gguf), "on" if extra else "off", "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode < 0:
        from wpo.crashes import signal_name

        return f"crashed: {signal_name(done.returncode)}"
    if done.returncode != 0:
        return f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=["F16", "Q8_0", "Q4_0", "Q4_K_M"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-cpp-path", help="a folder holding another llama_cpp package, put first on the path")
    parser.add_argument("--child", nargs=2, metavar=("GGUF", "EXTRA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "on", args.repeats)))
        return

    env = dict(os.environ)
    if args.llama_cpp_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.llama_cpp_path, env.get("PYTHONPATH")]))
    info = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    print(f"llama.cpp: {info}")
    print(f"cores: {os.cpu_count()}; best of {args.repeats}; tokens per second\n")

    from wpo.config import load_recipe
    from wpo.exporting.convert import quantize
    from wpo.layout import gguf_cache
    from wpo.sampling.llamacpp_backend import gguf_to_sample

    embedded = load_recipe(None, ["sample.backend=llamacpp"])
    f16 = gguf_to_sample(embedded.model, None, None, gguf_cache(embedded.output_dir))
    figures = ("prompt_tps", "generate_1_tps", "generate_16_tps")
    print(f"| type | extra buffers | {' | '.join(figures)} |")
    print("|---|---|" + "---:|" * len(figures))
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        for type_name in args.types:
            gguf = f16 if type_name == "F16" else quantize(f16, Path(scratch) / f"smollm2.{type_name}.gguf", type_name)
            measured = {extra: measure(gguf, extra, args.repeats, env) for extra in (True, False)}
            for extra, result in measured.items():
                cells = [f"{result[f]:.0f}" for f in figures] if isinstance(result, dict) else [result, "", ""]
                print(f"| {type_name} | {'on' if extra else 'off'} | {' | '.join(cells)} |", flush=True)
            if all(isinstance(result, dict) for result in measured.values()):
                ratios.append((type_name, [measured[False][f] / measured[True][f] for f in figures]))
    if ratios:
        print(f"\noff/on throughput (below 1: turning them off costs that much)\n| type | {' | '.join(figures)} |")
        print("|---|" + "---:|" * len(figures))
        for type_name, values in ratios:
            print(f"| {type_name} | {' | '.join(f'{v:.2f}x' for v in values)} |")


if __name__ == "__main__":
    main()
