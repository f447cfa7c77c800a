"""Command line: `python -m fcos_lib train|evaluate|detect`.

A thin layer over the library functions of chapter 09 (fcos_lib.train, fcos_lib.evaluate) and
chapter 08 (fcos_lib.inference): it parses arguments, calls them, and turns every known bad
input into one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COURSE_DEFAULT_ITERS = 300  # no --data: the generated course dataset, sized to finish on a 2-core CPU
FULL_DEFAULT_ITERS = 9000   # --data given: the full recipe


def _parse_classes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("--classes needs a comma-separated list of class names, e.g. --classes cat,dog")
    if len(set(names)) != len(names):
        raise ValueError(f"--classes lists a name twice: {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcos_lib", description="Train, evaluate and run FCOS on VOC-layout data.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector (no --data: the generated course dataset)")
    t.add_argument("--data", help="VOC-layout folder holding JPEGImages/, Annotations/, ImageSets/Main/")
    t.add_argument("--classes", help="comma-separated class names (default: read from the annotations)")
    t.add_argument("--train-split", default="train", help="ImageSets/Main/<NAME>.txt to train on (default: train)")
    t.add_argument("--val-split", default="val", help="split to evaluate on after training (default: val)")
    t.add_argument("--image-size", type=int, default=224, help="square network input in pixels, a multiple of 32")
    t.add_argument("--iters", type=int, help=f"iterations (default: {COURSE_DEFAULT_ITERS} on the course dataset, {FULL_DEFAULT_ITERS} with --data)")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=None, help="base learning rate (default: the recipe's, 0.02 improved, 8e-3 baseline)")
    t.add_argument("--recipe", choices=["improved", "baseline"], default="improved", help="training recipe (chapter 09)")
    t.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (needs internet once)")
    t.add_argument("--in-memory", action="store_true", help="decode and resize the images once and keep them in RAM")
    t.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: 2, 0 with --in-memory)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--out", default="runs/fcos", help="run folder: last.pt, metrics.json, loss_curve.png, detections.png")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    t.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="mAP@0.5 and mAP@[.5:.95] of a checkpoint on a split")
    e.add_argument("--checkpoint", required=True, help="a last.pt written by train")
    e.add_argument("--data", help="VOC-layout folder (default: the generated course dataset)")
    e.add_argument("--split", default="val")
    e.add_argument("--device", default="auto")
    e.add_argument("--out", help="where to write metrics.json (default: the checkpoint's folder)")

    d = sub.add_parser("detect", help="detect objects in image files")
    d.add_argument("--checkpoint", required=True)
    d.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    d.add_argument("--out", default="detections", help="folder for annotated images and detections.json")
    d.add_argument("--score-thresh", type=float, default=0.3)
    d.add_argument("--device", default="auto")
    return parser


def _train(args) -> int:
    from fcos_lib.data import VOCDataset
    from fcos_lib.train import baseline_recipe, improved_recipe, resolve_data, resolve_device, train, write_run_report

    recipe = {"improved": improved_recipe, "baseline": baseline_recipe}[args.recipe]
    course = args.data is None
    changes = dict(
        data=args.data, classes=_parse_classes(args.classes), train_split=args.train_split, val_split=args.val_split,
        image_size=args.image_size, batch_size=args.batch_size, pretrained_backbone=args.pretrained,
        iters=args.iters or (COURSE_DEFAULT_ITERS if course else FULL_DEFAULT_ITERS),
        in_memory=args.in_memory or course, device=args.device, out=args.out, seed=args.seed,
    )
    changes["warmup_iters"] = min(500, changes["iters"] // 10)  # the warm-up must fit in short runs
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.workers is not None:
        changes["num_workers"] = args.workers
    elif changes["in_memory"]:
        changes["num_workers"] = 0
    cfg = recipe(**changes)
    # Check everything that can be checked before spending minutes or hours on training: the
    # device, both splits and every annotation in them.
    resolve_device(cfg.device)
    root, class_names = resolve_data(cfg)
    for split in (cfg.train_split, cfg.val_split):
        VOCDataset(root, split, class_names=class_names, image_size=cfg.image_size)
    print(f"training on {cfg.data or 'the course dataset'} for {cfg.iters} iterations -> {cfg.out}/last.pt")
    state = train(cfg, resume=args.resume)
    metrics = write_run_report(cfg, state)
    _print_metrics(metrics)
    print(f"wrote {cfg.out}/metrics.json, loss_curve.png, detections.png")
    return 0


def _print_metrics(metrics: dict) -> None:
    from fcos_lib.evaluate import format_ap_table

    print(format_ap_table(metrics))
    print(f"mAP@0.5 = {metrics['map50']:.3f}   mAP@[.5:.95] = {metrics['map']:.3f}")


def _evaluate(args) -> int:
    from fcos_lib.data import VOCDataset, make_course_dataset
    from fcos_lib.evaluate import evaluate
    from fcos_lib.train import model_from_checkpoint, resolve_device, scalar_metrics

    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    root = Path(args.data) if args.data else make_course_dataset()
    dataset = VOCDataset(root, args.split, class_names=state["class_names"], image_size=state["config"]["image_size"])
    metrics = evaluate(model, dataset, device=device)
    _print_metrics(metrics)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(scalar_metrics(metrics, split=args.split), indent=2))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def _detect(args) -> int:
    from fcos_lib.train import detect_files, model_from_checkpoint, resolve_device

    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    results = detect_files(model, state, args.images, args.out, score_thresh=args.score_thresh, device=device)
    for item in results:
        print(f"{item['image']}: {len(item['detections'])} detections")
    print(f"wrote {Path(args.out) / 'detections.json'} and {len(results)} annotated images")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fcos_lib.data import DatasetError
    from fcos_lib.train import CheckpointError

    try:
        return {"train": _train, "evaluate": _evaluate, "detect": _detect}[args.command](args)
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the run folder's last.pt holds the progress (resume with --resume)", file=sys.stderr)
        return 130
