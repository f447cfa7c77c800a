"""Chapter 10's rows on the course's main job: does a change of the default hold where it is used most?

The held-out datasets (bench/ablations.py) decide whether a change is general; this script checks
it on the main job itself: `python -m fcos_lib train` on the generated course dataset (300
iterations, batch 16, 224 px, from scratch, on the CPU), with one ablation row's changes on top,
evaluated as `python -m fcos_lib train` evaluates (its metrics.json; NMS at chapter 08's
NMS_THRESH, stored as nms_thresh: entries without it were scored at 0.6). Results go to
bench/results/main_job.json, one entry per (row, seed); rows already there are skipped.

    .venv/bin/python bench/main_job.py --rows "course default" "default, peer's training" --seeds 0 1
    .venv/bin/python bench/main_job.py --markdown            # the stored results as a table
    .venv/bin/python bench/main_job.py --rows "adopted, AdamW" --iters 828   # the main job, run longer

`--iters` other than the main job's 300 stores its runs under "ROW | seed S | N it"; the warm-up
is then a tenth of the run, as `python -m fcos_lib train --iters N` sets it.

About 3 minutes a run on the 2-core development CPU. Run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import mean_range, train_and_store  # noqa: E402
from fcos_lib.cli import build_parser, config_from_args  # noqa: E402
from fcos_lib.config import COURSE_ITERS, TrainConfig  # noqa: E402
from fcos_lib.experiments import ABLATION_ROWS, ROWS_DEFAULT, SEEDS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "main_job.json"
KEYS = ("voc07_map50", "map50", "map")


def main_job_config(row: str, seed: int, out, iters: int = COURSE_ITERS) -> TrainConfig:
    """`python -m fcos_lib train --seed SEED --out OUT [--iters N]` with the row's changes (the rows'
    default written out)."""
    spec = ABLATION_ROWS[row]
    if spec.get("peer") or spec["base"] != "default":
        raise ValueError(f"row {row!r} is not a change of the course default; the main job runs those only")
    # The rows change ROWS_DEFAULT, an SGD recipe on p3-p5: take the command line's SGD settings (its
    # warm-up, a tenth of the run), not the AdamW ones and the passthrough it picks by itself for
    # longer runs (ADAMW_ITERS); a row that wants the passthrough says so.
    argv = ["train", "--seed", str(seed), "--out", str(out), "--iters", str(iters), "--optimizer", "sgd",
            "--no-c2-passthrough"]
    cfg = config_from_args(build_parser().parse_args(argv))
    return cfg.replace(**ROWS_DEFAULT).replace(**spec["changes"])


def _digest(row: str, iters: int = COURSE_ITERS) -> str:
    job = {"row": ABLATION_ROWS[row], "job": "main"}
    if iters != COURSE_ITERS:
        job["iters"] = iters
    return hashlib.sha1(json.dumps(job, sort_keys=True).encode()).hexdigest()[:12]


def run_key(row: str, seed: int, iters: int = COURSE_ITERS) -> str:
    """The results file's key: "ROW | seed S", with " | N it" when the run is not the main job's length."""
    return f"{row} | seed {seed}" + ("" if iters == COURSE_ITERS else f" | {iters} it")


def run_folder(out, row: str, seed: int, iters: int = COURSE_ITERS) -> Path:
    """Where a run keeps its last.pt: OUT/seedS/ROW_WITH_UNDERSCORES, with "_Nit" when not 300 iterations."""
    length = "" if iters == COURSE_ITERS else f"_{iters}it"
    return Path(out) / f"seed{seed}" / (row.replace(" ", "_") + length)


def markdown_table(runs: dict, seeds, iters: int = COURSE_ITERS) -> str:
    lines = [f"| row (main job, {iters} iterations, seeds {', '.join(map(str, seeds))}) | VOC07 mAP@0.5 | COCO AP50 "
             "| mAP@[.5:.95] |",
             "|---|---|---|---|"]
    for row in ABLATION_ROWS:
        found = [runs[run_key(row, s, iters)] for s in seeds if run_key(row, s, iters) in runs]
        if len(found) < len(seeds):
            continue
        lines.append(f"| {row} | " + " | ".join(mean_range([f[key] for f in found]) for key in KEYS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=["course default"], help="ablation rows (default: course default)")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default="runs/main_job")
    parser.add_argument("--iters", type=int, default=COURSE_ITERS,
                        help=f"iterations (default: the main job's {COURSE_ITERS})")
    parser.add_argument("--markdown", action="store_true", help="print the stored results as a Markdown table and stop")
    args = parser.parse_args()
    path = Path(args.results)
    if args.markdown:
        print(markdown_table(json.loads(path.read_text())["runs"], args.seeds, args.iters))
        return
    unknown = [r for r in args.rows if r not in ABLATION_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; bench/ablations.py --list shows them")
    configs = {row: {s: main_job_config(row, s, run_folder(args.out, row, s, args.iters), args.iters)
                     for s in args.seeds} for row in args.rows}  # every row checked before any training
    for row, by_seed in configs.items():
        for seed, cfg in by_seed.items():
            train_and_store(path, run_key(row, seed, args.iters), cfg, _digest(row, args.iters), KEYS)


if __name__ == "__main__":
    main()
