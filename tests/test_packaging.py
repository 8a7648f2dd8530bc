"""The package as `pip install .` ships it (a wheel, not this editable checkout): every module, and every file the
code reads besides them — the pages' templates, style and script, the embedded prompts — must be inside, or a user's
install fails where the tests pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(tmp_path):
    source = tmp_path / "source"  # built from a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("wpo-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())

    package = ROOT / "src" / "wpo"
    files = {
        "wpo/" + path.relative_to(package).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    templates = {name for name in files if name.endswith(".j2")}
    assert {"wpo/pages/templates/page.html.j2", "wpo/reporting/templates/run/glance.html.j2"} <= templates
    assert {"wpo/evaluation/templates/eval_page.html.j2", "wpo/exporting/card.md.j2"} <= templates
    assert files - shipped == set()
