"""Run a chapter the way a learner opens it: FCOS_OFFLINE unset, no network, no GPU.

The notebook run of `make test` (nbval) sets FCOS_OFFLINE=1 (conftest.py). A learner in
JupyterLab or on Colab has no such variable, so the tests in test_learner_lane_*.py execute
chapters 00 and 09 without it, in the `course` run mode, with:

- no network: every proxy variable points at a closed local port, so any download fails fast
  (and the checks below find nothing downloaded);
- no GPU: CUDA_VISIBLE_DEVICES is empty;
- a fresh data folder and torch hub folder (FCOS_DATA_DIR, TORCH_HOME), so the course dataset
  is generated as on a new machine and any download would be seen;
- a temporary copy of the notebook as the working folder, so its run folders never meet the
  nbval run's.

Each notebook must run to the end without an error; the callers then check what it printed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def learner_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FCOS_OFFLINE", "FCOS_MODE")}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env[name] = CLOSED_PORT
    env.update(NO_PROXY="", no_proxy="", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0",
               FCOS_DATA_DIR=str(home / "data"), TORCH_HOME=str(home / "torch"))
    return env


def run_as_learner(stem: str, home: Path, timeout: int = 1500) -> tuple[str, Path]:
    """Execute notebooks/<stem>.ipynb in a copy under `home`; returns (all text outputs, home).

    `timeout` (seconds) limits each cell and the whole run."""
    work = home / "notebooks"
    work.mkdir(parents=True)
    source = ROOT / "notebooks" / f"{stem}.ipynb"
    shutil.copy(source, work / source.name)
    done = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
         f"--ExecutePreprocessor.timeout={timeout}", "--ExecutePreprocessor.kernel_name=python3",
         str(work / source.name)],
        cwd=work, env=learner_env(home), capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"{stem} failed in the course mode:\n{done.stderr[-4000:]}"
    notebook = nbformat.read(work / source.name, as_version=4)
    text = "\n".join(
        output.get("text", "") if output.get("output_type") == "stream" else output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    return text, home


def downloaded_files(home: Path) -> list[Path]:
    """Anything that looks downloaded: torch hub weights, or a VOC folder or archive."""
    found = list((home / "torch").rglob("*")) if (home / "torch").exists() else []
    data = home / "data"
    if data.exists():
        found += [p for p in data.rglob("*") if "VOCdevkit" in p.parts or p.suffix == ".tar"]
    return found
