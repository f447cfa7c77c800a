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
# # 04 · Matching locations to boxes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/04_matching.ipynb)
#
# Chapter 03 put every prediction of the head at a point `(x, y)` of the image. Training needs,
# for each of those points, an answer: *which ground-truth box is this location responsible
# for, if any?* A location with a box learns that box's class and its four distances; a
# location without one learns "background".
#
# FCOS (Tian et al. 2019, §3.1 and §3.2) answers with three rules, no anchors and no IoU:
#
# 1. **Inside.** A location can only be responsible for a box that contains it: its distances
#    to the four sides, `l = x - x1`, `t = y - y1`, `r = x2 - x`, `b = y2 - y`, are all `> 0`.
# 2. **Scale range per level.** Each level handles one range of object sizes, measured from
#    the location by `m = max(l, t, r, b)`: `p3` takes `0 < m < 64`, `p4` `64 < m < 128`,
#    `p5` `128 < m < inf`. Small objects are learnt by the fine level, big ones by the coarse.
# 3. **Smallest area wins.** If a location still has several boxes (overlapping objects of a
#    similar size), it takes the one with the smallest area: the big box has other locations
#    to learn it from, the small one may not.
#
# A fourth rule is optional: **center sampling** (from the later FCOS paper, Tian et al. 2020,
# and torchvision's FCOS, radius 1.5): a location must also lie within `1.5 x stride` of the
# box's centre (in both x and y). Locations near a box's border see mostly background; this
# keeps them out.

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
#| default_exp matching

# %%
# %matplotlib inline
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
import torchvision
from IPython.display import display
from torch import nn

from fcos_lib.checks import exercise
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.drawing import draw_boxes
from fcos_lib.locations import get_fpn_location_coords

_ = torch.manual_seed(0)

# %% [markdown]
# ## By hand: one location, three boxes
#
# Take the `p3` location `(x, y) = (100, 60)` (stride 8) and three boxes:
#
# | box | (x1, y1, x2, y2) | (l, t, r, b) | inside? | m = max | in p3's (0, 64)? | area |
# |-----|------------------|--------------|---------|---------|------------------|------|
# | 0 | (80, 40, 140, 90) | (20, 20, 40, 30) | yes | 40 | yes | 3000 |
# | 1 | (90, 50, 120, 70) | (10, 10, 20, 10) | yes | 20 | yes | 600 |
# | 2 | (10, 10, 200, 200) | (90, 50, 100, 140) | yes | 140 | no | 36100 |
#
# Boxes 0 and 1 pass both rules; box 1 is smaller, so the location is matched to **box 1**.
# Box 2 contains the point too, but it is far too big for `p3`: it belongs to `p5`.
#
# First, the way one would write it at first: one location, a loop over the boxes.

# %%
def match_one_location_naive(x, y, boxes, lower, upper):
    """Index of the box that location (x, y) is responsible for, or -1. Teaching version."""
    best, best_area = -1, math.inf
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        l, t, r, b = x - x1, y - y1, x2 - x, y2 - y
        if min(l, t, r, b) <= 0:  # rule 1: strictly inside
            continue
        if not lower < max(l, t, r, b) < upper:  # rule 2: this level's scale range
            continue
        area = (x2 - x1) * (y2 - y1)
        if area < best_area:  # rule 3: smallest area (the first one on a tie)
            best, best_area = n, area
    return best


hand_boxes = torch.tensor([[80.0, 40, 140, 90], [90, 50, 120, 70], [10, 10, 200, 200]])
print("p3 location (100, 60) ->", match_one_location_naive(100.0, 60.0, hand_boxes, 0, 64))
print("p5 location (112, 80) ->", match_one_location_naive(112.0, 80.0, hand_boxes, 128, math.inf))

# %% [markdown]
# The `p5` location `(112, 80)` has `(l, t, r, b) = (102, 70, 88, 120)` to box 2, `m = 120`:
# not above 128, so even box 2 is not matched there. The scale range is measured *from the
# location*, so which locations of a box fall in a level's range depends on where they sit.
#
# ## Vectorised over locations x boxes x images
#
# A 224 x 224 batch of 16 images has 16 x 1029 locations; a Python loop over them and their
# boxes costs one to a few seconds per batch (the benchmark `bench/bench_targets.py` measures it).
# The same rules are a handful of tensor operations if we compute every `(image, location,
# box)` triple at once, by broadcasting:
#
# - locations `(L, 2)` -> `x, y` viewed as `(1, L, 1)`;
# - boxes `(B, N, 5)` -> `x1, y1, x2, y2` viewed as `(B, 1, N)`;
# - `l, t, r, b` are then `(B, L, N)`, and so is every rule's boolean mask;
# - rule 3 is a `min` over the box axis `N` of the areas, with `inf` where a rule failed.
#
# The `L` axis holds all levels concatenated (`p3`, `p4`, `p5`); each location carries its
# level's stride and scale range. Padding rows (class `-1`) are masked out. The result is the
# matched box row per location, or a row of `-1` for background.
#
# **Scale ranges.** The paper gives `p3..p7` the bounds `0, 64, 128, 256, 512, inf`; we have
# only `p3..p5`, so `p5` takes everything above 128. As in torchvision, a level's bounds are
# `(4 * stride, 8 * stride)`, the first level starting at 0 and the last one open; both
# bounds are strict, so an object whose `m` is exactly 64 at some location is learnt there by
# neither `p3` nor `p4` (it still has neighbours on one side or the other).
#
# **Bad ground truth.** A box with `x2 <= x1` or `y2 <= y1` contains no point: it would
# silently never be learnt. That is almost always a bug upstream (swapped corners, a box
# clipped away by a crop), so we raise a `ValueError` naming the image, the row and the box,
# instead of dropping it quietly. The same goes for a NaN or infinite coordinate (every
# comparison with NaN is false: the box would just never match) and for a class that is not
# an integer `>= 0` or the padding `-1`. `check_gt_boxes` holds these rules, once: the
# matching calls it, and so does the model of chapter 07, which also passes its
# `num_classes` so that a label `>= C` is caught. `check_class_labels` is its label rule on
# its own; the losses of chapter 07 reuse it.

# %%
#| export
"""Matching FCOS locations to ground-truth boxes: which box each location is responsible for.

Chapter 04 of the course (notebooks/04_matching.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.1 (a
  location is positive when it falls inside a box; smallest-area box on ambiguity) and §3.2
  (each FPN level regresses one range of max(l, t, r, b)).
- Center sampling: Tian et al. 2020 ("FCOS: A simple and strong anchor-free object detector").
- Checked for exact agreement with torchvision.models.detection.fcos (FCOS.compute_loss, the
  matching lines) in tests/test_matching.py. One deliberate difference: we compare box areas
  exactly, torchvision compares float32 `1e8 - area`, which cannot tell apart areas closer
  than 8 px^2.

Box contract: (x1, y1, x2, y2) float, absolute 0-based input pixels, x1 < x2, y1 < y2.
Ground truth: (B, N, 5) rows (x1, y1, x2, y2, c), padding rows of -1 (class -1).
Dimension letters: B images, N boxes per image (padded), L locations of all levels
(p3, p4, p5 concatenated), L_l locations of one level.
"""
import functools
import math

import torch

from fcos_lib.checks import check_positive_number
from fcos_lib.locations import check_strides


def scale_ranges_per_fpn_level(strides_per_fpn_level: dict) -> dict:
    """level -> (lower, upper) bounds on max(l, t, r, b), strict on both sides.

    (4 * stride, 8 * stride), with 0 for the first level and inf for the last, as in
    torchvision's FCOS; with strides 8, 16, 32: p3 (0, 64), p4 (64, 128), p5 (128, inf).
    The strides must grow from level to level (finest first), or the ranges would overlap.
    """
    check_strides(strides_per_fpn_level)
    values = list(strides_per_fpn_level.values())
    if any(finer >= coarser for finer, coarser in zip(values, values[1:])):
        raise ValueError(f"strides_per_fpn_level must grow from level to level, finest first, e.g. "
                         f"{{'p3': 8, 'p4': 16, 'p5': 32}}; got {strides_per_fpn_level}. Fix: order the levels "
                         "finest first (the scale ranges would overlap otherwise).")
    ### BEGIN SOLUTION
    ### HINT: (4 * stride, 8 * stride) per level, as floats; the first level starts at 0.0, the last one ends at math.inf
    levels = list(strides_per_fpn_level)
    ranges = {}
    for i, level in enumerate(levels):
        stride = strides_per_fpn_level[level]
        lower = 0.0 if i == 0 else 4.0 * stride
        upper = math.inf if i == len(levels) - 1 else 8.0 * stride
        ranges[level] = (lower, upper)
    return ranges
    ### END SOLUTION


def _bad_labels(labels: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    """(...) bool: True where a label is neither -1 nor an integer in [0, num_classes)."""
    real = labels != -1
    bad = real & (labels < 0)
    if num_classes is not None:
        bad |= real & (labels >= num_classes)
    if labels.is_floating_point():
        bad |= real & (labels != labels.round())  # 1.5, and NaN (NaN != NaN)
    return bad


def _raise_bad_label(labels: torch.Tensor, bad: torch.Tensor, num_classes: int | None, name: str):
    index = bad.nonzero()[0].tolist()
    label = labels[tuple(index)].item()
    if num_classes is None:
        allowed, fix = "an integer >= 0", "give each object its class index 0..C-1, and -1 only to padding rows"
    else:
        allowed = f"an integer in [0, num_classes={num_classes})"
        fix = ("build the model with num_classes = len(class_names), the dataset's number of classes"
               if label >= num_classes else "give each object its class index 0..C-1, and -1 only to padding rows")
    raise ValueError(f"{name}[{', '.join(map(str, index))}] has class label {label:g}, not {allowed} or -1 "
                     f"(no object). Fix: {fix}.")


def check_class_labels(labels: torch.Tensor, num_classes: int | None = None, name: str = "labels") -> None:
    """Raise ValueError unless every label is -1 (no object) or an integer in [0, num_classes).

    Args:
        labels: (...) class indices, int or float (float: the last column of gt_boxes).
        num_classes: C; None accepts any integer >= 0.
        name: the argument the error names.
    The label rule of check_gt_boxes, on its own; the losses (chapter 07) use it.
    """
    bad = _bad_labels(labels, num_classes)
    if bool(bad.any()):  # one host sync
        _raise_bad_label(labels, bad, num_classes, name)


def check_gt_boxes(gt_boxes: torch.Tensor, num_classes: int | None = None, batch_size: int | None = None) -> None:
    """Raise ValueError unless gt_boxes is a valid ground-truth batch; the one check of it.

    Args:
        gt_boxes: (B, N, 5) rows (x1, y1, x2, y2, c), padded with rows of -1 (class -1).
        num_classes: C: classes must be in [0, C). None accepts any integer class >= 0.
        batch_size: the B that gt_boxes must have (the number of images); None accepts any.

    Rules: the shape; every value finite (padding rows too); on real rows (c != -1) an
    integer class and x2 > x1, y2 > y1. The first broken rule is named with its row. Used by
    the matching (here), and by FCOS (chapter 07) with its num_classes and batch size. One
    host sync when everything is fine.
    """
    if not isinstance(gt_boxes, torch.Tensor) or gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 5 \
            or (batch_size is not None and gt_boxes.shape[0] != batch_size):
        shape = tuple(gt_boxes.shape) if isinstance(gt_boxes, torch.Tensor) else type(gt_boxes).__name__
        B = "B" if batch_size is None else batch_size
        raise ValueError(
            f"gt_boxes must be ({B}, N, 5) rows (x1, y1, x2, y2, c) padded with -1, one row block per image; "
            f"got {shape}. Fix: collate_detection builds it; one image's (N, 5) needs gt_boxes[None]."
        )
    labels = gt_boxes[..., 4]  # (B, N), -1 on padding rows
    non_finite = ~torch.isfinite(gt_boxes).all(dim=-1)  # (B, N)
    bad_label = _bad_labels(labels, num_classes)  # (B, N)
    # "not (x2 > x1 and y2 > y1)" rather than "x2 <= x1 or ...": also true for NaN.
    has_area = (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])  # (B, N)
    degenerate = (labels != -1) & ~has_area  # (B, N)
    if not bool((non_finite | bad_label | degenerate).any()):  # one host sync: worth it to never train on a silent bug
        return
    if bool(non_finite.any()):
        b, n = non_finite.nonzero()[0].tolist()
        raise ValueError(
            f"gt_boxes[{b}, {n}] = {gt_boxes[b, n].tolist()} is not finite (NaN or inf). Fix: find where the "
            "data pipeline makes it (a division by a zero size, a failed augmentation) and drop or repair the box."
        )
    if bool(bad_label.any()):
        _raise_bad_label(labels, bad_label, num_classes, "gt_boxes")
    b, n = degenerate.nonzero()[0].tolist()
    raise ValueError(
        f"gt_boxes[{b}, {n}] = {gt_boxes[b, n].tolist()} is degenerate: a box needs x2 > x1 and y2 > y1. "
        "Fix: drop boxes with zero width or height before batching, or mark the row as padding (all -1)."
    )


def _checked_batch(gt_boxes: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
    """One image's (N, 5) -> (1, N, 5); then check_gt_boxes; integer pixel coordinates -> float32."""
    if isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 2 and gt_boxes.shape[-1] == 5:
        gt_boxes = gt_boxes[None]  # (1, N, 5)
    if check_inputs:  # off only where the caller has just checked the same batch (FCOS.forward)
        check_gt_boxes(gt_boxes)
    # Integer annotations are natural (VOC's are), but the scale range's inf needs a float.
    return gt_boxes if gt_boxes.is_floating_point() else gt_boxes.float()


def _check_match_arguments(locations_per_fpn_level: dict, strides_per_fpn_level: dict,
                           center_sampling_radius: float | None) -> None:
    """The matching's arguments other than gt_boxes: shapes and numbers only, no GPU sync."""
    if not isinstance(locations_per_fpn_level, dict):
        raise ValueError(f"locations_per_fpn_level must be a dict level -> (L_l, 2) (x, y) from "
                         f"get_fpn_location_coords; got {type(locations_per_fpn_level).__name__}")
    for level, locs in locations_per_fpn_level.items():
        if not isinstance(locs, torch.Tensor) or locs.dim() != 2 or locs.shape[1] != 2:
            shape = tuple(locs.shape) if isinstance(locs, torch.Tensor) else type(locs).__name__
            raise ValueError(f"locations_per_fpn_level[{level!r}] must be (L_l, 2) rows (x, y); got {shape}")
    check_strides(strides_per_fpn_level, locations_per_fpn_level)
    if center_sampling_radius is not None:
        check_positive_number(center_sampling_radius, "center_sampling_radius (in strides, or None for off)")


def fcos_match_indices(locations_per_fpn_level: dict, strides_per_fpn_level: dict, gt_boxes: torch.Tensor,
                       center_sampling_radius: float | None = None) -> torch.Tensor:
    """Index (into N) of the box each location is responsible for, -1 for background.

    Args:
        locations_per_fpn_level: level -> (L_l, 2) (x, y) from get_fpn_location_coords.
        strides_per_fpn_level: level -> stride, same keys in the same order.
        gt_boxes: (B, N, 5) rows (x1, y1, x2, y2, c), padding rows of -1 (or (N, 5)).
            Checked by check_gt_boxes: a bad row raises a ValueError naming it. Integer
            coordinates are matched as float32.
        center_sampling_radius: if given (a finite number > 0), a location must also be within
            radius * stride of the box centre in x and in y (torchvision uses 1.5).

    Returns:
        (B, L) int64 (or (L,) for (N, 5) input), levels concatenated in the dict's order.
    """
    matched_idx = _match_indices(locations_per_fpn_level, strides_per_fpn_level, _checked_batch(gt_boxes),
                                 center_sampling_radius)  # (B, L)
    return matched_idx[0] if gt_boxes.dim() == 2 else matched_idx


@functools.lru_cache(maxsize=32)
def per_location_constants(level_sizes: tuple, strides: tuple, ranges: tuple, dtype: torch.dtype,
                           device: torch.device) -> tuple:
    """(L,) stride, lower and upper scale bound of every location, levels concatenated.

    The same for every batch of one input size, so they are made once per (level sizes, strides,
    ranges, dtype, device) and kept (a training step then builds none of them). The key holds the
    ranges themselves, so a changed scale_ranges_per_fpn_level gets new tensors. Read them, never
    write them in place: every caller shares them.
    """
    def per_location(values):  # one value per level -> (L,)
        return torch.cat([torch.full((n,), float(v), dtype=dtype, device=device) for n, v in zip(level_sizes, values)])

    return (per_location(strides), per_location([lo for lo, _ in ranges]), per_location([hi for _, hi in ranges]))


def _match_indices(locations_per_fpn_level: dict, strides_per_fpn_level: dict, gt_boxes: torch.Tensor,
                   center_sampling_radius: float | None) -> torch.Tensor:
    """fcos_match_indices on checked (B, N, 5) gt_boxes -> (B, L) int64."""
    _check_match_arguments(locations_per_fpn_level, strides_per_fpn_level, center_sampling_radius)
    B, N, _ = gt_boxes.shape
    dtype, device = gt_boxes.dtype, gt_boxes.device
    ranges = scale_ranges_per_fpn_level(strides_per_fpn_level)
    levels = list(locations_per_fpn_level)
    strides, lower, upper = per_location_constants(
        tuple(locations_per_fpn_level[level].shape[0] for level in levels),
        tuple(float(strides_per_fpn_level[level]) for level in levels),
        tuple(ranges[level] for level in levels), dtype, device)  # each (L,)
    locations = torch.cat([locs.to(dtype=dtype, device=device) for locs in locations_per_fpn_level.values()])  # (L, 2)
    L = locations.shape[0]
    if N == 0:
        return torch.full((B, L), -1, dtype=torch.int64, device=device)

    ### BEGIN SOLUTION
    ### HINT: l, t, r, b as (B, L, N) (torch.cat the per-level lists); rules as strict masks; smallest area, first on ties, else -1
    x = locations[:, 0].view(1, L, 1)  # (1, L, 1)
    y = locations[:, 1].view(1, L, 1)
    x1, y1, x2, y2 = (gt_boxes[..., i].unsqueeze(1) for i in range(4))  # each (B, 1, N)
    l, t, r, b = x - x1, y - y1, x2 - x, y2 - y  # each (B, L, N)

    # Rule 1: strictly inside the box. Padding rows never match.
    match = torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) > 0  # (B, L, N)
    match &= (gt_boxes[..., 4] >= 0).unsqueeze(1)
    # Rule 2: this level's scale range on max(l, t, r, b), strict bounds.
    max_ltrb = torch.maximum(torch.maximum(l, t), torch.maximum(r, b))  # (B, L, N)
    match &= (max_ltrb > lower.view(1, L, 1)) & (max_ltrb < upper.view(1, L, 1))
    # Optional: center sampling, a square of half-side radius * stride around the box centre.
    if center_sampling_radius is not None:
        radius = center_sampling_radius * strides.view(1, L, 1)  # (1, L, 1)
        dist_to_centre = torch.maximum((x - (x1 + x2) / 2).abs(), (y - (y1 + y2) / 2).abs())  # (B, L, N)
        match &= dist_to_centre < radius
    # Rule 3: the smallest area among the boxes left; the first one on an exact tie.
    areas = (x2 - x1) * (y2 - y1)  # (B, 1, N)
    areas = torch.where(match, areas, torch.full_like(areas, math.inf))  # (B, L, N)
    min_area, matched_idx = areas.min(dim=-1)  # (B, L)
    return torch.where(min_area < math.inf, matched_idx, torch.full_like(matched_idx, -1))
    ### END SOLUTION


def fcos_match_locations_to_gt(locations_per_fpn_level: dict, strides_per_fpn_level: dict,
                               gt_boxes: torch.Tensor, center_sampling_radius: float | None = None,
                               check_inputs: bool = True) -> dict:
    """The ground-truth row each location is responsible for, per level.

    Args: as fcos_match_indices; check_inputs=False skips check_gt_boxes (and its host sync) for a
        batch the caller has already checked.

    Returns:
        level -> (B, L_l, 5) matched rows (x1, y1, x2, y2, c); background rows are all -1.
        ((L_l, 5) per level when gt_boxes is (N, 5).) In gt_boxes' dtype, float32 for integers.
    """
    batched = _checked_batch(gt_boxes, check_inputs)  # (B, N, 5)
    squeeze, gt_boxes = gt_boxes.dim() == 2, batched
    matched_idx = _match_indices(locations_per_fpn_level, strides_per_fpn_level, gt_boxes,
                                 center_sampling_radius)  # (B, L)
    B, N, _ = gt_boxes.shape
    if N == 0:
        matched = gt_boxes.new_full((B, matched_idx.shape[1], 5), -1.0)  # (B, L, 5)
    else:
        gathered = torch.gather(gt_boxes, 1, matched_idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 5))  # (B, L, 5)
        matched = torch.where((matched_idx >= 0).unsqueeze(-1), gathered, torch.full_like(gathered, -1.0))
    sizes = [locs.shape[0] for locs in locations_per_fpn_level.values()]
    per_level = dict(zip(locations_per_fpn_level, matched.split(sizes, dim=1)))  # level -> (B, L_l, 5)
    return {level: m[0] for level, m in per_level.items()} if squeeze else per_level

# %% [markdown]
# Check: the hand-worked table. The `p3` location `(100, 60)` gets box 1's row; with all the
# `p3` locations of a 224 x 224 image, every location agrees with the naive loop.

# %%
strides = {"p3": 8, "p4": 16, "p5": 32}
locations_per_level = get_fpn_location_coords({p: (224 // s, 224 // s) for p, s in strides.items()}, strides)
hand_gt = torch.cat([hand_boxes, torch.tensor([[0.0], [1], [2]])], dim=1)  # (N, 5): classes 0, 1, 2
with exercise("_match_indices"):
    matched = fcos_match_locations_to_gt(locations_per_level, strides, hand_gt)
    k = 7 * 28 + 12  # the p3 cell (h=7, w=12): x = 12.5 * 8 = 100, y = 7.5 * 8 = 60
    print("p3 location", locations_per_level["p3"][k].tolist(), "->", matched["p3"][k].tolist())
    assert matched["p3"][k].tolist() == [90, 50, 120, 70, 1], (
        f"the p3 location (100, 60) gets {matched['p3'][k].tolist()}, expected box 1 [90, 50, 120, 70, 1]")

with exercise("scale_ranges_per_fpn_level"):
    ranges = scale_ranges_per_fpn_level(strides)
    print("scale ranges:", ranges)
    expected = {"p3": (0.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, math.inf)}
    assert ranges == expected, f"the strides 8, 16, 32 give {ranges}, expected {expected}"
with exercise("_match_indices"):
    naive = torch.tensor([match_one_location_naive(x, y, hand_boxes, *ranges[level])
                          for level, locs in locations_per_level.items() for x, y in locs.tolist()])  # (L,)
    vectorised = fcos_match_indices(locations_per_level, strides, hand_gt)  # (L,), levels concatenated
    print("matched per box:", [int((vectorised == n).sum()) for n in range(3)],
          "| same as the naive loop at all", len(naive), "locations:", torch.equal(vectorised, naive))
    assert torch.equal(vectorised, naive), (
        f"differs from the naive loop at {int((vectorised != naive).sum())} of {len(naive)} locations")

# %% [markdown]
# Check: bad ground truth is refused, naming the row (`gt_boxes[image, row]`) and the fix.
# The model of chapter 07 gets these same messages, since it calls the same `check_gt_boxes`.
# The other arguments are checked as well: strides listed coarsest first would make the scale
# ranges overlap, so they are refused too.

# %%
bad_ground_truth = {
    "x2 == x1 (zero width)": torch.tensor([[[10.0, 10, 10, 40, 2]]]),
    "a NaN coordinate": torch.tensor([[[10.0, 10, 50, 40, 2], [float("nan"), 10, 50, 40, 0]]]),
    "class 1.5": torch.tensor([[[10.0, 10, 50, 40, 1.5]]]),
    "4 columns, no class": torch.tensor([[[10.0, 10, 50, 40]]]),
}
for name, bad_gt in bad_ground_truth.items():
    try:
        fcos_match_indices(locations_per_level, strides, bad_gt)
    except ValueError as err:
        print(f"{name}: ValueError: {err}")
try:
    check_gt_boxes(torch.tensor([[[10.0, 10, 50, 40, 7]]]), num_classes=5)  # what FCOS(num_classes=5) asks
except ValueError as err:
    print("class 7 of 5: ValueError:", err)
try:
    scale_ranges_per_fpn_level({"p5": 32, "p4": 16, "p3": 8})
except ValueError as err:
    print("strides coarsest first: ValueError:", err)

# %% [markdown]
# ## Cross-check with torchvision's FCOS
#
# torchvision's `FCOS.compute_loss` (in `torchvision/models/detection/fcos.py`) does the
# matching for one image at a time and then hands `matched_idxs` to its head's
# `compute_loss`. Its inputs are "anchors": one square of side `stride` per location, whose
# centre is the location. So we can run **their exact code**: build an `FCOS` around a dummy
# backbone, give it a head whose `compute_loss` just returns the `matched_idxs` it receives,
# and pass our locations as anchors `(x - s/2, y - s/2, x + s/2, y + s/2)`. With three levels
# their bounds are ours (`4 s`, `8 s`, first 0, last inf). Their center sampling is always on;
# `center_sampling_radius=inf` switches it off.
#
# We compare in float64: torchvision ranks candidate boxes by the float32 value `1e8 - area`,
# and float32 numbers near `1e8` are 8 apart, so in float32 it cannot separate two areas
# closer than about 8 px² (a documented difference; the test file shows one case).

# %%
class ReturnMatchedIdxs(nn.Module):
    """A stand-in torchvision FCOS head: compute_loss returns the matching it is given."""

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        return matched_idxs


def torchvision_matched_idxs(locations_per_level, strides, gt_boxes, center_sampling_radius):
    """torchvision's FCOS matching, run on our locations: (B, L) int64."""
    backbone = nn.Module()
    backbone.out_channels = 8
    radius = math.inf if center_sampling_radius is None else center_sampling_radius
    tv_fcos = torchvision.models.detection.FCOS(backbone, num_classes=2, head=ReturnMatchedIdxs(),
                                                center_sampling_radius=radius)
    half = torch.cat([torch.full((len(l), 1), strides[p] / 2) for p, l in locations_per_level.items()])  # (L, 1)
    locs = torch.cat(list(locations_per_level.values())).to(gt_boxes.dtype)  # (L, 2)
    anchors = torch.cat([locs - half, locs + half], dim=1)  # (L, 4): side = stride, centre = location
    num_per_level = [len(l) for l in locations_per_level.values()]
    targets = [{"boxes": g[g[:, 4] >= 0, :4], "labels": g[g[:, 4] >= 0, 4].long()} for g in gt_boxes]
    return torch.stack(tv_fcos.compute_loss(targets, {}, [anchors] * len(targets), num_per_level))

# %% [markdown]
# A batch of the course dataset, with and without center sampling: the same matched index at
# every location.

# %%
train_set = VOCDataset(make_course_dataset(), "train")
images, gt_boxes, _ = collate_detection([train_set[i] for i in range(8)])
print("images", tuple(images.shape), "gt_boxes", tuple(gt_boxes.shape),
      "real boxes", int((gt_boxes[..., 4] >= 0).sum()))
with exercise("_match_indices"):
    for radius in (None, 1.5):
        ours = fcos_match_indices(locations_per_level, strides, gt_boxes.double(), radius)
        theirs = torchvision_matched_idxs(locations_per_level, strides, gt_boxes.double(), radius)
        print(f"center_sampling_radius={radius}: foreground {int((ours >= 0).sum())}, "
              f"same as torchvision: {torch.equal(ours, theirs)}")
        assert torch.equal(ours, theirs), (
            f"with center_sampling_radius={radius}, {int((ours != theirs).sum())} locations differ from torchvision")

# %% [markdown]
# ## Picture: who learns which box
#
# Per level, each matched location is drawn in its box's colour; background locations are
# small grey dots. Left to right: `p3`, `p4`, `p5`. Without center sampling every location of a
# box in the right size range is used; with it only the few near the centre.

# %%
PALETTE = plt.get_cmap("tab10").colors


def draw_matching(ax, image, gt, locations, matched_idx, title):
    """One level of one image: boxes and matched locations in the box's colour."""
    ax.imshow(image.permute(1, 2, 0).numpy())  # (H, W, 3)
    real = gt[gt[:, 4] >= 0]
    for n, box in enumerate(real[:, :4]):
        draw_boxes(ax, box[None], color=PALETTE[n % len(PALETTE)])
    bg = matched_idx < 0
    ax.scatter(locations[bg, 0], locations[bg, 1], s=2, c="lightgrey")
    for n in matched_idx[~bg].unique().tolist():
        at = matched_idx == n
        ax.scatter(locations[at, 0], locations[at, 1], s=14, color=PALETTE[n % len(PALETTE)],
                   edgecolors="black", linewidths=0.4)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def show_matching(b, center_sampling_radius, levels=("p3", "p4", "p5")):
    idx = fcos_match_indices(locations_per_level, strides, gt_boxes[b], center_sampling_radius)  # (L,)
    per_level = dict(zip(locations_per_level, idx.split([len(l) for l in locations_per_level.values()])))
    fig, axes = plt.subplots(1, len(levels), figsize=(4.3 * len(levels), 4.5), squeeze=False)
    for ax, level in zip(axes[0], levels):
        n_fg = int((per_level[level] >= 0).sum())
        draw_matching(ax, images[b], gt_boxes[b], locations_per_level[level], per_level[level],
                      f"image {b}, {level} ({ranges[level][0]:g} < m < {ranges[level][1]:g}): {n_fg} matched")
    plt.tight_layout()
    plt.show()


show_matching(0, None)
show_matching(0, 1.5)

# %% [markdown]
# ## Explorer
#
# Pick an image, a level and center sampling on or off. (The figure below the controls is
# the default view drawn once, so the notebook also shows it where widgets do not run.)

# %%
image_slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
level_picker = widgets.Dropdown(options=list(strides), value="p3", description="level")
sampling_box = widgets.Checkbox(value=True, description="center sampling (1.5)")
explorer_output = widgets.Output()


def redraw(_change=None):
    with explorer_output:
        explorer_output.clear_output(wait=True)
        show_matching(image_slider.value, 1.5 if sampling_box.value else None, levels=(level_picker.value,))


for control in (image_slider, level_picker, sampling_box):
    control.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox([image_slider, level_picker, sampling_box]), explorer_output]))
show_matching(0, 1.5, levels=("p3",))  # the default view, drawn once as a static figure

# %% [markdown]
# ## Final check: adversarial boxes against torchvision
#
# Boxes chosen to hit every edge of the rules, on a non-square 160 x 224 input:
#
# - **nested**: a box inside another (the inner one wins where both qualify, by area);
# - **touching**: two boxes sharing the edge `x = 100`, and a box whose edge passes exactly
#   through a row of locations (`x1 = 4`, the first `p3` column: `l = 0`, not inside);
# - **tiny**: 2 x 2 px between locations (no location strictly inside: never learnt) and a
#   3 x 3 box around one `p3` location;
# - **image-sized**: `(0, 0, 224, 160)`, too large for `p3`. It is not only `p5`'s: near the
#   image centre `m` is below 128 (at the `p4` location `(104, 88)`, `m = max(104, 88, 120, 72)
#   = 120`), so `p4` learns it there, and `p5` where `m > 128`;
# - **identical** boxes with different classes (equal areas: the first row wins);
# - **none**: an image whose rows are all padding.
#
# torchvision must agree at every location, with and without center sampling.

# %%
image_size = (160, 224)
locs_ns = get_fpn_location_coords({p: (image_size[0] // s, image_size[1] // s) for p, s in strides.items()}, strides)
adversarial = torch.full((3, 7, 5), -1.0, dtype=torch.float64)  # (B, N, 5), padded
adversarial[0, :6] = torch.tensor([
    [20, 20, 200, 150, 0],   # big
    [60, 40, 120, 100, 1],   # nested in it
    [100, 40, 160, 100, 2],  # touches the nested one at x = 100
    [4, 8, 60, 60, 3],       # left edge exactly on the first p3 column
    [41, 41, 43, 43, 4],     # tiny, between locations
    [26.5, 26.5, 29.5, 29.5, 0],  # tiny, around the p3 location (28, 28)
], dtype=torch.float64)
adversarial[1, :3] = torch.tensor([
    [0, 0, 224, 160, 0],     # image-sized
    [30, 30, 90, 90, 1],     # identical boxes,
    [30, 30, 90, 90, 2],     # different class
], dtype=torch.float64)
# image 2: no boxes at all (all padding)
with exercise("_match_indices"):
    for radius in (None, 1.5):
        ours = fcos_match_indices(locs_ns, strides, adversarial, radius)
        theirs = torchvision_matched_idxs(locs_ns, strides, adversarial, radius)
        fg_per_box = [[int((ours[b] == n).sum()) for n in range(6)] for b in range(3)]
        print(f"radius={radius}: same as torchvision: {torch.equal(ours, theirs)}; "
              f"matched locations per box: {fg_per_box}")
        assert torch.equal(ours, theirs), (
            f"with radius={radius}, locations that differ from torchvision per image: "
            f"{(ours != theirs).sum(dim=1).tolist()} (image 0: nested, touching, tiny; 1: image-sized, identical)")

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **Strict bounds.** Build one box and one `p3` location whose largest distance `m` is exactly
#    64. Which level learns that location with our strict bounds, and which would with `<=` on
#    both sides? Is a location that no level learns a loss for training?
#    *Hint:* `fcos_match_indices` with one box, and `scale_ranges_per_fpn_level(strides)`.
# 2. **How many positives?** On the batch of the course dataset, count the foreground locations
#    per level with `center_sampling_radius` None, 1.5 and 0.5. Which level loses the most to
#    centre sampling, and why?
#    *Hint:* split the `(B, L)` result with `[len(l) for l in locations_per_level.values()]`.
# 3. **The largest area instead.** Change rule 3 to keep the *largest* box. In the adversarial
#    image 0, which box then loses every location, and what would the model never learn?
#    *Hint:* count the locations per box as the final check prints them.
# 4. **Ties.** Two identical boxes with different classes (adversarial image 1): which one do the
#    locations learn? What happens to the other one in training, and would sorting the
#    annotations differently change the model?

# %% [markdown]
# ## Summary
#
# - A location learns the box that contains it (all four distances `> 0`), whose largest
#   distance `m = max(l, t, r, b)` lies in its level's range (`p3` below 64, `p4` 64–128, `p5`
#   above 128, bounds strict), and, among those, the one with the smallest area. With centre
#   sampling it must also lie within `1.5 x stride` of the box's centre.
# - All of it runs at once on `(B, L, N)` tensors, and agrees with torchvision's FCOS at every
#   location, also on adversarial boxes.
# - Where it lives: `fcos_lib.matching` (`fcos_match_locations_to_gt`, `fcos_match_indices`,
#   `scale_ranges_per_fpn_level`, and the checks `check_gt_boxes`, `check_class_labels`).
# - Pitfall to remember: the scale range is measured from the location, not from the box, so
#   one box can be learnt on two levels; and a degenerate box would never be learnt, so it
#   is refused with an error that names it.
# - Next chapter: turn each matched box into the four distances the head regresses.
