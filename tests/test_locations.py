"""Chapter 03: feature-map locations (fcos_lib/locations.py)."""
import pytest
import torch

from fcos_lib.head import flatten_level
from fcos_lib.locations import get_fpn_location_coords

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def test_hand_worked_2x3_map():
    # A 64 x 96 input at stride 32: 2 rows x 3 columns of 32 px patches; x walks fastest.
    locs = get_fpn_location_coords({"p5": (2, 3)}, {"p5": 32})["p5"]
    assert locs.tolist() == [[16, 16], [48, 16], [80, 16], [16, 48], [48, 48], [80, 48]]


@pytest.mark.parametrize("image_size", [(160, 224), (224, 96), (224, 224)])
def test_shapes_non_square_and_full_feature_shapes(image_size):
    H, W = image_size
    shapes = {p: (2, 64, H // s, W // s) for p, s in STRIDES.items()}
    locs = get_fpn_location_coords(shapes, STRIDES)
    assert list(locs) == ["p3", "p4", "p5"]
    for p, s in STRIDES.items():
        assert locs[p].shape == (H // s * (W // s), 2)
        # every point is a patch centre inside the image
        assert locs[p][:, 0].min() == s / 2 and locs[p][:, 0].max() == W - s / 2
        assert locs[p][:, 1].min() == s / 2 and locs[p][:, 1].max() == H - s / 2


def test_location_k_is_paired_with_prediction_k():
    # ERRATA 1: the head's prediction k must come from the cell of location k. A map of 3 rows x
    # 5 columns (non-square, so a swap of H and W cannot hide) whose value at (h, w) is (w, h):
    # flattened row by row, x fastest, entry k holds (k % 5, k // 5). Values worked out by hand,
    # not by a copy of flatten_level's body.
    H_l, W_l = 3, 5
    rows, cols = torch.meshgrid(torch.arange(H_l), torch.arange(W_l), indexing="ij")  # (H_l, W_l) each
    position_map = torch.stack([cols, rows]).float()[None].repeat(2, 1, 1, 1)  # (B, 2, H_l, W_l): (w, h)
    position_map[1] += 100  # the second image holds (w + 100, h + 100): images must not mix
    flat = flatten_level(position_map)  # (B, H_l*W_l, 2)
    assert flat.shape == (2, 15, 2)
    assert flat[0, 0].tolist() == [0, 0]
    assert flat[0, 1].tolist() == [1, 0]  # k = 1: one column right (x walks fastest)
    assert flat[0, 4].tolist() == [4, 0]  # k = 4: the last column of row 0
    assert flat[0, 5].tolist() == [0, 1]  # k = 5 = W_l: the first column of row 1
    assert flat[0, 13].tolist() == [3, 2]  # k = 13 = 2 * 5 + 3
    assert flat[1, 13].tolist() == [103, 102]
    k = torch.arange(H_l * W_l)
    assert torch.equal(flat[0], torch.stack([k % W_l, k // W_l], dim=1).float())
    # Location k, decoded back to its cell (x / s - 1/2, y / s - 1/2), is the same (w, h).
    locs = get_fpn_location_coords({"p4": (H_l, W_l)}, {"p4": 16})["p4"]  # (15, 2) (x, y)
    assert torch.equal(locs / 16 - 0.5, flat[0]) and torch.equal(locs / 16 - 0.5 + 100, flat[1])


@pytest.mark.parametrize("image_size", [(160, 224), (224, 96)])
def test_locations_decode_to_the_flattened_cell_on_every_level(image_size):
    # The same pairing on the FPN levels of non-square inputs, for every k at once.
    H, W = image_size
    shapes = {p: (H // s, W // s) for p, s in STRIDES.items()}
    locs = get_fpn_location_coords(shapes, STRIDES)
    for p, (H_l, W_l) in shapes.items():
        rows, cols = torch.meshgrid(torch.arange(H_l), torch.arange(W_l), indexing="ij")
        position_map = torch.stack([cols, rows]).float()[None]  # (1, 2, H_l, W_l): (w, h)
        flat = flatten_level(position_map)[0]  # (L_l, 2)
        k = torch.arange(H_l * W_l)
        assert torch.equal(flat, torch.stack([k % W_l, k // W_l], dim=1).float())
        assert torch.equal(locs[p] / STRIDES[p] - 0.5, flat)


def test_x_from_columns_y_from_rows():
    locs = get_fpn_location_coords({"p3": (2, 5)}, {"p3": 8})["p3"]  # 2 rows, 5 columns
    assert locs[1].tolist() == [12.0, 4.0]  # k=1 is (h=0, w=1): one column right
    assert locs[5].tolist() == [4.0, 12.0]  # k=5 is (h=1, w=0): one row down


def test_dtype_and_device_follow_arguments():
    locs = get_fpn_location_coords({"p3": (3, 4)}, {"p3": 8}, dtype=torch.float64, device=torch.device("cpu"))
    assert locs["p3"].dtype == torch.float64 and locs["p3"].device.type == "cpu"


def test_missing_stride_and_bad_shape_raise_clear_errors():
    with pytest.raises(ValueError, match="strides_per_fpn_level.*p4"):
        get_fpn_location_coords({"p3": (2, 2), "p4": (1, 1)}, {"p3": 8})
    with pytest.raises(ValueError, match=r"shape_per_fpn_level\['p3'\]"):
        get_fpn_location_coords({"p3": (2, 2, 2)}, {"p3": 8})
