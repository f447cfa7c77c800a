"""Count the host-device synchronisations in one training step, and say where each comes from.

    python bench/bench_syncs.py [--steps 3] [--batch-size 16] [--image-size 224]

On a GPU every operation that needs a value on the host (`.item()`, `bool(tensor)`, boolean-mask
indexing, `nonzero`, ...) waits for all the work queued before it: the GPU's queue drains and the
next kernels start late. They can be counted on the CPU too, because they dispatch the same aten
operators there. A TorchDispatchMode records every operator call of one training step exactly as
`fcos_lib.train.train` runs it (forward with targets and losses, the finite-loss check, backward,
gradient clipping, the optimiser, the logging of the losses; and the batch: gathered from the
split on the device, flipped and converted there) and counts the synchronising ones,
grouped by the fcos_lib line that called them.

Goal (issue 14): at most one per step outside logging steps.
"""
from __future__ import annotations

import argparse
import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms.v2 import functional as F

from fcos_lib.config import improved_recipe
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset
from fcos_lib.model import FCOS, check_finite_losses
from fcos_lib.train import (LOG_EVERY, LOSS_NAMES, DeviceBatches, IterationBatchSampler, build_optimizer,
                            random_horizontal_flip)

# aten operators whose result size or value the host must know before it can go on.
SYNCING = {
    "aten._local_scalar_dense.default",  # .item(), bool(t), int(t), float(t)
    "aten.nonzero.default", "aten.nonzero_static.default",  # boolean-mask indexing, torch.where(cond)
    "aten.masked_select.default", "aten.unique.default", "aten._unique2.default", "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor", "aten.equal.default", "aten.is_nonzero.default",
}
# Indexing with a boolean mask: the result's size depends on the mask's values. On the CPU the
# kernel computes the nonzero positions inside, so the dispatcher does not see a nonzero call.
MASK_INDEXING = {"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default", "aten._index_put_impl_.default"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in MASK_INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                         for i in (args[1] if len(args) > 1 else ()) or ()):
            name = name + " (boolean mask)"  # the kernel runs nonzero inside: a sync on a GPU
        if name in SYNCING or name.endswith("(boolean mask)"):
            caller = next((f for f in reversed(traceback.extract_stack()[:-1])
                           if "fcos_lib" in f.filename or "torch/optim" in f.filename
                           or "clip_grad" in f.filename or "bench_syncs" in f.filename), None)
            where = f"{caller.filename.split('/')[-1]}:{caller.lineno} {caller.line.strip()[:70]}" if caller else "?"
            self.calls[(name.removeprefix("aten.").removesuffix(".default"), where)] += 1
        return func(*args, **(kwargs or {}))


def training_step(model, optimizer, images, gt_boxes, cfg) -> dict:
    """fcos_lib.train.train's step on the CPU (no GradScaler: it is disabled there)."""
    losses = model(images, gt_boxes, check_inputs=False)  # as train(): the boxes were checked when read
    check_finite_losses(losses)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="counted steps (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    cfg = improved_recipe()
    # The batches as train() makes them with in_memory: the split on the device as uint8, a batch
    # gathered by index, flipped and converted to float there. All of it is counted.
    dataset = VOCDataset(make_course_dataset(), "train", image_size=args.image_size, image_dtype=torch.uint8)
    resident = DeviceBatches(dataset, torch.device("cpu"))
    batches = iter(IterationBatchSampler(len(dataset), args.batch_size, 1 + args.steps, seed=0))
    flip_generator = torch.Generator().manual_seed(1)

    def next_batch():
        images, gt_boxes = resident.batch(next(batches))
        images, gt_boxes = random_horizontal_flip(images, gt_boxes, flip_generator)
        return F.to_dtype(images, torch.float32, scale=True), gt_boxes

    torch.manual_seed(0)
    model = FCOS(len(dataset.class_names)).train()
    optimizer = build_optimizer(model, cfg)
    images, gt_boxes = next_batch()
    training_step(model, optimizer, images, gt_boxes, cfg)  # warm-up: lazy initialisation is not a step

    step_counter, log_counter = SyncCounter(), SyncCounter()
    pending = []
    for _ in range(args.steps):
        with step_counter:
            images, gt_boxes = next_batch()
            losses = training_step(model, optimizer, images, gt_boxes, cfg)
            pending.append(torch.stack([losses[k].detach().float() for k in LOSS_NAMES]))
    with log_counter:  # what train() does every LOG_EVERY steps: the pending losses to the host at once
        torch.stack(pending).tolist()  # a device-to-host copy: one sync on a GPU (no aten call on the CPU)

    per_step = sum(step_counter.calls.values()) / args.steps
    print(f"batch {args.batch_size}, {args.image_size} px, {args.steps} steps counted")
    print(f"synchronising operators per training step: {per_step:g} (goal: at most 1), plus one "
          f"device-to-host copy every {LOG_EVERY} steps for the logged losses")
    for (op, where), n in sorted({**step_counter.calls, **log_counter.calls}.items(), key=lambda kv: -kv[1]):
        print(f"  {n / args.steps:5g} x {op:22s} {where}")
    print("The one left by design: check_finite_losses, so that a NaN or infinite loss stops training "
          "before its gradient reaches the weights.")


if __name__ == "__main__":
    main()
