"""`wpo` command line: parse, load the recipe, call the stage, print. Errors end as one line and a non-zero exit."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from wpo import allocator
from wpo.config import load_recipe
from wpo.errors import MachineLacks, Stopped, WpoError
from wpo.reporting import MAX_ITEMS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's panels label every flag `<bool>`
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="Overrides: dotted.key=value ...")]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo finished stages (their results are moved aside).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON, for machines.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="If another launch uses output_dir, wait for it to end.")]


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Every command's body runs inside: a known error prints one line (exit 2), what this machine lacks a line each
    (exit 3), an unexpected error one line too (exit 1, traceback on WPO_DEBUG)."""
    try:
        yield
    except MachineLacks as exc:
        for lack in exc.lacks:
            typer.echo(f"wpo: this machine lacks: {lack}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except WpoError as exc:
        typer.echo(f"wpo: error: {' '.join(str(exc).splitlines())}", err=True)  # one line, even if a value had several
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None
    except Stopped as stop:
        typer.echo(f"wpo: stopped: {stop}", err=True)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("wpo: interrupted", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # a write the machine refused (no space, read-only, permissions) where no writer named it
        from wpo.data.io import write_failure

        failure = write_failure(None, exc)
        if failure is None:
            _internal_error(exc)
        typer.echo(f"wpo: error: {failure}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, not a traceback
        _internal_error(exc)


def _internal_error(exc: Exception) -> None:
    if os.environ.get("WPO_DEBUG"):
        traceback.print_exception(exc)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    hint = "(WPO_DEBUG=1 shows the traceback)"
    typer.echo(f"wpo: internal error: {type(exc).__name__}: {first_line} {hint}", err=True)
    raise typer.Exit(1) from None


def _stdout_for_results():
    """Inside this, what libraries print goes to stderr, so stdout carries only the result (`| jq` works):
    DeepSpeed, once imported (accelerate imports it when installed), logs to stdout."""
    return contextlib.redirect_stdout(sys.stderr)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of the table.")] = False,
) -> None:
    """Run the recipe's stages in order (x rounds), skipping those already done under the same config; a stage whose
    inputs or settings changed is redone, its earlier result moved aside.

    Example: wpo run recipes/quickstart.yaml train.beta=0.1 output_dir=runs/beta01
    """

    with _one_line_errors():
        from wpo.pipeline import run_pipeline

        loaded = load_recipe(recipe, overrides)
        with _stdout_for_results():
            summary = run_pipeline(loaded, force=force, wait=wait)
        if summary is None:  # a process of a launch other than the main one: the main one reports
            return
        if as_json:
            _print_json(summary)
        else:
            _print_summary(summary, Path(loaded.output_dir) / "summary.json")


def _print_summary(summary: dict[str, Any], path: Path) -> None:
    """The end-of-run table: each stage's wall time, then the headline figures."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"wpo run: {path}", show_header=True)
    table.add_column("stage / figure")
    table.add_column("value", justify="right")
    for label, entry in summary["stages"].items():
        table.add_row(label, "done before (skipped)" if entry["skipped"] else f"{entry['wall_seconds']:.0f} s")
    table.add_row("total", f"{summary['total_wall_seconds']:.0f} s", end_section=True)
    table.add_row("report", str(path.with_name("report.html")), end_section=True)
    from wpo.figures import paired_measures

    for measure in paired_measures(summary):
        low, high = measure.delta.ci95 or (float("nan"), float("nan"))
        table.add_row(
            f"{measure.name}: base → trained, delta (95% CI)",
            f"{measure.base.mean:.3f} → {measure.trained.mean:.3f}, "
            f"{measure.delta.mean:+.3f} [{low:+.3f}, {high:+.3f}]",
        )
    if "better" in summary:
        failed = [name for name, check in summary["verdict"].items() if not check["passed"]]
        table.add_row("better than the base", "yes" if summary["better"] else f"no ({', '.join(failed)})")
    if summary.get("contaminated_instructions"):
        table.add_row("eval instructions seen in training (!)", str(summary["contaminated_instructions"]))
    if summary.get("identical_to_base") is not None:
        table.add_row("held-out answers identical to the base's", str(summary["identical_to_base"]))
    if "win_rate" in summary:
        table.add_row("win rate vs baseline", f"{summary['win_rate']:.1f} ± {summary['standard_error']:.1f}")
        table.add_row("LC win rate", f"{summary['length_controlled_winrate']:.1f}")
    for export in summary.get("exports", []):
        table.add_row(
            export["file"],
            f"{export['size_bytes'] / 1e6:.0f} MB, ppl {export['perplexity']:.2f}, KL {export['kl_mean']:.4f}",
        )
    Console().print(table)


def _stage_command(name: str, summary: str, example: str) -> None:
    def command(
        recipe: RecipeArg,
        overrides: OverridesArg = None,
        force: ForceOption = False,
        wait: WaitOption = False,
        as_json: JsonOption = False,
    ) -> None:
        with _one_line_errors():
            from wpo.distributed import process_state
            from wpo.pipeline import run_stage

            with _stdout_for_results():
                headline = run_stage(load_recipe(recipe, overrides), name, force=force, wait=wait)
            if process_state().is_main_process:  # under a launcher, every process has it; the main one says it
                _print_json(headline) if as_json else _print_stage(name, headline)

    command.__doc__ = f"{summary}\n\nSkipped when done under the same config (--force redoes it).\n\nExample: {example}"
    app.command(name=name)(command)


def _print_stage(name: str, headline: dict[str, Any]) -> None:
    """A stage's result for a person: where its output is, how long it took, what it read, wrote and skipped."""
    from rich.console import Console
    from rich.table import Table

    from wpo.manifest import Counts

    table = Table(title=f"wpo {name}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    when = "done before under this config (skipped)" if headline.get("skipped") else f"{headline['wall_seconds']:.0f} s"
    table.add_row("time", when)
    if headline.get("output"):
        table.add_row("output", str(headline["output"]))
    for path in headline.get("files", []):
        table.add_row("file", path)
    for key, value in Counts.from_json(headline.get("counts"), name).to_json().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) or "none"
        table.add_row(key.replace("_", " "), _short(value))
    Console().print(table)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_stage_command(
    "sample", "Sample on-policy candidates and join off-policy answers.", "wpo sample recipe.yaml sample.n=4"
)
_stage_command(
    "score",
    "Score candidates with a reward model, a judge or a Python function.",
    "wpo score recipe.yaml score.function=wpo.tasks.reference:chrf",
)
_stage_command("pair", "Turn scored candidates into preference pairs.", "wpo pair recipe.yaml pair.min_margin=0.1")
_stage_command("train", "Train the policy with the WPO loss.", "wpo train recipe.yaml train.beta=0.05")
_stage_command(
    "export",
    "Export the trained model to GGUF with a model card.",
    "wpo export recipe.yaml export.quantizations=[Q4_K_M,Q8_0]",
)


@app.command(name="eval")
def evaluate(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML file.")] = None,
    overrides: OverridesArg = None,
    annotations: Annotated[Path | None, typer.Option(help="Recompute metrics from this annotations.json.")] = None,
    force: ForceOption = False,
    wait: WaitOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object.")] = False,
) -> None:
    """Judge model outputs against references; or recompute metrics with --annotations.

    Skipped when done under the same config (--force redoes it).

    Example: wpo eval recipe.yaml eval.max_new_tokens=256
    """

    with _one_line_errors():
        if annotations is not None:
            if recipe is not None:
                raise WpoError("give either a recipe or --annotations, not both")
            from wpo.evaluation.stage import metrics_from_file

            metrics = metrics_from_file(str(annotations))
        elif recipe is not None:
            from wpo.pipeline import run_stage

            with _stdout_for_results():
                headline = run_stage(load_recipe(recipe, overrides), "eval", force=force, wait=wait)
            metrics = headline.get("metrics") or json.loads(Path(headline["output"]).read_text(encoding="utf-8"))
        else:
            raise WpoError("wpo eval needs a recipe, or --annotations FILE")
        if as_json:
            finite = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
            typer.echo(json.dumps({k: v for k, v in finite.items() if k != "glm_weights"}))
        else:
            _print_metrics(metrics)


def _print_metrics(metrics: dict[str, Any]) -> None:
    lines = [
        f"{'LC win rate':<18} {metrics['length_controlled_winrate']:8.2f}",
        f"{'win rate':<18} {metrics['win_rate']:8.2f}  (standard error {metrics['standard_error']:.2f})",
        f"{'discrete win rate':<18} {metrics['discrete_win_rate']:8.2f}",
        f"{'wins/draws/total':<18} {metrics['n_wins']}/{metrics['n_draws']}/{metrics['n_total']}",
        f"{'avg length':<18} {metrics['avg_length']:8.0f}",
        f"LC formula: {metrics['lc_formula']}",
    ]
    typer.echo("\n".join(lines))


@app.command()
def sweep(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    grid: Annotated[list[str] | None, typer.Option(help="KEY=V1,V2: one axis of the grid (repeat for more).")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated: every variant runs with each.")] = "1",
    baseline: Annotated[list[str] | None, typer.Option(help="KEY=V: the variant others are compared with.")] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="KEY=V;KEY=V: one cell a grid cannot express (repeat; each sets the same keys)."),
    ] = None,
) -> None:
    """Run every variant of a grid x every seed under output_dir/sweep/, sharing upstream stages; write runs.csv,
    comparison.csv (paired by seed and prompt, with CIs) and comparison.png.

    Example: wpo sweep recipes/quickstart.yaml --grid train.weighting=wpo,none --seeds 1,2,3
    """

    with _one_line_errors():
        from wpo.sweeps import parse_grid, parse_variants, run_sweep

        malformed = [item for item in baseline or [] if "=" not in item]
        if malformed:
            raise WpoError(f"--baseline {malformed[0]!r} is not of the form KEY=V")
        chosen = dict(item.split("=", 1) for item in baseline or []) or None
        try:
            seed_list = [int(seed) for seed in seeds.split(",")]
        except ValueError:
            raise WpoError(f"--seeds {seeds!r} must be integers separated by commas") from None
        with _stdout_for_results():
            result = run_sweep(
                recipe, overrides or [], parse_grid(grid or []), seed_list, chosen, parse_variants(variant or [])
            )
        _print_json({key: result[key] for key in ("runs", "data_directories", "runs_csv", "comparison_csv")})


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="A run's output_dir, or a sweep's directory (output_dir/sweep).")],
    max_items: Annotated[int, typer.Option(help="Most pairs, and held-out prompts, inlined in each browser.")] = (
        MAX_ITEMS
    ),
) -> None:
    """Write DIRECTORY/report.html: one offline page with the pipeline, the pairs, the training curves and the base's
    and the trained model's answers side by side; for a sweep, the comparison linking to every run's page.

    Example: wpo report runs/quickstart
    """

    with _one_line_errors():
        from wpo.reporting import write_report

        written = write_report(directory, max_items)
        _print_json({"report": str(written[0]), "also_written": [str(path) for path in written[1:]]})


@app.command(name="config")
def show_config(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the validated recipe with every default filled in: exactly what would run. It fails where `wpo run`
    would: what the recipe's stages need (settings, functions, upstream outputs) is checked, and every input file is
    read as its stage reads it (exit 2). What this machine lacks to run it (a package, GPUs, a file) is said apart,
    a line each on stderr, with the recipe still printed (exit 3).

    Example: wpo config recipes/quickstart.yaml train.beta=0.1 --json
    """

    with _one_line_errors():
        from wpo.checks import check_stages

        loaded = load_recipe(recipe, overrides)
        try:
            check_stages(loaded, loaded.stages)
        except MachineLacks:
            _print_recipe(loaded.to_dict(), as_json)  # the recipe is right: only this machine cannot run it
            raise
        _print_recipe(loaded.to_dict(), as_json)


def _print_recipe(resolved: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(resolved)
    else:
        import yaml

        typer.echo(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), nl=False)


@app.command()
def keys(
    section: Annotated[
        str | None,
        typer.Argument(
            help="A section (model, sample, score, pair, train, eval, export) "
            "or a dotted key prefix, e.g. sample.offpolicy_models."
        ),
    ] = None,
    as_json: JsonOption = False,
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the docs' Markdown page (docs/recipe-keys.md).")
    ] = False,
) -> None:
    """Every recipe key with its type, default and what it does: a table on a terminal, tab-separated lines when
    piped.

    Example: wpo keys train
    """

    with _one_line_errors():
        from wpo.recipe_keys import markdown_page, plain_lines, recipe_keys

        rows = [
            row
            for row in recipe_keys()
            if section is None or row.key == section or row.key.startswith((f"{section}.", f"{section}[]."))
        ]
        if not rows:
            sections = sorted({row.key.split(".")[0] for row in recipe_keys()})
            raise WpoError(f"no recipe key {section!r}; sections and top-level keys: {', '.join(sections)}")
        if as_json:
            _print_json([vars(row) for row in rows])
        elif as_markdown:
            typer.echo(markdown_page(rows), nl=False)
        elif not sys.stdout.isatty():
            typer.echo(plain_lines(rows), nl=False)
        else:
            _print_keys_table(rows)


def _print_keys_table(rows) -> None:
    """The terminal's table; descriptions printed as written (no console markup or emoji codes read in them)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True)
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.key, row.type, row.default, row.description)
    Console(markup=False, emoji=False, highlight=False).print(table)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="HF model directory, .gguf file, or embedded:NAME.")],
    prompt: Annotated[str | None, typer.Option(help="Answer this one prompt and exit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 512,
) -> None:
    """Chat with a model in the terminal (tokens streamed; /reset, /exit).

    Example: wpo chat runs/quickstart/train/final --prompt "Describe owls briefly."
    """

    with _one_line_errors():
        from wpo.chat import run_chat

        run_chat(model, prompt, max_new_tokens)


@app.command(name="model-dir")
def model_dir(
    model: Annotated[str, typer.Argument(help="embedded:NAME (e.g. embedded:smollm2-135m-instruct) or a .gguf file.")],
    directory: Annotated[Path, typer.Argument(help="Where to write the HF directory (new, or empty).")],
) -> None:
    """Write a model as an HF directory (safetensors weights, tokenizer, chat template) that a recipe's
    model.name_or_path, transformers or any HF tool can read: to edit its chat template, or train it elsewhere.

    Example: wpo model-dir embedded:smollm2-135m-instruct ./smollm2
    """

    with _one_line_errors():
        from wpo.models import write_model_dir

        written = write_model_dir(model, directory)
        typer.echo(f"{written}: {model} as an HF directory ({', '.join(sorted(p.name for p in written.iterdir()))})")
        typer.echo(f"in a recipe: model.name_or_path: {written}")


def _show_version(value: bool) -> None:
    if value:
        from wpo import __version__

        typer.echo(f"wpo {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print wpo's version and exit.")
    ] = False,
) -> None:
    """Weighted Preference Optimization: sample → score → pair → train → eval → export.

    Start with: wpo run recipes/quickstart.yaml; wpo keys lists every recipe key.
    """


def _stop_on_sigterm(_number: int, _frame) -> None:
    """Outside training (which checkpoints first), SIGTERM stops the command as Ctrl-C does: writes in flight
    finish or are cleaned up, what finished is saved, and the rerun resumes."""
    raise Stopped("SIGTERM received; what finished is saved, and the rerun resumes", 143)


def _end_process_group() -> None:
    """At exit, a launched command's process group (`wpo.distributed.end_process_group`); a command that never
    imported torch.distributed (`wpo config`, `wpo --version`) does not import it now."""
    if "torch.distributed" in sys.modules:
        from wpo.distributed import end_process_group

        end_process_group()


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    atexit.register(_end_process_group)
    logging.basicConfig(
        level=os.environ.get("WPO_LOG_LEVEL", "INFO"),
        format="%(asctime)s wpo %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger(__name__).debug(allocator.keep_freed_memory())
    app()


if __name__ == "__main__":
    main()
