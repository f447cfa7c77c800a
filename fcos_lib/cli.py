"""Command line: `python -m fcos_lib train|evaluate|detect|export`.

A thin layer over the library functions of chapter 09 (fcos_lib.train, fcos_lib.evaluate),
chapter 08 (fcos_lib.inference) and fcos_lib.deploy (`export` to ONNX, `detect --onnx`): it
parses arguments, calls them, and turns every known bad input into one line on stderr and exit
status 2, never a traceback. `detect` exits with 1 when some images could not be read (each is
skipped, reported, and listed in detections.json). `torchrun --nproc_per_node=N -m fcos_lib
train ...` trains on N processes (fcos_lib.distributed); process 0 prints the report.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# Iterations when --iters is not given: the main job without --data, the full recipe with it.
from fcos_lib.config import ADAMW_ITERS, COURSE_ITERS as COURSE_DEFAULT_ITERS, VOC_ITERS as FULL_DEFAULT_ITERS
from fcos_lib.inference import NMS_THRESH

if TYPE_CHECKING:
    from fcos_lib.config import TrainConfig


def _parse_classes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("--classes needs a comma-separated list of class names, e.g. --classes cat,dog")
    if len(set(names)) != len(names):
        raise ValueError(f"--classes lists a name twice: {text!r}")
    return names


def _parse_ema_decay(text: str) -> float | str:
    """--ema-decay: 'off' (evaluate the last weights) or a decay in (0, 1), checked by TrainConfig."""
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'off' or a decay in (0, 1) such as 0.999, got {text!r}") from None


def _parse_threads(text: str) -> int | str:
    """--threads: 'auto' or a number of threads >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads >= 1, got {text!r}")
    return value


def _parse_fraction(text: str) -> float:
    """--score-thresh, --nms-thresh: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from fcos_lib import __version__

    parser = argparse.ArgumentParser(prog="python -m fcos_lib",
                                     description="Train, evaluate, run and export FCOS on VOC-layout data.")
    parser.add_argument("--version", action="version", version=f"fcos_lib {__version__}")
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
    t.add_argument("--lr", type=float, help="base learning rate (default: the recipe's, 0.01 improved with sgd, 2e-3 with adamw, "
                                                "8e-3 baseline)")
    t.add_argument("--optimizer", choices=["auto", "sgd", "adamw"],
                   help="sgd (with momentum 0.9) or adamw (lr 2e-3, weight decay 0.05 with none on norms, a 250-iteration "
                        f"warm-up, the recipe's constant rate and EMA); auto: adamw from scratch for {ADAMW_ITERS[0]:,} to "
                        f"{ADAMW_ITERS[1]:,} iterations, where chapter 10 "
                        "measured it ahead, sgd otherwise (the 300-iteration main job, --pretrained, the baseline) "
                        "(default: auto)")
    t.add_argument("--weight-decay", type=float,
                   help="weight decay; on every parameter in the improved recipe from scratch, on conv and linear weights "
                        "only with --pretrained, --optimizer adamw or the baseline (default: 1e-4 with sgd, 0.05 with adamw)")
    t.add_argument("--schedule", choices=["cosine", "step", "constant"],
                   help="learning rate after the warm-up: cosine decay to 0, steps at 60 %% and 90 %%, or constant "
                        "(default: the recipe's: constant improved, cosine improved with --pretrained, step baseline)")
    t.add_argument("--warmup-iters", type=int, metavar="N",
                   help="iterations over which the rate rises linearly from 0.1 %% of --lr to it (default: a tenth "
                        "of --iters, at most 500, with sgd; a third, at most 250, with adamw; none in the baseline "
                        "recipe; 0: none)")
    t.add_argument("--steps", type=float, nargs="+", metavar="FRACTION",
                   help="with --schedule step: the fractions of --iters at which the rate is cut tenfold, e.g. "
                        "--steps 0.9 for one cut in the last 10 %% (default: 0.6 0.9)")
    t.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips of the training images; flips help photos of things that look "
                        "the same mirrored, and hurt text and other handed shapes (default: the recipe's, on improved, off baseline)")
    t.add_argument("--recipe", choices=["improved", "baseline"], help="training recipe, chapter 09 (default: improved)")
    t.add_argument("--pretrained", action="store_true", default=None,
                   help="start from ImageNet weights (needs internet once); BatchNorm and the first two trunk stages are then frozen (default: off, from scratch)")
    t.add_argument("--in-memory", action="store_true", default=None,
                   help="decode and resize the images once and keep them, uint8, on the training device; no DataLoader "
                        "(default: on for the course dataset, off with --data)")
    t.add_argument("--workers", type=int, help="DataLoader worker processes (default: 2, or 0 when the data is in memory)")
    t.add_argument("--device", help="auto, cpu or cuda (default: auto)")
    t.add_argument("--cpu-bf16", action="store_true", default=None,
                   help="bfloat16 autocast on the CPU: 1.5x faster per step on a processor with AMX-BF16 units "
                        "(measured); elsewhere measure first: bench/bench_train_step.py --bf16 (default: off, float32)")
    t.add_argument("--threads", type=_parse_threads,
                   help="torch's CPU threads: a number, or auto = the cores other processes leave free, re-read "
                        "every second (default: auto; a fixed number makes a run repeat bit for bit on a busy machine)")
    t.add_argument("--out", default="runs/fcos", help="run folder: last.pt, metrics.json, loss_curve.png, detections.png (default: runs/fcos)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt, with its own settings")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out (default: refuse)")
    t.add_argument("--ema-decay", type=_parse_ema_decay, metavar="DECAY|off",
                   help="evaluate an exponential moving average of the weights with this decay, or off: the last "
                        "weights (chapter 10; default: 0.999 with the improved recipe from scratch, --optimizer adamw "
                        "included; off with --recipe baseline or --pretrained)")
    t.add_argument("--scale-jitter", type=float, nargs=2, metavar=("LO", "HI"),
                   help="multi-scale training: each batch resized by a factor in [LO, HI], e.g. 0.75 1.25 (chapter 10; default: off)")
    t.add_argument("--assigner", choices=["fcos", "atss"], help="positive locations: fcos (chapter 04) or atss (chapter 10) (default: fcos)")
    t.add_argument("--p2", action="store_true", default=None,
                   help="add the FPN level p2 (stride 4) for objects of a few pixels: about twice the time per step "
                        "(chapter 10; default: off)")
    t.add_argument("--c2-passthrough", action=argparse.BooleanOptionalAction, default=None,
                   help="give p3 the detail of the stride-4 stage: its 2x2 blocks of pixels stacked as channels "
                        "beside c3 (YOLOv2's passthrough layer); the levels stay p3-p5 (chapter 10; default: on from "
                        "scratch for 550 to 10,000 iterations, where it was measured; off otherwise and with --p2)")
    t.add_argument("--head-convs", type=int, metavar="N",
                   help="3x3 convolutions in each head stem (default: 4, the paper's); with --p2, 2 makes its step "
                        "about 1.5x the default's instead of 2x (chapter 10)")
    t.add_argument("--focal-gamma", type=float, metavar="G",
                   help="the focal loss's focusing exponent: 0 is plain (alpha-weighted) cross-entropy, higher "
                        "turns the well-classified locations down further (chapters 07, 10; default: 2, the paper's)")
    t.add_argument("--seed", type=int, help="random seed of the initial weights, batch order and flips (default: 0)")
    t.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default: 100)")
    t.add_argument("--checkpoint-minutes", type=float, help="most minutes between checkpoints (default: 2)")
    t.add_argument("--skip-bad-boxes", action="store_true", default=None,
                   help="leave out, and list, the images whose annotation has a broken box (default: refuse the data)")
    t.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on CUDA GPUs: BatchNorm statistics over the global batch, not each GPU's "
                        "slice (SyncBatchNorm; matters from scratch, not with --pretrained) (default: off)")

    e = sub.add_parser("evaluate", help="mAP of a checkpoint on a split (COCO-style and PASCAL VOC)",
                       description="Evaluate a checkpoint on one split and write metrics_<SPLIT>.json (the run's "
                                   "own metrics.json is left alone).")
    e.add_argument("--checkpoint", required=True, help="a last.pt written by train (required, no default)")
    e.add_argument("--data", help="VOC-layout folder (default: the generated course dataset)")
    e.add_argument("--split", default="val", help="split to evaluate, ImageSets/Main/<SPLIT>.txt (default: val)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    e.add_argument("--out", help="folder for metrics_<SPLIT>.json (default: the checkpoint's folder)")
    e.add_argument("--nms-thresh", type=_parse_fraction, default=NMS_THRESH,
                   help=f"IoU above which class-wise NMS drops the lower-scored box (default: {NMS_THRESH}, "
                        "chapter 10; the paper's 0.6)")

    d = sub.add_parser("detect", help="detect objects in image files and folders",
                       description="Detect objects in images; write <stem>_detections.png per image and "
                                   "detections.json. Exit status 0: all images done; 1: some could not be read "
                                   "(listed under \"failed\" in detections.json); 2: nothing could be done.")
    model = d.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a last.pt written by train (default: none; give this or --onnx)")
    model.add_argument("--onnx", metavar="MODEL.onnx",
                       help="an ONNX file written by export, run on the CPU with onnxruntime "
                            "(default: none; give this or --checkpoint)")
    d.add_argument("images", nargs="+",
                   help="image files (JPEG, PNG, ...) and folders; a folder means every image file under it, "
                        "recursively, in sorted order (hidden files and the --out folder skipped)")
    d.add_argument("--out", default="detections", help="folder for annotated images and detections.json (default: detections)")
    d.add_argument("--score-thresh", type=_parse_fraction, default=0.3,
                   help="keep detections scoring above this (default: 0.3)")
    d.add_argument("--nms-thresh", type=_parse_fraction, default=NMS_THRESH,
                   help=f"IoU above which class-wise NMS drops the lower-scored box (default: {NMS_THRESH})")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda; --onnx runs on the CPU (default: auto)")
    d.add_argument("--classes", help="comma-separated class names the model must detect, checked before any "
                                     "work (default: not checked)")

    x = sub.add_parser("export", help="export a checkpoint's network to ONNX",
                       description="Write the network of a checkpoint (no post-processing) to an ONNX file whose "
                                   "metadata holds the class names, input size and box decoding; "
                                   "`detect --onnx` runs it. Needs pip install 'fcos-lib[export]'.")
    x.add_argument("--checkpoint", required=True, help="a last.pt written by train (required, no default)")
    x.add_argument("--format", choices=["onnx"], default="onnx", help="the file format (default: onnx)")
    x.add_argument("--out", default="model.onnx", help="the file to write (default: model.onnx)")
    return parser


# argparse destination -> TrainConfig field, for the flags that map one to one.
_TRAIN_FLAGS = {
    "data": "data", "train_split": "train_split", "val_split": "val_split", "image_size": "image_size",
    "iters": "iters", "batch_size": "batch_size", "lr": "lr", "pretrained": "pretrained_backbone",
    "in_memory": "in_memory", "workers": "num_workers", "device": "device", "out": "out", "seed": "seed",
    "checkpoint_every": "checkpoint_every", "checkpoint_minutes": "checkpoint_minutes", "skip_bad_boxes": "skip_bad_boxes",
    "ema_decay": "ema_decay", "scale_jitter": "scale_jitter", "assigner": "assigner", "threads": "num_threads",
    "cpu_bf16": "cpu_bf16", "optimizer": "optimizer", "weight_decay": "weight_decay", "schedule": "schedule",
    "hflip": "hflip", "steps": "steps", "warmup_iters": "warmup_iters", "p2": "with_p2", "head_convs": "num_convs",
    "focal_gamma": "focal_gamma",
    "c2_passthrough": "c2_passthrough",
}


def _build_config(build, **kwargs) -> TrainConfig:
    """Call `build`; a TrainConfig range error names the command-line flag, not the field."""
    try:
        return build(**kwargs)
    except ValueError as err:
        message = str(err)
        for dest, field in _TRAIN_FLAGS.items():
            message = message.replace(f"TrainConfig.{field} ", f"--{dest.replace('_', '-')} ")
        message = message.replace("--ema-decay must be None or", "--ema-decay must be 'off' or")  # the flag's word
        raise ValueError(message.replace("TrainConfig.classes ", "--classes ")) from None


def config_from_args(args) -> TrainConfig:
    """The TrainConfig that `python -m fcos_lib train` flags describe.

    A new run starts from the recipe (--recipe) and the course defaults; with --resume, from the
    checkpoint's own config, so only the flags given on the command line change anything (and
    fcos_lib.train.train refuses the changes that would alter the run).
    """
    from fcos_lib.checkpoint import load_checkpoint
    from fcos_lib.config import (
        FINE_TUNING, TrainConfig, adamw_changes, baseline_recipe, improved_recipe, optimizer_for, passthrough_for,
    )

    given = {field: getattr(args, dest) for dest, field in _TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    for field in ("scale_jitter", "steps"):
        if field in given:
            given[field] = tuple(given[field])
    if given.get("ema_decay") == "off":
        given["ema_decay"] = None
    if given.get("optimizer") == "auto":
        del given["optimizer"]  # the same as leaving the flag out: a new run picks by its length, below
    if args.classes is not None:
        given["classes"] = _parse_classes(args.classes)
    given.setdefault("num_threads", "auto")  # the library's own choice for this machine (fcos_lib.cpu_threads)
    if args.resume:
        saved = load_checkpoint(Path(args.out) / "last.pt")["config"]
        if args.recipe is not None:
            raise ValueError("--recipe cannot be combined with --resume: a resumed run keeps its own recipe")
        return _checked_steps(_build_config(TrainConfig(**saved).replace, **given), given)
    recipe = {"improved": improved_recipe, "baseline": baseline_recipe}[args.recipe or "improved"]()
    course = given.get("data") is None
    iters = given.get("iters", COURSE_DEFAULT_ITERS if course else FULL_DEFAULT_ITERS)
    in_memory = given.get("in_memory", course)
    pretrained = bool(given.get("pretrained_backbone"))
    if "optimizer" in given:
        optimizer = adamw_changes(iters) if given["optimizer"] == "adamw" else {}
    elif args.recipe in (None, "improved"):
        optimizer = optimizer_for(iters, pretrained)  # by the run's length (chapter 10)
    else:
        optimizer = {}  # the seed's baseline keeps its own SGD
    if args.recipe in (None, "improved") and not given.get("with_p2"):
        architecture = passthrough_for(iters, pretrained)  # by the run's length too (chapter 10)
    else:
        architecture = {}  # --p2 takes block1 for its own level; the seed's baseline has no passthrough
    defaults = {
        "iters": iters,
        "in_memory": in_memory,
        "num_workers": 0 if in_memory else recipe.num_workers,
        # The recipe's warm-up, shortened to a tenth of a short run; a recipe without one keeps none.
        "warmup_iters": min(recipe.warmup_iters, iters // 10),
        **optimizer,
        **architecture,
        # Fine-tuning keeps torchvision's cosine schedule, as chapter 09's voc_recipe does.
        **(FINE_TUNING if pretrained and args.recipe in (None, "improved") else {}),
    }
    return _checked_steps(_build_config(recipe.replace, **{**defaults, **given}), given)


def _checked_steps(cfg: TrainConfig, given: dict) -> TrainConfig:
    """--steps only means something with the step schedule: refuse it elsewhere rather than ignore it."""
    if "steps" in given and cfg.schedule != "step":
        raise ValueError(f"--steps sets where the step schedule cuts the rate, but this run's schedule is "
                         f"{cfg.schedule!r}: add --schedule step, or leave --steps out")
    return cfg


def _train(args) -> int:
    from fcos_lib.config import resolve_device
    from fcos_lib.distributed import (check_global_batch, check_sync_bn, join_process_group, leave_process_group,
                                      process_device, world_from_env)

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run, or replace it")
    cfg = config_from_args(args)
    world = world_from_env()  # started by torchrun, or one process
    device = process_device(resolve_device(cfg.device), world)
    check_global_batch(cfg.batch_size, world.size)  # before waiting for the other processes
    if args.sync_bn:
        check_sync_bn(device)
    join_process_group(world, device)
    try:
        return _train_in_world(args, cfg, world)
    finally:
        leave_process_group()


def _train_in_world(args, cfg: TrainConfig, world) -> int:
    from fcos_lib.distributed import run_on_main
    from fcos_lib.report import write_run_report
    from fcos_lib.train import preflight, train

    # Check everything that can be checked before spending minutes or hours on training: the run
    # folder, the device, both splits, every annotation and every image in them (process 0 alone).
    progress = sys.stderr.isatty() and world.is_main  # progress bars in a terminal, not in logs and pipes
    lines = run_on_main(world, preflight, cfg, resume=args.resume, overwrite=args.overwrite, progress=progress)
    verb = "resuming" if args.resume else "training"
    if world.is_main:
        for line in lines:
            print(line)
        processes = f" on {world.size} processes" if world.size > 1 else ""
        optimizer = {"sgd": "SGD", "adamw": "AdamW"}[cfg.optimizer]
        print(f"{verb} on {cfg.data or 'the course dataset'} for {cfg.iters} iterations{processes} "
              f"({optimizer}, lr {cfg.lr:g}, warm-up {cfg.warmup_iters}) -> {cfg.out}/last.pt")
    state = train(cfg, resume=args.resume, overwrite=args.overwrite, progress=progress, sync_bn=args.sync_bn)
    metrics = write_run_report(cfg, state, progress=progress)
    if metrics is not None:  # process 0
        _print_metrics(metrics)
        print(f"wrote {cfg.out}/metrics.json, loss_curve.png, detections.png")
    return 0


def _print_metrics(metrics: dict) -> None:
    from fcos_lib.evaluate import format_ap_table

    def fmt(value):  # None: no ground truth to score (null in the JSON), never -1
        return "n/a" if value is None else f"{value:.3f}"

    print(format_ap_table(metrics))
    print(f"mAP@0.5 = {fmt(metrics['map50'])}   mAP@[.5:.95] = {fmt(metrics['map'])}")


def _evaluate(args) -> int:
    import re
    from datetime import datetime, timezone

    from fcos_lib import __version__
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import resolve_device
    from fcos_lib.course_data import make_course_dataset
    from fcos_lib.data import VOCDataset
    from fcos_lib.evaluate import evaluate
    from fcos_lib.report import scalar_metrics
    from fcos_lib.voc import DatasetError

    # Everything that can fail is checked before the (long) evaluation: device, checkpoint,
    # the split and its annotations, and the output folder.
    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    root = Path(args.data) if args.data else make_course_dataset()
    image_size = state["config"]["image_size"]
    try:
        dataset = VOCDataset(root, args.split, class_names=state["class_names"], image_size=image_size)
    except DatasetError as err:
        others = [p for p in err.problems if p.kind == "unknown class"]
        if not others or len(others) != len(err.problems):
            raise
        # The data is not wrong: the checkpoint knows other classes. Say so, not "fix the annotation".
        first = others[0]
        raise DatasetError(
            f"{args.checkpoint} was trained on the classes {state['class_names']}, but {len(others)} annotation(s) "
            f"of split {args.split!r} name other classes (first: {Path(first.file).name}); evaluate on data with "
            "the checkpoint's classes, or train a model on these data's classes") from None
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    # Its own file per split: the run's metrics.json belongs to the training report.
    path = out / f"metrics_{re.sub(r'[^A-Za-z0-9_.-]', '_', args.split)}.json"

    metrics = evaluate(model, dataset, device=device, progress=True, nms_thresh=args.nms_thresh)
    _print_metrics(metrics)
    if metrics["voc_map50"] is None:
        print(f"note: split {args.split!r} of {root} has no objects to score (no non-difficult ground-truth box); "
              f"every AP is n/a (null in {path.name})", file=sys.stderr)
    record = scalar_metrics(
        metrics, split=args.split, data=str(Path(root).resolve()), image_size=image_size,
        checkpoint=str(Path(args.checkpoint).resolve()), nms_thresh=args.nms_thresh, fcos_lib_version=__version__,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return 0


def _check_classes(found, given: tuple[str, ...] | None, source: str) -> None:
    """ValueError when --classes was given and the model's class names differ."""
    if given is not None and tuple(found) != given:
        raise ValueError(f"{source} detects the classes {','.join(found)}, not --classes {','.join(given)}; "
                         "pass the model trained on those classes, or leave out --classes")


def _detect(args) -> int:
    from fcos_lib.inference import image_files

    # Bad paths, device, checkpoint or ONNX file stop here (exit 2), before any image is read.
    classes = _parse_classes(args.classes)
    files = image_files(args.images, exclude=args.out)
    if args.onnx is not None:
        results = _detect_onnx(args, classes, files)
    else:
        results = _detect_checkpoint(args, classes, files)
    json_path = Path(args.out) / "detections.json"
    for item in results["images"]:
        print(f"{item['image']}: {len(item['detections'])} detections -> {Path(args.out) / item['output']}")
    for item in results["failed"]:
        print(f"skipped {item['image']}: {item['error']}", file=sys.stderr)
    print(f"wrote {json_path} and {len(results['images'])} annotated images")
    if results["failed"]:
        print(f"{len(results['failed'])} of {len(files)} images failed; see {json_path}", file=sys.stderr)
        return 1
    return 0


def _detect_checkpoint(args, classes, files) -> dict:
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import resolve_device
    from fcos_lib.inference import detect_files

    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    _check_classes(state["class_names"], classes, args.checkpoint)
    return detect_files(model, files, args.out, class_names=state["class_names"],
                        image_size=state["config"]["image_size"], score_thresh=args.score_thresh,
                        nms_thresh=args.nms_thresh, device=device, progress=True)


def _detect_onnx(args, classes, files) -> dict:
    from fcos_lib.deploy import OnnxDetector, detect_files_onnx

    if args.device not in ("auto", "cpu"):
        raise ValueError(f"--device {args.device} cannot run --onnx, which runs on the CPU with onnxruntime; "
                         "leave out --device, or use --checkpoint")
    detector = OnnxDetector(args.onnx)
    _check_classes(detector.class_names, classes, args.onnx)
    return detect_files_onnx(detector, files, args.out, score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
                             progress=True)


def _export(args) -> int:
    from fcos_lib.deploy import export_onnx

    path = export_onnx(args.checkpoint, args.out)
    print(f"wrote {path} (run it with: python -m fcos_lib detect --onnx {path} IMAGE...)")
    return 0


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _terminate(signum, frame):
    """SIGTERM (a scheduler, `timeout`, `kill`) stops the command like Ctrl-C does."""
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from fcos_lib.checkpoint import CheckpointError
    from fcos_lib.distributed import StoppedOnMain
    from fcos_lib.train import worker_stop_signal
    from fcos_lib.voc import DatasetError

    # Under torchrun every process runs this; an error that all of them meet is said once, by process 0.
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    try:
        return {"train": _train, "evaluate": _evaluate, "detect": _detect, "export": _export}[args.command](args)
    except StoppedOnMain:  # process 0 failed a check it makes for all, and reported it
        return 2
    except (DatasetError, CheckpointError, ValueError, OSError, RuntimeError) as err:  # OSError: FileNotFoundError, ...
        signum = worker_stop_signal(err)
        if signum is not None:  # a signal to the process group reached a DataLoader worker first: a stop
            if rank == "0":
                print(_interrupted(err, signum, args), file=sys.stderr)
            return 128 + signum
        print(f"error: {err}" if rank == "0" else f"error (process {rank}): {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (see _terminate)
        signum = getattr(err, "signum", signal.SIGINT)
        if rank == "0":
            print(_interrupted(err, signum, args), file=sys.stderr)
        return 128 + signum


def _interrupted(err: BaseException, signum: int, args) -> str:
    if getattr(err, "iteration", None) is not None:  # fcos_lib.train.TrainingInterrupted: saved
        return str(err)
    if args.command == "train":
        return (f"interrupted by {signal.Signals(signum).name}; {args.out}/last.pt holds the last checkpoint "
                "saved, if any (continue with --resume)")
    return f"interrupted by {signal.Signals(signum).name}; {args.command} stopped"
