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
# # 08 · Non-maximum suppression and batched inference
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/08_nms_inference.ipynb)
#
# In eval mode the model of chapter 07 returns, for every location, `C` class logits, four
# box deltas and a centerness logit: about a thousand candidate boxes per image at 224 x 224.
# An object covers many locations, and each of them predicts (nearly) the same box. This
# chapter turns those raw outputs into a short list of detections per image:
#
# 1. **score** each (location, class): the FCOS paper (Tian et al. 2019, §3.3) multiplies the
#    class probability by the predicted centerness, `sigmoid(cls) · sigmoid(ctr)`, so that boxes
#    predicted far from an object's centre rank lower; like the official FCOS code and
#    torchvision, we report the square root of that product, `sqrt(sigmoid(cls) · sigmoid(ctr))`
#    (see "Why a square root" below);
# 2. keep the **top-k** candidates per level above a **score threshold**;
# 3. **decode** their boxes and clip them to the image's real content (not to the padded
#    input), dropping the boxes left with zero area;
# 4. **non-maximum suppression** (NMS), per class, removes the duplicates;
# 5. keep at most `max_detections` per image.
#
# We write NMS ourselves first, check it against torchvision, then build the batched
# post-processing on top of torchvision's NMS.

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
#| default_exp nms

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torchvision
from IPython.display import display
from torch import nn

from fcos_lib.checks import exercise
from fcos_lib.drawing import draw_boxes
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.model import FCOS, FCOSPredictions
from fcos_lib.targets import strides_per_location

_ = torch.manual_seed(0)

# %% [markdown]
# ## Greedy NMS, by hand first
#
# Sort the boxes by score. Take the best one and keep it; throw away every remaining box that
# overlaps it with IoU **>** the threshold; repeat with the best of what is left. A box that
# was thrown away never throws away anything itself.
#
# Four boxes, threshold 0.5:
#
# | box | (x1, y1, x2, y2) | score | IoU with the boxes kept before it | kept? |
# |-----|------------------|-------|----------------------------------|-------|
# | D | (20, 20, 30, 30) | 0.95 | — | yes |
# | A | (0, 0, 10, 10) | 0.90 | D: 0 | yes |
# | B | (1, 0, 11, 10) | 0.80 | A: 90 / 110 = 0.82 | no |
# | C | (4, 0, 14, 10) | 0.70 | A: 60 / 140 = 0.43 (D: 0) | yes |
#
# `C` overlaps `B` with IoU 70 / 130 = 0.54 > 0.5, but `B` was already removed, so it does not
# count. The answer, as indices into `[A, B, C, D]`: `[3, 0, 2]`, best score first.
#
# **Vectorised.** All the IoUs we could need are those between pairs of boxes: compute the
# `(K, K)` IoU matrix **once**, in score order, and mark which pairs overlap too much. Then
# the only loop is over the boxes we keep: take the first survivor, drop the later
# survivors its row marks. With `K` candidates and `k` kept, that is `k` steps of tensor
# work instead of `K²` Python comparisons.
#
# **Bad inputs fail loudly.** A NaN score sorts first and a NaN box overlaps nothing, so NMS
# would quietly keep garbage; a box with `x2 < x1` has a negative area and a meaningless IoU;
# an IoU threshold of 5 keeps everything. `_check_nms_inputs` refuses all of them with one
# line naming the argument, at the cost of one elementwise pass and a single `.any()`.

# %%
#| export
"""Non-maximum suppression (NMS), greedy and class-specific: the course's own reference.

Chapter 08 of the course (notebooks/08_nms_inference.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3 and §4:
  detections are the locations' boxes after class-wise NMS (threshold 0.6 in torchvision's FCOS).
- Checked against torchvision.ops.nms and torchvision.ops.batched_nms (ops/boxes.py), including
  their tie order (equal scores: the lower index first, a stable sort, as torchvision's CPU
  kernel) and their strict test (a box is removed when IoU > iou_threshold).

The library's inference (fcos_lib.inference) uses torchvision's compiled NMS; these functions
are the readable version the chapter teaches and tests.

Dimension letters: K boxes. Boxes are (x1, y1, x2, y2) absolute pixels, x1 <= x2, y1 <= y2.
"""
import torch


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of boxes1 with every box of boxes2.

    Args:
        boxes1: (K1, 4), boxes2: (K2, 4), (x1, y1, x2, y2).
    Returns:
        (K1, K2) IoU; NaN for two zero-area boxes (0 / 0), which NMS treats as "no overlap".
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)  # (K1,) each
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)  # (K2,) each
    area1 = (x2 - x1) * (y2 - y1)  # (K1,)
    area2 = (x2g - x1g) * (y2g - y1g)  # (K2,)
    # One (K1, K2) matrix per axis (not (K1, K2, 2) stacks): half the memory for thousands of boxes.
    w = (torch.min(x2[:, None], x2g[None, :]) - torch.max(x1[:, None], x1g[None, :])).clamp(min=0)  # (K1, K2)
    h = (torch.min(y2[:, None], y2g[None, :]) - torch.max(y1[:, None], y1g[None, :])).clamp(min=0)  # (K1, K2)
    inter = w * h  # (K1, K2)
    return inter / (area1[:, None] + area2[None, :] - inter)


def _check_nms_inputs(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (K, 4) (x1, y1, x2, y2); got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be (K,) with K = {boxes.shape[0]} (one per box); got {tuple(scores.shape)}")
    if not 0 <= iou_threshold <= 1:  # also False for NaN
        raise ValueError(f"iou_threshold must be in [0, 1] (a box goes when its IoU with a better one is > this); "
                         f"got {iou_threshold}; pass e.g. 0.5")
    # The value checks cost one elementwise pass and one .any() (one GPU sync); which rule a bad
    # row breaks is worked out only once we know there is one.
    bad = (~torch.isfinite(boxes).all(dim=1) | ~torch.isfinite(scores)
           | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))  # (K,)
    if bad.any():
        k = int(bad.nonzero()[0])
        if not torch.isfinite(boxes[k]).all():
            raise ValueError(f"boxes must be finite; got {boxes[k].tolist()} in row {k} of {len(boxes)}; "
                             "drop or fix the NaN/inf rows (NaN outputs usually mean a diverged model)")
        if not torch.isfinite(scores[k]):
            raise ValueError(f"scores must be finite; got {scores[k].item()} at index {k} of {len(scores)}; "
                             "drop or fix the NaN/inf scores (NaN outputs usually mean a diverged model)")
        raise ValueError(f"boxes must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; got {boxes[k].tolist()} "
                         f"in row {k} of {len(boxes)}; convert (x, y, w, h) boxes to corners first")


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: keep the best box, drop the boxes that overlap it with IoU > iou_threshold, repeat.

    Args:
        boxes: (K, 4) (x1, y1, x2, y2).
        scores: (K,) higher is better. Equal scores: the lower index counts as better.
        iou_threshold: in [0, 1]; a box is removed when its IoU with a kept, better box is > this.
    Returns:
        (K_kept,) int64 indices into boxes, sorted by decreasing score (torchvision.ops.nms's contract).
    Raises:
        ValueError naming the argument: wrong shapes, NaN or inf in boxes or scores, a box with
        x2 < x1 or y2 < y1, iou_threshold outside [0, 1].
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    ### BEGIN SOLUTION
    ### HINT: a stable descending sort; the (K, K) IoU matrix once, > iou_threshold; keep the first survivor, drop what it overlaps
    order = torch.argsort(scores, descending=True, stable=True)  # (K,) stable: ties keep index order
    overlaps = pairwise_iou(boxes[order], boxes[order]) > iou_threshold  # (K, K) in score order; NaN -> False
    survivors = torch.arange(order.shape[0], device=boxes.device)  # positions in `order` still alive
    keep = []
    while survivors.numel() > 0:  # one step per kept box
        best, rest = survivors[0], survivors[1:]
        keep.append(best)
        survivors = rest[~overlaps[best, rest]]
    return order[torch.stack(keep)]
    ### END SOLUTION

# %% [markdown]
# Check: the worked example gives `[3, 0, 2]`; then torchvision agrees on random boxes and
# on the awkward cases. Ties: torchvision's CPU kernel sorts with a *stable* sort, so among
# equal scores the lower index comes first, and ours does the same (`stable=True`). (Its
# CUDA kernel does not promise an order among ties.)

# %%
A, B, C, D = [0.0, 0, 10, 10], [1.0, 0, 11, 10], [4.0, 0, 14, 10], [20.0, 20, 30, 30]
example_boxes, example_scores = torch.tensor([A, B, C, D]), torch.tensor([0.9, 0.8, 0.7, 0.95])
print("IoU matrix:\n", pairwise_iou(example_boxes, example_boxes).round(decimals=2))
with exercise("nms"):
    kept = nms(example_boxes, example_scores, 0.5).tolist()
    print("kept:", kept, "| torchvision:", torchvision.ops.nms(example_boxes, example_scores, 0.5).tolist())
    assert kept == [3, 0, 2], f"the worked example keeps {kept}, expected [3, 0, 2] (D, A, C: B overlaps A)"


# %%
def random_boxes(K: int, generator: torch.Generator, size: float = 200.0) -> torch.Tensor:
    """K boxes (x1, y1, x2, y2) inside [0, size + 60], sides 1..60 px."""
    corner = size * torch.rand(K, 2, generator=generator)
    return torch.cat([corner, corner + 1 + 59 * torch.rand(K, 2, generator=generator)], dim=1)  # (K, 4)


g = torch.Generator().manual_seed(0)
square = torch.tensor([[0.0, 0, 10, 10]])
cases = {
    "random, 300 boxes": (random_boxes(300, g), torch.rand(300, generator=g)),
    "ties: 300 boxes, 3 score values": (random_boxes(300, g), torch.randint(0, 3, (300,), generator=g).float()),
    "identical boxes, identical scores": (square.repeat(5, 1), torch.ones(5)),
    "IoU exactly 0.5 (kept: > is strict)": (torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]]), torch.tensor([0.9, 0.8])),
    "zero-area boxes": (torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]]), torch.tensor([0.9, 0.8, 0.7])),
    "empty": (torch.zeros(0, 4), torch.zeros(0)),
    "one box": (square, torch.tensor([0.3])),
    "5000 boxes": (random_boxes(5000, g, size=1000.0), torch.rand(5000, generator=g)),
}
with exercise("nms"):
    for name, (boxes, scores) in cases.items():
        ours, theirs = nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5)
        print(f"{name:38s} kept {len(ours):4d} of {len(boxes):4d} | same as torchvision: {torch.equal(ours, theirs)}")
        assert torch.equal(ours, theirs), (
            f"case {name!r}: kept {ours.tolist()[:8]}..., torchvision keeps {theirs.tolist()[:8]}... (indices, best first)")

# %% [markdown]
# And the inputs NMS refuses, each with one line that names the argument:

# %%
refused = {
    "NaN score": (example_boxes, torch.tensor([0.9, float("nan"), 0.7, 0.95]), 0.5),
    "inf box": (torch.tensor([A, B, C, [20.0, 20, float("inf"), 30]]), example_scores, 0.5),
    "x2 < x1": (torch.tensor([A, B, [14.0, 0, 4, 10], D]), example_scores, 0.5),
    "threshold 5": (example_boxes, example_scores, 5),
}
for name, (boxes, scores, threshold) in refused.items():
    try:
        nms(boxes, scores, threshold)
    except ValueError as err:
        print(f"{name:12s} -> ValueError: {err}")

# %% [markdown]
# > **Pitfall P11** ([the course's pitfalls note](../docs/pitfalls.md#p11-an-nms-that-cannot-run)). The seed's `nms` cannot run: it imports `iou` from a
# > module that does not exist (`two_stage_detector`), then masks the 2-D IoU matrix with a
# > 2-D mask of itself and indexes `boxes[:, mask]` (the wrong axis, and it never removes the
# > box it just kept, so the loop would not end), and it returns the kept *boxes* instead of
# > their *indices* (which callers need to pick the matching scores and labels). The
# > `class_spec_nms` it calls is never defined. Ours is tested against torchvision on every
# > case above.

# %% [markdown]
# ## Class-specific NMS: the offset trick
#
# A dog and the person holding it may overlap a lot; suppressing one with the other would be
# wrong. NMS must run **per class**. Rather than loop over the classes, shift every box by
# `label · span`, where `span` is larger than the extent of all coordinates: boxes of
# different classes then live in separate regions of the plane and can never overlap, and a
# single NMS call does the work of `C`.
#
# torchvision uses `span = max coordinate + 1`, which separates the classes when every
# coordinate is >= 0 (boxes clipped to the image). We use `max + 1 - min(0, min)`: the same
# number for such boxes (so we agree with torchvision to the bit), and still correct for
# negative coordinates. One caveat: large offsets cost float32 precision (about 0.001 px at
# an offset of 10⁴), harmless for image boxes.

# %%
#| export
def class_specific_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       iou_threshold: float) -> torch.Tensor:
    """NMS within each class only, in one call: boxes of class c are shifted by c * span.

    Args:
        boxes: (K, 4) (x1, y1, x2, y2).
        scores: (K,).
        labels: (K,) int class of each box; boxes of different classes never suppress each other.
        iou_threshold: as in nms.
    Returns:
        (K_kept,) int64 indices, sorted by decreasing score (ties: lower index first).
    Raises:
        ValueError naming the argument, as nms, and for labels of another shape than scores.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must be (K,) with K = {boxes.shape[0]}; got {tuple(labels.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # span > every coordinate range: max + 1 when all coordinates are >= 0 (torchvision's choice).
    span = boxes.max() + 1 - boxes.min().clamp(max=0)
    offsets = labels.to(boxes.dtype) * span  # (K,)
    return nms(boxes + offsets[:, None], scores, iou_threshold)

# %% [markdown]
# Check: two identical boxes of *different* classes both survive, of the same class only the
# better one; then agreement with `torchvision.ops.batched_nms` on random boxes with 5
# classes, with ties, and on thousands of boxes (where torchvision switches to one NMS per
# class, so this also checks that the offsets change nothing).

# %%
two = square.repeat(2, 1)
print("different classes:", class_specific_nms(two, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist(),
      "| same class:", class_specific_nms(two, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5).tolist())
for name, (boxes, scores) in cases.items():
    labels = torch.randint(0, 5, (len(boxes),), generator=g)
    ours = class_specific_nms(boxes, scores, labels, 0.5)
    theirs = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    # Above 1000 boxes torchvision re-sorts per-class results with an unstable sort: compare sets there.
    same = torch.equal(ours, theirs) if len(boxes) <= 1000 else torch.equal(ours.sort().values, theirs.sort().values)
    print(f"{name:38s} kept {len(ours):4d} of {len(boxes):4d} | same as torchvision: {same}")

# %% [markdown]
# ## Picture: before and after NMS
#
# Hand-made candidates, as a trained detector produces them: a dozen jittered boxes around
# each of three objects, with scores that fall as the box drifts from the object. Two objects
# of different classes (A and B, say a person and the dog in their arms) overlap with IoU
# 0.68, above the threshold 0.6: class-specific NMS keeps one box for each object, while a
# class-agnostic NMS would delete one of the two.

# %%
g = torch.Generator().manual_seed(3)
objects = torch.tensor([[20.0, 30, 130, 180], [35, 40, 145, 190], [150, 140, 215, 210]])  # (3, 4)
object_labels = torch.tensor([0, 1, 2])
sizes = (objects[:, 2:] - objects[:, :2]).repeat(1, 2)  # (3, 4): w, h, w, h
noise = torch.randn(3, 12, 4, generator=g)  # (3, 12, 4)
candidate_boxes = (objects[:, None, :] + 0.06 * sizes[:, None, :] * noise).reshape(-1, 4).clamp(0, 224)  # (36, 4)
candidate_labels = object_labels.repeat_interleave(12)  # (36,)
candidate_scores = 0.95 * torch.exp(-noise.abs().mean(dim=-1).reshape(-1))  # (36,) lower when further off
print("IoU of objects 0 and 1:", round(pairwise_iou(objects[:1], objects[1:2]).item(), 2))

def draw_candidates(ax, keep, title, with_scores=True):
    ax.imshow(torch.full((224, 224, 3), 0.92))
    draw_boxes(ax, candidate_boxes[keep], candidate_labels[keep], candidate_scores[keep] if with_scores else None,
               class_names=["A", "B", "C"] if with_scores else None)
    ax.set_title(title)
    ax.axis("off")


kept = class_specific_nms(candidate_boxes, candidate_scores, candidate_labels, 0.6)
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
draw_candidates(axes[0], torch.arange(len(candidate_boxes)), f"before NMS: {len(candidate_boxes)} boxes", with_scores=False)
draw_candidates(axes[1], kept, f"after class-specific NMS (IoU 0.6): {len(kept)} boxes")
plt.show()
print("class-specific NMS keeps labels", candidate_labels[kept].tolist())
print("class-agnostic NMS would keep", candidate_labels[nms(candidate_boxes, candidate_scores, 0.6)].tolist())

# %% [markdown]
# ## Try the thresholds
#
# The score threshold removes weak boxes before NMS; the IoU threshold says how much overlap
# makes two boxes "the same object". Too low an IoU threshold merges neighbours; too high
# lets duplicates through. The figure shows the default view; in a live notebook, move a
# slider and the view is redrawn below the sliders.

# %%
def draw_thresholds(score_thresh=0.3, iou_thresh=0.6):
    confident = torch.where(candidate_scores > score_thresh)[0]
    keep = confident[class_specific_nms(candidate_boxes[confident], candidate_scores[confident],
                                        candidate_labels[confident], iou_thresh)]
    fig, ax = plt.subplots(figsize=(5, 5))
    draw_candidates(ax, keep, f"score > {score_thresh:.2f}, IoU {iou_thresh:.2f}: {len(keep)} boxes")
    plt.show()


draw_thresholds()  # the default view, drawn once

score_slider = widgets.FloatSlider(value=0.3, min=0.0, max=0.95, step=0.05, description="score >")
iou_slider = widgets.FloatSlider(value=0.6, min=0.05, max=0.95, step=0.05, description="IoU >")
redrawn = widgets.Output()


def redraw(_change):  # runs only when a slider moves (in a live notebook)
    with redrawn:
        redrawn.clear_output(wait=True)
        draw_thresholds(score_slider.value, iou_slider.value)


score_slider.observe(redraw, names="value")
iou_slider.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox([score_slider, iou_slider]), redrawn]))

# %% [markdown]
# ## Why a square root
#
# The FCOS paper (§3.3) ranks boxes by the class probability `p` multiplied by the predicted
# centerness `c`. The official FCOS code and torchvision's `FCOS.postprocess_detections` report
# the square root, `sqrt(p · c)`, and so do we. (The official code thresholds `p` alone at 0.05,
# then multiplies by `c` and takes the square root; torchvision and this course threshold
# `sqrt(p · c)` itself.) Two reasons:
#
# - **It changes no ranking.** The square root is increasing: `sqrt(p · c) > sqrt(p' · c')`
#   exactly when `p · c > p' · c'`. Boxes come out in the same order, within an image and
#   across images, so NMS keeps the same boxes and AP, which only uses that order, is the same.
#   The one thing that moves is the score threshold: `sqrt(p · c) > t` is `p · c > t²`.
# - **It keeps the score on the scale of a probability.** `sqrt(p · c)` is the geometric mean of
#   two probabilities: when both are 0.6 it is 0.6, where the product is 0.36. A threshold like
#   0.05 or 0.3 then means roughly what it means for a class probability. The plain product of
#   two probabilities is much smaller: a box with `p = c = 0.2` scores 0.04 and would fall under
#   the default threshold 0.05, while its square root, 0.2, passes.
#
# This is a different square root from the one inside the centerness target (chapter 06): that
# one is part of the paper's definition of `c`; this one is applied to the score.

# %% [markdown]
# ## Batched inference
#
# Now the real thing: the model's `FCOSPredictions` for a batch of `B` images. torchvision
# post-processes one image at a time, one level at a time. We keep its steps and order but
# run them on the whole batch at once:
#
# - the scores `sqrt(sigmoid(cls) · sigmoid(ctr))` for all `(B, L, C)` in one go;
# - per level, candidates above the threshold and their top-k, with one `topk` over the
#   `(B, L_l · C)` scores (those below the threshold are masked out first);
# - every box decoded once, `(B, L, 4)`, clipped to its image's real content `(h, w)`
#   (`image_sizes`; the padded input when not given), and the candidates' boxes gathered
#   from it; candidates whose box has zero width or height after clipping (wholly in the
#   padding) are dropped;
# - then NMS image by image (torchvision's `batched_nms`, class-specific), and at most
#   `max_detections` per image.
#
# **Clip before NMS, to the image, not to the padded input.** NMS must compare the boxes as
# they will be returned: two boxes that differ only inside the padding are the same detection
# (see the check after `detect`). Dropping the zero-area boxes departs from torchvision, which
# keeps them: such a box has IoU 0 with every box, so NMS never removes it, and it would take
# one of the `max_detections` places from a real detection.
#
# Why not one NMS call for the whole batch, with `image · C + class` as the group? It works
# (boxes of different images then never suppress each other), but NMS costs grow with the
# *square* of the boxes compared, and such a call compares boxes of different images for
# nothing: on the CPU, `B` calls on ~`K` boxes each beat one call on `B·K` boxes (measured in
# `bench/bench_inference.py`). The loop over images is short (`B` steps) and does no tensor
# work besides the NMS itself.
#
# **The threshold: 0.5, not the paper's 0.6.** A detector still unsure where an object ends puts
# several boxes on it from neighbouring locations; those that overlap the best one by less than
# the threshold survive, and each is a false positive at IoU 0.5. Chapter 10 re-scores its
# trained checkpoints at 0.3-0.7 and finds 0.5 ahead of 0.6 on every one (`NMS_THRESH`; pass
# `nms_thresh=0.6` for the paper's value). The illustrations above keep 0.6.
#
# **No in-place edits.** `sigmoid()` makes new tensors; the predictions the caller passed in
# are left as they were.
#
# **No silent NaN.** A NaN logit sorts first in `topk` and then fails every comparison, so a
# diverged model would simply "detect nothing". Both post-processing functions first check
# that the three prediction tensors are finite (one `.all()` over the stacked results) and
# name the tensor that is not; `nms_thresh` outside `[0, 1]` is refused too.
#
# > **Pitfall P12** ([the course's pitfalls note](../docs/pitfalls.md#p12-inference-for-one-image-with-an-in-place-sigmoid)). The seed's `inference` handles one image only (it indexes
# > `[0]` and ignores the rest of the batch) and calls `sigmoid_()` *in place* on the
# > network's outputs: a second call on the same predictions applies the sigmoid twice, and
# > anything else holding those tensors (a loss, a plot) silently sees probabilities instead
# > of logits.

# %%
#| export inference
"""Batched FCOS post-processing: scores, per-level top-k, decoding, class-wise NMS, detections.

Chapter 08 of the course (notebooks/08_nms_inference.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.3 (the
  score multiplies the class probability by the centerness) and §4 (score 0.05; NMS 0.6 there,
  0.5 here: NMS_THRESH).
- Follows torchvision.models.detection.fcos.FCOS.postprocess_detections (score =
  sqrt(sigmoid(cls) * sigmoid(ctr)), threshold, top-k per level, decode, clip to each image's
  size before padding, batched_nms, detections_per_img); scores, top-k and decoding run on the
  whole batch at once, NMS per image.
- Departure from torchvision: boxes with zero width or height after clipping (wholly in the
  letterbox padding) are dropped before NMS; torchvision returns them, and as they overlap
  nothing they survive NMS and crowd real detections out of detections_per_img.

detect_files runs the whole path on image files (the CLI's `detect`).

Dimension letters: B images, L locations (levels concatenated p3, p4, p5), L_l locations of one
level, C classes, K candidates. Boxes (x1, y1, x2, y2) in network-input pixels unless mapped back.
"""
import json
import os
from pathlib import Path

import torch
import torchvision

from fcos_lib.deltas import fcos_apply_deltas_to_locations
from fcos_lib.transforms import boxes_to_original


def _check_postprocess_args(score_thresh, nms_thresh, topk_candidates, max_detections) -> None:
    if not 0 <= score_thresh < 1:
        raise ValueError(f"score_thresh must be in [0, 1); got {score_thresh}")
    if not 0 <= nms_thresh <= 1:
        raise ValueError(f"nms_thresh must be in [0, 1]; got {nms_thresh}")
    for name, value in {"topk_candidates": topk_candidates, "max_detections": max_detections}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")


def _check_predictions_finite(predictions) -> None:
    tensors = {"cls_logits": predictions.cls_logits, "box_deltas": predictions.box_deltas,
               "ctr_logits": predictions.ctr_logits}
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])  # (3,) bool
    if not finite.all():  # one sync for the three checks
        name = list(tensors)[int((~finite).nonzero()[0])]
        raise ValueError(f"predictions.{name} holds NaN or inf values, but the model's outputs must be finite; "
                         "check the checkpoint (a diverged run gives NaN) and the input images")


def _image_sizes_or_input(image_sizes, batch_size: int, input_size) -> list:
    """The B (h, w) content sizes, checked; None -> the whole (H, W) input for every image."""
    H, W = (int(v) for v in input_size)
    if image_sizes is None:
        return [(H, W)] * batch_size

    def fits(size) -> bool:  # (h, w) ints with 0 < h <= H, 0 < w <= W
        return (isinstance(size, (tuple, list)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
                and 0 < size[0] <= H and 0 < size[1] <= W)

    if len(image_sizes) != batch_size or not all(fits(size) for size in image_sizes):
        raise ValueError(f"image_sizes must be {batch_size} (h, w) pairs of ints, one per image, with "
                         f"0 < h <= {H} and 0 < w <= {W} (the content inside the padded input); got {image_sizes!r}")
    return [(h, w) for h, w in image_sizes]


# The IoU above which class-wise NMS drops a box. The paper and torchvision use 0.6. Chapter 10
# re-scored 23 trained checkpoints (four rows on three held-out datasets, two on the main job) at
# 0.3-0.7 (bench/nms_sweep.py): 0.5 beat 0.6 on every one, mAP@0.5 up by 2-6 %, mAP@[.5:.95]
# unchanged. 0.4 did about as well there; 0.5 leaves more room for crowds of one class, which
# those datasets hold few of.
NMS_THRESH = 0.5


def fcos_postprocess(predictions, score_thresh: float = 0.05, nms_thresh: float = NMS_THRESH,
                     topk_candidates: int = 1000, max_detections: int = 100, image_sizes=None,
                     use_centerness: bool = True) -> list:
    """Detections for every image of a batch, in network-input pixels.

    Args:
        predictions: FCOSPredictions from FCOS in eval mode: cls_logits (B, L, C), box_deltas
            (B, L, 4), ctr_logits (B, L, 1), locations (L, 2), strides (L,),
            num_locations_per_level, image_size (H, W). Not modified.
        score_thresh: keep (location, class) pairs whose score is > this.
        nms_thresh: class-wise NMS removes a box whose IoU with a better one is > this.
        topk_candidates: at most this many candidates per level and image before NMS.
        max_detections: at most this many detections per image, best first.
        image_sizes: list of B (h, w) ints, each image's real content in network-input pixels
            before the letterbox padding (target["resized_size"]); None: the whole (H, W) input.
        use_centerness: score = sqrt(sigmoid(cls) * sigmoid(ctr)) when True (the default); the
            class probability sigmoid(cls) alone when False, to measure what centerness adds.
    Returns:
        list of B dicts: boxes (K, 4) float32 with 0 <= x1 < x2 <= w, 0 <= y1 < y2 <= h of
        their image, scores (K,) in (0, 1], labels (K,) int64 in [0, C), sorted by decreasing score.
    Raises:
        ValueError naming the argument: a threshold or count out of range, NaN or inf in
        cls_logits, box_deltas or ctr_logits, image_sizes that do not fit the input.
    """
    _check_postprocess_args(score_thresh, nms_thresh, topk_candidates, max_detections)
    _check_predictions_finite(predictions)
    cls_logits, box_deltas, ctr_logits = predictions.cls_logits, predictions.box_deltas, predictions.ctr_logits
    B, L, C = cls_logits.shape
    image_sizes = _image_sizes_or_input(image_sizes, B, predictions.image_size)
    ### BEGIN SOLUTION
    ### HINT: follow the list above: new tensors only; clip to each image before picking; NMS per image (batched_nms)
    # New tensors, never sigmoid_(): the caller's predictions stay logits (pitfall P12, docs/pitfalls.md).
    scores = torch.sigmoid(cls_logits.float())  # (B, L, C)
    if use_centerness:
        scores = torch.sqrt(scores * torch.sigmoid(ctr_logits.float()))  # (B, L, C), see "Why a square root"
    boxes = fcos_apply_deltas_to_locations(box_deltas.float(), predictions.locations, predictions.strides)  # (B, L, 4)
    # Clip to each image's content, not to the padded input, BEFORE NMS (as torchvision's image_shapes).
    limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)  # (B, 4)
    boxes = torch.minimum(boxes.clamp(min=0), limits[:, None, :])  # (B, L, 4)

    top_scores, top_locations, top_labels = [], [], []
    start = 0
    for L_l in predictions.num_locations_per_level:
        level_scores = scores[:, start:start + L_l].reshape(B, L_l * C)  # (B, L_l*C), index = loc * C + class
        level_scores = level_scores.masked_fill(level_scores <= score_thresh, -1.0)  # below threshold: never picked
        values, indices = level_scores.topk(min(topk_candidates, L_l * C), dim=1)  # (B, k) each, sorted
        top_scores.append(values)
        top_locations.append(start + torch.div(indices, C, rounding_mode="floor"))
        top_labels.append(indices % C)
        start += L_l
    top_scores = torch.cat(top_scores, dim=1)  # (B, K)
    top_locations = torch.cat(top_locations, dim=1)  # (B, K)
    top_labels = torch.cat(top_labels, dim=1)  # (B, K)
    top_boxes = boxes.gather(1, top_locations[..., None].expand(-1, -1, 4))  # (B, K, 4)
    valid = top_scores > score_thresh  # (B, K): drop the masked-out fill-ins ...
    # ... and the boxes wholly in the padding, zero-area once clipped. Departure from torchvision,
    # which keeps them: with IoU 0 with every box, NMS never removes them, and they would take
    # max_detections places from real detections.
    valid &= (top_boxes[..., 2] > top_boxes[..., 0]) & (top_boxes[..., 3] > top_boxes[..., 1])

    detections = []
    for b in range(B):  # NMS per image: boxes of different images must never be compared
        boxes_b, scores_b, labels_b = top_boxes[b][valid[b]], top_scores[b][valid[b]], top_labels[b][valid[b]]
        keep = torchvision.ops.batched_nms(boxes_b, scores_b, labels_b, nms_thresh)[:max_detections]
        detections.append({"boxes": boxes_b[keep], "scores": scores_b[keep], "labels": labels_b[keep]})
    return detections
    ### END SOLUTION


def fcos_postprocess_per_image(predictions, score_thresh: float = 0.05, nms_thresh: float = NMS_THRESH,
                               topk_candidates: int = 1000, max_detections: int = 100, image_sizes=None) -> list:
    """The same detections as fcos_postprocess, one image and one level at a time.

    torchvision's loop (FCOS.postprocess_detections: boxes clipped to each image's (h, w)
    before NMS), plus the removal of zero-area boxes; kept as the reference that
    fcos_postprocess is tested and benchmarked against.
    """
    _check_postprocess_args(score_thresh, nms_thresh, topk_candidates, max_detections)
    _check_predictions_finite(predictions)
    B, L, C = predictions.cls_logits.shape
    image_sizes = _image_sizes_or_input(image_sizes, B, predictions.image_size)
    detections = []
    for b in range(B):
        image_boxes, image_scores, image_labels = [], [], []
        start = 0
        for L_l in predictions.num_locations_per_level:
            level = slice(start, start + L_l)
            scores = torch.sqrt(torch.sigmoid(predictions.cls_logits[b, level].float())
                                * torch.sigmoid(predictions.ctr_logits[b, level].float())).flatten()  # (L_l*C,)
            candidates = torch.where(scores > score_thresh)[0]  # (K_l,)
            scores, order = scores[candidates].topk(min(topk_candidates, candidates.numel()))
            candidates = candidates[order]
            locations = start + torch.div(candidates, C, rounding_mode="floor")  # (K_l,)
            image_boxes.append(fcos_apply_deltas_to_locations(
                predictions.box_deltas[b, locations].float(), predictions.locations[locations],
                predictions.strides[locations], image_size=image_sizes[b]))  # (K_l, 4) clipped to the content
            image_scores.append(scores)
            image_labels.append(candidates % C)
            start += L_l
        boxes, scores, labels = torch.cat(image_boxes), torch.cat(image_scores), torch.cat(image_labels)
        positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not wholly in the padding
        boxes, scores, labels = boxes[positive], scores[positive], labels[positive]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections

# %% [markdown]
# Check, on an untrained model (its class probabilities sit near the prior 0.01, so
# `sqrt(0.01 · 0.5) ≈ 0.07` passes the default threshold 0.05 and gives plenty of candidates):
# batches of 1 and 5 non-square 160 x 224 images; the batched version gives the per-image
# loop's detections (`same_detections` allows the last bit of a score to differ: a sigmoid over
# a `(B, L, C)` tensor and over an `(L_l, C)` slice may round differently); the predictions are unchanged afterwards; every box lies in
# the image.

# %%
#| export inference
def same_detections(a: list, b: list, atol: float = 1e-5) -> bool:
    """Two lists of detections agree: same count per image, scores within atol (both sorted), and the
    same (label, box) rows in some order (scores computed on differently shaped tensors may differ
    in the last bit, which can swap two near-equal detections)."""
    def rows(d):  # (K, 5) label + box, sorted lexicographically
        table = torch.cat([d["labels"][:, None].float(), d["boxes"]], dim=1)
        order = torch.arange(len(table))
        for column in reversed(range(5)):
            order = order[table[order, column].argsort(stable=True)]
        return table[order]
    return len(a) == len(b) and all(
        len(x["scores"]) == len(y["scores"]) and torch.allclose(x["scores"], y["scores"], atol=atol)
        and torch.allclose(rows(x), rows(y), atol=1e-4) for x, y in zip(a, b))


# %%
torch.manual_seed(0)
model = FCOS(num_classes=5).eval()
with exercise("fcos_postprocess"):
    for batch_size in (1, 5):
        with torch.no_grad():
            predictions = model(torch.rand(batch_size, 3, 160, 224))
        before = [t.clone() for t in predictions[:5]]
        batched = fcos_postprocess(predictions)
        looped = fcos_postprocess_per_image(predictions)
        same = same_detections(batched, looped)
        unchanged = all(torch.equal(x, y) for x, y in zip(before, predictions[:5]))
        inside = all(bool(((d["boxes"] >= 0) & (d["boxes"] <= torch.tensor([224, 160, 224, 160]))).all()) for d in batched)
        print(f"B={batch_size}: detections per image {[len(d['boxes']) for d in batched]} | same as the loop: {same} "
              f"| predictions unchanged: {unchanged} | boxes inside the image: {inside}")
        assert unchanged, "the predictions changed: use torch.sigmoid(x), never x.sigmoid_() (pitfall P12)"
        assert same, (f"B={batch_size}: detections per image {[len(d['boxes']) for d in batched]}, the per-image "
                      f"loop finds {[len(d['boxes']) for d in looped]} (every image of the batch, its own NMS)")
        assert inside, "a box reaches outside the 160 x 224 image: clip before NMS"

# %% [markdown]
# ## From the network's input back to the photo
#
# The data pipeline of chapter 00 letterboxed every image: longest side scaled to `S`, then
# padded at the bottom and right. Detections come out in those network-input pixels. Given
# the targets, `detect` clips each image's boxes to its content (`resized_size`) before NMS
# (the pitfall below shows why), maps them back with `boxes_to_original`, and runs the model
# in eval mode without gradients, putting it back in the mode it found it in.

# %%
#| export inference
@torch.no_grad()
def detect(model, images: torch.Tensor, targets=None, **postprocess_kwargs) -> list:
    """Run `model` on a batch and post-process: one dict(boxes, scores, labels) per image.

    Args:
        model: an FCOS (any module whose eval-mode forward(images) returns FCOSPredictions).
            It runs in eval mode without gradients; its train/eval mode is restored afterwards.
        images: (B, 3, H, W) float in [0, 1].
        targets: optional list of B dicts with orig_size (H, W) and resized_size (h, w), as
            VOCDataset or transforms.letterbox give; boxes are then clipped to each image's content
            (resized_size) before NMS, and mapped to each original image's pixels. Without
            it, boxes stay in network-input pixels, clipped to the input.
        postprocess_kwargs: score_thresh, nms_thresh, topk_candidates, max_detections
            (and image_sizes, which targets fill in).
    """
    if targets is not None and len(targets) != images.shape[0]:
        raise ValueError(
            f"targets must hold one dict per image: {images.shape[0]} images but {len(targets)} targets"
        )
    was_training = model.training
    model.eval()
    try:
        predictions = model(images)
    finally:
        model.train(was_training)
    if targets is not None:
        postprocess_kwargs = {"image_sizes": [tuple(t["resized_size"]) for t in targets], **postprocess_kwargs}
    detections = fcos_postprocess(predictions, **postprocess_kwargs)
    if targets is not None:
        for detection, target in zip(detections, targets):
            detection["boxes"] = boxes_to_original(detection["boxes"], target)
    return detections

# %% [markdown]
# Check, by hand. A photo 224 wide and 448 tall is letterboxed to 224: scaled by 1/2 to
# 112 x 224 (W x H), then padded on the right. A stand-in model predicts one confident
# object at the `p3` location `(x, y) = (28, 60)` (column 3, row 7: `k = 7·28 + 3 = 199`)
# with deltas `(l, t, r, b) = (18, 40, 22, 40) / 8`, i.e. the box `(10, 20, 50, 100)` in
# network pixels. In the photo that is twice as large: `(20, 40, 100, 200)`.

# %%
class OneObjectModel(nn.Module):
    """Stands in for FCOS on 224 x 224 inputs: one object of class 2 at p3 location 199."""

    def forward(self, images):
        B = images.shape[0]
        strides = {"p3": 8, "p4": 16, "p5": 32}
        locations_per_level = get_fpn_location_coords({"p3": (28, 28), "p4": (14, 14), "p5": (7, 7)}, strides)
        L = 28 * 28 + 14 * 14 + 7 * 7
        cls_logits = torch.full((B, L, 3), -10.0)  # (B, L, C): "no object" everywhere ...
        cls_logits[:, 199, 2] = 10.0  # ... except class 2 at location 199
        box_deltas = torch.zeros(B, L, 4)
        box_deltas[:, 199] = torch.tensor([18.0, 40, 22, 40]) / 8  # LTRB / stride
        ctr_logits = torch.full((B, L, 1), 10.0)
        return FCOSPredictions(cls_logits, box_deltas, ctr_logits, torch.cat(list(locations_per_level.values())),
                               strides_per_location(locations_per_level, strides), [784, 196, 49], (224, 224))


stand_in = OneObjectModel().train()
print("location 199:", stand_in(torch.zeros(1, 3, 224, 224)).locations[199].tolist())
target = {"orig_size": (448, 224), "resized_size": (224, 112)}
in_network = detect(stand_in, torch.zeros(1, 3, 224, 224))[0]
in_photo = detect(stand_in, torch.zeros(1, 3, 224, 224), [target])[0]
print("network pixels:", in_network["boxes"].tolist(), "| photo pixels:", in_photo["boxes"].tolist(),
      "| label:", in_photo["labels"].tolist(), "| score:", round(in_photo["scores"].item(), 5))
print("model back in training mode:", stand_in.training)

# %% [markdown]
# > **Pitfall P13** ([the course's pitfalls note](../docs/pitfalls.md#p13-boxes-clipped-to-the-padded-input-before-nms)). **Clip to the image, not to the padded input, before NMS.** A photo 224 wide and
# > 112 tall fills the top half of the 224 x 224 input (`resized_size = (112, 224)`). Three
# > class-0 boxes, best first: `(10, 80, 60, 200)` and `(10, 80, 60, 115)` differ only below
# > `y = 112`, in the padding; `(10, 150, 60, 200)` lies wholly in the padding. Clipped to the
# > padded input, NMS keeps all three (IoU `50·35 / (50·120) = 0.29` and `0.42` with the
# > first, both below 0.6); mapping them back to the photo then clips them into the same box
# > twice and a zero-height box on the bottom edge. Clipped to the content first, as
# > torchvision clips to each image's size before padding, the first two become one box
# > `(10, 80, 60, 112)` (IoU 1: NMS keeps the better) and the third has zero height. We drop
# > zero-area boxes before NMS, where torchvision keeps them: with IoU 0 with every box they
# > always survive NMS, and they would take `max_detections` places from real detections.
# > `detect` passes each target's `resized_size` as `image_sizes`.

# %%
def three_boxes_in_the_padding(B=1):
    """One 224 x 224 input; class-0 boxes at p3 locations 339 (28, 100), 340 (36, 100), 591 (28, 172)."""
    predictions = OneObjectModel()(torch.zeros(B, 3, 224, 224))
    cls_logits = torch.full_like(predictions.cls_logits, -10.0)  # (B, L, C)
    box_deltas = torch.zeros_like(predictions.box_deltas)  # (B, L, 4)
    for k, box, logit in [(339, [10.0, 80, 60, 200], 8.0), (340, [10.0, 80, 60, 115], 7.0), (591, [10.0, 150, 60, 200], 6.0)]:
        (x, y), (x1, y1, x2, y2) = predictions.locations[k].tolist(), box
        cls_logits[:, k, 0] = logit
        box_deltas[:, k] = torch.tensor([x - x1, y - y1, x2 - x, y2 - y]) / 8  # LTRB / stride
    return predictions._replace(cls_logits=cls_logits, box_deltas=box_deltas)


wide_photo = {"orig_size": (112, 224), "resized_size": (112, 224)}  # scale 1: photo pixels = network pixels
padded_first = fcos_postprocess(three_boxes_in_the_padding())[0]["boxes"]
print("clipped to the padded input, NMS, then to the photo:", boxes_to_original(padded_first, wide_photo).tolist())
content_first = fcos_postprocess(three_boxes_in_the_padding(), image_sizes=[wide_photo["resized_size"]])[0]["boxes"]
print("clipped to the content, then NMS:                   ", content_first.tolist())


class ThreeBoxesModel(nn.Module):
    def forward(self, images):
        return three_boxes_in_the_padding(images.shape[0])


print("detect with the target:                             ",
      detect(ThreeBoxesModel(), torch.zeros(1, 3, 224, 224), [wide_photo])[0]["boxes"].tolist())

# %% [markdown]
# ## Image files in, annotated images and JSON out
#
# What `python -m fcos_lib detect photo.jpg photos/` runs: each file is read (chapter 00's
# `load_image`), letterboxed exactly as in training (`letterbox`), detected with `detect`
# (which clips to the photo and maps the boxes back to its pixels), and written out twice:
# drawn on the photo, and as numbers in `detections.json`.
#
# A real folder of photos is messy, and a run over thousands of them must not be lost to one
# of them. So:
#
# - **a folder means the images inside it** (`image_files`: recursively, by suffix, in sorted
#   order, skipping hidden files and the output folder itself, so a second run does not
#   detect on its own annotated images); a path that does not exist stops everything before
#   any work;
# - **a file that cannot be read** (0 bytes, truncated, not an image) is skipped and listed
#   under `"failed"` with the reason; `detections.json` is written even when every file fails;
# - **output names never collide**: `a/photo.jpg` and `b/photo.jpg` give `photo_detections.png`
#   and `photo_2_detections.png`, and each entry of `"images"` records its `"output"`.

# %%
#| export inference
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def image_files(paths, exclude=None) -> list[Path]:
    """The image files that `paths` name: files as given, each folder replaced by the images in it.

    A folder stands for every file under it, recursively, whose suffix is one of IMAGE_SUFFIXES
    (any case): each folder's own files sorted by name, then its subfolders in name order.
    Hidden files and folders (names starting with "."), symlinked folders and the folder
    `exclude` (detect_files's output) are skipped. A file named twice is kept once.

    Raises:
        FileNotFoundError for a path that does not exist; ValueError for a folder with no image.
    """
    exclude = Path(exclude).resolve() if exclude is not None else None
    files, seen = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            found = []
            for folder, subfolders, names in os.walk(path):  # top-down; never follows symlinked folders
                subfolders[:] = sorted(d for d in subfolders
                                       if not d.startswith(".") and Path(folder, d).resolve() != exclude)
                found += [Path(folder, name) for name in sorted(names)
                          if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise ValueError(f"folder {path} holds no image files (suffixes {', '.join(IMAGE_SUFFIXES)}); "
                                 "pass image files or a folder that holds some")
        elif path.exists():
            found = [path]  # a file named on its own is tried whatever its suffix
        else:
            raise FileNotFoundError(f"image or folder {path} does not exist; check the path")
        for file in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                files.append(file)
    return files


def _unique_output_name(stem: str, taken: set) -> str:
    """`<stem>_detections.png`, or `<stem>_<k>_detections.png` with the smallest k >= 2 not in `taken`."""
    name, k = f"{stem}_detections.png", 2
    while name in taken:
        name, k = f"{stem}_{k}_detections.png", k + 1
    taken.add(name)
    return name


def detect_files(model, paths, out, class_names, image_size: int, score_thresh: float = 0.3,
                 device="cpu", progress: bool = False, nms_thresh: float = NMS_THRESH) -> dict:
    """Detect objects in image files and folders; write an annotated PNG per image and detections.json to `out`.

    Args:
        model: a trained FCOS (eval mode is set inside `detect`).
        paths: image files (JPEG, PNG, ...) and folders of them (see image_files).
        out: output folder, created if needed.
        class_names: the C names of the model's classes (a checkpoint's "class_names").
        image_size: S, the square input the model was trained at (a checkpoint's config).
        progress: show a progress bar over the files (tqdm.auto, on stderr).
        score_thresh, nms_thresh: the detections kept, as in fcos_postprocess (0.3: fewer, surer
            boxes than the 0.05 that the metric wants).
    Returns:
        what detections.json holds: {"images": [one dict per image read: image (its path),
        output (the annotated PNG's name in `out`), width, height, detections [{box (x1, y1,
        x2, y2) in the image's own pixels, score, label (a class name)}, best first]],
        "failed": [{image, error} for each file that could not be read]}.

    A file that cannot be read is skipped and listed under "failed"; detections.json is written
    even when every file fails. Output names: `<stem>_detections.png`, or `<stem>_2_detections.png`,
    `_3_`, ... when an earlier image of the run took that name, so no output overwrites another.
    """
    import matplotlib.pyplot as plt
    from PIL import Image
    from tqdm.auto import tqdm

    from fcos_lib.data import load_image
    from fcos_lib.drawing import draw_boxes
    from fcos_lib.transforms import letterbox
    from fcos_lib.voc import DatasetError

    out = Path(out)
    files = image_files(paths, exclude=out)  # a missing path stops here, before any work
    out.mkdir(parents=True, exist_ok=True)
    images, failed, taken = [], [], set()
    bar = tqdm(files, desc="detect", unit="image", disable=not progress)
    for path in bar:
        try:
            image = load_image(path)  # DatasetError naming the file when it cannot be read
            tensor, meta = letterbox(image, image_size)
        except (DatasetError, OSError, ValueError, Image.DecompressionBombError) as err:
            failed.append({"image": str(path), "error": str(err)})
            bar.set_postfix(failed=len(failed))
            continue
        det = detect(model, tensor[None].to(device), [meta], score_thresh=score_thresh, nms_thresh=nms_thresh)[0]
        boxes, scores, labels = det["boxes"].cpu(), det["scores"].cpu(), det["labels"].cpu()
        output = _unique_output_name(path.stem, taken)
        images.append({
            "image": str(path), "output": output,
            "width": image.width, "height": image.height,
            "detections": [
                {"box": [round(v, 2) for v in b.tolist()], "score": round(float(s), 4), "label": class_names[int(c)]}
                for b, s, c in zip(boxes, scores, labels)
            ],
        })
        fig, ax = plt.subplots(figsize=(6, 6 * image.height / image.width))
        ax.imshow(image)
        ax.axis("off")
        draw_boxes(ax, boxes, labels, scores, class_names=class_names)
        fig.savefig(out / output, dpi=100, bbox_inches="tight")
        plt.close(fig)
    results = {"images": images, "failed": failed}
    (out / "detections.json").write_text(json.dumps(results, indent=2))
    return results

# %% [markdown]
# The three-box model on a folder holding a photo 224 wide and 112 tall, a `photo.png` in each
# of two subfolders, an empty (0-byte) `broken.jpg`, and a text file: the text file is not an
# image and is not taken, the broken file is listed as failed, the two `photo.png` get two
# outputs, and each photo gives one detection in its own pixels.

# %%
import tempfile

from PIL import Image

files_dir = Path(tempfile.mkdtemp())
Image.new("RGB", (224, 112), (90, 90, 90)).save(files_dir / "wide.png")
for sub in ("a", "b"):
    (files_dir / sub).mkdir()
    Image.new("RGB", (448, 224), (90, 90, 90)).save(files_dir / sub / "photo.png")
(files_dir / "broken.jpg").write_bytes(b"")
(files_dir / "notes.txt").write_text("not an image")
print([str(p.relative_to(files_dir)) for p in image_files([files_dir])])
found = detect_files(ThreeBoxesModel(), [files_dir], files_dir / "out", class_names=["shape"],
                     image_size=224, score_thresh=0.05)
for item in found["images"]:
    print(Path(item["image"]).relative_to(files_dir), "->", item["output"], item["width"], item["height"], item["detections"])
print("failed:", [str(Path(f["image"]).relative_to(files_dir)) for f in found["failed"]])
print(sorted(p.name for p in (files_dir / "out").iterdir()))
print("detections.json holds the same:", json.loads((files_dir / "out" / "detections.json").read_text()) == found)

# %% [markdown]
# ## Final check
#
# The whole inference path, from images to detections, on a batch of 5 non-square inputs
# whose content ends at a different place in each (the rest is black padding): `detect`
# equals the model + the per-image reference loop, keeps every box inside its image's content
# with a positive area, respects `max_detections`, gives labels in `[0, C)` and scores above
# the threshold, sorted, and leaves the model in the mode it was in.

# %%
torch.manual_seed(0)
model = FCOS(num_classes=5).train()
images = torch.rand(5, 3, 160, 224)
content = [(160, 224), (160, 112), (96, 224), (160, 64), (128, 200)]  # (h, w) of each image's content
for image, (h, w) in zip(images, content):
    image[:, h:], image[:, :, w:] = 0, 0  # the padding
targets = [{"orig_size": size, "resized_size": size} for size in content]  # scale 1: photo = network pixels
detections = detect(model, images, targets, score_thresh=0.05, max_detections=50)
with torch.no_grad():
    reference = fcos_postprocess_per_image(model.eval()(images), score_thresh=0.05, max_detections=50,
                                           image_sizes=content)
model.train()


def inside_with_area(boxes, h, w):
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return bool(((0 <= x1) & (x1 < x2) & (x2 <= w) & (0 <= y1) & (y1 < y2) & (y2 <= h)).all())


checks = {
    "same as the per-image loop": same_detections(detections, reference),
    "inside the content, positive area": all(inside_with_area(d["boxes"], h, w) for d, (h, w) in zip(detections, content)),
    "at most 50 per image": all(len(d["boxes"]) <= 50 for d in detections),
    "labels in [0, 5)": all(bool(((d["labels"] >= 0) & (d["labels"] < 5)).all()) for d in detections),
    "scores > 0.05, sorted": all(bool((d["scores"] > 0.05).all()) and torch.equal(d["scores"], d["scores"].sort(descending=True).values)
                                 for d in detections),
    "model still in training mode": model.training,
}
for name, ok in checks.items():
    print(f"{name}: {ok}")
print("detections per image:", [len(d["boxes"]) for d in detections])

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **The threshold's edge.** Use `>=` instead of `>` in your `nms` and run the awkward cases.
#    Which case tells the two apart, and would the choice matter on a real detector's boxes?
#    *Hint:* "IoU exactly 0.5"; how often is a float IoU exactly the threshold?
# 2. **One NMS for the whole batch.** Write the post-processing with a single `batched_nms` call
#    whose group is `image · C + class`. Check that the detections are the same, then time both
#    for batches of 1, 4 and 16 images.
#    *Hint:* `same_detections`; NMS compares every pair of boxes within a group.
# 3. **Top-k and the threshold.** On the untrained model of the check, set `topk_candidates` to 1,
#    10 and 1000, and `score_thresh` to 0.05 and 0.07. How many detections per image remain, and
#    which setting decides it?
#    *Hint:* the untrained scores sit near `sqrt(0.01 · 0.5) ≈ 0.07`.
# 4. **Centerness in the ranking.** `use_centerness=False` ranks boxes by the class probability
#    alone. Which boxes move down when centerness is used, and why would that matter more for
#    mAP@[.5:.95] than for mAP@0.5? After chapter 09, measure it on your own trained model.

# %% [markdown]
# ## Summary
#
# - Greedy NMS computes the `(K, K)` IoU matrix once and loops only over the boxes it keeps;
#   the class-specific version shifts each class to its own region of the plane, so one call
#   does the work of `C`. Both agree with torchvision.
# - Post-processing runs on the whole batch: score `sqrt(sigmoid(cls) · sigmoid(ctr))`,
#   threshold and top-k per level, decode, clip to each image's content, drop zero-area boxes,
#   NMS per image, at most `max_detections`.
# - Where it lives: `fcos_lib.nms` (`pairwise_iou`, `nms`, `class_specific_nms`),
#   `fcos_lib.inference` (`fcos_postprocess`, `detect`, `detect_files`, `image_files`).
# - Pitfall to remember: clip each box to its image's content, not to the padded input, before
#   NMS ([P13](../docs/pitfalls.md#p13-boxes-clipped-to-the-padded-input-before-nms)); and never
#   apply the sigmoid in place to the network's outputs
#   ([P12](../docs/pitfalls.md#p12-inference-for-one-image-with-an-in-place-sigmoid)).
# - Next chapter: train the model on the whole dataset and measure it (PASCAL VOC and
#   COCO-style mAP).
