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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fcos_lib.config import TrainConfig

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

    # Every train flag defaults to None = "not given": a new run fills in the recipe's value (the
    # help says which), a resumed run keeps its checkpoint's value.
    t = sub.add_parser("train", help="train a detector (no --data: the generated course dataset)")
    t.add_argument("--data", help="VOC-layout folder holding JPEGImages/, Annotations/, ImageSets/Main/ (default: the generated course dataset)")
    t.add_argument("--classes", help="comma-separated class names (default: read from the training split's annotations)")
    t.add_argument("--train-split", help="ImageSets/Main/<NAME>.txt to train on (default: train)")
    t.add_argument("--val-split", help="split to evaluate on after training (default: val)")
    t.add_argument("--image-size", type=int, help="square network input in pixels, a multiple of 32 (default: 224)")
    t.add_argument("--iters", type=int, help=f"iterations (default: {COURSE_DEFAULT_ITERS} on the course dataset, {FULL_DEFAULT_ITERS} with --data)")
    t.add_argument("--batch-size", type=int, help="images per iteration (default: 16)")
    t.add_argument("--lr", type=float, help="base learning rate (default: the recipe's, 0.02 improved, 8e-3 baseline)")
    t.add_argument("--recipe", choices=["improved", "baseline"], help="training recipe, chapter 09 (default: improved)")
    t.add_argument("--pretrained", action="store_true", default=None,
                   help="start from ImageNet weights (needs internet once); BatchNorm and the first two trunk stages are then frozen (default: off, from scratch)")
    t.add_argument("--in-memory", action="store_true", default=None,
                   help="decode and resize the images once and keep them in RAM (default: on for the course dataset, off with --data)")
    t.add_argument("--workers", type=int, help="DataLoader worker processes (default: 2, or 0 when the data is in memory)")
    t.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    t.add_argument("--out", default="runs/fcos", help="run folder: last.pt, metrics.json, loss_curve.png, detections.png (default: runs/fcos)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with its own settings")
    t.add_argument("--seed", type=int, help="random seed of the initial weights, batch order and flips (default: 0)")

    e = sub.add_parser("evaluate", help="mAP of a checkpoint on a split (COCO-style and PASCAL VOC)")
    e.add_argument("--checkpoint", required=True, help="a last.pt written by train")
    e.add_argument("--data", help="VOC-layout folder (default: the generated course dataset)")
    e.add_argument("--split", default="val", help="split to evaluate (default: val)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    e.add_argument("--out", help="where to write metrics.json (default: the checkpoint's folder)")

    d = sub.add_parser("detect", help="detect objects in image files")
    d.add_argument("--checkpoint", required=True, help="a last.pt written by train")
    d.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    d.add_argument("--out", default="detections", help="folder for annotated images and detections.json (default: detections)")
    d.add_argument("--score-thresh", type=float, default=0.3, help="keep detections scoring above this (default: 0.3)")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    return parser


# argparse destination -> TrainConfig field, for the flags that map one to one.
_TRAIN_FLAGS = {
    "data": "data", "train_split": "train_split", "val_split": "val_split", "image_size": "image_size",
    "iters": "iters", "batch_size": "batch_size", "lr": "lr", "pretrained": "pretrained_backbone",
    "in_memory": "in_memory", "workers": "num_workers", "device": "device", "out": "out", "seed": "seed",
}


def config_from_args(args) -> TrainConfig:
    """The TrainConfig that `python -m fcos_lib train` flags describe.

    A new run starts from the recipe (--recipe) and the course defaults; with --resume, from the
    checkpoint's own config, so only the flags given on the command line change anything (and
    fcos_lib.train.train refuses the changes that would alter the run).
    """
    from fcos_lib.checkpoint import load_checkpoint
    from fcos_lib.config import TrainConfig, baseline_recipe, improved_recipe

    given = {field: getattr(args, dest) for dest, field in _TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    if args.classes is not None:
        given["classes"] = _parse_classes(args.classes)
    if args.resume:
        saved = load_checkpoint(Path(args.out) / "last.pt")["config"]
        if args.recipe is not None:
            raise ValueError("--recipe cannot be combined with --resume: a resumed run keeps its own recipe")
        return TrainConfig(**saved).replace(**given)
    recipe = {"improved": improved_recipe, "baseline": baseline_recipe}[args.recipe or "improved"]()
    course = given.get("data") is None
    iters = given.get("iters", COURSE_DEFAULT_ITERS if course else FULL_DEFAULT_ITERS)
    in_memory = given.get("in_memory", course)
    defaults = {
        "iters": iters,
        "in_memory": in_memory,
        "num_workers": 0 if in_memory else recipe.num_workers,
        # The recipe's warm-up, shortened to a tenth of a short run; a recipe without one keeps none.
        "warmup_iters": min(recipe.warmup_iters, iters // 10),
    }
    return recipe.replace(**{**defaults, **given})


def _train(args) -> int:
    from fcos_lib.data import VOCDataset
    from fcos_lib.report import write_run_report
    from fcos_lib.config import resolve_device
    from fcos_lib.train import resolve_data, train

    cfg = config_from_args(args)
    # Check everything that can be checked before spending minutes or hours on training: the
    # device, both splits and every annotation in them.
    resolve_device(cfg.device)
    root, class_names = resolve_data(cfg)
    for split in (cfg.train_split, cfg.val_split):
        VOCDataset(root, split, class_names=class_names, image_size=cfg.image_size)
    verb = "resuming" if args.resume else "training"
    print(f"{verb} on {cfg.data or 'the course dataset'} for {cfg.iters} iterations -> {cfg.out}/last.pt")
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
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import resolve_device
    from fcos_lib.course_data import make_course_dataset
    from fcos_lib.data import VOCDataset
    from fcos_lib.evaluate import evaluate
    from fcos_lib.report import scalar_metrics

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
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import resolve_device
    from fcos_lib.inference import detect_files

    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    results = detect_files(model, args.images, args.out, class_names=state["class_names"],
                           image_size=state["config"]["image_size"], score_thresh=args.score_thresh, device=device)
    for item in results:
        print(f"{item['image']}: {len(item['detections'])} detections")
    print(f"wrote {Path(args.out) / 'detections.json'} and {len(results)} annotated images")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fcos_lib.checkpoint import CheckpointError
    from fcos_lib.voc import DatasetError

    try:
        return {"train": _train, "evaluate": _evaluate, "detect": _detect}[args.command](args)
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the run folder's last.pt holds the progress (resume with --resume)", file=sys.stderr)
        return 130
