"""Long runs meet real faults: two launches on one directory, broken and empty API answers, a full disk, SIGTERM.
Real processes for the lock and the signals, the real `openai` client against loopback servers, a real tmpfs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DISTRIBUTED_ENV, PAIRS, assert_one_line_error, cli, pair_record, train_recipe, write_lines
from judge_server import FakeJudge

from wpo.config import load_recipe
from wpo.errors import WpoError
from wpo.sampling.stage import run_sample
from wpo.training.metrics import read_metrics


def faults_training(tmp_path: Path, model: Path, steps: int) -> Path:
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair_record(*pair) for pair in PAIRS])
    return train_recipe(
        tmp_path / "train.yaml",
        model,
        pairs,
        output_dir=tmp_path / "run",
        seed=2,
        max_steps=steps,
        lr_scheduler="constant",
        warmup_ratio=0,
        logging_steps=1,
        save_steps=0,
    )


def start_training(recipe: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wpo", "train", str(recipe), *overrides],
        env=DISTRIBUTED_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow  # real processes
def test_a_second_launch_is_refused_and_sigterm_checkpoints_then_resumes(tmp_path, tiny_llama):
    """While one `wpo train` runs, a second on the same output_dir stops with who holds it. SIGTERM then stops the
    first at the next step boundary with a checkpoint and exit 143; the rerun resumes from it to the losses of an
    uninterrupted run. A lock left by a killed process blocks nothing."""
    recipe = faults_training(tmp_path, tiny_llama, steps=400)
    run = tmp_path / "run"
    first = start_training(recipe)
    metrics = run / "train" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, first)

    second = cli("train", recipe)
    assert_one_line_error(
        second, f"{run} is in use by another wpo launch (pid {first.pid} on ", "`", "wait for it to end, or pass --wait"
    )

    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("wpo: stopped: training stopped by SIGTERM after step "), last
    stopped_at = int(last.split("after step ")[1].split()[0])
    assert 2 <= stopped_at < 400 and (run / "train" / f"checkpoint-{stopped_at}").is_dir()
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    assert not manifest["completed"] and manifest["counts"]["stopped_at_step"] == stopped_at

    # constant learning rate: the first steps of a shorter run are those of the 400-step one
    straight = subprocess.run(
        [
            sys.executable,
            "-m",
            "wpo",
            "train",
            str(recipe),
            f"output_dir={tmp_path / 'straight'}",
            f"train.max_steps={stopped_at + 3}",
        ],
        env=DISTRIBUTED_ENV,
        capture_output=True,
        text=True,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed = start_training(recipe)  # the rerun: resumes the 400-step run; 3 steps past the signal are enough
    wait_for(lambda: len(read_metrics(metrics)) >= stopped_at + 3, resumed)
    resumed.kill()  # kill -9: the lock goes with the process
    resumed.wait()
    rows, uninterrupted = read_metrics(metrics), read_metrics(tmp_path / "straight" / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows[: stopped_at + 3]] == list(range(1, stopped_at + 4))
    for key in ("loss", "weight_mean", "reward_margin", "logps_chosen"):
        assert [r[key] for r in rows[: stopped_at + 3]] == pytest.approx(
            [r[key] for r in uninterrupted], rel=1e-6, abs=1e-9
        ), key

    after_kill = cli("train", recipe, "train.max_steps=2", "--json")  # the killed process's lock blocks nothing
    assert after_kill.exit_code == 0, after_kill.stderr


def offpolicy_settings(tmp_path, tiny_llama, url, *extra: str) -> list[str]:
    write_lines(
        tmp_path / "prompts.jsonl",
        [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Name a colour, number {i}."}]} for i in range(3)],
    )
    model = f"{{name: strong, base_url: '{url}', model: m, max_retries: 2, max_concurrency: 1}}"
    return [
        f"output_dir={tmp_path / 'run'}",
        f"model.name_or_path={tiny_llama}",
        "sample.n=2",
        "sample.max_new_tokens=2",
        f"sample.prompts={tmp_path / 'prompts.jsonl'}",
        f"sample.offpolicy_models=[{model}]",
        *extra,
    ]


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b"<html><body>502 Bad Gateway from the proxy</body></html>", "<html><body>502 Bad Gateway from the proxy"),
        (b'{"id": "c", "object": "chat.completion", "choices": [{"message": {"content": "Bl', '{"id": "c", "object"'),
    ],
)
def test_a_broken_body_is_retried_then_named(tmp_path, tiny_llama, body, shown):
    with FakeJudge(body=body) as server:
        with pytest.raises(WpoError) as failed:
            run_sample(load_recipe(None, offpolicy_settings(tmp_path, tiny_llama, server.url)))
    message = str(failed.value)
    assert "sample.offpolicy_models strong (m at " in message and "for the prompt 'q0'" in message
    assert "answered HTTP 200 with a body that is not a chat completion after 3 attempts" in message
    assert shown in message and "0 answers are saved" in message
    assert server.received == 3  # retried as a 5xx is


def test_an_answer_without_content_is_never_a_candidate(tmp_path, tiny_llama):
    empty = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "content_filter", "message": {"role": "assistant", "content": None}}],
    }
    with FakeJudge(body=json.dumps(empty).encode()) as server:
        settings = offpolicy_settings(tmp_path, tiny_llama, server.url)
        with pytest.raises(
            WpoError,
            match=r"answered with no content \(finish_reason: content_filter\) for the "
            r"prompt 'q0'",
        ):
            run_sample(load_recipe(None, settings))
        skipped = run_sample(load_recipe(None, [*settings, "on_bad_record=skip"]))
    assert skipped["counts"]["skipped"] == {"offpolicy_empty:strong": 3}
    records = [json.loads(line) for line in (tmp_path / "run" / "sample" / "candidates.jsonl").open()]
    assert all(c["source"] == "policy" and c["text"].strip() for r in records for c in r["candidates"])


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs (the test runs as root, as CI does); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_the_rerun_resumes_to_the_same_file(tmp_path, tiny_llama, small_disk, caplog):
    """The samples fit, the final file (with 3.6 MB of references) does not: one line naming the file, no
    half-written file; with space freed, the rerun resumes from the saved samples to an uninterrupted run's bytes."""
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        [
            {"id": f"q{i}", "messages": [{"role": "user", "content": f"Say {i}."}], "reference": "x" * 300_000}
            for i in range(12)
        ],
    )
    settings = [
        f"model.name_or_path={tiny_llama}",
        f"sample.prompts={prompts}",
        "sample.n=1",
        "sample.max_new_tokens=2",
        "sample.batch_size=2",
        "sample.offpolicy_fields=[reference]",
        "stages=[sample]",
    ]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 1\n")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 6_000_000)  # leaves about 2 MB
    full = cli("sample", recipe, f"output_dir={small_disk / 'run'}", *settings)
    assert full.exit_code == 2
    assert full.stderr.splitlines()[-1] == (
        f"wpo: error: cannot write {small_disk / 'run' / 'sample' / 'candidates.jsonl'}: no space left on the device; "
        "everything finished before it is saved (outputs, progress and caches are fsynced as they finish): fix that "
        "and rerun, and the run resumes"
    )
    sample_dir = small_disk / "run" / "sample"
    assert not list(sample_dir.glob(".candidates.jsonl.*.tmp")) and not (sample_dir / "candidates.jsonl").exists()
    assert list(sample_dir.glob(".candidates.*.progress.jsonl"))  # every sample is saved

    filler.unlink()
    with caplog.at_level(logging.INFO, logger="wpo.sampling.stage"):
        again = cli("sample", recipe, f"output_dir={small_disk / 'run'}", *settings)
    assert again.exit_code == 0, again.stderr
    assert "sample: resuming, 12 of 12 prompts already sampled" in caplog.text
    straight = cli("sample", recipe, f"output_dir={tmp_path / 'straight'}", *settings)
    assert straight.exit_code == 0, straight.stderr
    written = (sample_dir / "candidates.jsonl").read_bytes()
    assert written == (tmp_path / "straight" / "sample" / "candidates.jsonl").read_bytes()


def test_a_server_that_never_answers_times_out_and_is_named(tmp_path, tiny_llama):
    with FakeJudge(stall_seconds=5.0) as server:
        model = f"{{name: strong, base_url: '{server.url}', model: m, timeout: 0.3, max_retries: 1}}"
        settings = offpolicy_settings(tmp_path, tiny_llama, server.url)
        settings[-1] = f"sample.offpolicy_models=[{model}]"
        started = time.monotonic()
        with pytest.raises(
            WpoError,
            match=r"strong \(m at .*\) failed after 2 attempts \(APITimeoutError\) for the "
            r"prompt 'q\d'",
        ):
            run_sample(load_recipe(None, settings))
    assert time.monotonic() - started < 30


def test_the_lock_names_its_holder_is_reentrant_and_held_by_the_main_process(tmp_path):
    """The lock holder's details, and what a process of a launch other than the main one does (nothing)."""
    from wpo.run_lock import LOCK_NAME, RunLocked, run_lock

    with run_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] and holder["since"]
        with run_lock(tmp_path):  # re-entrant in one process (a sweep, a notebook)
            pass
        probe = subprocess.run(
            [sys.executable, "-c", f"from wpo.run_lock import run_lock\nwith run_lock({str(tmp_path)!r}): pass"],
            capture_output=True,
            text=True,
        )
        assert (
            probe.returncode != 0 and f"{tmp_path} is in use by another wpo launch (pid {os.getpid()}" in probe.stderr
        )
        worker = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from wpo.run_lock import run_lock\nwith run_lock({str(tmp_path)!r}): print('ran')",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "RANK": "1"},
        )
        assert worker.stdout == "ran\n"  # the launch's main process holds it for all
    with run_lock(tmp_path):  # released on leaving
        pass
    assert issubclass(RunLocked, WpoError)


def test_usage_is_kept_with_each_answer_and_reported_in_all(tmp_path, tiny_llama):
    """A rerun that asks nothing still reports what its answers cost (each paid once), beside its own requests; the
    first run was cut short by a failure, and its answers' cost is not lost. The policy's server is reported too."""
    with FakeJudge(fail_status=500, fail_from=3) as server:
        settings = offpolicy_settings(tmp_path, tiny_llama, server.url)
        with pytest.raises(WpoError, match="answered HTTP 500"):
            run_sample(load_recipe(None, settings))  # 2 answers saved, then the server fails
        server.fail_status = None
        first = run_sample(load_recipe(None, settings))["counts"]["api_usage"]["strong"]
        (tmp_path / "run" / "sample" / "manifest.json").unlink()
        again = run_sample(load_recipe(None, settings))["counts"]["api_usage"]["strong"]
    assert (first["requests"], first["cache_hits"], first["answers"]) == (1, 2, 3)
    assert (again["requests"], again["cache_hits"], again["answers"]) == (0, 3, 3)
    for usage in (first, again):
        assert usage["all_answers_requests"] == 3 and usage["all_answers_completion_tokens"] == 3
        assert usage["all_answers_prompt_tokens"] > 3

    with FakeJudge() as server:
        policy_server = load_recipe(
            None,
            [
                f"output_dir={tmp_path / 'served'}",
                f"model.name_or_path={tiny_llama}",
                "sample.n=2",
                f"sample.prompts={tmp_path / 'prompts.jsonl'}",
                "sample.backend=openai",
                "sample.max_new_tokens=4",
                f"sample.endpoint={{base_url: '{server.url}', model: policy}}",
            ],
        )
        counts = run_sample(policy_server)["counts"]
    assert counts["api_usage"]["sample.endpoint"]["answers"] == 6
    assert counts["api_usage"]["sample.endpoint"]["all_answers_completion_tokens"] == 6
    assert counts["finish_reasons"] == {"policy": {"stop": 6}}  # as the server said
