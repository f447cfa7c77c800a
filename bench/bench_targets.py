"""Benchmark: FCOS target building, vectorised (fcos_lib.targets) vs a per-location Python loop.

Chapters 03-06 of the course. Target building = locations + matching + deltas + centerness for
a batch of 16 images at 224 x 224 with about 6 random boxes each (L = 784 + 196 + 49 = 1029
locations per image). Both versions run in the same process on the same batch; the script
first checks that they produce the same targets, then prints the median time of several
repeats and the ratio.

    .venv/bin/python bench/bench_targets.py                 # CPU
    .venv/bin/python bench/bench_targets.py --device cuda   # the same code on CUDA tensors

Both versions run with one CPU thread unless `--threads` says otherwise (see its help).

The loop is slow, so by default it runs on the first 2 images only and its time is scaled
linearly to 16 (it is linear in the number of images: an independent loop per image); the
output says so. `--loop-images 16` measures it on the whole batch.
"""
from __future__ import annotations

import argparse
import math

import torch

from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.targets import FCOSTargets, fcos_build_targets

from _timing import device_sync, median_seconds

STRIDES = {"p3": 8, "p4": 16, "p5": 32}
SCALE_RANGES = {"p3": (0.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, math.inf)}


# ---------------------------------------------------------------------------------------------
# NAIVE VERSION, for comparison only: one location at a time, the way the chapters first
# explain the rules (and the way the seed blog computes deltas and centerness, ERRATA 5): a
# Python loop over every location, small tensors built one location at a time.
# ---------------------------------------------------------------------------------------------
def naive_build_targets(image_size, gt_boxes, center_sampling_radius=None) -> FCOSTargets:
    device, dtype = gt_boxes.device, gt_boxes.dtype
    H, W = image_size
    matched_all, deltas_all, centerness_all = [], [], []
    for gt in gt_boxes:  # one image: (N, 5)
        boxes = gt[gt[:, 4] >= 0]  # real rows
        for level, stride in STRIDES.items():
            lower, upper = SCALE_RANGES[level]
            for h in range(H // stride):
                for w in range(W // stride):
                    # location of cell (h, w): x from the column, y from the row
                    x = torch.tensor((w + 0.5) * stride, dtype=dtype, device=device)
                    y = torch.tensor((h + 0.5) * stride, dtype=dtype, device=device)
                    best, best_area = None, None
                    for box in boxes:
                        ltrb = torch.stack([x - box[0], y - box[1], box[2] - x, box[3] - y])
                        if ltrb.min() <= 0 or not lower < ltrb.max() < upper:
                            continue
                        if center_sampling_radius is not None:
                            centre = (box[:2] + box[2:4]) / 2
                            if torch.maximum((x - centre[0]).abs(), (y - centre[1]).abs()) >= center_sampling_radius * stride:
                                continue
                        area = (box[2] - box[0]) * (box[3] - box[1])
                        if best is None or area < best_area:
                            best, best_area = box, area
                    if best is None:
                        matched_all.append(torch.full((5,), -1.0, dtype=dtype, device=device))
                        deltas_all.append(torch.full((4,), -1.0, dtype=dtype, device=device))
                        centerness_all.append(torch.tensor(-1.0, dtype=dtype, device=device))
                        continue
                    d = torch.stack([x - best[0], y - best[1], best[2] - x, best[3] - y]) / stride
                    matched_all.append(best)
                    deltas_all.append(d)
                    centerness_all.append(torch.sqrt(torch.minimum(d[0], d[2]) / torch.maximum(d[0], d[2])
                                                     * torch.minimum(d[1], d[3]) / torch.maximum(d[1], d[3])))
    B = gt_boxes.shape[0]
    return FCOSTargets(torch.stack(matched_all).view(B, -1, 5), torch.stack(deltas_all).view(B, -1, 4),
                       torch.stack(centerness_all).view(B, -1))


# ---------------------------------------------------------------------------------------------
# VECTORISED VERSION: the course library, locations included in the timing.
# ---------------------------------------------------------------------------------------------
def vectorised_build_targets(image_size, gt_boxes, center_sampling_radius=None) -> FCOSTargets:
    H, W = image_size
    shapes = {level: (H // s, W // s) for level, s in STRIDES.items()}
    locations = get_fpn_location_coords(shapes, STRIDES, dtype=gt_boxes.dtype, device=gt_boxes.device)
    return fcos_build_targets(locations, STRIDES, gt_boxes, center_sampling_radius)


def random_batch(B, image_size, boxes_per_image, device, seed=0):
    """(B, N, 5) boxes of 8 to 200 px, about `boxes_per_image` per image (some padding rows)."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_size
    N = boxes_per_image + 2
    centre = torch.rand(B, N, 2, generator=g) * torch.tensor([W, H])
    size = torch.rand(B, N, 2, generator=g) * 192 + 8
    x1y1 = (centre - size / 2).clamp(min=0)
    x2y2 = torch.minimum(centre + size / 2, torch.tensor([float(W), float(H)]))
    gt = torch.cat([x1y1, x2y2, torch.randint(0, 20, (B, N, 1), generator=g).float()], dim=-1)
    num_real = torch.randint(boxes_per_image - 2, boxes_per_image + 3, (B,), generator=g)  # 4..8, mean 6
    for b in range(B):
        gt[b, num_real[b]:] = -1
    return gt.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--boxes", type=int, default=6, help="mean real boxes per image")
    parser.add_argument("--loop-images", type=int, default=2, help="images the naive loop is timed on")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the loop (the vectorised path gets 10x)")
    parser.add_argument("--center-sampling-radius", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both versions (0: torch's default). Default 1: the "
                             "tensors here are ~100k elements, extra threads gain nothing, and on a busy "
                             "machine they make CPU timings erratic (threads waiting for each other)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = device_sync(device)
    torch.manual_seed(0)
    image_size = (args.image_size, args.image_size)
    gt = random_batch(args.batch, image_size, args.boxes, device)
    loop_images = min(args.loop_images, args.batch)
    radius = args.center_sampling_radius

    # Same targets first (on the images the loop is timed on).
    fast = vectorised_build_targets(image_size, gt[:loop_images], radius)
    slow = naive_build_targets(image_size, gt[:loop_images], radius)
    assert torch.equal(fast.matched_boxes, slow.matched_boxes), "matched boxes differ"
    assert torch.allclose(fast.deltas, slow.deltas) and torch.allclose(fast.centerness, slow.centerness)
    assert fast.deltas.device.type == device.type and fast.deltas.dtype == gt.dtype

    for _ in range(3):  # warm-up (allocator, CUDA kernels)
        vectorised_build_targets(image_size, gt, radius)
    fast_s = median_seconds(lambda: vectorised_build_targets(image_size, gt, radius), 10 * args.repeats, sync)
    loop_s = median_seconds(lambda: naive_build_targets(image_size, gt[:loop_images], radius), args.repeats, sync)
    loop_full_s = loop_s * args.batch / loop_images

    L = sum((args.image_size // s) ** 2 for s in STRIDES.values())
    real = int((gt[..., 4] >= 0).sum())
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"batch: {args.batch} images {args.image_size}x{args.image_size}, L = {L} locations each, "
          f"{real} real boxes ({real / args.batch:.1f} per image), center sampling radius {radius}")
    print("both versions give the same targets: yes")
    print(f"vectorised (fcos_build_targets, incl. locations): median {fast_s * 1e3:.2f} ms "
          f"for {args.batch} images ({10 * args.repeats} repeats)")
    scaled = f", scaled x{args.batch / loop_images:g} from {loop_images} images" if loop_images != args.batch else ""
    print(f"naive per-location loop: median {loop_s * 1e3:.0f} ms on {loop_images} images ({args.repeats} repeats)"
          f" -> {loop_full_s * 1e3:.0f} ms for {args.batch} images{scaled}")
    print(f"speed-up: {loop_full_s / fast_s:.0f}x")


if __name__ == "__main__":
    main()
