"""Chapter 04: matching locations to ground-truth boxes (fcos_lib/matching.py).

The reference is torchvision's own code: `torchvision_matched_idxs` below runs the matching
lines of torchvision/models/detection/fcos.py (FCOS.compute_loss) unchanged, by building an
FCOS around a dummy backbone with a head whose compute_loss returns the matched_idxs it gets,
and passing our locations as anchors of side `stride` centred on them.
"""
import math

import pytest
import torch
import torchvision
from torch import nn

from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import (check_class_labels, check_gt_boxes, fcos_match_indices, fcos_match_locations_to_gt,
                                scale_ranges_per_fpn_level)

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def locations_for(H, W, dtype=torch.float32):
    return get_fpn_location_coords({p: (H // s, W // s) for p, s in STRIDES.items()}, STRIDES, dtype=dtype)


class _ReturnMatchedIdxs(nn.Module):
    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        return matched_idxs


def torchvision_matched_idxs(locations_per_level, gt_boxes, center_sampling_radius):
    """(B, L) matched indices from torchvision.models.detection.FCOS.compute_loss itself."""
    backbone = nn.Module()
    backbone.out_channels = 8
    radius = math.inf if center_sampling_radius is None else center_sampling_radius  # inf: no sampling
    tv_fcos = torchvision.models.detection.FCOS(backbone, num_classes=2, head=_ReturnMatchedIdxs(),
                                                center_sampling_radius=radius)
    half = torch.cat([torch.full((len(l), 1), STRIDES[p] / 2) for p, l in locations_per_level.items()])
    locs = torch.cat(list(locations_per_level.values())).to(gt_boxes.dtype)
    anchors = torch.cat([locs - half, locs + half], dim=1)  # (L, 4)
    num_per_level = [len(l) for l in locations_per_level.values()]
    # padding rows are at the end of each image, so indices into the real rows = indices into N
    targets = [{"boxes": g[g[:, 4] >= 0, :4], "labels": g[g[:, 4] >= 0, 4].long()} for g in gt_boxes]
    return torch.stack(tv_fcos.compute_loss(targets, {}, [anchors] * len(targets), num_per_level))


def random_gt(generator, B, N, H, W, max_real=None, dtype=torch.float64):
    """Random boxes of every size (2 px to the whole image), some images with padding rows."""
    xy = torch.rand(B, N, 2, generator=generator) * torch.tensor([W, H])
    wh = torch.exp(torch.rand(B, N, 2, generator=generator) * math.log(256)) + 1  # 2 .. 257 px
    x1y1 = (xy - wh / 2).clamp(min=0)
    x2y2 = torch.minimum(xy + wh / 2, torch.tensor([W, H]).float())
    cls = torch.randint(0, 5, (B, N, 1), generator=generator).float()
    gt = torch.cat([x1y1, x2y2, cls], dim=-1).to(dtype)
    num_real = torch.randint(0, N + 1, (B,), generator=generator)
    for b in range(B):
        gt[b, num_real[b]:] = -1  # padding at the end
    return gt


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("radius", [None, 1.5, 0.5])
def test_random_boxes_agree_with_torchvision(seed, radius):
    g = torch.Generator().manual_seed(seed)
    H, W = (160, 224) if seed % 2 else (224, 224)
    gt = random_gt(g, B=4, N=12, H=H, W=W)
    locs = locations_for(H, W)
    ours = fcos_match_indices(locs, STRIDES, gt, radius)
    theirs = torchvision_matched_idxs(locs, gt, radius)
    assert ours.shape == (4, sum(len(l) for l in locs.values()))
    assert (ours >= 0).any()
    assert torch.equal(ours, theirs)


def adversarial_gt():
    gt = torch.full((3, 8, 5), -1.0, dtype=torch.float64)
    gt[0, :6] = torch.tensor([
        [20, 20, 200, 150, 0],         # big
        [60, 40, 120, 100, 1],         # nested in the big one
        [100, 40, 160, 100, 2],        # touches the nested one at x = 100
        [4, 8, 60, 60, 3],             # left edge exactly on the first p3 column: l = 0 there
        [41, 41, 43, 43, 4],           # tiny, between locations: never matched
        [26.5, 26.5, 29.5, 29.5, 0],   # tiny, around the p3 location (28, 28)
    ], dtype=torch.float64)
    gt[1, :4] = torch.tensor([
        [0, 0, 224, 160, 0],           # image-sized
        [30, 30, 90, 90, 1],           # two identical boxes: equal area, first row wins
        [30, 30, 90, 90, 2],
        [100, 4, 164, 132, 3],         # m = 64 exactly at some locations: neither p3 nor p4
    ], dtype=torch.float64)
    return gt  # image 2 has no boxes at all


@pytest.mark.parametrize("radius", [None, 1.5])
def test_adversarial_boxes_agree_with_torchvision(radius):
    gt = adversarial_gt()
    locs = locations_for(160, 224)
    ours = fcos_match_indices(locs, STRIDES, gt, radius)
    assert torch.equal(ours, torchvision_matched_idxs(locs, gt, radius))
    assert (ours[0] == 4).sum() == 0  # the tiny box between locations is never learnt
    assert (ours[0] == 5).sum() == 1  # the 3 x 3 box around (28, 28): exactly one location
    assert (ours[1] == 2).sum() == 0 and (ours[1] == 1).sum() > 0  # identical boxes: the first wins
    assert (ours[2] == -1).all()  # no boxes: all background
    # box [100, 4, 164, 132]: at the p3 row y = 68, b = 64 exactly, so p3 cannot take it there
    p3_y = locs["p3"][:, 1].double()
    assert ((ours[1, : len(p3_y)] == 3) & (p3_y == 68)).sum() == 0
    assert (ours[1] == 3).sum() > 0


def test_hand_worked_example():
    # p3 location (100, 60): inside boxes 0 and 1 (m = 40 and 20, both in (0, 64)); box 1 is
    # smaller (600 < 3000). Box 2 contains it too but m = 140 is p5's range.
    gt = torch.tensor([[80.0, 40, 140, 90, 0], [90, 50, 120, 70, 1], [10, 10, 200, 200, 2]])
    matched = fcos_match_locations_to_gt(locations_for(224, 224), STRIDES, gt)
    k = 7 * 28 + 12  # (h=7, w=12): x = 12.5 * 8 = 100, y = 7.5 * 8 = 60
    assert matched["p3"][k].tolist() == [90, 50, 120, 70, 1]


def test_scale_range_bounds_are_strict():
    assert scale_ranges_per_fpn_level(STRIDES) == {"p3": (0.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, math.inf)}
    # One p3 location (4, 4); a box 2 px left/above/below it and 64 px to its right: m = 64,
    # which is in neither (0, 64) nor (64, 128). 63.5 px to the right: m = 63.5, p3's.
    locs = {"p3": torch.tensor([[4.0, 4.0]]), "p4": torch.zeros(0, 2), "p5": torch.zeros(0, 2)}
    at_64 = torch.tensor([[2.0, 2.0, 68.0, 6.0, 0]])  # (l, t, r, b) = (2, 2, 64, 2)
    below = torch.tensor([[2.0, 2.0, 67.5, 6.0, 0]])  # r = 63.5
    assert fcos_match_indices(locs, STRIDES, at_64).tolist() == [-1]
    assert fcos_match_indices(locs, STRIDES, below).tolist() == [0]


def test_output_shapes_per_level_batched_and_single():
    locs = locations_for(160, 224)
    gt = random_gt(torch.Generator().manual_seed(0), B=3, N=5, H=160, W=224)
    matched = fcos_match_locations_to_gt(locs, STRIDES, gt, 1.5)
    assert list(matched) == ["p3", "p4", "p5"]
    for p, shape in zip(STRIDES, [(20, 28), (10, 14), (5, 7)]):
        assert matched[p].shape == (3, shape[0] * shape[1], 5)
    single = fcos_match_locations_to_gt(locs, STRIDES, gt[0], 1.5)
    for p in STRIDES:
        assert torch.equal(single[p], matched[p][0])


def test_background_rows_are_all_minus_one_and_foreground_rows_are_gt_rows():
    locs = locations_for(224, 224)
    gt = random_gt(torch.Generator().manual_seed(1), B=4, N=6, H=224, W=224)
    idx = fcos_match_indices(locs, STRIDES, gt)
    matched = torch.cat(list(fcos_match_locations_to_gt(locs, STRIDES, gt).values()), dim=1)  # (B, L, 5)
    assert (matched[idx < 0] == -1).all()
    for b in range(4):
        fg = idx[b] >= 0
        assert torch.equal(matched[b][fg], gt[b][idx[b][fg]])


def test_padding_rows_never_match_even_in_the_middle():
    locs = locations_for(224, 224)
    box = [40.0, 40, 100, 100, 3]
    gt = torch.tensor([[[-1.0] * 5, box, [-1.0] * 5]])
    idx = fcos_match_indices(locs, STRIDES, gt)
    assert set(idx.unique().tolist()) == {-1, 1}


@pytest.mark.parametrize("gt", [torch.full((2, 4, 5), -1.0), torch.zeros(2, 0, 5)], ids=["all-padding", "N=0"])
def test_empty_ground_truth_is_all_background(gt):
    locs = locations_for(224, 224)
    matched = fcos_match_locations_to_gt(locs, STRIDES, gt, 1.5)
    for p in STRIDES:
        assert matched[p].shape == (2, len(locs[p]), 5)
        assert (matched[p] == -1).all()


@pytest.mark.parametrize("bad", [[50.0, 10, 50, 40, 1], [60.0, 10, 50, 40, 1], [10.0, 40, 50, 40, 1]])
def test_degenerate_boxes_raise_naming_the_box_and_the_fix(bad):
    gt = torch.tensor([[[10.0, 10, 50, 40, 0], [-1] * 5], [[10.0, 10, 50, 40, 0], bad]])
    with pytest.raises(ValueError, match=r"gt_boxes\[1, 1\].*degenerate.*Fix"):
        fcos_match_locations_to_gt(locations_for(224, 224), STRIDES, gt)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match=r"gt_boxes must be \(B, N, 5\)"):
        fcos_match_indices(locations_for(224, 224), STRIDES, torch.zeros(2, 3, 4))


def test_outputs_follow_input_dtype():
    locs = locations_for(160, 224)  # float32 locations, float64 boxes: the boxes decide
    gt = adversarial_gt()
    matched = fcos_match_locations_to_gt(locs, STRIDES, gt, 1.5)
    assert all(m.dtype == torch.float64 for m in matched.values())
    assert fcos_match_indices(locs, STRIDES, gt).dtype == torch.int64


def test_documented_float32_difference_with_torchvision():
    # torchvision ranks candidates by float32(1e8 - area). Near 1e8 float32 numbers are 8 apart,
    # so areas 99 and 97 both become 99999904: a tie, and it keeps the first (larger) box.
    # We compare areas exactly and take the smaller one. In float64 both pick the smaller box.
    gt = torch.tensor([[[0.0, 0, 9, 11, 0], [0, 0, 9.7, 10, 1]]])  # areas 99 and 97
    locs = {"p3": torch.tensor([[4.0, 4.0]]), "p4": torch.zeros(0, 2), "p5": torch.zeros(0, 2)}
    assert fcos_match_indices(locs, STRIDES, gt).tolist() == [[1]]
    assert torchvision_matched_idxs(locs, gt, None).tolist() == [[0]]
    assert torchvision_matched_idxs(locs, gt.double(), None).tolist() == [[1]]


# --- check_gt_boxes: the one check of the ground truth (the model calls it too, see test_model.py)

NAN, INF = float("nan"), float("inf")
BOX = [10.0, 10, 50, 40, 0]


@pytest.mark.parametrize("row, message", [
    ([NAN, 10, 50, 40, 0], r"gt_boxes\[0, 1\] = \[nan, .*is not finite \(NaN or inf\)\. Fix"),
    ([10.0, 10, INF, 40, 0], r"gt_boxes\[0, 1\] = .*inf.*is not finite"),
    ([-1.0, -1, -1, NAN, -1], r"gt_boxes\[0, 1\].*is not finite"),  # a padding row is checked too
    ([10.0, 10, 50, 40, NAN], r"gt_boxes\[0, 1\].*is not finite"),
    ([10.0, 10, 50, 40, 1.5], r"gt_boxes\[0, 1\] has class label 1\.5, not an integer >= 0 or -1 \(no object\)\. Fix"),
    ([10.0, 10, 50, 40, -2], r"gt_boxes\[0, 1\] has class label -2"),
    ([50.0, 10, 10, 40, 0], r"gt_boxes\[0, 1\] = \[50\.0, .*degenerate: a box needs x2 > x1 and y2 > y1\. Fix"),
])
def test_check_gt_boxes_names_the_row_and_the_fix(row, message):
    gt = torch.tensor([[BOX, row]])  # (1, 2, 5)
    with pytest.raises(ValueError, match=message):
        check_gt_boxes(gt)


def test_check_gt_boxes_shape_batch_size_and_num_classes():
    with pytest.raises(ValueError, match=r"gt_boxes must be \(B, N, 5\).*got \(2, 5\).*gt_boxes\[None\]"):
        check_gt_boxes(torch.tensor([BOX, BOX]))
    with pytest.raises(ValueError, match=r"got list"):
        check_gt_boxes([BOX])
    with pytest.raises(ValueError, match=r"gt_boxes must be \(3, N, 5\).*got \(2, 1, 5\)"):
        check_gt_boxes(torch.tensor([[BOX], [BOX]]), batch_size=3)
    seven = torch.tensor([[[10.0, 10, 50, 40, 7]]])
    check_gt_boxes(seven)  # no num_classes: any integer class >= 0
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\] has class label 7, not an integer in "
                                         r"\[0, num_classes=5\) or -1.*num_classes = len\(class_names\)"):
        check_gt_boxes(seven, num_classes=5)


@pytest.mark.parametrize("gt", [
    torch.tensor([[BOX, [-1.0] * 5]]), torch.zeros(2, 0, 5), torch.full((2, 3, 5), -1.0),
    torch.tensor([[[10, 10, 50, 40, 4]]]), torch.tensor([[BOX]], dtype=torch.float64),
], ids=["padded", "N=0", "all-padding", "int64", "float64"])
def test_check_gt_boxes_accepts_valid_ground_truth(gt):
    check_gt_boxes(gt, num_classes=5, batch_size=gt.shape[0])


def test_matching_reports_bad_rows_with_check_gt_boxes_message():
    gt = torch.tensor([[BOX, [10.0, NAN, 50, 40, 1]]])
    with pytest.raises(ValueError) as expected:
        check_gt_boxes(gt)
    for match in (fcos_match_indices, fcos_match_locations_to_gt):
        with pytest.raises(ValueError) as got:
            match(locations_for(64, 64), STRIDES, gt)
        assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError) as got:  # one image's (N, 5): its rows are named as image 0
        fcos_match_indices(locations_for(64, 64), STRIDES, gt[0])
    assert str(got.value) == str(expected.value)


def test_check_class_labels_int_and_float():
    check_class_labels(torch.tensor([[0, -1, 4]]), num_classes=5)
    check_class_labels(torch.tensor([0.0, -1.0, 4.0]), num_classes=5)
    with pytest.raises(ValueError, match=r"labels\[1\] has class label -3"):
        check_class_labels(torch.tensor([0, -3, 4]))
    with pytest.raises(ValueError, match=r"targets\[0, 2\] has class label 5, not an integer in \[0, num_classes=5\)"):
        check_class_labels(torch.tensor([[0, -1, 5]]), num_classes=5, name="targets")
