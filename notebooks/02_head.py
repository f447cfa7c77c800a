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
# # 02 · The prediction head
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/fcos-course/fcos-from-scratch/blob/v0.1.0/notebooks/02_head.ipynb)
#
# Chapter 01 gave us three feature maps, `p3`, `p4`, `p5`, each `(B, F, H_l, W_l)`. FCOS
# predicts, at **every location** of every level:
#
# - `C` class logits (is there an object of class c whose box contains this location?),
# - 4 box deltas `(l, t, r, b)`: positive distances from the location to the box's four sides,
# - 1 centerness logit: how close the location is to the centre of that box.
#
# The same head (the same weights) runs on all three levels (FCOS, Tian et al. 2019, §3.2):
# an object is the same object whatever its size, only the level changes. This chapter builds
# that head and flattens its outputs into the `(B, L_l, ...)` layout that the rest of the
# course uses.

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
#| default_exp head

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from fcos_lib.backbone import BackboneWithFPN

_ = torch.manual_seed(0)

# %% [markdown]
# ## The shape of the head
#
# ```
#                ┌─ cls stem: num_convs x [3x3 conv, GroupNorm, ReLU] ─── 3x3 conv ─► C class logits
#  p_l ──────────┤
#  (B, F, h, w)  └─ reg stem: num_convs x [3x3 conv, GroupNorm, ReLU] ─┬─ 3x3 conv, exp ─► 4 box deltas (l, t, r, b)
#                                                                      └─ 3x3 conv ─► 1 centerness logit
# ```
#
# - **Two stems**, one for classification and one for regression, each `num_convs` (4 in the
#   paper) 3x3 convolutions that keep `F` channels. The two tasks want different features
#   (what vs. where), so they do not share the stem.
# - **Centerness on the regression branch.** The paper (§3.3) put it next to the class logits;
#   the later FCOS ("FCOS: A simple and strong anchor-free object detector", Tian et al. 2020,
#   and its "improvements" list) moved it to the regression branch, and torchvision's FCOS
#   does the same. Centerness is a property of the box geometry (how central the location is
#   in its box), which is what the regression stem's features encode, and the move gave a
#   small AP gain. We follow the later version.
# - **GroupNorm** after each stem conv, as in the paper's head. Batch statistics would be
#   poor here: detection batches are small, and the same convs see three levels of very
#   different sizes. GroupNorm normalises each image on its own. It is optional
#   (`use_groupnorm=False` gives conv + ReLU, the seed's baseline).
#
# GroupNorm needs the group count to divide the channels. The paper uses 32 groups with
# `F = 256`. Our rule: `num_groups = gcd(32, F)`, i.e. the paper's 32 whenever `F` is a
# multiple of 32 (64, 128, 256), otherwise the largest divisor of 32 that divides `F`
# (48 -> 16, 20 -> 4), so any `F` works.

# %%
#| export
"""FCOS prediction head: class logits, LTRB box deltas and centerness at every location.

Chapter 02 of the course (notebooks/02_head.py).

References:
- FCOS: Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", §3.1
  (per-location classification and (l, t, r, b) regression as exp(x), prior-probability bias
  init), §3.2 (one head shared across FPN levels), §3.3 (centerness).
- Checked against torchvision.models.detection.fcos (FCOSClassificationHead,
  FCOSRegressionHead): 3x3 convs + GroupNorm(32) + ReLU stems, N(0, 0.01) init of every head
  conv, centerness on the regression branch, (B, H*W, K) row-major flattening. Unlike
  torchvision (ReLU on the box output), the box deltas are the paper's exp(x): a ReLU side that
  goes negative gets no gradient again.

Dimension letters: B images, C classes, F FPN channels, h/w one level's height/width,
L_l = h*w locations of one level.
"""
import math
import numbers

import torch
from torch import nn

from fcos_lib.checks import check_flag, check_int


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """Groups for GroupNorm over `channels`: gcd(max_groups, channels).

    The paper's 32 whenever channels is a multiple of 32, otherwise the largest divisor of 32
    that divides channels, so GroupNorm always accepts it.
    """
    return math.gcd(check_int(max_groups, "max_groups"), check_int(channels, "channels"))


def flatten_level(x: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) map -> (B, h*w, K), row-major: location k = h_idx * w + w_idx."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be one level's (B, K, h, w) map; got {shape}. Fix: add the batch axis with x[None].")
    B, K, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, h * w, K)  # (B, h, w, K) -> (B, h*w, K)


# exp(MAX_LOG_DELTA) = 1000 strides: no real box is that large, and float16 holds it.
MAX_LOG_DELTA = math.log(1000.0)


def positive_deltas(x: torch.Tensor) -> torch.Tensor:
    """Raw box-conv outputs (any shape) -> positive deltas exp(min(x, MAX_LOG_DELTA)).

    exp, as in the paper, rather than ReLU: a ReLU'd side that goes negative is 0 and gets no
    gradient again (see the pitfall below); exp(x) has gradient exp(x) > 0 everywhere.
    """
    return torch.exp(x.clamp(max=MAX_LOG_DELTA))


# The two activations FCOSHead(box_activation=...) offers: the paper's exp, and the seed's ReLU.
BOX_ACTIVATIONS = {"exp": positive_deltas, "relu": torch.relu}

# %% [markdown]
# Check: the group rule on a few widths, and the flattening order on a tiny map whose values
# encode their own position, `10 * h + w`. Row-major means: all of row 0 left to right, then
# row 1, so location `k` sits at `(h, w) = divmod(k, W)`. Last, `positive_deltas` (why `exp`:
# see the head below): always > 0, capped at 1000, and its gradient is never zero below the
# cap, also for negative inputs, where a ReLU would give 0.

# %%
print({F: group_norm_groups(F) for F in (16, 20, 48, 64, 256)})
h, w = 2, 3
pos = (10 * torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)).float()  # (h, w): 10*h + w
print(pos)
flat = flatten_level(pos.view(1, 1, h, w))  # (1, h*w, 1)
print(flat[0, :, 0].tolist())
assert all(flat[0, k, 0] == 10 * (k // w) + k % w for k in range(h * w))
x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 50.0], requires_grad=True)
positive_deltas(x).sum().backward()
print("positive_deltas:", [round(v, 3) for v in positive_deltas(x).tolist()], "gradient > 0 below the cap:",
      bool((x.grad[:4] > 0).all()))

# %% [markdown]
# ## Initialisation
#
# Two details from the paper (and RetinaNet, which FCOS follows) keep the first training
# steps sane:
#
# - **Every head conv** (stem convs and the three predictors) starts from weights drawn from
#   N(0, 0.01) and zero bias. Outputs start small, near the bias.
# - The **class-logit bias** starts at `b = -log((1 - π) / π)` with `π = 0.01`, so that
#   `sigmoid(b) = π`: every location starts out saying "1 % object". Almost every location is
#   background, so with a bias of 0 (probability 0.5) the focal loss would be swamped by
#   thousands of confident-wrong negatives in the first steps.
#
# For `π = 0.01`: `b = -log(99) ≈ -4.595`.
#
# > **Pitfall P4** ([the course's pitfalls note](../docs/pitfalls.md#p4-1x1-stems-and-a-partial-init-in-the-head)). The seed's stems use **1x1** convolutions: each location
# > would then only see its own feature vector, while FCOS's 3x3 convs widen what each
# > prediction sees. The seed also gives only the stems the N(0, 0.01) init and leaves the
# > three predictors at PyTorch's default (Kaiming-uniform, far larger), so the initial
# > boxes and centerness are large random numbers. The reference FCOS initialises every head
# > conv with N(0, 0.01), plus the prior bias on the class logits; we do the same.
#
# **Departure from the paper: no learnable scale per level.** The paper regresses
# `exp(s_l · x)` with a learnable `s_l` per level, because its targets are in pixels and a
# box at `p5` is ~4x larger than one at `p3`. We regress deltas divided by the level's
# stride (chapter 05), so targets have the same range at every level and one shared head
# needs no per-level scale.
#
# **Kept from the paper: `exp`.** A distance is positive, so the head returns
# `exp(x)`, not the raw conv output `x`. At initialisation `x ≈ 0`, so every location starts
# with a box reaching one stride on each side.
#
# > **Pitfall P5** ([the course's pitfalls note](../docs/pitfalls.md#p5-a-relu-on-the-box-deltas)). **A ReLU on the deltas (the later FCOS, torchvision's head) has a dead zone.** A side
# > predicted negative is cut to 0 and gets no gradient through the GIoU loss (chapter 07). If
# > early training pushes the shared bias of the box conv below 0, every side is dead and the
# > box loss sits at exactly 1.0 for the rest of the run. We saw it happen: without centre
# > sampling (chapter 04), on a harder generated dataset, every box collapsed within 20
# > iterations and the run ended with mAP 0. With `exp` the gradient never vanishes, and the
# > same run trained normally. The `exp` is clamped at `exp(MAX_LOG_DELTA)` = 1000 strides, far
# > beyond any image, so it cannot overflow (also not in float16).

# %%
#| export
class FCOSHead(nn.Module):
    """The FCOS head, shared by all FPN levels.

    Args:
        num_classes: C, number of object classes (no background class: sigmoid per class).
        in_channels: F, channels of every FPN level.
        num_convs: 3x3 conv layers in each stem (4 in the paper).
        use_groupnorm: GroupNorm(group_norm_groups(F), F) after each stem conv, as in the paper.
        prior_prob: π, the initial foreground probability of every class logit.
        box_activation: "exp" (the paper's exp(x), the default) or "relu" (the seed's and
            torchvision's max(x, 0); pitfall P5). Chapter 10 measures the two.
        centerness_on: "reg" (the later FCOS, torchvision: centerness from the regression stem)
            or "cls" (the paper's §3.3: from the classification stem). Chapter 10 measures both.

    forward(feats: {"p3": (B, F, h, w), ...}) -> (cls_logits, box_deltas, ctr_logits), each a
    dict level -> (B, h*w, C) / (B, h*w, 4) / (B, h*w, 1), flattened row-major (location
    k = h_idx * w + w_idx). Class and centerness logits are raw (no activation); box deltas
    are exp(x) > 0 (or max(x, 0) >= 0), distances in units of the level's stride.
    """

    def __init__(self, num_classes: int, in_channels: int = 64, num_convs: int = 4,
                 use_groupnorm: bool = True, prior_prob: float = 0.01, box_activation: str = "exp",
                 centerness_on: str = "reg"):
        super().__init__()
        num_classes = check_int(num_classes, "num_classes (the object classes, no background class)")
        in_channels = check_int(in_channels, "in_channels")
        num_convs = check_int(num_convs, "num_convs", minimum=0)
        check_flag(use_groupnorm, "use_groupnorm")
        if isinstance(prior_prob, bool) or not isinstance(prior_prob, numbers.Real) or not 0 < prior_prob < 1:
            raise ValueError(f"prior_prob must be in (0, 1), e.g. 0.01; got {prior_prob!r}")
        if box_activation not in BOX_ACTIVATIONS:
            raise ValueError(f"box_activation must be one of {tuple(BOX_ACTIVATIONS)}; got {box_activation!r}")
        if centerness_on not in ("reg", "cls"):
            raise ValueError(f"centerness_on must be 'reg' (regression stem) or 'cls' (classification stem); "
                             f"got {centerness_on!r}")
        self.box_activation = BOX_ACTIVATIONS[box_activation]
        self.centerness_on = centerness_on
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.cls_stem = self._make_stem(in_channels, num_convs, use_groupnorm)
        self.reg_stem = self._make_stem(in_channels, num_convs, use_groupnorm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.box_deltas = nn.Conv2d(in_channels, 4, kernel_size=3, padding=1)
        # Centerness on the regression branch by default (later FCOS, torchvision), not the paper's §3.3.
        self.ctr_logits = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # every head conv: stems and the three predictors
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _make_stem(channels: int, num_convs: int, use_groupnorm: bool) -> nn.Sequential:
        layers = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
            if use_groupnorm:
                layers.append(nn.GroupNorm(group_norm_groups(channels), channels))
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def forward(self, feats: dict[str, torch.Tensor]):
        if not isinstance(feats, dict):
            raise ValueError(f"feats must be a dict level -> (B, {self.in_channels}, h, w), the FPN's output; "
                             f"got {type(feats).__name__}. Fix: for one map x, pass {{'p3': x}}.")
        cls_logits, box_deltas, ctr_logits = {}, {}, {}
        for level, x in feats.items():
            if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"feats[{level!r}] must be (B, {self.in_channels}, h, w) (in_channels={self.in_channels}); "
                    f"got shape {shape}. Fix: build FCOSHead(in_channels=...) with the FPN's channels."
                )
            cls_features = self.cls_stem(x)  # (B, F, h, w)
            reg_features = self.reg_stem(x)  # (B, F, h, w)
            cls_logits[level] = flatten_level(self.cls_logits(cls_features))  # (B, h*w, C)
            box_deltas[level] = flatten_level(self.box_activation(self.box_deltas(reg_features)))  # (B, h*w, 4)
            ctr_features = reg_features if self.centerness_on == "reg" else cls_features
            ctr_logits[level] = flatten_level(self.ctr_logits(ctr_features))  # (B, h*w, 1)
        return cls_logits, box_deltas, ctr_logits

# %% [markdown]
# Check, on the pyramid of a non-square 160 x 224 batch from chapter 01:
#
# - shapes: `p3` is 20 x 28, so `L_l = 560` locations; `p4` 10 x 14 = 140; `p5` 5 x 7 = 35;
# - every head conv has weight std ≈ 0.01 and the class bias is `-log(99) ≈ -4.595`;
# - the initial class probabilities are all ≈ 0.01 (the weights are tiny, so the bias rules);
# - a size that is not a whole number, `num_classes=2.5`, is refused by chapter 01's `check_int`
#   before any layer is built.

# %%
backbone = BackboneWithFPN(out_channels=64)
head = FCOSHead(num_classes=20, in_channels=64)
with torch.no_grad():
    pyramid = backbone(torch.rand(2, 3, 160, 224))
    cls_logits, box_deltas, ctr_logits = head(pyramid)
for level in pyramid:
    print(level, tuple(pyramid[level].shape), "->", tuple(cls_logits[level].shape),
          tuple(box_deltas[level].shape), tuple(ctr_logits[level].shape))
stds = {name: round(m.weight.std().item(), 3) for name, m in head.named_modules() if isinstance(m, nn.Conv2d)}
print("conv weight std:", stds)
print("class bias:", round(head.cls_logits.bias[0].item(), 3), "= -log(99):", round(-math.log(99), 3))
probs = torch.cat([c.sigmoid().flatten() for c in cls_logits.values()])
print(f"initial class probability: mean {probs.mean():.3f}, all within [0.003, 0.03]:",
      bool(((probs > 0.003) & (probs < 0.03)).all()))
try:
    FCOSHead(num_classes=2.5)
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Which output belongs to which location?
#
# The rest of the course pairs prediction `k` of a level with location `k` of chapter 03,
# whose centre is `x = (w + 0.5) * stride, y = (h + 0.5) * stride` with `k = h * W_l + w`. So
# the head's row `k` must be the conv output at `(h, w) = divmod(k, W_l)`. Here we check that
# on `p4` (10 x 14) by reading the predictor's 2-D map directly.

# %%
p4 = pyramid["p4"]
W_l = p4.shape[-1]
with torch.no_grad():
    cls_map = head.cls_logits(head.cls_stem(p4))  # (B, C, h, w), before flattening
for k in (0, 13, 14, 139):
    h_idx, w_idx = divmod(k, W_l)
    same = torch.equal(cls_logits["p4"][:, k], cls_map[:, :, h_idx, w_idx])
    print(f"k={k:3d} -> (h, w)=({h_idx}, {w_idx}): same prediction: {same}")

# %% [markdown]
# ## Picture: the initial outputs
#
# Before training, the head should be calm: class probabilities bunched around π, box deltas
# bunched around `exp(0) = 1` (one stride on each side), centerness logits small (below 1
# in size). A histogram per output over all locations of the batch shows it.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
values = {
    "class probability (sigmoid)": probs,
    "box deltas (exp)": torch.cat([d.flatten() for d in box_deltas.values()]),
    "centerness logit (raw)": torch.cat([c.flatten() for c in ctr_logits.values()]),
}
for ax, (title, v) in zip(axes, values.items()):
    ax.hist(v.numpy(), bins=50)
    ax.set_title(title)
plt.tight_layout()
plt.show()
print("largest |value|:", {title: round(v.abs().max().item(), 1) for title, v in values.items()})

# %% [markdown]
# ## Final check
#
# The head the model will train: backbone + FPN + head on a non-square 224 x 320 batch in
# training mode, with and without GroupNorm. Outputs have the contract's shapes, and a
# gradient reaches every parameter of the head (both stems, all three predictors, GroupNorm
# weights).

# %%
torch.manual_seed(0)
pyramid = BackboneWithFPN(out_channels=64).train()(torch.rand(2, 3, 224, 320))
for use_groupnorm in (True, False):
    head = FCOSHead(num_classes=20, in_channels=64, use_groupnorm=use_groupnorm).train()
    cls_logits, box_deltas, ctr_logits = head(pyramid)
    loss = sum(c.mean() + d.mean() + t.mean() for c, d, t in zip(
        cls_logits.values(), box_deltas.values(), ctr_logits.values()))
    loss.backward(retain_graph=True)
    no_grad = [n for n, prm in head.named_parameters() if prm.grad is None or not prm.grad.abs().sum() > 0]
    shapes = {level: (cls_logits[level].shape[1:], box_deltas[level].shape[2], ctr_logits[level].shape[2])
              for level in cls_logits}
    print(f"use_groupnorm={use_groupnorm}: GroupNorm layers", sum(isinstance(m, nn.GroupNorm) for m in head.modules()),
          "| parameters", sum(prm.numel() for prm in head.parameters()))
    print("  shapes:", {level: (tuple(c), d, t) for level, (c, d, t) in shapes.items()})
    print("  parameters without gradient:", no_grad)
    assert not no_grad
    assert [x.shape[1] for x in cls_logits.values()] == [28 * 40, 14 * 20, 7 * 10]

# %% [markdown]
# ## Questions and small experiments
#
# No answers here: work them out, in this notebook or in a scratch one.
#
# 1. **The prior bias.** Build `FCOSHead(num_classes=5)` with `prior_prob=0.01` and with `0.5`,
#    and compute the summed binary cross-entropy of the initial class logits of a 224 x 224
#    image against "no object anywhere" (all targets 0). How many times larger is the second,
#    and what would its gradient do to the first training steps?
#    *Hint:* `F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="sum")`.
# 2. **exp or ReLU.** Pass `x = torch.linspace(-3, 3, 7, requires_grad=True)` through
#    `positive_deltas` and through `torch.relu`, back-propagate the sum and print `x.grad`.
#    Which outputs could a training step never move again with the ReLU?
#    *Hint:* pitfall P5.
# 3. **One head for three levels.** How many parameters would three separate heads (one per
#    level) have, against the shared one? What does sharing assume about what the levels ask
#    of the head?
#    *Hint:* `sum(p.numel() for p in head.parameters())`; chapter 05 divides the box targets by
#    the stride for the same reason.

# %% [markdown]
# ## Summary
#
# - One head, the same weights on every level: two stems of 3x3 conv + GroupNorm + ReLU, then
#   three predictors: `C` class logits, 4 box deltas `exp(x)` in strides, 1 centerness logit
#   (on the regression branch, as the later FCOS and torchvision).
# - Every head conv starts from N(0, 0.01), and the class bias from `-log(99)`, so that every
#   location first says "1 % object".
# - Outputs are flattened row-major to `(B, h*w, K)`: row `k` is the cell
#   `(h, w) = divmod(k, W_l)`.
# - Where it lives: `fcos_lib.head` (`FCOSHead`, `flatten_level`, `positive_deltas`,
#   `group_norm_groups`).
# - Pitfall to remember: a ReLU on the box deltas can die and never recover; `exp` keeps a
#   gradient everywhere ([P5](../docs/pitfalls.md#p5-a-relu-on-the-box-deltas)).
# - Next chapter: the image point `(x, y)` that each of those rows stands for.
