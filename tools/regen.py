"""Regenerate every notebook's stored outputs, the one way they are ever produced.

For each notebook: sync the .ipynb with its py:percent script (jupytext), execute it in place
from `notebooks/` in the offline mode (FCOS_OFFLINE=1: CPU, no downloads, course dataset),
then sync again so that the pair stays identical. Stored outputs are never edited by hand.

    python tools/regen.py                       # every notebook
    python tools/regen.py notebooks/04_*.py     # some notebooks (.py or .ipynb paths)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)


def regen(script: Path, timeout: int) -> tuple[Path, str | None]:
    ipynb = script.with_suffix(".ipynb")
    env = {**os.environ, "FCOS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    steps = [
        [sys.executable, "-m", "jupytext", "--sync", str(script)],
        [
            sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
            f"--ExecutePreprocessor.timeout={timeout}", "--ExecutePreprocessor.kernel_name=python3",
            str(ipynb),
        ],
        [sys.executable, "-m", "jupytext", "--sync", str(ipynb)],
    ]
    for cmd in steps:
        done = run(cmd, env=env)
        if done.returncode != 0:
            return script, f"{' '.join(cmd[2:4])} failed:\n{done.stdout}\n{done.stderr}"
    return script, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to regenerate (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="notebooks executed at once")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    scripts = sorted({(ROOT / p).resolve().with_suffix(".py") for p in args.notebooks}) or sorted(
        NOTEBOOKS.glob("[0-9][0-9]_*.py")
    )
    missing = [s for s in scripts if not s.exists()]
    if missing:
        print("no such notebook script: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for script, error in pool.map(lambda s: regen(s, args.timeout), scripts):
            name = script.relative_to(ROOT)
            if error:
                failed += 1
                print(f"FAILED {name}\n{error}", file=sys.stderr)
            else:
                print(f"regenerated {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
