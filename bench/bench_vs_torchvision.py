"""Benchmark: fcos_lib's FCOS against torchvision's FCOS on the same trunk, at equal iterations and
at equal wall-clock, on held-out data, over several seeds.

Issue 13's goal: `python -m fcos_lib train --iters 828 --batch-size 16 --image-size 224` reaches
at least 1.5x torchvision FCOS's mAP@0.5 on each held-out dataset, as means over at least 2 seeds
each. This script trains both detectors in the same run, from scratch, on each dataset with each
seed, scores both with the same metric code (fcos_lib.evaluate.detection_metrics, in original-image
pixels, `difficult` objects ignored) on the val split, and prints, per dataset, each seed's
mAP@0.5 and mAP@[.5:.95], the mean and the spread (min-max) over the seeds, the ratio of the means
fcos_lib / torchvision, and whether the 1.5x goal is met.

fcos_lib: exactly what `python -m fcos_lib train --data DIR --iters N --batch-size B --image-size S
--seed K` runs. The config is built by the CLI's own `fcos_lib.cli.config_from_args` (so the two
cannot drift): improved_recipe (p3-p5, width 64, GroupNorm head, centre sampling 1.5, GIoU, exp
box deltas, centerness on the regression stem, flips, a warm-up, then a constant rate, clip 10,
evaluated with an EMA of the weights, decay 0.999), with the optimiser the run's length picks
(chapter 09's optimizer_for: for 550 to 10,000 iterations AdamW lr 2e-3, weight decay 0.05 not on
norms, warm-up min(250, N // 3); otherwise SGD lr 0.01 with weight decay on every parameter,
warm-up min(500, N // 10); results stored before 2026-12-06 were SGD's at every length) and, in
the same range from scratch, block1's detail stacked into p3 (chapter 09's passthrough_for;
results stored before 2026-12-07 were without it), only with
--in-memory and --device cpu added (the same batches, decoded once), and `--threads N` when this
script is given `--threads N` (else the command's own `--threads auto`, which follows the machine's
load: a run during which the load changed can differ from its repeat).

torchvision: fcos_lib.experiments' peer, the issue's exact setup (`build_peer`, `train_peer`,
`score_peer`):

- trunk: RegNetX-400MF (c3, c4, c5) from fcos_lib.backbone, random init, BatchNorm training,
  the same trunk as fcos_lib's;
- neck: torchvision's FeaturePyramidNetwork, 64 channels, p3-p5 (no p6/p7);
- detector: `torchvision.models.detection.FCOS` with its default GroupNorm head, anchor sizes
  8/16/32 (one per stride, so its scale ranges are the course's), score_thresh 0.05, input
  resized to min_size = max_size = image size; everything else torchvision's defaults
  (centre sampling 1.5, NMS 0.6, 100 detections, 1000 top-k candidates);
- input: fcos_lib's letterboxed images cut back to their content (torchvision's FCOS pads by itself);
- training: torch.manual_seed(seed) before building; SGD lr 0.01, momentum 0.9, weight decay 1e-4
  on every parameter, linear warm-up over 100 of 828 iterations (scaled to the iteration count),
  then constant; gradient clipped at norm 10; no flips; batches drawn with replacement;
- scoring: the same detection_metrics as fcos_lib's evaluate, in original-image pixels.

Data: by default both held-out datasets of fcos_lib.heldout ("signs", "tiles"; generated on first
use, never used to train the course's main job), one after the other; `--held-out signs` picks
one. `--data DIR [DIR ...]` (any VOC-layout folders, with --train-split / --val-split) runs on
your own data instead.

Equal wall-clock (`--minutes M`): after the equal-iteration runs, each detector's seconds per
training step are measured on each dataset (10 timed steps after 2 untimed ones, each model
trained from scratch, batches as in its real run), and each detector then trains, from scratch,
floor(M * 60 / step seconds) iterations: fcos_lib as `python -m fcos_lib train --iters THAT`
(its optimiser and warm-up as the command picks them for that length), torchvision with `train_peer`'s schedule
scaled to it. The iteration counts and the seconds each run really trained are printed. Timings
are only as fair as the machine is quiet: run it alone.

    .venv/bin/python bench/bench_vs_torchvision.py                       # both held-out sets, seeds 0 1, 828 it
    .venv/bin/python bench/bench_vs_torchvision.py --minutes 15          # + equal wall-clock, 15 min each
    .venv/bin/python bench/bench_vs_torchvision.py --held-out signs --seeds 0 1 2
    .venv/bin/python bench/bench_vs_torchvision.py --held-out tiles letters --minutes 7.5 --wall-clock-only \
        --results bench/results/vs_torchvision_wall_clock.json   # equal wall-clock only
    .venv/bin/python bench/bench_vs_torchvision.py --data DIR --train-split trainval --val-split test
    .venv/bin/python bench/bench_vs_torchvision.py --held-out aerial --fcos-flags=--p2 --out runs/vs_tv_p2

Time: about 8 minutes per 828-iteration run of 16 images at 224 px on the 2-core development
CPU (2026-12-05; 15 minutes on slower hours), for either detector, so the default (2 datasets x 2
seeds x 2 detectors) takes about 1 hour; `--minutes M` adds about 2 x 2 x 2 x M minutes plus a
minute of step timing per dataset.

Results: printed, and written with the command line, date and versions to --results (default
bench/results/vs_torchvision.json on the default held-out data, OUT/result.json otherwise; while
it runs, OUT/result.json holds the runs finished so far). The measured figures live in
bench/results/vs_torchvision.json, not here. That file's top-level "fcos_lib" and "torchvision"
entries (means over every dataset and seed, at equal iterations) are what
fcos_lib.report.plot_vs_torchvision draws (tools/figures.py).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

import fcos_lib
from fcos_lib.checkpoint import model_from_checkpoint
from fcos_lib.cli import build_parser as build_cli_parser, config_from_args
from fcos_lib.data import VOCDataset
from fcos_lib.evaluate import evaluate
from fcos_lib.experiments import build_peer, score_peer, train_peer
from fcos_lib.heldout import DATASET_CLASSES, HELD_OUT_CLASSES, make_held_out_dataset
from fcos_lib.inference import NMS_THRESH
from fcos_lib.train import train
from fcos_lib.voc import read_class_names

from _timing import TimingNoiseError, seconds_per_step, significant

RESULTS = Path(__file__).resolve().parent / "results" / "vs_torchvision.json"
GOAL_RATIO = 1.5
GOAL_BUDGET = {"iters": 828, "batch_size": 16, "image_size": 224, "min_seeds": 2}
METRIC_KEYS = ("voc07_map50", "voc_map50", "map50", "map")
DETECTORS = ("fcos_lib", "torchvision")
TIMED_STEPS, UNTIMED_STEPS = 10, 2


# ---------------------------------------------------------------------------------------------
# One run of each detector
# ---------------------------------------------------------------------------------------------
def fcos_lib_config(root: Path, args, iters: int, seed: int, out: Path):
    """The TrainConfig of `python -m fcos_lib train --data ROOT --iters ITERS ...`, via the CLI's own code."""
    argv = ["train", "--data", str(root), "--train-split", args.train_split, "--val-split", args.val_split,
            "--iters", str(iters), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
            "--seed", str(seed), "--out", str(out), "--device", "cpu", "--in-memory"]
    if args.threads:  # else the command's own default, --threads auto
        argv += ["--threads", str(args.threads)]
    argv += shlex.split(getattr(args, "fcos_flags", "") or "")  # e.g. "--p2": the command's own options
    return config_from_args(build_cli_parser().parse_args(argv))


def run_fcos_lib(root: Path, args, iters: int, seed: int, out: Path, val: VOCDataset) -> dict:
    cfg = fcos_lib_config(root, args, iters, seed, out)
    state = train(cfg, progress=False, overwrite=True)
    if list(state["class_names"]) != list(val.class_names):
        raise RuntimeError(f"class order differs: fcos_lib {state['class_names']} vs {val.class_names}")
    model, _ = model_from_checkpoint(out / "last.pt")
    metrics = evaluate(model, val)  # as `python -m fcos_lib train` scores: NMS at NMS_THRESH (0.6 before 2026-12-06)
    seconds = state["train_seconds"]
    return {**{k: metrics[k] for k in METRIC_KEYS}, "nms_thresh": NMS_THRESH, "iters": state["iteration"],
            "warmup_iters": cfg.warmup_iters,
            "train_seconds": round(seconds, 1), "train_images_per_s": round(state["train_images"] / seconds, 2),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}


def run_torchvision(train_set: VOCDataset, args, iters: int, seed: int, val: VOCDataset) -> dict:
    torch.manual_seed(seed)  # as fcos_lib.experiments.run_peer_row
    model = build_peer(len(train_set.class_names), args.image_size)
    speed = train_peer(model, train_set, iters, args.batch_size, seed)
    metrics = score_peer(model, val)
    return {**{k: metrics[k] for k in METRIC_KEYS}, "iters": iters, "warmup_iters": max(1, round(100 * iters / 828)),
            "train_seconds": round(iters * args.batch_size / speed, 1), "train_images_per_s": round(speed, 2),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}


def step_seconds(root: Path, train_set: VOCDataset, args, out: Path) -> dict:
    """Seconds per training step of each detector: (time of 2 + 10 steps - time of 2 steps) / 10,
    each a fresh run from scratch (so the first steps' one-off costs cancel), seed = the first seed."""
    seed = args.seeds[0]

    def ours(n):
        cfg = fcos_lib_config(root, args, n, seed, out / "timing_fcos_lib")
        return train(cfg, progress=False, overwrite=True)["train_seconds"]

    def peer(n):
        torch.manual_seed(seed)
        model = build_peer(len(train_set.class_names), args.image_size)
        return n * args.batch_size / train_peer(model, train_set, n, args.batch_size, seed)

    return {name: seconds_per_step(timed, UNTIMED_STEPS, TIMED_STEPS)
            for name, timed in (("fcos_lib", ours), ("torchvision", peer))}


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------
def _mean(values):
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def summarise(runs: list[dict]) -> dict:
    """Mean, min, max over the seeds of map50 and map for each detector; the ratios of the means."""
    out = {}
    for who in DETECTORS:
        out[who] = {}
        for k in ("map50", "map"):
            values = [r[who][k] for r in runs]
            known = [v for v in values if v is not None]
            out[who][k] = {"mean": _mean(values), "min": min(known) if known else None,
                           "max": max(known) if known else None}
        out[who]["iters"] = sorted({r[who]["iters"] for r in runs})
        out[who]["train_seconds_mean"] = _mean([r[who]["train_seconds"] for r in runs])
    out["ratio_map50"] = _ratio(out["fcos_lib"]["map50"]["mean"], out["torchvision"]["map50"]["mean"])
    out["ratio_map"] = _ratio(out["fcos_lib"]["map"]["mean"], out["torchvision"]["map"]["mean"])
    ours, peer = out["fcos_lib"]["map50"]["mean"], out["torchvision"]["map50"]["mean"]
    # ratio None: a mean is unknown (no ground truth), or torchvision's is 0 (then any mAP of ours meets it)
    out["goal_met"] = (out["ratio_map50"] >= GOAL_RATIO if out["ratio_map50"] is not None
                       else ours is not None and peer == 0 and ours > 0)
    out["num_seeds"] = len(runs)
    return out


def _f(v, fmt="{:.3f}"):
    return "n/a" if v is None else fmt.format(v)


def run_line(name: str, seed: int, mode: str, run: dict) -> str:
    a, b = run["fcos_lib"], run["torchvision"]
    return (f"{name} seed {seed} {mode}: fcos_lib mAP@0.5 {_f(a['map50'])} mAP {_f(a['map'])} "
            f"({a['iters']} it, {a['train_seconds']:.0f} s) | torchvision mAP@0.5 {_f(b['map50'])} mAP {_f(b['map'])} "
            f"({b['iters']} it, {b['train_seconds']:.0f} s) | ratio mAP@0.5 {_f(_ratio(a['map50'], b['map50']), '{:.2f}x')}")


def print_summary(result: dict) -> None:
    print()
    print(f"{'dataset':10s} {'budget':18s} {'iters fl/tv':>12s} {'fcos_lib mAP@0.5':>22s} "
          f"{'torchvision mAP@0.5':>22s} {'ratio':>7s} {'mAP ratio':>9s}  >= {GOAL_RATIO}x")
    for name, entry in result["datasets"].items():
        for mode, label in (("equal_iters", "equal iterations"), ("equal_time", "equal wall-clock")):
            if mode not in entry or not entry[mode]["runs"]:
                continue
            s = entry[mode]["summary"]
            its = "/".join(",".join(map(str, s[w]["iters"])) for w in DETECTORS)
            cells = [f"{_f(s[w]['map50']['mean'])} [{_f(s[w]['map50']['min'])}-{_f(s[w]['map50']['max'])}]"
                     for w in DETECTORS]
            verdict = "yes" if s["goal_met"] else "no"
            print(f"{name:10s} {label:18s} {its:>12s} {cells[0]:>22s} {cells[1]:>22s} "
                  f"{_f(s['ratio_map50'], '{:.2f}x'):>7s} {_f(s['ratio_map'], '{:.2f}x'):>9s}  {verdict}")
    print(f"(means over seeds {result['seeds']}, [min-max] across them; ratio = mean fcos_lib / mean torchvision)")
    verdicts = [f"{name} {'met' if e['equal_iters']['summary']['goal_met'] else 'not met'}"
                for name, e in result["datasets"].items() if e["equal_iters"]["runs"]]
    print(f"goal (issue 13: fcos_lib >= {GOAL_RATIO}x torchvision's mAP@0.5 at equal iterations, per dataset): "
          + (", ".join(verdicts) or "not judged here (no equal-iteration runs: --wall-clock-only)"))
    if not result["goal_conditions"]:
        print(f"note: the goal is stated at {GOAL_BUDGET['iters']} iterations x {GOAL_BUDGET['batch_size']} images "
              f"x {GOAL_BUDGET['image_size']} px, >= {GOAL_BUDGET['min_seeds']} seeds, on the held-out datasets; "
              "this run differs, so its verdicts are indicative only")


def chart_fields(result: dict) -> dict:
    """Top-level fields fcos_lib.report.plot_vs_torchvision reads: each detector's four mAPs and
    training speed, means over every dataset and seed at equal iterations."""
    runs = [r for e in result["datasets"].values() for r in e["equal_iters"]["runs"]]
    return {who: {k: _mean([r[who][k] for r in runs]) for k in (*METRIC_KEYS, "train_images_per_s")}
            for who in DETECTORS} if runs else {}


# ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", action="extend", metavar="DIR",
                        help="VOC-layout folder(s), repeatable (default: the held-out datasets)")
    parser.add_argument("--held-out", nargs="+", choices=list(DATASET_CLASSES), default=None,
                        help="which held-out datasets to run when there is no --data (default: "
                             f"{' and '.join(HELD_OUT_CLASSES)}; 'letters' is chapter 10's confirmation set)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--iters", type=int, default=GOAL_BUDGET["iters"])
    parser.add_argument("--batch-size", type=int, default=GOAL_BUDGET["batch_size"])
    parser.add_argument("--image-size", type=int, default=GOAL_BUDGET["image_size"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--minutes", type=float, default=None,
                        help="also compare at equal wall-clock: each detector trains floor(M*60 / its step seconds) iterations")
    parser.add_argument("--wall-clock-only", action="store_true",
                        help="with --minutes: skip the equal-iteration runs (the same runs as chapter 10's rows "
                             "'default, peer's optimiser + EMA' and 'torchvision FCOS' in bench/results/ablations.json)")
    parser.add_argument("--out", default="runs/bench_vs_torchvision", help="run folders (fcos_lib's last.pt) and result.json")
    parser.add_argument("--results", default=None,
                        help="results JSON (default: bench/results/vs_torchvision.json on the held-out data, else OUT/result.json)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of both detectors; fcos_lib's runs then repeat bit for bit (0: torch's "
                             "default for torchvision, the command's --threads auto for fcos_lib)")
    parser.add_argument("--fcos-flags", default="", metavar="FLAGS",
                        help="more options of `python -m fcos_lib train` for fcos_lib's runs, one quoted string, e.g. "
                             "--fcos-flags=--p2; results then go to OUT/result.json unless --results says otherwise")
    args = parser.parse_args()
    if args.fcos_flags:
        try:  # a bad flag fails here, before any training, with the command's own message
            build_cli_parser().parse_args(["train", "--data", "DIR", *shlex.split(args.fcos_flags)])
        except SystemExit:
            parser.error(f"--fcos-flags {args.fcos_flags!r}: not options of `python -m fcos_lib train` (see its --help)")
    if args.data and args.held_out:
        parser.error("--data and --held-out exclude each other")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.wall_clock_only and args.minutes is None:
        parser.error("--wall-clock-only needs --minutes M (the wall-clock budget)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    held_out = not args.data
    if held_out:
        kinds = args.held_out or list(HELD_OUT_CLASSES)
        datasets = {kind: make_held_out_dataset(kind) for kind in kinds}
        if args.train_split != "train" or args.val_split != "val":
            parser.error("the held-out datasets have the splits train and val only")
    else:
        datasets = {}
        for d in args.data:
            name, n = Path(d).resolve().name, 2
            while name in datasets:
                name, n = f"{Path(d).resolve().name}_{n}", n + 1
            datasets[name] = Path(d)
    # The stored reference holds the command's defaults only: a run with --fcos-flags goes to OUT unless told.
    results_path = Path(args.results) if args.results else (RESULTS if held_out and not args.fcos_flags
                                                              else out / "result.json")
    progress_path = out / "result.json"

    result = {
        "command": "python bench/bench_vs_torchvision.py " + shlex.join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fcos_lib_version": fcos_lib.__version__, "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__, "torch_threads": torch.get_num_threads(),
        "data": "fcos_lib.heldout: " + ", ".join(datasets) if held_out else [str(p) for p in datasets.values()],
        "iters": args.iters, "batch_size": args.batch_size, "image_size": args.image_size, "seeds": args.seeds,
        "minutes": args.minutes,
        "fcos_lib_command": f"python -m fcos_lib train --data DIR --iters {args.iters} --batch-size {args.batch_size} "
                            f"--image-size {args.image_size} --seed SEED"
                            + (f" {args.fcos_flags}" if args.fcos_flags else "") + " (+ --in-memory --device cpu)",
        "peer": "fcos_lib.experiments build_peer/train_peer/score_peer (torchvision FCOS, RegNetX-400MF + FPN p3-p5, "
                "64 ch, anchors 8/16/32, SGD lr 0.01 + warm-up 100/828 then constant, clip 10, no flips)",
        "goal": {"ratio_map50": GOAL_RATIO, **GOAL_BUDGET},
        "goal_conditions": (held_out and args.iters == GOAL_BUDGET["iters"] and args.batch_size == GOAL_BUDGET["batch_size"]
                            and args.image_size == GOAL_BUDGET["image_size"] and len(args.seeds) >= GOAL_BUDGET["min_seeds"]),
        "chart_note": "top-level fcos_lib / torchvision: means over every dataset and seed at equal iterations "
                      "(what fcos_lib.report.plot_vs_torchvision draws); per dataset: datasets.*",
        "datasets": {},
        "complete": False,
    }

    def save(path: Path) -> None:
        result.update(chart_fields(result))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")

    for name, root in datasets.items():
        class_names = read_class_names(root, args.train_split)
        train_set = VOCDataset(root, args.train_split, class_names=class_names, image_size=args.image_size, in_memory=True)
        val = VOCDataset(root, args.val_split, class_names=class_names, image_size=args.image_size, in_memory=True)
        print(f"== {name}: {root}  classes {class_names}; train {len(train_set)} images, val {len(val)}", flush=True)
        entry = result["datasets"][name] = {
            "data": str(root), "train_split": args.train_split, "val_split": args.val_split, "classes": class_names,
            "num_train": len(train_set), "num_val": len(val),
            "equal_iters": {"iters": {"fcos_lib": args.iters, "torchvision": args.iters}, "runs": []},
        }
        budgets = [] if args.wall_clock_only else [("equal_iters", {"fcos_lib": args.iters, "torchvision": args.iters})]
        if args.minutes is not None:
            print(f"{name}: timing {UNTIMED_STEPS} + {TIMED_STEPS} steps of each detector ...", flush=True)
            try:
                step = step_seconds(root, train_set, args, out / name)
            except TimingNoiseError as err:
                parser.exit(2, f"error: timing on {name}: {err}\n")
            iters = {who: max(1, math.floor(args.minutes * 60 / step[who])) for who in DETECTORS}
            entry["equal_time"] = {"minutes": args.minutes, "step_seconds": {w: significant(s) for w, s in step.items()},
                                   "iters": iters, "runs": []}
            print(f"{name}: step seconds fcos_lib {step['fcos_lib']:.3f}, torchvision {step['torchvision']:.3f} -> "
                  f"in {args.minutes:g} min: fcos_lib {iters['fcos_lib']} iterations, torchvision {iters['torchvision']}",
                  flush=True)
            budgets.append(("equal_time", iters))
        done = {}  # (detector, iters, seed) -> run: a budget that repeats another's iteration count reuses it
        for mode, iters in budgets:
            for seed in args.seeds:
                run = {"seed": seed}
                for who in DETECTORS:
                    key = (who, iters[who], seed)
                    if key not in done:
                        print(f"{name} seed {seed}: training {who} for {iters[who]} iterations ...", flush=True)
                        if who == "fcos_lib":
                            run_dir = out / name / f"seed{seed}" / f"fcos_lib_{iters[who]}it"
                            done[key] = run_fcos_lib(root, args, iters[who], seed, run_dir, val)
                        else:
                            done[key] = run_torchvision(train_set, args, iters[who], seed, val)
                    run[who] = done[key]
                entry[mode]["runs"].append(run)
                entry[mode]["summary"] = summarise(entry[mode]["runs"])
                print(run_line(name, seed, "equal iterations" if mode == "equal_iters" else "equal wall-clock", run),
                      flush=True)
                save(progress_path)

    result["complete"] = True
    print_summary(result)
    save(progress_path)
    if results_path != progress_path:
        save(results_path)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
