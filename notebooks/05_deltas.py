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
# # 05 · Box deltas: from boxes to regression targets and back
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/05_deltas.ipynb)
#
# Chapter 04 told every location which box it is responsible for. The head's box branch
# (chapter 02) predicts four numbers per location; FCOS (Tian et al. 2019, §3.1) makes them
# the **distances from the location to the box's four sides**:
#
# `l = x - x1`,  `t = y - y1`,  `r = x2 - x`,  `b = y2 - y`.
#
# No anchor box, no width/height: four distances, all positive when the location is inside.
#
# **Divided by the stride.** Chapter 04's scale ranges send large objects to coarse levels:
# the largest distance `m` of a `p3` target is below 64 px, that of a `p5` target above 128 px.
# In pixels, one shared head would have to output a different range at each level. We divide
# the distances by the level's stride (as torchvision's FCOS does with
# `BoxLinearCoder(normalize_by_size=True)`). The stride grows with the level as `m` does, so
# the targets lie in the same few units at every level: below 8 strides at `p3` and `p4`
# (`64 = 8 · 8`, `128 = 8 · 16`). The head predicts these
# stride-unit deltas as `exp(x)`, positive by construction (chapter 02). The paper instead
# regresses pixel distances as `exp(s_l · x)`, with a learnable scale `s_l` per level to
# absorb the size difference; in units of the stride that scale is not needed, and we do
# not use it.
#
# This chapter builds both directions: **boxes -> deltas** (the training targets) and
# **deltas -> boxes** (to decode predictions, for the GIoU loss of chapter 07 and for
# inference in chapter 08).

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
#| default_exp deltas

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
from matplotlib import patches
from torchvision.models.detection._utils import BoxLinearCoder

from fcos_lib.checks import exercise
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import fcos_match_locations_to_gt

_ = torch.manual_seed(0)

# %% [markdown]
# ## By hand
#
# Chapter 04's example: the `p3` location `(100, 60)` (stride 8) is matched to the box
# `(90, 50, 120, 70)`. Its distances are
#
# `l = 100 - 90 = 10`, `t = 60 - 50 = 10`, `r = 120 - 100 = 20`, `b = 70 - 60 = 10`,
#
# and divided by the stride 8: **`(1.25, 1.25, 2.5, 1.25)`**. Going back:
# `x1 = 100 - 1.25 · 8 = 90`, `y1 = 60 - 1.25 · 8 = 50`, `x2 = 100 + 2.5 · 8 = 120`,
# `y2 = 60 + 1.25 · 8 = 70`.

# %%
fig, ax = plt.subplots(figsize=(4.5, 3.3))
ax.add_patch(patches.Rectangle((90, 50), 30, 20, fill=False, edgecolor="tab:blue", linewidth=2))
ax.plot(100, 60, "o", color="tab:red")
for (dx, dy), name in zip([(-10, 0), (0, -10), (20, 0), (0, 10)], "ltrb"):
    ax.annotate("", xy=(100 + dx, 60 + dy), xytext=(100, 60), arrowprops=dict(arrowstyle="->"))
    ax.text(100 + dx / 2 + (1 if dx == 0 else 0), 60 + dy / 2 - (1 if dy == 0 else 0), name, fontsize=11)
ax.set_xlim(85, 125)
ax.set_ylim(75, 45)  # image coordinates: y grows downwards
ax.set_aspect("equal")
ax.set_title("location (100, 60) in box (90, 50, 120, 70)", fontsize=9)
plt.show()

# %% [markdown]
# ## Boxes -> deltas, vectorised
#
# The matched boxes come from chapter 04 as `(B, L, 5)` (or per level `(B, L_l, 5)`), rows
# aligned with the locations `(L, 2)`. The deltas are then four subtractions broadcast over
# the batch, and one division by each location's stride: a number for one level, or an
# `(L,)` tensor when the levels are concatenated.
#
# **Background** rows (all `-1`, from the matching) have no box: their deltas are set to
# `-1`, an impossible value (real deltas are `> 0`), so later code can tell them apart. The
# losses only look at foreground rows anyway.

# %%
#| export
"""Box deltas: boxes <-> (l, t, r, b) distances from each location, divided by its stride.

Chapter 05 of the course (notebooks/05_deltas.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.1: the
  regression targets l* = x - x1, t* = y - y1, r* = x2 - x, b* = y2 - y.
- Departure from the paper: the deltas are the distances divided by the level's stride, as
  torchvision.models.detection.fcos encodes them (det_utils.BoxLinearCoder with
  normalize_by_size=True, on anchors of side = stride). The head predicts them as exp(x)
  (chapter 02, positive_deltas); the paper's exp(s_l * x) regresses pixels with a learnable
  scale s_l per level, which we do not use.

Box contract: (x1, y1, x2, y2) float, absolute 0-based input pixels, x1 < x2, y1 < y2;
background (unmatched) rows are all -1.
Dimension letters: B images, L locations (all levels concatenated, or one level's L_l),
"..." any leading batch dimensions.
"""
import torch

from fcos_lib.checks import check_positive_number


def _shape(x) -> tuple | str:
    """A tensor's shape for an error message, or the type name of anything else."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _stride_column(stride, locations: torch.Tensor) -> torch.Tensor:
    """float or (L,) stride -> (L, 1) tensor on the locations' dtype and device.

    A number must be finite and > 0; a tensor's values are not checked (that would wait for the GPU).
    """
    if isinstance(stride, torch.Tensor):
        if stride.dim() == 0:
            stride = stride.reshape(1)
        if stride.dim() != 1 or stride.shape[0] not in (1, locations.shape[0]):
            raise ValueError(
                f"stride must be a number or an (L,) tensor with L = {locations.shape[0]} (one per location); "
                f"got shape {tuple(stride.shape)}"
            )
        return stride.to(dtype=locations.dtype, device=locations.device).unsqueeze(-1)  # (L, 1) or (1, 1)
    stride = check_positive_number(stride, "stride (or an (L,) tensor, one per location)")
    return torch.full((1, 1), stride, dtype=locations.dtype, device=locations.device)


def fcos_get_deltas_from_locations(locations: torch.Tensor, gt_boxes: torch.Tensor, stride) -> torch.Tensor:
    """Regression targets: distances from each location to its box's sides, in strides.

    Args:
        locations: (L, 2) (x, y) of each location (chapter 03).
        gt_boxes: (..., L, 4) or (..., L, 5) box matched to each location (chapter 04); rows of
            -1 are background (for 5 columns, a row with class -1 is background too).
        stride: the locations' stride, a number (one level) or an (L,) tensor (all levels).

    Returns:
        (..., L, 4) deltas (l, t, r, b) / stride, in gt_boxes' dtype; background rows are -1.
    """
    if not isinstance(locations, torch.Tensor) or not isinstance(gt_boxes, torch.Tensor) or locations.dim() != 2 \
            or locations.shape[1] != 2 or gt_boxes.dim() < 2 or gt_boxes.shape[-1] not in (4, 5) \
            or gt_boxes.shape[-2] != locations.shape[0]:
        raise ValueError(
            f"need locations (L, 2) and gt_boxes (..., L, 4 or 5) with the same L; got locations "
            f"{_shape(locations)}, gt_boxes {_shape(gt_boxes)}"
        )
    locations = locations.to(dtype=gt_boxes.dtype, device=gt_boxes.device)
    stride = _stride_column(stride, locations)  # (L, 1)
    ### BEGIN SOLUTION
    ### HINT: (x - x1, y - y1, x2 - x, y2 - y) / stride, stacked on a last axis of 4; background rows (all -1, or class -1) -> -1
    x, y = locations[:, 0], locations[:, 1]  # (L,) each, broadcast over "..."
    deltas = torch.stack([x - gt_boxes[..., 0], y - gt_boxes[..., 1],
                          gt_boxes[..., 2] - x, gt_boxes[..., 3] - y], dim=-1) / stride  # (..., L, 4)
    background = (gt_boxes[..., :4] == -1).all(dim=-1)  # (..., L)
    if gt_boxes.shape[-1] == 5:
        background |= gt_boxes[..., 4] < 0
    return torch.where(background.unsqueeze(-1), torch.full_like(deltas, -1.0), deltas)
    ### END SOLUTION

# %% [markdown]
# Check: the hand-worked location, plus one background row, and the same numbers from
# torchvision's `BoxLinearCoder` (its "anchor" for a location is the stride-sized square
# centred on it).

# %%
locations = torch.tensor([[100.0, 60.0], [20.0, 20.0]])
matched = torch.tensor([[90.0, 50, 120, 70, 1], [-1, -1, -1, -1, -1]])  # location 1: background
with exercise("fcos_get_deltas_from_locations"):
    deltas = fcos_get_deltas_from_locations(locations, matched, stride=8)
    print(deltas.tolist())
    expected = [[1.25, 1.25, 2.5, 1.25], [-1, -1, -1, -1]]
    assert deltas.tolist() == expected, f"got {deltas.tolist()}, expected {expected} (l, t, r, b in strides; -1)"
anchor = torch.tensor([[96.0, 56.0, 104.0, 64.0]])  # side 8 around (100, 60)
print("torchvision:", BoxLinearCoder(normalize_by_size=True).encode(anchor, matched[:1, :4]).tolist())

# %% [markdown]
# ## Picture: why divide by the stride
#
# All foreground deltas (each of `l, t, r, b`) of a batch of the course dataset (chapter 04's
# matching, center sampling on), per level. In pixels the levels overlap at the low end (a
# side close to its location is short at any level) but reach different maxima: in this batch
# `p3` goes up to 64 px, `p4` to 127 px, `p5` to 142 px (printed under the figure). Divided by
# the stride, every level stays within 0 to 8 strides, which is what a head shared by all
# levels wants.

# %%
strides = {"p3": 8, "p4": 16, "p5": 32}
locations_per_level = get_fpn_location_coords({p: (224 // s, 224 // s) for p, s in strides.items()}, strides)
train_set = VOCDataset(make_course_dataset(), "train")
images, gt_boxes, _ = collate_detection([train_set[i] for i in range(32)])
matched_per_level = fcos_match_locations_to_gt(locations_per_level, strides, gt_boxes, center_sampling_radius=1.5)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for level, matched in matched_per_level.items():
    deltas = fcos_get_deltas_from_locations(locations_per_level[level], matched, strides[level])  # (B, L_l, 4)
    fg = deltas[(matched[..., 4] >= 0)]  # (foreground, 4)
    axes[0].hist((fg * strides[level]).flatten().numpy(), bins=40, alpha=0.6, label=level)
    axes[1].hist(fg.flatten().numpy(), bins=40, alpha=0.6, label=level)
    print(f"{level}: {len(fg)} foreground locations, deltas in pixels up to {float(fg.max() * strides[level]):.0f}, "
          f"in strides up to {float(fg.max()):.1f}")
axes[0].set_title("deltas in pixels")
axes[1].set_title("deltas / stride (the targets)")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Deltas -> boxes
#
# The inverse: `x1 = x - l · s`, `y1 = y - t · s`, `x2 = x + r · s`, `y2 = y + b · s`. Two
# guards, because this function decodes **network outputs**, which can be anything:
#
# - predicted deltas are **clamped at 0** first: a negative distance would put the box's
#   left side to the right of the location (a box that does not contain its own location,
#   possibly with `x2 < x1`). Our head already returns `exp(x) > 0` (chapter 02), so on its
#   outputs the clamp never acts; it guards every other caller (a head with no activation, a
#   hand-made tensor). Do not rely on it in a loss: a clamped side has no gradient.
# - with `image_size=(H, W)`, the boxes are **clipped** to the image, `0 <= x <= W`,
#   `0 <= y <= H`. Pass the size of the *image*, not of the padded input: a letterboxed photo
#   fills only the top-left `(h, w)` of the `S x S` input, and a box clipped to `S x S` can still
#   reach into the padding. Chapter 08 clips each image to its own `(h, w)` before NMS.
#
# Every row is decoded with its **own** location. There is no "background" test: a network
# output has no background marker, and a background target row of `-1` decodes, after the
# clamp, to the zero-size box at its own location. Both functions refuse a stride that is not
# a finite number > 0 (a stride of 0 would give infinite deltas) and locations that are not
# `(L, 2)`; `image_size` must be two sizes > 0, `(H, W)`.

# %%
#| export
def fcos_apply_deltas_to_locations(deltas: torch.Tensor, locations: torch.Tensor, stride,
                                   image_size: tuple | None = None) -> torch.Tensor:
    """Boxes from (l, t, r, b) / stride deltas: the inverse of fcos_get_deltas_from_locations.

    Args:
        deltas: (..., L, 4) predicted (or target) deltas; clamped at >= 0 before decoding.
        locations: (L, 2) (x, y) of each location.
        stride: a number (one level) or an (L,) tensor (all levels concatenated).
        image_size: optional (H, W) > 0: boxes are clipped to 0 <= x <= W, 0 <= y <= H.

    Returns:
        (..., L, 4) boxes (x1, y1, x2, y2) in input pixels, in deltas' dtype. Each row uses its
        own location; rows are never treated as background (network outputs have no marker).
    """
    if not isinstance(deltas, torch.Tensor) or not isinstance(locations, torch.Tensor) or deltas.dim() < 2 \
            or deltas.shape[-1] != 4 or locations.dim() != 2 or locations.shape[1] != 2 \
            or deltas.shape[-2] != locations.shape[0]:
        raise ValueError(
            f"need deltas (..., L, 4) and locations (L, 2) with the same L; got deltas {_shape(deltas)}, "
            f"locations {_shape(locations)}"
        )
    if image_size is not None and (not isinstance(image_size, (tuple, list)) or len(image_size) != 2):
        raise ValueError(f"image_size must be (H, W), the image's height and width; got {image_size!r}. "
                         "Fix: image_size=tuple(image.shape[-2:]).")
    locations = locations.to(dtype=deltas.dtype, device=deltas.device)
    ### BEGIN SOLUTION
    ### HINT: deltas clamped at 0, times the stride (_stride_column); each row's own location -/+ them; then clip to (H, W)
    distances = deltas.clamp(min=0) * _stride_column(stride, locations)  # (..., L, 4) in pixels
    boxes = torch.cat([locations - distances[..., :2], locations + distances[..., 2:]], dim=-1)  # (..., L, 4)
    if image_size is not None:
        H, W = (check_positive_number(size, f"image_size[{i}]") for i, size in enumerate(image_size))
        boxes = torch.stack([boxes[..., 0].clamp(0, W), boxes[..., 1].clamp(0, H),
                             boxes[..., 2].clamp(0, W), boxes[..., 3].clamp(0, H)], dim=-1)  # (..., L, 4)
    return boxes
    ### END SOLUTION

# %% [markdown]
# Check, by hand, on a 96 x 128 image (H x W):
#
# - the hand-worked deltas `(1.25, 1.25, 2.5, 1.25)` at `(100, 60)` give back `(90, 50, 120, 70)`;
# - a negative prediction `(-3, 1, 1, 1)` at `(20, 20)` is clamped to `(0, 1, 1, 1)`: the box
#   starts at the location itself, `(20, 12, 28, 28)`;
# - a huge prediction `(10, 10, 10, 10)` at `(20, 20)` reaches 80 px each way,
#   `(-60, -60, 100, 100)`, and is clipped to the image: `(0, 0, 100, 96)` (`x2 = 100` is
#   inside the 128-pixel width, `y2 = 100` is not inside the 96-pixel height).

# %%
predicted = torch.tensor([[[1.25, 1.25, 2.5, 1.25], [-3.0, 1, 1, 1]], [[1.25, 1.25, 2.5, 1.25], [10.0, 10, 10, 10]]])
with exercise("fcos_apply_deltas_to_locations"):
    boxes = fcos_apply_deltas_to_locations(predicted, locations, stride=8, image_size=(96, 128))  # (2, 2, 4)
    print(boxes.tolist())
    assert boxes[0, 0].tolist() == [90, 50, 120, 70], f"the hand-worked deltas give {boxes[0, 0].tolist()}"
    assert boxes[0, 1].tolist() == [20, 12, 28, 28], (
        f"the negative prediction gives {boxes[0, 1].tolist()}, expected [20, 12, 28, 28] (clamp deltas at 0)")
    assert boxes[1, 1].tolist() == [0, 0, 100, 96], (
        f"the huge prediction gives {boxes[1, 1].tolist()}, expected [0, 0, 100, 96] (clip to the image's (H, W))")
    print("without image_size:", fcos_apply_deltas_to_locations(predicted[1], locations, 8)[1].tolist())

# %% [markdown]
# > **Pitfall P7** ([the course's pitfalls note](../docs/pitfalls.md#p7-decoding-boxes-from-the-wrong-location-without-a-clamp)). The seed's `fcos_apply_deltas_to_locations` has three
# > faults. (1) It gives every background row the box of `locations[0]`, the first location
# > of the image, instead of its own: a decoded prediction then sits at the top-left corner.
# > (2) It never clamps predicted deltas at 0, so a slightly negative output yields a box
# > whose side is on the wrong side of its location, even `x2 < x1`, which GIoU and NMS do not
# > expect. (3) It decides "background" by testing the *predicted* deltas for `-1`; `-1` is
# > a marker we put in *targets*, and a network output equal to `-1.0` means nothing (and
# > never happens exactly). Here: every row uses its own location, deltas are clamped, and
# > nothing is treated as background.

# %% [markdown]
# ## Final check: the round trip
#
# For every foreground location of the batch above, boxes -> deltas -> boxes must give back
# the matched box. Two precise statements:
#
# - **exact** (bit for bit) when the coordinates lie on a grid of 1/256 px, for example
#   integer pixels: `x - x1` is then exactly representable in float32, the division by the
#   stride (a power of two) is exact, and so is every step back;
# - otherwise within one float32 rounding of the coordinates (about `1.5e-5` px at 224):
#   `x - x1` is rounded once.
#
# Background rows stay `-1` in the deltas.

# %%
def round_trip(gt):
    matched = torch.cat(list(fcos_match_locations_to_gt(locations_per_level, strides, gt, 1.5).values()), 1)
    locs = torch.cat(list(locations_per_level.values()))  # (L, 2)
    stride_per_location = torch.cat([torch.full((len(l),), float(strides[p])) for p, l in locations_per_level.items()])
    deltas = fcos_get_deltas_from_locations(locs, matched, stride_per_location)  # (B, L, 4)
    fg = matched[..., 4] >= 0  # (B, L)
    boxes = fcos_apply_deltas_to_locations(deltas, locs, stride_per_location, image_size=(224, 224))
    return fg, deltas, boxes[fg], matched[fg][:, :4]


on_grid = gt_boxes.clone()
on_grid[..., :4] = (gt_boxes[..., :4] * 256).round() / 256  # snap to 1/256 px (padding -1 stays -1)
with exercise("fcos_get_deltas_from_locations", "fcos_apply_deltas_to_locations"):
    fg, deltas, decoded, target = round_trip(on_grid)
    print(f"1/256-px grid: {int(fg.sum())} foreground locations, exact: {torch.equal(decoded, target)}, "
          f"background deltas all -1: {bool((deltas[~fg] == -1).all())}")
    assert torch.equal(decoded, target), "boxes -> deltas -> boxes does not give back the boxes on a 1/256-px grid"
    assert (deltas[~fg] == -1).all(), "background rows must get the deltas -1"
    fg, deltas, decoded, target = round_trip(gt_boxes)
    error = (decoded - target).abs().max().item()
    print(f"raw float boxes: largest error {error:.1e} px, below 2e-5: {error < 2e-5}")
    assert error < 2e-5, f"the round trip is off by up to {error:.2g} px"

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **Pixels instead of strides.** If the head predicted distances in pixels as `exp(x)`, which
#    range of `x` would each level need for the targets of the histogram above? And in strides?
#    *Hint:* `math.log` of the printed smallest and largest deltas.
# 2. **Exact or not.** The round trip is exact on a 1/256 px grid. Snap the boxes to a 1/3 px
#    grid instead and measure the largest error. Why is one grid exact and the other not?
#    *Hint:* `1/3` has no finite binary expansion; `x - x1` is rounded once.
# 3. **What the clamp does to a gradient.** Decode the deltas `[[-0.5, 1.0, 1.0, 1.0]]` (with
#    `requires_grad=True`) at one location, back-propagate `boxes.sum()` and print the gradient of
#    the deltas. Why must a loss never see clamped deltas?
#    *Hint:* chapter 07's L1 box loss, and pitfall P5.

# %% [markdown]
# ## Summary
#
# - A location's regression target is its distances to the four sides of its box,
#   `(l, t, r, b)`, divided by its level's stride; background rows are `-1`.
# - Decoding is the inverse: deltas are clamped at 0, every row uses its own location, and
#   boxes can be clipped to the image's `(H, W)`. Boxes -> deltas -> boxes is exact on a
#   1/256-px grid.
# - Where it lives: `fcos_lib.deltas` (`fcos_get_deltas_from_locations`,
#   `fcos_apply_deltas_to_locations`), checked against torchvision's `BoxLinearCoder`.
# - Pitfall to remember: decode each row with its own location, clamp predicted deltas, and
#   never test a network output for the `-1` target marker
#   ([P7](../docs/pitfalls.md#p7-decoding-boxes-from-the-wrong-location-without-a-clamp)).
# - Next chapter: centerness, the third target, and every target of a batch in one call.
