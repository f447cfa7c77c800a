"""Bad inputs a user could plausibly pass to the library of chapters 01-07, and what each gets.

One row per call: (callable, args, kwargs, error type, message regex). Three tables:

- REFUSED_NOW: calls that crashed deep inside torch (or with a Python error that does not say
  what is wrong) or returned a wrong answer without a word, before these checks existed. Each
  row was run against that code and failed there; each now raises a one-line ValueError that
  names the argument, shows what it got and says what is allowed.
- ALREADY_REFUSED: calls that were already refused with a clear message, kept so that this
  file lists the whole set.
- STILL_WORKS: legal edge cases (empty tensors, half images, numpy numbers, integer boxes) that
  the checks must not break.

The checks are cheap: shapes, dtypes and plain Python numbers, no extra GPU sync. The values of
tensors are only read where the code already paid for it (check_gt_boxes, check_class_labels).
"""
import functools
import math

import numpy as np
import pytest
import torch

from fcos_lib.backbone import FPN, BackboneWithFPN, check_images, make_regnet_x_400mf
from fcos_lib.centerness import fcos_make_centerness_targets
from fcos_lib.deltas import fcos_apply_deltas_to_locations, fcos_get_deltas_from_locations
from fcos_lib.head import FCOSHead, flatten_level, group_norm_groups
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.losses import fcos_loss, giou_loss, one_hot_targets, sigmoid_focal_loss
from fcos_lib.matching import (check_gt_boxes, fcos_match_indices, fcos_match_locations_to_gt,
                               scale_ranges_per_fpn_level)
from fcos_lib.model import FCOS
from fcos_lib.targets import FCOSTargets, fcos_build_targets, strides_per_location

NAN, INF = math.nan, math.inf
STRIDES = {"p3": 8, "p4": 16, "p5": 32}
LOCATIONS = get_fpn_location_coords({p: (64 // s, 64 // s) for p, s in STRIDES.items()}, STRIDES)  # 64 x 64 input
LOCS = torch.cat(list(LOCATIONS.values()))  # (84, 2): 64 + 16 + 4 locations
L = LOCS.shape[0]
STRIDE_PER_LOCATION = torch.cat([torch.full((len(v),), float(STRIDES[p])) for p, v in LOCATIONS.items()])  # (84,)
GT = torch.tensor([[[4.0, 4, 40, 50, 2], [-1, -1, -1, -1, -1]]])  # (1, 2, 5): one box, one padding row
NAN_GT = torch.tensor([[[NAN, 4, 40, 50, 2]]])
INF_GT = torch.tensor([[[4.0, 4, INF, 50, 2]]])
IMAGES = torch.rand(1, 3, 64, 64)
CHANNELS = {"c3": 64, "c4": 160, "c5": 400}  # RegNetX-400MF's c3, c4, c5
FEATS = {"c3": torch.rand(1, 64, 8, 8), "c4": torch.rand(1, 160, 4, 4), "c5": torch.rand(1, 400, 2, 2)}
UPPER_STRIDES = {"P3": 8, "P4": 16, "P5": 32}


@functools.cache
def _backbone():
    return BackboneWithFPN(out_channels=16).eval()


@functools.cache
def _model():
    torch.manual_seed(0)
    return FCOS(num_classes=5, fpn_channels=16, num_convs=1)


def backbone_forward(images):
    with torch.no_grad():
        return _backbone()(images)


def fpn_forward(feats):
    return FPN(CHANNELS, out_channels=16)(feats)


def head_forward(feats):
    return FCOSHead(5, in_channels=16, num_convs=1)(feats)


def predict(images):
    with torch.no_grad():
        return _model().eval()(images)


def train_step(images, gt_boxes):
    return _model().train()(images, gt_boxes)


def targets():
    return fcos_build_targets(LOCATIONS, STRIDES, GT)


def loss(cls_logits=None, targets_=None, strides=None):
    """fcos_loss on a (1, 84) batch of 5 classes, one argument swapped for a bad one."""
    cls_logits = torch.randn(1, L, 5) if cls_logits is None else cls_logits
    return fcos_loss(cls_logits, torch.rand(1, L, 4), torch.randn(1, L, 1), targets() if targets_ is None else targets_,
                     LOCS, STRIDE_PER_LOCATION if strides is None else strides)


def plain_tuple_targets():
    return loss(targets_=tuple(targets()))


def case(call, args=(), kwargs=None, error=ValueError, match="", id=None):
    return pytest.param(call, args, kwargs or {}, error, match, id=id)


REFUSED_NOW = [
    # --- chapter 01: backbone and FPN
    case(make_regnet_x_400mf, kwargs={"pretrained": "False"}, match=r"^pretrained must be True or False; got 'False'",
         id="regnet-pretrained-str"),  # was: truthy, then "FCOS_OFFLINE=1 forbids downloads"
    case(make_regnet_x_400mf, kwargs={"frozen_batchnorm": "no"}, match=r"^frozen_batchnorm must be True or False",
         id="regnet-frozen_batchnorm-str"),  # was: silently frozen
    case(FPN, (CHANNELS, 2.5), match=r"^out_channels must be an int >= 1; got 2\.5 \(float\)",
         id="fpn-out_channels-float"),  # was: "out_channels must be divisible by groups" from nn.Conv2d
    case(FPN, (CHANNELS, True), match=r"^out_channels must be an int >= 1; got True", id="fpn-out_channels-bool"),
    case(FPN, (CHANNELS, "64"), match=r"^out_channels must be an int >= 1; got '64'", id="fpn-out_channels-str"),
    case(FPN, ({}, 16), match=r"^in_channels_per_level must be a non-empty dict", id="fpn-no-levels"),  # was: {} out
    case(FPN, ({"c3": 0}, 16), match=r"^in_channels_per_level\['c3'\] must be an int >= 1; got 0",
         id="fpn-in_channels-zero"),  # was: a Conv2d with 0 input channels
    case(FPN, ({"c3": 64.0}, 16), match=r"^in_channels_per_level\['c3'\] must be an int >= 1; got 64\.0",
         id="fpn-in_channels-float"),
    case(fpn_forward, ({"c3": FEATS["c3"], "c4": FEATS["c4"]},),
         match=r"^feats must be a dict with the levels \['c3', 'c4', 'c5'\]; got \['c3', 'c4'\]",
         id="fpn-forward-missing-level"),  # was: KeyError 'c5'
    case(fpn_forward, ({**FEATS, "c3": torch.rand(1, 32, 8, 8)},),
         match=r"^feats\['c3'\] must be \(B, 64, h, w\).*got \(1, 32, 8, 8\)", id="fpn-forward-channels"),
    case(fpn_forward, (FEATS["c3"],), match=r"^feats must be a dict.*got Tensor", id="fpn-forward-tensor"),
    case(check_images, (torch.rand(1, 3, 32, 32, dtype=torch.float64),),
         match=r"^images must be float32 .*got dtype torch\.float64\. Fix: images\.float\(\)$",
         id="check_images-float64"),  # was: accepted, then the first conv failed
    case(backbone_forward, (torch.rand(1, 3, 32, 32, dtype=torch.float64),),
         match=r"^images must be float32 .*torch\.float64", id="backbone-float64-images"),
    case(BackboneWithFPN, kwargs={"out_channels": 2.5}, match=r"^out_channels must be an int >= 1",
         id="backbone-out_channels-float"),
    case(BackboneWithFPN, kwargs={"pretrained": "False"}, match=r"^pretrained must be True or False",
         id="backbone-pretrained-str"),
    case(BackboneWithFPN, kwargs={"frozen_batchnorm": "no"}, match=r"^frozen_batchnorm must be True or False",
         id="backbone-frozen_batchnorm-str"),
    # --- chapter 02: head
    case(FCOSHead, (2.5,), match=r"^num_classes .*must be an int >= 1; got 2\.5", id="head-num_classes-float"),
    case(FCOSHead, (True,), match=r"^num_classes .*must be an int >= 1; got True", id="head-num_classes-bool"),
    case(FCOSHead, ("20",), match=r"^num_classes .*must be an int >= 1; got '20'", id="head-num_classes-str"),
    case(FCOSHead, (5,), {"in_channels": 2.5}, match=r"^in_channels must be an int >= 1; got 2\.5",
         id="head-in_channels-float"),
    case(FCOSHead, (5,), {"num_convs": 2.5}, match=r"^num_convs must be an int >= 0; got 2\.5",
         id="head-num_convs-float"),
    case(FCOSHead, (5,), {"use_groupnorm": "no"}, match=r"^use_groupnorm must be True or False",
         id="head-use_groupnorm-str"),
    case(FCOSHead, (5,), {"prior_prob": "0.01"}, match=r"^prior_prob must be in \(0, 1\).*got '0\.01'",
         id="head-prior_prob-str"),
    case(head_forward, (torch.rand(1, 16, 8, 8),), match=r"^feats must be a dict level -> \(B, 16, h, w\).*got Tensor",
         id="head-forward-tensor"),  # was: AttributeError 'Tensor' object has no attribute 'items'
    case(flatten_level, (torch.rand(1, 4, 8),), match=r"^x must be one level's \(B, K, h, w\) map; got \(1, 4, 8\)",
         id="flatten_level-3d"),  # was: "not enough values to unpack"
    case(group_norm_groups, (2.5,), match=r"^channels must be an int >= 1; got 2\.5", id="groups-float"),
    case(group_norm_groups, (True,), match=r"^channels must be an int >= 1; got True", id="groups-bool"),  # was: 1
    case(group_norm_groups, (64,), {"max_groups": 0}, match=r"^max_groups must be an int >= 1; got 0",
         id="groups-max_groups-zero"),  # was: 64 groups
    # --- chapter 03: locations
    case(get_fpn_location_coords, ({"p3": (8, 8)}, {"p3": 0}),
         match=r"^strides_per_fpn_level\['p3'\] must be a finite number > 0; got 0", id="locations-stride-zero"),
    case(get_fpn_location_coords, ({"p3": (8, 8)}, {"p3": -8}), match=r"^strides_per_fpn_level\['p3'\] .*got -8",
         id="locations-stride-negative"),
    case(get_fpn_location_coords, ({"p3": (8, 8)}, {"p3": "8"}), match=r"^strides_per_fpn_level\['p3'\] .*got '8'",
         id="locations-stride-str"),
    case(get_fpn_location_coords, ({"p3": (-1, 8)}, {"p3": 8}),
         match=r"^shape_per_fpn_level\['p3'\]\[-2\], the height H_l, must be an int >= 0; got -1",
         id="locations-negative-size"),
    case(get_fpn_location_coords, ({"p3": (100 / 32, 100 / 32)}, {"p3": 32}),
         match=r"^shape_per_fpn_level\['p3'\]\[-2\].*must be an int >= 0; got 3\.125",
         id="locations-fractional-size"),  # was: silently 3 x 3
    case(get_fpn_location_coords, ({"p3": torch.zeros(2, 16, 8, 8)}, {"p3": 8}),
         match=r"^shape_per_fpn_level\['p3'\] must be .*got a tensor of shape \(2, 16, 8, 8\)\. Fix: .*\.shape",
         id="locations-map-instead-of-shape"),
    case(get_fpn_location_coords, ([(8, 8)], {"p3": 8}), match=r"^shape_per_fpn_level must be a dict",
         id="locations-list-of-shapes"),  # was: "no stride for levels [(8, 8)]"
    case(get_fpn_location_coords, ({"p3": (8, 8)}, {"p3": 8}), {"dtype": torch.int64},
         match=r"^dtype must be a float dtype.*torch\.int64", id="locations-int-dtype"),  # was: float32 anyway
    # --- chapter 04: matching
    case(scale_ranges_per_fpn_level, ({"p5": 32, "p4": 16, "p3": 8},),
         match=r"^strides_per_fpn_level must grow from level to level, finest first", id="ranges-coarse-first"),
    case(scale_ranges_per_fpn_level, ({"p3": 0, "p4": 16},), match=r"^strides_per_fpn_level\['p3'\] .*> 0; got 0",
         id="ranges-stride-zero"),  # was: p3's range (0, 0)
    case(scale_ranges_per_fpn_level, ({"p3": "8", "p4": "16"},), match=r"^strides_per_fpn_level\['p3'\] .*got '8'",
         id="ranges-stride-str"),
    case(fcos_match_indices, (LOCS, STRIDES, GT), match=r"^locations_per_fpn_level must be a dict .*got Tensor",
         id="match-locations-tensor"),
    case(fcos_match_indices, ({p: v.T for p, v in LOCATIONS.items()}, STRIDES, GT),
         match=r"^locations_per_fpn_level\['p3'\] must be \(L_l, 2\) rows \(x, y\); got \(2, 64\)",
         id="match-locations-transposed"),
    case(fcos_match_indices, (LOCATIONS, UPPER_STRIDES, GT),
         match=r"^strides_per_fpn_level has no stride for levels \['p3', 'p4', 'p5'\]", id="match-stride-keys"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, GT, 0), match=r"^center_sampling_radius .*> 0; got 0",
         id="match-radius-zero"),  # was: no positive location at all
    case(fcos_match_indices, (LOCATIONS, STRIDES, GT, NAN), match=r"^center_sampling_radius .*> 0; got nan",
         id="match-radius-nan"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, GT, "1.5"), match=r"^center_sampling_radius .*got '1\.5'",
         id="match-radius-str"),
    case(fcos_match_locations_to_gt, (LOCATIONS, STRIDES, GT, -1.0), match=r"^center_sampling_radius .*got -1\.0",
         id="match-locations-radius-negative"),
    # --- chapter 05: deltas
    case(fcos_get_deltas_from_locations, (torch.rand(L, 3), torch.rand(1, L, 4), 8),
         match=r"^need locations \(L, 2\).*got locations \(84, 3\)", id="deltas-locations-3-columns"),
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L, 4), 0),
         match=r"^stride .*must be a finite number > 0; got 0", id="deltas-stride-zero"),  # was: inf deltas
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L, 4), -8), match=r"^stride .*got -8",
         id="deltas-stride-negative"),
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L, 4), [8, 16]),
         match=r"^stride .*got \[8, 16\] \(list\)", id="deltas-stride-list"),
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L, 4).tolist(), 8),
         match=r"^need locations .*gt_boxes list", id="deltas-gt_boxes-list"),
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), LOCS, NAN), match=r"^stride .*got nan",
         id="apply-stride-nan"),  # was: NaN boxes
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), LOCS, STRIDE_PER_LOCATION), {"image_size": (3, 64, 64)},
         match=r"^image_size must be \(H, W\).*got \(3, 64, 64\)", id="apply-image_size-chw"),
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), LOCS, STRIDE_PER_LOCATION), {"image_size": (0, 64)},
         match=r"^image_size\[0\] must be a finite number > 0; got 0", id="apply-image_size-zero"),
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), torch.rand(L, 3), 8),
         match=r"^need deltas .*locations \(84, 3\)", id="apply-locations-3-columns"),
    # --- chapter 06: targets
    case(fcos_build_targets, (LOCATIONS, STRIDES, GT.tolist()), match=r"^gt_boxes must be \(B, N, 5\).*got list",
         id="targets-gt_boxes-list"),  # was: AttributeError 'list' object has no attribute 'dim'
    case(fcos_build_targets, (LOCATIONS, STRIDES, GT, NAN), match=r"^center_sampling_radius .*got nan",
         id="targets-radius-nan"),
    case(strides_per_location, (LOCATIONS, UPPER_STRIDES), match=r"^strides_per_fpn_level has no stride for levels",
         id="strides_per_location-keys"),  # was: KeyError
    case(strides_per_location, (LOCATIONS, {"p3": 0, "p4": 16, "p5": 32}),
         match=r"^strides_per_fpn_level\['p3'\] .*got 0", id="strides_per_location-zero"),
    # --- chapter 07: losses
    case(sigmoid_focal_loss, (torch.randn(3), torch.tensor([1, 0, 0])),
         match=r"^logits and targets must be float .*torch\.int64\. Fix: targets\.float\(\)",
         id="focal-int-targets"),  # was: "result type Float can't be cast to ... Long"
    case(sigmoid_focal_loss, (torch.tensor([1, 0, 0]), torch.tensor([1.0, 0, 0])),
         match=r"^logits and targets must be float", id="focal-int-logits"),
    case(sigmoid_focal_loss, (torch.randn(3), torch.tensor([1.0, 0, 0])), {"alpha": 1.5},
         match=r"^alpha must be in \[0, 1\].*got 1\.5", id="focal-alpha"),  # was: negative losses
    case(sigmoid_focal_loss, (torch.randn(3), torch.tensor([1.0, 0, 0])), {"gamma": -1},
         match=r"^gamma must be a finite number >= 0.*got -1", id="focal-gamma"),
    case(one_hot_targets, (torch.tensor([[0, -1]]), 2.5), match=r"^num_classes must be an int >= 1; got 2\.5",
         id="one_hot-num_classes-float"),
    case(one_hot_targets, (torch.tensor([[-1, -1]]), 0), match=r"^num_classes must be an int >= 1; got 0",
         id="one_hot-num_classes-zero"),  # was: (1, 2, 0) targets
    case(one_hot_targets, (torch.tensor([[0, -1]]), True), match=r"^num_classes must be an int >= 1; got True",
         id="one_hot-num_classes-bool"),
    case(loss, (torch.randn(L, 5),), match=r"^cls_logits must be \(B, L, C\).*got \(84, 5\)",
         id="fcos_loss-unbatched"),  # was: "not enough values to unpack"
    case(plain_tuple_targets, match=r"^targets must be the FCOSTargets .*got tuple", id="fcos_loss-tuple-targets"),
    case(loss, (), {"strides": STRIDE_PER_LOCATION.tolist()}, match=r"^strides must be \(84,\) .*got list",
         id="fcos_loss-strides-list"),
    # --- chapter 07: the model
    case(FCOS, (2.5,), match=r"^num_classes .*must be an int >= 1; got 2\.5", id="FCOS-num_classes-float"),
    case(FCOS, (True,), match=r"^num_classes .*must be an int >= 1; got True", id="FCOS-num_classes-bool"),
    case(FCOS, ("20",), match=r"^num_classes .*must be an int >= 1; got '20'", id="FCOS-num_classes-str"),
    case(FCOS, (5,), {"fpn_channels": 2.5}, match=r"^fpn_channels must be an int >= 1; got 2\.5",
         id="FCOS-fpn_channels-float"),
    case(FCOS, (5,), {"fpn_channels": True}, match=r"^fpn_channels must be an int >= 1; got True",
         id="FCOS-fpn_channels-bool"),
    case(FCOS, (5,), {"num_convs": 2.5}, match=r"^num_convs must be an int >= 0; got 2\.5", id="FCOS-num_convs-float"),
    case(FCOS, (5,), {"center_sampling_radius": NAN}, match=r"^center_sampling_radius .*got nan",
         id="FCOS-radius-nan"),  # was: trains with no positive location
    case(FCOS, (5,), {"center_sampling_radius": INF}, match=r"^center_sampling_radius .*got inf",
         id="FCOS-radius-inf"),
    case(FCOS, (5,), {"center_sampling_radius": "1.5"}, match=r"^center_sampling_radius .*got '1\.5'",
         id="FCOS-radius-str"),
    case(FCOS, (5,), {"pretrained_backbone": "False"}, match=r"^pretrained_backbone must be True or False",
         id="FCOS-pretrained_backbone-str"),
    case(FCOS, (5,), {"frozen_batchnorm": "no"}, match=r"^frozen_batchnorm must be True or False",
         id="FCOS-frozen_batchnorm-str"),
    case(FCOS, (5,), {"use_groupnorm": "False"}, match=r"^use_groupnorm must be True or False",
         id="FCOS-use_groupnorm-str"),
    case(predict, (IMAGES.double(),), match=r"^images must be float32 .*images\.float\(\)", id="FCOS-float64-images"),
    case(train_step, (torch.rand(1, 3, 64, 64, device="meta"), GT),
         match=r"^gt_boxes must be on the images' device, meta; got cpu\. Fix: gt_boxes\.to\(images\.device\)",
         id="FCOS-gt_boxes-other-device"),  # was: a device error from inside the backbone
]

ALREADY_REFUSED = [
    case(check_images, (torch.zeros(1, 3, 64, 64, dtype=torch.uint8),), match=r"images\.float\(\) / 255",
         id="check_images-uint8"),
    case(check_images, (torch.rand(3, 64, 64),), match=r"images\[None\]", id="check_images-unbatched"),
    case(check_images, ([torch.rand(3, 64, 64)],), match=r"got list", id="check_images-list"),
    case(check_images, (torch.rand(1, 3, 100, 64),), match=r"divisible by 32.*\(128, 64\)", id="check_images-size"),
    case(make_regnet_x_400mf, kwargs={"pretrained": True}, error=RuntimeError, match="FCOS_OFFLINE",
         id="regnet-pretrained-offline"),
    case(BackboneWithFPN, kwargs={"trainable_layers": 6}, match=r"trainable_layers must be an int in \[0, 5\]",
         id="backbone-trainable_layers"),
    case(BackboneWithFPN, kwargs={"trainable_layers": 3}, match=r"frozen_batchnorm=True",
         id="backbone-frozen-stage-with-batchnorm"),
    case(FCOSHead, (5,), {"in_channels": 0}, match=r"channels must be .*got 0", id="head-in_channels-zero"),
    case(FCOSHead, (5,), {"prior_prob": NAN}, match=r"prior_prob must be in \(0, 1\)", id="head-prior_prob-nan"),
    case(head_forward, ({"p3": torch.rand(1, 32, 8, 8)},), match=r"feats\['p3'\] must be \(B, 16, h, w\)",
         id="head-forward-channels"),
    case(get_fpn_location_coords, ({"p3": (8, 8), "p4": (4, 4)}, {"p3": 8}), match=r"no stride for levels \['p4'\]",
         id="locations-missing-stride"),
    case(get_fpn_location_coords, ({"p3": (2, 2, 2)}, {"p3": 8}), match=r"shape_per_fpn_level\['p3'\] must be",
         id="locations-3-numbers"),
    case(check_gt_boxes, (torch.rand(16, 5),), match=r"gt_boxes must be \(B, N, 5\).*got \(16, 5\)",
         id="check_gt_boxes-unbatched"),
    case(check_gt_boxes, (torch.tensor([[[10.0, 10, 10, 40, 2]]]),), match=r"gt_boxes\[0, 0\].*degenerate",
         id="check_gt_boxes-degenerate"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, NAN_GT), match=r"gt_boxes\[0, 0\] .*not finite",
         id="match-nan-gt"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, torch.rand(16, 4)), match=r"gt_boxes must be \(B, N, 5\)",
         id="match-4-columns"),
    case(fcos_match_locations_to_gt, (LOCATIONS, STRIDES, INF_GT), match=r"gt_boxes\[0, 0\] .*not finite",
         id="match-locations-inf-gt"),
    case(fcos_build_targets, (LOCATIONS, STRIDES, NAN_GT), match=r"gt_boxes\[0, 0\] .*not finite",
         id="targets-nan-gt"),
    case(fcos_build_targets, (LOCATIONS, STRIDES, GT[0]), match=r"gt_boxes\[None\]", id="targets-unbatched"),
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L - 1, 4), 8), match=r"need locations \(L, 2\)",
         id="deltas-L-mismatch"),
    case(fcos_get_deltas_from_locations, (LOCS, torch.rand(1, L, 4), torch.full((5,), 8.0)),
         match=r"stride must be a number or an \(L,\) tensor", id="deltas-stride-tensor-length"),
    case(fcos_make_centerness_targets, (torch.rand(L, 5),), match=r"deltas must be \(\.\.\., 4\)",
         id="centerness-5-columns"),
    case(sigmoid_focal_loss, (torch.randn(3), torch.ones(4)), match=r"logits and targets must .*same shape",
         id="focal-shape"),
    case(giou_loss, (torch.rand(3, 4), torch.rand(2, 4)), match=r"boxes1 and boxes2 must both be \(K, 4\)",
         id="giou-shape"),
    case(one_hot_targets, (torch.tensor([[0, 5]]), 5), match=r"labels\[0, 1\] has class label 5",
         id="one_hot-label-too-large"),
    case(one_hot_targets, (torch.tensor([[0.0, NAN]]), 5), match=r"labels\[0, 1\] has class label nan",
         id="one_hot-label-nan"),
    case(fcos_loss, (torch.randn(1, L, 5), torch.rand(1, L, 4), torch.randn(1, L, 1), None, LOCS,
                     STRIDE_PER_LOCATION, "GIoU"), match=r"box_loss must be one of", id="fcos_loss-box_loss"),
    case(loss, (torch.randn(2, L, 5),), match=r"box_deltas must be \(2, 84, 4\)", id="fcos_loss-batch-mismatch"),
    case(FCOS, (0,), match=r"num_classes.*>= 1.*got 0", id="FCOS-num_classes-zero"),
    case(FCOS, (5,), {"fpn_channels": 0}, match=r"channels must be .*got 0", id="FCOS-fpn_channels-zero"),
    case(FCOS, (5,), {"num_convs": -1}, match=r"num_convs must be .*>= 0; got -1", id="FCOS-num_convs-negative"),
    case(FCOS, (5,), {"center_sampling_radius": 0}, match=r"center_sampling_radius.*> 0.*got 0",
         id="FCOS-radius-zero"),
    case(FCOS, (5,), {"box_loss": "GIoU"}, match=r"box_loss must be one of", id="FCOS-box_loss"),
    case(FCOS, (5,), {"trainable_backbone_layers": 6}, match=r"trainable_layers must be an int in \[0, 5\]",
         id="FCOS-trainable_backbone_layers"),
    case(predict, (torch.zeros(1, 3, 64, 64, dtype=torch.uint8),), match=r"images\.float\(\) / 255",
         id="FCOS-uint8-images"),
    case(train_step, (IMAGES, None), match=r"training mode needs gt_boxes", id="FCOS-train-without-gt"),
    case(train_step, (IMAGES, GT[0]), match=r"gt_boxes must be \(1, N, 5\).*got \(2, 5\)", id="FCOS-gt-unbatched"),
    case(train_step, (IMAGES, GT.expand(2, -1, -1)), match=r"gt_boxes must be \(1, N, 5\).*got \(2, 2, 5\)",
         id="FCOS-gt-batch-mismatch"),
    case(train_step, (IMAGES, NAN_GT), match=r"gt_boxes\[0, 0\] .*not finite", id="FCOS-nan-gt"),
    case(train_step, (IMAGES, torch.tensor([[[4.0, 4, 40, 50, 5]]])), match=r"class label 5.*num_classes=5",
         id="FCOS-class-too-large"),
]


@pytest.mark.parametrize("call, args, kwargs, error, match", REFUSED_NOW)
def test_bad_input_is_refused_at_the_call(call, args, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("call, args, kwargs, error, match", ALREADY_REFUSED)
def test_bad_input_already_refused(call, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(*args, **kwargs)


STILL_WORKS = [
    case(check_images, (torch.rand(0, 3, 32, 32),), id="check_images-empty-batch"),
    case(backbone_forward, (torch.rand(1, 3, 64, 64).half(),), id="backbone-half-images"),  # promoted to float32
    case(predict, (torch.rand(0, 3, 64, 64),), id="FCOS-empty-batch"),
    case(train_step, (IMAGES, torch.zeros(1, 0, 5)), id="FCOS-no-boxes"),
    case(train_step, (IMAGES, torch.full((1, 3, 5), -1.0)), id="FCOS-only-padding"),
    case(FCOS, (np.int64(5),), {"fpn_channels": np.int64(16), "num_convs": 0, "center_sampling_radius": None},
         id="FCOS-numpy-ints-no-stem-no-sampling"),
    case(get_fpn_location_coords, ({"p3": (0, 8)}, {"p3": np.int64(8)}), id="locations-empty-level-numpy-stride"),
    case(get_fpn_location_coords, ({"p3": torch.Size([2, 16, 8, 8])}, {"p3": 8.0}), id="locations-torch-size"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, torch.zeros(2, 0, 5)), id="match-no-boxes"),
    case(fcos_match_indices, (LOCATIONS, STRIDES, GT[0], 1.5), id="match-one-image"),
    case(fcos_build_targets, (LOCATIONS, STRIDES, torch.zeros(0, 0, 5)), id="targets-empty-batch"),
    case(fcos_get_deltas_from_locations, (LOCS[:0], torch.zeros(1, 0, 5), torch.tensor(8.0)), id="deltas-no-locations"),
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), LOCS, STRIDE_PER_LOCATION), {"image_size": (64.0, 64)},
         id="apply-float-image_size"),
    case(fcos_apply_deltas_to_locations, (torch.rand(1, L, 4), LOCS, 8), {"image_size": torch.Size([64, 64])},
         id="apply-torch-size-image_size"),
    case(fcos_make_centerness_targets, (torch.zeros(0, 4),), id="centerness-empty"),
    case(sigmoid_focal_loss, (torch.randn(0), torch.zeros(0)), {"alpha": -1, "gamma": 0}, id="focal-empty-no-alpha"),
    case(one_hot_targets, (torch.zeros(1, 0, dtype=torch.long), np.int64(3)), id="one_hot-empty"),
]


@pytest.mark.parametrize("call, args, kwargs, error, match", STILL_WORKS)
def test_legal_edge_inputs_still_work(call, args, kwargs, error, match):
    call(*args, **kwargs)


def test_integer_ground_truth_is_matched_like_float():
    # Pixel annotations are often integers (VOC's are); the matching crashed on them before
    # ("value cannot be converted to type int64_t without overflow": the scale range's inf).
    for gt in (GT, torch.tensor([[[10.0, 12, 60, 50, 1], [0, 0, 64, 64, 0]]])):
        as_int = gt.long()
        assert torch.equal(fcos_match_indices(LOCATIONS, STRIDES, as_int, 1.5),
                           fcos_match_indices(LOCATIONS, STRIDES, gt, 1.5))
        matched = fcos_match_locations_to_gt(LOCATIONS, STRIDES, as_int[0])
        assert all(m.dtype == torch.float32 for m in matched.values())
        int_targets = fcos_build_targets(LOCATIONS, STRIDES, as_int)
        assert all(torch.equal(a, b) for a, b in zip(int_targets, fcos_build_targets(LOCATIONS, STRIDES, gt)))
    assert isinstance(targets(), FCOSTargets)
