"""Chapter 10's NMS thresholds: the trained ablation rows re-scored at several IoU thresholds of NMS.

NMS is inference only, so no row is trained again: each (row, dataset, seed) checkpoint that
bench/ablations.py left under runs/ablations/ is loaded, run once over the val split, and its
detections post-processed at each threshold. The score at the threshold the stored result was
scored with (0.6 for every ablation row: ROWS_NMS_THRESH) must equal it, which checks that the
checkpoint is the one that was scored. bench/main_job.py's runs on the course data (under
runs/main_job/) are re-scored the same way ("main job"). Results go to bench/results/nms_sweep.json: mAP@0.5, VOC07 mAP@0.5 and
mAP@[.5:.95] per threshold, one entry per (row, dataset, seed).

    .venv/bin/python bench/nms_sweep.py --rows "default, peer's optimiser + EMA" --datasets signs tiles letters "main job"
    .venv/bin/python bench/nms_sweep.py --markdown

About half a minute a checkpoint on the 2-core development CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import (  # noqa: E402
    RESULTS as ABLATIONS, check_is_scored_run, checkpoint_and_val_split, mean_range, require_scored,
    scored_checkpoint,
)
from main_job import RESULTS as MAIN_JOB, run_folder, run_key  # noqa: E402
from fcos_lib.data import VOCDataset, collate_detection  # noqa: E402
from fcos_lib.evaluate import detection_metrics  # noqa: E402
from fcos_lib.experiments import ABLATION_ROWS, BUDGETS, SEEDS  # noqa: E402
from fcos_lib.heldout import DATASET_CLASSES, make_held_out_dataset  # noqa: E402
from fcos_lib.inference import fcos_postprocess  # noqa: E402
from fcos_lib.transforms import boxes_to_original  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "nms_sweep.json"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
KEYS = ("map50", "voc07_map50", "map")


@torch.no_grad()
def metrics_by_threshold(model, dataset: VOCDataset, thresholds=THRESHOLDS) -> dict:
    """{threshold: {map50, voc07_map50, map}} of one model on one split; one forward pass, one
    post-processing per threshold."""
    model.eval()
    predictions = {t: [] for t in thresholds}
    ground_truths = []
    for images, _, targets in DataLoader(dataset, batch_size=16, collate_fn=collate_detection):
        outputs = model(images)
        sizes = [tuple(t["resized_size"]) for t in targets]
        for t in thresholds:  # as fcos_lib.inference.detect, from the one forward pass
            detections = fcos_postprocess(outputs, nms_thresh=t, image_sizes=sizes)
            predictions[t] += [{"boxes": boxes_to_original(d["boxes"], target), "scores": d["scores"],
                                "labels": d["labels"]} for d, target in zip(detections, targets)]
        ground_truths += [{"boxes": boxes_to_original(t["boxes"], t), "labels": t["labels"], "difficult": t["difficult"]}
                          for t in targets]
    found = {t: detection_metrics(predictions[t], ground_truths, dataset.class_names) for t in thresholds}
    return {t: {k: round(m[k], 4) for k in KEYS} for t, m in found.items()}


def markdown_table(runs: dict, key: str = "map50") -> str:
    """Per row and dataset: `key` (mAP@0.5) at each threshold, mean (min-max) over the seeds found."""
    groups = {}
    for run, entry in runs.items():
        row, dataset = (part.strip() for part in run.split("|")[:2])  # "row | dataset | seed S[ | budget]"
        groups.setdefault((row, dataset), []).append(entry)
    lines = ["| row | dataset | seeds | " + " | ".join(f"NMS {t}" for t in THRESHOLDS) + " |",
             "|---" * (3 + len(THRESHOLDS)) + "|"]
    for (row, dataset), entries in sorted(groups.items()):
        cells = [mean_range([e[str(t)][key] for e in entries]) for t in THRESHOLDS]
        lines.append(f"| {row} | {dataset} | {len(entries)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sweep(key: str, checkpoint: Path, root, stored: dict, stored_name: str, path: Path) -> None:
    """Score one checkpoint at every threshold, check the score at the stored entry's threshold
    against it, store the result. root None: the dataset the checkpoint's config names."""
    model, _, val = checkpoint_and_val_split(checkpoint, root)  # root None: the main job's own data
    by_threshold = metrics_by_threshold(model, val)
    scored_at = stored.get("nms_thresh", 0.6)  # what the stored entry was scored with (0.6 before it was recorded)
    check_is_scored_run(key, by_threshold[scored_at]["map50"], stored, scored_at, stored_name)
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results["runs"][key] = {**{str(t): m for t, m in by_threshold.items()}, "spec": stored["spec"],
                            "measured": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(key, {t: m["map50"] for t, m in by_threshold.items()}, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=["default, peer's optimiser + EMA"])
    parser.add_argument("--datasets", nargs="*", default=list(DATASET_CLASSES), choices=[*DATASET_CLASSES, "main job"],
                        help="held-out datasets, and 'main job' for bench/main_job.py's runs on the course data")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--budget", default="full", choices=list(BUDGETS), help="the held-out runs' budget")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--markdown", action="store_true", help="print the stored results as a table and stop")
    parser.add_argument("--metric", default="map50", choices=KEYS, help="the metric --markdown shows")
    args = parser.parse_args()
    path = Path(args.results)
    if args.markdown:
        print(markdown_table(json.loads(path.read_text())["runs"], args.metric))
        return
    unknown = [r for r in args.rows if r not in ABLATION_ROWS or ABLATION_ROWS[r].get("peer")]
    if unknown:
        raise SystemExit(f"not fcos_lib ablation rows: {unknown}; bench/ablations.py --list shows them")
    held_out = json.loads(ABLATIONS.read_text())["runs"]
    main_job = json.loads(MAIN_JOB.read_text())["runs"] if MAIN_JOB.is_file() else {}
    for row in args.rows:
        for dataset in args.datasets:
            for seed in args.seeds:
                if dataset == "main job":
                    key, stored = f"{row} | main job | seed {seed}", main_job.get(run_key(row, seed))
                    checkpoint, name, root = run_folder("runs/main_job", row, seed) / "last.pt", MAIN_JOB, None
                    require_scored(key, stored, checkpoint,
                                   f'.venv/bin/python bench/main_job.py --rows "{row}" --seeds {seed}')
                else:
                    key, stored, checkpoint = scored_checkpoint(held_out, row, dataset, seed, args.budget)
                    name, root = ABLATIONS, make_held_out_dataset(dataset)
                _sweep(key, checkpoint, root, stored, name.name, path)


if __name__ == "__main__":
    main()
