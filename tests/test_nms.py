"""Tests of fcos_lib.nms (chapter 08): the course's greedy and class-specific NMS agree with torchvision."""
import pytest
import torch
import torchvision

from fcos_lib.nms import class_specific_nms, nms, pairwise_iou


def random_boxes(K: int, seed: int, size: float = 200.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corner = size * torch.rand(K, 2, generator=g)
    return torch.cat([corner, corner + 1 + 59 * torch.rand(K, 2, generator=g)], dim=1)  # (K, 4)


def random_scores(K: int, seed: int, levels: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    if levels is None:
        return torch.rand(K, generator=g)
    return torch.randint(0, levels, (K,), generator=g).float()  # many ties


SQUARE = torch.tensor([[0.0, 0, 10, 10]])
CASES = {
    "random": (random_boxes(300, 0), random_scores(300, 0)),
    "ties": (random_boxes(300, 1), random_scores(300, 1, levels=3)),
    "all scores equal": (random_boxes(200, 2, size=50.0), torch.full((200,), 0.5)),
    "identical boxes and scores": (SQUARE.repeat(6, 1), torch.ones(6)),
    "identical boxes, rising scores": (SQUARE.repeat(6, 1), torch.arange(6.0)),
    "iou exactly at threshold": (torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]]), torch.tensor([0.9, 0.8])),
    "zero-area boxes": (torch.tensor([[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]]), torch.tensor([0.9, 0.8, 0.7])),
    "nested boxes": (torch.tensor([[0.0, 0, 100, 100], [10, 10, 90, 90], [20, 20, 80, 80], [30, 30, 70, 70]]),
                     torch.tensor([0.1, 0.2, 0.3, 0.4])),
    "empty": (torch.zeros(0, 4), torch.zeros(0)),
    "one box": (SQUARE, torch.tensor([0.3])),
    "thousands": (random_boxes(3000, 3, size=1000.0), random_scores(3000, 3)),
    "thousands with ties": (random_boxes(3000, 4, size=1000.0), random_scores(3000, 4, levels=10)),
}


def test_worked_example():
    # D is best and far away; B overlaps A (IoU 90/110) and goes; C overlaps B (70/130 > 0.5) but
    # B is gone, and C overlaps A only 60/140 < 0.5, so C stays.
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [4, 0, 14, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]


def test_pairwise_iou_matches_torchvision():
    boxes1, boxes2 = random_boxes(40, 5), random_boxes(30, 6)
    assert torch.allclose(pairwise_iou(boxes1, boxes2), torchvision.ops.box_iou(boxes1, boxes2), atol=1e-7)
    # Half-overlapping unit boxes: intersection 0.5, union 1.5, IoU 1/3.
    half = pairwise_iou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.5, 0, 1.5, 1]]))
    assert half.item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", list(CASES))
def test_nms_agrees_with_torchvision(name, threshold):
    boxes, scores = CASES[name]
    ours = nms(boxes, scores, threshold)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, torchvision.ops.nms(boxes, scores, threshold))


def test_ties_keep_the_lower_index():
    # Equal scores and identical boxes: the first one is kept, as torchvision's (stable) CPU sort does.
    assert nms(SQUARE.repeat(4, 1), torch.ones(4), 0.5).tolist() == [0]
    # Three far-apart boxes with equal scores: all kept, in index order.
    boxes = torch.tensor([[0.0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]])
    assert nms(boxes, torch.ones(3), 0.5).tolist() == [0, 1, 2]


def test_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])  # IoU exactly 50/100
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


@pytest.mark.parametrize("name", list(CASES))
def test_class_specific_nms_agrees_with_batched_nms(name):
    boxes, scores = CASES[name]
    labels = torch.randint(0, 5, (len(boxes),), generator=torch.Generator().manual_seed(7))
    ours = class_specific_nms(boxes, scores, labels, 0.5)
    theirs = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    if len(boxes) <= 1000:
        assert torch.equal(ours, theirs)
    else:  # torchvision re-sorts per-class results with an unstable sort above 1000 boxes
        assert torch.equal(ours.sort().values, theirs.sort().values)
        assert torch.equal(scores[ours], scores[theirs])


def test_class_specific_nms_separates_classes():
    two = SQUARE.repeat(2, 1)
    assert class_specific_nms(two, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert class_specific_nms(two, torch.tensor([0.9, 0.8]), torch.tensor([3, 3]), 0.5).tolist() == [0]


def test_class_specific_nms_with_negative_coordinates():
    # Boxes partly left of 0 (unclipped): two classes must still never suppress each other.
    boxes = torch.tensor([[-50.0, -50, -10, -10], [-50, -50, -10, -10], [-45, -50, -10, -10]])
    keep = class_specific_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1]


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"boxes must be \(K, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"scores must be \(K,\)"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"labels must be \(K,\)"):
        class_specific_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)


NAN, INF = float("nan"), float("inf")
FOUR = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [4, 0, 14, 10], [20, 20, 30, 30]])
FOUR_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.95])


def run_both(boxes, scores, threshold):
    """Call nms and class_specific_nms; both must raise the same ValueError."""
    messages = []
    for fn, extra in ((nms, ()), (class_specific_nms, (torch.zeros(len(boxes), dtype=torch.int64),))):
        with pytest.raises(ValueError) as err:
            fn(boxes, scores, *extra, threshold)
        assert "\n" not in str(err.value)  # one line
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_scores_are_refused(value):
    # A NaN score sorts first: without the check, NMS would keep that box before every other.
    scores = FOUR_SCORES.clone()
    scores[2] = value
    message = run_both(FOUR, scores, 0.5)
    assert message.startswith("scores must be finite") and "index 2 of 4" in message


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_boxes_are_refused(value):
    boxes = FOUR.clone()
    boxes[1, 2] = value
    message = run_both(boxes, FOUR_SCORES, 0.5)
    assert message.startswith("boxes must be finite") and "row 1 of 4" in message


def test_boxes_with_x2_below_x1_or_y2_below_y1_are_refused():
    for row in ([14.0, 0, 4, 10], [0.0, 10, 10, 0]):  # x2 < x1; y2 < y1
        boxes = FOUR.clone()
        boxes[3] = torch.tensor(row)
        message = run_both(boxes, FOUR_SCORES, 0.5)
        assert message.startswith("boxes must be (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2") and "row 3" in message
    # Zero-area boxes (x1 == x2) are still allowed, as in torchvision.
    assert nms(torch.tensor([[5.0, 5, 5, 5], [0, 0, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("threshold", [5, -0.1, 1.01, NAN])
def test_iou_threshold_outside_0_1_is_refused(threshold):
    message = run_both(FOUR, FOUR_SCORES, threshold)
    assert message.startswith("iou_threshold must be in [0, 1]") and f"got {threshold}" in message
    # ... even with no boxes at all: the call is wrong whatever the data.
    with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\]"):
        nms(torch.zeros(0, 4), torch.zeros(0), threshold)


@pytest.mark.parametrize("threshold", [0, 1])
def test_iou_threshold_bounds_are_allowed(threshold):
    # 0: any overlap removes a box; 1: only IoU > 1 would, i.e. nothing (torchvision agrees).
    assert torch.equal(nms(FOUR, FOUR_SCORES, threshold), torchvision.ops.nms(FOUR, FOUR_SCORES, threshold))
