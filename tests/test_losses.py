"""Tests of fcos_lib.losses (chapter 07): focal and GIoU against torchvision, fcos_loss on edge cases."""
import pytest
import torch
import torchvision
from torchvision.models.detection.fcos import FCOSHead as TorchvisionFCOSHead

from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.losses import fcos_loss, giou_loss, one_hot_targets, sigmoid_focal_loss
from fcos_lib.targets import fcos_build_targets, strides_per_location

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def batch_setup(gt_boxes: torch.Tensor, H: int = 128, W: int = 160, C: int = 5, seed: int = 0):
    """Targets for gt_boxes on an H x W input, and random predictions of the right shapes."""
    shapes = {level: (H // s, W // s) for level, s in STRIDES.items()}
    locations_per_level = get_fpn_location_coords(shapes, STRIDES)
    targets = fcos_build_targets(locations_per_level, STRIDES, gt_boxes, center_sampling_radius=1.5)
    locations = torch.cat(list(locations_per_level.values()))  # (L, 2)
    strides = strides_per_location(locations_per_level, STRIDES)  # (L,)
    B, L = gt_boxes.shape[0], locations.shape[0]
    g = torch.Generator().manual_seed(seed)
    cls_logits = torch.randn(B, L, C, generator=g)
    box_deltas = 3 * torch.rand(B, L, 4, generator=g)
    ctr_logits = torch.randn(B, L, 1, generator=g)
    return cls_logits, box_deltas, ctr_logits, targets, locations, strides


GT = torch.tensor([
    [[10.0, 20, 70, 100, 1], [80, 10, 150, 60, 3], [-1, -1, -1, -1, -1]],
    [[5.0, 5, 125, 120, 0], [40, 40, 60, 70, 4], [100, 80, 140, 110, 2]],
])  # (2, 3, 5)


def test_focal_loss_by_hand():
    # p = 0.9 on a positive: 0.25 * 0.1^2 * -log(0.9); on a negative: 0.75 * 0.9^2 * -log(0.1).
    logits = torch.logit(torch.tensor([0.9, 0.9]))
    expected = torch.tensor([0.25 * 0.01 * -torch.log(torch.tensor(0.9)), 0.75 * 0.81 * -torch.log(torch.tensor(0.1))])
    assert torch.allclose(sigmoid_focal_loss(logits, torch.tensor([1.0, 0.0])), expected, rtol=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1, 1.5)])
def test_focal_loss_matches_torchvision_values_and_gradients(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 40, 7, generator=g)).requires_grad_()
    targets = (torch.rand(3, 40, 7, generator=g) < 0.1).float()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma)
    theirs = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="none")
    assert torch.allclose(ours, theirs, atol=1e-7)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    assert torch.allclose(g_ours, g_theirs, atol=1e-7)


def test_focal_loss_is_finite_for_extreme_logits():
    logits = torch.tensor([-100.0, 100.0, -100.0, 100.0], requires_grad=True)
    loss = sigmoid_focal_loss(logits, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()


def test_giou_loss_by_hand():
    # (0,0,2,2) vs (1,1,3,3): IoU 1/7, enclosing 9, GIoU 1/7 - 2/9. Unit squares 1 apart: GIoU -1/3.
    boxes1 = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [3, 4, 8, 9]])
    boxes2 = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [3, 4, 8, 9]])
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 0.0])
    assert torch.allclose(giou_loss(boxes1, boxes2), expected, atol=1e-6)


def test_giou_loss_matches_torchvision_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    corner = 100 * torch.rand(300, 2, generator=g)
    pred = torch.cat([corner, corner + 40 * torch.rand(300, 2, generator=g)], dim=1)
    pred[:30, 2:] = pred[:30, :2]  # zero-area predictions (all deltas clamped to 0)
    pred.requires_grad_()
    corner = 100 * torch.rand(300, 2, generator=g)
    gt = torch.cat([corner, corner + 1 + 40 * torch.rand(300, 2, generator=g)], dim=1)
    ours = giou_loss(pred, gt)
    theirs = torchvision.ops.generalized_box_iou_loss(pred, gt)
    assert torch.allclose(ours, theirs, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours.sum(), pred)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), pred)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)
    assert torch.isfinite(g_ours).all()


def test_one_hot_targets_use_num_classes():
    labels = torch.tensor([[2, -1, 0, 6]])
    out = one_hot_targets(labels, num_classes=7)
    assert out.shape == (1, 4, 7)
    assert out.sum(dim=-1).tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert out[0, 3, 6] == 1 and out[0, 0, 2] == 1
    # The label rule and message of chapter 04's check_class_labels (shared with check_gt_boxes).
    with pytest.raises(ValueError, match=r"labels\[0, 0\] has class label 3.*num_classes=3"):
        one_hot_targets(torch.tensor([[3]]), num_classes=3)
    with pytest.raises(ValueError, match=r"labels\[0, 1\] has class label -2"):
        one_hot_targets(torch.tensor([[0, -2]]), num_classes=3)


def test_fcos_loss_matches_torchvision_compute_loss():
    C = 5
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT, C=C)
    ours = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, box_loss="giou")
    # torchvision's head: anchors = stride x stride squares centred on our locations, matched_idxs
    # = the GT row each location matched; its box head ends with a ReLU, our deltas are >= 0 here.
    anchors = torch.cat([locations - strides[:, None] / 2, locations + strides[:, None] / 2], dim=1)
    tv_targets, matched_idxs = [], []
    for b in range(GT.shape[0]):
        real = GT[b][GT[b, :, 4] >= 0]
        tv_targets.append({"boxes": real[:, :4], "labels": real[:, 4].long()})
        same = (targets.matched_boxes[b][:, None, :] == real[None]).all(dim=-1)  # (L, N_b)
        matched_idxs.append(torch.where(same.any(dim=1), same.float().argmax(dim=1), -1))
    head = TorchvisionFCOSHead(in_channels=32, num_anchors=1, num_classes=C, num_convs=0)
    theirs = head.compute_loss(tv_targets, {"cls_logits": cls_logits, "bbox_regression": box_deltas,
                                            "bbox_ctrness": ctr_logits}, [anchors] * 2, matched_idxs)
    for a, b in zip(ours.values(), theirs.values()):
        assert torch.allclose(a, b, rtol=1e-5)


def test_l1_box_loss_by_hand():
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT)
    foreground = targets.matched_boxes[..., 4] >= 0
    # Predict the targets exactly, then one foreground location 1.0 off on one side: mean over
    # the 4 sides = 0.25, divided by the number of foreground locations.
    box_deltas = torch.where(foreground[..., None], targets.deltas, box_deltas)
    assert fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, "l1")["loss_box"] == 0
    b, l = foreground.nonzero()[0].tolist()
    box_deltas[b, l, 2] += 1.0
    loss = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, "l1")["loss_box"]
    assert loss.item() == pytest.approx(0.25 / foreground.sum().item())


def test_l1_box_loss_pulls_a_negative_delta_back():
    # One foreground location predicts its left side at -1 stride (target > 0). The L1 loss must
    # count that error and push the side up: a clamp at 0 (or a ReLU) before the loss would cut
    # the gradient (pitfalls P5, P7), so the side could never come back.
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT)
    b, l = (targets.matched_boxes[..., 4] >= 0).nonzero()[0].tolist()
    box_deltas[b, l, 0] = -1.0
    box_deltas.requires_grad_()
    fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, "l1")["loss_box"].backward()
    assert box_deltas.grad[b, l, 0] < 0  # raising the side lowers the loss


@pytest.mark.parametrize("box_loss", ["giou", "l1"])
def test_batches_without_objects(box_loss):
    empty = torch.full_like(GT[1:], -1.0)
    # Some images empty: finite; all images empty: box and centerness exactly 0, class loss / 1.
    for gt, all_empty in ((torch.cat([GT[:1], empty]), False), (torch.cat([empty, empty]), True)):
        cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(gt)
        cls_logits.requires_grad_()
        box_deltas.requires_grad_()
        losses = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, box_loss)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert torch.isfinite(cls_logits.grad).all() and torch.isfinite(box_deltas.grad).all()
        if all_empty:
            assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
            plain_sum = torchvision.ops.sigmoid_focal_loss(cls_logits, torch.zeros_like(cls_logits), reduction="sum")
            assert torch.allclose(losses["loss_cls"], plain_sum)


def test_normalised_by_the_batch_foreground_count():
    # Doubling the batch with a copy of itself: sums double, the count doubles, the losses stay.
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT)
    one = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides)
    twice = fcos_loss(*(torch.cat([t, t]) for t in (cls_logits, box_deltas, ctr_logits)),
                      type(targets)(*(torch.cat([t, t]) for t in targets)), locations, strides)
    for a, b in zip(one.values(), twice.values()):
        assert torch.allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_focal_gamma_reaches_the_classification_loss_only(gamma):
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT)
    paper = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides)
    other = fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, focal_gamma=gamma)
    onehot = one_hot_targets(targets.matched_boxes[..., 4], cls_logits.shape[-1])
    num_foreground = (targets.matched_boxes[..., 4] >= 0).sum()
    expected = sigmoid_focal_loss(cls_logits, onehot, gamma=gamma).sum() / num_foreground
    assert torch.allclose(other["loss_cls"], expected, rtol=1e-5)
    assert not torch.allclose(other["loss_cls"], paper["loss_cls"])  # every gamma here differs from the paper's 2
    assert other["loss_box"] == paper["loss_box"] and other["loss_ctr"] == paper["loss_ctr"]


def test_fcos_loss_bad_arguments():
    cls_logits, box_deltas, ctr_logits, targets, locations, strides = batch_setup(GT)
    with pytest.raises(ValueError, match="box_loss must be one of"):
        fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, box_loss="iou")
    with pytest.raises(ValueError, match=r"box_deltas must be \(2, \d+, 4\)"):
        fcos_loss(cls_logits, box_deltas[:, :-1], ctr_logits, targets, locations, strides)
    with pytest.raises(ValueError, match="num_classes=3"):
        fcos_loss(cls_logits[..., :3], box_deltas, ctr_logits, targets, locations, strides)
    for gamma in (-1, float("inf"), True, "2"):
        with pytest.raises(ValueError, match="focal_gamma must be a finite number >= 0"):
            fcos_loss(cls_logits, box_deltas, ctr_logits, targets, locations, strides, focal_gamma=gamma)
