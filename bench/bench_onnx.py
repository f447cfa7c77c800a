"""Benchmark: the ONNX path (fcos_lib.deploy.OnnxDetector) vs the PyTorch path (fcos_lib.inference.detect), on the CPU.

Both paths run the same RGB images (the course's generated val images, 224-320 px) with the same
number of CPU threads (torch.set_num_threads and onnxruntime's intra_op_num_threads), in batches,
in one run. Two measurements, each the median of repeats, the two paths alternating so that a
busy machine slows both alike:

1. the network alone on the same letterboxed uint8 batches: model(images / 255) under no_grad
   vs the ONNX file run by onnxruntime (which scales the uint8 input itself);
2. the whole path from PIL images to detections in each image's own pixels: letterbox (torchvision)
   + model + detect's batched post-processing vs OnnxDetector.detect (numpy letterbox, onnxruntime,
   numpy post-processing).

The script first checks that both paths find the same number of detections with the same labels
in every image. Without --checkpoint the model is an untrained FCOS (the recipe's architecture)
saved to a temporary checkpoint; untrained, every (location, class) pair scores about 0.07, so at
--score-thresh 0.05 each image keeps max_detections (100) after NMS over thousands of candidates:
a worst case for the post-processing. The export takes some seconds and is not timed.

    .venv/bin/python bench/bench_onnx.py                                    # untrained, 224 px, 20 classes
    .venv/bin/python bench/bench_onnx.py --checkpoint runs/fcos/last.pt --score-thresh 0.3

Needs the export extra: pip install -e '.[export]'.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from fcos_lib.checkpoint import build_model, model_from_checkpoint, save_checkpoint
from fcos_lib.config import TrainConfig
from fcos_lib.course_data import make_course_dataset
from fcos_lib.deploy import OnnxDetector, export_onnx
from fcos_lib.inference import detect
from fcos_lib.transforms import letterbox

from _timing import median_seconds_pair


def untrained_checkpoint(path: Path, image_size: int, num_classes: int) -> Path:
    """Save an untrained FCOS of the default config (seed 0) as a checkpoint at `path`."""
    cfg = TrainConfig(image_size=image_size)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes, load_pretrained_weights=False)
    names = [f"class{k}" for k in range(num_classes)]
    return save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                                  "class_names": names, "iteration": 0})


def batches(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a last.pt (default: an untrained model, see --image-size, --num-classes)")
    parser.add_argument("--image-size", type=int, default=224, help="without --checkpoint (default: 224)")
    parser.add_argument("--num-classes", type=int, default=20, help="without --checkpoint (default: 20)")
    parser.add_argument("--images", type=int, default=16, help="course val images (default: 16)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument("--score-thresh", type=float, default=0.05, help="(default: 0.05, the library's)")
    parser.add_argument("--repeats", type=int, default=5, help="(default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of both paths (default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(
            tmp / "last.pt", args.image_size, args.num_classes)
        model, state = model_from_checkpoint(checkpoint, "cpu")
        detector = OnnxDetector(export_onnx(checkpoint, tmp / "model.onnx"), num_threads=args.threads)
        data = make_course_dataset(tmp / "voc", num_train=1, num_val=args.images)
        ids = (data / "ImageSets" / "Main" / "val.txt").read_text().split()
        images = [Image.open(data / "JPEGImages" / f"{i}.jpg").convert("RGB") for i in ids]
    S = detector.image_size
    groups = batches(images, args.batch)
    kwargs = {"score_thresh": args.score_thresh}

    def torch_path():
        found = []
        for group in groups:
            tensors, metas = zip(*(letterbox(image, S) for image in group))
            found += detect(model, torch.stack(tensors), list(metas), **kwargs)
        return found

    def onnx_path():
        return [d for group in groups for d in detector.detect(group, **kwargs)]

    for a, b in zip(torch_path(), onnx_path()):  # the same detections first
        assert Counter(a["labels"].tolist()) == Counter(b["labels"].tolist()), "the two paths detect different objects"
    found = sum(len(d["scores"]) for d in onnx_path()) / len(images)

    pixels = [np.stack([detector.letterbox(image)[0] for image in group]) for group in groups]
    as_float = [torch.from_numpy(p).float() / 255 for p in pixels]

    def torch_network():
        with torch.no_grad():
            for batch in as_float:
                model(batch)

    def onnx_network():
        for batch in pixels:
            detector.predict(batch)

    torch_network()  # warm-up
    onnx_network()
    no_sync = lambda: None  # noqa: E731  the CPU: nothing queued
    network = median_seconds_pair(torch_network, onnx_network, args.repeats, no_sync)
    whole = median_seconds_pair(torch_path, onnx_path, args.repeats, no_sync)

    n = len(images)
    print(f"CPU, {args.threads} thread(s) for both, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.repeats} repeats (medians)")
    print(f"model: {checkpoint if args.checkpoint else 'untrained FCOS (default config)'}, "
          f"{len(detector.class_names)} classes, {S} px input; {n} course val images in batches of {args.batch}; "
          f"score > {args.score_thresh}: {found:.1f} detections per image, the same in both paths")
    for name, (torch_s, onnx_s) in {"network alone": network, "whole path (letterbox to boxes)": whole}.items():
        print(f"  {name}:")
        print(f"    PyTorch:  {n / torch_s:8.1f} images/s")
        print(f"    ONNX:     {n / onnx_s:8.1f} images/s  "
              f"-> ONNX / PyTorch = {torch_s / onnx_s:.2f}x")


if __name__ == "__main__":
    main()
