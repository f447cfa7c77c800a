"""Write the exercise notebooks: exercises/NN_name.ipynb from notebooks/NN_name.py.

One source: inside a chapter's `#| export` cells, the code a learner writes is marked with
nbgrader's markers, indented as the code, right after a function's signature and docstring (and
the argument checks, which are given):

        ### BEGIN SOLUTION
        ### HINT: one line that says how to start
        ... the solution ...
        ### END SOLUTION

The exporter (tools/export.py) drops the marker lines, so fcos_lib/ is the full solution. Here
each marked block becomes a stub,

        # Hint: one line that says how to start
        # YOUR CODE HERE
        raise NotImplementedError("<function>: write this function (see the hint above)")

and the exercise notebook is the chapter with those stubs, no outputs, a note on how to work
it, and its Colab badge pointing at exercises/ (tools/colab.py). An exercise is a function with
a marked block; its name is the function's (`FPN.forward` for a method). Generated files are
committed and never edited by hand: tests/test_exercises.py regenerates them in memory and fails
when they drift.

    python tools/exercises.py           # (re)write exercises/ (make exercises)
    python tools/exercises.py --check   # exit 1 if exercises/ differs from a fresh generation
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import jupytext
import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colab  # noqa: E402  (tools/colab.py: the one definition of badges and install cells)

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
STUB_MESSAGE = "{name}: write this function (see the hint above)"


class ExerciseError(ValueError):
    pass


def _enclosing_function(tree: ast.AST, lineno: int) -> str | None:
    """Qualified name ("FPN.forward") of the innermost function whose body holds line lineno."""
    best, best_start = None, -1

    def visit(node, prefix):
        nonlocal best, best_start
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if isinstance(child, ast.ClassDef):
                    visit(child, name + ".")
                    continue
                if child.lineno < lineno <= child.end_lineno and child.lineno > best_start:
                    best, best_start = name, child.lineno
                visit(child, name + ".")

    visit(tree, "")
    return best


def marked_blocks(source: str, where: str = "cell") -> list[dict]:
    """The marked blocks of one cell: [{name, hint, indent, begin, end}], begin/end 0-based line indices.

    Raises ExerciseError for a BEGIN without END (or the reverse), a missing HINT line right after
    BEGIN, a block outside a function, or two blocks in one function.
    """
    lines = source.split("\n")
    tree = None
    blocks, begin = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise ExerciseError(f"{where}, line {i + 1}: {BEGIN} inside another block")
            begin = i
        elif text == END:
            if begin is None:
                raise ExerciseError(f"{where}, line {i + 1}: {END} without {BEGIN}")
            hint = lines[begin + 1].strip() if begin + 1 < i else ""
            if not hint.startswith(HINT) or not hint[len(HINT):].strip():
                raise ExerciseError(f"{where}, line {begin + 2}: write `{HINT} <one line>` right after {BEGIN}")
            tree = tree or ast.parse(source)
            name = _enclosing_function(tree, begin + 1)
            if name is None:
                raise ExerciseError(f"{where}, line {begin + 1}: a marked block must be inside a function's body")
            if any(block["name"] == name for block in blocks):
                raise ExerciseError(f"{where}: {name} has two marked blocks; mark one block per function")
            indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
            blocks.append({"name": name, "hint": hint[len(HINT):].strip(), "indent": indent, "begin": begin, "end": i})
            begin = None
    if begin is not None:
        raise ExerciseError(f"{where}, line {begin + 1}: {BEGIN} without {END}")
    return blocks


def stub_source(source: str, where: str = "cell") -> str:
    """The cell's source with every marked block replaced by its stub."""
    lines = source.split("\n")
    for block in reversed(marked_blocks(source, where)):
        pad = block["indent"]
        message = STUB_MESSAGE.format(name=block["name"])
        lines[block["begin"]: block["end"] + 1] = [
            f"{pad}# Hint: {block['hint']}",
            f"{pad}# YOUR CODE HERE",
            f'{pad}raise NotImplementedError("{message}")',
        ]
    return "\n".join(lines)


def exercise_names(script: Path) -> list[str]:
    """The exercises of a chapter script, in order: the functions with a marked block."""
    notebook = jupytext.read(script)
    return [block["name"] for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            for block in marked_blocks(cell.source, f"{script.name} cell {i}")]


def intro(script: Path, names: list[str]) -> str:
    """The note under the title of an exercise notebook."""
    chapter = script.stem
    listing = ", ".join(f"`{name}`" for name in names)
    return (
        f"**The exercise version of this chapter.** Exercises: {listing}. In each, the body of the\n"
        "function is a stub: a one-line hint, `# YOUR CODE HERE` and a `raise NotImplementedError`; write\n"
        "the code in its place. Run the notebook from the top: the check cell after each exercise tests\n"
        "*your* definition, and when it fails its last line names the exercise and says what differs.\n"
        "Then grade your code with the chapter's unit tests, in a clone of the course repository:\n"
        f"`python tools/grade.py exercises/{chapter}.ipynb` (or `make grade NB=exercises/{chapter}.ipynb`).\n"
        "Later chapters import this chapter's solution from `fcos_lib`, so each chapter stands alone.\n"
        f"Stuck? The chapter itself is the solution: [notebooks/{chapter}.ipynb](../notebooks/{chapter}.ipynb).\n"
        "(Generated by `make exercises` from the chapter: edit the chapter, not this file.)"
    )


def build(script: Path, root: Path = ROOT) -> str | None:
    """The exercise notebook of one chapter script as .ipynb text, or None without exercises."""
    notebook = jupytext.read(script)
    names = exercise_names(script)
    if not names:
        return None
    cells = []
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(stub_source(cell.source, f"{script.name} cell {i}"))
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        new.metadata = dict(cell.metadata)
        cells.append(new)
    title = next(i for i, cell in enumerate(cells) if cell.cell_type == "markdown")
    cells.insert(title + 1, nbformat.v4.new_markdown_cell(intro(script, names)))
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"  # stable ids: the file changes only when the chapter does
    kernelspec = notebook.metadata.get("kernelspec", {"display_name": "Python 3", "language": "python",
                                                      "name": "python3"})
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": kernelspec, "language_info": {"name": "python"}})
    repository, ref = colab.course_source(root)
    nb = colab.with_badge_and_install_cell(nb, repository, ref, f"{script.stem}.ipynb", folder="exercises")
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def build_all(root: Path = ROOT) -> dict[Path, str]:
    """{exercises/NN_name.ipynb: text} for every chapter with exercises."""
    out = {}
    for script in sorted((root / "notebooks").glob("[0-9][0-9]_*.py")):
        text = build(script, root)
        if text is not None:
            out[root / "exercises" / f"{script.stem}.ipynb"] = text
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if exercises/ differs from a fresh generation")
    args = parser.parse_args(argv)
    try:
        fresh = build_all()
    except ExerciseError as err:
        print(f"exercises: {err}", file=sys.stderr)
        return 2
    stale = [p for p in sorted((ROOT / "exercises").glob("*.ipynb")) if p not in fresh]
    if args.check:
        drift = [p for p, text in fresh.items() if not p.exists() or p.read_text() != text]
        for path in drift:
            print(f"out of date: {path.relative_to(ROOT)} (run `make exercises`)", file=sys.stderr)
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} has no chapter with exercises", file=sys.stderr)
        return 1 if drift or stale else 0
    (ROOT / "exercises").mkdir(exist_ok=True)
    for path, text in fresh.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        path.unlink()
        print(f"removed stale {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
