"""The docs site: the key reference is what `wpo keys --markdown` writes, `wpo keys` prints descriptions as written
and fits a pipe, and `mkdocs build --strict` passes offline (a broken link or anchor fails it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_ok, cli

ROOT = Path(__file__).resolve().parents[1]
KEY_PAGE = ROOT / "docs" / "recipe-keys.md"


def test_the_key_reference_page_is_what_wpo_keys_writes():
    written = assert_ok(cli("keys", "--markdown")).stdout
    assert KEY_PAGE.read_text(encoding="utf-8") == written, "regenerate: wpo keys --markdown > docs/recipe-keys.md"


def test_the_key_reference_keeps_every_key_and_its_brackets():
    from wpo.recipe_keys import recipe_keys

    page = KEY_PAGE.read_text(encoding="utf-8")
    assert all(f"| `{row.key}` |" in page for row in recipe_keys() if row.default != "(section)")
    assert "offpolicy:&lt;field&gt;, e.g. \\[reference\\]" in page  # shown literally, not read as a link or a tag
    assert "| `train.loss` | <code>sigmoid \\| robust \\| ipo \\| hinge \\| length\\_normalized</code> |" in page


def test_keys_piped_are_one_plain_line_each_with_the_text_as_written():
    lines = assert_ok(cli("keys")).stdout.splitlines()  # the test runner's stdout is not a terminal
    assert lines[0] == "key\ttype\tdefault\tdescription"
    by_key = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert all(len(fields) == 4 for fields in by_key.values())
    assert by_key["sample.offpolicy_fields"][3].endswith("as offpolicy:<field>, e.g. [reference].")
    assert "pip install 'wpo[lowbit]'" in by_key["train.optimizer"][3]
    assert max(len(line) for line in lines) > 120  # a description is never wrapped


def test_keys_on_a_terminal_print_descriptions_as_written(monkeypatch, capsys):
    from wpo.cli import _print_keys_table
    from wpo.recipe_keys import recipe_keys

    monkeypatch.setenv("COLUMNS", "400")
    _print_keys_table([row for row in recipe_keys() if row.key in ("sample.offpolicy_fields", "train.optimizer")])
    table = capsys.readouterr().out
    assert "e.g. [reference]." in table and "pip install 'wpo[lowbit]'" in table


def example_blocks(path: Path, title: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(?:yaml|python|bash)\n.*?```", text[start : end if end > 0 else None], flags=re.DOTALL)


def test_the_docs_example_of_your_own_model_is_the_one_the_readme_runs():
    readme = example_blocks(ROOT / "README.md", "Your own model, prompts and reward")
    assert len(readme) == 3  # tests/test_readme.py runs these three as written
    assert example_blocks(ROOT / "docs" / "your-own.md", "In one recipe") == readme


def test_the_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    local = [link for link in links if not link.startswith("http")]
    assert len(local) > 10 and [link for link in local if not (ROOT / link).is_file()] == []


@pytest.mark.slow  # builds the whole site in a process: every page, the API from the docstrings, the search index
def test_the_docs_site_builds_strictly_and_offline(tmp_path):
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    pages = {path.name: path.read_text(encoding="utf-8") for path in site.glob("*.html")}
    assert {"index.html", "recipe-keys.html", "commands.html", "python-api.html", "design.html"} <= set(pages)
    remote = re.compile(r"<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//")
    assert [name for name, html in pages.items() if remote.search(html)] == []  # no web fonts, scripts or styles
    assert "wpo.load_recipe" in pages["python-api.html"] and "preference_loss" in pages["python-api.html"]
