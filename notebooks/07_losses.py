# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Losses, and the full FCOS model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/07_losses.ipynb)
#
# Chapters 01–06 built every piece: features, the head's raw outputs, the locations, and for
# every location its target (matched box, LTRB deltas, centerness). This chapter turns
# "prediction vs target" into three numbers the optimiser can push down (FCOS, Tian et al.
# 2019, §3.1 eq. 2 and §3.3):
#
# - **`loss_cls`**: the sigmoid **focal loss** on the class logits, at *every* location;
# - **`loss_box`**: a box loss (**GIoU** or **L1**) at the *foreground* locations only;
# - **`loss_ctr`**: binary cross-entropy on the centerness logit, *foreground* only;
#
# each summed over the batch and divided by the number of foreground locations. Then we
# assemble the whole detector as one `nn.Module`, `FCOS`, and check that it can learn by
# overfitting a handful of images.

# %%
# On Colab, install the course library at the version this notebook was written for.
# Written by `make colab` from [tool.fcos-course] in pyproject.toml: edit there, not here.
import subprocess, sys
if "google.colab" in sys.modules:
    PACKAGE = "fcos-lib @ git+https://github.com/fcos-course/fcos-from-scratch@v0.1.0"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:])
        raise SystemExit(
            f"Could not install {PACKAGE} (pip's last lines are above). Fix: make sure the runtime has "
            "internet and the repository and tag exist, then Runtime > Restart session and run this cell "
            "again. Without fcos_lib the chapter stops at its first import.")

# %%
#| default_exp losses

# %%
# %matplotlib inline
import time

import matplotlib.pyplot as plt
import torch
import torchvision
from torchvision.models.detection.fcos import FCOSHead as TorchvisionFCOSHead

from fcos_lib.checks import exercise
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.targets import fcos_build_targets, strides_per_location

_ = torch.manual_seed(0)

# %% [markdown]
# ## Why a focal loss
#
# At 224 x 224 the three levels have 28·28 + 14·14 + 7·7 = **1029 locations**, and each makes
# `C` yes/no decisions. An image with two objects has a few dozen foreground locations; the
# rest are background. With plain binary cross-entropy, the thousands of *easy* negatives
# (probability of "object" already ≈ 0) each add a little loss, and together they drown the
# few positives.
#
# The focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection", §3) multiplies
# the cross-entropy by `(1 - p_t)^γ`, where `p_t` is the probability the model gives to the
# *right* answer. A location that is already right (`p_t` → 1) contributes almost nothing;
# a wrong one keeps nearly its whole loss. `α` then weights positives (0.25) against
# negatives (0.75). With `γ = 2, α = 0.25` (the paper's values, kept by FCOS):
#
# `FL(p_t) = -α_t (1 - p_t)^γ log(p_t)`.
#
# The picture: the loss against `p_t` for a few `γ`. At `p_t = 0.9` (an easy example), `γ = 2`
# cuts the loss 100 times (`(1 - 0.9)^2 = 0.01`).
#
# `γ` stays a knob: `fcos_loss(..., focal_gamma=)`, `FCOS(focal_gamma=)` and `--focal-gamma` on the
# command line (2 by default). Chapter 10 measures other values.

# %%
p_t = torch.linspace(0.01, 1, 200)
fig, ax = plt.subplots(figsize=(5, 3.5))
for gamma in (0, 0.5, 1, 2, 5):
    _ = ax.plot(p_t, -(1 - p_t) ** gamma * torch.log(p_t), label=f"γ = {gamma}" + (" (cross-entropy)" if gamma == 0 else ""))
ax.set_xlabel("p_t, probability of the right answer")
ax.set_ylabel("loss (α left out)")
ax.legend()
plt.show()

# %%
#| export
"""FCOS losses: focal loss on classes, GIoU or L1 on boxes, BCE on centerness.

Chapter 07 of the course (notebooks/07_losses.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.1 eq. 2
  (focal loss + IoU loss, normalised by the number of positive locations) and §3.3
  (centerness trained with binary cross-entropy on positive locations).
- Focal loss: Lin et al. 2017, "Focal Loss for Dense Object Detection", §3 (alpha = 0.25, gamma = 2).
- GIoU: Rezatofighi et al. 2019, "Generalized Intersection over Union: A Metric and a Loss for
  Bounding Box Regression", Alg. 2. The later FCOS ("FCOS: A simple and strong anchor-free object
  detector", Tian et al. 2020) and torchvision's FCOS use GIoU on the decoded boxes.
- Checked against torchvision.models.detection.fcos (FCOSHead.compute_loss),
  torchvision.ops.sigmoid_focal_loss and torchvision.ops.generalized_box_iou_loss.

`sigmoid_focal_loss` and `giou_loss` are the chapter's own, kept as the course's reference; the
library's `fcos_loss` uses torchvision's focal loss and the chapter's `giou_loss` (torchvision's
GIoU loss indexes with a boolean mask inside, which makes a GPU wait on every step).

Dimension letters: B images, L locations (levels concatenated p3, p4, p5), C classes, K boxes.
"""
import math
import numbers

import torch
import torch.nn.functional as F
import torchvision

from fcos_lib.checks import check_int
from fcos_lib.deltas import fcos_apply_deltas_to_locations
from fcos_lib.matching import check_class_labels
from fcos_lib.targets import FCOSTargets

BOX_LOSSES = ("giou", "l1")


def check_focal_gamma(gamma, name: str = "gamma") -> float:
    """The focal loss's focusing exponent, checked: a finite number >= 0 (0: cross-entropy, 2: the paper)."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 <= gamma < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 (0: plain cross-entropy, 2: the paper); got {gamma!r}")
    return float(gamma)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), elementwise (no reduction).

    Args:
        logits: (...) raw scores, any shape.
        targets: (...) same shape, 1.0 for positive and 0.0 for negative.
        alpha: weight of the positives (1 - alpha for the negatives); -1 turns the weighting off.
        gamma: focusing exponent; 0 gives the alpha-weighted binary cross-entropy.
    Returns:
        (...) -alpha_t * (1 - p_t) ** gamma * log(p_t), p_t = the probability of the right answer.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor) or logits.shape != targets.shape:
        got = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (logits, targets)]
        raise ValueError(f"logits and targets must be tensors of the same shape; got {got[0]} and {got[1]}")
    if not logits.is_floating_point() or not targets.is_floating_point():
        raise ValueError(f"logits and targets must be float (targets 1.0 or 0.0); got {logits.dtype} and "
                         f"{targets.dtype}. Fix: targets.float()")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (alpha == -1 or 0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1] (the positives' weight), or -1 for no weighting; got {alpha!r}")
    check_focal_gamma(gamma)
    ### BEGIN SOLUTION
    ### HINT: -log(p_t) = F.binary_cross_entropy_with_logits(..., reduction="none") (stable); times (1 - p_t) ** gamma and alpha_t
    p = torch.sigmoid(logits)
    # -log(p_t), computed from the logits (stable for large |logits|), not as -log(sigmoid(x)).
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss
    ### END SOLUTION


def one_hot_targets(labels: torch.Tensor, num_classes: int, check_inputs: bool = True) -> torch.Tensor:
    """Per-class 0/1 targets for the focal loss; background is all zeros.

    Args:
        labels: (B, L) matched class per location, -1 for background.
        num_classes: C, from the model (never hard-coded).
        check_inputs: False skips the label check (one host sync) for labels already checked.
    Returns:
        (B, L, C) float: 1.0 at [b, l, labels[b, l]], zeros elsewhere (all zeros where labels == -1).
    Raises ValueError naming the first label out of range (the label rule of chapter 04).
    """
    check_int(num_classes, "num_classes")
    if check_inputs:
        check_class_labels(labels, num_classes, name="labels")
    # Compare each label with 0..C-1: background (-1) matches no class. (F.one_hot would read the
    # labels' range on the host first: a GPU sync on every step.)
    classes = torch.arange(num_classes, device=labels.device)  # (C,)
    return (labels.long()[..., None] == classes).to(torch.float32)  # (B, L, C)

# %% [markdown]
# Check, by hand first: a positive (`target = 1`) with `p = 0.9` has cross-entropy
# `-log 0.9 = 0.1054`; the focal loss keeps `0.25 · (1 - 0.9)² · 0.1054 = 0.000263`. A
# negative with `p = 0.9` (a confident mistake) keeps `0.75 · 0.9² · -log(0.1) = 1.399`.
# Then on random logits: the same values and the same gradients as
# `torchvision.ops.sigmoid_focal_loss`. And the one-hot targets of three locations with
# labels `2, -1, 0` and `C = 3`.

# %%
logit_09 = torch.logit(torch.tensor([0.9, 0.9]))
with exercise("sigmoid_focal_loss"):
    by_hand = sigmoid_focal_loss(logit_09, torch.tensor([1.0, 0.0])).tolist()
    print([round(v, 6) for v in by_hand])
    assert [round(v, 4) for v in by_hand] == [0.0003, 1.3988], (
        f"p = 0.9 gives {by_hand}, expected [0.000263, 1.398743] (positive, then negative)")

    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 50, 20)).requires_grad_()
    targets = (torch.rand(4, 50, 20) < 0.05).float()
    ours = sigmoid_focal_loss(logits, targets)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    theirs = torchvision.ops.sigmoid_focal_loss(logits, targets, reduction="none")
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    print("values agree with torchvision:", torch.allclose(ours, theirs, atol=1e-7),
          "| gradients agree:", torch.allclose(grad_ours, grad_theirs, atol=1e-7))
    assert torch.allclose(ours, theirs, atol=1e-7), (
        f"values differ from torchvision's by up to {(ours - theirs).abs().max().item():.3g}")
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-7), "the values agree but the gradients differ"
print(one_hot_targets(torch.tensor([[2, -1, 0]]), num_classes=3))

# %% [markdown]
# > **Pitfall P9** ([the course's pitfalls note](../docs/pitfalls.md#p9-the-number-of-classes-hard-coded-in-the-loss)). The seed builds its one-hot targets with
# > `one_hot(labels + 1, num_classes=21)`: the 20 VOC classes plus background, hard-coded. On
# > any other dataset (our generated one has 5 classes) that either crashes or, worse, trains
# > against targets with the wrong number of columns. `one_hot_targets` takes `C` from the
# > model (`cls_logits.shape[-1]`) and names the bad label when one is out of range (with
# > `check_class_labels`, the label rule of chapter 04's `check_gt_boxes`). The
# > seed's docstring also writes the corner `(x2, x2)` where it means `(x2, y2)`.
#
# The focal loss checks its own numbers too: an `alpha` outside `[0, 1]` (other than -1) or a
# negative `gamma` would reward some mistakes instead of punishing them.

# %%
try:
    one_hot_targets(torch.tensor([[0, 5]]), num_classes=5)
except ValueError as err:
    print("ValueError:", err)
try:
    sigmoid_focal_loss(logit_09, torch.tensor([1.0, 0.0]), alpha=1.5)
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Box losses: L1 on deltas, or GIoU on boxes
#
# The box loss only counts at foreground locations: a background location has no box to
# regress. We offer two, selectable with `box_loss="giou" | "l1"`:
#
# - **L1 on the stride-normalised LTRB deltas** (the seed's): `|l̂ - l| + |t̂ - t| + ...`,
#   averaged over the four sides. Simple, and its gradient never vanishes (a predicted side
#   that went negative is still pulled back). But each side is its own problem: the loss
#   does not know that being 2 px off on a 10 px box is worse than on a 200 px box.
# - **GIoU on the decoded boxes** (Rezatofighi et al. 2019; the FCOS paper used the IoU
#   loss, the later FCOS and torchvision use GIoU): `1 - GIoU(pred, gt)`, with
#   `GIoU = IoU - |enclosing box \ union| / |enclosing box|`. It treats the box as one
#   object, is scale invariant (the same relative error costs the same on small and large
#   boxes) and is the quantity evaluation measures. The plain IoU loss is flat (gradient 0)
#   when the boxes do not overlap; GIoU's penalty term still says "move closer".
#
# The picture shows that last point: a predicted box sliding away from the ground truth.
# IoU hits 0 as soon as they stop touching; GIoU keeps falling, so its loss keeps a slope.

# %%
gt_box = torch.tensor([0.0, 0.0, 10.0, 10.0])
shifts = torch.linspace(0, 20, 81)
pred_boxes = torch.stack([gt_box + torch.tensor([s, 0, s, 0]) for s in shifts])  # (81, 4)
iou = torchvision.ops.box_iou(pred_boxes, gt_box[None])[:, 0]
giou = torchvision.ops.generalized_box_iou(pred_boxes, gt_box[None])[:, 0]
fig, ax = plt.subplots(figsize=(5, 3.5))
_ = ax.plot(shifts, iou, label="IoU")
_ = ax.plot(shifts, giou, label="GIoU")
ax.axvline(10, color="grey", lw=0.8, ls=":")
ax.set_xlabel("shift of a 10 x 10 box to the right (px)")
ax.legend()
plt.show()

# %% [markdown]
# Our GIoU loss, for `K` pairs of boxes `(x1, y1, x2, y2)`: intersection, union, the smallest
# enclosing box, and `1 - (IoU - (enclosing - union) / enclosing)`. The `eps` guards the
# divisions when a predicted box has zero area (a location whose four deltas are all 0).

# %%
#| export
def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalized IoU loss, 1 - GIoU, per pair (Rezatofighi et al. 2019, Alg. 2).

    Args:
        boxes1: (K, 4) predicted boxes (x1, y1, x2, y2), x1 <= x2, y1 <= y2.
        boxes2: (K, 4) target boxes, same format, paired row by row with boxes1.
        eps: added to the union and the enclosing area so that zero-area boxes give no NaN.
    Returns:
        (K,) losses in [0, 2]: 0 for identical boxes, -> 2 for tiny boxes far apart.
    """
    if boxes1.shape != boxes2.shape or boxes1.shape[-1:] != (4,):
        raise ValueError(
            f"boxes1 and boxes2 must both be (K, 4); got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)  # (K,) each
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)  # (K,) each
    inter = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0) * (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (enclosing - union) / (enclosing + eps))

# %% [markdown]
# Check, by hand: `A = (0, 0, 2, 2)` and `B = (1, 1, 3, 3)` overlap in one unit square, so
# IoU = 1 / (4 + 4 - 1) = 1/7; the enclosing box is 3 x 3 = 9, so GIoU = 1/7 - (9 - 7)/9 =
# -0.0794 and the loss is **1.0794**. Two unit squares a gap of 1 apart, `(0, 0, 1, 1)` and
# `(2, 0, 3, 1)`: IoU 0, enclosing 3, union 2, GIoU = -1/3, loss **1.3333**. Identical boxes:
# loss 0. Then random pairs, including zero-area predictions: values and gradients agree
# with `torchvision.ops.generalized_box_iou_loss`.

# %%
boxes1 = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 9, 8]])
boxes2 = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [5, 5, 9, 8]])
print([round(v, 4) for v in giou_loss(boxes1, boxes2).tolist()])

torch.manual_seed(0)
corner = 100 * torch.rand(500, 2)
pred = torch.cat([corner, corner + 50 * torch.rand(500, 2)], dim=1)  # (500, 4)
pred[:50, 2:] = pred[:50, :2]  # 50 zero-area predictions
pred.requires_grad_()
corner = 100 * torch.rand(500, 2)
gt = torch.cat([corner, corner + 1 + 50 * torch.rand(500, 2)], dim=1)  # (500, 4)
ours = giou_loss(pred, gt)
(grad_ours,) = torch.autograd.grad(ours.sum(), pred)
theirs = torchvision.ops.generalized_box_iou_loss(pred, gt)
(grad_theirs,) = torch.autograd.grad(theirs.sum(), pred)
print("values agree with torchvision:", torch.allclose(ours, theirs, atol=1e-6),
      "| gradients agree:", torch.allclose(grad_ours, grad_theirs, atol=1e-6),
      "| all finite:", bool(torch.isfinite(grad_ours).all()))

# %% [markdown]
# ## Centerness, and what we divide by
#
# **Centerness** (§3.3) is a number in [0, 1] per foreground location (chapter 06), and the
# head predicts its logit: binary cross-entropy with soft targets, on foreground locations
# only (a background location has no box, hence no centre).
#
# **Normalisation.** Each loss is a *sum* over locations, so it must be divided by something,
# or a batch with more objects would take bigger steps. The paper divides by the number of
# positive (foreground) locations. Two ways to count them:
#
# - **The seed: an exponential moving average** kept on the model, `normalizer = 0.9 ·
#   normalizer + 0.1 · foreground_per_image`, starting at 150. It smooths the scale from
#   batch to batch, but it is *hidden state*: the loss of a batch depends on every batch
#   before it; computing a validation loss changes the model; the first dozens of steps
#   divide by a made-up 150; it is not in `state_dict`, so a resumed run is not the run that
#   was interrupted. (Pitfall P10, [the course's pitfalls note](../docs/pitfalls.md#p10-a-loss-normaliser-kept-as-hidden-state).)
# - **torchvision: this batch's count**, `max(1, num_foreground)`. The loss is a pure
#   function of the weights and the batch.
#
# **We take the batch count, clamped at >= 1**: no hidden state, so the loss of a batch is
# reproducible and chapter 09 can resume a run bit for bit; the clamp makes a batch without
# any object divide by 1 (its box and centerness losses are 0 and the class loss is the plain
# sum). The price, a noisier scale, is small with batches of 8–16 images: the count is then
# a hundred or more most of the time (below: 80 to 210 per batch of 8). We keep it as a tensor (`clamp`, not `.item()`), so a GPU never waits.
#
# With several GPUs (chapter 09, "When one GPU is not enough") each process sees a slice of the
# batch, and "the batch's count" must still mean the *whole* batch's: `fcos_loss(...,
# sync_foreground=True)` sums the count over the processes (`global_foreground_count` explains
# why dividing each slice by its own count would train another model).
#
# The picture: foreground locations per image on the course dataset (224 x 224, centre
# sampling radius 1.5, as the model trains), and the batch count that divides each batch's
# loss.

# %%
root = make_course_dataset()
train_set = VOCDataset(root, "train", image_size=224)
strides = {"p3": 8, "p4": 16, "p5": 32}
locations_per_level = get_fpn_location_coords({"p3": (28, 28), "p4": (14, 14), "p5": (7, 7)}, strides)
images, gt_boxes, _ = collate_detection([train_set[i] for i in range(64)])
fcos_targets = fcos_build_targets(locations_per_level, strides, gt_boxes, center_sampling_radius=1.5)
fg_per_image = (fcos_targets.matched_boxes[..., 4] >= 0).sum(dim=1)  # (64,)
fg_per_batch = fg_per_image.view(8, 8).sum(dim=1)  # (8,) batches of 8 images
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
_ = axes[0].hist(fg_per_image.numpy(), bins=20)
axes[0].set_xlabel("foreground locations in one image")
_ = axes[1].bar(range(8), fg_per_batch.numpy())
axes[1].set_xlabel("batch of 8 images")
axes[1].set_ylabel("loss divided by")
plt.show()
print("images without objects:", int((fg_per_image == 0).sum()), "of 64 | foreground per batch of 8:", fg_per_batch.tolist())

# %% [markdown]
# ## The FCOS loss
#
# `fcos_loss` puts it together for a whole batch at once, levels concatenated (`L`
# locations). The library uses torchvision's focal and GIoU losses (the same formulas as
# ours, checked above, and maintained upstream). Everything runs in float32, also under
# mixed precision: sums over `B·L·C` terms in float16 would lose digits.

# %%
#| export
def fcos_loss(cls_logits: torch.Tensor, box_deltas: torch.Tensor, ctr_logits: torch.Tensor, targets,
              locations: torch.Tensor, strides: torch.Tensor, box_loss: str = "giou",
              check_inputs: bool = True, sync_foreground: bool = False, focal_gamma: float = 2.0) -> dict:
    """The three FCOS losses of one batch, each divided by the batch's foreground count.

    Args:
        cls_logits: (B, L, C) raw class logits.
        box_deltas: (B, L, 4) LTRB deltas from the head (exp(x) > 0), in units of the location's stride.
        ctr_logits: (B, L, 1) raw centerness logits.
        targets: FCOSTargets(matched_boxes (B, L, 5), deltas (B, L, 4), centerness (B, L)) from
            fcos_build_targets; background rows are -1.
        locations: (L, 2) (x, y) of every location, levels concatenated p3, p4, p5.
        strides: (L,) the stride of each location's level.
        box_loss: "giou" (1 - GIoU of the decoded boxes) or "l1" (L1 on the deltas, mean of the
            four sides, as the seed's 0.25 * sum).
        check_inputs: False skips the class-label check (a host sync) for targets built from
            ground truth that was checked already (FCOS.forward checks it once per batch).
        sync_foreground: data-parallel training (chapter 09): this batch is one process's slice of
            a global batch; divide by the global batch's count instead (global_foreground_count).
        focal_gamma: the focal loss's focusing exponent (2: the paper; 0: the alpha-weighted
            binary cross-entropy).
    Returns:
        dict(loss_cls, loss_box, loss_ctr) of scalar tensors: sums over the batch divided by
        max(1, number of foreground locations in the batch).
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}; got {box_loss!r}")
    check_focal_gamma(focal_gamma, "focal_gamma")
    if not isinstance(cls_logits, torch.Tensor) or cls_logits.dim() != 3:
        shape = tuple(cls_logits.shape) if isinstance(cls_logits, torch.Tensor) else type(cls_logits).__name__
        raise ValueError(f"cls_logits must be (B, L, C), levels concatenated; got {shape}. "
                         "Fix: one image's (L, C) needs cls_logits[None] (and the same for the other inputs).")
    if not isinstance(targets, FCOSTargets):
        raise ValueError(f"targets must be the FCOSTargets that fcos_build_targets returns; got "
                         f"{type(targets).__name__}. Fix: pass its result as it is, or FCOSTargets(matched_boxes, "
                         "deltas, centerness).")
    B, L, C = cls_logits.shape
    expected = {"box_deltas": (B, L, 4), "ctr_logits": (B, L, 1), "targets.matched_boxes": (B, L, 5),
                "targets.deltas": (B, L, 4), "targets.centerness": (B, L), "locations": (L, 2), "strides": (L,)}
    given = {"box_deltas": box_deltas, "ctr_logits": ctr_logits, "targets.matched_boxes": targets.matched_boxes,
             "targets.deltas": targets.deltas, "targets.centerness": targets.centerness,
             "locations": locations, "strides": strides}
    for name, shape in expected.items():
        if not isinstance(given[name], torch.Tensor) or tuple(given[name].shape) != shape:
            got = tuple(given[name].shape) if isinstance(given[name], torch.Tensor) else type(given[name]).__name__
            raise ValueError(f"{name} must be {shape} to match cls_logits (B, L, C) = {(B, L, C)}; got {got}")
    ### BEGIN SOLUTION
    ### HINT: focal loss summed everywhere; box and centerness losses weighted by foreground; all / max(1, the batch's count)
    labels = targets.matched_boxes[..., 4]  # (B, L), -1 = background
    foreground = labels >= 0  # (B, L)
    if sync_foreground:
        num_foreground = global_foreground_count(foreground)
    else:
        num_foreground = foreground.sum().clamp(min=1).to(torch.float32)  # a tensor: no GPU sync

    # Classes: every location, C yes/no questions each; background = all zeros.
    cls_targets = one_hot_targets(labels, C, check_inputs)  # (B, L, C)
    loss_cls = torchvision.ops.sigmoid_focal_loss(cls_logits.float(), cls_targets, gamma=focal_gamma, reduction="sum")

    # Boxes and centerness: foreground only. Every location is computed and the background ones
    # are multiplied by 0, rather than picked out with pred[foreground]: a boolean mask makes the
    # host wait for the GPU (the result's size depends on the mask), forward and backward. The
    # background's targets are -1; they are replaced by harmless values first (the prediction
    # itself: loss 0, finite gradient), because 0 * NaN would still be NaN.
    weight = foreground.to(torch.float32)  # (B, L)
    if box_loss == "giou":
        pred_boxes = fcos_apply_deltas_to_locations(box_deltas.float(), locations, strides)  # (B, L, 4)
        target_boxes = torch.where(foreground[..., None], targets.matched_boxes[..., :4].float(),
                                   pred_boxes.detach())  # (B, L, 4)
        # The chapter's giou_loss: torchvision's generalized_box_iou_loss indexes with a boolean
        # mask inside (a host sync); the two agree to float precision (checked above).
        loss_box = (giou_loss(pred_boxes, target_boxes) * weight).sum()
    else:
        pred_deltas = box_deltas.float()  # (B, L, 4)
        target_deltas = torch.where(foreground[..., None], targets.deltas.float(), pred_deltas.detach())
        loss_box = (F.l1_loss(pred_deltas, target_deltas, reduction="none").mean(dim=-1) * weight).sum()

    # Centerness: soft targets in [0, 1] on the foreground.
    target_ctr = torch.where(foreground, targets.centerness.float(), torch.zeros_like(weight))  # (B, L)
    loss_ctr = (F.binary_cross_entropy_with_logits(ctr_logits.float()[..., 0], target_ctr, reduction="none")
                * weight).sum()
    return {"loss_cls": loss_cls / num_foreground, "loss_box": loss_box / num_foreground,
            "loss_ctr": loss_ctr / num_foreground}
    ### END SOLUTION


def global_foreground_count(foreground: torch.Tensor) -> torch.Tensor:
    """max(1, foreground locations of the GLOBAL batch) / W, for W data-parallel processes.

    Args:
        foreground: (B, L) bool, this process's slice of the global batch.
    Returns:
        () float32, the same on every process.

    Why not this slice's own count (the classic pitfall): DistributedDataParallel averages the W
    processes' gradients, so with per-slice counts n_r the step follows (1/W) sum_r S_r / n_r, where
    S_r is slice r's summed loss. That weights an object by its slice's count, and differs from the
    one-process loss of the same batch, S / max(1, n) with S = sum_r S_r and n = sum_r n_r. Dividing
    every slice by max(1, n) / W instead gives (1/W) sum_r W S_r / max(1, n) = S / max(1, n): the
    one-process loss, whatever W. (detectron2's and AdelaiDet's FCOS do the same: they all-reduce
    the count and divide it by the number of GPUs.)
    """
    count = foreground.sum().to(torch.float32)  # () this slice's n_r, exact in float32 below 2**24
    torch.distributed.all_reduce(count)  # () n = sum over the processes, the same everywhere
    return count.clamp(min=1) / torch.distributed.get_world_size()

# %% [markdown]
# Check 1, against torchvision's own FCOS loss (`FCOSHead.compute_loss`). We feed it the
# same predictions and the same matches: its "anchors" are `stride x stride` squares centred
# on our locations, its `matched_idxs` the GT row each location matched. Its box head ends in
# a ReLU, so we give both sides non-negative deltas. The three numbers agree.

# %%
with exercise("fcos_loss"):
    torch.manual_seed(0)
    B, C = 2, 5
    gt = gt_boxes[:B]  # (2, N, 5), the first two course images
    fcos_targets = fcos_build_targets(locations_per_level, strides, gt, center_sampling_radius=1.5)
    locations = torch.cat(list(locations_per_level.values()))  # (L, 2)
    location_strides = strides_per_location(locations_per_level, strides)  # (L,)
    L = locations.shape[0]
    cls_logits, box_deltas, ctr_logits = torch.randn(B, L, C), 3 * torch.rand(B, L, 4), torch.randn(B, L, 1)
    ours = fcos_loss(cls_logits, box_deltas, ctr_logits, fcos_targets, locations, location_strides)
    assert all(v.dim() == 0 for v in ours.values()), (
        f"each loss must be one number for the batch; got shapes {[tuple(v.shape) for v in ours.values()]}")

    anchors = torch.cat([locations - location_strides[:, None] / 2, locations + location_strides[:, None] / 2], dim=1)  # (L, 4)
    tv_targets, matched_idxs = [], []
    for b in range(B):
        real = gt[b][gt[b, :, 4] >= 0]  # (N_b, 5)
        tv_targets.append({"boxes": real[:, :4], "labels": real[:, 4].long()})
        same = (fcos_targets.matched_boxes[b][:, None, :] == real[None, :, :]).all(dim=-1)  # (L, N_b)
        matched_idxs.append(torch.where(same.any(dim=1), same.float().argmax(dim=1), -1))
    tv_head = TorchvisionFCOSHead(in_channels=32, num_anchors=1, num_classes=C, num_convs=0)
    theirs = tv_head.compute_loss(tv_targets, {"cls_logits": cls_logits, "bbox_regression": box_deltas,
                                               "bbox_ctrness": ctr_logits}, [anchors] * B, matched_idxs)
    print({k: round(v.item(), 3) for k, v in ours.items()})
    print({k: round(v.item(), 3) for k, v in theirs.items()})
    print("agree:", all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(ours.values(), theirs.values())))
    assert all(torch.allclose(a, b, rtol=1e-5) for a, b in zip(ours.values(), theirs.values())), (
        "the losses differ from torchvision's FCOSHead.compute_loss (each is a sum over the batch divided by "
        "max(1, the batch's foreground count))")

# %% [markdown]
# Check 2, images without objects. A batch where one image is empty, and a batch where all
# are: every loss stays finite, and without any foreground the box and centerness losses
# are exactly 0 (there is nothing to regress) while the class loss still teaches
# "background everywhere". Both box losses, and gradients flow.

# %%
with exercise("fcos_loss"):
    empty = torch.full_like(gt, -1.0)  # (2, N, 5), padding rows only
    for name, batch_gt in {"one image empty": torch.stack([gt[0], empty[1]]), "all images empty": empty}.items():
        batch_targets = fcos_build_targets(locations_per_level, strides, batch_gt, center_sampling_radius=1.5)
        for box_loss in ("giou", "l1"):
            logits = cls_logits.clone().requires_grad_()
            losses = fcos_loss(logits, box_deltas, ctr_logits, batch_targets, locations, location_strides, box_loss)
            sum(losses.values()).backward()
            print(f"{name:16s} {box_loss:4s}", {k: round(v.item(), 3) for k, v in losses.items()},
                  "| finite:", all(torch.isfinite(v) for v in losses.values()),
                  "| gradient finite:", bool(torch.isfinite(logits.grad).all()))
            assert all(torch.isfinite(v) for v in losses.values()) and torch.isfinite(logits.grad).all(), (
                f"{name}, {box_loss}: a loss or its gradient is not finite (divide by max(1, count))")
            if name == "all images empty":
                assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0, (
                    f"{box_loss}: without foreground the box and centerness losses must be exactly 0")

# %% [markdown]
# ## The full model
#
# `FCOS` only combines what the earlier chapters built; the maths lives in the small
# stateless functions. The forward pass:
#
# ```
# images (B, 3, H, W) ─► BackboneWithFPN ─► {p3, p4, p5} ─► FCOSHead ─► cls (B, L_l, C), box (B, L_l, 4), ctr (B, L_l, 1) per level
#                                              │                              │ concatenate levels -> (B, L, ...)
#                                              └─► get_fpn_location_coords ───┤
#    training: gt_boxes (B, N, 5) ─► fcos_build_targets ─► fcos_loss ─► {loss_cls, loss_box, loss_ctr}
#    eval:     FCOSPredictions(cls_logits, box_deltas, ctr_logits, locations, strides, ...) -> chapter 08
# ```
#
# The model returns raw outputs in eval mode and leaves post-processing (scores, NMS) to
# chapter 08, so that the thresholds can change without touching the network. It checks
# its inputs first: a wrong shape deep inside the matching code gives an error no learner
# can trace back. The checks are not new code: `check_images` of chapter 01 (the backbone's)
# and `check_gt_boxes` of chapter 04 (the matching's), to which the model adds what only it
# knows, its `num_classes`, the number of images and their device. Its constructor checks
# its arguments with chapter 01's `check_int`, `check_flag` and `check_positive_number`
# before it builds anything.
#
# `check_finite_losses` guards training: one NaN in a loss turns every weight into NaN at
# the next step, so the loop stops at once and says which loss went bad.

# %%
#| export model
"""The FCOS detector as one nn.Module: backbone + FPN + head, targets and losses in training.

Chapter 07 of the course (notebooks/07_losses.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3 (the
  whole per-location detector), with the later FCOS's centre sampling (radius 1.5) and GIoU.
- Structure and defaults follow torchvision.models.detection.fcos.FCOS; unlike torchvision,
  the model takes one (B, 3, H, W) batch (no resizing inside) and returns raw predictions in
  eval mode: post-processing lives in fcos_lib.inference (chapter 08).

Dimension letters: B images, N ground-truth boxes per image (padded), L locations (levels
concatenated p3, p4, p5), C classes, H/W input height/width, F FPN channels.
Box contract: (x1, y1, x2, y2) absolute 0-based pixels of the network input; ground truth
(B, N, 5) rows (x1, y1, x2, y2, c), c in [0, C), padded with rows of -1.
"""
import functools
import math
from typing import NamedTuple

import torch
from torch import nn

from fcos_lib.backbone import BackboneWithFPN, check_images
from fcos_lib.checks import check_flag, check_int, check_positive_number
from fcos_lib.head import FCOSHead
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.losses import BOX_LOSSES, check_focal_gamma, fcos_loss
from fcos_lib.matching import check_gt_boxes
from fcos_lib.targets import fcos_build_targets, strides_per_location


@functools.lru_cache(maxsize=32)
def location_table(level_shapes: tuple, strides: tuple, device: torch.device):
    """The locations and their strides for feature maps of these sizes, built once and then reused.

    Args:
        level_shapes: ((level, H_l, W_l), ...) in the head's level order.
        strides: ((level, stride), ...).
        device: where the tensors live.
    Returns:
        (locations_per_level: level -> (L_l, 2), locations (L, 2), strides (L,)), float32 (also
        under autocast: they are pixel coordinates, not activations).

    They depend on these arguments alone, so FCOS.forward builds them once per (input size,
    device) instead of on every forward, twice per training step (on a GPU that is a dozen small
    kernel launches each time). The tensors are shared between calls: read them, never write into them.
    """
    locations_per_level = get_fpn_location_coords({level: (H_l, W_l) for level, H_l, W_l in level_shapes},
                                                  dict(strides), dtype=torch.float32, device=device)
    locations = torch.cat(list(locations_per_level.values()), dim=0)  # (L, 2)
    return locations_per_level, locations, strides_per_location(locations_per_level, dict(strides))  # (L,)


class FCOSPredictions(NamedTuple):
    """Raw network outputs of one batch in eval mode, levels concatenated (p3, p4, p5)."""

    cls_logits: torch.Tensor  # (B, L, C)
    box_deltas: torch.Tensor  # (B, L, 4) LTRB / stride
    ctr_logits: torch.Tensor  # (B, L, 1)
    locations: torch.Tensor  # (L, 2) (x, y) in input pixels
    strides: torch.Tensor  # (L,)
    num_locations_per_level: list  # [L_p3, L_p4, L_p5]
    image_size: tuple  # (H, W) of the network input


def check_finite_losses(losses: dict) -> None:
    """Raise FloatingPointError naming every loss that is NaN or infinite; do nothing otherwise."""
    # One host sync for all the losses (the one a training step needs: it guards the weights).
    if bool(torch.stack([value.detach().float() for value in losses.values()]).isfinite().all()):
        return
    values = {name: float(value.detach().float().sum()) for name, value in losses.items()}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    raise FloatingPointError(
        f"non-finite loss: {', '.join(f'{name}={values[name]}' for name in bad)} "
        f"(all losses: {', '.join(f'{name}={value:.4g}' for name, value in values.items())}). "
        "Training stopped before the bad gradient reached the weights. Usual causes: a learning rate "
        "too high (lower it or lengthen the warm-up), gradient clipping turned off, a degenerate "
        "ground-truth box, or float16 overflow (try without mixed precision)."
    )

# %% [markdown]
# Check: a healthy loss dict passes silently; one with a NaN box loss stops with its name.

# %%
check_finite_losses({"loss_cls": torch.tensor(1.2), "loss_box": torch.tensor(0.8), "loss_ctr": torch.tensor(0.6)})
try:
    check_finite_losses({"loss_cls": torch.tensor(1.2), "loss_box": torch.tensor(float("nan")),
                         "loss_ctr": torch.tensor(0.6)})
except FloatingPointError as err:
    print("FloatingPointError:", err)

# %%
#| export model
# The rules that pick the positive locations (chapter 04; ATSS in chapter 10).
ASSIGNERS = ("fcos", "atss")


class FCOS(nn.Module):
    """FCOS: RegNetX-400MF + FPN (p3-p5; p2-p5 with with_p2) + the shared head; losses in training, raw predictions in eval.

    Args:
        num_classes: C, object classes (no background class).
        fpn_channels: F, channels of every FPN level and of the head.
        num_convs: 3x3 convs in each head stem (4 in the paper).
        pretrained_backbone: ImageNet weights for the trunk (refused offline, see chapter 01).
        trainable_backbone_layers: trunk stages that train, counted from the top, 0-5; None = 3
            with pretrained_backbone (stem and block1 frozen, as torchvision), 5 without.
        frozen_batchnorm: FrozenBatchNorm2d in the trunk; None = same as pretrained_backbone.
            Rebuild a model fine-tuned from ImageNet with pretrained_backbone=False,
            frozen_batchnorm=True (and its trainable_backbone_layers) to load its checkpoint.
        use_groupnorm: GroupNorm in the head stems (the paper's head).
        center_sampling_radius: positives only within radius * stride of a box centre (later
            FCOS, torchvision: 1.5); None = every location inside the box (the paper's §3.1).
        box_loss: "giou" (later FCOS, torchvision) or "l1" (the seed's L1 on deltas).
        box_activation, centerness_on: the head's options (chapter 02): "exp" or "relu" deltas;
            centerness from the "reg" or the "cls" stem.
        assigner: which locations are positives: "fcos" (chapter 04's rule: inside the box, the
            level's scale range, centre sampling) or "atss" (adaptive training sample selection,
            Zhang et al. 2020, taught in chapter 10; center_sampling_radius is not used).
        with_p2: add the FPN level p2 (stride 4) below p3, for objects of a few pixels (chapter 10).
        c2_passthrough: give p3 the detail of block1 (stride 4) instead, stacked into c3
            (chapter 01's stack_c2_into_c3; chapter 10). Not together with with_p2.
        focal_gamma: the classification loss's focusing exponent (2: the paper; chapter 10).

    forward(images (B, 3, H, W) float in [0, 1], H and W divisible by 32, gt_boxes (B, N, 5))
        training mode: dict(loss_cls, loss_box, loss_ctr) (gt_boxes required);
        eval mode: FCOSPredictions (gt_boxes ignored); see fcos_lib.inference for detections.
    """

    def __init__(self, num_classes: int, fpn_channels: int = 64, num_convs: int = 4,
                 pretrained_backbone: bool = False, trainable_backbone_layers: int | None = None,
                 frozen_batchnorm: bool | None = None, use_groupnorm: bool = True,
                 center_sampling_radius: float | None = 1.5, box_loss: str = "giou",
                 box_activation: str = "exp", centerness_on: str = "reg", assigner: str = "fcos",
                 with_p2: bool = False, c2_passthrough: bool = False, focal_gamma: float = 2.0):
        super().__init__()
        # Every argument first, before the backbone is built (the checks of chapter 01).
        num_classes = check_int(num_classes, "num_classes (the object classes, no background class)")
        fpn_channels = check_int(fpn_channels, "fpn_channels")
        num_convs = check_int(num_convs, "num_convs", minimum=0)
        check_flag(pretrained_backbone, "pretrained_backbone")
        if frozen_batchnorm is not None:
            check_flag(frozen_batchnorm, "frozen_batchnorm")
        check_flag(use_groupnorm, "use_groupnorm")
        if center_sampling_radius is not None:
            check_positive_number(center_sampling_radius, "center_sampling_radius (in strides, or None for off)")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}; got {box_loss!r}")
        if assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {ASSIGNERS}; got {assigner!r}")
        self.focal_gamma = check_focal_gamma(focal_gamma, "focal_gamma")
        self.num_classes = num_classes
        self.assigner = assigner
        self.center_sampling_radius = center_sampling_radius
        self.box_loss = box_loss
        self.backbone = BackboneWithFPN(out_channels=fpn_channels, pretrained=pretrained_backbone,
                                        trainable_layers=trainable_backbone_layers,
                                        frozen_batchnorm=frozen_batchnorm, with_p2=with_p2,
                                        c2_passthrough=c2_passthrough)
        self.head = FCOSHead(num_classes, in_channels=fpn_channels, num_convs=num_convs,
                             use_groupnorm=use_groupnorm, box_activation=box_activation,
                             centerness_on=centerness_on)
        self.strides = dict(self.backbone.strides)  # {"p3": 8, "p4": 16, "p5": 32}

    def forward(self, images: torch.Tensor, gt_boxes: torch.Tensor | None = None, check_inputs: bool = True,
                sync_foreground: bool = False):
        """Eval mode: FCOSPredictions. Training mode: dict(loss_cls, loss_box, loss_ctr).

        gt_boxes (B, N, 5) are checked once here (check_gt_boxes, one host sync), not again in the
        matching or the losses. check_inputs=False skips that check too, for batches checked where
        they were read (fcos_lib.train: VOCDataset and the pre-flight check every box).
        sync_foreground=True (data-parallel training, chapter 09) normalises the losses by the
        foreground count of the global batch (losses.global_foreground_count).
        """
        check_images(images)  # chapter 01; the backbone calls it too (shape and dtype only: free)
        if self.training:
            if gt_boxes is None:
                raise ValueError(
                    "FCOS in training mode needs gt_boxes (B, N, 5) to compute its losses; got None. "
                    "Fix: call model(images, gt_boxes), or model.eval() to get predictions."
                )
            if isinstance(gt_boxes, torch.Tensor) and gt_boxes.device != images.device:
                raise ValueError(f"gt_boxes must be on the images' device, {images.device}; got {gt_boxes.device}. "
                                 "Fix: gt_boxes.to(images.device)")
            if check_inputs:
                check_gt_boxes(gt_boxes, self.num_classes, batch_size=images.shape[0])  # chapter 04
        feats = self.backbone(images)  # {"p3": (B, F, H/8, W/8), "p4": ..., "p5": ...}
        cls_per_level, box_per_level, ctr_per_level = self.head(feats)  # level -> (B, L_l, C / 4 / 1)
        level_shapes = tuple((level, *feat.shape[-2:]) for level, feat in feats.items())
        locations_per_level, locations, strides = location_table(level_shapes, tuple(self.strides.items()),
                                                                 images.device)  # made once per input size
        levels = list(feats)
        cls_logits = torch.cat([cls_per_level[level] for level in levels], dim=1)  # (B, L, C)
        box_deltas = torch.cat([box_per_level[level] for level in levels], dim=1)  # (B, L, 4)
        ctr_logits = torch.cat([ctr_per_level[level] for level in levels], dim=1)  # (B, L, 1)
        if not self.training:
            return FCOSPredictions(cls_logits, box_deltas, ctr_logits, locations, strides,
                                   [locations_per_level[level].shape[0] for level in levels],
                                   tuple(images.shape[-2:]))
        if self.assigner == "atss":
            from fcos_lib.atss import atss_build_targets  # chapter 10

            targets = atss_build_targets(locations_per_level, self.strides, gt_boxes.float(), check_inputs=False)
        else:
            targets = fcos_build_targets(locations_per_level, self.strides, gt_boxes.float(),
                                         center_sampling_radius=self.center_sampling_radius, check_inputs=False)
        return fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, self.box_loss,
                         check_inputs=False, sync_foreground=sync_foreground, focal_gamma=self.focal_gamma)

# %% [markdown]
# Check: a 2-image, non-square 160 x 224 batch. In training mode, three finite scalar losses;
# in eval mode the raw predictions, `L = 20·28 + 10·14 + 5·7 = 735` locations. Then the errors a learner is
# most likely to meet.

# %%
torch.manual_seed(0)
model = FCOS(num_classes=5)
images = torch.rand(2, 3, 160, 224)
batch_gt = torch.tensor([[[10.0, 20, 90, 120, 1], [-1, -1, -1, -1, -1]],
                         [[30.0, 40, 200, 150, 4], [100, 10, 140, 60, 0]]])  # (2, 2, 5)
losses = model.train()(images, batch_gt)
print({k: (tuple(v.shape), bool(torch.isfinite(v))) for k, v in losses.items()})
with torch.no_grad():
    predictions = model.eval()(images)
print({name: tuple(value.shape) if isinstance(value, torch.Tensor) else value
       for name, value in predictions._asdict().items()})

# %%
model.train()
bad_inputs = {
    "3-D images": (torch.rand(3, 160, 224), batch_gt),
    "H not divisible by 32": (torch.rand(2, 3, 150, 224), batch_gt),
    "uint8 images": ((255 * images).to(torch.uint8), batch_gt),
    "float64 images": (images.double(), batch_gt),
    "gt_boxes of one image": (images, batch_gt[0]),
    "label 5 with num_classes=5": (images, batch_gt.clone().index_put_((torch.tensor(1), torch.tensor(0), torch.tensor(4)), torch.tensor(5.0))),
    "an infinite coordinate": (images, batch_gt.clone().index_put_((torch.tensor(1), torch.tensor(1), torch.tensor(2)), torch.tensor(float("inf")))),
    "no gt_boxes in training": (images, None),
}
for name, (x, y) in bad_inputs.items():
    try:
        model(x, y)
    except ValueError as err:
        print(f"{name}: ValueError: {err}")
try:
    FCOS(num_classes=2.5)
except ValueError as err:
    print("FCOS(num_classes=2.5): ValueError:", err)

# %% [markdown]
# ## Picture: the whole model, with its shapes
#
# The diagram of "The full model", drawn with the shapes of a real forward pass: the model just built, run
# in eval mode on a batch of two black 224 x 224 images. Every shape on the figure is read
# from that pass (and printed under it); `B` stands for the batch size. The backbone gives
# `c3`, `c4`, `c5`; the FPN brings them to `F = 64` channels; one head, the same weights on
# each level, gives the three branches, with the levels concatenated
# (`L = 784 + 196 + 49 = 1029` locations).

# %%
from matplotlib import patches


def draw_architecture(shapes: dict, locations_per_level: list):
    """Backbone -> FPN -> shared head -> three branches, each box labelled with its tensor's shape."""
    def show(shape):  # (2, 64, 28, 28) -> "(B, 64, 28, 28)"
        return "(B, " + ", ".join(str(n) for n in shape[1:]) + ")"

    def box(x, y, w, text, color):
        ax.add_patch(patches.FancyBboxPatch((x, y), w, 0.9, boxstyle="round,pad=0.05", fc=color, ec="black"))
        ax.text(x + w / 2, y + 0.45, text, ha="center", va="center", fontsize=9)

    def arrow(start, end, **style):
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", **style))

    fig, ax = plt.subplots(figsize=(13, 4.2))
    rows = {"3": 3.6, "4": 2.0, "5": 0.4}  # y of each level, finest on top
    box(0.0, 2.0, 1.7, "images\n" + show(shapes["images"]), "lightgrey")
    arrow((1.75, 2.6), (2.15, 3.9))
    for level, y in rows.items():
        box(2.2, y, 2.1, f"c{level}\n" + show(shapes[f"c{level}"]), "#cfe2f3")
        box(5.2, y, 2.1, f"p{level}\n" + show(shapes[f"p{level}"]), "#d9ead3")
        arrow((4.35, y + 0.45), (5.15, y + 0.45))  # lateral 1x1 conv
        arrow((7.35, y + 0.45), (8.15, 2.45))  # into the shared head
        if level != "3":
            arrow((3.25, y + 1.5), (3.25, y + 0.95))  # backbone, bottom-up
            arrow((6.25, y + 0.95), (6.25, y + 1.5), linestyle="--")  # FPN, top-down
    ax.add_patch(patches.FancyBboxPatch((8.2, 1.2), 2.0, 2.5, boxstyle="round,pad=0.05", fc="#fce5cd", ec="black"))
    ax.text(9.2, 2.45, "one shared head\n(same weights on\np3, p4, p5)\n2 stems of 4 x\n[3x3 conv, GN, ReLU]\n"
            + " + ".join(str(n) for n in locations_per_level) + "\nlocations", ha="center", va="center", fontsize=9)
    for name, y in (("class logits, C", 3.6), ("box deltas (exp), 4", 2.0), ("centerness logit, 1", 0.4)):
        box(10.9, y, 2.1, f"{name}\n" + show(shapes[name.split()[0]]), "#ead1dc")
        arrow((10.25, 2.45), (10.85, y + 0.45))
    for x, title in ((3.25, "backbone: RegNetX-400MF"), (6.25, "FPN"), (9.2, "head"), (11.95, "levels concatenated")):
        ax.text(x, 4.85, title, ha="center", fontsize=10, weight="bold")
    ax.set(xlim=(-0.1, 13.1), ylim=(0.2, 5.1))
    ax.axis("off")
    plt.show()


model.eval()
with torch.no_grad():
    arch_images = torch.zeros(2, 3, 224, 224)
    arch_shapes = {"images": tuple(arch_images.shape)}
    arch_shapes.update({k: tuple(v.shape) for k, v in model.backbone.body(arch_images).items()})  # c3, c4, c5
    arch_shapes.update({k: tuple(v.shape) for k, v in model.backbone(arch_images).items()})  # p3, p4, p5
    arch_predictions = model(arch_images)
arch_shapes.update({"class": tuple(arch_predictions.cls_logits.shape), "box": tuple(arch_predictions.box_deltas.shape),
                    "centerness": tuple(arch_predictions.ctr_logits.shape)})
draw_architecture(arch_shapes, arch_predictions.num_locations_per_level)
print(arch_shapes)

# %% [markdown]
# ## Can it learn? Overfitting a handful of images
#
# The test every new detector must pass first: given a few images and many steps, the
# losses must fall a lot. If they do not, something upstream is wrong (targets paired with
# the wrong predictions, a sign flip, a loss on the wrong locations), and no amount of
# training on the full dataset will fix it.
#
# Four course images at 128 x 128, Adam, 60 steps on the CPU, with one CPU thread: for a
# batch this small more threads gain little, and on a busy 2-core machine (Colab, CI) threads
# that wait for each other can make this loop many times slower.

# %%
torch.manual_seed(0)
small_set = VOCDataset(root, "train", image_size=128)
picked = [i for i in range(len(small_set)) if len(small_set[i][1]["boxes"]) > 0][:4]
images, gt_boxes, _ = collate_detection([small_set[i] for i in picked])
model = FCOS(num_classes=len(small_set.class_names)).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
history = []
threads = torch.get_num_threads()
torch.set_num_threads(1)
tic = time.perf_counter()
for step in range(60):
    losses = model(images, gt_boxes)
    check_finite_losses(losses)
    loss = sum(losses.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append({"total": loss.item(), **{k: v.item() for k, v in losses.items()}})
seconds = time.perf_counter() - tic
torch.set_num_threads(threads)
print("images:", tuple(images.shape), "| objects:", int((gt_boxes[..., 4] >= 0).sum()))

# %% tags=["nbval-ignore-output"]
print(f"first loss {history[0]['total']:.3f}, last loss {history[-1]['total']:.3f}, {seconds:.1f} s")
print("first:", {k: round(v, 3) for k, v in history[0].items()})
print("last: ", {k: round(v, 3) for k, v in history[-1].items()})

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("total", "loss_cls", "loss_box", "loss_ctr"):
    _ = ax.plot([h[name] for h in history], label=name)
ax.set_xlabel("step")
ax.set_yscale("log")
ax.legend()
plt.show()

# %% [markdown]
# ## Final check
#
# The losses fell: the last total loss is well under half the first, and every component
# fell too. (The centerness loss falls least, and never reaches 0: its targets are soft
# numbers in [0, 1], so even a perfect prediction keeps their binary entropy.) The model,
# its targets and its losses fit together.

# %%
first, last = history[0], history[-1]
print("total: last < 0.5 * first:", last["total"] < 0.5 * first["total"])
print("every loss fell:", all(last[k] < first[k] for k in ("loss_cls", "loss_box", "loss_ctr")))

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **Where the class loss comes from.** For random logits around the prior (`logit(0.01)` plus
#    noise) and the targets of the batch above, compute the focal loss with `gamma` 0, 1 and 2.
#    What share of each total comes from the background locations?
#    *Hint:* sum `sigmoid_focal_loss(...)` over `cls_targets == 0` and `== 1` separately.
# 2. **Per image or per batch.** Divide each image's summed loss by its own foreground count and
#    average over the images, on a batch where one image has 2 foreground locations and another
#    200. How much does one object of each image weigh, compared with the batch count?
#    *Hint:* pitfall P10; `test_normalised_by_the_batch_foreground_count` in `tests/test_losses.py`.
# 3. **L1 or GIoU.** A 10 px box and a 100 px box of the same level are each predicted 2 px too
#    wide on one side. Compute both box losses for each. Which loss says the small box is worse?
#    *Hint:* `giou_loss` on the two pairs; the L1 loss sees the same `2 / stride` on one side.
# 4. **A clamp before the loss.** In your exercise notebook, clamp the predicted deltas at 0 in
#    the L1 branch of `fcos_loss` and grade it. Which test fails, and why would a run with that
#    clamp keep a wrong side forever?
#    *Hint:* `python tools/grade.py exercises/07_losses.ipynb`.

# %% [markdown]
# ## Summary
#
# - Three losses, each summed and divided by the batch's foreground count (at least 1): the
#   focal loss on the class logits at every location, GIoU (or L1) on the boxes and binary
#   cross-entropy on the centerness, at foreground locations only.
# - `FCOS` assembles chapters 01–06: backbone + FPN + shared head; losses in training mode,
#   raw `FCOSPredictions` in eval mode. It checks its inputs with the checks of chapters 01
#   and 04.
# - Where it lives: `fcos_lib.losses` (`sigmoid_focal_loss`, `one_hot_targets`, `giou_loss`,
#   `fcos_loss`), `fcos_lib.model` (`FCOS`, `FCOSPredictions`, `check_finite_losses`).
# - Pitfall to remember: take the number of classes from the model's output, never hard-code
#   it ([P9](../docs/pitfalls.md#p9-the-number-of-classes-hard-coded-in-the-loss)); and divide
#   by this batch's count, not a moving average kept on the model
#   ([P10](../docs/pitfalls.md#p10-a-loss-normaliser-kept-as-hidden-state)).
# - Overfitting four images is the first test of any detector: if the losses do not fall,
#   something upstream is wrong.
# - Next chapter: turn the raw predictions into detections: scores, top-k, decoding, NMS.
