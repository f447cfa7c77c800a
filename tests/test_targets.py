"""Chapter 06: all the targets of a batch (fcos_lib/targets.py)."""
import math

import pytest
import torch

from fcos_lib.deltas import fcos_apply_deltas_to_locations
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import fcos_match_locations_to_gt
from fcos_lib.targets import FCOSTargets, fcos_build_targets, strides_per_location

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def locations_for(H, W, dtype=torch.float32):
    return get_fpn_location_coords({p: (H // s, W // s) for p, s in STRIDES.items()}, STRIDES, dtype=dtype)


def random_gt(seed, B, N, H, W, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, N, 2, generator=g) * torch.tensor([W, H])
    wh = torch.rand(B, N, 2, generator=g) * 190 + 6
    gt = torch.cat([(xy - wh / 2).clamp(min=0), torch.minimum(xy + wh / 2, torch.tensor([W, H]).float()),
                    torch.randint(0, 5, (B, N, 1), generator=g).float()], -1).to(dtype)
    gt[0, N // 2:] = -1
    return gt


def test_strides_per_location():
    locs = locations_for(160, 224)
    s = strides_per_location(locs, STRIDES)
    assert s.shape == (560 + 140 + 35,)
    assert s[:560].eq(8).all() and s[560:700].eq(16).all() and s[700:].eq(32).all()
    assert strides_per_location(locations_for(64, 64, torch.float64), STRIDES).dtype == torch.float64


@pytest.mark.parametrize("radius", [None, 1.5])
def test_shapes_non_square_and_consistency(radius):
    H, W = 160, 224
    locs = locations_for(H, W)
    gt = random_gt(0, 3, 6, H, W)
    t = fcos_build_targets(locs, STRIDES, gt, radius)
    assert isinstance(t, FCOSTargets)
    L = 560 + 140 + 35
    assert t.matched_boxes.shape == (3, L, 5) and t.deltas.shape == (3, L, 4) and t.centerness.shape == (3, L)
    fg = t.matched_boxes[..., 4] >= 0
    assert fg.any()
    assert torch.equal(fg, t.centerness >= 0) and torch.equal(fg, (t.deltas > 0).all(-1))
    assert (t.matched_boxes[~fg] == -1).all() and (t.deltas[~fg] == -1).all() and (t.centerness[~fg] == -1).all()
    assert not any(x.isnan().any() for x in t)
    assert (t.centerness[fg] <= 1).all()
    # levels concatenated p3, p4, p5: equal to the per-level matching
    per_level = fcos_match_locations_to_gt(locs, STRIDES, gt, radius)
    assert torch.equal(t.matched_boxes, torch.cat([per_level[p] for p in ("p3", "p4", "p5")], 1))
    # the deltas decode back to the matched boxes
    boxes = fcos_apply_deltas_to_locations(t.deltas, torch.cat(list(locs.values())), strides_per_location(locs, STRIDES))
    assert torch.allclose(boxes[fg], t.matched_boxes[fg][:, :4], atol=1e-4)


def test_hand_worked_location():
    gt = torch.tensor([[[80.0, 40, 140, 90, 0], [90, 50, 120, 70, 1], [10, 10, 200, 200, 2]]])
    t = fcos_build_targets(locations_for(224, 224), STRIDES, gt)
    k = 7 * 28 + 12  # p3 (h=7, w=12) = (100, 60)
    assert t.matched_boxes[0, k].tolist() == [90, 50, 120, 70, 1]
    assert t.deltas[0, k].tolist() == [1.25, 1.25, 2.5, 1.25]
    assert abs(t.centerness[0, k].item() - math.sqrt(0.5)) < 1e-6


@pytest.mark.parametrize("gt", [torch.full((2, 3, 5), -1.0), torch.zeros(2, 0, 5)], ids=["all-padding", "N=0"])
def test_empty_ground_truth_is_all_background(gt):
    t = fcos_build_targets(locations_for(224, 224), STRIDES, gt, 1.5)
    assert t.matched_boxes.shape == (2, 1029, 5)
    assert (t.matched_boxes == -1).all() and (t.deltas == -1).all() and (t.centerness == -1).all()


def test_degenerate_box_raises_value_error():
    gt = torch.tensor([[[10.0, 10, 10, 40, 2]]])  # zero width
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\].*degenerate"):
        fcos_build_targets(locations_for(224, 224), STRIDES, gt)


def test_needs_a_batch():
    with pytest.raises(ValueError, match=r"gt_boxes\[None\]"):
        fcos_build_targets(locations_for(224, 224), STRIDES, torch.full((3, 5), -1.0))


def test_outputs_follow_float64_and_no_grad():
    gt = random_gt(1, 2, 4, 224, 224, torch.float64).requires_grad_()
    t = fcos_build_targets(locations_for(224, 224), STRIDES, gt, 1.5)  # float32 locations, float64 boxes
    assert all(x.dtype == torch.float64 for x in t)
    assert not any(x.requires_grad for x in t)


def test_float64_locations_and_boxes_everywhere():
    t = fcos_build_targets(locations_for(224, 224, torch.float64), STRIDES, random_gt(2, 2, 4, 224, 224, torch.float64))
    assert all(x.dtype == torch.float64 for x in t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_matches_cpu():
    locs = locations_for(160, 224)
    gt = random_gt(3, 4, 6, 160, 224)
    cpu = fcos_build_targets(locs, STRIDES, gt, 1.5)
    cuda = fcos_build_targets({p: l.cuda() for p, l in locs.items()}, STRIDES, gt.cuda(), 1.5)
    assert all(x.device.type == "cuda" for x in cuda)
    for a, b in zip(cpu, cuda):
        assert torch.allclose(a, b.cpu())
