"""Where should `python -m fcos_lib train` switch from SGD to AdamW? Both optimisers at one run length.

`python -m fcos_lib train` picks its optimiser by the run's length (chapter 09's optimizer_for):
AdamW from ADAMW_ITERS[0] iterations on, SGD below. That switch was set on the course data alone,
where the two were level at 550 iterations. This script runs the command exactly as a user does,
`python -m fcos_lib train --data DIR --iters N --batch-size 16 --image-size 224 --optimizer OPT
--seed S` (with --no-c2-passthrough, --in-memory and --device cpu), once with `--optimizer sgd` and once with
`--optimizer adamw`, on the course data ("course") and on held-out datasets the switch was never
set on, and stores each run's scores (as the command evaluates them: its metrics.json) in
bench/results/optimizer_switch.json, one entry per (dataset, iterations, optimiser, seed).

    .venv/bin/python bench/optimizer_switch.py --iters 550 --datasets letters cells course --seeds 0 1
    .venv/bin/python bench/optimizer_switch.py --iters 550 --markdown   # the stored results as a table

About 6 minutes a 550-iteration run on the 2-core development CPU. Run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import mean_range, train_and_store  # noqa: E402
from fcos_lib.cli import build_parser, config_from_args  # noqa: E402
from fcos_lib.experiments import SEEDS  # noqa: E402
from fcos_lib.heldout import DATASET_CLASSES, make_held_out_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "optimizer_switch.json"
KEYS = ("map50", "voc07_map50", "map")
OPTIMIZERS = ("sgd", "adamw")
COURSE = "course"  # the bundled course data: the main job's `python -m fcos_lib train` without --data


def run_key(dataset: str, iters: int, optimizer: str, seed: int) -> str:
    return f"{dataset} | {iters} it | {optimizer} | seed {seed}"


def switch_argv(dataset: str, iters: int, optimizer: str, seed: int, out, data=None) -> list:
    """The command line of one run (without `python -m fcos_lib`). A held-out dataset's folder is
    `data`, or fcos_lib.heldout's (generated on first use). The switch was measured on p3-p5
    alone; the passthrough that the command turns on for these lengths since (chapter 09's
    passthrough_for) is left off, so that the two optimisers still compare on that network."""
    if dataset != COURSE and data is None:
        data = make_held_out_dataset(dataset)
    data = [] if dataset == COURSE else ["--data", str(data)]
    return ["train", *data, "--iters", str(iters), "--batch-size", "16", "--image-size", "224",
            "--optimizer", optimizer, "--no-c2-passthrough", "--in-memory", "--device", "cpu", "--seed", str(seed),
            "--out", str(out)]


# TrainConfig fields added after entries were stored, with the value every run before them had:
# at that value a field is left out of the digest, so that adding an option re-runs nothing.
LATER_FIELDS = {"with_p2": False, "c2_passthrough": False, "focal_gamma": 2.0}


def config_digest(cfg) -> str:
    """A run's recipe as a short hash: its TrainConfig without the folders (`data`, `out`), which
    differ between machines, and without LATER_FIELDS at their old value. A stored entry whose
    digest differs is run again."""
    fields = {k: v for k, v in asdict(cfg).items()
              if k not in ("data", "out") and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def markdown_table(runs: dict, iters: int, seeds, datasets, key: str = "map50") -> str:
    """Per dataset: SGD and AdamW at `iters` iterations, mean (min-max) over the seeds, and AdamW / SGD."""
    lines = [f"| dataset ({iters} iterations, seeds {', '.join(map(str, seeds))}; {key}) | SGD | AdamW | AdamW / SGD |",
             "|---|---|---|---|"]
    for dataset in datasets:
        found = {opt: [runs[run_key(dataset, iters, opt, s)][key] for s in seeds
                       if run_key(dataset, iters, opt, s) in runs] for opt in OPTIMIZERS}
        if any(len(v) < len(seeds) for v in found.values()):
            continue
        means = {opt: sum(v) / len(v) for opt, v in found.items()}
        lines.append(f"| {dataset} | {mean_range(found['sgd'])} | {mean_range(found['adamw'])} | "
                     f"{means['adamw'] / means['sgd']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, required=True, help="the run length to compare the optimisers at")
    parser.add_argument("--datasets", nargs="*", default=[COURSE, *DATASET_CLASSES],
                        choices=[COURSE, *DATASET_CLASSES], help="'course' and held-out datasets, run in this order")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default="runs/optimizer_switch")
    parser.add_argument("--markdown", action="store_true", help="print the stored results as a Markdown table and stop")
    args = parser.parse_args()
    path = Path(args.results)
    if args.markdown:
        runs = json.loads(path.read_text())["runs"]
        print(markdown_table(runs, args.iters, args.seeds, args.datasets))
        print()
        print(markdown_table(runs, args.iters, args.seeds, args.datasets, key="voc07_map50"))
        return
    for dataset in args.datasets:  # dataset by dataset, so that a finished one has both optimisers
        for optimizer in OPTIMIZERS:
            for seed in args.seeds:
                key = run_key(dataset, args.iters, optimizer, seed)
                out = Path(args.out) / dataset / f"{args.iters}it" / optimizer / f"seed{seed}"
                argv = switch_argv(dataset, args.iters, optimizer, seed, out)
                cfg = config_from_args(build_parser().parse_args(argv))
                train_and_store(path, key, cfg, config_digest(cfg), KEYS, command=f"python -m fcos_lib {' '.join(argv)}",
                                lr=cfg.lr, warmup_iters=cfg.warmup_iters)


if __name__ == "__main__":
    main()
