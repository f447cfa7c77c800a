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
# # 03 · Feature locations in image pixels
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/03_locations.ipynb)
#
# The head of chapter 02 makes one prediction per cell of each feature map: `(B, L_l, ...)`
# per level, row `k` for the cell `(h, w) = divmod(k, W_l)`. To train it we must say, for
# each row `k`, *where in the image* that prediction sits: is that point inside a box? how
# far is it from the box's sides? This chapter gives every cell of every level its
# **location**, a point `(x, y)` in the pixels of the network input.
#
# FCOS (Tian et al. 2019, §3.1) maps the cell `(h, w)` of a level with stride `s` to
# `(⌊s/2⌋ + w·s, ⌊s/2⌋ + h·s)`: the centre of the `s x s` patch of input pixels that the cell
# covers. Our strides (8, 16, 32) are even, so that is
#
# - `x = (w + 0.5) * s` from the **column** index `w`,
# - `y = (h + 0.5) * s` from the **row** index `h`,
#
# listed in the head's order, row-major: location `k = h * W_l + w`.

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
#| default_exp locations

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

from fcos_lib.checks import exercise
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset
from fcos_lib.drawing import draw_boxes
from fcos_lib.head import flatten_level

_ = torch.manual_seed(0)

# %% [markdown]
# ## By hand first
#
# A 64 x 96 input (H x W) at stride 32 gives a 2 x 3 feature map. Its six cells cover six
# 32 x 32 patches; their centres, in the head's order, are
#
# | k | (h, w) | (x, y) |
# |---|--------|--------|
# | 0 | (0, 0) | (16, 16) |
# | 1 | (0, 1) | (48, 16) |
# | 2 | (0, 2) | (80, 16) |
# | 3 | (1, 0) | (16, 48) |
# | 4 | (1, 1) | (48, 48) |
# | 5 | (1, 2) | (80, 48) |
#
# `x` walks fastest (it comes from the column), `y` changes once per row.

# %%
#| export
"""Feature-map locations: the image-pixel point (x, y) of every cell of every FPN level.

Chapter 03 of the course (notebooks/03_locations.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.1: the
  cell (h, w) of a level with stride s maps to (floor(s/2) + w*s, floor(s/2) + h*s).
- torchvision.models.detection.fcos builds the same points as the centres of one square anchor
  of side s per cell (AnchorGenerator); its grid starts at (0, 0) instead of (s/2, s/2).
  Ours follows the paper.

Dimension letters: B images, F FPN channels, H_l/W_l one level's height/width,
L_l = H_l * W_l locations of one level, flattened row-major (k = h * W_l + w) like the head.
"""
import torch

from fcos_lib.checks import check_int, check_positive_number


def check_strides(strides_per_fpn_level: dict, levels=()) -> None:
    """Raise ValueError unless strides_per_fpn_level is a dict level -> stride > 0 with every level of `levels`.

    The one check of the strides: the locations (here), the matching (chapter 04) and the
    targets (chapter 06) call it. A stride of 0 would put every location at (0, 0).
    """
    if not isinstance(strides_per_fpn_level, dict):
        raise ValueError(f"strides_per_fpn_level must be a dict level -> stride in input pixels, e.g. "
                         f"{{'p3': 8, 'p4': 16, 'p5': 32}}; got {type(strides_per_fpn_level).__name__}")
    missing = [level for level in levels if level not in strides_per_fpn_level]
    if missing:
        raise ValueError(
            f"strides_per_fpn_level has no stride for levels {missing}; got keys "
            f"{list(strides_per_fpn_level)}. Fix: give one stride per level, e.g. {{'p3': 8, 'p4': 16, 'p5': 32}}."
        )
    for level, stride in strides_per_fpn_level.items():
        check_positive_number(stride, f"strides_per_fpn_level[{level!r}]")


def get_fpn_location_coords(shape_per_fpn_level: dict, strides_per_fpn_level: dict,
                            dtype: torch.dtype = torch.float32, device="cpu") -> dict:
    """The (x, y) image-pixel centre of every location of every FPN level.

    Args:
        shape_per_fpn_level: level -> shape of its feature map, (B, F, H_l, W_l) or (H_l, W_l)
            (only the last two numbers are used).
        strides_per_fpn_level: level -> stride s in input pixels (8, 16, 32 for p3, p4, p5).
        dtype, device: of the returned tensors.

    Returns:
        level -> (L_l, 2) tensor of (x, y), row k for the cell (h, w) = divmod(k, W_l):
        x = (w + 0.5) * s from the column, y = (h + 0.5) * s from the row.
    """
    if not isinstance(shape_per_fpn_level, dict):
        raise ValueError(f"shape_per_fpn_level must be a dict level -> (B, F, H_l, W_l) or (H_l, W_l); got "
                         f"{type(shape_per_fpn_level).__name__}. "
                         "Fix: {level: feat.shape for level, feat in feats.items()}")
    check_strides(strides_per_fpn_level, shape_per_fpn_level)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a float dtype (locations such as 4.0 + 8 * w are float); got {dtype!r}")
    locations_per_fpn_level = {}
    for level, shape in shape_per_fpn_level.items():
        if isinstance(shape, torch.Tensor) or not isinstance(shape, (tuple, list)) or len(shape) not in (2, 4):
            got = f"a tensor of shape {tuple(shape.shape)}" if isinstance(shape, torch.Tensor) else repr(shape)
            raise ValueError(f"shape_per_fpn_level[{level!r}] must be (B, F, H_l, W_l) or (H_l, W_l); got {got}. "
                             "Fix: pass the feature map's .shape, not the map.")
        H_l = check_int(shape[-2], f"shape_per_fpn_level[{level!r}][-2], the height H_l,", minimum=0)
        W_l = check_int(shape[-1], f"shape_per_fpn_level[{level!r}][-1], the width W_l,", minimum=0)
        stride = strides_per_fpn_level[level]
        ### BEGIN SOLUTION
        ### HINT: locations_per_fpn_level[level] = (L_l, 2) rows (x, y), x = (w + 0.5) * stride, y = (h + 0.5) * stride, k = h * W_l + w
        xs = (torch.arange(W_l, dtype=dtype, device=device) + 0.5) * stride  # (W_l,) from columns w
        ys = (torch.arange(H_l, dtype=dtype, device=device) + 0.5) * stride  # (H_l,) from rows h
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H_l, W_l) each, [h, w]
        # Row-major like the head's permute(0, 2, 3, 1).reshape: k = h * W_l + w.
        locations_per_fpn_level[level] = torch.stack([grid_x, grid_y], dim=-1).reshape(H_l * W_l, 2)  # (L_l, 2)
        ### END SOLUTION
    return locations_per_fpn_level

# %% [markdown]
# Check: the 2 x 3 map at stride 32 from the table above. The strides go through
# `check_strides`, which the matching (chapter 04) and the targets (chapter 06) use too: a
# stride of 0 would put every location at `(0, 0)`, so it is refused.

# %%
with exercise("get_fpn_location_coords"):
    locations = get_fpn_location_coords({"p5": (2, 3)}, {"p5": 32})["p5"]
    print(locations.shape, locations.dtype)
    print(locations.tolist())
    expected = [[16, 16], [48, 16], [80, 16], [16, 48], [48, 48], [80, 48]]
    assert locations.tolist() == expected, f"the 2 x 3 map at stride 32 gives {locations.tolist()}, expected {expected}"
    try:
        get_fpn_location_coords({"p5": (2, 3)}, {"p5": 0})
    except ValueError as err:
        print("ValueError:", err)

# %% [markdown]
# ## Every level of a real input
#
# The course feeds 224 x 224 images to the backbone of chapter 01, which gives `p3`, `p4`,
# `p5` at strides 8, 16, 32: 28 x 28, 14 x 14 and 7 x 7 cells. The shapes can be passed
# as the feature maps' full `(B, F, H_l, W_l)` shapes.

# %%
strides = {"p3": 8, "p4": 16, "p5": 32}
feature_shapes = {level: (2, 64, 224 // s, 224 // s) for level, s in strides.items()}
locations_per_level = get_fpn_location_coords(feature_shapes, strides)
for level, locs in locations_per_level.items():
    print(level, tuple(locs.shape), "first", locs[0].tolist(), "last", locs[-1].tolist())
print("L =", sum(len(locs) for locs in locations_per_level.values()))

# %% [markdown]
# ## Picture: the three grids on a course image
#
# One image of the generated course dataset (chapter 00), with the locations of each level
# drawn as dots. `p3` covers the image densely (small objects get many points), `p5` has a
# point every 32 pixels (large objects still get several).

# %%
train_set = VOCDataset(make_course_dataset(), "train")
image, target = train_set[0]
fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, (level, locs) in zip(axes, locations_per_level.items()):
    ax.imshow(image.permute(1, 2, 0).numpy())  # (H, W, 3) for matplotlib
    draw_boxes(ax, target["boxes"], target["labels"], class_names=train_set.class_names)
    ax.scatter(locs[:, 0], locs[:, 1], s=4 if level == "p3" else 9, c="yellow", edgecolors="black", linewidths=0.3)
    ax.set_title(f"{level}: stride {strides[level]}, {len(locs)} locations")
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# > **Pitfall P6** ([the course's pitfalls note](../docs/pitfalls.md#p6-x-and-y-swapped-in-the-locations)). The seed's `get_fpn_location_coords` takes `x` from the
# > **row** index and `y` from the **column** index. On a square input that mistake is
# > invisible in a picture like the one above: the set of points is the same, only their
# > order changes. But order is the whole point. The head's row `k` is the cell
# > `(h, w) = divmod(k, W_l)`; the seed gives it the location of the cell `(w, h)`, the
# > mirror image across the diagonal. Every prediction is trained against the box at the
# > wrong place, except the ones on the diagonal. On a non-square input the two lists even
# > differ as sets, which is why the checks below use a non-square input.

# %% [markdown]
# The seed's order on the 2 x 3 map of the 64 x 96 input, next to ours. Row `k` gets a
# different point for every `k` off the diagonal; and because the map is not square, the
# seed's points are not even the right set: `y = 80` lies below the 64-pixel-high image, and
# the column `x = 80` gets no point at all.

# %%
H_l, W_l, s = 2, 3, 32
h_idx, w_idx = torch.meshgrid(torch.arange(H_l), torch.arange(W_l), indexing="ij")
swapped = torch.stack([(h_idx + 0.5) * s, (w_idx + 0.5) * s], dim=-1).reshape(-1, 2)  # x from rows: wrong
for k in range(H_l * W_l):
    print(f"k={k} cell (h, w)={divmod(k, W_l)}  ours (x, y)={tuple(locations[k].tolist())}  "
          f"swapped={tuple(swapped[k].tolist())}")

# %% [markdown]
# ## Check: location k is paired with prediction k
#
# The test that catches the swap: build a feature map on a **non-square** input whose value
# at `(h, w)` encodes its own position (channel 0 = `w`, channel 1 = `h`), flatten it exactly
# the way the head does (`permute(0, 2, 3, 1).reshape(B, -1, C)`, chapter 02's
# `flatten_level`), and decode each location back to a cell: `w = x / s - 0.5`,
# `h = y / s - 0.5`. Row `k` of both must name the same cell, on every level.

# %%
image_size = (160, 224)  # H x W, not square on purpose
shapes = {level: (image_size[0] // s, image_size[1] // s) for level, s in strides.items()}
with exercise("get_fpn_location_coords"):
    locations_per_level = get_fpn_location_coords(shapes, strides)
    for level, (H_l, W_l) in shapes.items():
        rows, cols = torch.meshgrid(torch.arange(H_l), torch.arange(W_l), indexing="ij")  # (H_l, W_l)
        position_map = torch.stack([cols, rows]).float()[None]  # (1, 2, H_l, W_l): channel 0 = w, 1 = h
        predictions = flatten_level(position_map)[0]  # (L_l, 2): (w, h) of the cell behind row k
        locs = locations_per_level[level]
        decoded = locs / strides[level] - 0.5  # (L_l, 2): (w, h) from (x, y)
        print(f"{level}: {H_l} x {W_l} cells, {len(locs)} locations, every k paired with its own cell:",
              torch.equal(decoded, predictions))
        assert torch.equal(decoded, predictions), (
            f"on {level} ({H_l} x {W_l} cells) location k is not the cell (h, w) = divmod(k, W_l) "
            f"(first: row 1 is {locs[1].tolist()}, expected {[1.5 * strides[level], 0.5 * strides[level]]}); "
            "x comes from the column w, y from the row h")

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **torchvision's grid.** torchvision's anchors have their centres at `(w · s, h · s)`, ours at
#    `((w + 0.5) · s, (h + 0.5) · s)`. For a 224 x 224 input at stride 32, list both sets of x.
#    Which grid is symmetric about the image's centre, and which boxes near the border get
#    fewer locations with the other?
#    *Hint:* `torch.arange(7) * 32` against `(torch.arange(7) + 0.5) * 32`.
# 2. **Sizes that do not divide.** The trunk turns 100 rows into 13, 7 and 4 cells at strides 8,
#    16 and 32. Compute the `p5` locations of a 100 x 100 input. Do they all lie inside the
#    image? Why does chapter 01 refuse such inputs anyway?
#    *Hint:* the largest `x` is `3.5 · 32`.
# 3. **Seeing the swap.** Write the seed's version (x from the rows, y from the columns) and
#    run the "location k is paired with prediction k" check on a 224 x 224 input, then on
#    160 x 224. Then compare both versions' points *as sets*. Which of the three tests would
#    have caught pitfall P6 on square images?
#    *Hint:* `sorted(map(tuple, locations.tolist()))`.

# %% [markdown]
# ## Summary
#
# - The cell `(h, w)` of a level with stride `s` sits at `x = (w + 0.5) * s`,
#   `y = (h + 0.5) * s`, listed row-major, `k = h * W_l + w`, the head's order.
# - A 224 x 224 input has 784 + 196 + 49 = 1029 locations.
# - Where it lives: `fcos_lib.locations` (`get_fpn_location_coords`, `check_strides`).
# - Pitfall to remember: `x` comes from the column, `y` from the row; swapped, every prediction
#   off the diagonal is trained against the wrong place, which a picture of a square input hides
#   ([P6](../docs/pitfalls.md#p6-x-and-y-swapped-in-the-locations)).
# - Next chapter: which ground-truth box each location is responsible for.
