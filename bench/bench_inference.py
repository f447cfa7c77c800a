"""Benchmark: FCOS inference throughput, batched post-processing vs a per-image loop, our NMS vs torchvision's.

Chapters 07-08 of the course. Three measurements, all from one run, each the median of repeats:

1. images/s of the model (FCOS, RegNetX-400MF + FPN + head, 20 classes) on a batch of 16
   images at 224 x 224, in eval mode under no_grad: the network alone, and the network plus
   the batched post-processing (`fcos_lib.inference.detect`).
2. post-processing of that batch's predictions: `fcos_postprocess` (the whole batch at once, one
   batched_nms) vs `fcos_postprocess_per_image` (torchvision's loop over images and levels).
   The script first checks that both give the same detections (scores to 1e-5: the sigmoid of a
   (B, L, C) tensor and of an (L_l, C) slice may round differently in the last bit). The model is untrained, so every
   (location, class) scores about sqrt(0.01 * 0.5) = 0.07 > score_thresh 0.05: each level hits
   its top-k and NMS sees about 2,000 candidates per image, a worst case for post-processing.
3. the chapter's NMS (`fcos_lib.nms.nms`: IoU matrix once, a loop over kept boxes) vs
   `torchvision.ops.nms` (compiled) on 5,000 random boxes, after checking they keep the same ones.

    .venv/bin/python bench/bench_inference.py                 # CPU
    .venv/bin/python bench/bench_inference.py --device cuda   # the same code on CUDA tensors

Torch runs with one CPU thread unless `--threads` says otherwise (timings on a busy machine are
erratic with more; `--threads 0` keeps torch's default).
"""
from __future__ import annotations

import argparse

import torch
import torchvision

from fcos_lib.inference import detect, fcos_postprocess, fcos_postprocess_per_image, same_detections
from fcos_lib.model import FCOS
from fcos_lib.nms import nms

from _timing import device_sync, median_seconds, median_seconds_pair


def random_boxes(K: int, device, seed: int = 0, size: float = 1000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """K boxes (x1, y1, x2, y2) with sides 1..60 px spread over size x size px, and K random scores."""
    g = torch.Generator().manual_seed(seed)
    corner = size * torch.rand(K, 2, generator=g)
    boxes = torch.cat([corner, corner + 1 + 59 * torch.rand(K, 2, generator=g)], dim=1)  # (K, 4)
    return boxes.to(device), torch.rand(K, generator=g).to(device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--nms-boxes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = device_sync(device)

    torch.manual_seed(0)
    model = FCOS(num_classes=args.num_classes).to(device).eval()
    S = args.image_size
    images = torch.rand(args.batch, 3, S, S, device=device)

    # 1. Throughput of the network, and of network + batched post-processing.
    with torch.no_grad():
        for _ in range(2):  # warm-up
            predictions = model(images)
        forward_s = median_seconds(lambda: model(images), args.repeats, sync)
    detect_s = median_seconds(lambda: detect(model, images), args.repeats, sync)

    # 2. Post-processing: batched vs per-image loop, same detections first. Two score regimes:
    #    the untrained model (every candidate passes 0.05: a worst case) and "confident" class
    #    logits ~ N(-8, 1.2), where ~1% of (location, class) pairs pass, as for a trained model.
    g = torch.Generator().manual_seed(0)
    confident = predictions._replace(
        cls_logits=(torch.randn(predictions.cls_logits.shape, generator=g) * 1.2 - 8).to(device))
    postprocess = {}
    for name, preds in {"untrained (worst case)": predictions, "confident (~1% pass)": confident}.items():
        batched = fcos_postprocess(preds)
        assert same_detections(batched, fcos_postprocess_per_image(preds)), f"{name}: batched and per-image differ"
        scores = torch.sqrt(torch.sigmoid(preds.cls_logits) * torch.sigmoid(preds.ctr_logits))
        postprocess[name] = (
            int((scores > 0.05).sum()) / args.batch,
            *median_seconds_pair(lambda: fcos_postprocess(preds), lambda: fcos_postprocess_per_image(preds),
                                 args.repeats, sync),
            sum(len(d["scores"]) for d in batched) / args.batch,
        )

    # 3. NMS on K random boxes: the chapter's vs torchvision's, same kept boxes first.
    boxes, scores = random_boxes(args.nms_boxes, device)
    ours_keep, tv_keep = nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(ours_keep, tv_keep), "the chapter's NMS and torchvision's keep different boxes"
    ours_s, tv_s = median_seconds_pair(lambda: nms(boxes, scores, 0.5),
                                       lambda: torchvision.ops.nms(boxes, scores, 0.5), args.repeats, sync)

    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {args.repeats} repeats (medians)")
    print(f"model: FCOS({args.num_classes} classes, F=64, 4 head convs), batch {args.batch} x 3 x {S} x {S}, "
          "eval mode, no_grad")
    print(f"  network only:                    {forward_s * 1e3:8.1f} ms  = {args.batch / forward_s:7.1f} images/s")
    print(f"  network + batched post-process:  {detect_s * 1e3:8.1f} ms  = {args.batch / detect_s:7.1f} images/s")
    print("post-processing of the batch (score 0.05, top-1000 per level, NMS 0.6, 100 per image; "
          "batched and per-image give the same detections)")
    for name, (passing, batched_s, looped_s, kept) in postprocess.items():
        print(f"  {name}: {passing:.0f} (location, class) pairs per image pass, {kept:.0f} detections per image")
        print(f"    batched (fcos_postprocess):    {batched_s * 1e3:8.1f} ms")
        print(f"    per-image loop:                {looped_s * 1e3:8.1f} ms  -> batched is {looped_s / batched_s:.2f}x faster")
    print(f"NMS on {args.nms_boxes} boxes, IoU 0.5 ({len(tv_keep)} kept by both)")
    print(f"  chapter's nms:                   {ours_s * 1e3:8.1f} ms")
    print(f"  torchvision.ops.nms:             {tv_s * 1e3:8.1f} ms  -> torchvision is {ours_s / tv_s:.1f}x faster")


if __name__ == "__main__":
    main()
