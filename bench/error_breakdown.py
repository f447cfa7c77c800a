"""Chapter 10's error breakdown: what the best detections of a trained ablation row are.

For each (row, dataset, seed) checkpoint that bench/ablations.py left under runs/ablations/, the
val split's detections, best first and as many as there are objects, are sorted into correct,
duplicate, wrong class, poor box and background (fcos_lib.experiments.error_breakdown, Hoiem et
al. 2012's kinds). The detections are post-processed at the NMS threshold the stored row was
scored with (0.6), and their mAP@0.5 must equal the stored one: that checks that the checkpoint
is the run that was scored. Results go to bench/results/error_breakdown.json.

    .venv/bin/python bench/error_breakdown.py --rows "adopted, AdamW lr 2e-3, warm-up 250 + p2" \\
        --datasets aerial letters --seeds 0 1

About half a minute a checkpoint on the 2-core development CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import (  # noqa: E402
    RESULTS as ABLATIONS, check_is_scored_run, checkpoint_and_val_split, scored_checkpoint, store_run,
)
from fcos_lib.evaluate import collect_detections, detection_metrics  # noqa: E402
from fcos_lib.experiments import ABLATION_ROWS, BUDGETS, SEEDS, error_breakdown  # noqa: E402
from fcos_lib.heldout import DATASET_CLASSES, make_held_out_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "error_breakdown.json"


def breakdown_of_checkpoint(checkpoint: Path, root: Path, nms_thresh: float) -> dict:
    """{map50, top, correct, duplicate, wrong class, poor box, background} of one run on its val split."""
    model, _, val = checkpoint_and_val_split(checkpoint, root)
    predictions, ground_truths = collect_detections(model, val, nms_thresh=nms_thresh)
    counts = error_breakdown(predictions, ground_truths)
    map50 = detection_metrics(predictions, ground_truths, val.class_names)["map50"]
    return {"map50": round(map50, 4), "top": sum(counts.values()), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", required=True)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_CLASSES), choices=list(DATASET_CLASSES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--budget", default="full", choices=list(BUDGETS))
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ABLATION_ROWS or ABLATION_ROWS[r].get("peer")]
    if unknown:
        parser.error(f"not fcos_lib ablation rows: {unknown}; bench/ablations.py --list shows them")
    scored = json.loads(ABLATIONS.read_text())["runs"]
    for row in args.rows:
        for dataset in args.datasets:
            for seed in args.seeds:
                key, stored, checkpoint = scored_checkpoint(scored, row, dataset, seed, args.budget)
                nms_thresh = stored.get("nms_thresh", 0.6)  # 0.6 for every row stored before it was recorded
                entry = breakdown_of_checkpoint(checkpoint, make_held_out_dataset(dataset), nms_thresh)
                check_is_scored_run(key, entry["map50"], stored, nms_thresh, ABLATIONS.name)
                entry.update(nms_thresh=nms_thresh, spec=stored["spec"], measured=time.strftime("%Y-%m-%d %H:%M"))
                store_run(Path(args.results), key, entry)
                print(key, {k: v for k, v in entry.items() if k not in ("spec", "measured")}, flush=True)


if __name__ == "__main__":
    main()
