"""Tests of fcos_lib.model (chapter 07): the FCOS module's two modes, input checks, NaN guard."""
import pytest
import torch

from torchvision.ops import FrozenBatchNorm2d

from fcos_lib.backbone import BackboneWithFPN
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.matching import check_gt_boxes, fcos_match_indices
from fcos_lib.model import FCOS, FCOSPredictions, check_finite_losses

GT = torch.tensor([
    [[10.0, 20, 70, 100, 1], [-1, -1, -1, -1, -1]],
    [[30.0, 40, 200, 150, 4], [100, 10, 140, 60, 0]],
])  # (2, 2, 5) for 160 x 224 images


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FCOS(num_classes=5, fpn_channels=32, num_convs=2)


def test_training_mode_returns_three_finite_scalar_losses(model):
    losses = model.train()(torch.rand(2, 3, 160, 224), GT)
    assert list(losses) == ["loss_cls", "loss_box", "loss_ctr"]
    assert all(v.shape == () and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("center_sampling_radius", [1.5, None])
def test_giou_gradient_reaches_boxes_whose_raw_outputs_are_all_negative(center_sampling_radius):
    # The collapse a ReLU'd head falls into: every raw box output < 0. With exp the GIoU loss
    # still pushes the box conv (chapter 02's pitfall); with a ReLU this gradient would be 0.
    torch.manual_seed(0)
    model = FCOS(num_classes=5, fpn_channels=32, num_convs=2,
                 center_sampling_radius=center_sampling_radius).train()
    torch.nn.init.constant_(model.head.box_deltas.bias, -4.0)
    losses = model(torch.rand(2, 3, 160, 224), GT)
    losses["loss_box"].backward()
    grad = model.head.box_deltas.bias.grad
    assert grad is not None and (grad < 0).all()  # descent raises every side: the boxes grow back


@pytest.mark.parametrize("box_loss", ["giou", "l1"])
def test_empty_batches_train(box_loss):
    torch.manual_seed(0)
    model = FCOS(num_classes=3, fpn_channels=16, num_convs=1, box_loss=box_loss).train()
    empty = torch.full((2, 1, 5), -1.0)
    losses = model(torch.rand(2, 3, 64, 96), empty)
    assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
    assert torch.isfinite(losses["loss_cls"])
    some = torch.tensor([[[4.0, 4, 40, 50, 2]], [[-1, -1, -1, -1, -1]]])
    losses = model(torch.rand(2, 3, 64, 96), some)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"] > 0


def test_eval_mode_returns_predictions(model):
    with torch.no_grad():
        predictions = model.eval()(torch.rand(3, 3, 160, 224))
    assert isinstance(predictions, FCOSPredictions)
    L = 20 * 28 + 10 * 14 + 5 * 7
    assert predictions.cls_logits.shape == (3, L, 5)
    assert predictions.box_deltas.shape == (3, L, 4)
    assert predictions.ctr_logits.shape == (3, L, 1)
    assert predictions.locations.shape == (L, 2) and predictions.strides.shape == (L,)
    assert predictions.num_locations_per_level == [560, 140, 35]
    assert predictions.image_size == (160, 224)
    # First p4 location is at (8, 8) with stride 16; the last location is p5's bottom-right cell.
    assert predictions.locations[560].tolist() == [8.0, 8.0] and predictions.strides[560] == 16
    assert predictions.locations[-1].tolist() == [6.5 * 32, 4.5 * 32]


def test_no_hidden_state_between_batches(model):
    # The same batch gives the same loss whatever came before (no EMA normaliser).
    model.train()
    images = torch.rand(2, 3, 160, 224)
    with torch.no_grad():
        first = model(images, GT)
        model(torch.rand(2, 3, 160, 224), torch.full((2, 1, 5), -1.0))
        again = model(images, GT)
    for a, b in zip(first.values(), again.values()):
        assert torch.equal(a, b)


def test_bad_inputs_give_clear_errors(model):
    model.train()
    images = torch.rand(2, 3, 160, 224)
    with pytest.raises(ValueError, match=r"images must be one \(B, 3, H, W\).*got \(3, 160, 224\)"):
        model(images[0], GT)
    with pytest.raises(ValueError, match=r"divisible by 32.*H=150, W=224.*\(160, 224\)"):
        model(torch.rand(2, 3, 150, 224), GT)
    with pytest.raises(ValueError, match=r"gt_boxes must be \(2, N, 5\).*got \(2, 5\)"):
        model(images, GT[0])
    with pytest.raises(ValueError, match=r"gt_boxes must be \(2, N, 5\).*got \(2, 2, 4\)"):
        model(images, GT[..., :4])
    bad_label = GT.clone()
    bad_label[1, 1, 4] = 7
    with pytest.raises(ValueError, match=r"class label 7.*num_classes=5"):
        model(images, bad_label)
    degenerate = GT.clone()
    degenerate[0, 0, 2] = 5.0  # x2 < x1
    with pytest.raises(ValueError, match="x2 > x1"):
        model(images, degenerate)
    with pytest.raises(ValueError, match="training mode needs gt_boxes"):
        model(images)
    with pytest.raises(ValueError, match="box_loss must be one of"):
        FCOS(num_classes=5, box_loss="iou")


def test_check_finite_losses_names_the_bad_component():
    check_finite_losses({"loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(0.5), "loss_ctr": torch.tensor(0.7)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss: loss_ctr=inf"):
        check_finite_losses({"loss_cls": torch.tensor(1.0), "loss_box": torch.tensor(0.5),
                             "loss_ctr": torch.tensor(float("inf"))})
    with pytest.raises(FloatingPointError, match=r"loss_cls=nan, loss_box=nan"):
        check_finite_losses({"loss_cls": torch.tensor(float("nan")), "loss_box": torch.tensor(float("nan")),
                             "loss_ctr": torch.tensor(0.7)})


# --- one place for each input check: the model's errors are those of chapter 01 and chapter 04

@pytest.mark.parametrize("images", [
    torch.rand(3, 160, 224), torch.rand(2, 1, 160, 224), torch.zeros(2, 3, 160, 224, dtype=torch.uint8),
    torch.rand(2, 3, 150, 224),
], ids=["3-D", "1 channel", "uint8", "H=150"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_image_errors_are_the_backbones(model, images, training):
    with pytest.raises(ValueError) as from_backbone:
        BackboneWithFPN(out_channels=16)(images)
    with pytest.raises(ValueError) as from_model:
        model.train(training)(images, GT)
    assert str(from_model.value) == str(from_backbone.value)


@pytest.mark.parametrize("row", [
    [10.0, 20, 5, 100, 1], [10.0, 20, 70, 20, 1], [float("nan"), 20, 70, 100, 1], [10.0, 20, float("inf"), 100, 1],
], ids=["x2<x1", "y2=y1", "nan", "inf"])
def test_ground_truth_errors_are_the_matchings(model, row):
    gt = GT.clone()
    gt[0, 1] = torch.tensor(row)  # (2, 2, 5), the bad row is gt_boxes[0, 1]
    locations = get_fpn_location_coords({"p3": (20, 28), "p4": (10, 14), "p5": (5, 7)},
                                        {"p3": 8, "p4": 16, "p5": 32})
    with pytest.raises(ValueError) as from_matching:
        fcos_match_indices(locations, {"p3": 8, "p4": 16, "p5": 32}, gt)
    with pytest.raises(ValueError) as from_model:
        model.train()(torch.rand(2, 3, 160, 224), gt)
    assert str(from_model.value) == str(from_matching.value)
    assert "gt_boxes[0, 1]" in str(from_model.value)


def test_ground_truth_shape_and_class_errors_come_from_check_gt_boxes(model):
    # The matching knows neither num_classes nor the number of images: the model passes both.
    bad_classes = []
    for label in (5, 0.5, -2):  # num_classes=5: classes 0..4, or -1
        gt = GT.clone()
        gt[1, 1, 4] = label
        bad_classes.append(gt)
    for gt in (*bad_classes, GT[0], GT[:1]):
        with pytest.raises(ValueError) as expected:
            check_gt_boxes(gt, num_classes=5, batch_size=2)
        with pytest.raises(ValueError) as from_model:
            model.train()(torch.rand(2, 3, 160, 224), gt)
        assert str(from_model.value) == str(expected.value)


def test_backbone_freezing_options_are_passed_through():
    model = FCOS(num_classes=3, fpn_channels=16, num_convs=1, trainable_backbone_layers=2, frozen_batchnorm=True)
    assert model.backbone.trainable_layers == 2 and model.backbone.frozen_batchnorm is True
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    frozen = {name for name, prm in model.named_parameters() if not prm.requires_grad}
    assert frozen and all(name.startswith(("backbone.body.stem.", "backbone.body.trunk_output.block1.",
                                           "backbone.body.trunk_output.block2.")) for name in frozen)
    # A fine-tuned model's checkpoint loads into one rebuilt without downloading anything.
    rebuilt = FCOS(num_classes=3, fpn_channels=16, num_convs=1, frozen_batchnorm=True)
    rebuilt.load_state_dict(model.state_dict())
    default = FCOS(num_classes=3, fpn_channels=16, num_convs=1)
    assert default.backbone.trainable_layers == 5 and default.backbone.frozen_batchnorm is False
