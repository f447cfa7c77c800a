"""Chapter 06: centerness targets (fcos_lib/centerness.py)."""
import math

import pytest
import torch

from fcos_lib.centerness import fcos_make_centerness_targets


def test_hand_worked_value():
    # (1.25, 1.25, 2.5, 1.25): left/right 0.5, top/bottom 1 -> sqrt(0.5)
    c = fcos_make_centerness_targets(torch.tensor([1.25, 1.25, 2.5, 1.25]))
    assert c.shape == () and abs(c.item() - math.sqrt(0.5)) < 1e-7


def test_centre_is_exactly_one():
    c = fcos_make_centerness_targets(torch.tensor([[3.0, 2.0, 3.0, 2.0], [0.1, 7.3, 0.1, 7.3]]))
    assert c.tolist() == [1.0, 1.0]


def test_corner_and_edge_are_zero():
    c = fcos_make_centerness_targets(torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 2.0, 4.0, 2.0], [2.0, 2.0, 2.0, 0.0]]))
    assert c.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("deltas", [[0.0, 1.0, 0.0, 3.0], [2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
def test_zero_width_or_height_is_zero_not_nan(deltas):
    # l = r = 0 (or t = b = 0): min / max = 0 / 0, defined as 0
    c = fcos_make_centerness_targets(torch.tensor(deltas))
    assert not c.isnan() and c.item() == 0.0


def test_background_is_minus_one_and_outside_is_zero():
    c = fcos_make_centerness_targets(torch.tensor([[-1.0, -1, -1, -1], [-0.5, 2, 3, 2]]))
    assert c.tolist() == [-1.0, 0.0]  # a negative distance (outside) is clamped: 0, not NaN


def test_batch_shapes_no_nan_and_range():
    g = torch.Generator().manual_seed(0)
    deltas = torch.rand(3, 50, 4, generator=g) * 5
    deltas[0, :10] = -1  # background
    deltas[1, :5, 0] = 0
    deltas[1, :5, 2] = 0  # zero width
    c = fcos_make_centerness_targets(deltas)
    assert c.shape == (3, 50) and not c.isnan().any()
    assert (c[0, :10] == -1).all() and (c[1, :5] == 0).all()
    fg = c >= 0
    assert (c[fg] <= 1).all()


def test_agrees_with_torchvision_formula_on_positive_deltas():
    # Transcribed from torchvision/models/detection/fcos.py, FCOSHead.compute_loss (ctrness targets):
    #   left_right = bbox_reg_targets[:, :, [0, 2]]
    #   top_bottom = bbox_reg_targets[:, :, [1, 3]]
    #   gt_ctrness_targets = torch.sqrt(
    #       (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
    #       * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))
    bbox_reg_targets = torch.rand(2, 40, 4, generator=torch.Generator().manual_seed(1)) * 8 + 0.01
    left_right = bbox_reg_targets[:, :, [0, 2]]
    top_bottom = bbox_reg_targets[:, :, [1, 3]]
    gt_ctrness_targets = torch.sqrt(
        (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
        * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
    )
    assert torch.equal(fcos_make_centerness_targets(bbox_reg_targets), gt_ctrness_targets)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    assert fcos_make_centerness_targets(torch.ones(2, 4, dtype=dtype)).dtype == dtype


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"deltas must be \(\.\.\., 4\)"):
        fcos_make_centerness_targets(torch.ones(3, 5))
