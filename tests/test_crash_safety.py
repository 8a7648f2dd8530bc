"""Every stage survives `kill -9`: a real `python -m wpo <stage>` process is SIGKILLed in the middle of its work,
every file it left at a final path is complete (or absent), and rerunning the same command gives what an
uninterrupted run gives — the same bytes for sample, score, pair and export, the same loss curve and weights for
train, and no judge question answered twice for score and eval.

The kill lands at a known point, not after a guessed delay: once a progress file has lines (sample), while the judge
holds question N unanswered (score, eval), while the atomic writer's temporary file exists (pair), once a
checkpoint is on disk (train), or while llama.cpp's converter writes its temporary GGUF (export). The uninterrupted
run and the rerun are the same command line through the CLI in this process (a process start costs more than most
of these stages), with one thread, as the killed process had (OMP_NUM_THREADS=1), so the arithmetic matches bit for
bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import PAIRS, assert_ok, cli, pair_record, tiny_model, train_recipe, write_lines
from judge_server import FakeJudge
from safetensors.torch import load_file

from wpo.training.metrics import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WPO_LOG_LEVEL": "WARNING"}
TIMING_KEYS = {"tokens_per_second", "step_seconds"}


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def command(stage: str, recipe: Path, run_dir: Path) -> list[str]:
    return [stage, str(recipe), f"output_dir={run_dir}"]


def run_to_completion(stage: str, recipe: Path, run_dir: Path) -> None:
    """The same command line as the killed process, run to completion in this process (one thread, as it had)."""
    with one_thread():
        assert_ok(cli(*command(stage, recipe, run_dir)), tail=3000)


def kill_when(stage: str, recipe: Path, run_dir: Path, ready: Callable[[], bool]) -> int:
    """Start the stage in a session of its own, SIGKILL it (the `wpo` process only, as `kill -9 PID` does) as soon as
    `ready()` holds, and check it really was killed mid-work. Returns the session's id, to end what it left behind."""
    log = (run_dir.parent / f"{run_dir.name}.stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "wpo", *command(stage, recipe, run_dir)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not ready():
            assert process.poll() is None, (
                f"{stage} exited ({process.returncode}) before the kill point: "
                + (run_dir.parent / f"{run_dir.name}.stderr").read_text()[-2000:]
            )
            assert time.monotonic() < deadline, f"{stage} never reached the kill point"
            time.sleep(0.005)
        process.kill()
        assert process.wait() == -signal.SIGKILL
    finally:
        log.close()
    assert not (run_dir / stage / "manifest.json").exists(), "the stage completed before the kill"
    return process.pid


def assert_complete(path: Path) -> None:
    """A file at a final path is whole: it parses to its end in its own format."""
    if path.suffix == ".jsonl":
        text = path.read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), f"{path} ends mid-line"
        for line in text.splitlines():
            json.loads(line)
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".safetensors":
        load_file(str(path))
    elif path.suffix == ".gguf":
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        last = max(reader.tensors, key=lambda t: t.data_offset)
        assert last.data_offset + last.n_bytes <= path.stat().st_size, f"{path} is cut short"
    elif path.suffix == ".png":
        assert path.read_bytes()[-12:-4] == b"\x00\x00\x00\x00IEND", f"{path} has no end chunk"
    elif path.suffix == ".html":
        assert path.read_text(encoding="utf-8").endswith("</html>"), f"{path} is cut short"
    elif path.suffix == ".csv":
        pd.read_csv(path)


def assert_no_partial_outputs(stage_dir: Path) -> list[str]:
    """Every file the killed stage left at a final path is complete; hidden files (temporary files, progress) and
    TensorBoard's own append-only log are exempt. Returns the final files found."""
    found = []
    for path in sorted(stage_dir.rglob("*")):
        relative = path.relative_to(stage_dir)
        if path.is_file() and not any(p.startswith(".") or p == "tensorboard" for p in relative.parts):
            assert_complete(path)
            found.append(str(relative))
    return found


@pytest.mark.slow  # launches processes
def test_sample(tmp_path, tiny_llama):
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?" + " Explain." * (i % 3)}]}
            for i in range(12)
        ],
    )
    recipe = tmp_path / "sample.yaml"
    recipe.write_text(
        f"seed: 5\nmodel: {{name_or_path: {tiny_llama}}}\n"
        f"sample: {{prompts: {prompts}, n: 2, max_new_tokens: 8, batch_size: 1}}\n"
    )
    run_to_completion("sample", recipe, tmp_path / "straight")

    killed = tmp_path / "killed"

    def progress_lines() -> int:
        files = list((killed / "sample").glob(".candidates.*.progress.jsonl"))
        return files[0].read_bytes().count(b"\n") if files else 0

    kill_when("sample", recipe, killed, lambda: progress_lines() >= 3)
    assert assert_no_partial_outputs(killed / "sample") == []  # candidates.jsonl is written only at the end
    done_before = progress_lines()
    assert 3 <= done_before < 12

    run_to_completion("sample", recipe, killed)
    output = "sample/candidates.jsonl"
    assert (killed / output).read_bytes() == (tmp_path / "straight" / output).read_bytes()
    counts = json.loads((killed / "sample" / "manifest.json").read_text())["counts"]
    assert counts["prompts_done_before_this_run"] >= done_before
    assert not list((killed / "sample").glob(".*progress*"))


def candidates_to_score(tmp_path: Path) -> Path:
    """12 prompts × 2 candidates, every judge question distinct."""
    return write_lines(
        tmp_path / "candidates.jsonl",
        [
            {
                "id": f"c{i}",
                "messages": [{"role": "user", "content": f"Describe the number {i}."}],
                "candidates": [{"text": f"{i} is {adjective}.", "source": "policy"} for adjective in ("odd", "small")],
            }
            for i in range(12)
        ],
    )


def judge_recipe(recipe: Path, stage: str, url: str, inputs: str) -> Path:
    endpoint = f"{{base_url: '{url}', model: judge, max_concurrency: 1}}"  # one in flight: the kill point is exact
    settings = f"scorer: judge, judge: {endpoint}" if stage == "score" else f"api: {endpoint}, max_new_tokens: 6"
    recipe.write_text(f"seed: 3\n{stage}: {{{inputs}, {settings}}}\n")
    return recipe


@pytest.mark.slow  # launches processes
def test_score(tmp_path):
    """Kill while the judge holds the 20th of 24 questions: 8 records are in the progress file (appended every 8),
    19 answers in the judge cache. The rerun asks only the 5 unanswered questions."""
    candidates = candidates_to_score(tmp_path)
    with FakeJudge() as straight_judge:
        straight = judge_recipe(tmp_path / "straight.yaml", "score", straight_judge.url, f"candidates: {candidates}")
        run_to_completion("score", straight, tmp_path / "straight")
    assert len(straight_judge.answered) == 24

    killed = tmp_path / "killed"
    with FakeJudge(hang_at=20) as judge:
        recipe = judge_recipe(tmp_path / "killed.yaml", "score", judge.url, f"candidates: {candidates}")
        kill_when("score", recipe, killed, judge.hung.is_set)
        judge.release()
        assert assert_no_partial_outputs(killed / "score") == ["judge_cache.jsonl"]  # an append-only log
        assert (killed / "score" / "judge_cache.jsonl").read_text().count("\n") == 19
        run_to_completion("score", recipe, killed)
    assert len(judge.answered) == 24 and sorted(judge.answered) == sorted(straight_judge.answered)
    output = "score/candidates.jsonl"
    assert (killed / output).read_bytes() == (tmp_path / "straight" / output).read_bytes()
    counts = json.loads((killed / "score" / "manifest.json").read_text())["counts"]
    assert (counts["records_done_before_this_run"], counts["judge_requests"], counts["judge_cache_hits"]) == (8, 5, 3)


@pytest.mark.slow  # launches processes
def test_pair(tmp_path):
    """Kill while `pairs.jsonl` is being written (its temporary file exists): nothing half-written at the final path."""
    candidates = write_lines(
        tmp_path / "candidates.jsonl",
        [
            {
                "id": f"q{i}",
                "messages": [{"role": "user", "content": f"Question number {i}?"}],
                "candidates": [
                    {"text": f"Answer {k} to question {i}. " * 3, "source": "policy", "score": (i + 3 * k) % 5}
                    for k in range(3)
                ],
            }
            for i in range(20000)
        ],
    )
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(f"pair: {{candidates: {candidates}, length_unit: characters}}\n")
    run_to_completion("pair", recipe, tmp_path / "straight")

    killed = tmp_path / "killed"
    kill_when("pair", recipe, killed, lambda: any((killed / "pair").glob(".pairs.jsonl.*.tmp")))
    assert "pairs.jsonl" not in assert_no_partial_outputs(killed / "pair")

    run_to_completion("pair", recipe, killed)
    for output in ("pair/pairs.jsonl", "pair/stats.json"):
        assert (killed / output).read_bytes() == (tmp_path / "straight" / output).read_bytes(), output
    assert not list((killed / "pair").glob(".*.tmp"))


def train_recipe_in(run_dir: Path, model: Path) -> Path:
    """Each run reads its own copy of the pairs, so each computes its own cached reference log-probs."""
    run_dir.mkdir()
    pairs = write_lines(run_dir / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    return train_recipe(run_dir / "train.yaml", model, pairs, stages=None, max_steps=40, save_steps=5, logging_steps=1)


@pytest.mark.slow  # launches processes
def test_train(tmp_path, tiny_llama):
    """Kill once checkpoint-10 of 40 steps is on disk; the resumed run logs the uninterrupted run's loss curve and
    ends with its weights."""
    run_to_completion("train", train_recipe_in(tmp_path / "straight", tiny_llama), tmp_path / "straight")

    killed = tmp_path / "killed"
    recipe = train_recipe_in(killed, tiny_llama)
    kill_when("train", recipe, killed, lambda: (killed / "train" / "checkpoint-10" / "trainer_state.json").exists())
    left = assert_no_partial_outputs(killed / "train")
    assert "final/model.safetensors" not in left and "checkpoint-10/model/model.safetensors" in left
    logged = [row["step"] for row in read_metrics(killed / "train" / "metrics.jsonl")]
    assert logged == list(range(1, len(logged) + 1)) and 10 <= len(logged) < 40

    run_to_completion("train", recipe, killed)
    counts = json.loads((killed / "train" / "manifest.json").read_text())["counts"]
    assert counts["resumed_from_step"] >= 10 and counts["resumed_from_step"] % 5 == 0
    straight = read_metrics(tmp_path / "straight" / "train" / "metrics.jsonl")
    resumed = read_metrics(killed / "train" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 41))
    for ours, theirs in zip(resumed, straight, strict=True):
        for key in set(theirs) - TIMING_KEYS:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (ours["step"], key)
    final_straight = load_file(str(tmp_path / "straight" / "train" / "final" / "model.safetensors"))
    final_resumed = load_file(str(killed / "train" / "final" / "model.safetensors"))
    assert final_resumed.keys() == final_straight.keys()
    for name, tensor in final_straight.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # launches processes
def test_eval(tmp_path, tiny_llama):
    """Kill while the judge holds the 4th of 6 comparisons: the rerun regenerates the same outputs and asks only the
    3 comparisons never answered."""
    prompts = write_lines(
        tmp_path / "eval.jsonl",
        [
            {
                "id": f"e{i}",
                "messages": [{"role": "user", "content": f"Name something {word}."}],
                "reference": f"Something {word} is the {word} thing.",
            }
            for i, word in enumerate(["blue", "small", "loud", "old", "new", "warm"])
        ],
    )
    inputs = f"model: {tiny_llama}, prompts: {prompts}"
    with FakeJudge() as straight_judge:
        straight = judge_recipe(tmp_path / "straight.yaml", "eval", straight_judge.url, inputs)
        run_to_completion("eval", straight, tmp_path / "straight")
    assert len(straight_judge.answered) == 6

    killed = tmp_path / "killed"
    with FakeJudge(hang_at=4) as judge:
        recipe = judge_recipe(tmp_path / "killed.yaml", "eval", judge.url, inputs)
        kill_when("eval", recipe, killed, judge.hung.is_set)
        judge.release()
        left = assert_no_partial_outputs(killed / "eval")
        assert "model_outputs.json" in left and "annotations.json" not in left
        run_to_completion("eval", recipe, killed)
    assert len(judge.answered) == 6 and sorted(judge.answered) == sorted(straight_judge.answered)
    for output in ("model_outputs.json", "annotations.json", "metrics.json", "leaderboard.csv"):
        assert (killed / "eval" / output).read_bytes() == (tmp_path / "straight" / "eval" / output).read_bytes()


@pytest.fixture(scope="module")
def exportable_model(tmp_path_factory, sentencepiece_dir) -> Path:
    """A tiny Qwen2 with a SentencePiece tokenizer: llama.cpp's converter accepts it without knowing the tokenizer."""
    return tiny_model(tmp_path_factory.mktemp("exportable"), "qwen2", sentencepiece_dir)


@pytest.mark.slow  # launches processes
def test_export(tmp_path, exportable_model):
    """`kill -9` of `wpo export` while its converter writes the F16 file. The converter, orphaned, may keep writing its
    own temporary file while the rerun converts again; the rerun's files equal an uninterrupted run's."""
    recipe = tmp_path / "export.yaml"
    recipe.write_text(
        f"export: {{model: {exportable_model}, name: tiny, quantizations: [F16, Q4_K_M], verify_tokens: 32}}\n"
    )
    run_to_completion("export", recipe, tmp_path / "straight")

    killed = tmp_path / "killed"
    session = kill_when("export", recipe, killed, lambda: any((killed / "export").glob(".tiny.F16.gguf.*.tmp")))
    try:
        assert "tiny.F16.gguf" not in assert_no_partial_outputs(killed / "export")
        run_to_completion("export", recipe, killed)
    finally:
        with suppress(ProcessLookupError):  # the converter the kill orphaned, if it is still running
            os.killpg(session, signal.SIGKILL)
    for output in ("tiny.F16.gguf", "tiny.Q4_K_M.gguf", "quantization_report.json", "README.md"):
        assert (killed / "export" / output).read_bytes() == (tmp_path / "straight" / "export" / output).read_bytes()
    assert_no_partial_outputs(killed / "export")
    assert not [p.name for p in (killed / "export").glob(".tiny.*")]


@pytest.mark.slow  # launches processes
def test_sample_offpolicy_answers_from_a_model(tmp_path, tiny_llama):
    """Kill while the off-policy model holds the 6th of 10 questions (one in flight): 5 answers are in the cache, and
    the rerun asks only the other 5 and writes the same bytes as an uninterrupted run."""
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Name the colour number {i}."}]} for i in range(10)],
    )

    def recipe_for(name: str, url: str) -> Path:
        model = f"{{name: strong, base_url: '{url}', model: big, max_concurrency: 1}}"
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(
            f"seed: 5\nmodel: {{name_or_path: {tiny_llama}}}\n"
            f"sample: {{prompts: {prompts}, n: 1, max_new_tokens: 2, offpolicy_models: [{model}]}}\n"
        )
        return recipe

    with FakeJudge() as straight_judge:
        run_to_completion("sample", recipe_for("straight", straight_judge.url), tmp_path / "straight")
    killed = tmp_path / "killed"
    with FakeJudge(hang_at=6) as judge:
        recipe = recipe_for("killed", judge.url)
        kill_when("sample", recipe, killed, judge.hung.is_set)
        judge.release()
    assert (killed / "sample" / "offpolicy_cache.jsonl").read_text().count("\n") == 5
    with FakeJudge() as rerun_judge:
        run_to_completion("sample", recipe_for("killed", rerun_judge.url), killed)
    assert rerun_judge.received == 5
    output = "sample/candidates.jsonl"
    assert (killed / output).read_bytes() == (tmp_path / "straight" / output).read_bytes()
