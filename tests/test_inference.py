"""Tests of fcos_lib.inference (chapter 08): batched post-processing, detect, mapping back to the photo."""
import pytest
import torch
import torchvision
from torch import nn

from fcos_lib.inference import NMS_THRESH, detect, fcos_postprocess, fcos_postprocess_per_image, same_detections
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


# ---------------------------------------------------------------------------------------------
# Letterboxed batches: clip to each image's content (h, w) before NMS, like torchvision.
# ---------------------------------------------------------------------------------------------
# Content sizes (h, w) inside a 224 x 224 input: 224 wide x 112 tall, 96 wide x 224 tall, no padding.
LETTERBOXED = [(112, 224), (224, 96), (224, 224)]


def random_head_outputs(B: int, S: int = 224, C: int = 3, seed: int = 0) -> FCOSPredictions:
    """Random eval-mode outputs on S x S inputs: thousands of candidates above 0.05, boxes of 0.2..6
    strides, so many locations in the padding predict boxes that never reach the content."""
    g = torch.Generator().manual_seed(seed)
    locations_per_level = get_fpn_location_coords({p: (S // s, S // s) for p, s in STRIDES.items()}, STRIDES)
    locations = torch.cat(list(locations_per_level.values()))  # (L, 2)
    L = locations.shape[0]
    cls_logits = 2 * torch.randn(B, L, C, generator=g) - 3  # (B, L, C)
    ctr_logits = torch.randn(B, L, 1, generator=g)  # (B, L, 1)
    box_deltas = 0.1 + 3 * torch.rand(B, L, 4, generator=g)  # (B, L, 4) > 0, as after the head's exp
    return FCOSPredictions(cls_logits, box_deltas, ctr_logits, locations,
                           strides_per_location(locations_per_level, STRIDES),
                           [v.shape[0] for v in locations_per_level.values()], (S, S))


def torchvision_postprocess(predictions: FCOSPredictions, image_sizes, score_thresh=0.05, nms_thresh=NMS_THRESH,
                            topk_candidates=1000, detections_per_img=100) -> list:
    """torchvision's FCOS.postprocess_detections on the same head outputs.

    torchvision decodes box = anchor centre -/+ delta * anchor side (BoxLinearCoder, normalize_by_size):
    anchors of side = stride centred on our locations give our decoding exactly.
    """
    stub_backbone = nn.Module()
    stub_backbone.out_channels = 32  # FCOS only reads this to build its (unused) head (GroupNorm: 32 groups)
    tv = torchvision.models.detection.FCOS(
        stub_backbone, num_classes=predictions.cls_logits.shape[-1], score_thresh=score_thresh,
        nms_thresh=nms_thresh, topk_candidates=topk_candidates, detections_per_img=detections_per_img)
    per_level = predictions.num_locations_per_level

    def split(t):  # (B, L, K) -> [(B, L_l, K) per level]
        return list(t.split(per_level, dim=1))

    head_outputs = {"cls_logits": split(predictions.cls_logits), "bbox_regression": split(predictions.box_deltas),
                    "bbox_ctrness": split(predictions.ctr_logits)}
    half = predictions.strides[:, None] / 2  # (L, 1)
    anchors = torch.cat([predictions.locations - half, predictions.locations + half], dim=1)  # (L, 4)
    anchors_per_image = [list(anchors.split(per_level))] * len(image_sizes)
    return tv.postprocess_detections(head_outputs, anchors_per_image, [tuple(s) for s in image_sizes])


def positive_area(detection: dict) -> dict:
    boxes = detection["boxes"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {name: value[keep] for name, value in detection.items()}


def zero_area_count(detection: dict) -> int:
    return len(detection["boxes"]) - len(positive_area(detection)["boxes"])


@pytest.mark.parametrize("seed", [0, 1])
def test_letterboxed_batch_equals_torchvision_without_its_zero_area_boxes(seed):
    predictions = random_head_outputs(len(LETTERBOXED), seed=seed)
    ours = fcos_postprocess(predictions, image_sizes=LETTERBOXED, max_detections=100_000)
    theirs = torchvision_postprocess(predictions, LETTERBOXED, detections_per_img=100_000)
    # torchvision keeps the boxes that lie wholly in the padding (clipped to zero area); we drop them.
    assert zero_area_count(theirs[0]) > 100 and zero_area_count(theirs[1]) > 100 and zero_area_count(theirs[2]) == 0
    assert same_detections(ours, [positive_area(d) for d in theirs])
    assert same_detections(ours, fcos_postprocess_per_image(predictions, image_sizes=LETTERBOXED,
                                                            max_detections=100_000))
    for d, (h, w) in zip(ours, LETTERBOXED):
        boxes = d["boxes"]
        assert len(boxes) > 100
        assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= h)).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


def test_max_detections_counts_only_positive_area_boxes():
    predictions = random_head_outputs(len(LETTERBOXED), seed=2)
    k = 50
    ours = fcos_postprocess(predictions, image_sizes=LETTERBOXED, max_detections=k)
    everything = torchvision_postprocess(predictions, LETTERBOXED, detections_per_img=100_000)
    best_k = [{name: value[:k] for name, value in positive_area(d).items()} for d in everything]
    assert [len(d["boxes"]) for d in ours] == [k, k, k]
    assert same_detections(ours, best_k)
    # torchvision's own cut counts its zero-area boxes: fewer than k real ones are left for a padded image.
    cut = [positive_area(d) for d in torchvision_postprocess(predictions, LETTERBOXED, detections_per_img=k)]
    assert len(cut[0]["boxes"]) < k and len(cut[1]["boxes"]) < k and len(cut[2]["boxes"]) == k


def padding_predictions() -> FCOSPredictions:
    """One 224 x 224 input whose content is 224 wide x 112 tall. Three class-0 boxes (network pixels):
    p3 location 339 = (28, 100): (10, 80, 60, 200), score 0.99;
    p3 location 340 = (36, 100): (10, 80, 60, 115), score 0.98 (differs from the first only in the padding);
    p3 location 591 = (28, 172): (10, 150, 60, 200), score 0.97 (wholly in the padding)."""
    predictions = hand_made_predictions(1)
    cls_logits = torch.full_like(predictions.cls_logits, -10.0)
    box_deltas = torch.zeros_like(predictions.box_deltas)
    for k, (x, y), box, logit in [(339, (28, 100), (10, 80, 60, 200), 8.0), (340, (36, 100), (10, 80, 60, 115), 7.0),
                                  (591, (28, 172), (10, 150, 60, 200), 6.0)]:
        assert predictions.locations[k].tolist() == [x, y]
        cls_logits[0, k, 0] = logit
        box_deltas[0, k] = torch.tensor([x - box[0], y - box[1], box[2] - x, box[3] - y]) / 8.0
    return predictions._replace(cls_logits=cls_logits, box_deltas=box_deltas)


def test_clip_to_the_image_before_nms_hand_example():
    # Clipped to the content (y <= 112) the first two boxes are the same box, IoU 1: NMS keeps the better.
    # (Clipped to the padded input their IoU is 35 / 120 = 0.29 < 0.6, and both would survive.)
    predictions = padding_predictions()
    two_boxes = predictions._replace(cls_logits=predictions.cls_logits.clone())
    two_boxes.cls_logits[0, 591, 0] = -10.0
    detections = fcos_postprocess(two_boxes, image_sizes=[(112, 224)])
    assert detections[0]["boxes"].tolist() == [[10.0, 80.0, 60.0, 112.0]]
    assert detections[0]["labels"].tolist() == [0]
    # The third box lies wholly in the padding: zero area once clipped, so it is dropped, not returned.
    for postprocess in (fcos_postprocess, fcos_postprocess_per_image):
        assert postprocess(predictions, image_sizes=[(112, 224)])[0]["boxes"].tolist() == [[10.0, 80.0, 60.0, 112.0]]
    # Without image_sizes the whole input is the image: the three boxes are distinct detections.
    assert len(fcos_postprocess(predictions)[0]["boxes"]) == 3


class PaddingModel(nn.Module):
    def forward(self, images):
        return padding_predictions()


def test_detect_clips_to_each_target_content_before_nms():
    # The same example through detect: a 224 x 112 photo letterboxed to 224 at scale 1.
    target = {"orig_size": (112, 224), "resized_size": (112, 224)}
    detections = detect(PaddingModel(), torch.zeros(1, 3, 224, 224), [target])
    assert detections[0]["boxes"].tolist() == [[10.0, 80.0, 60.0, 112.0]]


def test_detect_on_letterboxed_images_returns_no_box_in_the_padding(model):
    # Photos 448 x 224, 192 x 448 and 224 x 224 (W x H) letterboxed to 224; the padding is black.
    torch.manual_seed(0)
    targets = [{"orig_size": (2 * h, 2 * w), "resized_size": (h, w)} for h, w in LETTERBOXED]
    images = torch.zeros(3, 3, 224, 224)
    for image, (h, w) in zip(images, LETTERBOXED):
        image[:, :h, :w] = torch.rand(3, h, w)
    in_network = detect(model, images, [{"orig_size": (h, w), "resized_size": (h, w)} for h, w in LETTERBOXED])
    in_photo = detect(model, images, targets)
    for network, photo, (h, w) in zip(in_network, in_photo, LETTERBOXED):
        assert len(photo["boxes"]) > 0
        for boxes, scale in ((network["boxes"], 1), (photo["boxes"], 2)):
            assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()  # no zero-area box
            assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= scale * w) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= scale * h)).all()
        assert torch.allclose(photo["boxes"], 2 * network["boxes"])


def test_bad_image_sizes_give_clear_errors():
    predictions = hand_made_predictions(2)  # two 224 x 224 inputs
    for bad in ([(224, 224)], [(224, 224), (0, 10)], [(224, 225), (10, 10)], [(224, 224), (10.5, 10)],
                [(224, 224), (10,)], [(224, 224), 10]):
        with pytest.raises(ValueError, match=r"image_sizes must be"):
            fcos_postprocess(predictions, image_sizes=bad)
        with pytest.raises(ValueError, match=r"image_sizes must be"):
            fcos_postprocess_per_image(predictions, image_sizes=bad)


# ---------------------------------------------------------------------------------------------
# Non-finite predictions are refused with the tensor's name (a diverged model must not quietly
# "detect nothing"); image_files turns folders into image files.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("field", ["cls_logits", "box_deltas", "ctr_logits"])
@pytest.mark.parametrize("postprocess", [fcos_postprocess, fcos_postprocess_per_image])
def test_non_finite_predictions_are_refused(postprocess, field, value):
    predictions = hand_made_predictions(2)
    bad = getattr(predictions, field).clone()
    bad[1, 5, 0] = value
    with pytest.raises(ValueError, match=rf"^predictions\.{field} holds NaN or inf values") as err:
        postprocess(predictions._replace(**{field: bad}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("postprocess", [fcos_postprocess, fcos_postprocess_per_image])
def test_nms_thresh_outside_0_1_is_refused(postprocess):
    with pytest.raises(ValueError, match=r"nms_thresh must be in \[0, 1\]; got 5"):
        postprocess(hand_made_predictions(1), nms_thresh=5)


def test_image_files_expands_folders(tmp_path):
    from fcos_lib.inference import image_files

    # root/z.jpg, root/a.PNG, root/sub/b.jpeg, root/.hidden/c.jpg, root/out/d.png, root/notes.txt
    for name in ("z.jpg", "a.PNG", "sub/b.jpeg", ".hidden/c.jpg", "out/d.png", "notes.txt", "._e.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = image_files([tmp_path, tmp_path / "z.jpg", tmp_path / "notes.txt"], exclude=tmp_path / "out")
    # Each folder's own files by name, then its subfolders; a file named twice is kept once; a
    # file named on its own is taken whatever its suffix.
    assert files == [tmp_path / "a.PNG", tmp_path / "z.jpg", tmp_path / "sub" / "b.jpeg", tmp_path / "notes.txt"]
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        image_files([tmp_path / "missing.jpg"])
    (tmp_path / "texts" / ".thumbs").mkdir(parents=True)
    (tmp_path / "texts" / "notes.txt").write_text("no image here")
    (tmp_path / "texts" / ".thumbs" / "t.jpg").write_bytes(b"")  # hidden: not taken
    with pytest.raises(ValueError, match="texts holds no image files"):
        image_files([tmp_path / "texts"])
