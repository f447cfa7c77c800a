"""The notebooks are the single source of truth: these tests fail when anything drifts.

- every notebooks/NN_*.ipynb has its py:percent twin and the two hold the same cells;
- fcos_lib/ equals a fresh export of the notebooks' `#| export` cells;
- every Colab badge and install cell follows [tool.fcos-course] in pyproject.toml (tools/colab.py),
  in the chapters and in the exercise notebooks (exercises/, tests/test_exercises.py).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
EXERCISES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_has_its_script_and_back():
    assert NOTEBOOKS, "no notebooks found under notebooks/"
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SCRIPTS]


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(ipynb):
    # Convert the .ipynb with the repository's jupytext.toml and compare with the committed .py.
    done = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "py:percent", "--output", "-", str(ipynb)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    script = ipynb.with_suffix(".py").read_text()
    assert done.stdout == script, (
        f"{ipynb.name} and {ipynb.with_suffix('.py').name} differ: run "
        f"`jupytext --sync {ipynb.relative_to(ROOT)}` (or `make regen`)"
    )


def test_package_matches_fresh_export():
    done = subprocess.run(
        [sys.executable, "tools/export.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + "\nrun `make export` and commit fcos_lib/"


def test_colab_badges_and_install_cells_follow_pyproject():
    # [tool.fcos-course] in pyproject.toml is the one definition; tools/colab.py writes the rest.
    done = subprocess.run([sys.executable, "tools/colab.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_fork_changes_one_definition_and_make_colab_rewrites_everything(tmp_path):
    for name in ("README.md", "pyproject.toml", "jupytext.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "exercises", tmp_path / "exercises", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text()
                         .replace('repository = "fcos-course/fcos-from-scratch"', 'repository = "a-learner/fcos-fork"')
                         .replace('ref = "v', 'ref = "fork-v'))
    # An edit made in a .py and not yet synced to its .ipynb must survive the rewrite.
    script = tmp_path / "notebooks" / "03_locations.py"
    script.write_text(script.read_text().replace("# # 03 ·", "# # 03 · (edited) ·", 1))
    check = [sys.executable, str(ROOT / "tools" / "colab.py"), "--root", str(tmp_path), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 1  # the copy disagrees with its new definition
    subprocess.run(check[:-1], check=True, capture_output=True)
    assert subprocess.run(check, capture_output=True, text=True).stdout == ""
    texts = [(tmp_path / "README.md").read_text()] + [p.read_text() for p in (tmp_path / "notebooks").glob("[0-9]*_*.*")]
    texts += [p.read_text() for p in (tmp_path / "exercises").glob("[0-9]*_*.ipynb")]
    assert not any("fcos-course/fcos-from-scratch" in text for text in texts)
    assert "(edited)" in script.read_text() and "(edited)" in script.with_suffix(".ipynb").read_text()
    # Install cells: each chapter's .ipynb and .py, each exercise notebook. Badges: those three
    # files' titles where they exist, and the README's tables (chapters and exercises).
    assert sum(text.count("github.com/a-learner/fcos-fork@fork-v") for text in texts) == 2 * len(NOTEBOOKS) + len(EXERCISES)
    assert sum(text.count("github/a-learner/fcos-fork/blob/fork-v") for text in texts) == 3 * len(NOTEBOOKS) + 2 * len(EXERCISES)


def test_a_failed_colab_install_says_what_to_do(monkeypatch, capsys):
    # The generated install cell, run as on Colab, with a pip that fails the way it does offline.
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import colab
    finally:
        sys.path.pop(0)
    cell = colab.install_cell(*colab.course_source())
    failing_pip = '[sys.executable, "-c", "import sys; sys.stderr.write(\'ERROR: network is unreachable\\\\n\'); sys.exit(1)"]'
    cell = cell.replace('[sys.executable, "-m", "pip", "install", "-q", PACKAGE]', failing_pip)
    assert failing_pip in cell, "the install cell no longer runs pip the way this test expects"
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    with pytest.raises(SystemExit) as stop:
        exec(cell, {})
    assert "ERROR: network is unreachable" in capsys.readouterr().out  # pip's own words are shown
    message = str(stop.value)
    assert message.startswith("Could not install fcos-lib @ git+https://github.com/") and "Fix:" in message
