"""Chapter 10's ablations: what each change to FCOS buys, measured on held-out generated data.

Every row is one recipe (a TrainConfig, or torchvision's FCOS as the peer), trained from scratch
on each held-out dataset with each seed, and scored by mAP@0.5 (COCO-style AP at IoU 0.5,
torchmetrics; `difficult` objects ignored) on the dataset's val split. Each fcos_lib run is
also scored without centerness in the score (the "centerness in the score" row costs no
training). Results go to bench/results/ablations.json, one entry per (row, dataset, seed,
budget); rows already there are skipped, so an interrupted run continues where it stopped.

    .venv/bin/python bench/ablations.py                        # every row, screening budget
    .venv/bin/python bench/ablations.py --budget full --rows "course default" "torchvision FCOS"
    .venv/bin/python bench/ablations.py --list                 # the rows and budgets

Budgets: "screen" = 300 iterations of 8 images at 160 px; "full" = 828 iterations of 16 at 224
px (the issue's budget, about 15 minutes per run on the 2-core development CPU).
The held-out datasets ("signs", "tiles"; "letters" to confirm; "cells", measured once at the end)
come from fcos_lib.heldout; the course never trains on them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fcos_lib.experiments import (  # noqa: E402
    ABLATION_ROWS, BUDGETS, SEEDS, row_config, run_fcos_row, run_peer_row,
)
from fcos_lib.heldout import DATASET_CLASSES, HELD_OUT_CLASSES, make_held_out_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ablations.json"


def _key(row: str, dataset: str, seed: int, budget: str) -> str:
    return f"{row} | {dataset} | seed {seed} | {budget}"


def row_folder(out, budget: str, dataset: str, seed: int, row: str) -> Path:
    """Where an fcos_lib row's run keeps its last.pt: OUT/BUDGET/DATASET/seedS/ROW_WITH_UNDERSCORES."""
    return Path(out) / budget / dataset / f"seed{seed}" / row.replace(" ", "_")


def scored_checkpoint(runs: dict, row: str, dataset: str, seed: int, budget: str,
                      out="runs/ablations") -> tuple[str, dict, Path]:
    """(key, stored entry, last.pt) of a row's run that bench/ablations.py trained and scored.
    `runs`: RESULTS' "runs". A run that is missing from either is refused with the command that trains it."""
    key = _key(row, dataset, seed, budget)
    checkpoint = row_folder(out, budget, dataset, seed, row) / "last.pt"
    require_scored(key, runs.get(key), checkpoint, f".venv/bin/python bench/ablations.py --budget {budget} "
                                                    f'--datasets {dataset} --rows "{row}" --seeds {seed}')
    return key, runs[key], checkpoint


def checkpoint_and_val_split(checkpoint: Path, root=None):
    """(model, state, val split) of a trained run: its val split of `root` (None: the folder its
    config names, or the course dataset), with its class names and image size, decoded once."""
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import TrainConfig
    from fcos_lib.data import VOCDataset
    from fcos_lib.train import resolve_data

    model, state = model_from_checkpoint(checkpoint)
    cfg = state["config"]
    if root is None:
        root = resolve_data(TrainConfig(**cfg))[0]
    val = VOCDataset(root, cfg["val_split"], class_names=list(state["class_names"]), image_size=cfg["image_size"],
                     in_memory=True)
    return model, state, val


def require_scored(key: str, stored: dict | None, checkpoint: Path, command: str) -> None:
    """Refuse a run whose stored score or checkpoint is missing, naming the `command` that trains it."""
    if stored is None or not Path(checkpoint).is_file():
        raise SystemExit(f"no scored checkpoint for {key!r} ({checkpoint}). Fix: train it with {command}")


def check_is_scored_run(key: str, map50: float, stored: dict, nms_thresh: float, results_name: str) -> None:
    """Refuse a checkpoint whose mAP@0.5 at the stored NMS threshold is not the stored one: it is
    not the run that was scored (trained again since, or another row's folder)."""
    if abs(map50 - stored["map50"]) > 1e-3:
        raise SystemExit(f"{key}: the checkpoint scores mAP@0.5 {map50:.4f} at NMS {nms_thresh}, but {results_name} "
                         f"holds {stored['map50']:.4f}: it is not the run that was scored. Fix: train it again.")


def store_run(path: Path, key: str, entry: dict) -> dict:
    """Store one run's entry under `key` in a results file ({"runs": {...}}), re-read just before
    writing, so that entries another run stored meanwhile are kept. Returns the results written."""
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results["runs"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def train_and_store(path: Path, key: str, cfg, spec: str, keys, command: str = "", **extra) -> dict | None:
    """Train `cfg` and score it as `python -m fcos_lib train` does (write_run_report), then store
    its `keys` metrics with `spec`, the NMS threshold, the training time, the date, torch's version
    and `extra` under `key` (store_run). A run that the file already holds with this `spec` is
    skipped: returns None then, else the stored entry. `command` is printed with the run."""
    from fcos_lib.inference import NMS_THRESH
    from fcos_lib.report import write_run_report
    from fcos_lib.train import train

    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if results["runs"].get(key, {}).get("spec") == spec:
        print(f"have  {key}")
        return None
    print(f"run   {key}" + (f": {command}" if command else ""), flush=True)
    state = train(cfg, overwrite=True, progress=False)
    metrics = write_run_report(cfg, state)
    entry = {k: metrics[k] for k in keys}
    entry.update(spec=spec, nms_thresh=NMS_THRESH, **extra, train_seconds=round(state["train_seconds"], 1),
                 measured=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__)
    store_run(path, key, entry)
    print(f"done  {key}: " + ", ".join(f"{k} {entry[k]:.3f}" for k in keys), flush=True)
    return entry


def mean_range(values) -> str:
    """A table cell: the mean of the seeds' values and their range, "0.325 (0.320-0.331)"."""
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def markdown_table(runs: dict, budget: str, seeds: list, datasets=tuple(HELD_OUT_CLASSES)) -> str:
    """The README's table: per row and held-out dataset, mean mAP@0.5 over the seeds (min-max)."""
    def scores(row, dataset, key="map50"):
        found = [runs[_key(row, dataset, s, budget)][key] for s in seeds if _key(row, dataset, s, budget) in runs]
        return found if len(found) == len(seeds) else None

    def cell(values):
        return "not measured" if values is None else mean_range(values)

    datasets = list(datasets)
    lines = [f"| row ({budget}: {BUDGETS[budget]}, seeds {', '.join(map(str, seeds))}) | "
             + " | ".join(f"{d}: mAP@0.5 mean (min-max)" for d in datasets) + " |",
             "|---" * (len(datasets) + 1) + "|"]
    for row, spec in ABLATION_ROWS.items():
        if all(scores(row, d) is None for d in datasets):
            continue
        lines.append(f"| {row} | " + " | ".join(cell(scores(row, d)) for d in datasets) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=None, help="row names (default: every row)")
    parser.add_argument("--datasets", nargs="*", default=list(HELD_OUT_CLASSES), choices=list(DATASET_CLASSES),
                        help="held-out datasets (default: the two the rows are measured on; 'letters' confirms a "
                             "change of the default on data no row was chosen on)")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--budget", default="screen", choices=list(BUDGETS))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--list", action="store_true", help="print the rows and budgets and stop")
    parser.add_argument("--markdown", action="store_true", help="print the stored results as a Markdown table and stop")
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(Path(args.results).read_text())["runs"], args.budget, args.seeds, args.datasets))
        return
    if args.list:
        for name, row in ABLATION_ROWS.items():
            print(f"{name:28s} {row['what']}")
        for name, budget in BUDGETS.items():
            print(f"budget {name}: {budget}")
        return
    rows = args.rows or list(ABLATION_ROWS)
    unknown = [r for r in rows if r not in ABLATION_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; --list shows them")
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    roots = {dataset: make_held_out_dataset(dataset) for dataset in args.datasets}
    for row in rows:  # row by row, so that every finished row has all its datasets and seeds
        for dataset, root in roots.items():
            for seed in args.seeds:
                key = _key(row, dataset, seed, args.budget)
                spec = json.dumps({"row": ABLATION_ROWS[row], "budget": BUDGETS[args.budget]}, sort_keys=True)
                digest = hashlib.sha1(spec.encode()).hexdigest()[:12]
                if key in results["runs"] and results["runs"][key].get("spec") == digest:
                    print(f"have  {key}")
                    continue
                print(f"run   {key}", flush=True)
                out = row_folder(args.out, args.budget, dataset, seed, row)
                tic = time.perf_counter()
                if ABLATION_ROWS[row].get("peer"):
                    metrics = run_peer_row(args.budget, root, seed)
                else:
                    metrics = run_fcos_row(row, args.budget, root, seed, out)
                metrics.update(spec=digest, minutes=round((time.perf_counter() - tic) / 60, 2),
                               measured=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__)
                results = store_run(path, key, metrics)
                print(f"done  {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                  if isinstance(v, float) and k != "minutes"), flush=True)


if __name__ == "__main__":
    main()
