"""Tests of fcos_lib.inference (chapter 08): batched post-processing, detect, mapping back to the photo."""
import pytest
import torch
from torch import nn

from fcos_lib.inference import detect, fcos_postprocess, fcos_postprocess_per_image, same_detections
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.model import FCOS, FCOSPredictions
from fcos_lib.targets import strides_per_location

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FCOS(num_classes=4, fpn_channels=32, num_convs=2).eval()


def hand_made_predictions(B: int, H: int = 224, W: int = 224, C: int = 3) -> FCOSPredictions:
    """"Nothing" everywhere except class 2 at p3 location 199 = (x, y) (28, 60) with the box (10, 20, 50, 100)."""
    shapes = {level: (H // s, W // s) for level, s in STRIDES.items()}
    locations_per_level = get_fpn_location_coords(shapes, STRIDES)
    locations = torch.cat(list(locations_per_level.values()))
    L = locations.shape[0]
    cls_logits = torch.full((B, L, C), -10.0)
    cls_logits[:, 199, 2] = 10.0
    box_deltas = torch.zeros(B, L, 4)
    box_deltas[:, 199] = torch.tensor([28 - 10, 60 - 20, 50 - 28, 100 - 60]) / 8.0
    ctr_logits = torch.full((B, L, 1), 10.0)
    return FCOSPredictions(cls_logits, box_deltas, ctr_logits, locations,
                           strides_per_location(locations_per_level, STRIDES),
                           [v.shape[0] for v in locations_per_level.values()], (H, W))


class HandMadeModel(nn.Module):
    def forward(self, images):
        assert not self.training and not torch.is_grad_enabled()
        return hand_made_predictions(images.shape[0], *images.shape[-2:])


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batched_equals_per_image_loop_on_non_square_inputs(model, batch_size):
    torch.manual_seed(batch_size)
    with torch.no_grad():
        predictions = model(torch.rand(batch_size, 3, 160, 224))
    for kwargs in ({}, {"score_thresh": 0.07, "nms_thresh": 0.3, "topk_candidates": 50, "max_detections": 20}):
        batched = fcos_postprocess(predictions, **kwargs)
        assert len(batched) == batch_size
        assert same_detections(batched, fcos_postprocess_per_image(predictions, **kwargs))
        for d in batched:
            assert d["boxes"].shape[1:] == (4,) and d["labels"].dtype == torch.int64
            assert len(d["boxes"]) <= kwargs.get("max_detections", 100)
            assert ((d["boxes"][:, 0::2] >= 0) & (d["boxes"][:, 0::2] <= 224)).all()
            assert ((d["boxes"][:, 1::2] >= 0) & (d["boxes"][:, 1::2] <= 160)).all()
            assert (d["scores"] > kwargs.get("score_thresh", 0.05)).all()
            assert torch.equal(d["scores"], d["scores"].sort(descending=True).values)


def test_images_do_not_suppress_each_other(model):
    # The same image twice gives the same detections twice (one batched NMS, grouped by image).
    torch.manual_seed(0)
    image = torch.rand(1, 3, 160, 224)
    with torch.no_grad():
        predictions = model(image)
    one = fcos_postprocess(predictions)
    doubled = predictions._replace(**{name: getattr(predictions, name).repeat(2, 1, 1)
                                      for name in ("cls_logits", "box_deltas", "ctr_logits")})
    two = fcos_postprocess(doubled)
    assert same_detections(two[:1], one) and same_detections(two[1:], one)


def test_postprocess_leaves_predictions_unchanged(model):
    with torch.no_grad():
        predictions = model(torch.rand(3, 3, 160, 224))
    before = [t.clone() for t in predictions[:5]]
    fcos_postprocess(predictions)
    fcos_postprocess(predictions)
    assert all(torch.equal(a, b) for a, b in zip(before, predictions[:5]))


def test_no_candidates_gives_empty_detections():
    predictions = hand_made_predictions(2)
    quiet = predictions._replace(cls_logits=torch.full_like(predictions.cls_logits, -20.0))
    for d in fcos_postprocess(quiet):
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,) and d["labels"].shape == (0,)


def test_detect_maps_boxes_to_the_original_image():
    # A 224 x 448 (W x H) photo letterboxed to 224: scaled by 1/2 to 112 x 224, padded on the right.
    # The box (10, 20, 50, 100) in network pixels is (20, 40, 100, 200) in the photo.
    stand_in = HandMadeModel().train()
    images = torch.zeros(2, 3, 224, 224)
    targets = [{"orig_size": (448, 224), "resized_size": (224, 112)},
               {"orig_size": (224, 224), "resized_size": (224, 224)}]
    network = detect(stand_in, images)
    photo = detect(stand_in, images, targets)
    assert network[0]["boxes"].tolist() == [[10.0, 20.0, 50.0, 100.0]]
    assert photo[0]["boxes"].tolist() == [[20.0, 40.0, 100.0, 200.0]]
    assert photo[1]["boxes"].tolist() == [[10.0, 20.0, 50.0, 100.0]]  # no letterbox: unchanged
    assert photo[0]["labels"].tolist() == [2]
    assert stand_in.training  # mode restored


def test_detect_restores_eval_mode_and_disables_grad(model):
    model.eval()
    out = detect(model, torch.rand(1, 3, 96, 128), score_thresh=0.05)
    assert not model.training and not out[0]["scores"].requires_grad
    model.train()
    detect(model, torch.rand(1, 3, 96, 128))
    assert model.training
    model.eval()


def test_bad_inputs_give_clear_errors(model):
    predictions = hand_made_predictions(1)
    with pytest.raises(ValueError, match="score_thresh must be in"):
        fcos_postprocess(predictions, score_thresh=1.5)
    with pytest.raises(ValueError, match="max_detections must be an int >= 1"):
        fcos_postprocess(predictions, max_detections=0)
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        detect(HandMadeModel(), torch.zeros(2, 3, 224, 224), [{"orig_size": (1, 1), "resized_size": (1, 1)}])
    with pytest.raises(ValueError, match="divisible by 32"):
        detect(model, torch.rand(1, 3, 100, 128))
