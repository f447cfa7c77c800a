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
# # 00 · Boxes and data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/00_boxes_and_data.ipynb)
#
# Every later chapter moves boxes around: it matches them to feature-map locations, turns them
# into regression targets, decodes predictions back into them and scores them. One mistake in
# the box format (a swapped axis, a 1-based pixel, a box in the wrong image's pixels) silently
# ruins all of it. So this chapter fixes the format once, and builds the data the course trains on:
#
# 1. the **box format** used everywhere, and how PASCAL VOC's XML files store boxes;
# 2. a **generated dataset** in the VOC folder layout, small enough to train FCOS from scratch on
#    a laptop CPU in minutes, and the course's default everywhere (notebooks, tests, CLI);
# 3. **one loader** for any VOC-layout folder (the real PASCAL VOC, the generated set, your own
#    LabelImg/CVAT export), with the letterbox resize and the batch padding;
# 4. **errors that say what to fix** when a folder, file or box is wrong.

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
#| default_exp data

# %% [markdown]
# ## The box format
#
# A box is `(x1, y1, x2, y2)`: float, **absolute pixels**, **0-based**, measured on the pixel
# *edges*. The image's top-left corner is `(0, 0)` and its bottom-right corner is `(W, H)`, so a box
# that covers the whole image is `(0, 0, W, H)` and its width is `x2 - x1`. A valid box has
# `0 <= x1 < x2 <= W` and `0 <= y1 < y2 <= H`.
#
# The ground truth of one image is a `(N, 5)` tensor with rows `(x1, y1, x2, y2, c)`, the class
# index `c` in `[0, C)`. Images hold different numbers of objects, so a batch is padded to the
# largest `N` with rows of `-1`: `(B, N, 5)`. A row is padding when its class is `-1`.
#
# Dimension letters, the same in every chapter: `B` images, `N` boxes per image (padded), `C`
# classes, `H, W` image height and width.

# %%
#| export env
"""Where the course runs: the run mode, the offline switch, the folder that holds datasets.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py). The run mode is decided here and
nowhere else; every module that could reach the network (ImageNet weights in chapter 01, PASCAL
VOC in chapter 00) asks `is_offline()` first.
"""
import os
from contextlib import contextmanager
from pathlib import Path

RUN_MODES = ("offline", "course", "voc")


def is_offline() -> bool:
    """True when the environment variable FCOS_OFFLINE is "1": then nothing is ever downloaded."""
    return os.environ.get("FCOS_OFFLINE", "0") == "1"


@contextmanager
def offline_only():
    """Inside the block FCOS_OFFLINE=1, so nothing downloads; the previous value comes back after."""
    before = os.environ.get("FCOS_OFFLINE")
    os.environ["FCOS_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["FCOS_OFFLINE"]
        else:
            os.environ["FCOS_OFFLINE"] = before


def _has_cuda() -> bool:
    import torch  # imported here: the rest of this module needs no torch

    return torch.cuda.is_available()


def run_mode() -> tuple[str, str]:
    """The course's run mode and why it was chosen: ("offline" | "course" | "voc", reason).

    - "offline": FCOS_OFFLINE=1 (CI). The course dataset, the CPU, nothing downloaded.
    - "course": the default without a CUDA GPU. The course dataset, minutes on a CPU.
    - "voc": the default with a CUDA GPU. PASCAL VOC 2007 (downloaded if it is not on disk).
    FCOS_MODE=offline|course|voc asks for a mode explicitly; FCOS_OFFLINE=1 wins over it.
    """
    if is_offline():
        return "offline", "FCOS_OFFLINE=1"
    asked = os.environ.get("FCOS_MODE", "").strip().lower()
    if asked:
        if asked not in RUN_MODES:
            raise ValueError(f"FCOS_MODE={asked!r} is not a run mode; use one of {', '.join(RUN_MODES)} (or unset it)")
        return asked, f"FCOS_MODE={asked}"
    if _has_cuda():
        return "voc", "a CUDA GPU is available; FCOS_MODE=course trains on the course dataset instead"
    return "course", "no CUDA GPU; FCOS_MODE=voc trains on PASCAL VOC anyway (hours on a CPU)"


def describe_run_mode() -> str:
    """One line for a notebook's first output: the run mode, and how to change it."""
    mode, reason = run_mode()
    return f"run mode: {mode} ({reason})"


def default_data_dir() -> Path:
    """Where datasets live: $FCOS_DATA_DIR if set, else ~/.cache/fcos_lib."""
    env = os.environ.get("FCOS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fcos_lib"

# %% [markdown]
# The course runs in one of three **run modes**, chosen once, by `run_mode()`, and printed at the
# top of the chapters that depend on it (this one and chapter 09):
#
# | mode | when | data | training in chapter 09 |
# |---|---|---|---|
# | `offline` | `FCOS_OFFLINE=1` (CI, `make test`) | the generated course dataset | the main job, CPU, minutes; nothing is downloaded |
# | `course` | no CUDA GPU (a laptop, a CPU-only Colab runtime) | the course dataset | the main job, minutes; GPU if you ask for this mode on one |
# | `voc` | a CUDA GPU, or `FCOS_MODE=voc` | PASCAL VOC 2007, downloaded once (911 MB) | the full recipe, 9,000 iterations on the GPU (its time is not yet measured by this project) |
#
# `FCOS_MODE=offline|course|voc` overrides the choice. Cells that only *illustrate* something
# (an error message, a folder layout) never touch the network, whatever the mode.

# %%
print(describe_run_mode())

# %%
#| export voc
"""The PASCAL VOC format: XML annotations, the folder layout, split files, the download.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py). The VOC conventions follow the
PASCAL VOC devkit (Everingham et al. 2010): 1-based inclusive pixel indices in the XML, converted
here to the course's box contract.

Box contract: (x1, y1, x2, y2) float, absolute 0-based pixels measured on pixel edges,
0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H. Letters: N boxes per image, C classes.
"""
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from fcos_lib.env import default_data_dir, is_offline


class DatasetError(ValueError):
    """A dataset folder, split file, annotation or image that cannot be used as given.

    The message names the file, says what was found and how to fix it; the CLI prints it. `kind`
    groups problems of one sort ("broken box", "missing image", ...) and `file` names the file, so
    that a check over thousands of files reports them all at once (see `grouped_error`);
    `problems` holds the single errors when this error groups several.
    """

    def __init__(self, message: str, kind: str | None = None, file=None, problems: list | None = None):
        super().__init__(message)
        self.kind, self.file, self.problems = kind, file, problems or [self]


# Problems a --skip-bad-boxes run may skip (the image is left out, and reported), and the rest.
SKIPPABLE_KINDS = ("broken box", "box outside the image")


def grouped_error(problems: list, where: str, examples: int = 3) -> DatasetError:
    """One DatasetError for many: one line per kind, with its count and the first few files.

    A single problem keeps its own message, so a one-off mistake still reads as one line.
    """
    if len(problems) == 1:
        return problems[0]
    by_kind: dict[str, list] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind or "other", []).append(problem)
    lines = [f"{len(problems)} problems in {where}; all of them, grouped:"]
    for kind, group in by_kind.items():
        lines.append(f"  {len(group)} x {kind}: " + " | ".join(str(p) for p in group[:examples])
                     + (f" | ... and {len(group) - examples} more" if len(group) > examples else ""))
    if any(kind in SKIPPABLE_KINDS for kind in by_kind):
        lines.append("  Fix the files, or pass --skip-bad-boxes (skip_bad_boxes=True) to leave the images "
                     "with broken boxes out; each one is then reported.")
    return DatasetError("\n".join(lines), kind="several", problems=list(problems))


# The 20 PASCAL VOC classes, in the devkit's (alphabetical) order.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# %%
assert issubclass(DatasetError, ValueError)  # code that catches ValueError also catches it
print(len(VOC_CLASSES), list(VOC_CLASSES) == sorted(VOC_CLASSES))
print("offline:", is_offline())

# %% [markdown]
# ## How PASCAL VOC stores boxes
#
# A VOC dataset is a folder with three parts:
#
# ```
# JPEGImages/000005.jpg            the images
# Annotations/000005.xml           one XML file per image
# ImageSets/Main/train.txt         one image id per line; also val.txt, trainval.txt (test.txt)
# ```
#
# An annotation lists the image size and the objects. A box is stored as **1-based, inclusive
# pixel indices**: `xmin=1` is the first pixel column and `xmax` is the last column the object
# covers, so the object is `xmax - xmin + 1` pixels wide. `difficult=1` marks objects the
# annotators found hard to recognise (tiny, heavily occluded); VOC's evaluation ignores them.
#
# **Our conversion** (the same as detectron2's VOC loader): `x1 = xmin - 1`, `y1 = ymin - 1`,
# `x2 = xmax`, `y2 = ymax`. Pixel column `i` (1-based) spans the edges `[i - 1, i]`, so the box
# `[xmin - 1, xmax]` covers exactly the annotated pixels, its width `x2 - x1` equals the pixel
# count, and a box over the whole image becomes `(0, 0, W, H)`.
#
# A worked example, an image 200 px wide and 100 px high:
#
# | object | xmin ymin xmax ymax (XML) | `(x1, y1, x2, y2)` | size |
# |---|---|---|---|
# | dog | 1 1 50 40 | (0, 0, 50, 40) | 50 x 40 |
# | cat, difficult | 101 51 200 100 | (100, 50, 200, 100) | 100 x 50, touches the right and bottom edges |

# %%
EXAMPLE_XML = """<annotation>
  <filename>example.jpg</filename>
  <size><width>200</width><height>100</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
  <object><name>cat</name><difficult>1</difficult>
    <bndbox><xmin>101</xmin><ymin>51</ymin><xmax>200</xmax><ymax>100</ymax></bndbox></object>
</annotation>
"""

# %% [markdown]
# The parser checks every box on the way in, because a bad box found here costs one line of
# error, while a bad box found in the loss costs a NaN three chapters later.
#
# One tolerance, because real exports need it: a box may cross the image border **a little**, and
# is then clipped to the image. "A little" is 2 % of that side of the image, and at least 2 px
# (`border_tolerance`). Annotators drag boxes to the edge and overshoot by a pixel or two, and
# exporters disagree on 0- or 1-based coordinates (LabelImg and CVAT can write `xmin=0`), so real
# exports hold boxes like that. A box further out is not an overshoot: the
# box, the `<size>` or the image's rotation is wrong, and the parser says so. A box with a `nan`
# coordinate, or with no area (inverted, or empty once clipped), is refused the same way.

# %%
#| export voc
def _parse_xml(xml_path: Path) -> ET.Element:
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DatasetError(
            f"annotation {xml_path} is not valid XML ({err}); re-export it from your labelling tool",
            kind="invalid annotation", file=xml_path,
        ) from err


def _xml_number(node: ET.Element, tag: str, xml_path: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DatasetError(
            f"annotation {xml_path}: <{tag}> must be a number, got {text!r}; "
            "fix the XML or re-export it", kind="invalid annotation", file=xml_path,
        ) from None


def border_tolerance(side: int) -> float:
    """How far (px) a box may cross the border of an image side of `side` px and still be clipped."""
    return max(2.0, 0.02 * side)


def parse_voc_annotation(xml_path, class_names) -> dict:
    """Read one VOC XML annotation, converting its 1-based boxes to the course's 0-based boxes.

    VOC stores 1-based inclusive pixel indices; we return edges: x1 = xmin - 1, y1 = ymin - 1,
    x2 = xmax, y2 = ymax, so the width x2 - x1 is the annotated pixel count and a full-image box
    is (0, 0, W, H). A box crossing the border by at most border_tolerance(side) is clipped to the
    image; further out it is an error.

    Args:
        xml_path: path to the .xml file.
        class_names: the C class names; an object's label is the index of its name in this list.
    Returns:
        dict(boxes (N, 4) float32 xyxy 0-based image pixels, labels (N,) int64 in [0, C),
        difficult (N,) bool, size (H, W) ints from <size>, clipped (N,) bool: boxes that crossed
        the border and were clipped).
    Raises:
        DatasetError naming the file and the object, with a `kind`: "invalid annotation" (bad XML,
        no <size>, a field that is not a number), "unknown class", "broken box" (a non-finite
        coordinate, no area), "box outside the image".
    """
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    size = root.find("size")
    if size is None:
        raise DatasetError(f"annotation {xml_path} has no <size>; add <size><width>W</width><height>H</height></size>",
                           kind="invalid annotation", file=xml_path)
    W, H = (_xml_number(size, tag, xml_path) for tag in ("width", "height"))
    if not (W == int(W) > 0 and H == int(H) > 0):
        raise DatasetError(f"annotation {xml_path}: <size> is {W:g} x {H:g}; write the image's real width and height",
                           kind="invalid annotation", file=xml_path)
    W, H = int(W), int(H)
    class_names = list(class_names)
    boxes, labels, difficult, clipped = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise DatasetError(
                f"annotation {xml_path}: object {k} has class name {name!r}, which is not one of the "
                f"{len(class_names)} known classes {class_names}; fix the name, or list it in the classes "
                "(--classes; leave it out to read the names from the annotations)",
                kind="unknown class", file=xml_path)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"annotation {xml_path}: object {k} ({name}) has no <bndbox>; add one or delete the object",
                               kind="broken box", file=xml_path)
        xmin, ymin, xmax, ymax = (_xml_number(bndbox, t, xml_path) for t in ("xmin", "ymin", "xmax", "ymax"))
        x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax  # 1-based inclusive indices -> 0-based edges
        described = f"object {k} ({name}) xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise DatasetError(f"annotation {xml_path}: {described} has a coordinate that is not a finite number; "
                               "fix or delete the object", kind="broken box", file=xml_path)
        if x2 <= x1 or y2 <= y1:
            raise DatasetError(
                f"annotation {xml_path}: {described} is degenerate: it gives (x1, y1, x2, y2)=({x1:g}, {y1:g}, "
                f"{x2:g}, {y2:g}), but a box needs x2 > x1 and y2 > y1; fix or delete the object",
                kind="broken box", file=xml_path)
        tol_x, tol_y = border_tolerance(W), border_tolerance(H)
        if x1 < -tol_x or y1 < -tol_y or x2 > W + tol_x or y2 > H + tol_y:
            raise DatasetError(
                f"annotation {xml_path}: {described} lies outside the {W} x {H} image by more than the "
                f"{tol_x:g} x {tol_y:g} px tolerance (1-based: 1 <= xmin, xmax <= {W}, 1 <= ymin, ymax <= {H}); "
                "fix the box or the <size>, or check the image's rotation", kind="box outside the image", file=xml_path)
        inside = (max(x1, 0.0), max(y1, 0.0), min(x2, float(W)), min(y2, float(H)))
        if inside[2] <= inside[0] or inside[3] <= inside[1]:  # the box lived only beyond the border
            raise DatasetError(f"annotation {xml_path}: {described} is empty once clipped to the {W} x {H} image; "
                               "fix or delete the object", kind="broken box", file=xml_path)
        boxes.append(list(inside))
        clipped.append(inside != (x1, y1, x2, y2))
        labels.append(class_names.index(name))
        difficult.append(int(_xml_number(obj, "difficult", xml_path)) if obj.find("difficult") is not None else 0)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # (N, 4)
        "labels": torch.tensor(labels, dtype=torch.int64),  # (N,)
        "difficult": torch.tensor(difficult, dtype=torch.bool),  # (N,)
        "size": (H, W),
        "clipped": torch.tensor(clipped, dtype=torch.bool),  # (N,)
    }

# %%
import tempfile

example_dir = Path(tempfile.mkdtemp())
(example_dir / "example.xml").write_text(EXAMPLE_XML)
ann = parse_voc_annotation(example_dir / "example.xml", ["cat", "dog"])
print(ann["boxes"].tolist())
print(ann["labels"].tolist(), ann["difficult"].tolist(), ann["size"])
# The table above, worked out by hand: subtract 1 from xmin and ymin, keep xmax and ymax.
assert ann["boxes"].tolist() == [[0, 0, 50, 40], [100, 50, 200, 100]]
assert ann["labels"].tolist() == [1, 0] and ann["difficult"].tolist() == [False, True]
assert ann["size"] == (100, 200)  # (H, W), the order torch uses for images

# %% [markdown]
# ## A dataset generated on the spot
#
# PASCAL VOC 2007 is a 911 MB download (trainval 460 MB + test 451 MB) and needs a GPU to train
# on. The course needs a dataset that is
# *offline* (CI has no network), *deterministic* (stored notebook outputs must not change), and
# *learnable from scratch on a CPU in minutes*. So we draw one: five classes, each with its own
# **shape and colour family** (jittered), on mildly textured, gradient backgrounds:
#
# | class | shape | colour family |
# |---|---|---|
# | cross | plus sign | purple |
# | ellipse | ellipse | red |
# | rectangle | rectangle | blue |
# | star | five-pointed star, rotated | yellow |
# | triangle | triangle pointing up, down, left or right | green |
#
# What makes it a useful detection set rather than a toy:
#
# - **images of varied size and aspect** (long side 224-320 px, short side 62-100% of it, portrait
#   or landscape), so the letterbox resize matters;
# - **sizes for all three FPN levels.** FCOS sends a location to a level by the largest of its
#   four distances to the box sides, `max(l, t, r, b)`: p3 `(0, 64)`, p4 `[64, 128)`, p5
#   `[128, inf)`. Sizes are drawn relative to the 224-px network input: small (10-64 px), medium
#   (64-128 px) and large (132-215 px, at most one per image);
# - **aspect ratios from 1:1 to 1:2.5**, with the short side at least 12 px (`MIN_SHORT_SIDE`) unless
#   the object is tiny: a box thinner than the p3 stride (8 px) could miss every location, and a
#   box that no location learns is a box the model can never find;
# - overlapping objects (each stays at least 30% visible);
# - **empty images** (every 12th image: background only);
# - **`difficult` objects**, as in VOC: tiny ones (under 10 px at 224) and heavily occluded ones
#   (under 45% visible). Their boxes are the full object, as VOC annotates occluded objects.
#
# Every image has its own random stream `(seed, split, index)`, so image 5 of `train` is the same
# whatever `num_train` is. The folder is built in a temporary sibling, then renamed into place,
# with a `.done` file holding the parameters: a complete folder with the same parameters is
# reused, and an interrupted run leaves nothing half-written under the final name.

# %%
#| export course_data
"""The course dataset: PASCAL-VOC-layout detection data drawn on the spot, offline and deterministic.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py). Five shape classes on textured
backgrounds, sized for all three FPN levels of a 224-px input; see make_course_dataset.
"""
import colorsys
import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fcos_lib.env import default_data_dir
from fcos_lib.voc import DatasetError

# The generated course dataset's classes, sorted like read_class_names() returns them.
COURSE_CLASSES = ("cross", "ellipse", "rectangle", "star", "triangle")
_GENERATOR_VERSION = 2  # 2: short sides >= MIN_SHORT_SIDE, so every box can be learnt
# The short side of an object that is not difficult, in pixels of the 224-px input: wider than one
# p3 stride (8 px), so the box always holds a p3 location near its centre (chapter 04 matches it).
MIN_SHORT_SIDE = 12
_REFERENCE_SIZE = 224  # object sizes are drawn in pixels of a 224-px letterboxed input
_HUES = {"cross": 285.0, "ellipse": 2.0, "rectangle": 215.0, "star": 50.0, "triangle": 125.0}  # degrees
_TRIANGLES = ("up", "down", "left", "right")


def _hsv(rng: np.random.Generator, hue: float, sat: tuple, val: tuple) -> np.ndarray:
    """One RGB colour (3,) in [0, 255] with the hue in degrees and saturation/value drawn in ranges."""
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb) * 255


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A muted linear gradient with soft blotches and grain: (H, W, 3) float in about [0, 255]."""
    hue = rng.uniform(0, 360)
    c0 = _hsv(rng, hue, (0.0, 0.18), (0.35, 0.85))
    c1 = _hsv(rng, hue + rng.uniform(-40, 40), (0.0, 0.18), (0.35, 0.85))
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(W, dtype=np.float32) * math.cos(angle)  # (W,)
    ys = np.arange(H, dtype=np.float32) * math.sin(angle)  # (H,)
    t = ys[:, None] + xs[None, :]  # (H, W)
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)  # in [0, 1]
    image = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]  # (H, W, 3)
    coarse = rng.normal(0.0, 1.0, (5, 5)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((W, H), Image.BILINEAR))  # (H, W)
    image += 10.0 * blotches[..., None]
    image += 4.0 * rng.standard_normal((H, W, 3), dtype=np.float32)  # grain
    return image


def _shape_mask(rng: np.random.Generator, kind: str, w: int, h: int) -> np.ndarray:
    """The filled shape of class `kind` stretched over a w x h patch: (h, w) bool."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "ellipse":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif kind == "rectangle":
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif kind == "triangle":
        apex = {"up": [(0, h - 1), (w - 1, h - 1), ((w - 1) / 2, 0)],
                "down": [(0, 0), (w - 1, 0), ((w - 1) / 2, h - 1)],
                "left": [(w - 1, 0), (w - 1, h - 1), (0, (h - 1) / 2)],
                "right": [(0, 0), (0, h - 1), (w - 1, (h - 1) / 2)]}
        draw.polygon(apex[_TRIANGLES[rng.integers(4)]], fill=255)
    elif kind == "cross":
        tw, th = max(1, round(w * rng.uniform(0.28, 0.4))), max(1, round(h * rng.uniform(0.28, 0.4)))
        x0, y0 = (w - tw) // 2, (h - th) // 2
        draw.rectangle([x0, 0, x0 + tw - 1, h - 1], fill=255)
        draw.rectangle([0, y0, w - 1, y0 + th - 1], fill=255)
    elif kind == "star":
        k = np.arange(10)
        radius = np.where(k % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        angle = rng.uniform(0, 2 * math.pi / 5) + k * math.pi / 5
        px, py = radius * np.cos(angle), radius * np.sin(angle)
        px = (px - px.min()) / (px.max() - px.min()) * (w - 1)  # stretch the star over the patch
        py = (py - py.min()) / (py.max() - py.min()) * (h - 1)
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=255)
    return np.asarray(mask) > 0


def _draw_size(rng: np.random.Generator, allow_large: bool) -> tuple[float, bool]:
    """An object's longest side in pixels of the 224-px input, and whether it is tiny."""
    u = rng.random()
    if u < 0.03:
        return rng.uniform(5, 10), True  # tiny: marked difficult
    if u < 0.50 or (u >= 0.78 and not allow_large):
        return rng.uniform(10, 64), False  # p3
    if u < 0.78:
        return rng.uniform(64, 128), False  # p4
    return rng.uniform(132, 215), False  # p5


def _generate_image(rng: np.random.Generator, empty: bool) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 and its objects (0-based edge boxes, name, difficult)."""
    long_side = int(rng.integers(224, 321))
    short_side = int(round(long_side * rng.uniform(0.62, 1.0)))
    W, H = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    to_image = long_side / _REFERENCE_SIZE  # 224-px sizes -> this image's pixels
    canvas = _background(rng, H, W)
    owner = np.full((H, W), -1, dtype=np.int16)  # which object shows at each pixel
    objects, visible = [], []
    num_objects = 0 if empty else int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.2, 0.25, 0.2, 0.15, 0.12, 0.08]))
    for _ in range(num_objects):
        kind = COURSE_CLASSES[rng.integers(len(COURSE_CLASSES))]
        allow_large = not any(o["large"] for o in objects)
        for _attempt in range(20):
            side, tiny = _draw_size(rng, allow_large)
            # long side / short side, at most 2.5, and small enough that the short side stays >= MIN_SHORT_SIDE
            max_aspect = 2.5 if tiny else min(2.5, max(1.0, side / MIN_SHORT_SIDE))
            aspect = math.exp(rng.uniform(0.0, math.log(max_aspect)))
            side = side * to_image  # 224-px input pixels -> this image's pixels
            w, h = side, side / aspect
            if rng.random() < 0.5:
                w, h = h, w
            if w > W - 2 or h > H - 2:
                w, h = h, w  # lay a long object along the image's long side
            shrink = min(1.0, (W - 2) / w, (H - 2) / h)
            w, h = max(3, int(round(w * shrink))), max(3, int(round(h * shrink)))
            x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            mask = _shape_mask(rng, kind, w, h)  # (h, w)
            covered = owner[y:y + h, x:x + w][mask]
            hidden = np.bincount(covered[covered >= 0], minlength=len(objects))
            if all(visible[j] - hidden[j] >= 0.3 * objects[j]["area"] for j in range(len(objects))):
                break
        else:
            continue  # no place that keeps every object at least 30% visible
        colour = _hsv(rng, _HUES[kind] + rng.uniform(-12, 12), (0.55, 0.95), (0.55, 0.95))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 1.0 + rng.uniform(-0.2, 0.2) * (xx / w - 0.5) + rng.uniform(-0.2, 0.2) * (yy / h - 0.5)
        patch = colour * shade[..., None] + rng.normal(0.0, 5.0, (h, w, 3))  # (h, w, 3)
        region = canvas[y:y + h, x:x + w]
        region[mask] = patch[mask]
        for j in range(len(objects)):
            visible[j] -= int(hidden[j])
        owner[y:y + h, x:x + w][mask] = len(objects)
        ys, xs = np.nonzero(mask)  # the tight box of the drawn pixels, in edges
        objects.append({"name": kind, "box": (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1,
                                              y + int(ys.max()) + 1),
                        "area": int(mask.sum()), "tiny": tiny, "large": side / to_image > 128})
        visible.append(int(mask.sum()))
    for obj, vis in zip(objects, visible):
        obj["difficult"] = obj["tiny"] or vis < 0.45 * obj["area"]
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, objects


def _voc_xml(image_id: str, W: int, H: int, objects: list[dict]) -> str:
    """A VOC annotation; boxes go from 0-based edges back to 1-based inclusive indices (+1 on xmin, ymin)."""
    lines = ["<annotation>", "  <folder>course_voc</folder>", f"  <filename>{image_id}.jpg</filename>",
             f"  <size><width>{W}</width><height>{H}</height><depth>3</depth></size>", "  <segmented>0</segmented>"]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        lines += ["  <object>", f"    <name>{obj['name']}</name>", "    <pose>Unspecified</pose>",
                  "    <truncated>0</truncated>", f"    <difficult>{int(obj['difficult'])}</difficult>",
                  f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                  "  </object>"]
    return "\n".join(lines + ["</annotation>", ""])


def _write_course_dataset(folder: Path, num_train: int, num_val: int, seed: int) -> None:
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ids = {"train": [], "val": []}
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        for i in range(count):
            image_id = f"{split}_{i:05d}"
            rng = np.random.default_rng([seed, split_code, i])  # one stream per image
            image, objects = _generate_image(rng, empty=(i % 12 == 3))
            Image.fromarray(image).save(folder / "JPEGImages" / f"{image_id}.jpg", quality=92)
            H, W = image.shape[:2]
            (folder / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, W, H, objects))
            ids[split].append(image_id)
    ids["trainval"] = ids["train"] + ids["val"]
    for split, split_ids in ids.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in split_ids))


def _read_done(folder: Path):
    try:
        return json.loads((folder / ".done").read_text())
    except (OSError, ValueError):
        return None


def make_course_dataset(root=None, num_train: int = 600, num_val: int = 150, seed: int = 0) -> Path:
    """Write the course's generated detection dataset in the PASCAL VOC layout, or reuse it.

    Five classes (COURSE_CLASSES), each a distinct shape and colour family, on textured
    backgrounds; images 224-320 px on the long side; objects small, medium and large at a 224-px
    input (all three FPN levels), some overlapping, every 12th image empty, tiny or heavily
    occluded objects marked difficult. Deterministic: the same arguments give the same files.

    Args:
        root: target folder; default default_data_dir() / "course_voc".
        num_train, num_val: images in ImageSets/Main/train.txt and val.txt (trainval.txt: both).
        seed: the generator's seed.
    Returns:
        root, holding JPEGImages/, Annotations/, ImageSets/Main/{train,val,trainval}.txt and a
        .done file with the parameters. A complete folder with the same parameters is reused;
        one with other parameters is regenerated.
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"make_course_dataset: {name} must be an int >= {low}, got {value!r}")
    root = Path(root).expanduser() if root is not None else default_data_dir() / "course_voc"
    params = {"dataset": "fcos_lib course shapes", "version": _GENERATOR_VERSION,
              "num_train": int(num_train), "num_val": int(num_val), "seed": int(seed)}
    if _read_done(root) == params:
        return root
    if root.exists() and any(root.iterdir()) and _read_done(root) is None:
        raise DatasetError(
            f"make_course_dataset: root={root} exists, is not empty and has no .done file from "
            "make_course_dataset, so it is not overwritten; pass another root or delete the folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a run killed over an hour ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_course_dataset(tmp, num_train, num_val, seed)
        (tmp / ".done").write_text(json.dumps(params, sort_keys=True) + "\n")  # written last
        if _read_done(root) == params:  # another process (a parallel test worker) finished first
            return root
        if root.exists():  # an empty folder or an older dataset: move it aside first
            trash = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
            os.replace(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, root)
    except OSError:
        # Another process (e.g. a parallel test worker) may have finished the same folder first.
        if _read_done(root) != params:
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

# %% [markdown]
# Generate the default dataset (600 train and 150 val images). The first call draws all 750
# images (the whole of this chapter, generation included, ran in 17 s in `make test`'s course-mode
# run, which starts from an empty data folder); later calls, here and in every other chapter, find
# the `.done` file and return at once, as the time printed below shows when the data is there.

# %% tags=["nbval-ignore-output"]
start = time.perf_counter()
root = make_course_dataset()
print(f"ready in {time.perf_counter() - start:.2f} s")

# %%
print(root.name, sorted(p.name for p in root.iterdir()))
print({s: len((root / "ImageSets/Main" / f"{s}.txt").read_text().split()) for s in ("train", "val", "trainval")})
print((root / ".done").read_text().strip())
assert make_course_dataset() == root  # reused, not regenerated

# %% [markdown]
# The annotations are plain VOC XML; here is the start of one:

# %%
print("\n".join((root / "Annotations" / "train_00000.xml").read_text().splitlines()[:12]))

# %% [markdown]
# ## One loader for every VOC-layout folder
#
# `VOCDataset` reads any folder in the VOC layout: the real PASCAL VOC, the generated set, or
# your own export from LabelImg or CVAT. Class names come from a list you pass or, with
# `class_names=None`, from the annotations themselves (`read_class_names`, sorted, read from
# `trainval` when it exists so that `train` and `val` get the same label indices).
#
# The network wants square `S x S` inputs with `S` divisible by 32. The **letterbox** scales the
# longest side to `S`, keeps the aspect ratio, and pads the bottom and right. Padding only on the
# bottom and right keeps the origin where it was, so a box's coordinates are only scaled, never
# shifted. The padding colour is the ImageNet mean, so after the backbone normalises the input
# the padding is about 0, like torchvision's detection models, which pad after normalising.
#
# torchvision's `transforms.v2` does the box maths: wrapping the boxes in
# `tv_tensors.BoundingBoxes` makes `Resize`, `RandomHorizontalFlip` and `Pad` move them together
# with the pixels. The flip (`augment=True`) happens before the padding, so the padding stays on
# the right.

# %% [markdown]
# The code comes in three modules, one concept each, so that you know where to look:
#
# - `fcos_lib.voc`: the VOC **folder layout**: is this a VOC folder, which ids does a split list,
#   where is an id's annotation and image file;
# - `fcos_lib.transforms`: the **letterbox** (resize and pad, and back);
# - `fcos_lib.data`: the **dataset** that ties them together, and the batches.

# %%
#| export voc
def check_voc_root(root) -> Path:
    """root as a Path if it holds ImageSets/Main; otherwise a DatasetError that says what to pass."""
    root = Path(root).expanduser()
    if (root / "ImageSets" / "Main").is_dir():
        return root
    hint = ""
    found = sorted(root.glob("VOCdevkit/VOC*"))
    if found:
        hint = f" It contains {found[0].relative_to(root)}: pass root={found[0]}."
    raise DatasetError(
        f"root={root} is not a VOC-layout dataset folder (no ImageSets/Main inside)." + hint +
        " Generate the offline course dataset with fcos_lib.course_data.make_course_dataset(root), or "
        "download PASCAL VOC with fcos_lib.voc.download_voc(root) (needs internet, FCOS_OFFLINE unset)."
    )


def read_split(root: Path, split: str) -> list[str]:
    """The image ids listed in root/ImageSets/Main/<split>.txt (first word of each non-empty line).

    The file is read as UTF-8 with an optional byte-order mark (Windows tools write one) and any
    line ending; an empty file gives [] (VOCDataset refuses an empty split).
    """
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(
            f"split={split!r}: {split_file} does not exist; the splits in {split_file.parent} are "
            f"{list(split_sizes(root))}. Pass one of them, or write {split}.txt with one image id per line.",
            kind="missing split", file=split_file,
        )
    text = split_file.read_bytes().decode("utf-8-sig", errors="replace")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def empty_split_error(root: Path, split: str) -> DatasetError:
    """The error for a split file that lists no image ids, naming the splits that do."""
    return DatasetError(
        f"split {split!r} is empty: {root}/ImageSets/Main/{split}.txt lists no image ids; the splits "
        f"with images are {[s for s, n in split_sizes(root).items() if n]}. Pass one of them "
        "(for validation: --val-split NAME), or list ids in the file.", kind="empty split", file=root)


def split_sizes(root: Path) -> dict[str, int]:
    """{split: number of image ids} for the plain split files in root/ImageSets/Main.

    VOC also has per-class files (dog_train.txt); they are left out.
    """
    folder = Path(root) / "ImageSets" / "Main"
    return {p.stem: len(read_split(root, p.stem)) for p in sorted(folder.glob("*.txt")) if "_" not in p.stem}


def annotation_path(root: Path, split: str, image_id: str) -> Path:
    """root/Annotations/<image_id>.xml, or a DatasetError naming the split that lists the id."""
    xml_path = root / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        raise DatasetError(
            f"ImageSets/Main/{split}.txt lists image id {image_id!r}, but {xml_path} does not exist; "
            f"restore the annotation or remove the id from {split}.txt", kind="missing annotation", file=xml_path,
        )
    return xml_path


def read_class_names(root, split: str = "trainval") -> list[str]:
    """The sorted, unique object names in the annotations of one split of a VOC-layout folder.

    On PASCAL VOC this gives VOC_CLASSES; on the generated set, COURSE_CLASSES.
    """
    root = check_voc_root(root)
    names = set()
    image_ids = read_split(root, split)
    if not image_ids:
        raise empty_split_error(root, split)
    for image_id in image_ids:
        try:
            objects = _parse_xml(annotation_path(root, split, image_id)).findall("object")
        except DatasetError:
            continue  # a missing or broken file: VOCDataset reports it, with all the others
        names.update((obj.findtext("name") or "").strip() for obj in objects)
    names.discard("")
    if not names:
        raise DatasetError(
            f"the annotations of split {split!r} in {root} hold no objects, so the class names cannot be read "
            "from them; pass the names (--classes a,b on the command line, class_names=[...] in Python)",
            kind="no objects")
    return sorted(names)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def image_file(root: Path, split: str, image_id: str, xml_path: Path) -> Path:
    """The image file of one annotation: JPEGImages/<id>.jpg (.png, ...) or the XML's <filename>."""
    folder = root / "JPEGImages"
    candidates = [folder / f"{image_id}{s}" for s in IMAGE_SUFFIXES]
    filename = (_parse_xml(xml_path).findtext("filename") or "").strip()
    if filename:
        candidates.insert(1, folder / filename)  # exports may name images differently
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DatasetError(
            f"{xml_path.name} has no image: looked for {image_id}.jpg (or .png, .jpeg) and "
            f"{filename or 'its <filename>'} in {folder}; add the image or remove {image_id!r} "
            f"from ImageSets/Main/{split}.txt", kind="missing image", file=xml_path,
        )
    return found

# %% [markdown]
# The letterbox, for one image and its boxes:

# %%
#| export transforms
"""The letterbox: resize the longest side to S, pad to S x S, and map boxes back.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py). torchvision.transforms.v2 does
the box maths (tv_tensors.BoundingBoxes move with the pixels through Resize and Pad).

Box contract: (x1, y1, x2, y2) float, absolute 0-based pixels on pixel edges. Letters: K boxes,
S the square network input side, (H, W) the original image, (h, w) its letterboxed content.
"""
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

# ImageNet mean RGB: the padding becomes ~0 once the backbone normalises the image.
PAD_FILL = (124, 116, 104)


def resize_longest(image, boxes, S: int):
    """Scale the longest side to S, keeping the aspect ratio; boxes move with the pixels."""
    return v2.Resize(size=None, max_size=S)(image, boxes)


def pad_square(image, boxes, S: int):
    """Pad the bottom and right to S x S with the ImageNet mean; boxes are unchanged."""
    h, w = image.shape[-2:]
    return v2.Pad([0, 0, S - w, S - h], fill={tv_tensors.Image: PAD_FILL, "others": 0})(image, boxes)


def letterbox(image, image_size: int) -> tuple[torch.Tensor, dict]:
    """Letterbox one image exactly as VOCDataset does, for inference on image files.

    Args:
        image: a PIL image or a (3, H, W) uint8 tensor.
        image_size: S, a multiple of 32.
    Returns:
        (3, S, S) float32 image in [0, 1], and a dict with orig_size (H, W) and resized_size
        (h, w) that `boxes_to_original` accepts.
    """
    tensor = v2.functional.pil_to_tensor(image) if isinstance(image, Image.Image) else image
    if tensor.ndim != 3 or tensor.shape[0] != 3 or tensor.shape[-1] < 1 or tensor.shape[-2] < 1:
        raise ValueError(f"image must be RGB (3, H, W) with H, W >= 1, got shape {tuple(tensor.shape)}")
    no_boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=tuple(tensor.shape[-2:]))
    resized, _ = resize_longest(tv_tensors.Image(tensor), no_boxes, image_size)
    h, w = resized.shape[-2:]
    padded, _ = pad_square(resized, no_boxes, image_size)
    meta = {"orig_size": tuple(tensor.shape[-2:]), "resized_size": (int(h), int(w))}
    return v2.functional.to_dtype(padded.as_subclass(torch.Tensor), torch.float32, scale=True), meta

# %% [markdown]
# And the dataset. Every annotation is parsed in `__init__`, so a bad file stops the run at once,
# not hours into training.

# %%
#| export
"""The detection dataset over any VOC-layout folder, and batches of it.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py): VOCDataset (letterboxed images,
boxes in network-input pixels) and collate_detection ((B, N, 5) ground truth padded with -1).

Box contract: (x1, y1, x2, y2) float, absolute 0-based pixels measured on pixel edges,
0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H. Ground truth of one image: (N, 5) rows (x1, y1, x2, y2, c)
with c in [0, C); a batch: (B, N, 5) padded with rows of -1.
Letters: B images, N boxes per image, C classes, S the square network input side.
"""
from pathlib import Path

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from fcos_lib.transforms import pad_square, resize_longest
from fcos_lib.voc import (SKIPPABLE_KINDS, DatasetError, annotation_path, check_voc_root, empty_split_error,
                          grouped_error, image_file, parse_voc_annotation, read_class_names, read_split)


def load_image(path, upright: bool = True) -> Image.Image:
    """Open an image file as an RGB PIL image, with a clear error for a missing or unreadable file.

    upright=True applies the file's EXIF orientation (ImageOps.exif_transpose), so a phone photo
    comes out the way every viewer shows it; upright=False keeps the stored pixel grid.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a folder, not an image file", kind="unreadable image", file=path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist; check the path", kind="missing image", file=path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return (ImageOps.exif_transpose(im) if upright else im).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's errors for bad files
        raise DatasetError(
            f"cannot read image {path} ({type(err).__name__}: {err}); re-export or replace the file, "
            "or remove its id from the split file", kind="unreadable image", file=path,
        ) from err


# EXIF orientations 5-8 turn the picture by 90 degrees: width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)


def annotated_frame(image_path: Path, xml_size: tuple[int, int], verify: bool = False) -> bool:
    """Which pixel grid the annotator drew on: True = the upright photo (EXIF orientation applied).

    A phone stores a portrait photo as landscape pixels plus an EXIF tag that says "turn me". Some
    labelling tools show it turned, some do not, so the XML's <size> tells which frame its boxes
    are in: the upright size -> upright, the stored size -> stored. A 180-degree or mirrored tag
    keeps the size and the XML cannot tell; we take the upright frame, the one phones, browsers
    and most tools show. Reads only the file header, unless `verify`: then the image is decoded
    (at 1/8 scale for JPEG) so that a truncated file is found now.

    Raises DatasetError ("unreadable image", "size mismatch") naming the file.
    """
    try:
        with Image.open(image_path) as im:
            stored = im.size  # (W, H) of the stored pixels
            orientation = im.getexif().get(0x0112, 1)  # the EXIF Orientation tag
            if verify:
                im.draft("RGB", (max(1, stored[0] // 8), max(1, stored[1] // 8)))  # JPEG: decode at 1/8
                im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {image_path} ({type(err).__name__}: {err}); re-export or replace "
                           "the file, or remove its id from the split file", kind="unreadable image",
                           file=image_path) from err
    upright = stored[::-1] if orientation in _QUARTER_TURNS else stored
    H, W = xml_size
    if (W, H) == upright:
        return True
    if (W, H) == stored:
        return False
    turned = f" ({upright[0]} x {upright[1]} after its EXIF orientation)" if upright != stored else ""
    raise DatasetError(
        f"image {image_path} is {stored[0]} x {stored[1]} (W x H){turned} but its annotation's <size> says "
        f"{W} x {H}; fix the <size> or re-export", kind="size mismatch", file=image_path)


def _read_image(path: Path, upright: bool = True) -> torch.Tensor:
    """Decode an image file to (3, H, W) uint8 RGB."""
    return v2.functional.pil_to_tensor(load_image(path, upright))


class VOCDataset(Dataset):
    """A detection dataset over any PASCAL VOC-layout folder, letterboxed to S x S.

    Args:
        root: folder with JPEGImages/, Annotations/, ImageSets/Main/<split>.txt.
        split: the split file's name ("train", "val", "trainval", "test", ...).
        class_names: the C class names (label = index), a list or tuple of str; None reads them
            from the annotations of "trainval" (or of `split` when there is no trainval.txt), sorted.
        image_size: S, the square network input side; a multiple of 32.
        augment: random horizontal flips (training).
        image_dtype: torch.float32 (default): images in [0, 1], what the model takes; torch.uint8:
            the pixels as stored (0-255), 4x less memory and copying, for a training loop that
            converts whole batches on the device (fcos_lib.train does).
        in_memory: decode and resize every image once, in __init__, and keep it (uint8), so that
            a 2-vCPU machine keeps a GPU busy; about 3 * S * S bytes per image.
        skip_bad_boxes: leave out the images whose annotation has a broken box (a non-finite
            coordinate, no area, far outside the image) instead of refusing the split; each one
            is listed in `skipped` (image id, reason).
        verify_images: decode every image in __init__ (JPEGs at 1/8 scale), so that a truncated
            or corrupt file is found before training; otherwise only the file headers are read.
        progress: show a progress bar while the files are checked.

    Every annotation and every image header is checked in __init__ (the image's size against the
    XML's <size>, with its EXIF orientation: see annotated_frame), and all problems are reported
    together in one DatasetError (see voc.grouped_error), so a bad file fails at once, not hours
    into training. `annotations[i]` holds image i's boxes in image pixels (see
    parse_voc_annotation); `num_clipped_boxes` counts the boxes that crossed the border a little
    and were clipped.

    __getitem__(i) -> (image (3, S, S) float32 in [0, 1] (or uint8), target) with target = dict(
        boxes (N, 4) float32 xyxy in network-input pixels, labels (N,) int64,
        difficult (N,) bool, image_id str, orig_size (H, W), resized_size (h, w)),
    where (h, w) is the letterboxed content before padding: max(h, w) = S.
    """

    def __init__(self, root, split: str = "train", class_names=None, image_size: int = 224,
                 augment: bool = False, in_memory: bool = False, skip_bad_boxes: bool = False,
                 image_dtype: torch.dtype = torch.float32,
                 verify_images: bool = False, progress: bool = False):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the stride of p5), got {image_size!r}")
        if isinstance(class_names, str):
            raise ValueError(f"class_names must be a list of names, got the string {class_names!r}; "
                             f"for one class pass [{class_names!r}]")
        self.root = check_voc_root(root)
        self.split = split
        image_ids = read_split(self.root, split)
        if not image_ids:
            raise empty_split_error(self.root, split)
        if class_names is None:
            has_trainval = (self.root / "ImageSets" / "Main" / "trainval.txt").is_file()
            class_names = read_class_names(self.root, "trainval" if has_trainval else split)
        self.class_names = [str(n) for n in class_names]
        if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ValueError(f"class_names must be a non-empty list of distinct names, got {self.class_names}")
        if image_dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"image_dtype must be torch.float32 or torch.uint8, got {image_dtype!r}")
        self.image_size = image_size
        self.augment = augment
        self.image_dtype = image_dtype
        self.annotations, self.skipped, problems = [], [], []
        for image_id in tqdm(image_ids, desc=f"check {split}", disable=not progress, leave=False):
            try:
                self.annotations.append(self._load_annotation(image_id, verify_images))
            except DatasetError as err:
                if skip_bad_boxes and err.kind in SKIPPABLE_KINDS:
                    self.skipped.append((image_id, str(err)))
                else:
                    problems.append(err)
        if problems:
            raise grouped_error(problems, f"split {split!r} of {self.root}")
        if not self.annotations:
            raise DatasetError(f"split {split!r}: every image was skipped for a broken box; fix the annotations",
                               kind="empty split")
        self.image_ids = [ann["image_id"] for ann in self.annotations]
        self.num_clipped_boxes = sum(int(ann["clipped"].sum()) for ann in self.annotations)
        self._flip = v2.RandomHorizontalFlip(p=0.5)
        self._cache = None
        if in_memory:
            self._cache = [self._load_resized(i) for i in tqdm(range(len(self)), desc=f"load {split}",
                                                                disable=not progress, leave=False)]

    def _load_annotation(self, image_id: str, verify_image: bool = False) -> dict:
        xml_path = annotation_path(self.root, self.split, image_id)
        ann = parse_voc_annotation(xml_path, self.class_names)
        path = image_file(self.root, self.split, image_id, xml_path)
        upright = annotated_frame(path, ann["size"], verify=verify_image)
        return {"image_id": image_id, "image_path": path, "upright": upright, **ann}

    def _load_resized(self, i: int):
        """Decode image i and scale its longest side to S: (image (3, h, w) uint8, boxes (N, 4))."""
        ann = self.annotations[i]
        image = _read_image(ann["image_path"], ann["upright"])  # (3, H, W) uint8, in the annotated frame
        if tuple(image.shape[-2:]) != ann["size"]:  # the file changed since __init__ checked it
            raise DatasetError(
                f"image {ann['image_path']} is {image.shape[-1]} x {image.shape[-2]} (W x H) but its "
                f"annotation's <size> says {ann['size'][1]} x {ann['size'][0]}; fix the <size> or re-export",
                kind="size mismatch", file=ann["image_path"],
            )
        boxes = tv_tensors.BoundingBoxes(ann["boxes"], format="XYXY", canvas_size=ann["size"])
        return resize_longest(tv_tensors.Image(image), boxes, self.image_size)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        """The image file of item i."""
        return self.annotations[i]["image_path"]

    def __getitem__(self, i: int):
        image, boxes = self._cache[i] if self._cache is not None else self._load_resized(i)
        if self.augment:
            image, boxes = self._flip(image, boxes)
        h, w = image.shape[-2:]
        S = self.image_size
        image, boxes = pad_square(image, boxes, S)
        ann = self.annotations[i]
        target = {
            "boxes": boxes.as_subclass(torch.Tensor).float() + 0.0,  # (N, 4); + 0.0 turns a flipped -0. into 0.
            "labels": ann["labels"].clone(),  # (N,)
            "difficult": ann["difficult"].clone(),  # (N,)
            "image_id": ann["image_id"],
            "orig_size": ann["size"],
            "resized_size": (int(h), int(w)),
        }
        image = image.as_subclass(torch.Tensor)  # (3, S, S) uint8
        if self.image_dtype == torch.uint8:
            return image, target
        return v2.functional.to_dtype(image, torch.float32, scale=True), target

    def __repr__(self) -> str:
        return (f"VOCDataset(root={self.root.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={len(self.class_names)}, image_size={self.image_size}, augment={self.augment}, "
                f"in_memory={self._cache is not None})")

# %%
train_set = VOCDataset(root, "train")
print(train_set)
print(train_set.class_names)
image, target = train_set[0]
print(image.shape, image.dtype, round(image.min().item(), 3) >= 0, image.max().item() <= 1)
for key, value in target.items():
    print(f"{key:13s}", tuple(value.shape) if torch.is_tensor(value) else value,
          value.dtype if torch.is_tensor(value) else "")
assert target["resized_size"][0] == 224 or target["resized_size"][1] == 224  # the longest side is S

# %% [markdown]
# To map network-input boxes (predictions, for instance) back to the original image, undo the
# resize: it is another resize, from the content size `(h, w)` to `(H, W)`, so torchvision can do
# it too. The padding needs no undoing, because it only added pixels after the content; boxes
# reaching into it are clipped to the image.

# %%
#| export transforms
def boxes_to_original(boxes: torch.Tensor, target: dict) -> torch.Tensor:
    """Undo the letterbox: boxes (K, 4) xyxy in network-input pixels -> (K, 4) in original pixels.

    target: the dict VOCDataset returns (uses orig_size (H, W) and resized_size (h, w)).
    The result is clipped to the image, 0 <= x <= W, 0 <= y <= H. (With augment=True the
    boxes are mirrored, as the image was; undo the flip before mapping back if you need to.)
    """
    H, W = target["orig_size"]
    h, w = target["resized_size"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (K, 4) xyxy, got shape {tuple(boxes.shape)}")
    wrapped = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
    resized = v2.functional.resize(wrapped, size=[H, W])  # scales x by W / w and y by H / h
    return v2.functional.clamp_bounding_boxes(resized).as_subclass(torch.Tensor)

# %%
ann0 = train_set.annotations[0]
back = boxes_to_original(target["boxes"], target)
print(target["orig_size"], "->", target["resized_size"])
print("largest round-trip error (px):", round((back - ann0["boxes"]).abs().max().item(), 4))
assert torch.allclose(back, ann0["boxes"], atol=1e-3)

# %% [markdown]
# ## Batches: pad to `(B, N, 5)` with `-1`
#
# `collate_detection` stacks the images and pads the boxes of each image to the batch's largest
# `N`. Difficult objects stay in `gt_boxes`: training learns them, and evaluation reads the
# `difficult` flags from `targets` to ignore them. A batch of empty images still gets `N = 1` (one
# padding row) so that later code never has to handle a zero-sized dimension.

# %%
#| export
def pad_gt_boxes(targets) -> torch.Tensor:
    """The ground truth of several images as one (B, N, 5) tensor of rows (x1, y1, x2, y2, c).

    N = max(1, most boxes in one image); the rows after an image's own boxes are -1.
    """
    num_boxes = max([1] + [len(t["boxes"]) for t in targets])
    gt_boxes = torch.full((len(targets), num_boxes, 5), -1.0)  # (B, N, 5)
    for b, target in enumerate(targets):
        n = len(target["boxes"])
        gt_boxes[b, :n, :4] = target["boxes"]
        gt_boxes[b, :n, 4] = target["labels"].float()
    return gt_boxes


def collate_detection(batch):
    """Stack (image, target) pairs from VOCDataset into a batch.

    Returns:
        images (B, 3, S, S) float32, gt_boxes (B, N, 5) float32 rows (x1, y1, x2, y2, c) with
        N = max(1, most boxes in one image) and padding rows of -1, targets list[dict] (B).
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) != 1:
        raise ValueError(f"collate_detection: all images must have one shape (3, S, S), got {shapes}")
    return torch.stack(images), pad_gt_boxes(targets), targets

# %%
from torch.utils.data import DataLoader

loader = DataLoader(train_set, batch_size=4, shuffle=False, collate_fn=collate_detection)
images, gt_boxes, targets = next(iter(loader))
print(images.shape, gt_boxes.shape, len(targets))
print("boxes per image:", [len(t["boxes"]) for t in targets])  # image 3 is empty (every 12th from 3)
print(gt_boxes[3])  # all padding
assert (gt_boxes[3] == -1).all() and (gt_boxes[..., 4] >= -1).all()

# %% [markdown]
# ## A look at the data
#
# The first training images with their boxes, as the network sees them (letterboxed, padded).
# Dashed boxes are `difficult`.

# %%
#| export drawing
"""Pictures of boxes: draw_boxes on a matplotlib axis, one colour per class.

Chapter 00 of the FCOS course (notebooks/00_boxes_and_data.py). matplotlib is imported inside the
function, so importing fcos_lib never needs a display.
"""
import torch


def draw_boxes(ax, boxes, labels=None, scores=None, class_names=None, color=None, difficult=None, linewidth=1.5,
               fontsize=8):
    """Draw xyxy boxes on a matplotlib axis, one colour per class (or `color` for all).

    Args:
        boxes: (K, 4) xyxy in the pixels of the image shown on `ax`.
        labels: (K,) class indices; with `class_names`, the names are written above the boxes.
        scores: (K,) optional scores, written after the names.
        difficult: (K,) optional bool; difficult objects are drawn dashed.
        fontsize: of the name/score labels, which sit on a patch of the box's colour.
    """
    from matplotlib import patches
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors
    top, height = min(ax.get_ylim()), abs(ax.get_ylim()[1] - ax.get_ylim()[0])  # of the picture on ax
    for k, box in enumerate(torch.as_tensor(boxes).reshape(-1, 4).tolist()):
        label = None if labels is None else int(labels[k])
        colour = color or (palette[label % len(palette)] if label is not None else "white")
        dashed = difficult is not None and bool(difficult[k])
        ax.add_patch(patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour,
                                       linewidth=linewidth, linestyle="--" if dashed else "-"))
        text = class_names[label] if class_names is not None and label is not None else ""
        if scores is not None:
            text = f"{text} {float(scores[k]):.2f}".strip()
        if text:  # on a patch of the box's colour: legible on any background
            # Above the box, or just inside it when the box touches the top of the picture.
            inside = box[1] - top < 0.07 * height
            ax.text(box[0], box[1], text, color="black" if colour == "white" else "white", fontsize=fontsize,
                    va="top" if inside else "bottom", clip_on=True,
                    bbox=dict(facecolor=colour, edgecolor="none", alpha=0.85, pad=1))


# %%
# %matplotlib inline
import matplotlib.pyplot as plt


def show_batch(dataset, indices, cols=4):
    rows = math.ceil(len(indices) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    for ax, i in zip(axes.flat, indices):
        image, target = dataset[i]
        ax.imshow(image.permute(1, 2, 0).numpy())  # (S, S, 3)
        draw_boxes(ax, target["boxes"], target["labels"], class_names=dataset.class_names,
                   difficult=target["difficult"])
        ax.set_title(f"{target['image_id']}  {target['orig_size'][1]}x{target['orig_size'][0]}", fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(indices):]:
        ax.axis("off")
    fig.tight_layout()
    plt.show()


show_batch(train_set, range(8))

# %% [markdown]
# **Which FPN level will each box train?** FCOS sends a location inside a box to a level by the
# largest of its four distances to the box sides, `m = max(l, t, r, b)`: p3 for `m < 64`, p4 for
# `64 <= m < 128`, p5 for `m >= 128`. Inside one box, `m` goes from half the longest side (at the
# centre) up to the longest side itself (near a corner). So we plot the **longest side
# `max(w, h)` at the 224-px input**, the largest `m` any location in the box sees, and colour each
# box by the level whose range contains it: the coarsest level that box can train. (Locations
# near the centre see half of it, so a large box also trains p4.)

# %%
# FCOS's scale ranges on m = max(l, t, r, b) (paper section 3.2, with the p3-p5 subset we use).
# Chapter 04 (matching) owns them; this copy only colours the histogram.
FPN_SIZE_RANGES = {"p3": (0.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, math.inf)}


def fpn_level_of_boxes(boxes: torch.Tensor) -> list[str]:
    """The level ("p3", "p4", "p5") whose range holds each box's longest side.

    boxes: (N, 4) xyxy in network-input pixels. The longest side is the largest max(l, t, r, b)
    any location inside the box sees, so this is the coarsest level the box can be assigned to.
    """
    longest = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values  # (N,)
    return [next(k for k, (lo, hi) in FPN_SIZE_RANGES.items() if lo <= m < hi) for m in longest.tolist()]

# %%
print(fpn_level_of_boxes(torch.tensor([[0.0, 0.0, 63.9, 10.0], [0.0, 0.0, 64.0, 10.0], [10.0, 0.0, 40.0, 150.0]])))

# %%
sides, levels = [], []
for i in range(len(train_set)):
    ann = train_set.annotations[i]
    scale = train_set.image_size / max(ann["size"])  # the letterbox scale of image i
    boxes = ann["boxes"] * scale
    sides += (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values.tolist()
    levels += fpn_level_of_boxes(boxes)
counts = {k: levels.count(k) for k in FPN_SIZE_RANGES}
print("objects:", len(levels), "per level:", counts)
print("difficult:", sum(int(a["difficult"].sum()) for a in train_set.annotations),
      "empty images:", sum(len(a["boxes"]) == 0 for a in train_set.annotations))
print("objects per class:", {n: sum(int((a["labels"] == c).sum()) for a in train_set.annotations)
                             for c, n in enumerate(train_set.class_names)})
assert all(counts[k] > 0 for k in FPN_SIZE_RANGES)

fig, ax = plt.subplots(figsize=(7, 3))
bins = np.arange(0, 232, 8)
level_colours = {"p3": "tab:blue", "p4": "tab:orange", "p5": "tab:green"}
_ = ax.hist([[s for s, l in zip(sides, levels) if l == k] for k in FPN_SIZE_RANGES], bins=bins, stacked=True,
            color=list(level_colours.values()), label=[f"{k} ({counts[k]})" for k in FPN_SIZE_RANGES])
for edge in (64, 128):
    ax.axvline(edge, color="k", linestyle=":")
ax.set_xlabel("longest side max(w, h) at the 224-px input (px)")
ax.set_ylabel("objects")
ax.legend()
plt.show()

# %% [markdown]
# ## The real PASCAL VOC, and your own data
#
# `download_voc` fetches PASCAL VOC with `torchvision.datasets.VOCDetection` (460 MB for 2007
# trainval, 451 MB for 2007 test) and returns the `VOCdevkit/VOC2007` folder for `VOCDataset`. A
# copy already on disk is used as it is. Offline it never downloads, and a download that fails
# (the official host is often down) raises a one-line `DatasetError` that says where to put a
# copy from a mirror.
#
# Your own data: export in the "Pascal VOC" format from LabelImg or CVAT, make sure the folder
# has `ImageSets/Main/train.txt` and `val.txt` (one image id per line), and pass the folder to
# `VOCDataset` with `class_names=None`.

# %%
#| export voc
def download_voc(root=None, year: str = "2007", image_set: str = "trainval") -> Path:
    """PASCAL VOC in root/VOCdevkit/VOC{year}, downloaded with torchvision when it is not there.

    Args:
        root: download folder; default default_data_dir() / "voc".
        year: "2007" to "2012"; image_set: "train", "val", "trainval" (and "test" for 2007).
    Returns:
        the VOCdevkit/VOC{year} folder, ready for VOCDataset(folder, split=image_set, class_names=VOC_CLASSES).
    Raises:
        DatasetError when offline (FCOS_OFFLINE=1) and the data is not on disk.
    """
    root = Path(root).expanduser() if root is not None else default_data_dir() / "voc"
    folder = root / "VOCdevkit" / f"VOC{year}"
    if (folder / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
        return folder
    if is_offline():
        raise DatasetError(
            f"download_voc: PASCAL VOC {year} {image_set} is not in {folder} and FCOS_OFFLINE=1 forbids "
            "downloading. Unset FCOS_OFFLINE (or set it to 0) on a machine with internet, or copy an "
            f"extracted VOCdevkit/VOC{year} folder there; offline, use make_course_dataset() instead."
        )
    from torchvision.datasets import VOCDetection  # imported here: only needed when downloading

    try:
        VOCDetection(str(root), year=year, image_set=image_set, download=True)
    except (OSError, RuntimeError) as err:  # URLError, timeouts, a full disk, a bad checksum
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DatasetError(
            f"download_voc: could not download PASCAL VOC {year} {image_set} into {root} ({reason}). "
            "The official host is often down: download the VOC tar files from a mirror, extract them "
            f"into {root} so that it holds VOCdevkit/VOC{year}/, and call download_voc again."
        ) from err
    return folder

# %% [markdown]
# What a missing copy looks like offline. The cell sets `FCOS_OFFLINE=1` for the duration of the
# call, so it shows the message without starting a 460 MB download in any run mode:

# %%
with offline_only():
    try:
        download_voc(example_dir, "2007", "trainval")
    except DatasetError as err:
        print(str(err).replace(str(example_dir), "<root>"))

# %% [markdown]
# ## When the data is wrong
#
# Every error is a `DatasetError` (a `ValueError`) that names the file and says what to do, so the
# course's command line prints it as one line. A few of them:

# %%
def show_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except DatasetError as err:
        # Print paths relative to the folders, which differ from machine to machine.
        print("DatasetError:", str(err).replace(str(example_dir), "<tmp>").replace(str(root), "<course_voc>"), "\n")


show_error(VOCDataset, example_dir / "no_such_folder")
show_error(VOCDataset, root, split="test")
bad_xml = EXAMPLE_XML.replace("<xmax>50</xmax>", "<xmax>0</xmax>")
(example_dir / "bad.xml").write_text(bad_xml)
show_error(parse_voc_annotation, example_dir / "bad.xml", ["cat", "dog"])
show_error(parse_voc_annotation, example_dir / "example.xml", ["cat", "bird"])

# %% [markdown]
# A dataset does not stop at the first bad file: `VOCDataset` checks every annotation and every
# image header, and reports all problems at once, grouped by kind with a count, so one run of the
# check shows everything to fix. Here, a folder with a broken box and two missing images:

# %%
messy = example_dir / "messy_voc"
for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    (messy / sub).mkdir(parents=True)
for image_id, xml in {"a": EXAMPLE_XML, "b": EXAMPLE_XML, "c": bad_xml}.items():
    (messy / "Annotations" / f"{image_id}.xml").write_text(xml.replace("example.jpg", f"{image_id}.jpg"))
Image.new("RGB", (200, 100)).save(messy / "JPEGImages" / "c.jpg")
(messy / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\n")
show_error(VOCDataset, messy, "train", class_names=["cat", "dog"])

# %% [markdown]
# **Phone photos.** A phone stores a portrait photo as landscape pixels plus an EXIF tag that
# says "turn me 90 degrees". Some labelling tools show the photo turned, some do not, so the boxes
# can be in either frame. The XML's `<size>` tells which: the upright size means the upright
# frame, the stored size the stored one (`annotated_frame`). `load_image` turns photos upright by
# default, as every viewer does, so `detect` answers in the frame you see.

# %%
upright = Image.new("RGB", (200, 100), (90, 90, 90))
exif = Image.Exif()
exif[0x0112] = 6  # Orientation 6: the stored pixels must be turned 90 degrees clockwise
upright.transpose(Image.Transpose.ROTATE_90).save(example_dir / "phone.jpg", exif=exif)
with Image.open(example_dir / "phone.jpg") as stored:
    print("stored pixels:", stored.size, "| as shown:", load_image(example_dir / "phone.jpg").size)
print("XML says 200 x 100 -> upright frame:", annotated_frame(example_dir / "phone.jpg", (100, 200)))
print("XML says 100 x 200 -> stored frame: ", annotated_frame(example_dir / "phone.jpg", (200, 100)))

# %% [markdown]
# ## A check you can trust
#
# Put the hand-worked example from the start of the chapter into a tiny VOC folder of its own and
# load it. At `S = 224` the 200 x 100 image scales by 224 / 200 = 1.12 to 224 x 112 and gets 112
# rows of padding below. The dog `(0, 0, 50, 40)` becomes `(0, 0, 56, 44.8)`, the cat
# `(100, 50, 200, 100)` becomes `(112, 56, 224, 112)`, and mapping back gives the XML's numbers
# minus the 1-based offset, exactly.

# %%
tiny = example_dir / "tiny_voc"
for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    (tiny / sub).mkdir(parents=True)
Image.new("RGB", (200, 100), (90, 90, 90)).save(tiny / "JPEGImages" / "example.jpg")
(tiny / "Annotations" / "example.xml").write_text(EXAMPLE_XML)
(tiny / "ImageSets" / "Main" / "train.txt").write_text("example\n")

tiny_set = VOCDataset(tiny, "train")
image, target = tiny_set[0]
print(tiny_set.class_names, target["labels"].tolist(), target["difficult"].tolist())
print(target["orig_size"], target["resized_size"], [[round(v, 3) for v in b] for b in target["boxes"].tolist()])
assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0.0, 56.0, 44.8], [112.0, 56.0, 224.0, 112.0]]))
assert torch.allclose(image[:, 112:, :] * 255, torch.tensor(PAD_FILL).float()[:, None, None])  # padding
xml_minus_offset = torch.tensor([[1 - 1, 1 - 1, 50, 40], [101 - 1, 51 - 1, 200, 100]], dtype=torch.float32)
assert torch.allclose(boxes_to_original(target["boxes"], target), xml_minus_offset, atol=1e-4)
print("letterbox round trip exact: True")

# %% [markdown]
# `letterbox` applies the same resize and padding to a single image file, for inference on
# images that have no annotation. It must give exactly what the dataset gives:

# %%
same_image, meta = letterbox(load_image(tiny_set.image_path(0)), 224)
print(meta, torch.equal(same_image, image))

# %%
shutil.rmtree(example_dir)

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **Which format?** Given only a tensor of boxes, which checks tell `(x1, y1, x2, y2)` from
#    `(cx, cy, w, h)` and `(x, y, w, h)`? Find a box that passes as all three.
#    *Hint:* what must hold between the first and third numbers in each format?
# 2. **The letterbox by hand.** Take a 500 x 333 image and a box on it; compute by hand where the
#    box lands in the 224-pixel input, then check it against `letterbox`. Now map a detection
#    back: where does an error of one input pixel land in the original image?
#    *Hint:* the scale is 224 / the longer side; padding goes to the right and the bottom.
# 3. **Padding rows.** The batch pads each image's boxes with rows of -1. What would go wrong in
#    matching if the padding were rows of 0 instead?
#    *Hint:* is `(0, 0, 0, 0)` a box some location could be inside, with class 0?

# %% [markdown]
# ## Summary
#
# - Boxes are `(x1, y1, x2, y2)`, absolute 0-based pixels on pixel edges; a batch is `(B, N, 5)`
#   with `-1` padding rows. VOC's 1-based `xmin, ymin` lose 1; `xmax, ymax` stay.
# - `make_course_dataset()` writes the offline course dataset (VOC layout, five classes, all
#   three FPN sizes, empty images, `difficult` objects) once, and reuses it.
# - `VOCDataset` + `collate_detection` give `images (B, 3, S, S)`, `gt_boxes (B, N, 5)` and the
#   targets; `boxes_to_original` maps boxes back to the original image.
# - Where it lives: `fcos_lib.voc` (XML, folders, download), `fcos_lib.course_data` (the generated
#   set), `fcos_lib.transforms` (letterbox), `fcos_lib.data` (dataset, batches),
#   `fcos_lib.drawing` (pictures), `fcos_lib.env` (the run mode and the offline switch).
# - Pitfall to remember ([P1](../docs/pitfalls.md#p1-voc-boxes-read-as-0-based)): VOC boxes are
#   1-based and inclusive; forget the `- 1` on `xmin, ymin` and every box is one pixel off, and a
#   box thinner than a stride may be learnt by no location at all.
# - Next chapter: the backbone and the FPN that turn `images` into the p3, p4 and p5 features.
