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
# # 10 · What makes FCOS better, measured
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/10_improvements.ipynb)
#
# Chapters 02 to 09 made choices: GroupNorm in the head, centre sampling, a GIoU box loss,
# `exp` box deltas, centerness on the regression branch, flips, a learning rate of 0.02 with
# warm-up and a cosine decay. Each came with a reason, from the FCOS paper or from later work.
# This chapter asks what each of them *buys*, and treats the question as an experiment:
#
# 1. **Data nobody tuned on.** Two generated datasets, different from the course's in classes,
#    backgrounds, object sizes and clutter. The course never trains on them and never chose a
#    default by looking at them.
# 2. **Several seeds.** Training from scratch for a few minutes is noisy: two runs that differ
#    only in their seed can differ by more than a design change does. Every row is a mean over
#    seeds, with its spread.
# 3. **One change at a time, at one budget.** Start from the seed document's recipe, add one
#    change, measure; then all of them together; then the levers that matter most for a short
#    schedule from scratch.
# 4. **A peer.** torchvision's own `FCOS` class, on the same trunk, trained and scored by the
#    same code: the yardstick for the whole recipe.
#
# Why so careful? This project has been fooled once already. On the benchmark's own generated
# dataset, the course's recipe beat torchvision's FCOS (mAP@0.5 0.128 vs 0.107). On a dataset
# kept outside the project, with the same budget, torchvision's FCOS won (0.168 vs 0.130). A
# win measured on one dataset, once, with the data you tuned on, is not a win.
#
# The runs take hours on a CPU, so this notebook does not train them: `make ablations`
# (`bench/ablations.py`) does, and writes `bench/results/ablations.json`. The notebook reads
# that file, draws the table, and re-runs one short row to check that the stored figures come
# from this code.

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
#| default_exp experiments

# %%
# %matplotlib inline
import json
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from fcos_lib.data import VOCDataset
from fcos_lib.drawing import draw_boxes
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import fcos_match_indices

_ = torch.manual_seed(0)

# %% [markdown]
# ## Two held-out datasets
#
# Both are written in VOC layout (the format of chapter 00), 600 training and 150 validation
# images each, from a fixed seed, so every machine generates the same files.
#
# - **signs**: five outlines (arrow, crescent, diamond, ring, tee), each in a *random* colour,
#   so the class must be read from the shape alone; striped or checkered backgrounds; unlabelled
#   lines and blobs as distractors; 0 to 8 objects, many of them small.
# - **tiles**: five fill textures (checker, dots, plain, stripes, waves) on random outlines, on
#   smooth coloured "clouds"; fewer, larger objects that overlap heavily; unlabelled
#   crosshatched patches as distractors.
#
# As in the course dataset, an object is `difficult` (ignored by the metric, chapter 09) when
# it is tiny or less than 40 % visible.
#
# Every row below is measured on these two, so by the end of the chapter they have been looked at
# many times: a default chosen on them is, a little, chosen on the data it is judged on. A third
# dataset, made only after the rows were measured and used only to confirm a change of the
# default, keeps that honest:
#
# - **letters**: five capitals (E, K, R, S, X) of Pillow's bundled font, tilted, stretched and
#   bolder or thinner, among unlabelled glyphs (A, C, H, L, O, T, Z) on "paper" (light or dark,
#   some ruled); 0 to 10 objects, overlapping, from 10 to 130 px.
#
# By the end of the chapter `letters` has been looked at many times too. A fourth dataset, made
# after the default was chosen, measures that default once, with AdamW and the peer beside it
# (the last section):
#
# - **cells**: five cell shapes (round, rod, nucleus, budding, spiky) at random angles under a
#   bright-field or a fluorescence "microscope", with uneven light, now and then out of focus,
#   among unlabelled debris and fibres; 0 to 14 objects, from 10 to 90 px.
#
# `cells` then helped decide one more change (AdamW's rate and warm-up, near the end), so a fifth
# dataset, made for that decision and used for nothing else, measures it once more:
#
# - **aerial**: five things seen from above (car, house, tree, pool, tank) at random angles, each
#   with a shadow cast away from the sun, on fields of grass, soil or sand crossed by roads, among
#   unlabelled bushes, rocks and sheds; 0 to 20 objects, each class in its own size range (cars
#   9 to 24 px, houses 18 to 60 px).

# %%
#| export heldout
"""Held-out datasets for chapter 10's experiments: two generated VOC-layout datasets that differ
from the course dataset in classes, backgrounds, object sizes and clutter.

- "signs": five sign shapes (arrow, crescent, diamond, ring, tee) in random colours, so the class
  must be read from the outline alone, on striped or checkered backgrounds, with unlabelled
  line and blob distractors; many small objects.
- "tiles": five fill textures (checker, dots, plain, stripes, waves) on random outlines, on smooth
  coloured "cloud" backgrounds, large and heavily overlapping objects, unlabelled crosshatch
  distractors.

Three more come later in the chapter: "letters" (capitals among other glyphs) to confirm a change
of the default, "cells" (five cell shapes under a microscope) to measure the final default once
on data nothing was tuned on, and "aerial" (cars, houses, trees, pools and tanks seen from
above) to check the one decision that `cells` then helped make.

None is ever used to train the course's main job or to choose its recipe's defaults before
chapter 10; both are used only to measure.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fcos_lib.course_data import _hsv, _voc_xml
from fcos_lib.env import default_data_dir

HELD_OUT_CLASSES = {
    "signs": ("arrow", "crescent", "diamond", "ring", "tee"),
    "tiles": ("checker", "dots", "plain", "stripes", "waves"),
}
# A third dataset, made after the ablations on the two above were done, to confirm a change of
# the default on data that no row was ever measured on: five capital letters among other glyphs.
CONFIRMATION_CLASSES = {
    "letters": ("E", "K", "R", "S", "X"),
}
# A fourth, made after every row of this chapter had been measured and the default chosen: it
# measures the default, AdamW and the peer once, on ground that nothing here was tuned on.
FRESH_CLASSES = {
    "cells": ("round", "rod", "nucleus", "budding", "spiky"),
}
# A fifth, made when `cells` had been used to decide a change of AdamW's rate and warm-up: it
# measures that decision once more, on ground nothing here was ever tuned or decided on.
FINAL_CLASSES = {
    "aerial": ("car", "house", "tree", "pool", "tank"),
}
DATASET_CLASSES = {**HELD_OUT_CLASSES, **CONFIRMATION_CLASSES, **FRESH_CLASSES, **FINAL_CLASSES}
_LETTER_DISTRACTORS = "ACHLOTZ"


_HELD_OUT_VERSION = 1


def _polygon_mask(w: int, h: int, points) -> np.ndarray:
    """(h, w) bool of a polygon given in unit coordinates [0, 1]^2, stretched over the patch."""
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x * (w - 1), y * (h - 1)) for x, y in points], fill=255)
    return np.asarray(mask) > 0


def _ellipse_mask(w: int, h: int, inset: float = 0.0) -> np.ndarray:
    """(h, w) bool filled ellipse, optionally shrunk by `inset` (a fraction of each side)."""
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([inset * (w - 1), inset * (h - 1), (1 - inset) * (w - 1), (1 - inset) * (h - 1)],
                                 fill=255)
    return np.asarray(mask) > 0

# %%
#| export heldout
def _sign_mask(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """The filled outline of a "signs" class over a w x h patch: (h, w) bool."""
    if kind == "diamond":
        return _polygon_mask(w, h, [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])
    if kind == "ring":
        return _ellipse_mask(w, h) & ~_ellipse_mask(w, h, inset=rng.uniform(0.22, 0.32))
    if kind == "crescent":
        shift = rng.uniform(0.25, 0.4)
        outer = _ellipse_mask(w, h)
        inner = np.zeros_like(outer)
        dx = int(round(shift * w))
        inner[:, dx:] = outer[:, : w - dx]
        mask = outer & ~inner
        return mask[:, ::-1] if rng.random() < 0.5 else mask
    if kind == "tee":
        bar, stem = rng.uniform(0.28, 0.38), rng.uniform(0.28, 0.38)
        pts = [(0, 0), (1, 0), (1, bar), (0.5 + stem / 2, bar), (0.5 + stem / 2, 1), (0.5 - stem / 2, 1),
               (0.5 - stem / 2, bar), (0, bar)]
        mask = _polygon_mask(w, h, pts)
        return mask[::-1] if rng.random() < 0.5 else mask
    if kind == "arrow":
        shaft, head = rng.uniform(0.3, 0.4), rng.uniform(0.4, 0.55)
        pts = [(0, 0.5 - shaft / 2), (1 - head, 0.5 - shaft / 2), (1 - head, 0), (1, 0.5), (1 - head, 1),
               (1 - head, 0.5 + shaft / 2), (0, 0.5 + shaft / 2)]
        mask = _polygon_mask(w, h, pts)
        return mask[:, ::-1] if rng.random() < 0.5 else mask
    raise ValueError(f"unknown signs class {kind!r}")


def _texture(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """(h, w) float in [0, 1]: the fill pattern of a "tiles" class (0 = first colour, 1 = second)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5, 9)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    if kind == "plain":
        return np.zeros((h, w), np.float32)
    if kind == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        cu, cv = (u % period) - period / 2, (v % period) - period / 2
        return (cu ** 2 + cv ** 2 < (0.3 * period) ** 2).astype(np.float32)
    if kind == "waves":
        return (np.sin(2 * math.pi * (u + 2.0 * np.sin(2 * math.pi * v / (2.5 * period))) / period) > 0).astype(np.float32)
    if kind == "crosshatch":  # distractors only
        return ((np.sin(2 * math.pi * u / period) > 0.6) | (np.sin(2 * math.pi * v / period) > 0.6)).astype(np.float32)
    raise ValueError(f"unknown tiles texture {kind!r}")


def _tiles_outline(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random outline for a textured object: ellipse, rectangle or a convex blob."""
    r = rng.random()
    if r < 0.35:
        return _ellipse_mask(w, h)
    if r < 0.7:
        return np.ones((h, w), bool)
    k = int(rng.integers(6, 10))
    angles = np.sort(rng.uniform(0, 2 * math.pi, k))
    px, py = (np.cos(angles) + 1) / 2, (np.sin(angles) + 1) / 2
    px = (px - px.min()) / (px.max() - px.min())
    py = (py - py.min()) / (py.max() - py.min())
    return _polygon_mask(w, h, list(zip(px.tolist(), py.tolist())))

# %%
#| export heldout
def _signs_background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Low-contrast stripes or checks in two random colours, with grain: (H, W, 3) float."""
    c0 = _hsv(rng, rng.uniform(0, 360), (0.0, 0.5), (0.3, 0.9))
    c1 = _hsv(rng, rng.uniform(0, 360), (0.0, 0.5), (0.3, 0.9))
    c1 = c0 + (c1 - c0) * 0.35
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    period = rng.uniform(8, 40)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if rng.random() < 0.5:
        pattern = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    else:
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        pattern = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    image = c0 + (c1 - c0) * pattern[..., None]
    return image + 6.0 * rng.standard_normal((H, W, 3)).astype(np.float32)


def _tiles_background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Smooth coloured clouds: three octaves of upsampled noise per channel: (H, W, 3) float."""
    image = np.zeros((H, W, 3), np.float32)
    base = _hsv(rng, rng.uniform(0, 360), (0.1, 0.6), (0.35, 0.8))
    for cells, amplitude in ((3, 45.0), (8, 20.0), (24, 8.0)):
        for c in range(3):
            coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
            image[..., c] += amplitude * np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC))
    return image + base


def _glyph_mask(rng: np.random.Generator, letter: str, side: float) -> np.ndarray:
    """A letter of Pillow's bundled font, about `side` px tall, bolder or thinner, tilted by up to
    25 degrees and stretched by up to 1.4x in width, cropped to its ink: (h, w) bool."""
    size = max(8, int(round(side * 1.35)))  # a capital's ink is about 0.74 of the font size
    font = ImageFont.load_default(size=size)
    sheet = Image.new("L", (2 * size + 8, 2 * size + 8), 0)
    ImageDraw.Draw(sheet).text((4, 4), letter, fill=255, font=font,
                               stroke_width=int(rng.integers(0, max(1, size // 14) + 1)), stroke_fill=255)
    sheet = sheet.rotate(rng.uniform(-25, 25), resample=Image.BILINEAR, expand=True)
    ink = np.asarray(sheet) > 127
    ys, xs = np.nonzero(ink)
    ink = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    stretch = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
    w = max(3, int(round(ink.shape[1] * stretch)))
    return np.asarray(Image.fromarray(ink).resize((w, ink.shape[0]), Image.NEAREST))


def _letters_background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Paper: a light or dark tone with soft blotches, ruled lines and grain: (H, W, 3) float."""
    dark = rng.random() < 0.3
    base = _hsv(rng, rng.uniform(0, 360), (0.0, 0.35), (0.1, 0.3) if dark else (0.75, 0.97))
    image = np.broadcast_to(base, (H, W, 3)).astype(np.float32).copy()
    for c in range(3):
        coarse = rng.normal(0.0, 1.0, (4, 4)).astype(np.float32)
        image[..., c] += 12.0 * np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC))
    if rng.random() < 0.6:  # ruled lines
        spacing = rng.uniform(10, 30)
        line = _hsv(rng, rng.uniform(0, 360), (0.2, 0.8), (0.3, 0.8))
        rows = (np.arange(H) % spacing) < 1.5
        image[rows] = 0.6 * image[rows] + 0.4 * line
    return image + 5.0 * rng.standard_normal((H, W, 3)).astype(np.float32)


def _mark_difficult(objects: list[dict], owner: np.ndarray, to_image: float) -> None:
    """Flag each object `difficult` when it is tiny (under 10 px at 224) or less than 40 % visible."""
    for j, obj in enumerate(objects):
        x1, y1, x2, y2 = obj["box"]
        tiny = max(x2 - x1, y2 - y1) < 10 * to_image
        obj["difficult"] = tiny or int((owner == j).sum()) < 0.4 * obj["area"]


def _paste(canvas, owner, x, y, mask, patch, index):
    region = canvas[y:y + mask.shape[0], x:x + mask.shape[1]]
    region[mask] = patch[mask]
    owner[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = index


def _held_out_image(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its objects (0-based edge boxes, name, difficult)."""
    long_side = int(rng.integers(200, 361))
    short_side = int(round(long_side * rng.uniform(0.6, 1.0)))
    W, H = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    to_image = long_side / 224  # sizes are drawn in pixels of a 224-px letterboxed input
    classes = DATASET_CLASSES[kind]
    if kind == "letters":
        return _letters_image(rng, H, W, to_image)
    if kind == "cells":
        return _cells_image(rng, H, W, to_image)
    if kind == "aerial":
        return _aerial_image(rng, H, W, to_image)
    if kind == "signs":
        canvas = _signs_background(rng, H, W)
        num_objects = 0 if rng.random() < 0.1 else int(rng.integers(1, 9))
        num_distractors = int(rng.integers(0, 5))
        size_range = (8.0, 150.0)
    else:
        canvas = _tiles_background(rng, H, W)
        num_objects = 0 if rng.random() < 0.05 else int(rng.integers(1, 6))
        num_distractors = int(rng.integers(0, 3))
        size_range = (16.0, 210.0)
    owner = np.full((H, W), -1, dtype=np.int16)
    items = [None] * num_distractors + [classes[rng.integers(len(classes))] for _ in range(num_objects)]
    rng.shuffle(items)
    objects = []
    for name in items:
        side = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1]))) * to_image
        aspect = math.exp(rng.uniform(0.0, math.log(2.0)))
        w, h = (side, side / aspect) if rng.random() < 0.5 else (side / aspect, side)
        w, h = max(4, min(int(w), W - 2)), max(4, min(int(h), H - 2))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if kind == "signs":
            if name is None:  # distractor: a thick line or a blob
                mask = Image.new("L", (w, h), 0)
                if rng.random() < 0.5:
                    ImageDraw.Draw(mask).line([(0, rng.uniform(0, h)), (w - 1, rng.uniform(0, h))], fill=255,
                                              width=max(2, int(min(w, h) * 0.15)))
                else:
                    ImageDraw.Draw(mask).ellipse([0, 0, w - 1, h - 1], fill=255)
                mask = np.asarray(mask) > 0
            else:
                mask = _sign_mask(rng, name, w, h)
            colour = _hsv(rng, rng.uniform(0, 360), (0.4, 1.0), (0.25, 1.0))
            patch = colour + rng.normal(0.0, 6.0, (h, w, 3))
        else:
            mask = _tiles_outline(rng, w, h)
            a = _hsv(rng, rng.uniform(0, 360), (0.3, 1.0), (0.2, 1.0))
            b = _hsv(rng, rng.uniform(0, 360), (0.3, 1.0), (0.2, 1.0))
            t = _texture(rng, "crosshatch" if name is None else name, w, h)
            patch = a + (b - a) * t[..., None] + rng.normal(0.0, 5.0, (h, w, 3))
        if not mask.any():
            continue
        _paste(canvas, owner, x, y, mask, patch, -2 if name is None else len(objects))
        if name is None:
            continue
        ys, xs = np.nonzero(mask)
        objects.append({"name": name, "box": (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1,
                                              y + int(ys.max()) + 1), "area": int(mask.sum())})
    _mark_difficult(objects, owner, to_image)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), objects


def _letters_image(rng: np.random.Generator, H: int, W: int, to_image: float) -> tuple[np.ndarray, list[dict]]:
    """One "letters" image: 0 to 10 labelled capitals and up to 6 other glyphs on paper."""
    canvas = _letters_background(rng, H, W)
    owner = np.full((H, W), -1, dtype=np.int16)
    classes = CONFIRMATION_CLASSES["letters"]
    num_objects = 0 if rng.random() < 0.08 else int(rng.integers(1, 11))
    items = [None] * int(rng.integers(0, 7)) + [classes[rng.integers(len(classes))] for _ in range(num_objects)]
    rng.shuffle(items)
    ink_tone = float(canvas.mean())
    objects = []
    for name in items:
        letter = _LETTER_DISTRACTORS[rng.integers(len(_LETTER_DISTRACTORS))] if name is None else name
        side = math.exp(rng.uniform(math.log(10.0), math.log(130.0))) * to_image
        mask = _glyph_mask(rng, letter, side)
        h, w = mask.shape
        if h > H - 2 or w > W - 2:
            continue
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        # Ink that contrasts with the paper, in a random hue; now and then a faint one.
        value = (0.05, 0.35) if ink_tone > 128 else (0.7, 1.0)
        colour = _hsv(rng, rng.uniform(0, 360), (0.0, 0.9), value)
        if rng.random() < 0.15:
            colour = 0.5 * colour + 0.5 * canvas[y:y + h, x:x + w].mean(axis=(0, 1))
        patch = colour + rng.normal(0.0, 4.0, (h, w, 3))
        _paste(canvas, owner, x, y, mask, patch, -2 if name is None else len(objects))
        if name is not None:
            objects.append({"name": name, "box": (x, y, x + w, y + h), "area": int(mask.sum())})
    _mark_difficult(objects, owner, to_image)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), objects


def _cell_sprite(rng: np.random.Generator, kind: str, side: float) -> tuple[np.ndarray, np.ndarray]:
    """One "cells" object (a class, or "debris" / "fibre"), about `side` px across, at a random
    angle, cropped to its extent: its mask (h, w) bool and its shade (h, w) in [0, 1] (1 = rim)."""
    s = max(8, int(round(side)))
    c = s + 4  # the centre of a sheet with room to turn
    sheet = Image.new("L", (2 * c, 2 * c), 0)
    draw = ImageDraw.Draw(sheet)
    tone = lambda v: int(round(1 + 254 * v))  # 0 is "outside"; 1-255 carry the shade

    def cell(x, y, a, b, rim=1.0, inside=0.25):
        t = max(1.0, 0.14 * min(a, b))
        draw.ellipse([x - a, y - b, x + a, y + b], fill=tone(rim))
        draw.ellipse([x - a + t, y - b + t, x + a - t, y + b - t], fill=tone(inside))

    if kind in ("round", "nucleus"):
        a = s / 2
        b = a / rng.uniform(1.0, 1.3)
        cell(c, c, a, b)
        if kind == "nucleus":
            r = rng.uniform(0.3, 0.42) * b
            dx, dy = rng.uniform(-0.3, 0.3, size=2) * (a - r, b - r)
            draw.ellipse([c + dx - r, c + dy - r, c + dx + r, c + dy + r], fill=tone(0.9))
    elif kind == "rod":
        a = s / 2
        b = max(2.0, a * rng.uniform(0.22, 0.38))
        t = max(1.0, 0.3 * b)
        draw.rounded_rectangle([c - a, c - b, c + a, c + b], radius=b, fill=tone(1.0))
        draw.rounded_rectangle([c - a + t, c - b + t, c + a - t, c + b - t], radius=max(b - t, 0), fill=tone(0.25))
    elif kind == "budding":
        big = 0.32 * s
        small = big * rng.uniform(0.45, 0.65)
        x_big = c - 0.8 * small
        cell(x_big + big + 0.7 * small, c, small, small)
        cell(x_big, c, big, big)
    elif kind == "spiky":
        n, inner, phase = int(rng.integers(7, 12)), rng.uniform(0.55, 0.7), rng.uniform(0, 2 * math.pi)
        radii = [s / 2 if k % 2 == 0 else inner * s / 2 for k in range(2 * n)]
        draw.polygon([(c + r * math.cos(phase + math.pi * k / n), c + r * math.sin(phase + math.pi * k / n))
                      for k, r in enumerate(radii)], fill=tone(0.6))
    elif kind == "debris":  # an irregular speck
        n = int(rng.integers(5, 9))
        draw.polygon([(c + rng.uniform(0.3, 1.0) * s / 2 * math.cos(2 * math.pi * k / n),
                       c + rng.uniform(0.3, 1.0) * s / 2 * math.sin(2 * math.pi * k / n)) for k in range(n)],
                     fill=tone(rng.uniform(0.4, 1.0)))
    elif kind == "fibre":  # a thin bent thread
        steps = np.cumsum(rng.normal(0.0, 0.35, 6))
        points = [(c - s / 2 + s * k / 5, c + s / 2 * math.sin(a)) for k, a in enumerate(steps)]
        draw.line(points, fill=tone(0.8), width=int(rng.integers(1, 3)))
    else:
        raise ValueError(f"unknown cells object {kind!r}")
    values = np.asarray(sheet.rotate(rng.uniform(0, 360), resample=Image.NEAREST, expand=True))
    ys, xs = np.nonzero(values)
    values = values[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return values > 0, np.clip((values.astype(np.float32) - 1) / 254, 0, 1)


def _cells_image(rng: np.random.Generator, H: int, W: int, to_image: float) -> tuple[np.ndarray, list[dict]]:
    """One "cells" image: 0 to 14 cells of five kinds among debris and fibres, under a bright-field
    or a fluorescence microscope, with uneven light and now and then out of focus."""
    fluorescence = rng.random() < 0.35
    hue = rng.uniform(0, 360)
    base = _hsv(rng, hue, (0.0, 0.25), (0.03, 0.12) if fluorescence else (0.65, 0.9))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    light = 1.0 - rng.uniform(0.1, 0.35) * ((xx - cx) ** 2 + (yy - cy) ** 2) / float(H * H + W * W)
    canvas = base[None, None, :].astype(np.float32) * light[..., None] + 6.0 * rng.standard_normal((H, W, 3))
    owner = np.full((H, W), -1, dtype=np.int16)
    classes = FRESH_CLASSES["cells"]
    num_objects = 0 if rng.random() < 0.06 else int(rng.integers(1, 15))
    distractors = ["debris" if rng.random() < 0.6 else "fibre" for _ in range(int(rng.integers(0, 10)))]
    items = distractors + [classes[rng.integers(len(classes))] for _ in range(num_objects)]
    rng.shuffle(items)
    objects = []
    for name in items:
        if name in ("debris", "fibre"):
            side = (rng.uniform(3, 12) if name == "debris" else rng.uniform(20, 80)) * to_image
        else:
            side = math.exp(rng.uniform(math.log(10.0), math.log(90.0))) * to_image
        mask, shade = _cell_sprite(rng, name, side)
        h, w = mask.shape
        if h > H - 2 or w > W - 2:
            continue
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        stain = rng.uniform(0, 360)
        if fluorescence:  # glowing: dimmer inside, bright rim
            lo, hi = _hsv(rng, stain, (0.5, 1.0), (0.3, 0.55)), _hsv(rng, stain, (0.4, 1.0), (0.75, 1.0))
        else:  # bright field: nearly the background inside, a dark rim
            lo = 0.85 * canvas[y:y + h, x:x + w].mean(axis=(0, 1))
            hi = _hsv(rng, stain, (0.0, 0.5), (0.15, 0.45))
        if rng.random() < 0.15:  # faint
            hi = 0.5 * hi + 0.5 * lo
        patch = lo + (hi - lo) * shade[..., None] + rng.normal(0.0, 4.0, (h, w, 3))
        _paste(canvas, owner, x, y, mask, patch, -2 if name not in classes else len(objects))
        if name in classes:
            objects.append({"name": name, "box": (x, y, x + w, y + h), "area": int(mask.sum())})
    _mark_difficult(objects, owner, to_image)
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    if rng.random() < 0.4:  # out of focus
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * to_image))
    return np.asarray(image), objects

# %%
#| export heldout
def _aerial_ground(rng: np.random.Generator, H: int, W: int, to_image: float) -> np.ndarray:
    """Terrain seen from above: grass, soil or sand in field patches, with 0 to 3 roads: (H, W, 3) float."""
    hue = rng.choice([rng.uniform(75, 135), rng.uniform(25, 50)])  # green land or dry land
    image = np.zeros((H, W, 3), np.float32)
    fields = np.asarray(Image.fromarray(rng.normal(0.0, 1.0, (5, 5)).astype(np.float32)).resize((W, H), Image.NEAREST))
    for tone in (-np.inf, *np.sort(rng.uniform(-1.0, 1.0, 2))):  # three kinds of field
        image[fields >= tone] = _hsv(rng, hue + rng.uniform(-15, 15), (0.2, 0.6), (0.3, 0.7))
    for c in range(3):
        coarse = rng.normal(0.0, 1.0, (12, 12)).astype(np.float32)
        image[..., c] += 10.0 * np.asarray(Image.fromarray(coarse).resize((W, H), Image.BICUBIC))
    ground = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(ground)
    for _ in range(int(rng.integers(0, 4))):  # roads: asphalt with a dashed centre line
        width = int(rng.uniform(6, 14) * to_image)
        (x1, y1), (x2, y2) = rng.uniform(0, 1, (2, 2)) * (W, H)
        grey = int(rng.uniform(60, 130))
        draw.line([(x1, y1), (x2, y2)], fill=(grey, grey, grey), width=width)
        for t in np.arange(0, 1, 0.06):
            draw.line([(x1 + (x2 - x1) * t, y1 + (y2 - y1) * t), (x1 + (x2 - x1) * (t + 0.03), y1 + (y2 - y1) * (t + 0.03))],
                      fill=(220, 220, 200), width=max(1, width // 8))
    return np.asarray(ground).astype(np.float32) + 5.0 * rng.standard_normal((H, W, 3)).astype(np.float32)


def _aerial_sprite(rng: np.random.Generator, kind: str, side: float) -> tuple[np.ndarray, np.ndarray]:
    """One "aerial" object (a class, or "bush" / "rock" / "shed"), about `side` px long, at a random
    angle, cropped to its extent: its mask (h, w) bool and its colours (h, w, 3) float."""
    s = max(6, int(round(side)))
    c = s + 4
    sheet = Image.new("RGBA", (2 * c, 2 * c), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    rgb = lambda colour: (*(int(v) for v in np.clip(colour, 0, 255)), 255)
    green = lambda lo, hi: rgb(_hsv(rng, rng.uniform(80, 140), (0.4, 0.9), (lo, hi)))

    if kind == "car":  # a body with a dark windscreen and rear window
        a, b = s / 2, s * rng.uniform(0.2, 0.26)
        body = _hsv(rng, rng.uniform(0, 360), (0.0, 0.9), (0.3, 1.0))
        draw.rounded_rectangle([c - a, c - b, c + a, c + b], radius=max(1, b / 2), fill=rgb(body))
        glass = rgb(0.25 * body)
        draw.rectangle([c + 0.2 * a, c - 0.8 * b, c + 0.45 * a, c + 0.8 * b], fill=glass)
        draw.rectangle([c - 0.7 * a, c - 0.7 * b, c - 0.55 * a, c + 0.7 * b], fill=glass)
    elif kind in ("house", "shed"):  # a pitched roof (two shades) or a flat one
        a, b = s / 2, s / 2 / rng.uniform(1.0, 1.8)
        roof = _hsv(rng, rng.choice([rng.uniform(0, 30), rng.uniform(180, 240)]), (0.0, 0.7), (0.3, 0.8))
        draw.rectangle([c - a, c - b, c + a, c + b], fill=rgb(roof))
        if kind == "house":
            draw.rectangle([c - a, c, c + a, c + b], fill=rgb(roof * rng.uniform(0.55, 0.75)))
            draw.line([(c - a, c), (c + a, c)], fill=rgb(roof * 1.2), width=max(1, s // 20))
    elif kind in ("tree", "bush"):  # a ragged round canopy, darker at the rim
        n = int(rng.integers(9, 15))
        radius = lambda: rng.uniform(0.75, 1.0) * s / 2
        draw.polygon([(c + radius() * math.cos(2 * math.pi * k / n), c + radius() * math.sin(2 * math.pi * k / n))
                      for k in range(n)], fill=green(0.15, 0.35) if kind == "tree" else green(0.35, 0.6))
        if kind == "tree":
            r = 0.45 * s / 2
            draw.ellipse([c - r, c - r - r / 2, c + r, c + r - r / 2], fill=green(0.35, 0.55))
    elif kind == "pool":  # blue water inside a pale rim
        a, b = s / 2, s / 2 / rng.uniform(1.2, 2.0)
        t = max(1.0, 0.12 * b)
        draw.rounded_rectangle([c - a, c - b, c + a, c + b], radius=b * rng.uniform(0.1, 0.9), fill=rgb((225, 225, 215)))
        draw.rounded_rectangle([c - a + t, c - b + t, c + a - t, c + b - t], radius=max(0, b * 0.5 - t),
                               fill=rgb(_hsv(rng, rng.uniform(180, 205), (0.5, 0.9), (0.7, 1.0))))
    elif kind == "tank":  # a round storage tank: pale lid, a ring, a dark rim
        r = s / 2
        lid = _hsv(rng, 0, (0.0, 0.05), (0.7, 0.95))
        draw.ellipse([c - r, c - r, c + r, c + r], fill=rgb(0.45 * lid))
        draw.ellipse([c - 0.88 * r, c - 0.88 * r, c + 0.88 * r, c + 0.88 * r], fill=rgb(lid))
        draw.ellipse([c - 0.5 * r, c - 0.5 * r, c + 0.5 * r, c + 0.5 * r], outline=rgb(0.7 * lid), width=max(1, s // 14))
    elif kind == "rock":  # a grey irregular stone
        n = int(rng.integers(5, 8))
        grey = rng.uniform(90, 200)
        draw.polygon([(c + rng.uniform(0.4, 1.0) * s / 2 * math.cos(2 * math.pi * k / n),
                       c + rng.uniform(0.4, 1.0) * s / 2 * math.sin(2 * math.pi * k / n)) for k in range(n)],
                     fill=rgb((grey, grey, grey * 0.95)))
    else:
        raise ValueError(f"unknown aerial object {kind!r}")
    values = np.asarray(sheet.rotate(rng.uniform(0, 360), resample=Image.NEAREST, expand=True))
    ys, xs = np.nonzero(values[..., 3])
    values = values[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return values[..., 3] > 0, values[..., :3].astype(np.float32)


_AERIAL_SIZES = {"car": (9, 24), "house": (18, 60), "tree": (10, 42), "pool": (12, 40), "tank": (14, 50),
                 "bush": (5, 14), "rock": (4, 12), "shed": (8, 18)}


def _aerial_image(rng: np.random.Generator, H: int, W: int, to_image: float) -> tuple[np.ndarray, list[dict]]:
    """One "aerial" image: 0 to 20 cars, houses, trees, pools and tanks seen from above, each with a
    shadow cast the same way, among unlabelled bushes, rocks and sheds on fields and roads."""
    canvas = _aerial_ground(rng, H, W, to_image)
    owner = np.full((H, W), -1, dtype=np.int16)
    classes = FINAL_CLASSES["aerial"]
    num_objects = 0 if rng.random() < 0.06 else int(rng.integers(1, 21))
    distractors = [("bush", "rock", "shed")[rng.integers(3)] for _ in range(int(rng.integers(0, 12)))]
    items = distractors + [classes[rng.integers(len(classes))] for _ in range(num_objects)]
    rng.shuffle(items)
    sun = rng.uniform(0, 2 * math.pi)
    objects = []
    for name in items:
        side = math.exp(rng.uniform(*np.log(_AERIAL_SIZES[name]))) * to_image
        mask, patch = _aerial_sprite(rng, name, side)
        h, w = mask.shape
        if h > H - 2 or w > W - 2:
            continue
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        # The shadow: the same outline, darker ground, shifted away from the sun; not part of the box.
        dx, dy = (int(round(0.25 * side * math.cos(sun))), int(round(0.25 * side * math.sin(sun))))
        sx, sy = min(max(x + dx, 0), W - w), min(max(y + dy, 0), H - h)
        canvas[sy:sy + h, sx:sx + w][mask] *= 0.55
        patch = patch * rng.uniform(0.85, 1.1) + rng.normal(0.0, 4.0, (h, w, 3))
        _paste(canvas, owner, x, y, mask, patch, -2 if name not in classes else len(objects))
        if name in classes:
            objects.append({"name": name, "box": (x, y, x + w, y + h), "area": int(mask.sum())})
    _mark_difficult(objects, owner, to_image)
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    if rng.random() < 0.3:  # haze or a soft lens
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0) * to_image))
    return np.asarray(image), objects

# %%
#| export heldout
def make_held_out_dataset(kind: str, root=None, num_train: int = 600, num_val: int = 150, seed: int = 2026) -> Path:
    """Write the held-out dataset `kind` ("signs", "tiles", "letters", "cells" or "aerial") in VOC layout (splits train/val), or reuse it.

    Default folder: default_data_dir() / f"held_out_{kind}". Returns the folder.
    """
    if kind not in DATASET_CLASSES:
        raise ValueError(f"unknown held-out dataset {kind!r}; use one of {', '.join(DATASET_CLASSES)}")
    root = Path(root) if root is not None else default_data_dir() / f"held_out_{kind}"
    stamp = {"dataset": f"held-out {kind}", "version": _HELD_OUT_VERSION, "num_train": num_train,
             "num_val": num_val, "seed": seed}
    if (root / ".done").is_file() and json.loads((root / ".done").read_text()) == stamp:
        return root
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    kind_code = list(DATASET_CLASSES).index(kind)
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        ids = []
        for i in range(count):
            image_id = f"{split}_{i:05d}"
            image, objects = _held_out_image(kind, np.random.default_rng([seed, kind_code, split_code, i]))
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
            H, W = image.shape[:2]
            (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, W, H, objects))
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    (root / ".done").write_text(json.dumps(stamp))
    return root

# %% [markdown]
# A look at both, and at the two kept apart (below), drawn from a small copy (8 images each)
# in a temporary folder; the real datasets are the same generator with 600 + 150 images
# (`make_held_out_dataset("signs")`).

# %%
THREE = (*HELD_OUT_CLASSES, *CONFIRMATION_CLASSES)  # what the rows are measured on; "cells" waits for the end
preview = Path(tempfile.mkdtemp())
fig, axes = plt.subplots(len(DATASET_CLASSES), 4, figsize=(14, 3.5 * len(DATASET_CLASSES)))
for row, kind in enumerate(DATASET_CLASSES):
    root = make_held_out_dataset(kind, preview / kind, num_train=8, num_val=2)
    data = VOCDataset(root, "train", class_names=list(DATASET_CLASSES[kind]), image_size=224)
    for col in range(4):
        image, target = data[col + 2]
        ax = axes[row, col]
        ax.imshow(image.permute(1, 2, 0))
        draw_boxes(ax, target["boxes"], target["labels"], class_names=data.class_names,
                   difficult=target["difficult"])
        ax.set_title(f"{kind} {col + 2}", fontsize=9)
        ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A later assignment rule: ATSS
#
# Chapter 04 chose the positive locations with fixed rules: inside the box, within 1.5 strides
# of its centre, and on the level whose scale range holds `max(l, t, r, b)`. The ranges
# (0-64, 64-128, 128-inf pixels here) are hand-set. ATSS (Zhang et al. 2020, "Bridging the Gap
# Between Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection",
# Algorithm 1) replaces them with a threshold that each box sets for itself:
#
# 1. Give every location a square "anchor" of side 8 × stride, centred on it.
# 2. For a box `g`, on every level, take the `k = 9` locations nearest to its centre: the
#    candidates.
# 3. Compute the IoU of each candidate's anchor with `g`; the threshold is
#    `t_g = mean + std` of those IoUs.
# 4. A candidate is positive when its IoU ≥ `t_g` and its location is inside `g`. A location
#    positive for several boxes takes the one with the highest IoU.
#
# A box that fits one level well gets a high threshold met only on that level; a box between
# two levels gets a lower one and positives on both.

# %%
#| export atss
"""ATSS matching: an adaptive IoU threshold per box instead of FCOS's scale ranges.

ATSS (Adaptive Training Sample Selection) picks each box's positives in four steps. Every
location carries one square "anchor" of side anchor_scale * stride centred on it. For each
box, on every FPN level, the topk locations nearest to the box centre are its candidates.
The box's threshold is the mean + standard deviation of its candidates' IoUs with it, so a
box whose candidates fit it well sets a high bar and a box that fits no level sets a low one.
A candidate is positive when its IoU reaches the threshold and its location lies inside the
box; a location positive for several boxes takes the one with the highest IoU.

References:
- ATSS: Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection
  via Adaptive Training Sample Selection", §3.2 and Algorithm 1 (its FCOS variant keeps one
  anchor of scale 8 * stride per location, as here).
- mmdetection's ATSSAssigner (the reference code's rule; torch.std, unbiased, as here). It
  asks for a margin of 0.01 px inside the box; we ask for min(l, t, r, b) > 0 like chapter 04.

Box contract: (x1, y1, x2, y2) float, absolute 0-based input pixels, x1 < x2, y1 < y2.
Ground truth: (B, N, 5) rows (x1, y1, x2, y2, c), padding rows of -1 (class -1).
Dimension letters: B images, N boxes per image (padded), L locations of all levels
(p3, p4, p5 concatenated), L_l locations of one level, K candidates per box (all levels).
"""
import math

import torch

from fcos_lib.centerness import fcos_make_centerness_targets
from fcos_lib.checks import check_int, check_positive_number
from fcos_lib.deltas import fcos_get_deltas_from_locations
from fcos_lib.matching import _check_match_arguments, _checked_batch, check_gt_boxes
from fcos_lib.targets import FCOSTargets, strides_per_location


def _paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(..., 4) and (..., 4) boxes, broadcast against each other -> (...) IoU of each pair.

    boxes1 must have an area > 0 (the anchors), so the union is never 0.
    """
    x1, y1 = torch.maximum(boxes1[..., 0], boxes2[..., 0]), torch.maximum(boxes1[..., 1], boxes2[..., 1])
    x2, y2 = torch.minimum(boxes1[..., 2], boxes2[..., 2]), torch.minimum(boxes1[..., 3], boxes2[..., 3])
    inter_w, inter_h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    inter = inter_w * inter_h
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return inter / (area1 + area2 - inter)


def atss_match_indices(locations_per_fpn_level: dict, strides_per_fpn_level: dict, gt_boxes: torch.Tensor,
                       topk: int = 9, anchor_scale: float = 8.0, check_inputs: bool = True) -> torch.Tensor:
    """Index (into N) of the box each location is responsible for under ATSS, -1 for background.

    Args:
        locations_per_fpn_level: level -> (L_l, 2) (x, y) from get_fpn_location_coords.
        strides_per_fpn_level: level -> stride, same keys in the same order.
        gt_boxes: (B, N, 5) rows (x1, y1, x2, y2, c), padding rows of -1 (or (N, 5)).
            Checked by check_gt_boxes: a bad row raises a ValueError naming it. Integer
            coordinates are matched as float32.
        topk: candidates per level and box, an int >= 1 (the paper's k = 9); a level with
            fewer locations gives all of them.
        anchor_scale: the side of each location's square anchor, in strides (the paper: 8).
        check_inputs: False skips check_gt_boxes (and its host sync) for a batch the caller has
            already checked.

    Returns:
        (B, L) int64 (or (L,) for (N, 5) input), levels concatenated in the dict's order.
        Distance ties between candidates go to the lower location index; IoU ties between
        boxes go to the first box.
    """
    matched_idx = _atss_match_indices(locations_per_fpn_level, strides_per_fpn_level,
                                      _checked_batch(gt_boxes, check_inputs), topk, anchor_scale)  # (B, L)
    return matched_idx[0] if gt_boxes.dim() == 2 else matched_idx

# %%
#| export atss
def _atss_match_indices(locations_per_fpn_level: dict, strides_per_fpn_level: dict, gt_boxes: torch.Tensor,
                        topk: int, anchor_scale: float) -> torch.Tensor:
    """atss_match_indices on checked (B, N, 5) gt_boxes -> (B, L) int64."""
    _check_match_arguments(locations_per_fpn_level, strides_per_fpn_level, None)
    if not locations_per_fpn_level:
        raise ValueError("locations_per_fpn_level has no level; got {}. Fix: pass get_fpn_location_coords' "
                         "output, e.g. {'p3': ..., 'p4': ..., 'p5': ...}.")
    topk = check_int(topk, "topk (candidates per FPN level and box)")
    anchor_scale = check_positive_number(anchor_scale, "anchor_scale (the anchor's side, in strides)")
    B, N, _ = gt_boxes.shape
    dtype, device = gt_boxes.dtype, gt_boxes.device
    locations = [locs.to(dtype=dtype, device=device) for locs in locations_per_fpn_level.values()]
    half_sides = torch.cat([  # (L,) half the side of each location's anchor
        torch.full((locs.shape[0],), anchor_scale * float(strides_per_fpn_level[level]) / 2, dtype=dtype,
                   device=device)
        for level, locs in zip(locations_per_fpn_level, locations)
    ])
    all_locations = torch.cat(locations)  # (L, 2)
    L = all_locations.shape[0]
    anchors = torch.cat([all_locations - half_sides[:, None], all_locations + half_sides[:, None]], dim=1)  # (L, 4)

    # Step 1: on each level, the topk locations nearest (L2) to each box centre. The squared
    # distance orders them the same; a stable sort sends ties to the lower location index.
    # (FCOS instead keeps every location inside the box on the level whose scale range
    # contains max(l, t, r, b): ATSS has no scale ranges.)
    cx = ((gt_boxes[..., 0] + gt_boxes[..., 2]) / 2).unsqueeze(-1)  # (B, N, 1)
    cy = ((gt_boxes[..., 1] + gt_boxes[..., 3]) / 2).unsqueeze(-1)
    candidates, start = [], 0
    for locs in locations:
        L_l = locs.shape[0]
        k = min(topk, L_l)
        if k > 0:
            dx = locs[:, 0].view(1, 1, L_l) - cx  # (B, N, L_l)
            dy = locs[:, 1].view(1, 1, L_l) - cy
            nearest = (dx * dx + dy * dy).argsort(dim=-1, stable=True)[..., :k]  # (B, N, k)
            candidates.append(nearest + start)  # index into L
        start += L_l
    if N == 0 or not candidates:
        return torch.full((B, L), -1, dtype=torch.int64, device=device)
    candidates = torch.cat(candidates, dim=-1)  # (B, N, K), distinct within a box (levels do not overlap)
    K = candidates.shape[-1]

    # Step 2: IoU of each candidate's anchor with its box, and the box's adaptive threshold
    # t_g = mean + std of those IoUs. (FCOS has no IoU threshold at all.) One candidate alone
    # has no std (0 / 0 with the unbiased estimator): its threshold is its own IoU.
    ious = _paired_iou(anchors[candidates], gt_boxes[..., None, :4])  # (B, N, K)
    std = ious.std(dim=-1, keepdim=True) if K > 1 else torch.zeros_like(ious)  # (B, N, 1) or (B, N, K)
    threshold = ious.mean(dim=-1, keepdim=True) + std  # (B, N, 1)

    # Step 3: positive if IoU >= t_g and the location lies strictly inside the box (the
    # rule 1 of FCOS). Padding rows never match.
    cand_xy = all_locations[candidates]  # (B, N, K, 2)
    x1, y1, x2, y2 = (gt_boxes[..., i].unsqueeze(-1) for i in range(4))  # each (B, N, 1)
    l, t = cand_xy[..., 0] - x1, cand_xy[..., 1] - y1  # (B, N, K)
    r, b = x2 - cand_xy[..., 0], y2 - cand_xy[..., 1]
    inside = torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) > 0  # (B, N, K)
    positive = (ious >= threshold) & inside & (gt_boxes[..., 4] >= 0).unsqueeze(-1)  # (B, N, K)

    # Step 4: a location positive for several boxes takes the highest IoU (the first box on a
    # tie: torch.max returns the first maximum). (FCOS takes the smallest box instead.)
    iou_map = gt_boxes.new_full((B, N, L), -math.inf)  # (B, N, L), -inf: not a positive
    iou_map.scatter_(2, candidates, torch.where(positive, ious, torch.full_like(ious, -math.inf)))
    best_iou, matched_idx = iou_map.max(dim=1)  # (B, L)
    return torch.where(best_iou > -math.inf, matched_idx, torch.full_like(matched_idx, -1))

# %%
#| export atss
@torch.no_grad()
def atss_build_targets(locations_per_fpn_level: dict, strides_per_fpn_level: dict, gt_boxes: torch.Tensor,
                       topk: int = 9, check_inputs: bool = True) -> FCOSTargets:
    """ATSS matching + deltas + centerness for a batch, all levels concatenated (p3, p4, p5).

    Args:
        locations_per_fpn_level: level -> (L_l, 2) (x, y) from get_fpn_location_coords.
        strides_per_fpn_level: level -> stride, same keys in the same order.
        gt_boxes: (B, N, 5) rows (x1, y1, x2, y2, c), padded with rows of -1. Checked by
            check_gt_boxes (chapter 04): a degenerate, NaN or infinite box raises a ValueError
            naming it.
        topk: candidates per level and box (the paper's k = 9); anchors of side 8 * stride.
        check_inputs: False skips check_gt_boxes, and its host sync, for a batch the caller has
            just checked.

    Returns:
        FCOSTargets(matched_boxes (B, L, 5), deltas (B, L, 4), centerness (B, L)), as
        fcos_build_targets: background rows are -1 in all three; in gt_boxes' dtype (float32
        for integer gt_boxes) and on its device.
    """
    if not isinstance(gt_boxes, torch.Tensor) or gt_boxes.dim() != 3:
        check_gt_boxes(gt_boxes)  # raises: a batch only here (the matching also takes one image's (N, 5))
    gt_boxes = _checked_batch(gt_boxes, check_inputs)  # (B, N, 5), float
    matched_idx = _atss_match_indices(locations_per_fpn_level, strides_per_fpn_level, gt_boxes,
                                      topk, 8.0)  # (B, L)
    B, N, _ = gt_boxes.shape
    if N == 0:
        matched_boxes = gt_boxes.new_full((B, matched_idx.shape[1], 5), -1.0)  # (B, L, 5)
    else:
        gathered = torch.gather(gt_boxes, 1, matched_idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 5))  # (B, L, 5)
        matched_boxes = torch.where((matched_idx >= 0).unsqueeze(-1), gathered, torch.full_like(gathered, -1.0))
    locations = torch.cat(list(locations_per_fpn_level.values()), dim=0)  # (L, 2)
    strides = strides_per_location(locations_per_fpn_level, strides_per_fpn_level)  # (L,)
    deltas = fcos_get_deltas_from_locations(locations, matched_boxes, strides)  # (B, L, 4)
    centerness = fcos_make_centerness_targets(deltas)  # (B, L)
    return FCOSTargets(matched_boxes, deltas, centerness)

# %% [markdown]
# Check: the vectorised rule against Algorithm 1 written with plain loops (one box at a time,
# one location at a time), on random boxes of every size. `tests/test_atss.py` holds more
# cases: ties, duplicate boxes, padding, a box worked out by hand.

# %%
def atss_by_loops(locations_per_level, strides, boxes, topk=9):
    """Algorithm 1 for one image, in loops: (N, 5) rows -> (L,) matched index or -1."""
    points = torch.cat(list(locations_per_level.values()))  # (L, 2)
    halves = torch.cat([torch.full((len(v),), 4.0 * strides[k]) for k, v in locations_per_level.items()])
    anchors = torch.cat([points - halves[:, None], points + halves[:, None]], dim=1)  # (L, 4)
    best_iou = torch.full((len(points),), -1.0)
    matched = torch.full((len(points),), -1)
    for g, (x1, y1, x2, y2, c) in enumerate(boxes.tolist()):
        centre = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2])
        candidates, start = [], 0
        for locs in locations_per_level.values():
            order = ((locs - centre) ** 2).sum(1).argsort(stable=True)[:topk]
            candidates += (order + start).tolist()
            start += len(locs)
        ious = torch.tensor([_paired_iou(anchors[i], torch.tensor([x1, y1, x2, y2])).item() for i in candidates])
        threshold = ious.mean() + ious.std()
        for i, iou in zip(candidates, ious.tolist()):
            x, y = points[i].tolist()
            if iou >= threshold and min(x - x1, y - y1, x2 - x, y2 - y) > 0 and iou > best_iou[i]:
                best_iou[i], matched[i] = iou, g
    return matched


strides = {"p3": 8, "p4": 16, "p5": 32}
locations = get_fpn_location_coords({k: (224 // s, 224 // s) for k, s in strides.items()}, strides,
                                    dtype=torch.float64)
generator = torch.Generator().manual_seed(1)
agree = 0
for trial in range(20):
    n = int(torch.randint(1, 6, (1,), generator=generator))
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 180
    wh = 4 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (220 - xy)
    boxes = torch.cat([xy, (xy + wh).clamp(max=224), torch.randint(0, 5, (n, 1), generator=generator)], dim=1)
    agree += bool(torch.equal(atss_match_indices(locations, strides, boxes), atss_by_loops(locations, strides, boxes)))
print(f"vectorised ATSS == Algorithm 1 in loops on {agree} of 20 random images")
assert agree == 20

# %% [markdown]
# The picture: the positives of three boxes of different sizes under chapter 04's rule and
# under ATSS, one colour per level.

# %%
boxes = torch.tensor([[20.0, 30.0, 60.0, 62.0, 0], [90.0, 20.0, 210.0, 110.0, 1], [40.0, 120.0, 140.0, 215.0, 2]],
                     dtype=torch.float64)
points = torch.cat(list(locations.values()))
level_of = torch.cat([torch.full((len(v),), i) for i, v in enumerate(locations.values())])
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
for ax, (name, matched) in zip(axes, (
        ("chapter 04: FCOS rule, centre sampling 1.5", fcos_match_indices(locations, strides, boxes, 1.5)),
        ("ATSS, k = 9", atss_match_indices(locations, strides, boxes)))):
    draw_boxes(ax, boxes[:, :4], color="black")
    for level, colour in enumerate(("tab:blue", "tab:orange", "tab:green")):
        keep = (matched >= 0) & (level_of == level)
        ax.scatter(points[keep, 0], points[keep, 1], s=14, color=colour, label=f"p{level + 3}: {int(keep.sum())}")
    ax.set_xlim(0, 224); ax.set_ylim(224, 0); ax.set_aspect("equal"); ax.legend(fontsize=8, loc="lower right")
    ax.set_title(name, fontsize=10)
plt.show()

# %% [markdown]
# ## Two levers for short schedules: an average of the weights, and many scales
#
# Both live in the training loop of chapter 09 (`fcos_lib.train`), switched on by the config:
#
# - `ema_decay`: after every step, `ema ← d · ema + (1 − d) · weights`, and the run evaluates
#   `ema`. Late in a short run the weights still jump from step to step; their average sits
#   nearer the middle of where they jump. `d` ramps up as `min(d, (1 + i) / (10 + i))`, so the
#   random initial weights leave the average quickly.
# - `scale_jitter = (lo, hi)`: each batch is resized by one factor `s` drawn in `(lo, hi)`,
#   both sides rounded to a multiple of 32, boxes with it. The model sees every object at more
#   sizes, and more of them cross the scale ranges of two levels.
#
# Both draw from the flip generator, whose state is in every checkpoint, so a resumed run
# continues exactly.

# %%
from fcos_lib.train import ema_decay_at, random_rescale

image = torch.zeros(1, 3, 224, 224)
image[..., 40:100, 60:180] = 1.0  # a bright box, x in [60, 180), y in [40, 100)
gt = torch.tensor([[[60.0, 40.0, 180.0, 100.0, 0.0], [-1, -1, -1, -1, -1]]])
scaled, scaled_gt = random_rescale(image, gt, (0.7, 0.7), torch.Generator().manual_seed(0))
x1, y1, x2, y2 = scaled_gt[0, 0, :4].round().int().tolist()
print("input", tuple(image.shape[-2:]), "->", tuple(scaled.shape[-2:]), "box", scaled_gt[0, 0].tolist())
print("mean inside the new box:", round(scaled[0, 0, y1 + 1:y2 - 1, x1 + 1:x2 - 1].mean().item(), 3),
      "| padding row kept:", scaled_gt[0, 1].tolist())
print("EMA decay at iterations 0, 10, 100, 1000 (d = 0.999):",
      [round(ema_decay_at(i, 0.999), 4) for i in (0, 10, 100, 1000)])

# %% [markdown]
# ## The rows
#
# A row is a recipe: the seed's baseline or the course's default, plus a few changes to its
# `TrainConfig`; or the peer. The seed's baseline is chapter 09's `baseline_recipe()` (no
# GroupNorm, no centre sampling, L1 box loss, no flips, lr 8e-3 with steps) with the seed's
# ReLU box deltas and the paper's centerness on the classification branch.
#
# The peer is torchvision's `FCOS` class, set up as a user would for this problem: the same
# RegNetX-400MF trunk from random weights with BatchNorm training, torchvision's
# `FeaturePyramidNetwork` over c3-c5 at 64 channels (no p6/p7), one anchor size per level
# (8, 16, 32, so its scale ranges equal ours), its own GroupNorm head, score threshold 0.05,
# images resized so the longer side is the input size. SGD with lr 0.01, momentum 0.9, weight
# decay 1e-4 on every parameter, a linear warm-up over 100 of 828 iterations, then constant,
# gradient clipping at 10, no flips, batches drawn with replacement.

# %%
#| export
"""Chapter 10's experiments: ablation rows, budgets, and torchvision's FCOS as the peer.

An ablation row is a recipe: a TrainConfig made from a base (the seed's baseline or the
course's default) and a few changes, or the peer, torchvision's own FCOS on the same trunk.
`run_fcos_row` and `run_peer_row` train one row on one dataset with one seed and return its
scores on the dataset's val split. bench/ablations.py runs every row and stores the results.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from fcos_lib.backbone import RETURN_NODES, make_regnet_x_400mf, stage_out_channels
from fcos_lib.checkpoint import model_from_checkpoint
from fcos_lib.config import TrainConfig, baseline_recipe, improved_recipe
from fcos_lib.data import VOCDataset, collate_detection
from fcos_lib.evaluate import detection_metrics, evaluate
from fcos_lib.transforms import boxes_to_original
from fcos_lib.voc import read_class_names

# Training budgets. "screen": short runs to sort the rows; "full": the issue's budget, to confirm.
BUDGETS = {
    "screen": {"iters": 300, "batch_size": 8, "image_size": 160},
    "full": {"iters": 828, "batch_size": 16, "image_size": 224},
    "smoke": {"iters": 20, "batch_size": 4, "image_size": 128},  # chapter 10 re-runs one row in CI
    "main-job length": {"iters": 300, "batch_size": 16, "image_size": 224},  # the main job's run, on held-out data
}


SEEDS = (0, 1)


# The seed's recipe as chapter 10 starts from it: chapter 09's baseline_recipe (no GroupNorm, no
# centre sampling, L1 box loss, no flips, lr 8e-3 with steps) plus the seed's ReLU deltas and
# the paper's centerness on the classification stem.
SEED_BASELINE = {"box_activation": "relu", "centerness_on": "cls"}


# The six design changes, each measured alone on the seed's baseline, then all together.
DESIGN_CHANGES = OrderedDict([
    ("centre sampling", {"center_sampling_radius": 1.5}),
    ("GIoU loss", {"box_loss": "giou"}),
    ("GroupNorm", {"use_groupnorm": True}),
    ("exp deltas", {"box_activation": "exp"}),
    ("centerness on reg", {"centerness_on": "reg"}),
    ("flips", {"hflip": True}),
])


# The "course default" the rows change one thing of: the improved recipe of version 0.1 (SGD, lr
# 0.02, weight decay 1e-4 on conv and linear weights only, cosine decay, flips, the last weights),
# written out so that the stored rows keep their meaning when chapter 09's recipe changes.
ROWS_DEFAULT = {"optimizer": "sgd", "lr": 0.02, "weight_decay": 1e-4, "schedule": "cosine", "decay_norms": False,
                "hflip": True, "ema_decay": None}
# AdamW's usual values for detectors trained from scratch, which the AdamW rows were measured with
# (chapter 09's ADAMW_DEFAULTS later took twice the rate, from the rows below), written out for the
# same reason.
ADAMW_USUAL = {"lr": 1e-3, "weight_decay": 0.05}


def _rows() -> "OrderedDict[str, dict]":
    rows = OrderedDict()
    rows["seed baseline"] = {"base": "seed", "changes": {}, "what": "ReLU deltas, L1, no GN, no centre sampling, "
                             "centerness on cls, no flips, lr 8e-3 steps"}
    for name, changes in DESIGN_CHANGES.items():
        rows[f"+ {name}"] = {"base": "seed", "changes": changes, "what": f"seed baseline + {name}"}
    rows["+ all six"] = {"base": "seed", "changes": {k: v for c in DESIGN_CHANGES.values() for k, v in c.items()},
                         "what": "seed baseline + the six changes, seed's optimiser"}
    rows["course default"] = {"base": "default", "changes": {},
                              "what": "the six + lr 0.02, warm-up, cosine, clip 10 (improved_recipe)"}
    rows["default + EMA"] = {"base": "default", "changes": {"ema_decay": 0.999}, "what": "EMA of the weights, 0.999"}
    rows["default + scale jitter"] = {"base": "default", "changes": {"scale_jitter": (0.75, 1.25)},
                                      "what": "multi-scale training, x0.75-1.25"}
    rows["default, width 128"] = {"base": "default", "changes": {"fpn_channels": 128}, "what": "FPN and head 128 wide"}
    rows["default, lr 0.01"] = {"base": "default", "changes": {"lr": 0.01}, "what": "half the learning rate"}
    rows["default, lr 0.04"] = {"base": "default", "changes": {"lr": 0.04}, "what": "twice the learning rate"}
    rows["default + ATSS"] = {"base": "default", "changes": {"assigner": "atss"}, "what": "ATSS assignment"}
    # Toward the peer: the course's model with the peer's training recipe, then one part of it.
    rows["default, peer's training"] = {"base": "default", "what": "lr 0.01 constant after the warm-up, weight "
                                        "decay on norms too, no flips (the peer's optimiser and data)",
                                        "changes": {"lr": 0.01, "schedule": "constant", "decay_norms": True,
                                                    "hflip": False}}
    rows["default, peer's optimiser"] = {"base": "default", "what": "the peer's training with the default's flips: "
                                         "lr 0.01 constant after the warm-up, weight decay on norms too",
                                         "changes": {"lr": 0.01, "schedule": "constant", "decay_norms": True}}
    # The same with the rate cut tenfold for the last 10 % of the run: does a late decay win back
    # the tight boxes (mAP@[.5:.95]) that the constant rate costs on the main job?
    rows["default, peer's optimiser, late step"] = {
        "base": "default", "what": "the peer's optimiser with flips, lr x0.1 for the last 10 % of iterations",
        "changes": {"lr": 0.01, "schedule": "step", "steps": (0.9,), "decay_norms": True}}
    # An average of the weights instead of a decay: with a constant rate the weights keep moving
    # around a minimum, and an EMA (ramped, so at the end it spans about the last tenth of the run)
    # takes their mean. Does it win the tight boxes back without the late step's loss on `tiles`?
    adopted = {"lr": 0.01, "schedule": "constant", "decay_norms": True, "ema_decay": 0.999}
    rows["default, peer's optimiser + EMA"] = {
        "base": "default", "what": "the peer's optimiser with flips, evaluated with an EMA of the weights (0.999, ramped)",
        "changes": {**adopted}}
    # Augmentation at the full budget, on the adopted recipe above. The screen (300 iterations of
    # 8 images: 4 passes over the data) is too short for any augmentation to pay; the full budget
    # makes 22 passes, and flips help there on two datasets of three. Scale jitter changes no
    # label, so unlike flips it is safe on handed shapes: can it take the flips' place?
    rows["adopted, no flips"] = {"base": "default", "changes": {**adopted, "hflip": False},
                                 "what": "the adopted recipe without flips (`--no-hflip`)"}
    rows["adopted + scale jitter, no flips"] = {
        "base": "default", "changes": {**adopted, "scale_jitter": (0.75, 1.25), "hflip": False},
        "what": "the adopted recipe with scale jitter in place of the flips"}
    # The optimiser once more, on the adopted recipe (constant rate, EMA, flips): twice the rate,
    # whose extra noise the EMA may average away; and AdamW, which led on `tiles` with the cosine
    # schedule but not on `signs`.
    rows["adopted, lr 0.02"] = {"base": "default", "changes": {**adopted, "lr": 0.02},
                                "what": "the adopted recipe at twice the learning rate"}
    adopted_adamw = {**adopted, "optimizer": "adamw", **ADAMW_USUAL, "decay_norms": False}
    rows["adopted, AdamW"] = {"base": "default", "what": "the adopted recipe with AdamW lr 1e-3, weight decay 0.05 "
                              "(decoupled, not on norms)", "changes": adopted_adamw}
    rows["adopted, AdamW, no flips"] = {"base": "default", "what": "the adopted recipe with AdamW, without flips",
                                        "changes": {**adopted_adamw, "hflip": False}}
    # AdamW's learning-rate range (the issue's "learning-rate range" lever, measured for SGD above):
    # half, twice and four times the usual 1e-3, on the same schedule. On `letters` AdamW fits the training set
    # more tightly than SGD (lower final loss) and scores lower: does a smaller rate generalise better,
    # or does a larger one converge further in 828 steps?
    for lr, name in ((5e-4, "5e-4"), (2e-3, "2e-3"), (4e-3, "4e-3")):
        rows[f"adopted, AdamW lr {name}"] = {"base": "default", "what": f"the adopted recipe with AdamW at lr {name}",
                                             "changes": {**adopted_adamw, "lr": lr}}
    # The warm-up, the issue's other schedule lever: a tenth of the run so far (82 of 828 iterations),
    # here 250 (a third of the full budget's run), at AdamW's usual rate and at twice it, whose loss
    # on `signs` may come from its first steps.
    for lr, name in ((1e-3, ""), (2e-3, " lr 2e-3")):
        rows[f"adopted, AdamW{name}, warm-up 250"] = {
            "base": "default", "what": f"the adopted recipe with AdamW{name or ' lr 1e-3'}, warm-up 250 iterations",
            "changes": {**adopted_adamw, "lr": lr, "warmup_iters": 250}}
    # A finer level for small objects: p2 at stride 4. On the held-out data a quarter to a third of
    # the objects are under 16 px at 224 px (aerial: 78 % under 32), where p3 gives a box one to four
    # locations. Screened on the rate alone (the screen's warm-up is a tenth of its 300 iterations),
    # confirmed on the default at the full budget.
    rows["adopted, AdamW lr 2e-3 + p2"] = {"base": "default", "what": "the adopted recipe with AdamW lr 2e-3 and "
                                           "the FPN level p2 (stride 4)",
                                           "changes": {**adopted_adamw, "lr": 2e-3, "with_p2": True}}
    # p2 costs twice the step (the head's convolutions on its 56 x 56 locations): in the same time it
    # loses. With two convolutions in each head stem instead of four the step costs 1.5x: does p2 keep
    # its gain with the lighter head?
    rows["adopted, AdamW lr 2e-3 + p2, 2 head convs"] = {
        "base": "default", "what": "the p2 screen's row with two 3x3 convolutions in each head stem, not four",
        "changes": {**adopted_adamw, "lr": 2e-3, "with_p2": True, "num_convs": 2}}
    rows["adopted, AdamW lr 2e-3, warm-up 250 + p2"] = {
        "base": "default", "what": "the default (AdamW lr 2e-3, warm-up 250) with the FPN level p2 (stride 4)",
        "changes": {**adopted_adamw, "lr": 2e-3, "warmup_iters": 250, "with_p2": True}}
    rows["adopted, AdamW lr 2e-3, warm-up 250 + p2, 2 head convs"] = {
        "base": "default", "what": "the full-budget p2 row with two 3x3 convolutions in each head stem, not four",
        "changes": {**adopted_adamw, "lr": 2e-3, "warmup_iters": 250, "with_p2": True, "num_convs": 2}}
    # Where p2's gain comes from: on `aerial` most of the errors it removes are boxes in the right
    # place with the wrong class. Can p3 see what p2 sees without the head running on p2's
    # locations? c2's pixels stacked into p3 (chapter 01's c2_passthrough: one 1x1 convolution
    # with more inputs, the levels stay p3-p5).
    rows["adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough"] = {
        "base": "default", "what": "the default (AdamW lr 2e-3, warm-up 250) with c2's pixels stacked into p3",
        "changes": {**adopted_adamw, "lr": 2e-3, "warmup_iters": 250, "c2_passthrough": True}}
    # Wrong class is most of the best detections on letters and tiles: the focal loss's exponent
    # sets how much the well-classified locations still teach the classifier (RetinaNet, Table 1b:
    # 1 and 2 within 0.3 AP on COCO, 5 well below).
    for gamma in (1, 3):
        rows[f"adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma {gamma}"] = {
            "base": "default", "what": f"today's default (AdamW lr 2e-3, warm-up 250, c2 passthrough), focal gamma {gamma}",
            "changes": {**adopted_adamw, "lr": 2e-3, "warmup_iters": 250, "c2_passthrough": True, "focal_gamma": gamma}}
    # And p2 where the course's own run is short: the main job's recipe (SGD lr 0.01, EMA; 300
    # iterations) with it, run by bench/main_job.py. The course's boxes are larger (12 % under 16 px).
    rows["default, peer's optimiser + EMA + p2"] = {
        "base": "default", "what": "the main job's recipe (SGD lr 0.01, EMA) with the FPN level p2 (stride 4)",
        "changes": {**adopted, "with_p2": True}}
    rows["default, no flips"] = {"base": "default", "changes": {"hflip": False}, "what": "without flips"}
    rows["default, ReLU deltas"] = {"base": "default", "changes": {"box_activation": "relu"},
                                    "what": "the default with ReLU deltas (the seed's and torchvision's)"}
    # As close to the peer as fcos_lib's options go: its training and its ReLU deltas. What is left
    # differs only in the location grid ((i + 0.5) * s vs torchvision's i * s), the padding (a square
    # vs the next multiple of 32), the warm-up's length and the sampler (epochs vs with replacement).
    rows["default, as the peer"] = {"base": "default", "what": "the peer's training and its ReLU deltas",
                                    "changes": {"lr": 0.01, "schedule": "constant", "decay_norms": True,
                                                "hflip": False, "box_activation": "relu"}}
    # Short schedules from scratch: AdamW converges in fewer steps than SGD (Ultralytics' YOLOv8
    # picks it by itself for runs under 10,000 iterations). The learning rate and decay are AdamW's
    # usual ones for detectors trained from scratch, not tuned here.
    rows["default, AdamW"] = {"base": "default", "what": "AdamW lr 1e-3, weight decay 0.05 (decoupled)",
                              "changes": {"optimizer": "adamw", **ADAMW_USUAL}}
    # Speed, not the recipe (issue 14): the same training with bfloat16 autocast on the CPU.
    rows["default, bf16 on the CPU"] = {"base": "default", "changes": {"cpu_bf16": True},
                                        "what": "the default in bfloat16 autocast (cpu_bf16)"}
    rows["torchvision FCOS"] = {"peer": True, "what": "torchvision's FCOS class, the issue's exact setup"}
    return rows


ABLATION_ROWS = _rows()

# %%
#| export
def row_config(row: str, budget: str, data, seed: int, out) -> TrainConfig:
    """The TrainConfig of an fcos_lib ablation row at a budget, on a dataset folder."""
    spec = ABLATION_ROWS[row]
    if spec.get("peer"):
        raise ValueError(f"row {row!r} is torchvision's FCOS, not an fcos_lib config")
    b = BUDGETS[budget]
    common = dict(data=str(data), classes=tuple(read_class_names(Path(data), "train")), iters=b["iters"],
                  batch_size=b["batch_size"], image_size=b["image_size"], in_memory=True, num_workers=0,
                  device="cpu", seed=seed, out=str(out))
    if spec["base"] == "seed":
        cfg = baseline_recipe(**SEED_BASELINE, **common)
    else:  # as `python -m fcos_lib train --data DIR --iters N` sets it: warm-up a tenth of a short run
        cfg = improved_recipe(**ROWS_DEFAULT, **common)
        cfg = cfg.replace(warmup_iters=min(cfg.warmup_iters, b["iters"] // 10))
    return cfg.replace(**spec["changes"])


def _scores(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("map50", "map", "voc07_map50")}


# Every row is scored with NMS at 0.6: the paper's and torchvision's threshold (the peer's too),
# chapter 08's default when the rows were measured. "The NMS threshold" re-scores them at others.
ROWS_NMS_THRESH = 0.6


def run_fcos_row(row: str, budget: str, data, seed: int, out) -> dict:
    """Train one fcos_lib row and score it, with and without centerness in the score."""
    from fcos_lib.train import train

    cfg = row_config(row, budget, data, seed, out)
    state = train(cfg, progress=False, overwrite=True)
    model, _ = model_from_checkpoint(Path(out) / "last.pt")
    val = VOCDataset(data, "val", class_names=list(cfg.classes), image_size=cfg.image_size, in_memory=True)
    with_ctr = evaluate(model, val, nms_thresh=ROWS_NMS_THRESH)
    without_ctr = evaluate(model, val, use_centerness=False, nms_thresh=ROWS_NMS_THRESH)
    total = [h["loss_cls"] + h["loss_box"] + h["loss_ctr"] for h in state["history"]]  # one per iteration
    final_loss = sum(total[-10:]) / len(total[-10:])  # the mean over the last ten iterations
    return {**_scores(with_ctr), "map50_no_centerness": without_ctr["map50"], "final_loss": final_loss,
            "first_loss": total[0], "train_images_per_s": state["train_images"] / state["train_seconds"]}

# %%
#| export
# ---------------------------------------------------------------------------------------------
# The peer: torchvision's FCOS on the same trunk, in the issue's exact setup.
# ---------------------------------------------------------------------------------------------
class RegNetFPN(nn.Module):
    """RegNetX-400MF (c3, c4, c5), random init, BatchNorm training + torchvision's FPN (no p6/p7)."""

    def __init__(self, out_channels: int = 64):
        super().__init__()
        regnet = make_regnet_x_400mf(pretrained=False)
        in_channels = [stage_out_channels(regnet.get_submodule(node)) for node in RETURN_NODES]
        self.body = create_feature_extractor(regnet, RETURN_NODES)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict(self.body(x)))


def build_peer(num_classes: int, image_size: int, channels: int = 64) -> torchvision.models.detection.FCOS:
    """torchvision's FCOS with anchor sizes 8/16/32 (so its scale ranges are the course's), its
    default GroupNorm head, score_thresh 0.05, input resized to min_size = max_size = image_size."""
    anchor_generator = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
    return torchvision.models.detection.FCOS(RegNetFPN(channels), num_classes=num_classes, min_size=image_size,
                                             max_size=image_size, anchor_generator=anchor_generator, score_thresh=0.05)


def _content(images: torch.Tensor, targets: list) -> list:
    """Each letterboxed image cut back to its content: torchvision's FCOS pads by itself."""
    return [image[:, :t["resized_size"][0], :t["resized_size"][1]] for image, t in zip(images, targets)]

# %%
#| export
def train_peer(model, dataset: VOCDataset, iters: int, batch_size: int, seed: int) -> float:
    """SGD lr 0.01, momentum 0.9, weight decay 1e-4 on every parameter, linear warm-up over
    100 of 828 iterations (scaled to `iters`), then constant; clip at norm 10; no flips; batches
    drawn with replacement. Returns training images/s."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    warmup = max(1, round(100 * iters / 828))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, 0.001 + (1 - 0.001) * i / warmup))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    tic = time.perf_counter()
    for _ in range(iters):
        batch = [dataset[int(i)] for i in torch.randint(len(dataset), (batch_size,), generator=generator)]
        images, _, targets = collate_detection(batch)
        tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = model(_content(images, targets), tv_targets)
        loss = sum(losses.values())
        if not math.isfinite(float(loss.detach())):  # one host sync per step; the peer is timed as it is
            raise FloatingPointError(f"torchvision FCOS: non-finite loss {losses}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
    return iters * batch_size / (time.perf_counter() - tic)


@torch.no_grad()
def score_peer(model, dataset: VOCDataset) -> dict:
    """The same metric code as fcos_lib's evaluate, in original-image pixels."""
    model.eval()
    predictions, ground_truths = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=collate_detection)
    for images, _, targets in loader:
        for det, t in zip(model(_content(images, targets)), targets):
            predictions.append({"boxes": boxes_to_original(det["boxes"], t), "scores": det["scores"],
                                "labels": det["labels"]})
            ground_truths.append({"boxes": boxes_to_original(t["boxes"], t), "labels": t["labels"],
                                  "difficult": t["difficult"]})
    return detection_metrics(predictions, ground_truths, dataset.class_names)


def run_peer_row(budget: str, data, seed: int) -> dict:
    """Train torchvision's FCOS at a budget on a dataset folder and score it."""
    b = BUDGETS[budget]
    class_names = read_class_names(Path(data), "train")
    train_set = VOCDataset(data, "train", class_names=class_names, image_size=b["image_size"], in_memory=True)
    val = VOCDataset(data, "val", class_names=class_names, image_size=b["image_size"], in_memory=True)
    torch.manual_seed(seed)
    model = build_peer(len(class_names), b["image_size"])
    speed = train_peer(model, train_set, b["iters"], b["batch_size"], seed)
    return {**_scores(score_peer(model, val)), "train_images_per_s": speed}

# %%
for name, row in ABLATION_ROWS.items():
    print(f"{name:24s} {row['what']}")
print("budgets:", BUDGETS)

# %% [markdown]
# ## The results
#
# `bench/results/ablations.json` holds one entry per (row, dataset, seed, budget): mAP@0.5
# (COCO-style AP at IoU 0.5, `difficult` ignored), with and without centerness in the score,
# mAP@[.5:.95], and the training speed. The table shows, for each dataset, the mean mAP@0.5
# over the seeds and its range (min-max), and the change against the row's reference: the seed
# baseline for the "+" rows, the course default for the "default" rows and for the peer.

# %%
RESULTS = Path("..") / "bench" / "results" / "ablations.json"
results = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else {}


def row_scores(row, dataset, budget="screen", key="map50"):
    """The per-seed scores of one row on one dataset: a list (empty if not measured)."""
    return [results[f"{row} | {dataset} | seed {seed} | {budget}"][key] for seed in SEEDS
            if f"{row} | {dataset} | seed {seed} | {budget}" in results]


def reference_of(row):
    return "seed baseline" if row.startswith("+") else ("course default" if row != "course default" else None)


def mean(values):
    return sum(values) / len(values) if values else float("nan")


def ablation_table(budget="screen"):
    """Print the table; return {row: {dataset: (mean, min, max, n)}} for the rows measured."""
    table = {}
    header = f"{'row':24s}" + "".join(f"{d + ' mAP@0.5 (range)':>27s}{'vs ref':>8s}" for d in HELD_OUT_CLASSES)
    print(header)
    for row in ABLATION_ROWS:
        cells, entry = "", {}
        for dataset in HELD_OUT_CLASSES:
            scores = row_scores(row, dataset, budget)
            if len(scores) < len(SEEDS):
                cells += f"{'not measured':>27s}{'':>8s}"
                continue
            entry[dataset] = (mean(scores), min(scores), max(scores), len(scores))
            ref = reference_of(row)
            ref_scores = row_scores(ref, dataset, budget) if ref else []
            delta = f"{mean(scores) - mean(ref_scores):+8.3f}" if len(ref_scores) == len(SEEDS) else f"{'':8s}"
            cells += f"{mean(scores):>13.3f} ({min(scores):.3f}-{max(scores):.3f}){delta}"
        table[row] = entry
        print(f"{row:24s}{cells}")
    return table


table = ablation_table()

# %% [markdown]
# Centerness in the score costs no training: every fcos_lib run was scored twice, with
# `sqrt(p · ctr)` and with the class probability `p` alone (chapter 08).

# %%
for row in ("seed baseline", "course default"):
    for dataset in HELD_OUT_CLASSES:
        on, off = row_scores(row, dataset), row_scores(row, dataset, key="map50_no_centerness")
        if on:
            print(f"{row:16s} {dataset:6s} centerness in the score: {mean(on):.3f}, without: {mean(off):.3f} "
                  f"({mean(on) - mean(off):+.3f})")

# %% [markdown]
# The same figures as a chart: one bar per row and dataset (the mean), a line for the range.

# %%
measured = [row for row, entry in table.items() if len(entry) == len(HELD_OUT_CLASSES)]
fig, ax = plt.subplots(figsize=(10, 0.45 * len(measured) + 1.2))
for d, (dataset, colour) in enumerate(zip(HELD_OUT_CLASSES, ("tab:blue", "tab:orange"))):
    y = np.arange(len(measured)) + 0.38 * d
    m = [table[row][dataset][0] for row in measured]
    lo = [table[row][dataset][0] - table[row][dataset][1] for row in measured]
    hi = [table[row][dataset][2] - table[row][dataset][0] for row in measured]
    ax.barh(y, m, height=0.36, color=colour, label=dataset, xerr=[lo, hi], error_kw={"lw": 1})
ax.set_yticks(np.arange(len(measured)) + 0.19, measured, fontsize=8)
ax.invert_yaxis()
ax.set_xlabel(f"mAP@0.5 on val, mean of {len(SEEDS)} seeds (line: range); budget 'screen' {BUDGETS['screen']}")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The verdicts below are computed from the table, not written by hand: a change *wins* when
# its mean beats its reference's on **every** held-out dataset, *loses* when it is worse on
# every one, and is *mixed* otherwise. Only a change that wins everywhere may become a default.

# %%
def verdict(row):
    ref = reference_of(row)
    if ref is None or len(table.get(row, {})) < len(HELD_OUT_CLASSES) or len(table.get(ref, {})) < len(HELD_OUT_CLASSES):
        return None
    deltas = [table[row][d][0] - table[ref][d][0] for d in HELD_OUT_CLASSES]
    return "wins" if all(x > 0 for x in deltas) else ("loses" if all(x < 0 for x in deltas) else "mixed"), deltas


for row in ABLATION_ROWS:
    v = verdict(row)
    if v is not None:
        print(f"{row:24s} {v[0]:6s} vs {reference_of(row):15s} " + ", ".join(f"{x:+.3f}" for x in v[1]))

# %% [markdown]
# What the stored table says (screen budget: 300 iterations of 8 images at 160 px, about four
# passes over the 600 training images, two seeds):
#
# - **Every figure is small** (mAP@0.5 at most 0.05). The screen ranks recipes; it does not say
#   how good a trained detector is.
# - **The seed's baseline barely learns in this budget** (0.001 on `signs`, 0.009 on `tiles`). Of
#   the six changes added to it one at a time, only **GroupNorm** moves it (0.026, 0.028): without
#   a normalisation in the head, nothing else gets the chance to matter so early. The other five
#   stay within 0.01 of zero, where two seeds cannot separate them: a "wins" below for a row whose
#   mean moved by 0.001-0.003 is noise, not evidence.
# - **Together** the six changes reach 0.028 and 0.030, and the course's optimiser on top of them
#   (lr 0.02, warm-up, cosine, clipping: the course default) 0.028 and 0.035.
# - **On top of the default, no lever wins on both datasets.** ATSS gains on `signs` and loses on
#   `tiles`; the EMA, the wider FPN and head, and half the learning rate are within the seed range;
#   scale jitter loses on `tiles`; twice the learning rate and dropping the flips lose a little on
#   both. So the default recipe stays as it was: the rule is "wins on every held-out dataset", and
#   none did.
# - **The peer** (torchvision's FCOS) is ahead on `signs` (0.040 against 0.028) and level on
#   `tiles` (0.034 against 0.035). The course model trained with the peer's optimiser and data
#   (lr 0.01 constant, weight decay on norms, no flips) reaches 0.037 on `signs`, but its two seeds
#   span 0.023 to 0.052, and it loses on `tiles`: the training recipe may explain part of the gap on
#   `signs`, and this budget cannot say how much. The model-side differences (the letterbox, the
#   normalisation, BatchNorm, the GIoU weighting) are not measured here yet.
# - **bfloat16 on the CPU** (`cpu_bf16`, a speed option, not a recipe change) trains to the same
#   mAP at the same iterations (0.030 and 0.035 against 0.028 and 0.035) at 1.56x the default's
#   step speed on this machine's AMX units (`bench/bench_train_step.py --bf16`). It stays opt-in:
#   on a processor without bfloat16 units it may be slower, and the stored float32 figures of the
#   chapters would no longer repeat.

# %% [markdown]
# ## The whole recipe against the peer, at the full budget
#
# Measured (two seeds each, 8 runs of about 9 minutes on this CPU): the full budget keeps the
# screen's picture. The peer leads on `signs` (0.88x) and the course's recipe leads a little on
# `tiles` (1.10x), where both stay low (the tiles are small and cluttered). Neither reaches the
# issue's 1.5x.
#
# The screen budget ranks changes; the question a user asks is answered at the budget they
# run: `python -m fcos_lib train --iters 828 --batch-size 16 --image-size 224` against
# torchvision's FCOS with the same iterations, batch and input size. The ratio is
# fcos_lib's mean mAP@0.5 over the seeds divided by the peer's; the issue's goal is 1.5x on
# every held-out dataset.

# %%
def peer_ratio(budget):
    """Print, per dataset, the course default and the peer at one budget; return the ratios."""
    ratios = {}
    for dataset in HELD_OUT_CLASSES:
        ours, peer = row_scores("course default", dataset, budget), row_scores("torchvision FCOS", dataset, budget)
        if not ours or not peer:
            print(f"{dataset:6s} not measured at the {budget} budget")
            continue
        ratios[dataset] = mean(ours) / mean(peer)
        seeds = min(len(ours), len(peer))
        caveat = "" if seeds >= len(SEEDS) else f"  ({seeds} of {len(SEEDS)} seeds: not yet a mean over seeds)"
        print(f"{dataset:6s} fcos_lib {mean(ours):.3f} ({min(ours):.3f}-{max(ours):.3f}), torchvision FCOS "
              f"{mean(peer):.3f} ({min(peer):.3f}-{max(peer):.3f}): {ratios[dataset]:.2f}x{caveat}")
    return ratios


for budget in ("screen", "full"):
    print(f"budget {budget} {BUDGETS[budget]}, {len(SEEDS)} seeds")
    peer_ratio(budget)

# %% [markdown]
# ## Where the gap comes from: the course model moved toward the peer
#
# The two detectors share the trunk, the FPN, the head's layout, the ImageNet normalisation, the
# trunk's BatchNorm (trained, from scratch), the scale ranges, centre sampling, the losses
# (focal, GIoU and BCE, each divided by the foreground count: no centerness weighting of the
# GIoU in either) and the post-processing (`sqrt(p · ctr)`, 0.05, top 1000, NMS 0.6). What
# differs: the training recipe (lr 0.02 with cosine decay and flips, against lr 0.01 constant,
# weight decay on norms, no flips), the box activation (exp against ReLU), and three details
# fcos_lib has no option for (the location grid, the padding, the sampler). So three rows at the
# full budget move the course model toward the peer: its ReLU deltas alone, its training alone,
# then both ("as the peer": only those details left, and a warm-up of 82 against 100 iterations).

# %%
TOWARD_PEER = ("course default", "default, ReLU deltas", "default, peer's training", "default, as the peer",
               "torchvision FCOS")


def toward_peer_table(budget="full", rows=TOWARD_PEER, datasets=tuple(HELD_OUT_CLASSES)):
    """Print mean (range) and the ratio to the peer for each of `rows`, per dataset."""
    print(f"{'row':26s}" + "".join(f"{d + ' mAP@0.5 (range)':>24s}{'/ peer':>8s}" for d in datasets))
    for row in rows:
        cells = ""
        for dataset in datasets:
            scores, peer = row_scores(row, dataset, budget), row_scores("torchvision FCOS", dataset, budget)
            if not scores:
                cells += f"{'not measured':>24s}{'':>8s}"
                continue
            n = f" [{len(scores)} seed]" if len(scores) < len(SEEDS) else ""
            ratio = f"{mean(scores) / mean(peer):7.2f}x" if peer else f"{'':8s}"
            cells += f"{mean(scores):>10.3f} ({min(scores):.3f}-{max(scores):.3f}){n}{ratio}"
        print(f"{row:26s}{cells}")


toward_peer_table(datasets=THREE)

# %% [markdown]
# What the rows say (828 iterations, batch 16, 224 px, seeds 0 and 1; about 9 minutes a run):
#
# - **ReLU deltas die.** On `signs`, seed 1, both rows with ReLU deltas ended at mAP@0.5
#   **0.000**: the box loss sat at 1.00 from about iteration 50 to the end, and 98 % of the
#   predicted sides were exactly 0 (pitfall [P5](../docs/pitfalls.md#p5-a-relu-on-the-box-deltas),
#   measured). No `exp` run died. When a ReLU run lives it can be ahead (seed 0 with the peer's
#   training: 0.303, above the peer's 0.277), but a recipe that fails one run in four is not a
#   default: the course keeps `exp`. torchvision's FCOS uses ReLU and lived in its four runs here;
#   it carries the same risk.
# - **The peer's training** (lr 0.01 constant, weight decay on norms, no flips) on the course model
#   closes the gap on `signs`: 0.272 (0.261-0.282) against the default's 0.243 and the peer's
#   0.277 (0.98x), and keeps `tiles` level (0.064 against 0.062; the peer 0.057, 1.12x). So the
#   gap on `signs` came from the training recipe, not from the model: the normalisation, the
#   BatchNorm, the losses and their weighting are the same in both detectors, and the letterbox
#   differs only in its padding.
# - **Not adopted as it stands.** By the chapter's rule the peer's training "wins" on both
#   datasets here, but on `tiles` by 0.002, inside the seeds' range. On the third dataset,
#   `letters`, measured later, it wins clearly: 0.137 (0.132-0.143) against the default's 0.072
#   and the peer's 0.087 (**1.58x**). The section "Confirming a change of the default" below
#   takes it apart and confirms the part that wins everywhere.
# - **The details fcos_lib has no option for** (the location grid, the padding, the sampler) are
#   all that separates "as the peer" from the peer; with half its runs dead, this pair cannot
#   measure them. None of the rows reaches the issue's 1.5x.

# %% [markdown]
# ## A lever for short schedules: AdamW
#
# SGD moves every weight by one learning rate times its gradient. From scratch, the gradients of
# the trunk's first convolutions and of the head's last ones differ by orders of magnitude, so
# one rate is too small for some layers and too large for others. Adam divides each weight's
# step by a running root-mean-square of its own gradient: every weight moves by about the
# learning rate per step, from the first steps on. Over a long schedule SGD catches up, and often
# generalises better; over a short one the head start can matter. Ultralytics' YOLO trainer makes
# that call by itself: its `optimizer="auto"` takes AdamW for runs of at most 10,000 iterations,
# SGD beyond.
#
# The row "default, AdamW" is the course default with AdamW at its usual values for detectors
# trained from scratch (lr 1e-3, decoupled weight decay 0.05, none on norms and biases; the same
# warm-up, cosine decay and clipping), fixed before any run and not tuned here:
# `TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05)`, or `--optimizer adamw` on the
# command line. It is measured at the full budget on the two datasets, and on the third,
# `letters`, which no other row has seen. Beside it, the screen's best candidate on `signs`,
# ATSS, is confirmed (or not) at the full budget.

# %%
toward_peer_table(rows=("course default", "default + ATSS", "default, AdamW", "torchvision FCOS"),
                  datasets=THREE)

# %% [markdown]
# What the rows say (828 iterations, batch 16, 224 px, seeds 0 and 1):
#
# - **AdamW wins on all three held-out datasets**, by very different margins: `tiles` 0.109
#   against 0.062 (1.93x the peer, where the SGD default is 1.10x), `signs` 0.248 against 0.243
#   and `letters` 0.077 against 0.072, both inside the seeds' ranges. Its training loss ends lower
#   on every dataset.
# - **And it halves the main job.** On the course data, 300 iterations (`python -m fcos_lib train
#   --optimizer adamw` against `make train`), AdamW reaches VOC07 mAP@0.5 **0.302** where SGD
#   reaches **0.633** (version 0.1's recipe); its classification loss ends at 0.34 against SGD's
#   0.26. So AdamW is **not adopted**: a default must win where it is used, and the main job is
#   where it is used most. Three held-out datasets at one budget did not predict a fourth setting (pitfall
#   [P16](../docs/pitfalls.md#p16-a-recipe-chosen-on-the-data-it-is-judged-on-from-one-run)).
#   (The chapter's last sections come back to it: on the recipe's schedule and at 828
#   iterations it wins on the main job's data too, and is adopted for runs of that length.)
# - **ATSS**, the screen's leading candidate on `signs` (0.033 against 0.028), loses there at
#   the full budget: 0.216 (0.202-0.230) against 0.243. A change must win on every dataset, so
#   its `tiles` and `letters` runs were not spent.
# - **On `letters` the peer leads**: 0.087 against the course default's 0.072 (0.83x) and
#   AdamW's 0.077 (0.89x). With `signs` (0.88x), that is two datasets out of three where
#   torchvision's FCOS trained the same way for the same iterations is ahead; the course's
#   recipe leads only on `tiles`.

# %% [markdown]
# ## Confirming a change of the default
#
# The peer's training is three changes at once: the learning rate and its schedule (0.01, constant
# after the warm-up, against 0.02 with cosine decay), weight decay on the norm layers and biases
# too, and no flips. Flips are a property of the data, not of the optimiser: a mirrored `K` is not
# a `K`, so on `letters` a flip turns a labelled glyph into a shape that no test image holds,
# while on photos of cars or people it doubles the data for free. So one more row keeps the
# default's flips and takes only the peer's optimiser: "default, peer's optimiser". Three
# checks before it could become the default:
#
# - a **third seed** (seed 2) for the course default and the peer's training on `signs` and
#   `tiles`, where their difference was smallest (`bench/ablations.py --budget full --rows
#   "course default" "default, peer's training" --seeds 2`);
# - the new row on **all three** held-out datasets, two seeds (`--rows "default, peer's
#   optimiser" --datasets tiles letters signs`);
# - the **main job** itself, `python -m fcos_lib train` on the course data with the row's changes,
#   two seeds (`bench/main_job.py`, results in `bench/results/main_job.json`).

# %%
def seed_table(rows, datasets, seeds, budget="full"):
    """mAP@0.5 of each row per seed, and the mean, on each dataset (the seeds stored; '-' if missing)."""
    width = max(38, max(len(row) for row in rows) + 2)
    print(f"{'row':{width}s}{'dataset':9s}" + "".join(f"{'seed ' + str(s):>9s}" for s in seeds) + f"{'mean':>8s}")
    for row in rows:
        for dataset in datasets:
            found = {s: results[k]["map50"] for s in seeds if (k := f"{row} | {dataset} | seed {s} | {budget}") in results}
            if not found:
                continue
            cells = "".join(f"{found[s]:9.3f}" if s in found else f"{'-':>9s}" for s in seeds)
            print(f"{row:{width}s}{dataset:9s}{cells}{mean(list(found.values())):8.3f}")


seed_table(("course default", "default, peer's training", "default, peer's optimiser",
            "default, peer's optimiser, late step", "default, peer's optimiser + EMA", "torchvision FCOS"),
           THREE, seeds=(0, 1, 2))

# %%
MAIN_JOB = Path("..") / "bench" / "results" / "main_job.json"
main_job = json.loads(MAIN_JOB.read_text())["runs"] if MAIN_JOB.is_file() else {}


def main_job_table(rows, iters=300):
    """Each row's main job (bench/main_job.py, `--iters` if not 300): means over the seeds stored of
    its three figures, and the NMS threshold they were scored at (entries without one: 0.6)."""
    suffix = "" if iters == 300 else f" | {iters} it"
    print(f"{f'main job ({iters} it, course data)':36s}{'VOC07 mAP@0.5':>16s}{'AP50':>8s}{'mAP':>8s}")
    for row in rows:
        found = [main_job[k] for s in SEEDS if (k := f"{row} | seed {s}{suffix}") in main_job]
        if not found:
            print(f"{row:36s}{'not measured':>16s}")
            continue
        figures = [mean([f[key] for f in found]) for key in ("voc07_map50", "map50", "map")]
        nms = sorted({f.get("nms_thresh", 0.6) for f in found})
        print(f"{row:36s}" + "".join(f"{v:>16.3f}" if i == 0 else f"{v:>8.3f}" for i, v in enumerate(figures))
              + f"  ({len(found)} seeds, NMS {', '.join(map(str, nms))})")


main_job_table(("course default", "default, peer's optimiser", "default, peer's optimiser, late step",
                "default, peer's optimiser + EMA"))

# %% [markdown]
# What the checks say (828 iterations, batch 16, 224 px; the main job 300 iterations):
#
# - **A third seed turns the peer's training into a tie on `tiles`**: 0.061 (0.057-0.064)
#   against the default's 0.062 (0.055-0.069) over seeds 0-2, while on `signs` it stays ahead,
#   0.284 against 0.233. A tie is not a win, so the peer's training, as a whole, is not adopted.
# - **The peer's optimiser with the default's flips wins on all three held-out datasets**:
#   `signs` 0.325 (0.320-0.331) against 0.243 (1.17x the peer's 0.277), `tiles` 0.079
#   (0.069-0.088) against 0.062 (1.39x), `letters` 0.086 (0.073-0.099) against 0.072 (0.99x). Its
#   margin on `letters` is inside the seeds' ranges; on `signs` the ranges are far apart.
# - **Flips are where `letters` and `tiles` part**: without them (the peer's training) `letters`
#   reaches 0.137 and `tiles` 0.064; with them, 0.086 and 0.079. Mirrored glyphs are not the
#   glyphs they are labelled as; mirrored tiles are still tiles. That is a fact about the data,
#   and the command line says so: `--no-hflip` for text, digits and other handed shapes
#   (pitfall [P17](../docs/pitfalls.md#p17-flips-on-shapes-whose-mirror-image-is-another-shape)).
# - **On the main job** the new row raises mAP@0.5 and lowers mAP@[.5:.95]: VOC07 mAP@0.5 0.676
#   against 0.647 and COCO-style AP50 0.687 against 0.657, but mAP@[.5:.95] 0.274 against 0.319
#   (two seeds each; the ranges do not overlap on any of the three). Without the decay to 0 at the end, the boxes come out less tight: a
#   constant rate learns faster and settles less.
# - **Adopted**: chapter 09's `improved_recipe` now trains with lr 0.01, constant after the
#   warm-up, weight decay on every parameter, and flips (`IMPROVED_TRAINING`). The rows above
#   keep their meaning: "course default" is version 0.1's recipe written out (`ROWS_DEFAULT`).
#   Fine-tuning from ImageNet weights (`voc_recipe`, `train --pretrained`) keeps the cosine
#   schedule: nothing here measured a constant rate on a pretrained trunk.
# - **The goal of 1.5x is still not met**: 1.17x, 1.39x and 0.99x. The best row on each dataset
#   (this one on `signs`, AdamW on `tiles` at 1.93x, the peer's training on `letters` at 1.58x)
#   is a different row each time.
# - **The next candidate, measured and not adopted: a late step.** The same optimiser with the
#   rate cut tenfold for the last 10 % of the run ("default, peer's optimiser, late step";
#   `--schedule step --steps 0.9` on the command line) wins back the tight boxes on the main job
#   and keeps the gain at IoU 0.5: VOC07 mAP@0.5 0.701 (0.681-0.722), AP50 0.717, mAP@[.5:.95]
#   0.348 (0.323-0.373), above both rows on all three figures. On the held-out data it wins on
#   `signs`, 0.347 (0.346-0.349) against 0.325 (1.26x the peer), is level on `letters`, 0.087
#   against 0.086 (1.00x), and is lower on `tiles`, 0.075 (0.070-0.080) against 0.079 (1.33x);
#   a third seed for both keeps it lower there, 0.076 against 0.078 over seeds 0-2 (the table).
#   The main job is where the course was developed; `tiles` is not. A change must win on every
#   held-out dataset, so the constant rate stays the default, and the late step is a flag for
#   whoever scores tight boxes.
# - **An average of the weights instead: wins everywhere, adopted.** The same optimiser,
#   evaluated with an EMA of the weights ("default, peer's optimiser + EMA"; decay 0.999, ramped,
#   so at the end of 828 iterations it spans about the last 90), two seeds: `signs` 0.345
#   (0.339-0.352) against 0.325 (1.25x the peer), `tiles` 0.082 (0.074-0.090) against 0.079
#   (1.44x), `letters` 0.087 (0.075-0.099) against 0.086 (1.00x), and the main job VOC07 mAP@0.5
#   0.723 (0.720-0.726) against 0.676, mAP@[.5:.95] 0.371 (0.363-0.378) against 0.274, the
#   ranges apart. It wins on every held-out dataset (on `letters` by 0.001, inside the ranges)
#   and on the main job, the largest gain of any row there. With a constant rate the weights keep
#   moving around a minimum; the average is their centre, which the late step reaches by slowing
#   down. Chapter 09's `improved_recipe` now evaluates the EMA (`IMPROVED_TRAINING`), and
#   `python -m fcos_lib train` with it; `--ema-decay off` evaluates the last weights instead.
#   Fine-tuning (`voc_recipe`, `--pretrained`) keeps the last weights: it was not measured with
#   the average. (`--optimizer adamw` kept them too, until "The optimiser again" below measured
#   it with the average.)

# %% [markdown]
# ## Augmentation at the full budget: scale jitter, and flips on handed shapes
#
# The screen rejected scale jitter, but the screen makes four passes over the 600 training
# images: too few for any augmentation to pay. The full budget makes 22, and there the flips pay
# on `signs` and `tiles`. Scale jitter (each batch resized by one factor in x0.75-1.25, boxes
# with it) changes no label, so unlike a flip it is safe on handed shapes. Could it stand in for
# the flips on `letters`, where they cost most? Two rows on the adopted recipe (the peer's
# optimiser + EMA) answer on `letters` first: without flips (`--no-hflip`), and with scale
# jitter in place of the flips. "default, peer's training" is the first of them evaluated with its
# last weights instead of the EMA.

# %%
AUGMENTATION_ROWS = ("default, peer's optimiser + EMA", "adopted, no flips", "adopted + scale jitter, no flips",
                     "default, peer's training", "torchvision FCOS")
seed_table(AUGMENTATION_ROWS, ("letters", "signs"), seeds=SEEDS)

# %% [markdown]
# What the rows say (828 iterations, batch 16, 224 px):
#
# - **Scale jitter does not stand in for the flips: it costs `letters` a quarter.** With the same
#   optimiser, EMA and no flips, `letters` scores 0.092 (0.089-0.095) with scale jitter against 0.124
#   (0.121-0.127) without it. On `signs` (one seed) it scores 0.295, below the adopted recipe's
#   0.345 with flips. Jitter makes each step's task harder, and 22 passes over the data are too
#   few to pay that back; the flips cost nothing of the kind on shapes that stay themselves in a
#   mirror. Not adopted, so jitter on top of the flips was not run.
# - **Without flips the adopted recipe reaches 1.43x the peer on `letters`** (0.124 against
#   0.087), against 1.00x with them: `--no-hflip` is the setting for handed shapes.
# - **The EMA costs `letters` when there are no flips**: the same training evaluated with its last
#   weights (the row "default, peer's training", the same seeds and the same losses to the digit)
#   scores 0.137 (0.132-0.143), 1.58x. The average won on all three datasets with flips, by 0.001
#   on `letters`; without them it loses there on both seeds. So on `letters` the best the course
#   offers is `--no-hflip --ema-decay off` (1.58x); the default, with flips and the EMA, is level
#   with the peer. No single recipe measured here reaches 1.5x on all three datasets.

# %% [markdown]
# ## At equal wall-clock time
#
# Equal iterations are the issue's budget; a user with a deadline gives both detectors the same
# minutes instead. `bench/bench_vs_torchvision.py --minutes 7.5` times 10 steps of each detector
# on each dataset, then trains each for as many iterations as 7.5 minutes of such steps hold,
# from scratch, with two seeds. `bench/results/vs_torchvision.json` holds `signs` (with the
# equal-iteration runs beside it), re-run with the recipe as it is at the end of this chapter
# (AdamW at both lengths);
# `bench/results/vs_torchvision_wall_clock.json` holds `tiles` and `letters`, re-run with the same
# recipe on a later, slower hour (`--wall-clock-only`: their equal-iteration runs are the rows
# above).

# %%
def wall_clock_table(paths=(RESULTS.parent / "vs_torchvision.json", RESULTS.parent / "vs_torchvision_wall_clock.json")):
    """Print, per dataset, each detector's iterations and mean (range) mAP@0.5 at equal wall-clock."""
    print(f"{'dataset':9s}{'minutes':>8s}{'iterations fl/tv':>18s}{'fcos_lib mAP@0.5':>24s}"
          f"{'torchvision mAP@0.5':>24s}{'ratio':>8s}")
    for path in paths:
        if not path.is_file():
            print(f"{path.name}: not measured")
            continue
        for dataset, entry in json.loads(path.read_text())["datasets"].items():
            timed = entry.get("equal_time")
            if not timed or not timed["runs"]:
                continue
            s = timed["summary"]
            cells = "".join(f"{s[w]['map50']['mean']:>11.3f} ({s[w]['map50']['min']:.3f}-{s[w]['map50']['max']:.3f})"
                            for w in ("fcos_lib", "torchvision"))
            its = f"{timed['iters']['fcos_lib']}/{timed['iters']['torchvision']}"
            print(f"{dataset:9s}{timed['minutes']:>8g}{its:>18s}{cells}{s['ratio_map50']:>7.2f}x")


wall_clock_table()

# %% [markdown]
# What the table says (7.5 minutes of steps each, seeds 0 and 1, this 2-core CPU, one run at a time):
#
# - **The two detectors cost about the same per step, and the step's cost follows the hour.**
#   Ten timed steps sample one hour of a shared machine. On `tiles` they gave 0.55 s against
#   0.56 s on 2026-12-05 (817 against 804 iterations in 7.5 minutes, about the issue's 828) and
#   1.08 s against 1.03 s on the evening of 2026-12-06 (417 against 438: the run in the table;
#   `letters` 407 against 425); on `signs` 0.65 s against 0.64 s one day, 0.64 s against 0.71 s
#   on the next morning (704 against 637) and 0.78 s against 0.81 s that evening (577 against 555,
#   the run in the table).
# - **With the SGD recipe the equal wall-clock ratio was ahead on `signs` (1.15x), level on `tiles`
#   (1.05x) and behind on `letters` (0.86x).** At equal iterations the same recipe stood at 1.25x,
#   1.44x and 1.00x.
# - **The recipe as it was on the morning of 2026-12-06** (`bench/bench_vs_torchvision.py
#   --held-out signs --seeds 0 1 --minutes 7.5`): 1.24x on `signs` at equal wall-clock (0.279
#   against 0.225), 1.499x at equal iterations (0.414 against 0.277, the same runs as the stored
#   rows, to the digit). The 704 iterations fell below the 800 at which the command switched to
#   AdamW then (a later section), so at equal wall-clock it trained with SGD. Of the distance
#   between 0.279 and 0.414, about half is the 124 iterations (SGD at 828, scored at NMS 0.6 the
#   day before: 0.345) and half the optimiser.
# - **AdamW at those 704 iterations** (`python -m fcos_lib train --data DIR --iters 704 --batch-size
#   16 --image-size 224 --optimizer adamw --in-memory --device cpu --seed S`, seeds 0 and 1, so lr
#   2e-3 with a warm-up of 234, a third of the run) scores 0.348 (0.338-0.358), mAP@[.5:.95] 0.189,
#   against SGD's 0.279 and 0.140 at the same length and speed: 1.55x the peer at equal wall-clock.
#   The switch at 800 was set on the course data, where the two optimisers were level at 550; on
#   `signs` AdamW leads well below 800. The switch has moved to 550 since ("Where the switch
#   belongs", below): `python -m fcos_lib train --iters 704` now trains exactly this AdamW run.
# - **The same benchmark that evening, after the move** (the table's run): AdamW at both lengths.
#   At equal iterations 0.430 (0.424-0.435) against 0.277, **1.55x**: the peer's runs and
#   fcos_lib's seed 1 repeated the morning's to the digit, fcos_lib's seed 0 did not (0.424
#   against 0.394), likely because the command's `--threads auto` follows the machine's load: a
#   run during which it changed differs in the last bits, and training from scratch grows them
#   (not checked; the benchmark's `--threads N` fixes the count now). Over both runs of each seed: 0.422, 1.52x. At equal
#   wall-clock the slower hour bought 577 and 555 iterations: 0.217 against 0.199, **1.09x**.
#   577 is close to where AdamW and SGD are level on `signs` (550, "Where the switch belongs"),
#   704 was not: the equal wall-clock ratio depends on the machine's hour as much as on the
#   recipe.
# - **On `tiles` and `letters` at half the issue's budget** (the table's run, 2026-12-06 evening:
#   417 and 407 iterations, below the switch to AdamW at 550, so the command trained with SGD):
#   `tiles` 0.057 (0.056-0.057) against 0.051 (0.049-0.054), **1.11x**; `letters` 0.060
#   (0.060-0.060) against 0.050 (0.046-0.055), **1.19x**. Halving the run costs fcos_lib two
#   thirds of its mAP@0.5 on `tiles` (0.173 at 828 iterations, with AdamW) and half on `letters`
#   (0.114); it costs the peer a tenth and two fifths (0.057 and 0.087 at 828). At equal iterations
#   the recipe led by 3.04x and 1.31x; here by 1.11x and 1.19x.
# - **The same two datasets at about 820 iterations** (2026-12-05, the SGD recipe: the file's
#   earlier contents, in the project's history) stood at 1.05x and 0.86x, against 1.44x and 1.00x
#   at equal iterations. With budgets 1-3 % apart that gap was noise, not the budget: fcos_lib's
#   seed 1 on `tiles` scored 0.090 after 828 iterations and 0.062 after 817; the peer's seed 0
#   0.057 after 828 and 0.072 after 804, and on `letters` 0.094 after 828 and 0.118 after 818. A
#   run a few iterations shorter has a shorter warm-up and draws other batches: another sample of
#   the same noise. On these two datasets two seeds do not pin a ratio closer than a few tenths.
# - **A third seed on `tiles`** at equal iterations (`bench/ablations.py --budget full --datasets
#   tiles --rows "default, peer's optimiser + EMA" "torchvision FCOS" --seeds 2`; the seed table
#   above): the recipe scores 0.074 and the peer 0.043, so over seeds 0-2 the recipe's 0.079
#   (0.074-0.090) against the peer's 0.052 (0.043-0.057) is 1.53x. That crosses the issue's 1.5x
#   on `tiles` by a third seed's draw, which is the point above, not a new margin.

# %% [markdown]
# ## The optimiser again, on the adopted schedule
#
# AdamW lost its first trial (above) on version 0.1's schedule: cosine decay and the last
# weights. The recipe has since moved to a constant rate and an EMA of the weights, which won for
# SGD on every dataset. Three rows ask the optimiser question again on that schedule: twice
# SGD's rate ("adopted, lr 0.02"), whose extra noise the EMA might average away; AdamW at the same
# values as before ("adopted, AdamW": lr 1e-3, decoupled weight decay 0.05, none on norms and
# biases), with flips; and the same AdamW without flips on `letters`, the dataset the flips cost.
# Commands: `bench/ablations.py --budget full --datasets signs tiles letters --rows "adopted, AdamW"
# --seeds 0 1`, and `bench/main_job.py --rows "adopted, AdamW"` for the main job.

# %%
seed_table(("default, peer's optimiser + EMA", "adopted, lr 0.02", "adopted, AdamW", "adopted, AdamW, no flips",
            "adopted, no flips", "torchvision FCOS"), THREE, seeds=(0, 1, 2))
main_job_table(("default, peer's optimiser + EMA", "adopted, AdamW"))

# %% [markdown]
# What the rows say (828 iterations, batch 16, 224 px, seeds 0 and 1; NMS at 0.6 as every row):
#
# - **AdamW on the adopted schedule is the best row measured on every held-out dataset**: `signs`
#   0.379 (0.374-0.385) against the recipe's 0.345, 1.37x the peer; `tiles` 0.161 (0.137-0.185)
#   against 0.082 on the same seeds, 2.85x the peer; `letters` 0.097 (0.097-0.097) against 0.087,
#   1.11x. On the cosine schedule AdamW scored 0.248, 0.109 and 0.077: the constant rate and the
#   EMA help it at least as much as they helped SGD.
# - **And it still loses the main job by half**: VOC07 mAP@0.5 0.357 (0.250-0.463) against the
#   recipe's 0.723, its two seeds 0.21 apart. At 300 iterations on the course's five shapes its
#   classification loss stalls (0.37 against SGD's 0.25 over the last 50 iterations) while its box
#   loss is lower: it learns where objects are before what they are, and 300 iterations do not
#   give it the time. Whether that is the length or the data: the next sections. A default
#   must win where it is used, so SGD stays the main job's optimiser; `--optimizer adamw` now
#   trains on this schedule (`ADAMW_SCHEDULE`, chapter 09).
# - **Twice SGD's rate** ("adopted, lr 0.02", `signs`, one seed) scores 0.350 against 0.339 on
#   the same seed: inside the seeds' range, not pursued.
# - **Without flips AdamW loses on `letters`**: 0.088 (0.085-0.091) against 0.097 with them,
#   where SGD gains from dropping them (0.124 against 0.087). Its training loss ends the lowest
#   of any row (1.22 against SGD's 1.37 without flips): AdamW fits the 600 training images
#   faster, and without flips it overfits them. The flips that cost SGD on `letters` regularise
#   AdamW there.
# - **The 1.5x goal with one command is still not met**: with AdamW and flips, `letters` is at
#   1.11x. Dropping the flips is what lifts `letters`, and with SGD it cost `signs` and `tiles`
#   (0.325 to 0.272 and 0.079 to 0.064, seeds 0 and 1, between "default, peer's optimiser" and
#   "default, peer's training", the same optimiser with and without them). The flips are a fact
#   about the data (pitfall P17); no recipe measured here reaches 1.5x on all three with one
#   setting of them.

# %% [markdown]
# ## AdamW at the main job's length
#
# The main job differs from the held-out runs in its data (the course's five shapes) and in its
# length (300 iterations, not 828). The budget "main-job length" runs the held-out datasets for
# 300 iterations of 16 images at 224 px, as the main job does, with both optimisers on the
# adopted schedule (one seed: `bench/ablations.py --budget "main-job length" --datasets tiles
# signs --rows "default, peer's optimiser + EMA" "adopted, AdamW" --seeds 0`).

# %%
seed_table(("default, peer's optimiser + EMA", "adopted, AdamW"), ("tiles", "signs"), seeds=(0,),
           budget="main-job length")

# %% [markdown]
# What the short runs say (one seed each, so a hint, not a verdict):
#
# - **On `tiles` AdamW keeps its lead at 300 iterations**: 0.083 against SGD's 0.044 (at 828:
#   0.185 against 0.074 on this seed).
# - **On `signs` the lead turns**: 0.095 against 0.109 at 300 iterations, where at 828 it was
#   0.374 against 0.339. A short run costs AdamW here, as on the main job.
# - **Neither is the main job's halving** (0.357 against 0.723). Length explains part of it on
#   one dataset and none on the other. Whether the course data or its length halves the main
#   job is measured on the course data itself below ("The run's length picks the optimiser"):
#   at 828 iterations AdamW wins there too, so SGD keeps only the short runs.

# %% [markdown]
# ## The NMS threshold
#
# Everything above changed the training. The last step of inference has a setting of its own:
# class-wise NMS drops a box whose IoU with a better-scored box of the same class exceeds 0.6 (the
# paper's and torchvision's value, chapter 08). A detector that is still unsure where an object
# ends puts several boxes on it from neighbouring locations; those that overlap the best one by
# less than 0.6 survive, and each is a false positive at IoU 0.5. NMS is inference only, so
# `bench/nms_sweep.py` re-scores the stored checkpoints at five thresholds without training
# anything, and checks on each that its score at 0.6 is the stored one (results in
# `bench/results/nms_sweep.json`).

# %%
NMS_SWEEP = RESULTS.parent / "nms_sweep.json"


def nms_table(rows, datasets, path=NMS_SWEEP, key="map50"):
    """Per row in `rows` and dataset in `datasets`, `key` at each NMS threshold: the mean over the
    seeds re-scored. Rows measured later stay out of the tables that came before them."""
    runs = json.loads(path.read_text())["runs"] if path.is_file() else {}
    groups = {}
    for run, entry in runs.items():
        row, dataset = (part.strip() for part in run.split("|")[:2])
        if row in rows and dataset in datasets:
            groups.setdefault((row, dataset), []).append(entry)
    thresholds = sorted({t for entry in runs.values() for t in entry if t[0].isdigit()}, key=float)
    width = max(len(row) for row in rows) + 2
    print(f"{'row':{width}s}{'dataset':10s}{'seeds':>6s}" + "".join(f"{'NMS ' + t:>10s}" for t in thresholds))
    for (row, dataset), entries in sorted(groups.items()):
        cells = "".join(f"{mean([e[t][key] for e in entries]):10.3f}" for t in thresholds)
        print(f"{row:{width}s}{dataset:10s}{len(entries):6d}{cells}")


NMS_ROWS = ("default, peer's optimiser + EMA", "adopted, AdamW", "adopted, no flips", "default, peer's training")
print("mAP@0.5 (COCO-style AP at IoU 0.5), mean over the seeds:")
nms_table(NMS_ROWS, ("signs", "tiles", "letters", "main job"))
for key, name in (("voc07_map50", "VOC07 mAP@0.5"), ("map", "mAP@[.5:.95]")):
    print(f"\nthe main job, {name}:")
    nms_table(NMS_ROWS, ("main job",), key=key)

# %% [markdown]
# What the re-scoring says (21 checkpoints: two rows on the three held-out datasets and the main
# job, two more on `letters`; `bench/nms_sweep.py --rows "default, peer's optimiser + EMA" "adopted, AdamW" --datasets
# signs tiles letters "main job"`, and `--rows "adopted, no flips" "default, peer's training"
# --datasets letters`):
#
# - **0.5 beats 0.6 on every checkpoint, and 0.7 loses on every one.** For the recipe (the SGD
#   row with the EMA), mAP@0.5 goes from 0.345 to 0.352 on `signs`, 0.079 to 0.084 on `tiles`,
#   0.087 to 0.092 on `letters`, and on the main job from VOC07 0.723 to 0.737 (AP50 0.736 to
#   0.755). mAP@[.5:.95] does not move (0.371 and 0.372 on the main job): the boxes NMS now
#   removes were only ever right at IoU 0.5.
# - **0.4 is as good or a little better** on these data (the recipe's main job 0.744 VOC07). The
#   course takes 0.5: it is the smaller step from the paper's value, and these datasets hold few
#   crowds of one class, where a low threshold removes true boxes that overlap (people in a
#   crowd, cars in a car park); on such data measure, as here.
# - **Adopted: chapter 08's `NMS_THRESH` is 0.5**, and `fcos_postprocess`, `detect`, `evaluate`,
#   `python -m fcos_lib train`'s report and the exported ONNX model's post-processing use it
#   (`nms_thresh=0.6`, or `--nms-thresh 0.6` for `evaluate` and `detect`, gives the paper's). The
#   ablation rows above stay scored at 0.6
#   (`ROWS_NMS_THRESH`), so that every row in one table was scored alike.
# - **The peer is not re-scored**: its models are not kept, and the issue fixes its setup
#   (torchvision's `FCOS` with its default NMS, 0.6). Set to 0.5 it would likely gain as ours
#   does. So at 0.5 against the peer at 0.6 the recipe stands at 1.27x on `signs` (0.352 against
#   0.277), 1.62x on `tiles` (0.084 against 0.052, seeds 0-2) and 1.06x on `letters` (0.092
#   against 0.087); of that, the part NMS adds is a setting, not a better detector.

# %% [markdown]
# ## A fourth dataset, never tuned on
#
# Every default above was set by looking at `signs`, `tiles` and `letters`, many times over. That
# is the trap the chapter warns of (pitfall
# [P16](../docs/pitfalls.md#p16-a-recipe-chosen-on-the-data-it-is-judged-on-from-one-run)): a
# recipe chosen on three datasets fits those three a little. So `cells` (previewed at the top)
# was generated only after the recipe was final, and measured once, with the rows that matter
# for the choice: the default ("default, peer's optimiser + EMA"), the same without flips, AdamW on
# the same schedule, and the peer. Nothing was changed after seeing the results.

# %%
FOURTH = ("default, peer's optimiser + EMA", "adopted, no flips", "adopted, AdamW", "torchvision FCOS")
toward_peer_table(rows=FOURTH, datasets=("cells",))
print("\nat NMS 0.5 (the default now; the peer keeps its own 0.6), re-scored by bench/nms_sweep.py:")
nms_table(FOURTH[:-1], ("cells",))

# %% [markdown]
# What the fourth dataset says (828 iterations, batch 16, 224 px, seeds 0 and 1; `bench/ablations.py
# --budget full --datasets cells --rows "torchvision FCOS" "default, peer's optimiser + EMA"
# "adopted, AdamW" "adopted, no flips"`, then `bench/nms_sweep.py --datasets cells`):
#
# - **The SGD recipe's lead nearly vanishes**: 0.340 (0.338-0.342) against the peer's 0.321
#   (0.310-0.332), **1.06x**, where it stood at 1.25x to 1.44x on `signs` and `tiles`, the data
#   its changes were chosen on. mAP@[.5:.95] keeps more of it (0.194 against 0.170, 1.14x). That
#   is pitfall P16, measured: part of each win on the first datasets was a fit to them.
# - **AdamW keeps its lead**: 0.444 (0.419-0.468), **1.38x** the peer, mAP@[.5:.95] 0.283
#   (1.67x). It is now ahead of SGD on four held-out datasets of four, on both seeds of each.
# - **Flips neither help nor hurt here** (0.331 without, 0.340 with): cells have no handedness,
#   and the data already holds every angle.
# - **NMS at 0.5 confirms**: on all six checkpoints 0.5 beats 0.6 (the default 0.351, 1.09x the
#   peer at its 0.6; AdamW 0.452, 1.41x), and on this data 0.3-0.4 would gain a little more.
# - **Centerness in the score costs mAP@0.5 here**: without it the SGD rows score 0.347 and 0.351
#   (NMS 0.6) against 0.342 and 0.338 with it; at tighter IoUs it still gains (chapter 09).

# %% [markdown]
# ## The run's length picks the optimiser
#
# AdamW now leads at 828 iterations on four held-out datasets of four, and it halved the
# 300-iteration main job. Is that the course data, or the length? The main job once more, at the
# held-out runs' length, both optimisers, two seeds (`bench/main_job.py --rows "default, peer's
# optimiser + EMA" "adopted, AdamW" --iters 828 --seeds 0 1`; the warm-up is a tenth of the run,
# as `python -m fcos_lib train --iters 828` sets it).

# %%
for iters in (300, 550, 828):
    main_job_table(("default, peer's optimiser + EMA", "adopted, AdamW"), iters=iters)
    print()

# %% [markdown]
# What the main job says (two seeds each; the 828-iteration runs scored at NMS 0.5, the
# 300-iteration ones at 0.6):
#
# - **At 828 iterations AdamW wins on the course data too**: VOC07 mAP@0.5 0.813 (0.803-0.822)
#   against SGD's 0.796 (0.796-0.796), mAP@[.5:.95] 0.518 against 0.486, ahead on both seeds. At
#   300 it scored 0.357 against 0.723. So the main job's halving is the length, not the data:
#   AdamW needs more than 300 steps to get ahead here, and then it leads.
# - **Adopted, by length.** From scratch, a run of 800 to 10,000 iterations trains with AdamW
#   on the recipe's schedule; shorter runs (the main job), longer ones and fine-tuning keep SGD.
#   That is chapter 09's `optimizer_for(iters)` (`ADAMW_ITERS`), what `python -m fcos_lib train`
#   does unless told `--optimizer sgd` or `--optimizer adamw`. The switch was set at 800, on the
#   measured side, before any length between 300 and 828 was run; past 10,000 nothing was
#   measured here, and SGD keeps the long runs, as Ultralytics' YOLO trainer does. (Later moved
#   to 550: "Where the switch belongs".)
# - **At 550 iterations the two are level** (measured later: `bench/main_job.py --rows "default,
#   peer's optimiser + EMA" "adopted, AdamW" --iters 550 --seeds 0 1`): VOC07 mAP@0.5 0.782
#   (0.774-0.790) for AdamW against 0.779 (0.775-0.783) for SGD, one seed each way; mAP@[.5:.95]
#   0.461 against 0.435, AdamW ahead on both seeds. The crossover lies near 550, not at 800. The
#   switch stayed at 800 then: at 550 neither optimiser lost on mAP@0.5, and the held-out datasets
#   had not been run at these lengths (they were later: "Where the switch belongs").
# - **The issue's command** (`python -m fcos_lib train --data DIR --iters 828 --batch-size 16
#   --image-size 224`) now trains with AdamW. At NMS 0.5, against the peer at its own 0.6, it
#   stood (at lr 1e-3, before the change two sections below) at **1.40x** on `signs` (0.389), **2.94x** on `tiles` (0.166), **1.15x** on `letters`
#   (0.100) and **1.41x** on `cells` (0.452). The goal of 1.5x on every dataset is met on `tiles`
#   only. On `letters` the flips are what holds it back: without them SGD reaches 1.43x-1.58x,
#   and no setting measured wins there and on the others at once.

# %% [markdown]
# ## AdamW's learning rate
#
# AdamW's rate was taken from common practice (1e-3), never measured here, while SGD's was
# (0.01, 0.02, 0.04). Three more rows: half, twice and four times that rate, on the same schedule
# (`bench/ablations.py --budget full --datasets letters signs --rows "adopted, AdamW lr 5e-4"
# "adopted, AdamW lr 2e-3" --seeds 0 1`). `letters` came first, the dataset furthest from the
# goal; the half rate lost there on its first seed and was stopped, and four times the rate was
# not run once twice the rate had lost on `signs`.

# %%
seed_table(("adopted, AdamW lr 5e-4", "adopted, AdamW", "adopted, AdamW lr 2e-3", "adopted, AdamW lr 2e-3, warm-up 250",
            "torchvision FCOS"), ("letters", "signs", "tiles", "cells"), seeds=(0, 1))

# %% [markdown]
# What the rate says (828 iterations, batch 16, 224 px, NMS 0.6 as every row):
#
# - **On `letters` mAP@0.5 climbs with the rate**: 0.081 at 5e-4 (one seed), 0.097 at 1e-3, 0.114
#   (0.113-0.116) at 2e-3, 1.32x the peer. The half rate ends with a higher training loss (1.40
#   against 1.36) and scores lower; twice the rate ends lower (1.33) and scores higher. With flips,
#   AdamW at 1e-3 does not overfit `letters` (the reading above was of the runs without flips): it
#   fits too slowly.
# - **On `signs` twice the rate loses a third**: 0.263 (0.260-0.265) against 0.379, 0.95x the
#   peer, with a training loss no lower.
# - **The warm-up wins `signs` back.** The recipe warms up over a tenth of the run, 82 of 828
#   iterations. With 250 (`--warmup-iters 250`; `bench/ablations.py --budget full --datasets signs
#   letters tiles --rows "adopted, AdamW lr 2e-3, warm-up 250" --seeds 0`) twice the rate scores
#   on seed 0 0.388 on `signs` (0.374 at 1e-3, 0.265 with the short warm-up), 0.110 on `letters`
#   (0.097; 0.116) and 0.212 on `tiles` (0.185 at 1e-3): ahead of the default on the first seed of
#   all three. So the first steps at the full rate, not the rate itself, cost `signs` (likely
#   because AdamW's first updates are about as large as the rate whatever the gradient's size; not
#   measured apart). On `signs` the second seed agrees: 0.425 against 0.385, so over seeds 0 and 1
#   0.407 (0.388-0.425) against 0.379, 1.47x the peer at NMS 0.6.
# - **The second seeds, and `cells`** (`bench/ablations.py --budget full --datasets letters tiles
#   --rows "adopted, AdamW lr 2e-3, warm-up 250" --seeds 1`, then `--datasets cells --seeds 0 1`).
#   `letters` agrees: 0.108 against 0.097, so 0.109 over both seeds, 1.25x the peer. `tiles` and
#   `cells` split, one seed each way: on seed 1 `tiles` 0.127 against 0.137 and `cells` 0.393
#   against 0.419. The means are ahead on all four datasets, clearly on `signs` and `letters`, by a
#   hair on `tiles` (0.169 against 0.161) and `cells` (0.445 against 0.444). mAP@[.5:.95] is ahead
#   on all four: 0.236 against 0.207, 0.075 against 0.069, 0.045 against 0.038, 0.290 against 0.283.
# - **A level result is not a confirmation.** `cells` was kept untuned for the final check, and it
#   came out level. So the rule was set before any further run: make a fifth dataset for this one
#   decision; adopt the candidate if its mean there is not below the default's, keep 1e-3
#   otherwise. The next section is that check.

# %% [markdown]
# ## A fifth dataset, for one decision
#
# `aerial` (previewed at the top) was written after the four results above. It was run once with
# the three rows the decision needs: the default then (AdamW lr 1e-3, warm-up 82), the candidate
# (lr 2e-3, warm-up 250) and the peer (`bench/ablations.py --budget full --datasets aerial --rows
# "torchvision FCOS" "adopted, AdamW" "adopted, AdamW lr 2e-3, warm-up 250" --seeds 0 1`, then
# `bench/nms_sweep.py --rows "adopted, AdamW" "adopted, AdamW lr 2e-3, warm-up 250" --datasets
# aerial`).

# %%
seed_table(("adopted, AdamW", "adopted, AdamW lr 2e-3, warm-up 250", "torchvision FCOS"), ("aerial",), seeds=(0, 1))
print("\nat NMS 0.5 (the default; the peer keeps its own 0.6), re-scored by bench/nms_sweep.py:")
nms_table(("adopted, AdamW", "adopted, AdamW lr 2e-3, warm-up 250"), ("aerial",))
print()
main_job_table(("adopted, AdamW", "adopted, AdamW lr 2e-3, warm-up 250"), iters=828)

# %% [markdown]
# What the fifth dataset says (828 iterations, batch 16, 224 px, seeds 0 and 1):
#
# - **The candidate leads on both seeds**: mAP@0.5 0.733 (0.725-0.741) against 0.710 (0.706-0.714),
#   mAP@[.5:.95] 0.458 against 0.434. By the rule set before the run, it is adopted.
# - **The peer is strongest here** (0.609), so the ratios are the smallest of the five: 1.20x for
#   the candidate, 1.17x for the old default. A ratio says as much about the peer's room to grow as
#   about the recipe: on `tiles`, where the peer scores 0.057, the same recipe stands at 3x.
# - **The course data agrees** (`bench/main_job.py --rows "adopted, AdamW lr 2e-3, warm-up 250"
#   --iters 828 --seeds 0 1`, NMS 0.5): VOC07 mAP@0.5 0.823 (0.810-0.836) and mAP@[.5:.95] 0.537,
#   against 0.813 and 0.518 at lr 1e-3. The 300-iteration main job trains with SGD and is unchanged.
# - **NMS 0.5 changes nothing here** (0.733 at 0.5 and at 0.6; 0.708 against 0.710 for the old
#   default): objects of one class rarely overlap from above.
# - **Adopted.** Chapter 09's `ADAMW_DEFAULTS` takes lr 2e-3 and `ADAMW_WARMUP_ITERS` 250
#   iterations (at most a third of the run); `adamw_changes(iters)` holds both, for
#   `optimizer_for` and `--optimizer adamw`. The rows "adopted, AdamW" and "default, AdamW" keep
#   the rate they were measured with (`ADAMW_USUAL`, 1e-3). What the candidate does not say: which
#   of its two changes does the work (the next section), and whether 250 iterations of warm-up
#   suit runs much longer or shorter than 828 (they keep 250, and a third of a shorter run,
#   unmeasured).
# - **The issue's command now** (`python -m fcos_lib train --data DIR --iters 828 --batch-size 16
#   --image-size 224`, NMS 0.5; `bench/nms_sweep.py --rows "adopted, AdamW lr 2e-3, warm-up 250"
#   --datasets signs tiles letters cells aerial`) against the peer at its own 0.6: **1.499x** on
#   `signs` (0.414; 1.41x before), **3.04x** on `tiles` (0.173; 2.93x), **1.31x** on `letters`
#   (0.114; 1.15x), **1.41x** on `cells` (0.452; 1.41x) and **1.20x** on `aerial` (0.733; 1.16x).
#   The goal of 1.5x on every dataset is met on `tiles` only; `signs` misses it by 0.0004 of mAP,
#   `letters`, `cells` and `aerial` by more. (A later run of the benchmark on `signs` repeated
#   seed 1 to the digit and not seed 0, and measured 1.55x: "At equal wall-clock time". On
#   `signs` 1.5x is met or missed by the runs' noise.)

# %% [markdown]
# ## Which of the two changes does the work
#
# The adopted AdamW setting changed two things at once: the rate (1e-3 to 2e-3) and the warm-up
# (82 to 250 iterations). The control row changes only the warm-up, at the old rate ("adopted,
# AdamW, warm-up 250"; `bench/ablations.py --budget full --datasets signs letters --rows "adopted,
# AdamW, warm-up 250" --seeds 0 1`, run after the decision, on the two datasets where the rate
# alone was measured). With the rows above, each change alone and both together:

# %%
seed_table(("adopted, AdamW", "adopted, AdamW, warm-up 250", "adopted, AdamW lr 2e-3", "adopted, AdamW lr 2e-3, warm-up 250"),
           ("signs", "letters"), seeds=(0, 1))

# %% [markdown]
# What the control says (828 iterations, batch 16, 224 px, NMS 0.6, seeds 0 and 1):
#
# - **The longer warm-up alone buys nothing**: at lr 1e-3, 0.374 (0.347-0.400) on `signs` against
#   0.379, and 0.094 (0.093-0.095) on `letters` against 0.097. Both are inside the seeds' spread.
# - **The higher rate alone trades datasets**: `letters` 0.114 against 0.097, `signs` 0.263
#   against 0.379.
# - **Together they win on both**: 0.407 on `signs`, 0.109 on `letters`. The rate does the work
#   on `letters`; the warm-up is what lets `signs` survive the rate. Neither change would have
#   been adopted alone, by the rule that a change must win on every dataset: one-at-a-time
#   ablations miss a pair like this one, and a table of single changes is not the last word.

# %% [markdown]
# ## Where the switch belongs
#
# The command switched from SGD to AdamW at 800 iterations, a length set on the course data
# alone, before any length between 300 and 828 was run there. On `signs` AdamW led at 704
# (above). Both optimisers once more, at 550 iterations, where they were level on the course data
# at AdamW's old rate: the command exactly as a user runs it, once with `--optimizer sgd` and once
# with `--optimizer adamw` (so AdamW's defaults now, lr 2e-3 and a warm-up of 183, a third of the
# run), on the course data and on held-out datasets, two seeds each
# (`bench/optimizer_switch.py --iters 550 --datasets letters cells course aerial signs --seeds 0
# 1`, about 6 minutes a run; NMS 0.5, as the command scores; `tiles` was run after the decision
# below, with `--datasets tiles`).

# %%
SWITCH = RESULTS.parent / "optimizer_switch.json"
switch = json.loads(SWITCH.read_text())["runs"] if SWITCH.is_file() else {}


def switch_table(iters, datasets=("course", "signs", "tiles", "letters", "cells", "aerial"), key="map50"):
    """SGD and AdamW at `iters` iterations on each dataset (bench/optimizer_switch.py): `key` per
    seed, the mean, and AdamW's mean over SGD's; datasets not run at that length are left out."""
    print(f"{'dataset':9s}{'optimiser':>10s}" + "".join(f"{'seed ' + str(s):>9s}" for s in SEEDS) + f"{'mean':>8s}")
    for dataset in datasets:
        found = {opt: [switch[k][key] for s in SEEDS if (k := f"{dataset} | {iters} it | {opt} | seed {s}") in switch]
                 for opt in ("sgd", "adamw")}
        if any(len(values) < len(SEEDS) for values in found.values()):
            continue
        for opt, values in found.items():
            print(f"{dataset:9s}{opt:>10s}" + "".join(f"{v:9.3f}" for v in values) + f"{mean(values):8.3f}")
        print(f"{dataset:9s}{'AdamW/SGD':>10s}{mean(found['adamw']) / mean(found['sgd']):{9 * len(SEEDS) + 8}.2f}x")


switch_table(550)

# %% [markdown]
# What the switch's runs say (550 iterations, batch 16, 224 px, mAP@0.5, seeds 0 and 1):
#
# - **AdamW is ahead on both seeds on the course data and on three held-out datasets of four**
#   (the four run before the decision):
#   course 0.813 against 0.793 (VOC07 0.788 against 0.774; mAP@[.5:.95] 0.488 against 0.438),
#   `letters` 0.099 against 0.066 (1.50x), `cells` 0.316 against 0.261 (1.21x), `aerial` 0.710
#   against 0.618 (1.15x).
# - **On `signs` the two are level**: 0.213 (0.164-0.263) against 0.206 (0.185-0.226), one seed
#   each way, the widest spread in the table. `signs` is the dataset where AdamW's first steps
#   decide (the rate without the longer warm-up lost a third of its mAP there); at 704 iterations
#   AdamW led it clearly (0.348 against 0.279).
# - **Adopted: the switch moves from 800 to 550.** AdamW loses nowhere at 550, as lr 2e-3 lost
#   nowhere when it was adopted (level on two datasets, ahead on the others). Chapter 09's
#   `ADAMW_ITERS` is (550, 10,000) now; the main job's 300 iterations keep SGD, where AdamW (at lr
#   1e-3) scored half of SGD's. The crossover on the course data lies below 550, and on `signs`
#   at 550 or above.
# - **`tiles`, run after the move, agrees**: AdamW 0.130 (0.113-0.147) against SGD's 0.056
#   (0.047-0.065), 2.31x, ahead on both seeds, as at 300 (0.083 against 0.044, lr 1e-3, one seed)
#   and at 828 (0.170 against 0.079). So at 550 AdamW is ahead on four held-out datasets of five
#   and level on the fifth.

# %% [markdown]
# ### Below 550, on the course data
#
# Where on the course data do the two meet? Both at 400 iterations, two seeds
# (`bench/optimizer_switch.py --iters 400 --datasets course --seeds 0 1`, about 9 minutes a run
# on a slow hour; AdamW's warm-up is 133, a third of the run):

# %%
switch_table(400)

# %% [markdown]
# - **Level on mAP@0.5**: SGD 0.768 (0.767-0.768), AdamW 0.767 (0.759-0.775), one seed each way
#   (VOC07 0.750 against 0.748). **AdamW ahead on mAP@[.5:.95] on both seeds**: 0.430
#   (0.428-0.432) against 0.409 (0.399-0.419). So with today's defaults the course data's
#   crossover lies at 400 or below. The half at 300 was measured with AdamW's old rate and
#   warm-up (lr 1e-3, a tenth of the run); today's defaults were not run at 300.
# - **The switch stays at 550.** A lower switch must lose on no held-out dataset, and none was
#   run at 400 (exercise 5). The benchmark's equal wall-clock runs on a slow hour fell there:
#   `tiles` and `letters` at about 410 iterations trained with SGD (1.11x and 1.19x the peer,
#   "At equal wall-clock time"), where AdamW led SGD at 550 by 2.3x and 1.5x.


# %% [markdown]
# ## A finer level for small objects: p2
#
# Every lever so far changed the training. The three datasets where the recipe stays below 1.5x
# the peer share one trait: small objects. At 224 px, a quarter to a third of the boxes of
# `signs`, `letters`, `cells` and `aerial` are under 16 px on a side (the square root of their
# area), and on `aerial` 78 % are under 32 px. Such a box falls to p3, whose locations are 8 px
# apart: it gets a handful of positive locations, read off features that have already pooled
# over its whole width. An FPN level p2, at stride 4 from the trunk's `block1`, gives it four
# times as many (chapter 01's `with_p2`, `--p2` on the command line; chapter 04's scale ranges
# follow from the strides: p2 (0, 32), p3 (32, 64), p4 (64, 128), p5 (128, inf)).
#
# The positives of one box, by its side, with and without p2 (chapter 04's rule, centre
# sampling 1.5, the box placed off the grid):

# %%
from fcos_lib.backbone import FPN_STRIDES, P2_STRIDE  # chapter 01's strides, without p2 and with it

LEVELS = {"p3-p5": dict(FPN_STRIDES), "p2-p5": {**P2_STRIDE, **FPN_STRIDES}}
print(f"{'box side (px)':>14s}" + "".join(f"{name + ' positives':>18s}" for name in LEVELS))
for side in (6, 10, 16, 24, 40):
    box = torch.tensor([[[101.3, 97.7, 101.3 + side, 97.7 + side, 0.0]]])  # (B=1, N=1, 5)
    counts = []
    for strides in LEVELS.values():
        locations = get_fpn_location_coords({level: (224 // s, 224 // s) for level, s in strides.items()}, strides)
        counts.append(int((fcos_match_indices(locations, strides, box, center_sampling_radius=1.5) == 0).sum()))
    print(f"{side:>14d}" + "".join(f"{n:>18d}" for n in counts))
    assert counts[1] >= counts[0]  # p2 never takes positives away: boxes under 32 px move to a finer grid

# %% [markdown]
# Screened first (300 iterations, batch 8, 160 px, seeds 0 and 1; the rate alone, since the
# screen's warm-up is a tenth of its run: `bench/ablations.py --budget screen --datasets aerial
# cells letters signs tiles --rows "adopted, AdamW lr 2e-3" "adopted, AdamW lr 2e-3 + p2" --seeds 0 1`):

# %%
seed_table(("adopted, AdamW lr 2e-3", "adopted, AdamW lr 2e-3 + p2"), ("aerial", "cells", "letters", "signs", "tiles"),
           seeds=(0, 1), budget="screen")

# %% [markdown]
# Then the default itself with p2, at the issue's budget (828 iterations, batch 16, 224 px), first
# on the three datasets furthest from the goal, then on `signs` and `tiles` (`bench/ablations.py
# --budget full --datasets aerial letters cells signs tiles --rows "adopted, AdamW lr 2e-3, warm-up
# 250 + p2" --seeds 0 1`; 22 to 33 minutes a run here):

# %%
seed_table(("adopted, AdamW lr 2e-3, warm-up 250", "adopted, AdamW lr 2e-3, warm-up 250 + p2", "torchvision FCOS"),
           ("aerial", "cells", "letters", "signs", "tiles"), seeds=(0, 1))

# %% [markdown]
# And on the main job, the course's own 300-iteration run (SGD, the recipe's default there), with and
# without p2, two seeds, at the NMS threshold the command uses (`bench/main_job.py --rows "default,
# peer's optimiser + EMA + p2" --seeds 0 1`, then `bench/nms_sweep.py --rows ... --datasets "main
# job"`, which re-scores both rows' checkpoints at each threshold):

# %%
sweep = json.loads(NMS_SWEEP.read_text())["runs"] if NMS_SWEEP.is_file() else {}
print(f"{'main job (300 it, course data), NMS 0.5':40s}" + "".join(f"{name:>22s}" for name in
                                                                 ("VOC07 mAP@0.5", "AP50", "mAP@[.5:.95]")))
for row in ("default, peer's optimiser + EMA", "default, peer's optimiser + EMA + p2"):
    found = [sweep[k]["0.5"] for s in SEEDS if (k := f"{row} | main job | seed {s}") in sweep]
    cells = [[f[key] for f in found] for key in ("voc07_map50", "map50", "map")]
    print(f"{row:40s}" + "".join(f"{mean(v):>8.3f} ({min(v):.3f}-{max(v):.3f})" for v in cells)
          if found else f"{row:40s}  not measured")

# %% [markdown]
# What p2 buys, and what it costs:
#
# - **Positives.** Without p2 a 6 px box gets no positive location at all and a 10 px box one;
#   with it, 4 and 9. From 24 px up the count is the same: the box has only moved to a finer grid.
# - **The screen**: p2 is ahead on both seeds on four datasets of five and level on the fifth.
#   On `aerial` it doubles mAP@0.5, 0.281 (0.279-0.283) to 0.589 (0.571-0.606); on `letters`,
#   `signs` and `tiles` it gains about half (0.031 to 0.047, 0.031 to 0.044, 0.030 to 0.046); on
#   `cells` it is level, 0.131 against 0.133. Even `tiles`, whose boxes are the largest (42 % over
#   64 px), gains. At 160 px every box is smaller than at 224, so the screen flatters p2.
# - **The full budget, `aerial`, two seeds**: 0.871 (0.870-0.872) against the default's 0.733
#   (0.725-0.741), ahead on both seeds (mAP@[.5:.95] 0.584 against 0.458, VOC07 0.834 against
#   0.708). Against the peer's 0.609 that is **1.43x**, from 1.20x. The gap to the goal's 1.5x
#   shrank from 0.18 of mAP@0.5 to 0.04.
# - **`letters`, two seeds**: 0.124 (0.116-0.131) against 0.109 (0.108-0.110), ahead on both
#   seeds (mAP@[.5:.95] 0.056 against 0.045): **1.42x** the peer's 0.087, from 1.25x.
# - **`cells`, two seeds**: 0.612 (0.558-0.666) against 0.445 (0.393-0.497), ahead on both seeds
#   (mAP@[.5:.95] 0.431 against 0.290): 1.91x the peer's 0.321, from 1.39x. The screen had p2 level
#   here (0.133 against 0.131), with both models at a quarter of their full-budget mAP (likely too
#   early to tell the two apart; not measured): the screen's ranking did not hold at the full
#   budget. A screen can miss a change as well as flatter one.
# - **`signs`, two seeds**: 0.595 (0.579-0.611) against 0.407 (0.388-0.425), ahead on both seeds
#   (mAP@[.5:.95] 0.372 against 0.236): **2.15x** the peer's 0.277, from 1.47x. The screen's gain
#   (0.031 to 0.044, two fifths) held at the full budget (nearly half).
# - **`tiles`, two seeds**: 0.193 (0.190-0.195) against 0.169 (0.127-0.212), mAP@[.5:.95] 0.085
#   against 0.075: 3.39x the peer's 0.057, from 2.98x. Ahead on the mean, but **behind on seed 0**
#   (0.195 against 0.212), ahead on seed 1 (0.190 against 0.127): the one seed of ten where p2 lost.
#   `tiles` has the largest boxes (42 % over 64 px), which p2 does not touch; its two seeds land
#   close together where the default's are far apart.
# - **The main job**: VOC07 mAP@0.5 0.751 (0.743-0.759) against 0.737 (0.731-0.744), AP50 0.770
#   against 0.755, mAP@[.5:.95] 0.393 against 0.372 (table above). Ahead on seed 0 in all three; on
#   seed 1 level at IoU 0.5 (0.743 against 0.744) and ahead at the tighter IoUs. The course's boxes
#   are larger (12 % under 16 px), so p2 gains less here than on the held-out data.
# - **The cost**: a training step takes about twice as long (`bench/bench_train_step.py --no-peer
#   --p2`, batch 16, 224 px, the two models stepped in turn on the same batches: 1951 against 1060
#   ms, 1.84x, on one hour; 1627 against 822 ms, 1.98x, on another): the head's eight convolutions
#   run on p2's 3,136 locations (56 x 56) besides the 1,029 of p3-p5. Each 828-iteration run took 22
#   to 33 minutes here. At equal wall-clock time p2 gets about half the default's iterations. The
#   main job with p2 trained for 505 and 511 s (about 9.5 images/s), 8 min 40 s from start to
#   scores, on the hour where the default stepped at 19.5 images/s: the goal of 10 minutes holds
#   with little to spare.
# - **Where the goal would stand with `--p2`** (NMS 0.5 as the command scores; `bench/nms_sweep.py
#   --rows "adopted, AdamW lr 2e-3, warm-up 250 + p2" --datasets aerial letters cells signs tiles`,
#   against the peer at its own 0.6): `signs` 0.604 (0.588-0.620), **2.18x**; `tiles` 0.195
#   (0.193-0.198), **3.44x**; `cells` 0.621 (0.566-0.675), **1.93x**; `letters` 0.126
#   (0.117-0.135), **1.45x**; `aerial` 0.872 (0.872-0.873), **1.43x**. Even with p2 the gap to 1.5x
#   is 0.04 of mAP@0.5 on `aerial` and 0.005 on `letters`.
#
# So p2 wins on every held-out dataset at the issue's budget (nine seeds of ten) and on the main
# job's means: by this chapter's rule it would be adopted. But that budget counts iterations, and
# each of p2's costs two. A user's run is counted in minutes. The question the rule leaves open:
# **in the same training time**, does p2 still win? On `signs`, the default's 727 iterations (600 s
# of its step) against as many of p2's as take the same time (one median step each, `bench/
# bench_train_step.py --no-peer --p2`: 825 and 1637 ms, so 366 iterations; the command picks AdamW
# for 727 and SGD for 366, below its switch at 550). Each run is the command a user types, two
# seeds each; one command reruns them all (`bench/equal_time.py --data signs --iters 727 --seeds 0 1
# --results bench/results/p2_equal_time.json -- "" "--p2"`, which times a variant's step beside the
# default's unless the file already holds its timing):

# %%
P2_EQUAL_TIME = RESULTS.parent / "p2_equal_time.json"


def equal_time_table(variants, dataset="signs"):
    """Per variant (its `train` flags): iterations, training seconds (min-max), mAP@0.5 and
    mAP@[.5:.95], mean (min-max) over the seeds, from bench/equal_time.py's results file."""
    runs = json.loads(P2_EQUAL_TIME.read_text())["runs"] if P2_EQUAL_TIME.is_file() else {}
    width = max(24, max(len(variant) for variant in variants) + 2)
    print(f"{dataset + ', equal time':{width}s}{'iters':>6s}{'train s':^16s}{'mAP@0.5':>22s}{'mAP@[.5:.95]':>22s}")
    for variant in variants:
        found = [v for k, v in runs.items() if k.startswith(f"{variant} | {dataset} | ")]
        if not found:
            print(f"{variant:{width}s}  not measured")
            continue
        seconds, map50, map_ = ([f[key] for f in found] for key in ("train_seconds", "map50", "map"))
        print(f"{variant:{width}s}{found[0]['iters']:6d}{min(seconds):>8.0f}-{max(seconds):<7.0f}"
              + "".join(f"{mean(v):>8.3f} ({min(v):.3f}-{max(v):.3f})" for v in (map50, map_)))


equal_time_table(("default", "--p2"))

# %% [markdown]
# - **In the same time, p2 loses by almost half**: 0.186 (0.180-0.191) against the default's
#   0.348 (0.311-0.385), mAP@[.5:.95] 0.069 against 0.192, two seeds each (`python -m fcos_lib
#   train --data signs --iters 727 --batch-size 16 --image-size 224 --in-memory --device cpu --seed S`,
#   and `--iters 366 --p2`; results in `bench/results/p2_equal_time.json`). The default's seed 0 ran
#   slower than its step was timed (872 s of training against 648 for seed 1 and 580-602 for p2's),
#   so it had more time; its seed 1, with 8-12 % more time than p2's runs, still scored 0.311.
#   Half the iterations costs more than the finer level gives: on this data mAP@0.5 is still climbing
#   fast between 366 and 828 iterations.
# - **Not adopted as the default.** p2 is the better model per iteration and the worse one per
#   minute, and the course's defaults are for runs a user times in minutes (the main job's ten).
#   It stays an option, `--p2` (`with_p2=True`): for objects of a few pixels, when the run can be
#   allowed twice the default's time. A p2 that costs less is what could change this. Its cost
#   alone is measured: with two convolutions in each head stem instead of four, p2's step is 1.5x
#   the default's, not 2x (`bench/bench_train_step.py --no-peer --p2 --num-convs 2`: 0.66x the
#   default's images/s, p2 with four 0.47x, same hour). Screened on `aerial` and `signs`
#   (`bench/ablations.py --budget screen --datasets aerial signs --rows "adopted, AdamW lr 2e-3 + p2,
#   2 head convs" --seeds 0 1`, about 2 minutes a run), against the p2 screen's rows above:

# %%
seed_table(("adopted, AdamW lr 2e-3", "adopted, AdamW lr 2e-3 + p2", "adopted, AdamW lr 2e-3 + p2, 2 head convs"),
           ("aerial", "signs"), seeds=(0, 1), budget="screen")

# %% [markdown]
# - **The lighter head keeps the screen's gain**: `aerial` 0.582 (0.580-0.583) against p2's 0.589
#   with four convolutions and 0.281 without p2; `signs` 0.046 (0.045-0.046) against 0.044 and
#   0.031. A screen, on two datasets, and a short screen can flatter a change (`cells` above); not
#   adopted on it.
#
# At the full budget, on `aerial`, the dataset furthest from the goal (`bench/ablations.py --budget
# full --datasets aerial --rows "adopted, AdamW lr 2e-3, warm-up 250 + p2, 2 head convs" --seeds 0 1`;
# 17.5 minutes a run here, on an hour where p2 with four convolutions was not timed):

# %%
seed_table(("adopted, AdamW lr 2e-3, warm-up 250", "adopted, AdamW lr 2e-3, warm-up 250 + p2",
            "adopted, AdamW lr 2e-3, warm-up 250 + p2, 2 head convs", "torchvision FCOS"), ("aerial",), seeds=(0, 1))

# %% [markdown]
# - **The screen's near-tie did not hold.** With two convolutions p2 scores 0.816 (0.815-0.818)
#   on `aerial`, against 0.871 with four and 0.733 without p2: it keeps about 60 % of p2's gain
#   (mAP@[.5:.95] 0.515 against 0.584 and 0.458). Against the peer's 0.609 that is 1.34x, where
#   p2 with four reached 1.43x. The screen had the two p2 heads level (0.582 against 0.589): at 300
#   iterations the deeper head had not yet used its depth (likely; not measured). Again a screen's
#   ranking did not hold at the full budget.
#
# And in the same training time as the default, on `signs` as for p2 with four convolutions above
# (`bench/equal_time.py --data signs --iters 727 --seeds 0 1 --results bench/results/p2_equal_time.json
# -- "" "--p2" "--p2 --head-convs 2" "--p2 --head-convs 2 --optimizer adamw"`). The script timed the
# lighter p2's step beside the default's in one call: 1.243 against 0.930 s (0.75x the images/s; the
# network step alone was 0.66x, `bench_train_step.py`: the loop's other costs are the same for
# both), so 543 iterations in the time of the default's 727. That is 7 below the command's switch to
# AdamW at 550, so the command trains it with SGD; the last variant forces AdamW, to tell the head
# from the optimiser:

# %%
equal_time_table(("default", "--p2", "--p2 --head-convs 2", "--p2 --head-convs 2 --optimizer adamw"))

# %% [markdown]
# - **The lighter p2 loses in equal time too**: with the command's SGD, 0.198 (0.184-0.212)
#   against the default's 0.348 (0.311-0.385), mAP@[.5:.95] 0.076 against 0.192, though its runs
#   took longer than planned (708 and 821 s of training, on a slower hour, against the default's
#   648 s on seed 1).
# - **With AdamW it does better, and still loses**: 0.260 (0.259-0.261) at 498 iterations,
#   mAP@[.5:.95] 0.123, in 678 and 736 s of training, against the default's 0.311 in 648 s on
#   seed 1. So the switch cost the SGD variant about 0.06 of mAP@0.5, and p2's dearer steps cost
#   the rest. The iterations differ (543 and 498) because the two calls timed the same network at
#   0.75x and 0.68x the default's images/s, half an hour apart: one timing is good to about 10 %,
#   which is why the table keeps the seconds each run really trained.
# - **Not adopted, either head.** In the minutes a user has, the default beats p2 on `signs`, with
#   four convolutions or two, with SGD or AdamW. `--head-convs N` stays a command-line option
#   (`num_convs` in `TrainConfig`), for a faster step at some cost in mAP; with p2 it gives up 40 %
#   of p2's gain on `aerial` at the full budget. Whether it beats the default on `letters`, the other
#   dataset where p2 stays under 1.5x, was not run.

# %% [markdown]
# ## Where the errors are
#
# mAP says how good the ranking is, not what is wrong with it. Hoiem et al. (2012, "Diagnosing
# error in object detectors") sort a detector's false positives by kind. Take the detections
# of the whole validation split, best first, as many as there are objects, and say what each
# one is:
#
# - **correct**: IoU >= 0.5 with an object of its class that no better detection took;
# - **duplicate**: the same, but a better detection took that object;
# - **wrong class**: IoU >= 0.5 only with objects of other classes: the right place, the wrong name;
# - **poor box**: its best IoU with any object is in [0.1, 0.5);
# - **background**: IoU < 0.1 with every object.
#
# A detection whose best object of its class is `difficult` counts as nothing, as in the mAP.
# Which kind dominates says which lever to try: boxes (assignment, box loss, a finer level),
# or the classifier (its features, its training).

# %%
#| export
ERROR_KINDS = ("correct", "duplicate", "wrong class", "poor box", "background")


def error_breakdown(predictions: list[dict], ground_truths: list[dict], top: int | None = None,
                    iou_thresh: float = 0.5, poor_iou: float = 0.1) -> dict[str, int]:
    """What the `top` best detections of a dataset are: {kind: count} over ERROR_KINDS.

    Args:
        predictions: one dict per image, boxes (K, 4) xyxy, scores (K,), labels (K,), as
            fcos_lib.evaluate.collect_detections returns them.
        ground_truths: one dict per image, boxes (N, 4), labels (N,), optionally difficult (N,) bool.
        top: how many detections, best first over the whole dataset; None = as many as there are
            objects not marked difficult.
        iou_thresh: the IoU that makes a detection correct (0.5, as mAP@0.5); poor_iou: below it,
            background.
    Returns:
        {"correct": int, "duplicate": int, "wrong class": int, "poor box": int, "background": int}.
    """
    scores, kinds, num_objects = [], [], 0
    for pred, gt in zip(predictions, ground_truths, strict=True):
        order = torch.argsort(pred["scores"], descending=True, stable=True)
        boxes, labels = pred["boxes"][order].float(), pred["labels"][order]
        gt_boxes, gt_labels = gt["boxes"].float(), gt["labels"]
        difficult = gt.get("difficult", torch.zeros(len(gt_labels), dtype=torch.bool)).bool()
        num_objects += int((~difficult).sum())
        iou = torchvision.ops.box_iou(boxes, gt_boxes)  # (K, N)
        if iou.shape[1] == 0:  # no objects: every detection is background
            iou = iou.new_zeros(len(boxes), 1)
            gt_labels, difficult = gt_labels.new_full((1,), -1), difficult.new_zeros(1)
        best_same, j = iou.where(labels[:, None] == gt_labels[None], 0.0).max(dim=1)  # (K,), (K,)
        hit = best_same >= iou_thresh
        ignored = hit & difficult[j]
        claims = hit & ~ignored
        # The first claim on an object (in score order) is correct, later ones duplicates (voc_match's rule).
        rank = torch.arange(len(boxes))
        first = torch.full((iou.shape[1],), len(boxes)).scatter_reduce(0, j[claims], rank[claims], reduce="amin")
        correct = claims & (first[j] == rank)
        best_any = iou.max(dim=1).values  # (K,)
        kind = torch.where(best_any >= poor_iou, 3, 4)  # poor box, or background ...
        kind = torch.where(best_any >= iou_thresh, 2, kind)  # ... wrong class ...
        kind = torch.where(claims, 1, kind)  # ... duplicate ...
        kind = torch.where(correct, 0, kind)  # ... or correct
        scores.append(pred["scores"][order][~ignored])
        kinds.append(kind[~ignored])
    scores, kinds = torch.cat(scores), torch.cat(kinds)
    top = num_objects if top is None else top
    best = kinds[torch.argsort(scores, descending=True, stable=True)[:top]]
    counts = torch.bincount(best, minlength=len(ERROR_KINDS)).tolist()
    return dict(zip(ERROR_KINDS, counts))

# %% [markdown]
# Check: one image with three objects (one `difficult`) and one detection of each kind. The
# better of two boxes on the same object is the correct one, whatever its place in the list.

# %%
gt = {"boxes": torch.tensor([[10., 10., 50., 50.], [100., 100., 140., 140.], [200., 10., 240., 50.]]),
      "labels": torch.tensor([0, 1, 0]), "difficult": torch.tensor([False, False, True])}
pred = {"boxes": torch.tensor([[10., 10., 50., 50.],      # class 0 on the class-0 object: a duplicate (0.5) ...
                               [11., 11., 51., 51.],      # ... of this better one (0.9): correct
                               [100., 100., 140., 140.],  # class 0 on the class-1 object: wrong class
                               [100., 100., 160., 160.],  # class 1, IoU 0.44 with it: poor box
                               [300., 300., 340., 340.],  # nothing there: background
                               [200., 10., 240., 50.]]),  # the difficult object: not counted
        "scores": torch.tensor([0.5, 0.9, 0.8, 0.3, 0.2, 0.95]), "labels": torch.tensor([0, 0, 0, 1, 1, 0])}
every = error_breakdown([pred], [gt], top=10)
print(every)
assert every == {"correct": 1, "duplicate": 1, "wrong class": 1, "poor box": 1, "background": 1}
# top=None: as many detections as objects that count (two): the 0.9 and the 0.8.
assert error_breakdown([pred], [gt]) == {"correct": 1, "duplicate": 0, "wrong class": 1, "poor box": 0,
                                         "background": 0}

# %% [markdown]
# The trained rows, from `bench/error_breakdown.py` (each checkpoint's val split at the NMS
# threshold its row was scored with, 0.6; the script checks that it reproduces the stored
# mAP@0.5). Per row and dataset, the kinds as a share of the best detections, over both seeds:

# %%
ERROR_BREAKDOWN = RESULTS.parent / "error_breakdown.json"


def breakdown_table(rows, datasets, seeds=(0, 1), budget="full"):
    """Per row and dataset: each kind's share of the best detections, summed over the seeds."""
    runs = json.loads(ERROR_BREAKDOWN.read_text())["runs"] if ERROR_BREAKDOWN.is_file() else {}
    width = max(len(row) for row in rows) + 2
    print(f"{'row':{width}s}{'dataset':10s}{'mAP@0.5':>8s}" + "".join(f"{kind:>13s}" for kind in ERROR_KINDS))
    for row in rows:
        for dataset in datasets:
            found = [runs.get(f"{row} | {dataset} | seed {s} | {budget}") for s in seeds]
            if not all(found):
                print(f"{row:{width}s}{dataset:10s}  not measured")
                continue
            top = sum(f["top"] for f in found)
            print(f"{row:{width}s}{dataset:10s}{mean([f['map50'] for f in found]):8.3f}"
                  + "".join(f"{sum(f[kind] for f in found) / top:13.0%}" for kind in ERROR_KINDS))


# Where p2's gain went, on the screen (the only budget with checkpoints of both rows):
breakdown_table(("adopted, AdamW lr 2e-3", "adopted, AdamW lr 2e-3 + p2"),
                ("aerial", "cells", "letters", "signs", "tiles"), budget="screen")

# %% [markdown]
# (`bench/error_breakdown.py --budget screen --rows "adopted, AdamW lr 2e-3" "adopted, AdamW lr 2e-3 + p2"
# --datasets aerial cells letters signs tiles --seeds 0 1`, half a minute in all.)
#
# - **On `aerial`, p2 fixes names, not boxes.** The share of wrong-class detections falls from
#   43 % to 17 % and the correct ones rise from 37 % to 60 %; poor boxes stay at 10-11 %. The
#   boxes were already in the right place: the classifier could not tell a car from a tank at
#   stride 8.
# - **After 300 iterations the other four are mostly wrong class and poor boxes** (37-75 % and
#   4-36 %), with p2 or without it.
#
# And the p2 row at the full budget, the best model of the chapter (`bench/error_breakdown.py
# --rows "adopted, AdamW lr 2e-3, warm-up 250 + p2" --datasets aerial cells letters signs tiles
# --seeds 0 1`):

# %%
breakdown_table(("adopted, AdamW lr 2e-3, warm-up 250 + p2",), ("aerial", "cells", "letters", "signs", "tiles"))

# %% [markdown]
# - **What is left is the classifier.** On `letters` 61 % of the best detections are in the right
#   place with the wrong class, on `tiles` 53 %, on `cells` 31 %, on `signs` 20 %; poor boxes are
#   4-13 %. On `aerial`, where the goal is met with p2, wrong class is down to 3 %.
# - So the levers that are left for `letters` and `tiles` are the classifier's: its features
#   (width, depth, resolution) and its training, not the box loss, the assignment or NMS. On
#   `letters` the five classes are capitals among other glyphs, and the flips, which show each
#   capital as a shape it never is on paper, cost it most (the augmentation section above).


# %% [markdown]
# ## p2's detail without p2's locations
#
# On `aerial` p2 fixed the classifier. Two things changed with it: the features (block1's, at
# stride 4) and the locations (four times as many, so a small box has four times the positives).
# Chapter 01's `c2_passthrough` (`--c2-passthrough`) tries the first alone: c2's 2 x 2 blocks of
# pixels, stacked as 128 channels, join c3 in p3's lateral convolution. The head still runs on
# p3-p5 only, so the step costs almost nothing more. One row on the default, at the full budget,
# two seeds: first on `aerial` and `cells`, where p2 gained most and where most errors were wrong
# class, then, to decide, on the three others (`bench/ablations.py --budget full --datasets aerial
# cells signs tiles letters --rows "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough" --seeds 0 1`,
# 10-17 minutes a run):

# %%
seed_table(("adopted, AdamW lr 2e-3, warm-up 250", "adopted, AdamW lr 2e-3, warm-up 250 + p2",
            "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough", "torchvision FCOS"),
           ("aerial", "cells", "signs", "tiles", "letters"), seeds=(0, 1))

# %% [markdown]
# - **On `aerial` and `cells` the passthrough wins on every seed, for about 3 % of the step**:
#   0.760 (0.759-0.762) against the default's 0.733, and 0.532 (0.498-0.567) against 0.445.
#   mAP@[.5:.95] 0.488 against 0.458 and 0.362 against 0.290. Its step is 0.97x the default's
#   images/s (`bench/bench_train_step.py --no-peer --c2-passthrough`: 1080 ms a step).
# - **It keeps 20 % of p2's gain on `aerial` and 52 % on `cells`.** So on `aerial` most of p2's gain
#   comes from its locations, not from block1's features; on `cells` the features carry half.
# - **On the three others it leads on the mean, less clearly**: `signs` 0.425 against 0.407 (both
#   seeds ahead); `tiles` 0.192 against 0.169, one seed each way (0.196 against 0.212, 0.189
#   against 0.127: its seeds are 0.007 apart where the default's are 0.085); `letters` 0.112
#   against 0.109, one seed each way, a lead inside the seeds' noise. mAP@[.5:.95] leads on all
#   five (`signs` 0.247 against 0.236, `tiles` 0.091 against 0.075, `letters` 0.047 against 0.045).
# - **Its errors** (`bench/error_breakdown.py --rows "adopted, AdamW lr 2e-3, warm-up 250 + c2
#   passthrough" --datasets aerial cells signs tiles letters --seeds 0 1`), against p2's:

# %%
breakdown_table(("adopted, AdamW lr 2e-3, warm-up 250 + p2", "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough"),
                ("aerial", "cells", "signs", "tiles", "letters"))

# %% [markdown]
# - Wrong class stays the largest error on `letters` and `tiles` (59 % and 52 % of the best
#   detections): block1's detail does not teach the classifier to tell those shapes apart.
# - **At NMS 0.5, as the command scores** (`bench/nms_sweep.py --rows "adopted, AdamW lr 2e-3,
#   warm-up 250 + c2 passthrough" --datasets aerial cells signs tiles letters --seeds 0 1`):

# %%
nms_table(("adopted, AdamW lr 2e-3, warm-up 250", "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough"),
          ("aerial", "cells", "signs", "tiles", "letters"))

# %% [markdown]
# - Against the peer at its own 0.6: **`signs` 1.56x** (0.432; the default: 1.50x), **`tiles`
#   3.45x** (0.195; 3.04x), `letters` 1.32x (0.115; 1.31x), **`cells` 1.69x** (0.543; 1.41x),
#   `aerial` 1.25x (0.759; 1.20x).
# - **Adopted.** It leads on the mean of every held-out dataset, on every seed of three of them,
#   and costs 3 % of the step; this is the rule the AdamW rate was adopted by (ahead on the mean,
#   one seed each way on two datasets). Chapter 09's `passthrough_for(iters)` turns it on where it
#   was measured: from scratch, runs of 550 to 10,000 iterations (the range where the command
#   trains with AdamW). The main job's 300 SGD iterations and `--pretrained` keep p3-p5 as they
#   were, unmeasured; `--p2` takes block1 for its own level, so it turns the passthrough off;
#   `--no-c2-passthrough` turns it off by hand. The goal of 1.5x on every dataset is now met on
#   `signs`, `tiles` and `cells`; `letters` (1.32x) and `aerial` (1.25x) still miss it, and the
#   breakdown says where the rest is on `letters`: the classifier.


# %% [markdown]
# ## The classifier's loss: focal γ
#
# Chapter 07's focal loss scales each location's cross-entropy by `(1 - p_t)^γ`. With the paper's
# `γ = 2` a location that is 90 % right keeps 1 % of its loss. Two guesses for `letters`, where
# most of the best detections have the wrong class:
# - a smaller `γ` (1) lets the locations that are already fairly right keep teaching the
#   classifier;
# - a larger one (3) spends the gradient on the hardest locations, the confusions.
#
# RetinaNet's Table 1b found 1 and 2 within 0.3 AP of each other on COCO. Two rows on today's
# default, at the full budget, two seeds, on `letters` first, where the classifier is the limit
# (`bench/ablations.py --budget full --datasets letters --rows "adopted, AdamW lr 2e-3, warm-up 250
# + c2 passthrough, focal gamma 1" "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma
# 3" --seeds 0 1`, about 15 minutes a run):

# %%
seed_table(("adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough",
            "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma 1",
            "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma 3", "torchvision FCOS"),
           ("letters",), seeds=(0, 1))

# %% [markdown]
# - **Neither helps.** `γ = 1`: 0.108 (0.105-0.111); `γ = 3`: 0.106 (0.105-0.107); the paper's 2:
#   0.112 (0.108-0.115). Each is behind on both seeds, by 0.001 to 0.010; mAP@[.5:.95] is behind
#   too (0.046 and 0.043 against 0.047).
# - **γ moves the errors from one kind to another; it does not make more of them right**
#   (`bench/error_breakdown.py` with the two rows, `--datasets letters --seeds 0 1`):

# %%
breakdown_table(("adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough",
                 "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma 1",
                 "adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough, focal gamma 3"), ("letters",))

# %% [markdown]
# - Correct among the best 618 detections of each seed: 201, 199 and 196 (two seeds together).
#   With `γ = 1` fewer are the wrong class (56 % against 59 %) and more are on background (21 %
#   against 18 %); with `γ = 3` more are the wrong class (61 %) and fewer on background (13 %).
# - So the focal loss's weighting is not what keeps the classifier from telling the capitals
#   apart. The paper's 2 stays; `--focal-gamma` stays as a knob. What is left to try is what the
#   classifier sees: its features' resolution (p2 reached 0.124 here, at twice the step) and the
#   flips (the augmentation section: they show each capital as a shape it never is).


# %% [markdown]
# ## Re-run one row
#
# The stored table is only worth something if it comes from this code. The `smoke` budget is a
# 20-iteration run of the course default on the `signs` dataset; `make ablations` stores it
# next to the other rows. Re-run it here: same code, same data, same seed, so the same
# training, up to floating-point summation order (thread counts differ between machines). Two
# checks: the loss of the first iteration, where only that order differs (within 0.1 %); and the
# mean loss of the last ten, after 20 steps have amplified it (within 5 %: one thread against two
# moved it by 1.1 % here).

# %%
smoke_key = "course default | signs | seed 0 | smoke"
stored = results.get(smoke_key)
with tempfile.TemporaryDirectory() as out:
    rerun = run_fcos_row("course default", "smoke", make_held_out_dataset("signs"), seed=0, out=out)
# The re-run's own figures are not printed: their last digits depend on the thread count.
if stored is None:
    print("no stored smoke row yet: run `make ablations` to write it")
else:
    print(f"stored: first loss {stored['first_loss']:.4f}, final loss {stored['final_loss']:.4f}, "
          f"mAP@0.5 {stored['map50']:.3f}")
    for key, tolerance in (("first_loss", 0.001), ("final_loss", 0.05)):
        gap = abs(rerun[key] - stored[key]) / stored[key]
        assert gap <= tolerance, f"the re-run's {key} differs from the stored one by {gap:.2%}"
    print("re-run: the same first loss within 0.1 %, the same final loss within 5 %")

# %% [markdown]
# ## Pitfalls
#
# - **Choosing on the data you report**
#   ([P16](../docs/pitfalls.md#p16-a-recipe-chosen-on-the-data-it-is-judged-on-from-one-run)).
#   A default picked because it won on dataset A must be confirmed on data it was not picked
#   on. This chapter's datasets were generated for it and never used to choose a default
#   before it.
# - **One seed.** At these budgets the range between two seeds is often as large as the effect
#   being measured; read the ranges in the table before the means.
# - **Unequal budgets.** Compare rows at the same iterations, batch and input size, and say
#   which budget each row used. A recipe that is slower per step may still lose at equal
#   wall-clock time (`bench/bench_vs_torchvision.py --minutes`).
# - **Different metric code.** The peer is scored by the same function as fcos_lib, with boxes
#   in the same pixels; VOC and COCO-style AP@0.5 differ
#   ([P15](../docs/pitfalls.md#p15-voc-and-coco-style-figures-mixed-up)).

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **How many seeds?** Pick one row whose verdict is "mixed" and run it with seeds 2 and 3
#    (`bench/ablations.py --rows ... --seeds 2 3`). Does the verdict hold with four seeds?
#    *Hint:* the table's ranges, compared with the row's difference to its reference.
# 2. **A third dataset.** Change one thing in `make_held_out_dataset` (object sizes, or the number
#    of objects per image) and re-run the course default and the peer. Does the ratio move?
#    *Hint:* a new dataset kind needs its own folder; never reuse a folder you tuned on.
# 3. **Budget.** Is a change that loses at the screen budget sure to lose at 828 iterations?
#    Measure one (`--budget full`), and say what the screen can and cannot decide.
#    *Hint:* the EMA and scale jitter are often said to help more in longer runs.
# 4. **Pairs.** AdamW's higher rate and its longer warm-up each failed alone and won together.
#    Pick two changes from the tables that each lost, or were level, alone; add a row that makes
#    both, and run it on two datasets with two seeds. Does the pair win on both?
#    *Hint:* look for a change that removes the other's failure, as the warm-up removed the damage
#    of the higher rate's first steps.
# 5. **The crossover.** At 400 iterations the course data has been run (level on mAP@0.5, AdamW
#    ahead on mAP@[.5:.95]); no held-out dataset has. Run `bench/optimizer_switch.py --iters 400
#    --datasets signs tiles --seeds 0 1`. Could the switch move to 400 by this chapter's rule (a
#    change must lose on no dataset)?
#    *Hint:* AdamW's warm-up is a third of a short run; on `signs` its first steps decide.

# %% [markdown]
# ## Summary
#
# - A design choice is measured, not argued: one change at a time against a fixed reference, on
#   data the recipe was not chosen on, with several seeds and the spread shown.
# - At a short budget from scratch, **GroupNorm in the head** is what lets the seed's recipe learn
#   at all; the other changes of chapters 02-09 show their worth only together, on a recipe that
#   trains.
# - ATSS, an EMA of the weights, scale jitter, a wider head and other learning rates did not win on
#   both held-out datasets at the screen budget on version 0.1's recipe, so none became a default
#   then (the EMA did later, on the constant rate, at the full budget).
# - Version 0.1's recipe lost to torchvision's FCOS on two held-out datasets of three (828
#   iterations, batch 16, 224 px, two seeds: `signs` 0.243 against 0.277, 0.88x; `tiles` 0.062
#   against 0.057, 1.10x; `letters` 0.072 against 0.087, 0.83x).
# - The course's recipe now trains with the peer's optimiser (lr 0.01, constant after the warm-up,
#   weight decay on every parameter) and keeps its flips: it won on all three held-out datasets
#   (1.17x, 1.39x and 0.99x the peer) and on the main job's mAP@0.5, at a cost in its
#   mAP@[.5:.95].
# - A late step (the rate cut tenfold for the last 10 %, `--schedule step --steps 0.9`) wins that
#   cost back on the main job and wins on `signs` (1.26x), but loses a little on `tiles`: a flag,
#   not the default. An EMA of the weights on top of the constant rate wins on all three
#   (1.25x, 1.44x and 1.00x) and on the main job (VOC07 0.723, mAP@[.5:.95] 0.371): it is the
#   default now. The goal of 1.5x on every dataset is still not met: `letters` stays level.
# - At equal wall-clock time (7.5 minutes of steps each, `bench/bench_vs_torchvision.py
#   --minutes 7.5`) the SGD recipe stood at 1.15x on `signs`, 1.05x on `tiles` and 0.86x on
#   `letters`; a re-run (SGD at 704 iterations, below the switch to AdamW then) at 1.24x on
#   `signs`, and AdamW at the same 704 iterations at 1.55x: the switch at 800 was set from the
#   course data alone and was too high. On a slower hour 7.5 minutes held 577 iterations, and
#   AdamW there stood at 1.09x (the stored run). On a slower hour still, 7.5 minutes held about
#   410 iterations on `tiles` and `letters` (SGD, below the switch): 1.11x and 1.19x. The equal
#   wall-clock ratio is a property of the hour as much as of the recipe.
# - AdamW won on all three held-out datasets (1.93x the peer on `tiles`) and halved the main job
#   (VOC07 0.302 against 0.633). On the adopted schedule (constant rate, EMA) it is the best
#   setting measured on every held-out dataset (1.37x, 2.85x and 1.11x the peer) and still halves
#   the 300-iteration main job (0.357 against 0.723), but at 828 iterations it wins there too
#   (0.813 against 0.796): the run's length picks the optimiser now, AdamW from 800 (later 550)
#   to 10,000 iterations from scratch, SGD otherwise (`optimizer_for`; the main job keeps SGD).
# - A fourth dataset, `cells`, made after the recipe was final and never tuned on, shrinks the SGD
#   recipe's lead to 1.06x the peer; AdamW keeps 1.38x. With NMS at 0.5 the issue's command
#   (`--iters 828`, so AdamW) stands at 1.40x, 2.94x, 1.15x and 1.41x the peer: 1.5x everywhere
#   is still not met.
# - On the course data AdamW and SGD were level at 550 iterations at AdamW's old rate; with its
#   defaults now AdamW leads at 550 on the course data and on `letters`, `cells`, `aerial` and
#   `tiles` (run after the move), and is level on `signs` (`bench/optimizer_switch.py --iters
#   550`): the switch moved from 800 to 550, so `python -m fcos_lib train --iters 704`, the equal
#   wall-clock length on `signs` on a fast hour, trains with AdamW now (0.348, 1.55x the peer).
# - AdamW's rate with the recipe's short warm-up trades datasets as the flips do: twice the rate
#   lifts `letters` to 1.32x the peer and drops `signs` to 0.95x. With a warm-up of 250 iterations
#   twice the rate leads 1e-3 on `signs` and `letters` (both seeds), is level on `tiles` and
#   `cells` (one seed each way), and leads on both seeds of `aerial`, a fifth dataset made for
#   this one decision: AdamW's defaults are lr 2e-3 and a 250-iteration warm-up now. Neither change
#   wins alone (the warm-up alone is level at 1e-3; the rate alone loses `signs`). The issue's
#   command stands at 1.499x, 3.04x, 1.31x, 1.41x and 1.20x the peer (NMS 0.5; a re-run of the
#   benchmark on `signs`: 1.55x, seed 0 not repeating to the digit): 1.5x everywhere is still not
#   met.
# - NMS at 0.5 instead of the paper's 0.6 raises mAP@0.5 on every one of 23 trained checkpoints
#   re-scored (the main job's VOC07 0.723 to 0.737) and leaves mAP@[.5:.95] as it was: chapter
#   08's `NMS_THRESH` is 0.5 now. Against the peer at its own 0.6 the recipe stands at 1.27x,
#   1.62x and 1.06x.
# - The gap on `signs` was the training recipe: the course model trained as the peer is trained
#   reaches 0.272 (0.98x). Its ReLU deltas are not the answer: they died on one seed in two.
# - Flips depend on the data: they cost `letters` (mirrored glyphs) and help `tiles`. Scale jitter,
#   which changes no label, does not replace them (`letters` 0.124 without it, 0.092 (0.089-0.095) with
#   it). With `--no-hflip` the recipe reaches 1.43x on `letters`, and 1.58x with `--ema-decay off`
#   too: the EMA that wins with flips loses there without them.
# - The levers before this one changed the training; the one that moved `aerial` most changes the
#   model: an FPN level p2 at stride 4 gives boxes of a few pixels positives of their own. At the
#   full budget, two seeds (NMS 0.6): `aerial` 0.871 against 0.733 (1.43x the peer, from 1.20x),
#   `letters` 0.124 against 0.109 (1.42x, from 1.25x), `cells` 0.612 against 0.445 (1.91x, from
#   1.39x), `signs` 0.595 against 0.407 (2.15x, from 1.47x); the main job VOC07 0.751 against 0.737
#   (NMS 0.5), `tiles` 0.193 against 0.169 (one seed of two behind). Ahead per iteration on every
#   dataset, but each step takes twice as long, and in the same training time (600 s on `signs`)
#   p2 scores 0.186 against the default's 0.348. Offered as `--p2`, not the default. With two
#   convolutions in each head stem its step costs 1.5x instead of 2x, but it keeps 60 % of the gain
#   on `aerial` (0.816) and still loses in equal time (0.260 with AdamW, 0.198 with SGD).
# - Where the errors are: on `letters` and `tiles` more than half of the best detections are in the
#   right place with the wrong class. p2 cut `aerial`'s wrong class from 43 % to 17 % on the
#   screen; block1's detail stacked into p3 (`c2_passthrough`, the levels stay p3-p5) keeps part of
#   that for 3 % of the step, and leads on the mean of all five held-out datasets (`cells` 0.532
#   against 0.445, `aerial` 0.760 against 0.733, `signs` 0.425 against 0.407 on every seed;
#   `tiles` and `letters` one seed each way). It is the default now for runs from scratch of 550 to
#   10,000 iterations: the issue's command stands at **1.56x, 3.45x, 1.32x, 1.69x and 1.25x** the
#   peer (`signs`, `tiles`, `letters`, `cells`, `aerial`; NMS 0.5). `letters` and `aerial` still
#   miss 1.5x; on `letters` the classifier is what is left.
# - The focal loss's exponent is not the classifier's lever: on `letters`, `γ = 1` and `γ = 3` score
#   0.108 and 0.106 against the paper's 2 at 0.112 (two seeds each), and move the best detections
#   between wrong class and background without making more of them right.
# - `bench/results/ablations.json` holds every run; `make ablations` re-runs what is missing and
#   re-executes this chapter.
