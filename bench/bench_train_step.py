"""Training-step benchmark: images/s at 224x224, batch 16, and where the step's time goes.

    python bench/bench_train_step.py [--device cpu|cuda] [--steps 8] [--batch-size 16] [--image-size 224]

One step = data loading (a batch from the DataLoader over the course dataset), target building
(fcos_build_targets), the network's forward, the loss (fcos_loss), backward, and the optimiser
step. The model's own forward is timed as a whole; target building and the loss are timed by
wrapping the two functions FCOS.forward calls, so what is measured is the library's real step.
Goal: target building + loss under 10 % of the step.

The peer: torchvision's `FCOS` class on the same trunk and FPN width (fcos_lib.experiments.build_peer,
chapter 10's peer: p3-p5, 64 channels), on the same batches, one step of each in turn so that a machine whose speed
drifts slows both alike. It prints fcos_lib's images/s as a ratio to the peer's (issue 14's goal
on a CPU: at least 1.3x). `--no-peer` leaves it out.

Trials (issue 14): `--channels-last`, `--bf16` (torch.autocast with bfloat16, on the CPU too:
AMX / AVX512-BF16 where the processor has them) and `--compile` (torch.compile) build a second
fcos_lib model with that change, the same initial weights, stepped on the same batches in turn
with the default one, and print its images/s as a ratio to the default's, and both losses.
`--p2` (chapter 10) builds the second model with the FPN level p2 (stride 4), and `--num-convs N`
with N 3x3 convolutions in each head stem (4, the paper's, by default): other weights, since
they have other shapes. The two combine: `--p2 --num-convs 2` is p2 with a lighter head.
`--c2-passthrough` (chapter 10) builds it with c2's pixels stacked into p3 instead of p2.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from fcos_lib import model as model_module
from fcos_lib.config import improved_recipe
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.model import FCOS
from fcos_lib.train import build_optimizer

from _timing import device_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("--no-peer", action="store_true", help="do not time torchvision's FCOS")
    parser.add_argument("--channels-last", action="store_true", help="trial: channels-last memory format")
    parser.add_argument("--bf16", action="store_true", help="trial: bfloat16 autocast (CPU or CUDA)")
    parser.add_argument("--compile", action="store_true", help="trial: torch.compile the model")
    parser.add_argument("--p2", action="store_true", help="trial: the FPN level p2 (stride 4) added")
    parser.add_argument("--c2-passthrough", action="store_true",
                        help="trial: c2's 2x2 blocks of pixels stacked into p3 (chapter 10), not with --p2")
    parser.add_argument("--num-convs", type=int, default=None, metavar="N",
                        help="trial: N 3x3 convolutions in each head stem instead of 4")
    args = parser.parse_args()
    if args.p2 and args.c2_passthrough:
        parser.error("--p2 and --c2-passthrough are two uses of block1; pick one")
    device = torch.device(args.device)
    sync = device_sync(device)

    timings: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn):
        def wrapper(*a, **kw):
            sync()
            tic = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            timings[name].append(time.perf_counter() - tic)
            return out
        return wrapper

    model_module.fcos_build_targets = timed("targets", model_module.fcos_build_targets)
    model_module.fcos_loss = timed("loss", model_module.fcos_loss)

    dataset = VOCDataset(make_course_dataset(), "train", image_size=args.image_size)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                              collate_fn=collate_detection, num_workers=0,
                                              generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    model = FCOS(len(dataset.class_names)).to(device).train()
    optimizer = build_optimizer(model, improved_recipe())
    peer_step = None if args.no_peer else make_peer_step(len(dataset.class_names), args.image_size, device)
    any_trial = (args.channels_last or args.bf16 or args.compile or args.p2 or args.c2_passthrough
                 or args.num_convs is not None)
    trial_step = make_trial_step(model, args, device) if any_trial else None
    steps, peer_steps, trial_steps, losses_seen = [], [], [], []
    for step in range(2 + args.steps):
        if step == 2:
            timings.clear()
        sync()
        t0 = time.perf_counter()
        images, gt_boxes, _ = next(loader)
        images, gt_boxes = images.to(device), gt_boxes.to(device)
        sync()
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp and device.type == "cuda"):
            losses = model(images, gt_boxes)
        sync()
        t2 = time.perf_counter()
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if peer_step is not None:
            peer_seconds = peer_step(images, gt_boxes, sync)
        if trial_step is not None:
            trial_seconds, trial_loss = trial_step(images, gt_boxes, sync)
        if step >= 2:
            if trial_step is not None:
                trial_steps.append(trial_seconds)
                losses_seen.append((float(loss), trial_loss))
            if peer_step is not None:
                peer_steps.append(peer_seconds)
            timings["data"].append(t1 - t0)
            timings["forward (incl. targets + loss)"].append(t2 - t1)
            timings["backward + step"].append(t3 - t2)
            steps.append(t3 - t0)

    med = {k: statistics.median(v) for k, v in timings.items()}
    step = statistics.median(steps)
    network_forward = med["forward (incl. targets + loss)"] - med["targets"] - med["loss"]
    print(f"device {device}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.steps} steps")
    print(f"step: {step * 1000:.0f} ms -> {args.batch_size / step:.1f} images/s")
    rows = [("data loading", med["data"]), ("target building", med["targets"]),
            ("network forward", network_forward), ("loss", med["loss"]), ("backward + optimiser", med["backward + step"])]
    for name, seconds in rows:
        print(f"  {name:22s} {seconds * 1000:8.1f} ms  {100 * seconds / step:5.1f} %")
    share = (med["targets"] + med["loss"]) / step
    print(f"target building + loss: {100 * share:.1f} % of the step (goal < 10 %: {'met' if share < 0.10 else 'NOT met'})")
    if peer_steps:
        peer = statistics.median(peer_steps)
        ours_compute = step - med["data"]  # the peer gets its batch ready-made: compare the steps alone
        print(f"torchvision FCOS (same trunk, width 64, same batches): {peer * 1000:.0f} ms per step -> "
              f"{args.batch_size / peer:.1f} images/s")
        print(f"fcos_lib / torchvision images/s, step without data loading: {peer / ours_compute:.2f}x "
              f"(goal on a CPU: >= 1.3x)")
    if trial_steps:
        trial = statistics.median(trial_steps)
        name = "+".join(n for n, on in (("channels-last", args.channels_last), ("bf16", args.bf16),
                                        ("compile", args.compile), ("p2", args.p2),
                                        ("c2 passthrough", args.c2_passthrough),
                                        (f"{args.num_convs} head convs", args.num_convs is not None)) if on)
        print(f"trial {name}: {trial * 1000:.0f} ms per step -> {args.batch_size / trial:.1f} images/s, "
              f"{(step - med['data']) / trial:.2f}x the default step without data loading")
        print("  losses default / trial, last steps: " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in losses_seen[-3:]))
        if peer_steps:
            print(f"trial {name} / torchvision images/s, step without data loading: "
                  f"{statistics.median(peer_steps) / trial:.2f}x (goal on a CPU: >= 1.3x)")


def make_trial_step(reference: FCOS, args, device: torch.device):
    """One training step of a copy of `reference` with the trial changes: f(images, gt_boxes, sync) -> (s, loss)."""
    import copy

    if args.p2 or args.c2_passthrough or args.num_convs is not None:
        torch.manual_seed(0)
        num_convs = 4 if args.num_convs is None else args.num_convs
        model = FCOS(reference.num_classes, with_p2=args.p2, c2_passthrough=args.c2_passthrough,
                     num_convs=num_convs).to(device).train()
    else:
        model = copy.deepcopy(reference)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, improved_recipe())
    forward = torch.compile(model) if args.compile else model

    def step(images, gt_boxes, sync):
        sync()
        tic = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            losses = forward(images.contiguous(memory_format=memory_format), gt_boxes)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - tic, loss.item()  # after the clock stops: the sync it costs is not timed

    return step


def make_peer_step(num_classes: int, image_size: int, device: torch.device):
    """One training step of torchvision's FCOS, timed: f(images, gt_boxes, sync) -> seconds."""
    from fcos_lib.experiments import build_peer

    torch.manual_seed(0)
    peer = build_peer(num_classes, image_size).to(device).train()
    optimizer = build_optimizer(peer, improved_recipe())

    def step(images, gt_boxes, sync) -> float:
        sync()
        tic = time.perf_counter()
        losses = peer(list(images), [{"boxes": rows[rows[:, 4] >= 0, :4], "labels": rows[rows[:, 4] >= 0, 4].long()}
                                     for rows in gt_boxes])
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - tic

    return step


if __name__ == "__main__":
    main()
