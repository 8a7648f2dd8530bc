"""The package's shape at two git revisions, side by side: the largest modules, the longest functions, who imports
the runner, import cycles between modules, formatter switches, and markup written inside Python strings.

    python benchmarks/code_shape.py 55fb83d HEAD

Reads the revisions with `git show` (the working tree is not touched). Lines are physical lines of the file.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from import_graph import imported, imports_of, module_level, module_name, package_graph, piece  # noqa: E402

PACKAGE = "src/wpo/"
RUNNER = "wpo.pipeline"
HTML_TAGS = (
    "html head body meta link style script title header footer nav section article figure figcaption div span p a b "
    "q br pre code ul ol li table thead tbody tr th td details summary select option label input button img noscript "
    "h1 h2 h3 h4 h5 h6"
).split()
MARKUP_IN_STRING = re.compile(rf"</?(?:{'|'.join(HTML_TAGS)})[ >]")  # a tag, not a placeholder like <name>


@dataclass
class Shape:
    modules: dict[str, int] = field(default_factory=dict)  # module → lines
    functions: list[tuple[int, str]] = field(default_factory=list)  # (lines, module:function)
    imports: dict[str, set[str]] = field(default_factory=dict)  # module → wpo modules it imports, lazily or not
    eager_imports: dict[str, set[str]] = field(default_factory=dict)  # only those run when the module is imported
    recipe_takers: list[str] = field(default_factory=list)  # module:function with a parameter annotated Recipe
    section_copies: list[str] = field(default_factory=list)  # `.model_copy(update=...)` calls outside the config
    fmt_skips: int = 0
    markup_strings: dict[str, int] = field(default_factory=dict)  # module → string constants holding HTML tags
    templates: int = 0


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def is_markup_docstring(node: ast.AST) -> bool:
    """A docstring that mentions a tag (`<script>`) is prose, not markup being built."""
    body = getattr(node, "body", None)
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or not body:
        return False
    first = body[0]
    return (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and bool(MARKUP_IN_STRING.search(first.value.value))
    )


def takes_recipe(argument: ast.arg) -> bool:
    """A parameter annotated as the whole recipe (`Recipe`, `Recipe | None`, `StageRun | Recipe`)."""
    return argument.annotation is not None and "Recipe" in re.findall(r"\w+", ast.unparse(argument.annotation))


def shape_at(revision: str) -> Shape:
    paths = [p for p in git("ls-tree", "-r", "--name-only", revision, PACKAGE).split() if p.startswith(PACKAGE)]
    sources = {p: git("show", f"{revision}:{p}") for p in paths if p.endswith(".py")}
    known = {module_name(p) for p in sources}
    shape = Shape(templates=sum(p.endswith(".j2") for p in paths))
    for path, text in sources.items():
        module = module_name(path)
        tree = ast.parse(text)
        shape.modules[module] = len(text.splitlines())
        shape.fmt_skips += text.count("fmt: skip")
        shape.eager_imports[module] = imported(module_level(tree), module, known)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                shape.functions.append((node.end_lineno - node.lineno + 1, f"{module}:{node.name}"))
                if any(takes_recipe(argument) for argument in node.args.args + node.args.kwonlyargs):
                    shape.recipe_takers.append(f"{module}:{node.name}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "model_copy"
                and any(keyword.arg == "update" for keyword in node.keywords)
                and not module.startswith("wpo.config")
            ):
                shape.section_copies.append(f"{module}:{node.lineno}")
        markup = sum(
            1
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and MARKUP_IN_STRING.search(node.value)
        )
        markup -= sum(1 for node in ast.walk(tree) if is_markup_docstring(node))
        if markup:
            shape.markup_strings[module] = markup
    shape.functions.sort(reverse=True)
    shape.imports = imports_of(sources)
    return shape


def cycles(imports: dict[str, set[str]]) -> list[str]:
    """Each import cycle found, one at a time: report it, cut its first edge, look again."""
    graph = {module: set(targets) for module, targets in imports.items()}
    found = []
    while True:
        try:
            TopologicalSorter(graph).prepare()
            return found
        except CycleError as error:
            loop = error.args[1]
            found.append(" → ".join(reversed(loop)))
            graph[loop[1]].discard(loop[0])


STAGE_PACKAGES = (
    "sampling",
    "scoring",
    "pairing",
    "training",
    "train",
    "evaluation",
    "eval",
    "exporting",
    "export",
    "reporting",
    "report",
)


def stage_dependencies(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """A stage package → the other first-level pieces of wpo its modules import."""
    found: dict[str, set[str]] = {}
    for module, targets in imports.items():
        if piece(module) in STAGE_PACKAGES:
            found.setdefault(piece(module), set()).update(piece(t) for t in targets if piece(t) != piece(module))
    return dict(sorted(found.items()))


def side_by_side(title: str, left: list[str], right: list[str], heads: tuple[str, str]) -> None:
    print(f"\n## {title}\n")
    width = max([len(heads[0]), *map(len, left)]) + 2
    print(heads[0].ljust(width) + heads[1])
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else ""
        b = right[index] if index < len(right) else ""
        print(a.ljust(width) + b)


def modules_of(functions: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in functions:
        counts[name.split(":")[0]] = counts.get(name.split(":")[0], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    heads = (args.before, args.after)
    shapes = [shape_at(revision) for revision in heads]

    print("| | " + " | ".join(heads) + " |\n|---|---:|---:|")
    rows = {
        "modules": [len(s.modules) for s in shapes],
        "lines in src/wpo": [sum(s.modules.values()) for s in shapes],
        "modules over 500 lines": [sum(n > 500 for n in s.modules.values()) for s in shapes],
        "functions over 60 lines": [sum(n > 60 for n, _ in s.functions) for s in shapes],
        "functions taking the whole Recipe": [len(s.recipe_takers) for s in shapes],
        "`model_copy(update=...)` outside the config": [len(s.section_copies) for s in shapes],
        "`# fmt: skip`": [s.fmt_skips for s in shapes],
        "string constants holding HTML tags": [sum(s.markup_strings.values()) for s in shapes],
        "templates (.j2)": [s.templates for s in shapes],
        "modules importing the runner": [
            sum(RUNNER in targets for m, targets in s.imports.items() if not m.startswith("wpo.cli")) for s in shapes
        ],
        "import cycles when importing (module level)": [len(cycles(s.eager_imports)) for s in shapes],
        "cycles between packages (lazy imports too)": [len(cycles(package_graph(s.imports))) for s in shapes],
    }
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(str(v) for v in values) + " |")

    side_by_side(
        "largest modules (lines)",
        *([f"{n:5} {m}" for m, n in sorted(s.modules.items(), key=lambda item: -item[1])[: args.top]] for s in shapes),
        heads,
    )
    side_by_side(
        "longest functions (lines)", *([f"{n:5} {name}" for n, name in s.functions[: args.top]] for s in shapes), heads
    )
    side_by_side(
        f"who imports the runner ({RUNNER})",
        *(sorted(m for m, targets in s.imports.items() if RUNNER in targets) for s in shapes),
        heads,
    )
    side_by_side(
        "which packages each stage package imports (lazily or not)",
        *(
            [f"{pkg} → {', '.join(sorted(deps))}" for pkg, deps in stage_dependencies(s.imports).items()]
            for s in shapes
        ),
        heads,
    )
    side_by_side("cycles between packages", *(cycles(package_graph(s.imports)) for s in shapes), heads)
    side_by_side("import cycles at module level", *(cycles(s.eager_imports) for s in shapes), heads)
    side_by_side("model_copy(update=...) outside the config", *(s.section_copies for s in shapes), heads)
    for s, head in zip(shapes, heads, strict=True):
        print(f"\n{head}: string constants holding HTML tags, by module: {s.markup_strings}")
        print(f"{head}: functions taking the whole Recipe, by module: {modules_of(s.recipe_takers)}")


if __name__ == "__main__":
    main()
