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
    # ERRATA 1: a feature map whose value at (h, w) is (w, h), flattened like the head, must
    # decode to the same cell as location k. Non-square, so a swap cannot hide.
    H, W = 160, 224
    shapes = {p: (H // s, W // s) for p, s in STRIDES.items()}
    locs = get_fpn_location_coords(shapes, STRIDES)
    for p, (H_l, W_l) in shapes.items():
        rows, cols = torch.meshgrid(torch.arange(H_l), torch.arange(W_l), indexing="ij")
        position_map = torch.stack([cols, rows]).float()[None].expand(3, -1, -1, -1)  # (B, 2, H_l, W_l)
        flat = position_map.permute(0, 2, 3, 1).reshape(3, -1, 2)  # (B, L_l, 2), the head's order
        assert torch.equal(flat, flatten_level(position_map))
        decoded = locs[p] / STRIDES[p] - 0.5  # (L_l, 2) = (w, h)
        for b in range(3):
            assert torch.equal(decoded, flat[b])


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
