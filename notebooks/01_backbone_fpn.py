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
# # 01 · Backbone and feature pyramid
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/01_backbone_fpn.ipynb)
#
# FCOS predicts a box at every location of several feature maps. Small objects need a fine
# map (stride 8), large objects a coarse one (stride 32), and every map needs features that
# know *what* is there. This chapter builds the part of the detector that produces those maps:
#
# - a **backbone**, RegNetX-400MF from torchvision, read at three depths: `c3`, `c4`, `c5`
#   with strides 8, 16 and 32;
# - a **feature pyramid network** (FPN, Lin et al. 2017) that turns them into `p3`, `p4`, `p5`,
#   all with the same number of channels `F`.
#
# In: images `(B, 3, H, W)`, float in `[0, 1]`, `H` and `W` divisible by 32.
# Out: `{"p3": (B, F, H/8, W/8), "p4": (B, F, H/16, W/16), "p5": (B, F, H/32, W/32)}`.

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
#| default_exp backbone

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
import torchvision
from torch import nn

_ = torch.manual_seed(0)

# %% [markdown]
# ## The backbone: RegNetX-400MF
#
# RegNetX-400MF is a small ImageNet classifier (5.5 M parameters, 0.4 GFLOPs at 224 px). It
# is a stem (one stride-2 conv) followed by four stages. Each stage starts with a block whose
# 3x3 convolution has stride 2, so every stage halves the resolution. There is no pooling
# until the classifier at the very end, which we throw away.
#
# | stage | stride | we call it |
# |---|---|---|
# | stem | 2 | |
# | `trunk_output.block1` | 4 | |
# | `trunk_output.block2` | 8 | `c3` |
# | `trunk_output.block3` | 16 | `c4` |
# | `trunk_output.block4` | 32 | `c5` |
#
# Let us read that off the model itself rather than trust the table.

# %%
regnet = torchvision.models.regnet_x_400mf(weights=None)  # random init: nothing downloaded
stride = regnet.stem[0].stride[0]
print("stem: stride", stride)
for name, stage in regnet.trunk_output.named_children():
    stride *= stage[0].f.b[0].stride[0]  # the first block's 3x3 conv does the downsampling
    widths = [m.out_channels for m in stage.modules() if isinstance(m, nn.Conv2d)]
    print(f"{name}: stride {stride}, {widths[-1]} channels")
print("max-pool layers:", sum(isinstance(m, nn.MaxPool2d) for m in regnet.modules()))

# %% [markdown]
# > **Pitfall P2** ([the course's pitfalls note](../docs/pitfalls.md#p2-max-pooling-in-the-backbone-and-a-removed-weights-argument)). The seed describes the backbone as
# > "conv – max-pool – conv – max-pool" stacks with stride-1 3x3 convolutions. RegNetX has no
# > max-pool at all: each stage downsamples with a **strided** 3x3 convolution, as printed
# > above. The seed also loads weights with `regnet_x_400mf(pretrained=True)`, an argument
# > torchvision removed; the current API is the `weights=` enum
# > (`RegNet_X_400MF_Weights.IMAGENET1K_V2`). And tests and CI have no network, so asking for
# > weights offline must fail loudly instead of trying a download.
#
# ## Checking arguments where they come in
#
# Every public function of the course checks its arguments on the way in, so that `FCOS(2.5)`
# or `pretrained="False"` fails at the call with a message that names the argument, instead of
# deep inside torch or not at all. Tensors get their own checks, next to the code that knows
# their shape (`check_images` below, `check_gt_boxes` in chapter 04); the plain numbers and
# flags share these three, exported to `fcos_lib.checks`.
#
# The same module holds `exercise`, for the check cells. Chapters 01 and 03–08 have an exercise
# version in `exercises/` where the code you write is a stub (`# YOUR CODE HERE`); the check cell
# after it runs under `with exercise("name"):`, so that a failure ends in one line that names the
# exercise and says what differs, and a stub you have not filled in yet says "not written yet".

# %%
#| export checks
"""Argument checks shared by every chapter: a whole number, a flag, a positive number.

Chapter 01 of the course (notebooks/01_backbone_fpn.py). Each raises a one-line ValueError that
names the argument, shows what it got, and says what is allowed. The tensor checks live next to
the code that knows their shapes: check_images (chapter 01), check_gt_boxes and
check_class_labels (chapter 04). `exercise` wraps a chapter's check cell, so that a failure
names the exercise (exercises/, tools/grade.py).
"""
import contextlib
import math
import numbers
import re


def check_int(value, name: str, minimum: int = 1) -> int:
    """value as an int; ValueError unless it is a whole number >= minimum.

    A bool is refused although Python counts it as an int: num_classes=True would quietly mean 1.
    numpy integers are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__}). "
                         "Fix: pass a whole number, not a float, a bool or a string.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def check_flag(value, name: str) -> bool:
    """value; ValueError unless it is True or False (the string "False" is truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r} ({type(value).__name__}). "
                         "Fix: pass a bool (any non-empty string, \"False\" too, would count as True).")
    return value


def check_positive_number(value, name: str) -> float:
    """value as a float; ValueError unless it is a finite number > 0 (not NaN, inf, a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r} ({type(value).__name__}).")
    return float(value)


@contextlib.contextmanager
def exercise(*names: str):
    """Run a check cell's code for the exercise(s) `names`; a failure becomes one line naming it.

    - the NotImplementedError of a stub ("<name>: write this function ...") becomes
      AssertionError("exercise <name>: not written yet");
    - a failed assert becomes AssertionError("exercise <names>: <the assert's message>");
    - any other error becomes AssertionError("exercise <names>: <ErrorType>: <message>"), chained
      to the original, whose traceback shows the line that raised it.
    """
    label = "exercise " + " or ".join(names)
    try:
        yield
    except NotImplementedError as err:
        stub = re.match(r"(\S+): write this function", str(err))
        if stub is None:
            raise AssertionError(f"{label}: NotImplementedError: {err}") from err
        raise AssertionError(f"exercise {stub.group(1)}: not written yet (replace its `raise NotImplementedError`)") from None
    except AssertionError as err:
        message = str(err).strip().split("\n")[0]  # the assert's own message, one line
        raise AssertionError(f"{label}: {message or 'a check failed (see the assert above)'}") from err
    except Exception as err:
        raise AssertionError(f"{label}: {type(err).__name__}: {err}") from err

# %% [markdown]
# Check: three calls a user could plausibly make, and what each gets back.

# %%
for call in (lambda: check_int(2.5, "num_classes"), lambda: check_flag("False", "pretrained"),
             lambda: check_positive_number(float("nan"), "center_sampling_radius")):
    try:
        call()
    except ValueError as err:
        print("ValueError:", err)
print(check_int(20, "num_classes"), check_flag(False, "pretrained"), check_positive_number(1.5, "radius"))

# %% [markdown]
# ## Getting the trunk, with or without ImageNet weights
#
# `make_regnet_x_400mf` returns the torchvision model. With `pretrained=True` it loads the
# ImageNet weights `IMAGENET1K_V2` (74.9 % top-1, better than V1's 72.8 %; both expect the same
# mean/std normalisation). Two ways that can fail, each with an error that says what to do:
#
# - offline (`FCOS_OFFLINE=1`, set by the tests and by `make regen`): we refuse before any
#   network call;
# - online but the download fails: we say which file to put where
#   (`torch.hub.get_dir()/checkpoints/`), so it can be copied in by hand.
#
# `frozen_batchnorm=True` builds every BatchNorm of the trunk as torchvision's
# `FrozenBatchNorm2d`; by default it follows `pretrained`. Why fine-tuning freezes BatchNorm is
# explained after `BackboneWithFPN` below.

# %%
#| export
"""Backbone and feature pyramid for FCOS: RegNetX-400MF (c3, c4, c5) + FPN (p3, p4, p5).

Chapter 01 of the course (notebooks/01_backbone_fpn.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.2
  (multi-level prediction with FPN; we keep p3-p5 and drop p6, p7).
- FPN: Lin et al. 2017, "Feature Pyramid Networks for Object Detection", §3 (top-down path
  with 1x1 lateral connections, nearest upsampling, 3x3 output convolutions).
- Checked against torchvision.ops.FeaturePyramidNetwork (same weights -> same outputs) and
  torchvision.models.regnet_x_400mf through torchvision.models.feature_extraction.

- Fine-tuning from ImageNet weights as torchvision's detection builders do
  (torchvision.models.detection.fcos_resnet50_fpn): FrozenBatchNorm2d in the trunk, and the
  first stages frozen (trainable_backbone_layers=3 of 5).

Dimension letters: B images, H/W input height/width, F FPN channels.
"""
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import RegNet_X_400MF_Weights
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from fcos_lib.checks import check_flag, check_int
from fcos_lib.env import is_offline

# Which stage of torchvision's RegNet gives which backbone level (stride 8, 16, 32).
RETURN_NODES = {"trunk_output.block2": "c3", "trunk_output.block3": "c4", "trunk_output.block4": "c5"}
# The trunk's five stages, bottom (stride 2) to top (stride 32). trainable_layers counts from the top.
STAGES = ("stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output.block4")
FPN_STRIDES = {"p3": 8, "p4": 16, "p5": 32}
# The stride-4 stage and its level, for an optional finer level p2 (chapter 10: small objects).
P2_RETURN_NODE = {"trunk_output.block1": "c2"}
P2_STRIDE = {"p2": 4}
# ImageNet statistics the pretrained weights were trained with (RGB order, [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRETRAINED_WEIGHTS = RegNet_X_400MF_Weights.IMAGENET1K_V2


def make_regnet_x_400mf(pretrained: bool = False, frozen_batchnorm: bool | None = None) -> nn.Module:
    """torchvision's RegNetX-400MF, randomly initialised or with ImageNet weights.

    Args:
        pretrained: load the ImageNet weights IMAGENET1K_V2. Offline (FCOS_OFFLINE=1) this
            raises before any network call; an online download failure raises saying where to
            put the weights file by hand.
        frozen_batchnorm: build every norm layer as torchvision's FrozenBatchNorm2d (fixed
            statistics and affine, all buffers) instead of BatchNorm2d; None = same as pretrained.
    """
    check_flag(pretrained, "pretrained")
    if frozen_batchnorm is None:
        frozen_batchnorm = pretrained
    check_flag(frozen_batchnorm, "frozen_batchnorm")
    norm_layer = FrozenBatchNorm2d if frozen_batchnorm else nn.BatchNorm2d
    regnet = torchvision.models.regnet_x_400mf(weights=None, norm_layer=norm_layer)
    if not pretrained:
        return regnet
    if is_offline():
        raise RuntimeError(
            "pretrained=True asks for the ImageNet weights of RegNetX-400MF, but FCOS_OFFLINE=1 "
            "forbids downloads. Fix: pass pretrained=False (random init, what the offline course "
            "uses), or set FCOS_OFFLINE=0 on a machine with internet access."
        )
    url = PRETRAINED_WEIGHTS.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    try:
        # Reuses the file in torch.hub's cache when it is already there.
        state_dict = torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True)
    except Exception as err:  # network, HTTP, hash or truncated-file errors all end here
        raise RuntimeError(
            f"could not fetch the RegNetX-400MF ImageNet weights ({PRETRAINED_WEIGHTS}) from {url}: "
            f"{err}. Fix: download that file on a machine with internet and copy it to {target}, "
            "or pass pretrained=False."
        ) from err
    regnet.load_state_dict(state_dict)  # FrozenBatchNorm2d drops BatchNorm's num_batches_tracked
    return regnet

# %% [markdown]
# Check: without weights we get a model, with BatchNorm2d or, asked for, FrozenBatchNorm2d;
# offline, asking for weights gives the error. The cell sets `FCOS_OFFLINE=1` for that call
# (`offline_only`, chapter 00), so it shows the message in every run mode and downloads nothing.

# %%
print(type(make_regnet_x_400mf()).__name__)
print("norm layers:", type(make_regnet_x_400mf().stem[1]).__name__, "|",
      type(make_regnet_x_400mf(frozen_batchnorm=True).stem[1]).__name__)
from fcos_lib.env import offline_only

with offline_only():  # shows the offline message in every run mode, never a download (chapter 00)
    try:
        make_regnet_x_400mf(pretrained=True)
    except RuntimeError as err:
        print("RuntimeError:", err)

# %% [markdown]
# ## Reading c3, c4, c5 out of the classifier
#
# `torchvision.models.feature_extraction.create_feature_extractor` traces the model and
# returns a new module that stops at the nodes we name and returns their outputs as a dict.
# The classifier's pooling and linear layer are dropped from the graph.
#
# The FPN needs each level's channel count. We read it from the modules (the last conv of a
# stage sets its width) instead of pushing a dummy image through the network: constructing a
# model should not run it.

# %%
#| export
def stage_out_channels(stage: nn.Module) -> int:
    """Output channels of a backbone stage: those of its last Conv2d."""
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"stage must contain a Conv2d to read its width from; got {type(stage).__name__}")
    return convs[-1].out_channels

# %% [markdown]
# Check: the widths read from the modules match the shapes a real forward pass produces.

# %%
channels = {level: stage_out_channels(regnet.get_submodule(node)) for node, level in RETURN_NODES.items()}
print("read from modules:", channels)
extractor = create_feature_extractor(regnet, RETURN_NODES)
with torch.no_grad():
    feats = extractor(torch.rand(1, 3, 64, 96))
print("from a forward:   ", {k: v.shape[1] for k, v in feats.items()})
print({k: tuple(v.shape) for k, v in feats.items()})  # 64x96 input: /8, /16, /32
assert channels == {k: v.shape[1] for k, v in feats.items()}

# %% [markdown]
# ## The feature pyramid
#
# `c3` is fine (stride 8) but shallow: its features saw little context. `c5` knows a lot
# but is coarse. The FPN gives every level both: a **top-down path** carries the deep
# features down to the fine levels.
#
# ```
#  c5 ──1x1──► m5 ─────────────────────────3x3──► p5
#               │ upsample x2 (nearest)
#  c4 ──1x1──► (+) = m4 ───────────────────3x3──► p4
#                     │ upsample x2 (nearest)
#  c3 ──1x1──────────► (+) = m3 ───────────3x3──► p3
# ```
#
# - 1x1 **lateral** convs bring `c3`, `c4`, `c5` (64, 160, 400 channels) to `F` channels, so
#   maps of different levels can be added.
# - The **merged map** `m` of the level above is upsampled by 2 (nearest neighbour) and added
#   to the lateral. It is `m`, the lateral *sum*, that flows down, not the output `p`.
# - A 3x3 **output conv** on each `m` gives `p`; it smooths the blocky upsampling.
#
# This is the standard FPN of Lin et al. 2017 and of `torchvision.ops.FeaturePyramidNetwork`.
# We use it because it is the published, widely tested design, and because it lets us check
# our code against torchvision's number for number. Keeping the output convs off the top-down
# path also means each 3x3 conv serves one level only.
#
# > **Pitfall P3** ([the course's pitfalls note](../docs/pitfalls.md#p3-an-fpn-that-downsamples-and-sends-the-wrong-map-down)). The seed's text says `p4` is "downsampled" before it is added
# > to `c3`'s lateral: it must be *up*sampled (`p4` is half the size of `c3`). Its code also
# > sends the output-conv'd `p5` down the path instead of the lateral sum `m5`. That variant
# > trains, but it is not the standard FPN and stacks the 3x3 convs of every level above on
# > the way down. We teach the standard one.

# %%
#| export
class FPN(nn.Module):
    """Standard top-down feature pyramid (Lin et al. 2017) over c3, c4, c5 -> p3, p4, p5.

    Args:
        in_channels_per_level: channels of each backbone level, e.g. {"c3": 64, "c4": 160,
            "c5": 400}, finest first.
        out_channels: F, the channels of every output level.
    """

    def __init__(self, in_channels_per_level: dict[str, int], out_channels: int = 64):
        super().__init__()
        if not isinstance(in_channels_per_level, dict) or not in_channels_per_level:
            raise ValueError(
                "in_channels_per_level must be a non-empty dict level -> channels, finest first, e.g. "
                f"{{'c3': 64, 'c4': 160, 'c5': 400}}; got {in_channels_per_level!r}"
            )
        for level, channels in in_channels_per_level.items():
            check_int(channels, f"in_channels_per_level[{level!r}]")
        out_channels = check_int(out_channels, "out_channels")
        self.in_levels = list(in_channels_per_level)  # e.g. ["c3", "c4", "c5"]
        self.out_levels = ["p" + level[1:] for level in self.in_levels]  # ["p3", "p4", "p5"]
        self.lateral = nn.ModuleDict(
            {p: nn.Conv2d(c, out_channels, kernel_size=1) for p, c in zip(self.out_levels, in_channels_per_level.values())}
        )
        self.output = nn.ModuleDict(
            {p: nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for p in self.out_levels}
        )
        # Same init as torchvision's FeaturePyramidNetwork.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """feats: {"c3": (B, C3, H/8, W/8), ...} -> {"p3": (B, F, H/8, W/8), ...}."""
        if not isinstance(feats, dict) or any(level not in feats for level in self.in_levels):
            got = list(feats) if isinstance(feats, dict) else type(feats).__name__
            raise ValueError(f"feats must be a dict with the levels {self.in_levels}; got {got}. "
                             "Fix: pass the backbone's output dict, e.g. BackboneWithFPN().body(images).")
        for level, p_level in zip(self.in_levels, self.out_levels):
            channels, x = self.lateral[p_level].in_channels, feats[level]
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"feats[{level!r}] must be (B, {channels}, h, w) (in_channels_per_level); got {shape}")
        ### BEGIN SOLUTION
        ### HINT: coarsest first: m = lateral(c) + the m above, upsampled (nearest) to this size; p = output(m)
        results = {}
        merged = None  # the lateral sum m of the level above: what flows down the path
        for c_level, p_level in zip(reversed(self.in_levels), reversed(self.out_levels)):
            lateral = self.lateral[p_level](feats[c_level])  # (B, F, H_l, W_l)
            if merged is not None:
                # Upsample (x2 for our sizes) to the lateral's exact size, then add.
                lateral = lateral + nn.functional.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral
            results[p_level] = self.output[p_level](merged)  # (B, F, H_l, W_l)
        return {p: results[p] for p in self.out_levels}  # finest first: p3, p4, p5
        ### END SOLUTION

# %% [markdown]
# Check: copy our weights into torchvision's `FeaturePyramidNetwork` and feed both the same
# features. Same weights, same inputs must give the same outputs.

# %%
with exercise("FPN.forward"):
    fpn = FPN(channels, out_channels=64)
    reference = torchvision.ops.FeaturePyramidNetwork(list(channels.values()), out_channels=64)
    with torch.no_grad():
        for i, p in enumerate(fpn.out_levels):
            reference.inner_blocks[i][0].weight.copy_(fpn.lateral[p].weight)
            reference.inner_blocks[i][0].bias.copy_(fpn.lateral[p].bias)
            reference.layer_blocks[i][0].weight.copy_(fpn.output[p].weight)
            reference.layer_blocks[i][0].bias.copy_(fpn.output[p].bias)
        ours = fpn(feats)
        theirs = reference(feats)
    assert list(ours) == fpn.out_levels, f"FPN returns the levels {list(ours)}, expected {fpn.out_levels}"
    for (p, a), b in zip(ours.items(), theirs.values()):
        same = a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
        print(p, tuple(a.shape), "same as torchvision:", same)
        differs = (f"is {tuple(a.shape)}, torchvision's {tuple(b.shape)}" if a.shape != b.shape
                   else f"differs from torchvision's by up to {(a - b).abs().max():.3g}")
        assert same, f"with the same weights, {p} {differs} (upsample the lateral sum m and send it down, not p)"

# %% [markdown]
# ## Backbone + FPN in one module
#
# `BackboneWithFPN` does three things in `forward`:
#
# 1. checks the input with `check_images`: float `(B, 3, H, W)` with `H`, `W` divisible by 32,
#    so that every level is exactly `H/stride x W/stride` and the x2 upsampling lines up (a
#    100 px side would give c4 = 7 and c5 = 4, and 4 x 2 != 7), and not float64, which the
#    float32 weights would refuse. The model of chapter 07 calls the same function, so each
#    rule and its message live in one place;
# 2. normalises `[0, 1]` images with the ImageNet mean/std, kept as buffers so they follow
#    the model to the GPU. Data code and pictures then only ever see `[0, 1]` images;
# 3. runs the trunk, then the FPN.
#
# At construction it also decides what trains: `trainable_layers` stages of the trunk counted
# from the top (default: 3 with ImageNet weights, all 5 from scratch) and `frozen_batchnorm`.
# The section after the next check explains why.
#
# Departure from the paper: FCOS uses p3-p7 (p6, p7 from extra stride-2 convs) for COCO's
# large objects; we keep p3-p5, like the seed, because our inputs are 224-320 px and
# stride 32 already covers objects as large as the image.

# %%
#| export
def check_images(images) -> None:
    """Raise ValueError unless images is one (B, 3, H, W) float tensor with H, W divisible by 32.

    The one check of the input images: BackboneWithFPN and FCOS (chapter 07) both call it.
    Shape and dtype only, so it never waits for the GPU; values in [0, 1] are not checked.
    float64 is refused: the weights are float32 (float16 and bfloat16 images are promoted to
    float32 by the normalisation, so they run, also under autocast).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images must be one (B, 3, H, W) float tensor in [0, 1]; got {shape}. "
            "Fix: stack the images (collate_detection does), or add a batch axis with images[None]."
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1]; got dtype {images.dtype}. Fix: images.float() / 255")
    if images.dtype == torch.float64:
        raise ValueError("images must be float32 like the model's weights (float64 would stop at the first "
                         "convolution); got dtype torch.float64. Fix: images.float()")
    H, W = images.shape[-2:]
    if H % 32 or W % 32:
        raise ValueError(
            f"images height and width must be divisible by 32 (the stride of p5); got H={H}, W={W}. "
            f"Fix: resize or pad to ({-(-H // 32) * 32}, {-(-W // 32) * 32})."
        )


def stack_c2_into_c3(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """c2's detail at c3's stride: each 2 x 2 block of c2's pixels becomes 4 x C2 channels beside c3.

    {"c2": (B, C2, H/4, W/4), "c3": (B, C3, H/8, W/8), ...} -> {"c3": (B, C3 + 4 C2, H/8, W/8), ...}
    (the other levels unchanged). Space-to-depth (torch's pixel_unshuffle), YOLOv2's "passthrough
    layer" (Redmon and Farhadi 2017, §2 "Fine-Grained Features").
    """
    feats = dict(feats)
    c2 = feats.pop("c2")
    feats["c3"] = torch.cat([feats["c3"], nn.functional.pixel_unshuffle(c2, downscale_factor=2)], dim=1)
    return feats


class BackboneWithFPN(nn.Module):
    """RegNetX-400MF trunk (c3, c4, c5) followed by a standard FPN (p3, p4, p5).

    Args:
        out_channels: F, channels of every FPN level.
        pretrained: load ImageNet weights (IMAGENET1K_V2) into the trunk. Offline
            (FCOS_OFFLINE=1) this raises instead of downloading.
        trainable_layers: how many of the trunk's 5 stages train, counted from the top
            (block4, block3, block2, block1, stem); the others get requires_grad=False.
            None = 3 when pretrained (stem and block1 frozen, as torchvision), 5 from scratch.
            The FPN always trains.
        frozen_batchnorm: FrozenBatchNorm2d in the trunk instead of BatchNorm2d; None = same
            as pretrained. Needed by any frozen stage. To rebuild a model fine-tuned from
            ImageNet for its checkpoint, pass pretrained=False, frozen_batchnorm=True.

        with_p2: add the level p2 (stride 4, from block1) below p3, for objects of a few pixels
            (chapter 10). About twice the training step's time at 224 px (bench/bench_train_step.py
            --p2): the head runs on 4x the locations of p3.
        c2_passthrough: give p3 block1's detail instead, at p3's cost: c2 at stride 4, its 2 x 2
            blocks stacked as channels (stack_c2_into_c3), joins c3 in p3's lateral convolution
            (chapter 10). The levels stay p3-p5; one 1x1 convolution gets 4 x 32 more inputs.
            Not together with with_p2 (both take block1: pick one).

    forward(images: (B, 3, H, W) float in [0, 1], H and W divisible by 32)
        -> {"p3": (B, F, H/8, W/8), "p4": (B, F, H/16, W/16), "p5": (B, F, H/32, W/32)},
           with "p2": (B, F, H/4, W/4) first when with_p2.
    """

    def __init__(self, out_channels: int = 64, pretrained: bool = False, trainable_layers: int | None = None,
                 frozen_batchnorm: bool | None = None, with_p2: bool = False, c2_passthrough: bool = False):
        super().__init__()
        out_channels = check_int(out_channels, "out_channels")  # before the trunk is built: fail fast
        check_flag(pretrained, "pretrained")
        check_flag(with_p2, "with_p2")
        check_flag(c2_passthrough, "c2_passthrough")
        if with_p2 and c2_passthrough:
            raise ValueError("with_p2 and c2_passthrough are two uses of block1 (its own level p2, or its detail "
                             "in p3); got both. Fix: pick one (--p2 or --c2-passthrough).")
        if frozen_batchnorm is None:
            frozen_batchnorm = pretrained
        check_flag(frozen_batchnorm, "frozen_batchnorm")
        if trainable_layers is None:
            trainable_layers = 3 if pretrained else len(STAGES)
        if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) \
                or not 0 <= trainable_layers <= len(STAGES):
            raise ValueError(
                f"trainable_layers must be an int in [0, {len(STAGES)}], the trunk stages that train counted "
                f"from the top (block4 first); got {trainable_layers!r}"
            )
        frozen_stages = STAGES[:len(STAGES) - trainable_layers]  # bottom-up: stem first
        if frozen_stages and not frozen_batchnorm:
            raise ValueError(
                f"trainable_layers={trainable_layers} freezes {', '.join(frozen_stages)}, which needs "
                "frozen_batchnorm=True (BatchNorm2d in a frozen stage would still update its running "
                "statistics in training mode); got frozen_batchnorm=False. Fix: pass frozen_batchnorm=True, "
                f"or trainable_layers={len(STAGES)}."
            )
        regnet = make_regnet_x_400mf(pretrained, frozen_batchnorm)
        for stage in frozen_stages:
            regnet.get_submodule(stage).requires_grad_(False)
        self.trainable_layers = trainable_layers
        self.frozen_batchnorm = frozen_batchnorm
        uses_c2 = with_p2 or c2_passthrough
        return_nodes = {**P2_RETURN_NODE, **RETURN_NODES} if uses_c2 else RETURN_NODES  # finest first
        self.backbone_channels = {
            level: stage_out_channels(regnet.get_submodule(node)) for node, level in return_nodes.items()
        }  # {"c3": 64, "c4": 160, "c5": 400}, and "c2": 32 first with p2 or the passthrough
        self.body = create_feature_extractor(regnet, return_nodes)  # shares regnet's modules
        fpn_inputs = dict(self.backbone_channels)
        if c2_passthrough:  # c2 is no level of its own: its 2 x 2 blocks join c3
            fpn_inputs["c3"] += 4 * fpn_inputs.pop("c2")
        self.c2_passthrough = c2_passthrough
        self.fpn = FPN(fpn_inputs, out_channels)
        self.out_channels = out_channels
        self.strides = {**P2_STRIDE, **FPN_STRIDES} if with_p2 else dict(FPN_STRIDES)
        # Not saved in checkpoints (persistent=False): constants, not learned state.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        x = (images - self.mean) / self.std  # (B, 3, H, W), ImageNet-normalised
        feats = self.body(x)
        if self.c2_passthrough:
            feats = stack_c2_into_c3(feats)
        return self.fpn(feats)

# %% [markdown]
# Check: a non-square batch gives every level at exactly `H/stride x W/stride`, and a size
# that is not a multiple of 32 is refused with a message that says how to fix it.

# %%
model = BackboneWithFPN(out_channels=64)
images = torch.rand(2, 3, 160, 224)
with torch.no_grad():
    pyramid = model(images)
for p, x in pyramid.items():
    s = model.strides[p]
    print(f"{p}: stride {s:2d} -> {tuple(x.shape)}")
    assert x.shape == (2, 64, 160 // s, 224 // s)
try:
    model(torch.rand(1, 3, 100, 224))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# `with_p2=True` adds a finer level, p2 at stride 4 from `block1`, in front of the others.
# Chapter 10 measures what it buys on small objects, and what it costs.

# %%
with torch.no_grad():
    p2_pyramid = BackboneWithFPN(out_channels=64, with_p2=True)(images)
print({p: tuple(x.shape) for p, x in p2_pyramid.items()})
assert list(p2_pyramid) == ["p2", "p3", "p4", "p5"] and p2_pyramid["p2"].shape == (2, 64, 160 // 4, 224 // 4)

# %% [markdown]
# `c2_passthrough=True` is a cheaper way to give p3 some of that detail, YOLOv2's "passthrough
# layer": the levels stay p3-p5, and c2's pixels join c3 before p3's lateral 1x1 convolution.
# Each 2 x 2 block of c2 becomes one location with 4 x 32 channels (space-to-depth), so no pixel
# is lost and nothing is averaged. Check: the shapes, and where one pixel of c2 lands.

# %%
c2 = torch.randn(2, 32, 40, 56)  # (B, C2, H/4, W/4) for a 160 x 224 batch
stacked = stack_c2_into_c3({"c2": c2, "c3": torch.randn(2, 64, 20, 28)})
print({level: tuple(x.shape) for level, x in stacked.items()})
assert stacked["c3"].shape == (2, 64 + 4 * 32, 20, 28)
# c2's pixel (row 2i + di, column 2j + dj) of channel k lands at c3's location (i, j), channel
# 64 + 4k + 2di + dj: the four pixels of a block sit next to each other.
i, j, di, dj, k = 3, 5, 1, 0, 7
assert stacked["c3"][0, 64 + 4 * k + 2 * di + dj, i, j] == c2[0, k, 2 * i + di, 2 * j + dj]
with torch.no_grad():
    passthrough_model = BackboneWithFPN(out_channels=64, c2_passthrough=True)
    passthrough_pyramid = passthrough_model(images)
print({p: tuple(x.shape) for p, x in passthrough_pyramid.items()}, "p3's lateral takes",
      passthrough_model.fpn.lateral["p3"].in_channels, "channels")
assert {p: x.shape for p, x in passthrough_pyramid.items()} == {p: x.shape for p, x in pyramid.items()}

# %% [markdown]
# ## Fine-tuning from ImageNet: frozen BatchNorm, frozen first stages
#
# With `pretrained=True` we follow torchvision's detection builders (`fcos_resnet50_fpn`
# passes `norm_layer=FrozenBatchNorm2d` and `trainable_backbone_layers=3`):
#
# - **BatchNorm is frozen.** In training, BatchNorm normalises with the mean and variance of
#   the current batch and folds them into running averages for evaluation. The ImageNet
#   statistics came from large batches of object-centred 224 px crops. A detection batch
#   holds 16 whole scenes, at another size, often split into a few images per GPU: its
#   statistics are noisy, differ from ImageNet's, and would overwrite the good running
#   averages with worse ones. `FrozenBatchNorm2d` keeps ImageNet's mean, variance, scale and
#   shift as fixed buffers: it is a fixed per-channel affine map `y = a·x + b`, the same in
#   training and in evaluation.
# - **The first stages are frozen** (`requires_grad=False`): by default the stem and `block1`
#   (`trainable_layers=3` trains block2 to block4). They compute generic low-level features
#   (edges, colours, textures) that ImageNet already taught well; freezing them saves the
#   gradients and saved activations of the two largest maps (stride 2 and 4), and leaves
#   fewer weights to overfit a small dataset such as VOC.
# - **From scratch nothing is frozen** (`pretrained=False`, this offline course): random
#   weights have no statistics worth keeping, so BatchNorm trains and every stage learns.
# - **The head is not concerned**: it uses GroupNorm (chapter 02), which normalises each
#   image on its own and does not depend on the batch.
#
# To load the checkpoint of a model fine-tuned from ImageNet, rebuild it with
# `pretrained=False, frozen_batchnorm=True` (nothing is downloaded): its `state_dict` holds the
# `FrozenBatchNorm2d` buffers, and if training resumes they stay frozen. (A BatchNorm2d model
# would load them too and evaluate the same, but would update them again in training.)
#
# Check, first that `FrozenBatchNorm2d` is BatchNorm's evaluation mode, written as `a·x + b`
# with `a = weight / sqrt(running_var + eps)` and `b = bias - running_mean·a`, and that
# training mode changes nothing. Then what trains, per stage, from scratch (the offline
# default) and with the fine-tuning settings (what `pretrained=True` builds; offline we keep
# the random weights).

# %%
bn = nn.BatchNorm2d(4)
with torch.no_grad():  # statistics and affine as if trained
    for buffer in (bn.running_mean, bn.weight, bn.bias):
        buffer.copy_(torch.randn(4))
    bn.running_var.copy_(torch.rand(4) + 0.5)
frozen = torchvision.ops.FrozenBatchNorm2d(4)
frozen.load_state_dict(bn.state_dict())  # drops num_batches_tracked
x = torch.randn(2, 4, 5, 5)
a = frozen.weight / (frozen.running_var + frozen.eps).sqrt()  # (4,)
b = frozen.bias - frozen.running_mean * a  # (4,)
print("same as BatchNorm2d in eval mode:", torch.allclose(frozen(x), bn.eval()(x), atol=1e-6))
print("a·x + b:", torch.allclose(frozen(x), a.view(1, 4, 1, 1) * x + b.view(1, 4, 1, 1), atol=1e-6),
      "| training mode changes nothing:", torch.equal(frozen.train()(x), frozen.eval()(x)))
print("parameters:", len(list(frozen.parameters())), "| buffers:", [name for name, _ in frozen.named_buffers()])


def count_trainable_per_stage(model):
    """Print, per trunk stage and for the FPN: norm layer type, trainable / all parameters."""
    for name in (*STAGES, "fpn"):
        module = model.fpn if name == "fpn" else model.body.get_submodule(name)
        norms = {type(m).__name__ for m in module.modules() if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d))}
        trainable = sum(prm.numel() for prm in module.parameters() if prm.requires_grad)
        total = sum(prm.numel() for prm in module.parameters())
        print(f"  {name:20s} {', '.join(sorted(norms)) or '-':18s} trainable {trainable:>9,} of {total:>9,}")


for label, kwargs in {"from scratch (default)": {},
                      "fine-tuning (frozen_batchnorm=True, trainable_layers=3)": {"frozen_batchnorm": True, "trainable_layers": 3}}.items():
    print(label)
    count_trainable_per_stage(BackboneWithFPN(out_channels=64, **kwargs))
try:
    BackboneWithFPN(trainable_layers=3)  # frozen stages, but BatchNorm that keeps updating
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Picture: what each level sees
#
# An image of the course dataset (chapter 00), letterboxed to 320 px, then cropped below the
# image to the next multiple of 32: a non-square 256 x 320 input. Top: the image with its
# boxes and, drawn to scale over the same frame, the grid of each level (one cell = one
# location that will predict a box). Bottom: the channel-mean activation of `p3`, `p4`,
# `p5`. Offline the backbone has random weights, so the maps mostly echo edges and colours;
# with ImageNet weights they respond to objects.

# %%
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset

dataset = VOCDataset(make_course_dataset(), split="val", image_size=320)
image, target = dataset[4]
h_img = -(-target["resized_size"][0] // 32) * 32  # image rows, rounded up to a multiple of 32
image = image[:, :h_img]  # (3, 256, 320): drop most of the letterbox padding
print("input:", tuple(image.shape), "objects:", [dataset.class_names[c] for c in target["labels"]])
model.eval()  # batch statistics of a single image would be meaningless
with torch.no_grad():
    pyramid = model(image[None])
print({p: tuple(x.shape[-2:]) for p, x in pyramid.items()})

# %%
H_img, W_img = image.shape[-2:]
fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
axes[0, 0].imshow(image.permute(1, 2, 0))  # (H, W, 3) for matplotlib
for x1, y1, x2, y2 in target["boxes"].tolist():
    axes[0, 0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.5))
axes[0, 0].set_title(f"input {H_img} x {W_img}")
axes[1, 0].axis("off")
for col, (p, x) in enumerate(pyramid.items(), start=1):
    s, (h, w) = model.strides[p], x.shape[-2:]
    grid = axes[0, col]
    for r in range(h + 1):
        grid.plot([0, w * s], [r * s, r * s], color="tab:blue", lw=0.7)
    for c in range(w + 1):
        grid.plot([c * s, c * s], [0, h * s], color="tab:blue", lw=0.7)
    grid.set(xlim=(0, W_img), ylim=(H_img, 0), aspect="equal", title=f"{p}: {h} x {w} locations, stride {s}")
    axes[1, col].imshow(x[0].mean(0), cmap="viridis")  # (h, w): mean over the F channels
    axes[1, col].set_title(f"{p} channel mean")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Final check
#
# What the next chapters rely on, on a batch of two 224 x 320 images in training mode: the
# three levels in order with the right shapes, finite values, and a gradient reaching every
# parameter of the trunk and the FPN (nothing detached, nothing unused).

# %%
_ = torch.manual_seed(0)
model = BackboneWithFPN(out_channels=64).train()
pyramid = model(torch.rand(2, 3, 224, 320))
print(list(pyramid), model.strides)
print({p: tuple(x.shape) for p, x in pyramid.items()})
sum(x.mean() for x in pyramid.values()).backward()
no_grad = [n for n, prm in model.named_parameters() if prm.grad is None or not prm.grad.abs().sum() > 0]
print("parameters:", sum(prm.numel() for prm in model.parameters()))
print("all finite:", all(torch.isfinite(x).all().item() for x in pyramid.values()))
print("parameters without gradient:", no_grad)
assert list(pyramid) == ["p3", "p4", "p5"] and not no_grad

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **Nearest or bilinear?** In a copy of `FPN`, upsample with `mode="bilinear"` and run the
#    check against torchvision again. How large is the largest difference on each level, and
#    why is one level unchanged? Would you expect the detector to train worse?
#    *Hint:* `(a - b).abs().max()` per level; `p5` has no level above it.
# 2. **Why multiples of 32?** Feed a `(1, 3, 100, 224)` batch to `model.body` (the trunk alone,
#    which checks nothing) and print the shapes of `c3`, `c4`, `c5`. The FPN would still run (it
#    upsamples to the lateral's size), but by which factor does it stretch `c5`'s rows onto
#    `c4`'s, and which image rows does the last `p5` cell then stand for?
#    *Hint:* each stride-2 stage turns `n` rows into `ceil(n / 2)`; chapter 03 puts the cell `h`
#    at `y = (h + 0.5) · 32`.
# 3. **Where the parameters are.** Count the parameters of the trunk and of the FPN for
#    `out_channels=64` and for the paper's 256. Which part grows, and by about what factor?
#    *Hint:* a 3x3 convolution from `F` to `F` channels has `9·F² + F` parameters.
# 4. **What one cell sees.** Make a random image require gradients, back-propagate the
#    centre cell of `p3`, then of `p5` (summed over channels), and show `|grad|` of the image
#    as a picture. Which region does each cell depend on?
#    *Hint:* `images.requires_grad_()`, then `pyramid["p5"][0, :, h // 2, w // 2].sum().backward()`.

# %% [markdown]
# ## Summary
#
# - RegNetX-400MF, read at three depths, gives `c3`, `c4`, `c5` (64, 160, 400 channels,
#   strides 8, 16, 32); it downsamples with strided convolutions, not pooling.
# - The standard FPN (1x1 laterals, nearest x2 upsampling of the lateral sum, 3x3 output
#   convs) turns them into `p3`, `p4`, `p5` with `F` channels each; it matches torchvision's
#   `FeaturePyramidNetwork` number for number.
# - Fine-tuning from ImageNet freezes the trunk's BatchNorm and its first two stages; from
#   scratch everything trains. Offline, asking for the weights fails at once with a fix.
# - Where it lives: `fcos_lib.backbone` (`BackboneWithFPN`, `FPN`, `make_regnet_x_400mf`,
#   `check_images`), `fcos_lib.checks` (`check_int`, `check_flag`, `check_positive_number`).
# - Pitfall to remember: the top-down path *up*samples, and what flows down is the lateral
#   sum, not the output of the 3x3 conv
#   ([P3](../docs/pitfalls.md#p3-an-fpn-that-downsamples-and-sends-the-wrong-map-down)).
# - Next chapter: the head that predicts classes, boxes and centerness at every location of
#   `p3`, `p4`, `p5`.
