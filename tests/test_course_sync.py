"""The notebooks are the single source of truth: these tests fail when anything drifts.

- every notebooks/NN_*.ipynb has its py:percent twin and the two hold the same cells;
- fcos_lib/ equals a fresh export of the notebooks' `#| export` cells;
- every notebook installs the same git ref of the package on Colab.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SCRIPTS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


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


def test_notebooks_install_the_same_package_ref_on_colab():
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for script in SCRIPTS:
        refs = set(re.findall(r"fcos-from-scratch(?:\.git)?@([\w.\-]+)", script.read_text()))
        assert refs == {f"v{version}"}, f"{script.name} installs {refs or 'nothing'} on Colab, not v{version}"
