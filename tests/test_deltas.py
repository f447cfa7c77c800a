"""Chapter 05: box deltas (fcos_lib/deltas.py)."""
import pytest
import torch
from torchvision.models.detection._utils import BoxLinearCoder

from fcos_lib.deltas import fcos_apply_deltas_to_locations, fcos_get_deltas_from_locations
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import fcos_match_locations_to_gt

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def test_hand_worked_example_and_background():
    # (100, 60) in (90, 50, 120, 70): l = t = b = 10, r = 20 px; / 8 = (1.25, 1.25, 2.5, 1.25)
    locs = torch.tensor([[100.0, 60.0], [20.0, 20.0]])
    gt = torch.tensor([[90.0, 50, 120, 70, 1], [-1, -1, -1, -1, -1]])
    assert fcos_get_deltas_from_locations(locs, gt, 8).tolist() == [[1.25, 1.25, 2.5, 1.25], [-1, -1, -1, -1]]
    assert fcos_get_deltas_from_locations(locs, gt[:, :4], 8).tolist() == [[1.25, 1.25, 2.5, 1.25], [-1] * 4]


def test_per_location_stride_tensor_and_batch_dims():
    locs = torch.tensor([[4.0, 4.0], [8.0, 8.0]])
    gt = torch.tensor([[0.0, 0, 20, 12, 0], [0, 0, 24, 40, 0]]).expand(3, 2, 5)  # (B, L, 5)
    d = fcos_get_deltas_from_locations(locs, gt, torch.tensor([8.0, 16.0]))
    assert d.shape == (3, 2, 4)
    assert d[0].tolist() == [[0.5, 0.5, 2.0, 1.0], [0.5, 0.5, 1.0, 2.0]]


def test_agrees_with_torchvision_box_linear_coder():
    g = torch.Generator().manual_seed(0)
    locs = (torch.randint(0, 28, (50, 2), generator=g) + 0.5) * 8
    x1y1 = locs - torch.rand(50, 2, generator=g) * 60 - 0.1
    x2y2 = locs + torch.rand(50, 2, generator=g) * 60 + 0.1
    gt = torch.cat([x1y1, x2y2], 1)
    anchors = torch.cat([locs - 4, locs + 4], 1)  # side 8 around each location
    coder = BoxLinearCoder(normalize_by_size=True)
    ours = fcos_get_deltas_from_locations(locs, gt, 8)
    assert torch.allclose(ours, coder.encode(anchors, gt), atol=1e-6)
    assert torch.allclose(fcos_apply_deltas_to_locations(ours, locs, 8), coder.decode(ours, anchors), atol=1e-4)


def _matched_batch(gt_boxes, H, W):
    locs_per_level = get_fpn_location_coords({p: (H // s, W // s) for p, s in STRIDES.items()}, STRIDES,
                                             dtype=gt_boxes.dtype)
    matched = torch.cat(list(fcos_match_locations_to_gt(locs_per_level, STRIDES, gt_boxes).values()), 1)
    locs = torch.cat(list(locs_per_level.values()))
    strides = torch.cat([torch.full((len(l),), float(STRIDES[p])) for p, l in locs_per_level.items()])
    return matched, locs, strides


def _random_gt(seed, H, W, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(4, 8, 2, generator=g) * torch.tensor([W, H])
    wh = torch.rand(4, 8, 2, generator=g) * 180 + 4
    x1y1 = (xy - wh / 2).clamp(min=0)
    x2y2 = torch.minimum(xy + wh / 2, torch.tensor([W, H]).float())
    gt = torch.cat([x1y1, x2y2, torch.zeros(4, 8, 1)], -1).to(dtype)
    gt[1, 5:] = -1
    gt[2] = -1
    return gt


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_is_exact_on_a_1_256_grid(seed):
    # coordinates k / 256 px: x - x1 is exact in float32, / 8|16|32 is exact, so is the way back
    H, W = 160, 224
    gt = _random_gt(seed, H, W)
    gt[..., :4] = torch.where(gt[..., :4] >= 0, (gt[..., :4] * 256).round() / 256, gt[..., :4])
    matched, locs, strides = _matched_batch(gt, H, W)
    fg = matched[..., 4] >= 0
    assert fg.sum() > 0
    deltas = fcos_get_deltas_from_locations(locs, matched, strides)
    assert (deltas[fg] > 0).all() and (deltas[~fg] == -1).all()
    boxes = fcos_apply_deltas_to_locations(deltas, locs, strides, image_size=(H, W))
    assert torch.equal(boxes[fg], matched[fg][:, :4])


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_round_trip_on_arbitrary_floats_within_one_rounding(dtype, tol):
    matched, locs, strides = _matched_batch(_random_gt(7, 224, 224, dtype), 224, 224)
    fg = matched[..., 4] >= 0
    deltas = fcos_get_deltas_from_locations(locs, matched, strides)
    boxes = fcos_apply_deltas_to_locations(deltas, locs, strides)
    assert deltas.dtype == boxes.dtype == dtype
    assert (boxes[fg] - matched[fg][:, :4]).abs().max() < tol


def test_apply_clamps_negative_deltas_and_clips_to_the_image():
    locs = torch.tensor([[20.0, 20.0], [100.0, 60.0]])
    deltas = torch.tensor([[-3.0, 1, 1, 1], [10.0, 10, 10, 10]])
    boxes = fcos_apply_deltas_to_locations(deltas, locs, 8, image_size=(96, 128))
    assert boxes[0].tolist() == [20, 12, 28, 28]  # l clamped to 0: the box starts at the location
    assert boxes[1].tolist() == [20, 0, 128, 96]  # (20, -20, 180, 140) clipped to W = 128, H = 96
    unclipped = fcos_apply_deltas_to_locations(deltas, locs, 8)
    assert unclipped[1].tolist() == [20, -20, 180, 140]


def test_apply_uses_each_rows_own_location_and_no_background_marker():
    # ERRATA 6: a row of -1 is not "background" for predictions; it decodes at its own location.
    locs = torch.tensor([[4.0, 4.0], [60.0, 28.0]])
    boxes = fcos_apply_deltas_to_locations(torch.full((2, 4), -1.0), locs, 8)
    assert boxes.tolist() == [[4, 4, 4, 4], [60, 28, 60, 28]]


def test_dtype_follows_input_and_locations_are_cast():
    locs = torch.tensor([[4.0, 4.0]])  # float32
    gt = torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)
    d = fcos_get_deltas_from_locations(locs, gt, torch.tensor([8.0]))
    assert d.dtype == torch.float64
    assert fcos_apply_deltas_to_locations(d, locs, torch.tensor([8.0])).dtype == torch.float64


def test_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match="locations .* gt_boxes"):
        fcos_get_deltas_from_locations(torch.zeros(3, 2), torch.zeros(4, 5), 8)
    with pytest.raises(ValueError, match="deltas .* locations"):
        fcos_apply_deltas_to_locations(torch.zeros(3, 5), torch.zeros(3, 2), 8)
    with pytest.raises(ValueError, match="stride must be"):
        fcos_get_deltas_from_locations(torch.zeros(3, 2), torch.zeros(3, 4), torch.ones(4))
