"""ATSS matching (fcos_lib.atss, exported from chapter 10).

The reference, `reference_atss_match`, is Algorithm 1 of Zhang et al. 2020 written with plain
Python loops over boxes, levels and locations, on Python floats: slow and obviously correct.
The vectorised atss_match_indices must agree with it exactly (inputs in float64, so both
compute the same IEEE double expressions).
"""
import math

import pytest
import torch

from fcos_lib.atss import atss_build_targets, atss_match_indices

from fcos_lib.locations import get_fpn_location_coords  # noqa: E402
from fcos_lib.matching import fcos_match_indices  # noqa: E402

STRIDES = {"p3": 8, "p4": 16, "p5": 32}
IMAGE = 224


def locations_for(H=IMAGE, W=IMAGE, dtype=torch.float32):
    return get_fpn_location_coords({p: (H // s, W // s) for p, s in STRIDES.items()}, STRIDES, dtype=dtype)


def reference_atss_match(locations_per_level, strides, gt_boxes, topk=9, anchor_scale=8.0):
    """Algorithm 1 of the ATSS paper, one image: (N, 5) rows -> list of L matched indices (-1: none)."""
    levels = [(locs.tolist(), anchor_scale * strides[level] / 2) for level, locs in locations_per_level.items()]
    points, halves = [], []  # every location of every level, in order, and its anchor's half side
    for locs, half in levels:
        points += [tuple(p) for p in locs]
        halves += [half] * len(locs)
    best = [(-math.inf, -1)] * len(points)  # (IoU, box) of each location's best positive so far

    for g, (x1, y1, x2, y2, c) in enumerate(gt_boxes.tolist()):
        if c < 0:  # padding row
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        # Lines 3-6: on each level, the k anchors whose centres are nearest (L2) to the box centre.
        candidates, start = [], 0
        for locs, _ in levels:
            dist2 = [(x - cx) * (x - cx) + (y - cy) * (y - cy) for x, y in locs]
            nearest = sorted(range(len(locs)), key=lambda j: dist2[j])[:topk]  # stable: ties to the lower index
            candidates += [start + j for j in nearest]
            start += len(locs)
        # Lines 7-10: IoU of each candidate's anchor with the box; threshold = mean + std (unbiased).
        ious = []
        for i in candidates:
            (x, y), h = points[i], halves[i]
            ax1, ay1, ax2, ay2 = x - h, y - h, x + h, y + h
            inter = max(min(ax2, x2) - max(ax1, x1), 0.0) * max(min(ay2, y2) - max(ay1, y1), 0.0)
            union = (ax2 - ax1) * (ay2 - ay1) + (x2 - x1) * (y2 - y1) - inter
            ious.append(inter / union)
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        threshold = mean + std
        # Lines 11-15: positive if IoU >= threshold and the centre lies inside the box.
        for i, iou in zip(candidates, ious):
            x, y = points[i]
            if iou >= threshold and min(x - x1, y - y1, x2 - x, y2 - y) > 0:
                # Several boxes: the highest IoU wins; boxes come in order, so a tie keeps the first.
                if iou > best[i][0]:
                    best[i] = (iou, g)
    return [g for _, g in best]


def random_batch(seed, B=4, N=7):
    """(B, N, 5) float64 boxes of sizes 4 to 224 px, padding rows, and an image with no boxes."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(B, N, 2, dtype=torch.float64).uniform_(math.log(4), math.log(IMAGE), generator=gen))
    centre = torch.rand(B, N, 2, dtype=torch.float64, generator=gen) * IMAGE
    x1y1 = (centre - size / 2).clamp(0, IMAGE - 2)
    x2y2 = torch.maximum((centre + size / 2).clamp(0, IMAGE), x1y1 + 1)
    labels = torch.randint(0, 20, (B, N, 1), generator=gen).double()
    gt = torch.cat([x1y1, x2y2, labels], dim=-1)
    pad = torch.rand(B, N, generator=gen) < 0.25
    gt[pad] = -1.0  # padding rows, also between real rows
    gt[-1] = -1.0  # the last image has no box
    return gt


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_batches_agree_with_the_reference_algorithm(seed):
    locs = locations_for(dtype=torch.float64)
    gt = random_batch(seed)
    got = atss_match_indices(locs, STRIDES, gt)
    assert got.shape == (gt.shape[0], sum(len(v) for v in locs.values())) and got.dtype == torch.int64
    for b in range(gt.shape[0]):
        assert got[b].tolist() == reference_atss_match(locs, STRIDES, gt[b]), f"image {b}"
    assert (got[-1] == -1).all()  # the image without boxes
    assert (got >= 0).any()  # the check compared real matches, not only background


@pytest.mark.parametrize("topk, anchor_scale", [(1, 8.0), (4, 5.0), (20, 8.0)])
def test_other_topk_and_anchor_scale_agree_with_the_reference(topk, anchor_scale):
    locs = locations_for(dtype=torch.float64)
    gt = random_batch(10 + topk, B=2, N=6)
    got = atss_match_indices(locs, STRIDES, gt, topk=topk, anchor_scale=anchor_scale)
    for b in range(gt.shape[0]):
        assert got[b].tolist() == reference_atss_match(locs, STRIDES, gt[b], topk, anchor_scale)


def test_hand_worked_box_matches_a_plus_of_five_p4_locations():
    # Box (8, 8, 136, 136): 128 px, centre (72, 72), a p4 location. Anchors are 8 * stride.
    # p3 (anchors 64 px): the 9 nearest anchors lie inside the box: IoU 64^2 / 128^2 = 1/4.
    # p5 (anchors 256 px): the 9 nearest anchors contain the box: IoU 128^2 / 256^2 = 1/4.
    # p4 (anchors 128 px), the 3 x 3 around (72, 72): IoU 1 at the centre, 7/9 for the 4 edge
    # neighbours (shifted 16 px: 112 * 128 / (2 * 128^2 - 112 * 128)), 49/79 for the corners.
    ious = [0.25] * 18 + [1.0] + [7 / 9] * 4 + [49 / 79] * 4
    mean = sum(ious) / 27
    threshold = mean + math.sqrt(sum((v - mean) ** 2 for v in ious) / 26)  # 0.653
    assert 49 / 79 < threshold < 7 / 9  # so: the centre and its 4 edge neighbours, corners out
    locs = locations_for()
    gt = torch.tensor([[8.0, 8.0, 136.0, 136.0, 3.0]])
    got = atss_match_indices(locs, STRIDES, gt)  # (L,) for (N, 5)
    sizes = [len(v) for v in locs.values()]
    p3, p4, p5 = got.split(sizes)
    assert (p3 == -1).all() and (p5 == -1).all()
    positives = {tuple(xy) for xy in locs["p4"][p4 == 0].tolist()}
    assert positives == {(72.0, 72.0), (56.0, 72.0), (88.0, 72.0), (72.0, 56.0), (72.0, 88.0)}
    assert all(8 < x < 136 and 8 < y < 136 for x, y in positives)
    # FCOS's rule (chapter 04) takes 48 p4 locations for the same box: every one inside it
    # with max(l, t, r, b) in p4's range (64, 128), all but the centre (where it is 64).
    fcos = fcos_match_indices(locs, STRIDES, gt).split(sizes)
    assert [int((f >= 0).sum()) for f in fcos] == [0, 48, 0]


def test_equal_ious_are_all_positive_and_distance_ties_go_to_the_lower_index():
    # One level, p3, and the same box: the 9 nearest anchors (64 px) lie inside it, each with
    # IoU exactly 1/4, so the threshold is 1/4 + 0 and all 9 reach it (IoU >= t, not >).
    # Nearest to (72, 72): the 4 at distance sqrt(32), then 8 tied at sqrt(160); the stable
    # sort keeps the first 5 of those in row-major order (y, then x).
    locs = {"p3": locations_for()["p3"]}
    got = atss_match_indices(locs, {"p3": 8}, torch.tensor([[8.0, 8.0, 136.0, 136.0, 0.0]]))
    positives = {tuple(xy) for xy in locs["p3"][got == 0].tolist()}
    assert positives == {(68.0, 68.0), (76.0, 68.0), (68.0, 76.0), (76.0, 76.0),
                         (68.0, 60.0), (76.0, 60.0), (60.0, 68.0), (84.0, 68.0), (60.0, 76.0)}


def test_duplicate_boxes_go_to_the_first_and_padding_never_matches():
    locs = locations_for()
    box = [40.0, 60.0, 100.0, 150.0, 1.0]
    gt = torch.tensor([[[-1.0] * 5, box, box, [-1.0] * 5]])
    got = atss_match_indices(locs, STRIDES, gt)
    assert (got >= 0).any() and set(got[got >= 0].tolist()) == {1}


def test_no_boxes_is_all_background_and_single_image_matches_batch():
    locs = locations_for()
    L = sum(len(v) for v in locs.values())
    empty = atss_match_indices(locs, STRIDES, torch.zeros(2, 0, 5))
    assert empty.shape == (2, L) and empty.dtype == torch.int64 and (empty == -1).all()
    gt = random_batch(5, B=1).float()
    assert torch.equal(atss_match_indices(locs, STRIDES, gt[0]), atss_match_indices(locs, STRIDES, gt)[0])


def test_build_targets_shapes_background_and_positive_rows():
    locs = locations_for()
    L = sum(len(v) for v in locs.values())
    gt = random_batch(7).float()
    t = atss_build_targets(locs, STRIDES, gt)
    B = gt.shape[0]
    assert t.matched_boxes.shape == (B, L, 5) and t.deltas.shape == (B, L, 4) and t.centerness.shape == (B, L)
    assert all(x.dtype == torch.float32 for x in t)
    idx = atss_match_indices(locs, STRIDES, gt)
    fg, bg = idx >= 0, idx < 0
    assert fg.any() and bg.any()
    assert (t.matched_boxes[bg] == -1).all() and (t.deltas[bg] == -1).all() and (t.centerness[bg] == -1).all()
    b, l = fg.nonzero(as_tuple=True)
    assert torch.equal(t.matched_boxes[b, l], gt[b, idx[b, l]])  # the matched row itself
    assert (t.deltas[fg] > 0).all()  # strictly inside the box
    assert ((t.centerness[fg] > 0) & (t.centerness[fg] <= 1)).all()
    # Integer annotations are matched as float32.
    t_int = atss_build_targets(locs, STRIDES, gt.floor().to(torch.int64))
    assert t_int.deltas.dtype == torch.float32 and t_int.matched_boxes.shape == (B, L, 5)


@pytest.mark.parametrize("bad", [[50.0, 50.0, 40.0, 90.0, 2.0],  # x2 < x1
                                 [10.0, 10.0, 10.0, 30.0, 2.0],  # zero width
                                 [10.0, math.nan, 20.0, 30.0, 2.0]])
def test_bad_gt_row_raises_naming_it(bad):
    locs = locations_for()
    gt = torch.tensor([[[0.0, 0.0, 32.0, 32.0, 1.0], [-1.0] * 5], [[8.0, 8.0, 64.0, 64.0, 0.0], bad]])
    with pytest.raises(ValueError, match=r"gt_boxes\[1, 1\].*Fix"):
        atss_match_indices(locs, STRIDES, gt)
    with pytest.raises(ValueError, match=r"gt_boxes\[1, 1\].*Fix"):
        atss_build_targets(locs, STRIDES, gt)


@pytest.mark.parametrize("kwargs, message", [({"topk": 0}, "topk"), ({"topk": 2.5}, "topk"),
                                             ({"anchor_scale": 0.0}, "anchor_scale")])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        atss_match_indices(locations_for(), STRIDES, torch.tensor([[8.0, 8.0, 64.0, 64.0, 0.0]]), **kwargs)
