"""Write every Colab badge and install cell from the one definition in pyproject.toml.

The repository and git ref that Colab opens and installs are defined once, in pyproject.toml:

    [tool.fcos-course]
    repository = "fcos-course/fcos-from-scratch"
    ref = "v0.1.0"

A fork changes those two lines and runs this script (`make colab`). It rewrites

- the badge under each notebook's title, and the chapter table's badges in README.md;
- the first code cell of each notebook, which installs fcos_lib on Colab (in both the .ipynb
  and its py:percent twin; stored outputs are kept);
- the same badge (pointing at exercises/) and install cell in each exercise notebook
  (exercises/*.ipynb, written by tools/exercises.py), and their badges in README.md.

    python tools/colab.py            # rewrite
    python tools/colab.py --check    # exit 1 and list what disagrees (tests/test_course_sync.py)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_FIRST_LINE = "# On Colab, install the course library at the version this notebook was written for."


def course_source(root: Path = ROOT) -> tuple[str, str]:
    """(repository "owner/name", git ref) from [tool.fcos-course] in pyproject.toml."""
    text = (root / "pyproject.toml").read_text()
    section = re.search(r"^\[tool\.fcos-course\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if section is None:
        raise SystemExit("pyproject.toml has no [tool.fcos-course] section with repository and ref")
    values = dict(re.findall(r'^(repository|ref)\s*=\s*"([^"]+)"', section.group(1), re.M))
    if set(values) != {"repository", "ref"} or not re.fullmatch(r"[\w.\-]+/[\w.\-]+", values["repository"]):
        raise SystemExit('[tool.fcos-course] needs repository = "owner/name" and ref = "a tag or branch"')
    return values["repository"], values["ref"]


def colab_url(repository: str, ref: str, notebook: str, folder: str = "notebooks") -> str:
    return f"https://colab.research.google.com/github/{repository}/blob/{ref}/{folder}/{notebook}"


def badge(repository: str, ref: str, notebook: str, folder: str = "notebooks") -> str:
    return f"[![Open In Colab]({BADGE_SVG})]({colab_url(repository, ref, notebook, folder)})"


def install_cell(repository: str, ref: str) -> str:
    return f'''{INSTALL_FIRST_LINE}
# Written by `make colab` from [tool.fcos-course] in pyproject.toml: edit there, not here.
import subprocess, sys
if "google.colab" in sys.modules:
    PACKAGE = "fcos-lib @ git+https://github.com/{repository}@{ref}"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:])
        raise SystemExit(
            f"Could not install {{PACKAGE}} (pip's last lines are above). Fix: make sure the runtime has "
            "internet and the repository and tag exist, then Runtime > Restart session and run this cell "
            "again. Without fcos_lib the chapter stops at its first import.")'''


BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*\)")


def _with_badge(title_cell: str, expected: str) -> str:
    """The title cell's text with exactly one badge, in a paragraph of its own under the title."""
    text = "\n".join(line for line in title_cell.split("\n") if not BADGE_RE.fullmatch(line.strip()))
    while "\n\n\n" in text:  # the blank lines around a removed badge
        text = text.replace("\n\n\n", "\n\n")
    head, _, rest = text.partition("\n")
    return f"{head}\n\n{expected}\n{rest}" if rest else f"{head}\n\n{expected}"


def with_badge_and_install_cell(nb: nbformat.NotebookNode, repository: str, ref: str, name: str,
                                folder: str = "notebooks") -> nbformat.NotebookNode:
    """nb (changed in place) with its title badge and install cell written from the definition."""
    title = next(c for c in nb.cells if c.cell_type == "markdown")
    title.source = _with_badge(title.source, badge(repository, ref, name, folder))
    code = next(c for c in nb.cells if c.cell_type == "code")
    if not code.source.startswith(INSTALL_FIRST_LINE):
        raise SystemExit(f"{folder}/{name}: the first code cell must be the Colab install cell")
    code.source = install_cell(repository, ref)
    return nb


def rewrite_notebook(ipynb: Path, repository: str, ref: str, folder: str = "notebooks") -> nbformat.NotebookNode:
    """The notebook with its title badge and install cell written from the definition."""
    return with_badge_and_install_cell(nbformat.read(ipynb, as_version=4), repository, ref, ipynb.name, folder)


def rewrite_readme(text: str, repository: str, ref: str) -> str:
    def one(match: re.Match) -> str:
        notebook = re.search(r"/(notebooks|exercises)/([^/)]+\.ipynb)\)$", match.group(0))
        return badge(repository, ref, notebook.group(2), notebook.group(1)) if notebook else match.group(0)

    return BADGE_RE.sub(one, text)


def problems(root: Path = ROOT) -> list[str]:
    """What disagrees with the definition: one line per file (empty when everything agrees)."""
    repository, ref = course_source(root)
    found = []
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for ipynb in notebooks:
        if nbformat.read(ipynb, as_version=4) != rewrite_notebook(ipynb, repository, ref):
            found.append(f"{ipynb.relative_to(root)}: badge or install cell differs from [tool.fcos-course]")
        script = ipynb.with_suffix(".py").read_text()
        if install_cell(repository, ref) not in script or badge(repository, ref, ipynb.name) not in script:
            found.append(f"{ipynb.with_suffix('.py').relative_to(root)}: badge or install cell differs from [tool.fcos-course]")
    exercises = sorted((root / "exercises").glob("[0-9][0-9]_*.ipynb"))
    for ipynb in exercises:
        if nbformat.read(ipynb, as_version=4) != rewrite_notebook(ipynb, repository, ref, "exercises"):
            found.append(f"{ipynb.relative_to(root)}: badge or install cell differs from [tool.fcos-course]")
    readme = (root / "README.md").read_text()
    missing = [nb.name for nb in notebooks if badge(repository, ref, nb.name) not in readme]
    missing += [f"exercises/{nb.name}" for nb in exercises if badge(repository, ref, nb.name, "exercises") not in readme]
    if rewrite_readme(readme, repository, ref) != readme or missing:
        found.append(f"README.md: Colab badges differ from [tool.fcos-course] (or are missing for {missing})")
    return found


def rewrite(root: Path = ROOT) -> list[Path]:
    """Rewrite every badge and install cell; returns the files that changed."""
    import subprocess

    repository, ref = course_source(root)
    changed = []
    for ipynb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        # First bring the pair up to date (jupytext takes the newer file): an edit made in the .py
        # and not yet synced must not be overwritten from an older .ipynb.
        subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(ipynb.with_suffix(".py"))],
                       cwd=root, check=True, capture_output=True)
        nb = rewrite_notebook(ipynb, repository, ref)
        if nb != nbformat.read(ipynb, as_version=4):
            nbformat.write(nb, ipynb)
            # The py:percent twin follows the notebook (jupytext keeps it cell for cell).
            subprocess.run([sys.executable, "-m", "jupytext", "--to", "py:percent", "--output",
                            str(ipynb.with_suffix(".py")), str(ipynb)], cwd=root, check=True, capture_output=True)
            changed.append(ipynb)
    for ipynb in sorted((root / "exercises").glob("[0-9][0-9]_*.ipynb")):
        nb = rewrite_notebook(ipynb, repository, ref, "exercises")  # exercises have no .py twin
        if nb != nbformat.read(ipynb, as_version=4):
            nbformat.write(nb, ipynb)
            changed.append(ipynb)
    readme = root / "README.md"
    text = readme.read_text()
    new = rewrite_readme(text, repository, ref)
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when anything disagrees")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        found = problems(args.root)
        for line in found:
            print(line)
        if found:
            print("Fix: edit [tool.fcos-course] in pyproject.toml if needed, then run `make colab`.")
        return 1 if found else 0
    for path in rewrite(args.root):
        print("wrote", path.relative_to(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
