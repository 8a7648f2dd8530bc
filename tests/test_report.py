"""`wpo report`: the run's offline HTML page, checked as markup (escaping, counts, absent stages, the cap) and in a
real headless Chromium (no console error, no request, the browsers page, filter and search).

The run directory is made the way a run makes it: a sample stage's file and manifest written with the project's own
record and manifest writers, then `wpo run` scores (a Python reward: the answer's length) and pairs them for real and
writes the report; train, eval and export files follow, in their stages' formats, with the eval figures computed by
the eval code itself (no model is trained here).
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import assert_ok, assert_one_line_error, cli
from markupsafe import escape

import wpo
from wpo.data.io import write_json, write_jsonl
from wpo.data.schemas import Candidate, CandidatesRecord, PromptRecord
from wpo.evaluation.measures import compare, per_prompt_values, verdict
from wpo.evaluation.metrics import summarize
from wpo.manifest import Counts, file_sha256, write_manifest
from wpo.reporting import REPORT_NAME, build_run_report
from wpo.reporting.render import PAIRS_PER_PAGE, PROMPTS_PER_PAGE
from wpo.user_functions import UserFunction

HOSTILE = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><!-- &amp;'
HOSTILE_SOURCE = "offpolicy:<b>gpt</b>"
PROMPTS = 60
HOSTILE_PROMPT, SEARCHABLE_PROMPT, DROPPED_PROMPT = 7, 11, 13
REWARD_MODULE = "report_test_reward"


# --- a run directory, made as the stages make it -------------------------------------------------------------------


def write_old_manifest(stage_dir: Path, stage: str, counts: dict, **fields) -> None:
    """A manifest as an earlier release wrote it: the stage's counts under its own names."""
    path = write_manifest(stage_dir, stage=stage, counts=Counts.from_json(counts, stage), **fields)
    path.write_text(json.dumps({**json.loads(path.read_text()), "counts": counts}))


def prompt_id(index: int) -> str:
    return f"p{index:03d}" + (HOSTILE if index == HOSTILE_PROMPT else "")


def candidates_records() -> list[dict]:
    """Every prompt has two policy answers and the reference; every third also an answer from a source whose name is
    markup. One prompt carries hostile text everywhere, one a word found nowhere else, one two identical answers (the
    pair stage drops it: all scores equal)."""
    records = []
    for index in range(PROMPTS):
        question = f"Question {index}: tell me about topic {index}." + (HOSTILE if index == HOSTILE_PROMPT else "")
        candidates = [
            Candidate(f"Short answer {index}." if index != SEARCHABLE_PROMPT else "A zebra.", "policy", seed=2 * index),
            Candidate(f"A longer policy answer, number {index}, with more words" + "!" * (index % 5), "policy"),
            Candidate(f"The reference answer {index} " + "is detailed. " * (1 + index % 4), "offpolicy:reference"),
        ]
        if index % 3 == 0:
            candidates.append(Candidate("gpt says " + "very " * (3 * (index % 7)) + "much.", HOSTILE_SOURCE))
        if index == HOSTILE_PROMPT:
            candidates.append(Candidate("Look: " + HOSTILE * 3, "policy", seed=999))
        if index == DROPPED_PROMPT:
            candidates = [Candidate("Same.", "policy", seed=1), Candidate("Same.", "policy", seed=2)]
        messages = [{"role": "user", "content": question}]
        records.append(CandidatesRecord(prompt_id(index), messages, candidates).to_record())
    return records


def write_sample_stage(run: Path) -> None:
    records = candidates_records()
    write_jsonl(run / "sample" / "candidates.jsonl", records)
    counts = {
        "prompts_read": PROMPTS,
        "prompts_written": PROMPTS,
        "skipped": {},
        "dropped": {},
        "samples_per_prompt": 2,
        "offpolicy_fields": ["reference"],
        "offpolicy_models": {},
        "api_usage": {},
        "prompts_done_before_this_run": 0,
    }
    write_old_manifest(
        run / "sample",
        "sample",
        counts,
        config={"seed": 1},
        config_hash="5a3b1e0000000001",
        seed=1,
        wall_seconds=12.5,
        outputs=["candidates.jsonl"],
    )


def run_score_and_pair(tmp_path: Path, run: Path) -> dict:
    """The real score and pair stages through `wpo.run`, which ends by writing the report."""
    (tmp_path / f"{REWARD_MODULE}.py").write_text("def reward(messages, text):\n    return len(text) / 100\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        settings = ["stages=[score, pair]", "score.scorer=python", f"score.function={REWARD_MODULE}:reward"]
        recipe = wpo.load_recipe(None, [f"output_dir={run}", *settings, "pair.length_unit=characters"])
        return wpo.run(recipe)


TRAIN_KEYS = (
    "loss",
    "weight_mean",
    "weight_min",
    "weight_max",
    "rewards_chosen",
    "rewards_rejected",
    "reward_margin",
    "reward_accuracy",
    "logps_chosen",
    "logps_rejected",
    "learning_rate",
    "grad_norm",
    "pairs",
    "tokens_per_second",
    "step_seconds",
)


def write_train_stage(run: Path, steps: int = 6, pairs: Path | None = None) -> list[dict]:
    rows = [
        {
            "step": step,
            "epoch": step / steps,
            **{key: round(0.1 * step + 0.01 * i, 4) for i, key in enumerate(TRAIN_KEYS)},
        }
        for step in range(1, steps + 1)
    ]
    (run / "train").mkdir(parents=True, exist_ok=True)
    (run / "train" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    counts = {
        "pairs_read": PROMPTS - 1,
        "pairs_trained": PROMPTS - 1,
        "skipped": {"too_long": 2},
        "truncated_prompts": 0,
        "truncated_responses": 1,
        "steps": steps,
        "resumed_from_step": 0,
        "num_processes": 1,
        "global_batch_pairs": 8,
    }
    pairs = pairs or run / "pair" / "pairs.jsonl"
    config = {"seed": 1, "inputs": {"train.pairs": {"source": str(pairs), "fingerprint": file_sha256(pairs)}}}
    write_old_manifest(
        run / "train",
        "train",
        counts,
        config=config,
        config_hash="7ra1n00000000001",
        seed=1,
        wall_seconds=330.0,
        outputs=["metrics.jsonl"],
    )
    return rows


EVAL_PROMPTS = [
    (f"e{i}", f"Describe thing {i} in one sentence.", f"Thing {i} is a thing with {i} parts.") for i in range(8)
]
HOSTILE_EVAL = 3


def eval_answers() -> tuple[list[str], list[str]]:
    base = [f"Thing {i} is, well, a thing thing thing." for i in range(8)]
    trained = [f"Thing {i} has {i} parts and is useful." for i in range(8)]
    trained[HOSTILE_EVAL] = "Sure! " + HOSTILE
    trained[5] = trained[6] = "The same answer twice."
    return base, trained


def write_eval_stage(run: Path, with_measures: bool = True) -> dict:
    """The files of `wpo eval` with `compare_to: base_model` and a reward: measures.jsonl rows and metrics from the
    eval code's own functions; without measures, what a judge-only evaluation against references leaves."""
    stage = run / "eval"
    base, trained = eval_answers()
    reward = {"reward": UserFunction("length:reward", lambda messages, text: min(1.0, len(text) / 60), None)}
    annotations, rows = [], []
    for (pid, prompt, reference), before, after in zip(EVAL_PROMPTS, base, trained, strict=True):
        record = PromptRecord(pid, [{"role": "user", "content": prompt}], {"reference": reference})
        values = [per_prompt_values(reward, record, text, reference) for text in (before, after)]
        rows.append(
            {
                "id": pid,
                **{f"{k}_base": v for k, v in values[0].items()},
                **{f"{k}_trained": v for k, v in values[1].items()},
                "prompt": prompt,
                "reference": reference,
                "base_output": before,
                "output": after,
            }
        )
        preference = 1.0 + min(1.0, len(after) / (len(after) + len(before)))
        annotations.append(
            {
                "instruction": prompt,
                "output_1": before if with_measures else reference,
                "output_2": after,
                "generator_1": "tiny-base" if with_measures else "reference",
                "generator_2": "tiny-base-wpo",
                "preference": preference,
                "annotator": "python",
            }
        )
    metrics = summarize(np.array([a["preference"] for a in annotations]), [a["output_1"] for a in annotations], trained)
    metrics |= {"judge": "python", "reference_generator": annotations[0]["generator_1"]}
    write_json(stage / "annotations.json", annotations)
    write_json(
        stage / "model_outputs.json",
        [
            {"instruction": p, "output": o, "generator": "tiny-base-wpo"}
            for (_, p, _), o in zip(EVAL_PROMPTS, trained, strict=True)
        ],
    )
    outputs = ["model_outputs.json", "annotations.json", "metrics.json"]
    if with_measures:
        names = [key.removesuffix("_base") for key in rows[0] if key.endswith("_base")]
        metrics |= compare(rows, names, seed=1)
        metrics |= verdict(metrics, ["reward"], 2.0, 0.5, 0.05)
        write_jsonl(stage / "measures.jsonl", rows)
        write_json(
            stage / "base_outputs.json",
            [
                {"instruction": p, "output": o, "generator": "tiny-base"}
                for (_, p, _), o in zip(EVAL_PROMPTS, base, strict=True)
            ],
        )
        outputs += ["measures.jsonl", "base_outputs.json"]
    write_json(stage / "metrics.json", metrics)
    counts = Counts(len(EVAL_PROMPTS), len(EVAL_PROMPTS), other={"draws_identical_outputs": 0, "judge_usage": {}})
    write_manifest(
        stage,
        stage="eval",
        config={"seed": 1},
        config_hash="e7a1000000000001",
        seed=1,
        counts=counts,
        wall_seconds=48.6,
        outputs=outputs,
    )
    return metrics


GGUF_FILES = [("F16", 270_900_000, 42.27, 0.0), ("Q4_K_M", 105_500_000, 45.74, 0.05569)]


def write_export_stage(run: Path) -> None:
    stage = run / "export"
    files = [
        {
            "type": kind,
            "file": f"tiny-base-wpo.{kind}.gguf",
            "size_bytes": size,
            "file_type": 1,
            "perplexity": ppl,
            "kl_mean": kl,
            "kl_max": 2 * kl,
            "sample_prompt": "What is the water cycle?",
            "sample_answer": "Water goes round. " + HOSTILE,
            "hf_perplexity": 42.27,
        }
        for kind, size, ppl, kl in GGUF_FILES
    ]
    write_json(stage / "quantization_report.json", {"model": "tiny-base-wpo", "verify_tokens": 256, "files": files})
    (stage / "README.md").write_text(f"---\ntags: [wpo]\n---\n# tiny-base-wpo\n\nA card. {HOSTILE}\n")
    write_manifest(
        stage,
        stage="export",
        config={},
        config_hash="ex9047000000001a",
        seed=1,
        counts=Counts(None, 2),
        wall_seconds=30.0,
        outputs=[entry["file"] for entry in files] + ["README.md"],
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """sample (written) → score and pair (run by `wpo run`, which writes the report) → train, eval, export
    (written)."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    write_sample_stage(run)
    run_score_and_pair(root, run)
    shutil.copy(run / REPORT_NAME, root / "written-by-wpo-run.html")
    write_train_stage(run)
    write_eval_stage(run)
    write_export_stage(run)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def pairs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "pair" / "pairs.jsonl").read_text().splitlines()]


# --- reading the page ----------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The page's elements as (tag, attributes), the text of every script element, and the text outside scripts and
    the style sheet."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.text: list[str] = []
        self._script: dict[str, str | None] | None = None
        self._in_style = False
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None
        self._in_style = False

    def handle_data(self, data):
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        elif not self._in_style:
            self.text.append(data)

    def data(self, element_id: str) -> dict:
        (text,) = [text for attrs, text in self.scripts if attrs.get("id") == element_id]
        return json.loads(text)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def report_of(run: Path, **options) -> tuple[str, Page]:
    markup = build_run_report(run, **options)
    return markup, Page(markup)


# --- the page as markup --------------------------------------------------------------------------------------------


def test_wpo_run_writes_the_report_with_what_it_ran(full_run):
    page = Page((full_run.parent / "written-by-wpo-run.html").read_text())
    pairs = pairs_of(full_run)
    assert [item["id"] for item in page.data("pairs-1")["items"]] == [pair["id"] for pair in pairs]
    assert "score done" in page.visible and "pair done" in page.visible
    assert "train did not run" in page.visible and "no evaluation in this run directory" in page.visible


def test_a_full_run_shows_every_stage_with_its_counts(full_run):
    markup, page = report_of(full_run)
    pairs = pairs_of(full_run)
    assert len(pairs) == PROMPTS - 1  # one prompt dropped: its two answers score the same
    for stage in ("sample", "score", "pair", "train", "eval", "export"):
        assert f"{stage} done" in page.visible
    # pair: prompts read, pairs written, and skipped by reason; train: its config hash, wall time, counts by reason;
    # sample and train wrote their manifests in the shape before `Counts` (each its own names), and still show
    assert f"{PROMPTS} {PROMPTS - 1} all_scores_equal 1" in page.visible
    assert f"sample done 12.5 s — 5a3b1e0000000001 {PROMPTS} {PROMPTS} none" in page.visible
    assert "train done 5.5 min" in page.visible and "7ra1n00000000001" in page.visible
    assert f"{PROMPTS - 1} {PROMPTS - 1} too_long 2" in page.visible
    assert f"{PROMPTS - 1} pairs" in page.visible

    by_source = Counter((pair["source_chosen"], pair["source_rejected"]) for pair in pairs)
    table = re.search(r"<h4>Pairs by source</h4>(.*?)</table>", markup, re.S).group(1)
    for (chosen, rejected), count in by_source.items():  # each cell of the chosen × rejected table
        row = re.search(rf"<td>chosen: {re.escape(html.escape(chosen))}</td>(.*?)</tr>", table).group(1)
        assert f"<td>{count}</td>" in row, (chosen, rejected)

    metrics = json.loads((full_run / "eval" / "metrics.json").read_text())
    for name in metrics["measures"]:  # every measure with its CI
        low, high = metrics[f"{name}_delta_ci95"]
        assert f"[{low:+.4g}, {high:+.4g}]" in page.visible, name
    assert f"{metrics['win_rate']:.4g}" in page.visible
    prompts = page.data("prompts-1")
    assert len(prompts["items"]) == len(EVAL_PROMPTS) and prompts["baseline"] == "tiny-base"
    assert [item["label"] for item in prompts["items"][:3]] == [
        f"{label} in reward" for label in ("largest gain", "median", "largest loss")
    ]
    assert "7 distinct answers to 8 held-out prompts" in page.visible
    for kind, size, ppl, _ in GGUF_FILES:
        assert f"tiny-base-wpo.{kind}.gguf {kind} {size / 1e6:.1f} MB {ppl:.4g}" in page.visible
    assert "# tiny-base-wpo" in page.visible  # the card
    assert [tag for tag, _ in page.elements].count("svg") == 3  # data, training and eval charts


def test_hostile_text_stays_text(full_run):
    markup, page = report_of(full_run)
    assert HOSTILE not in markup and "<img" not in markup and not any("onerror" in a for _, a in page.elements)
    # every script element is the page's own: the browsers' data (never run), and the one script
    assert markup.count("<script") == len(page.scripts)
    data_ids = [attrs["id"] for attrs, _ in page.scripts if attrs.get("type") == "application/json"]
    assert data_ids == ["pairs-1", "prompts-1"]
    executable = [text for attrs, text in page.scripts if attrs.get("type") != "application/json"]
    assert executable == [resources.files("wpo.reporting").joinpath("report.js").read_text()]
    # what the browsers receive is the exact text, hostile id, prompt and answers included
    (hostile_pair,) = [item for item in page.data("pairs-1")["items"] if item["id"] == prompt_id(HOSTILE_PROMPT)]
    assert hostile_pair["chosen"] == "Look: " + HOSTILE * 3 and HOSTILE in hostile_pair["prompt"][0]["content"]
    assert any(item["model"] == "Sure! " + HOSTILE for item in page.data("prompts-1")["items"])
    # and where the page itself shows it (the card, the export's sample answer, the source names), it is escaped
    assert f"A card. {HOSTILE}" in page.visible and escape(HOSTILE) in markup
    assert f"<option>{html.escape(HOSTILE_SOURCE)}</option>" in markup


def test_the_data_part_says_how_many_prompts_lack_an_offpolicy_field(full_run, tmp_path):
    """sample.offpolicy_missing: skip_candidate keeps such prompts without the field's candidate; the sample
    manifest counts them by field."""
    run = copy_of(full_run, tmp_path)
    manifest = json.loads((run / "sample" / "manifest.json").read_text())
    manifest["counts"]["offpolicy_missing"] = {"reference": 4}
    (run / "sample" / "manifest.json").write_text(json.dumps(manifest))
    _, page = report_of(run)
    said = f"{PROMPTS} prompts in score/candidates.jsonl ; 4 lack the field reference , so have no offpolicy:reference "
    assert said + "candidate." in page.visible  # (the page's text joined with spaces around each element)
    assert "lack the field" not in report_of(full_run)[1].visible  # none missing: nothing said


def test_a_stage_that_did_not_run_is_absent_not_an_error(full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    for stage in ("sample", "score", "pair", "export"):
        shutil.rmtree(run / stage)
    (run / "train" / "manifest.json").unlink()  # training stopped before it finished
    _, page = report_of(run)
    for stage in ("sample", "score", "pair", "export"):
        assert f"{stage} did not run" in page.visible
    assert "train incomplete: no finished manifest" in page.visible
    assert "no sample, score or pair stage in this run directory" in page.visible
    assert "no export in this run directory" in page.visible
    assert not any(attrs.get("id") == "pairs-1" for attrs, _ in page.scripts)
    assert len(page.data("prompts-1")["items"]) == len(EVAL_PROMPTS)  # what is there is still shown


def test_the_browsers_hold_at_most_the_cap_and_say_so(full_run):
    pairs = pairs_of(full_run)
    _, page = report_of(full_run, max_items=12)
    assert [item["id"] for item in page.data("pairs-1")["items"]] == [pair["id"] for pair in pairs[:12]]
    assert f"The browser holds the first 12 of the {len(pairs)} pairs" in page.visible
    assert f"{len(pairs)} pairs" in page.visible  # the counts and charts still use every pair
    assert len(page.data("prompts-1")["items"]) == 8  # under the cap
    _, uncapped = report_of(full_run)
    assert "The browser holds" not in uncapped.visible and len(uncapped.data("pairs-1")["items"]) == len(pairs)


def test_an_evaluation_without_measures_shows_the_judges_pairs(full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    shutil.rmtree(run / "eval")
    write_eval_stage(run, with_measures=False)
    _, page = report_of(run)
    prompts = page.data("prompts-1")
    base, trained = eval_answers()
    assert prompts["measures"] == [] and prompts["baseline"] == "reference"
    assert [item["baseline"] for item in prompts["items"]] == [reference for _, _, reference in EVAL_PROMPTS]
    assert [item["model"] for item in prompts["items"]] == trained
    assert "no per-prompt measures" in page.visible


def test_each_round_is_shown(full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    round_two = run / "round-2"
    for stage in ("sample", "score", "pair"):
        shutil.copytree(run / stage, round_two / stage)
    write_train_stage(round_two, steps=3)
    _, page = report_of(run)
    assert "Round 1" in page.visible and "Round 2" in page.visible
    assert "round-2/pair done" in page.visible and "round-2/train done" in page.visible
    assert len(page.data("pairs-2")["items"]) == len(pairs_of(run))
    assert [tag for tag, _ in page.elements].count("svg") == 5  # data and training twice, the evaluation once


def test_the_training_part_shows_what_the_wpo_weights_did(full_run, tmp_path):
    """A training's weights as the trainer writes them: figures per logged step, `pair_weights.jsonl` and the run's
    figures in the manifest → a chart, the run's line, the table by pair kind, and the least-weighted pairs first."""
    run = copy_of(full_run, tmp_path)
    hybrid, on_policy = "offpolicy:reference vs policy", "policy vs policy"
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    for row in metrics:
        row.update(weight_ess_share=0.9, weight_clamped_share=0.25, weight_mean_by_source={hybrid: 0.4, on_policy: 0.8})
    write_jsonl(run / "train" / "metrics.jsonl", metrics)

    def pair_row(pair_id: str, chosen: str, first: float, last: float) -> dict:
        return {
            "id": pair_id,
            "source_chosen": chosen,
            "source_rejected": "policy",
            "weight_first": first,
            "weight_last": last,
            "margin_first": 0.0,
            "margin_last": 0.125,
            "step_first": 1,
            "step_last": 6,
            "visits": 2,
        }

    write_jsonl(
        run / "train" / "pair_weights.jsonl",
        [
            pair_row("a", "offpolicy:reference", 0.5, 0.25),
            pair_row(HOSTILE, "offpolicy:reference", 0.5, 0.75),
            pair_row("c", "policy", 1.0, 0.0625),
        ],
    )
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    manifest["weights"] = {
        "pair_visits": 6,
        "pairs_visited": 3,
        "weight_mean": 0.5104,
        "weight_ess": 4.5,
        "weight_ess_share": 0.75,
        "weight_ess_share_step_mean": 0.8,
        "weight_clamped_share": 0.1667,
        "weight_mean_by_source": {hybrid: 0.5, on_policy: 0.5312},
    }
    write_json(run / "train" / "manifest.json", manifest)

    markup, page = report_of(run)
    assert [tag for tag, _ in page.elements].count("svg") == 4  # data, training, the weights and eval charts
    assert "mean WPO weight by pair kind" in markup and "every pair's WPO weight" in markup
    assert (
        "Over the run's 6 pair visits: mean weight 0.5104; effective sample size 0.75 of the visits (per step, on "
        "average 0.8 of the step's pairs); 0.1667 clamped at 1." in page.visible
    )
    assert f"{hybrid} 2 0.5 0.5 0.5" in page.visible  # pairs, mean at first visit, at last visit, over every visit
    assert f"{on_policy} 1 1 0.0625 0.5312" in page.visible
    lowest = re.search(r"The pairs WPO weighed least</summary>(.*?)</table>", markup, re.S).group(1)
    assert re.findall(r'data-pair-id="([^"]*)"', lowest) == ["c", "a", str(escape(HOSTILE))]
    assert HOSTILE not in markup  # the id stays text


def test_the_command_writes_the_page_and_names_a_directory_that_is_not_a_run(full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    (run / REPORT_NAME).unlink()
    result = assert_ok(cli("report", run, "--max-items", "5"))
    assert json.loads(result.stdout) == {"report": str(run / REPORT_NAME), "also_written": []}
    assert len(Page((run / REPORT_NAME).read_text()).data("pairs-1")["items"]) == 5

    (tmp_path / "empty").mkdir()
    (tmp_path / "out" / "sweep").mkdir(parents=True)
    (tmp_path / "out" / "sweep" / "runs.csv").write_text("seed\n")
    assert_one_line_error(
        cli("report", tmp_path / "empty"),
        exact=f"{tmp_path / 'empty'}: not a run directory (no "
        "summary.json, no <stage>/manifest.json) nor a sweep directory (no runs.csv)",
    )
    assert_one_line_error(cli("report", tmp_path / "out"), f"did you mean {tmp_path / 'out' / 'sweep'}?")
    assert_one_line_error(cli("report", tmp_path / "missing"), exact=f"{tmp_path / 'missing'}: no such directory")
    assert_one_line_error(cli("report", run, "--max-items", "-1"), exact="--max-items must be 0 or more, got -1")
    assert not (tmp_path / "empty" / REPORT_NAME).exists()


def test_a_sweep_links_to_every_run_and_its_data(full_run, tmp_path):
    """A sweep directory as `wpo sweep` writes it (its own CSV and plot writers), two variants × one seed, the runs
    training on one shared data directory."""
    from wpo.sweeps import compare as compare_runs
    from wpo.sweeps import write_comparison, write_runs_csv

    sweep = tmp_path / "out" / "sweep"
    data = sweep / "data-0123456789abcdef"
    for stage in ("sample", "score", "pair"):
        shutil.copytree(full_run / stage, data / stage)
    runs = []
    for weighting in ("wpo", "none"):
        run = sweep / "runs" / f"weighting-{weighting}-seed1"
        write_train_stage(run, pairs=data / "pair" / "pairs.jsonl")  # trained on the shared pairs
        write_eval_stage(run)
        runs.append(
            {
                "variant": {"train.weighting": weighting},
                "seed": 1,
                "summary": {"win_rate": 60.0},
                "run": SimpleNamespace(output_dir=str(run)),
            }
        )
    write_runs_csv(sweep / "runs.csv", runs, ["train.weighting"])
    write_comparison(sweep, compare_runs(runs, {"train.weighting": "wpo"}), ["train.weighting"])

    written = wpo.report(sweep)
    assert written[0] == sweep / REPORT_NAME
    assert set(written[1:]) == {sweep / "runs" / f"weighting-{w}-seed1" / REPORT_NAME for w in ("wpo", "none")} | {
        data / REPORT_NAME
    }
    markup = (sweep / REPORT_NAME).read_text()
    page = Page(markup)
    links = [attrs["href"] for tag, attrs in page.elements if tag == "a"]
    assert links.count(f"{data.name}/{REPORT_NAME}") == 3  # each run's data, and the list of data directories
    for weighting in ("wpo", "none"):
        assert f"runs/weighting-{weighting}-seed1/{REPORT_NAME}" in links
    assert all((sweep / link).is_file() for link in links)  # relative links, to pages that exist
    assert any(tag == "img" and attrs["src"].startswith("data:image/png;base64,") for tag, attrs in page.elements)
    comparison = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert {row["measure"] for row in comparison} == {"reward", "chrf", "length_chars", "distinct_2"}
    for row in comparison:  # every row of comparison.csv, its figures as the page rounds them
        assert f"{row['train.weighting']} {row['measure']} 1 {float(row['mean']):.4g}" in page.visible


# --- the page in a real browser ------------------------------------------------------------------------------------


def chromium_path() -> str:
    """Debian's Chromium. Without it (or Playwright) the browser tests skip on a developer's machine, and fail in CI,
    where .ci/run installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None if found else "no chromium on PATH (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError:
        missing = "Playwright is not installed (pip install -e '.[test]')"
    if missing is None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: the browser tests must run in CI, and .ci/run installs what they need")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        yield launched
        launched.close()


class Opened(SimpleNamespace):
    """A page opened on a report, with every console message, script error and request it made."""


def open_report(browser, path: Path) -> Opened:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    opened = Opened(page=page, console=[], errors=[], requests=[])
    page.on("console", lambda message: opened.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on("request", lambda request: opened.requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return opened


def shown_ids(page, container: str) -> list[str]:
    return page.locator(f"{container} [data-pair-id]").evaluate_all("nodes => nodes.map(n => n.dataset.pairId)")


def every_page(page, container: str) -> list[str]:
    """The ids on each page of a browser, clicking `next` until it is disabled."""
    ids = shown_ids(page, container)
    next_button = page.locator(f"{container} .pager[data-position=top] [data-page=next]")
    while next_button.is_enabled():
        next_button.click()
        ids += shown_ids(page, container)
    return ids


PAIRS_BROWSER = ".browser[data-kind=pairs]"


@pytest.mark.slow
def test_in_a_browser_the_report_loads_offline_and_pages_filters_and_searches(browser, full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    path = wpo.report(run)[0]
    pairs = pairs_of(run)
    opened = open_report(browser, path)
    page = opened.page

    assert [kind for kind, _ in opened.console if kind == "error"] == [] and opened.errors == [], opened.console
    assert opened.requests == [path.as_uri()]  # the file itself, nothing else: no CDN, font, favicon or image

    # the pair elements: one page of them on screen, and page by page exactly the file's pairs (under the cap)
    assert len(shown_ids(page, PAIRS_BROWSER)) == min(len(pairs), PAIRS_PER_PAGE)
    assert every_page(page, PAIRS_BROWSER) == [pair["id"] for pair in pairs]

    # a filter: chosen from the reference only, then also a margin floor
    page.select_option(f"{PAIRS_BROWSER} [data-filter=source_chosen]", "offpolicy:reference")
    from_reference = [p for p in pairs if p["source_chosen"] == "offpolicy:reference"]
    assert 0 < len(from_reference) < len(pairs)
    assert every_page(page, PAIRS_BROWSER) == [p["id"] for p in from_reference]
    floor = sorted(p["score_chosen"] - p["score_rejected"] for p in from_reference)[len(from_reference) // 2]
    page.fill(f"{PAIRS_BROWSER} [data-filter=margin_min]", str(floor))
    wide = [p["id"] for p in from_reference if p["score_chosen"] - p["score_rejected"] >= floor]
    assert 0 < len(wide) < len(from_reference) and every_page(page, PAIRS_BROWSER) == wide
    page.fill(f"{PAIRS_BROWSER} [data-filter=margin_min]", "")
    page.select_option(f"{PAIRS_BROWSER} [data-filter=source_chosen]", "")

    # a search: one word found in one pair only
    page.fill(f"{PAIRS_BROWSER} [data-filter=text]", "ZEBRA")
    assert shown_ids(page, PAIRS_BROWSER) == [prompt_id(SEARCHABLE_PROMPT)]

    # hostile text shows as text: nothing ran, no element was made from it
    page.fill(f"{PAIRS_BROWSER} [data-filter=text]", "__pwned")
    assert shown_ids(page, PAIRS_BROWSER) == [prompt_id(HOSTILE_PROMPT)]
    hostile = page.locator(f"{PAIRS_BROWSER} [data-pair-id]")
    assert hostile.get_attribute("data-pair-id") == prompt_id(HOSTILE_PROMPT)
    assert "<script>window.__pwned = 1</script>" in hostile.locator(".side.chosen pre").inner_text()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator(".items img, .items script").count() == 0

    # the held-out prompts: the three by the fixed rule first; ordered by the largest reward loss on request
    prompts = ".browser[data-kind=prompts]"
    labels = page.locator(f"{prompts} [data-prompt-id] .badge").all_inner_texts()
    assert labels == ["largest gain in reward", "median in reward", "largest loss in reward"]
    assert page.locator(f"{prompts} [data-prompt-id]").count() == min(len(EVAL_PROMPTS), PROMPTS_PER_PAGE)
    largest_loss = page.locator(f"{prompts} [data-prompt-id]").nth(2).get_attribute("data-prompt-id")
    page.select_option(f"{prompts} [data-sort]", "delta:reward:asc")
    assert page.locator(f"{prompts} [data-prompt-id]").first.get_attribute("data-prompt-id") == largest_loss
    assert "Sure! " + HOSTILE in page.locator(f"{prompts} .side.model pre").all_inner_texts()

    page.fill(f"{PAIRS_BROWSER} [data-filter=text]", "")
    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000
    assert [kind for kind, _ in opened.console if kind == "error"] == [] and opened.errors == []
    page.close()


@pytest.mark.slow
def test_in_a_browser_a_capped_report_pages_through_the_cap_and_shows_the_notice(browser, full_run, tmp_path):
    run = copy_of(full_run, tmp_path)
    cap = PAIRS_PER_PAGE + 15
    path = wpo.report(run, max_items=cap)[0]
    opened = open_report(browser, path)
    assert every_page(opened.page, PAIRS_BROWSER) == [pair["id"] for pair in pairs_of(run)[:cap]]
    assert opened.page.locator(".cap-notice").first.is_visible()
    assert [kind for kind, _ in opened.console if kind == "error"] == [] and opened.errors == []
    opened.page.close()


def test_figures_are_written_as_a_person_reads_them():
    from wpo import pages

    assert [pages.number(v) for v in (1234567, 0.000123456, 62.5, True, None, float("nan"), "text")] == [
        "1,234,567",
        "0.0001235",
        "62.5",
        "yes",
        "—",
        "—",
        "text",
    ]
    assert pages.number(3, signed=True) == "+3" and pages.interval([-0.51234, 2.0], signed=True) == "[-0.5123, +2]"
    assert [pages.seconds(v) for v in (None, 59.94, 119.9, 330.0)] == ["—", "59.9 s", "119.9 s", "5.5 min"]
    assert [pages.csv_cell(v) for v in ("0.123456", "", "wpo")] == ["0.1235", "", "wpo"]
    assert pages.shorten("abcdef", 4) == "abc…" and pages.shorten("abcd", 4) == "abcd"
    assert pages.shares(Counter({"policy": 3, "offpolicy:gpt": 1})) == "policy 75%, offpolicy:gpt 25%"
    assert str(pages.script_json({"a": "</script>&\u2028"})) == '{"a":"\\u003c/script\\u003e\\u0026\\u2028"}'
