"""Chapter 10's held-out datasets, ablation rows and peer (fcos_lib.heldout, fcos_lib.experiments)."""
import dataclasses
import xml.etree.ElementTree as ET

import pytest
import torch
import torchvision

from fcos_lib.cli import build_parser, config_from_args
from fcos_lib.config import TrainConfig, improved_recipe
from fcos_lib.data import VOCDataset
from fcos_lib.experiments import (
    ABLATION_ROWS, BUDGETS, DESIGN_CHANGES, ERROR_KINDS, ROWS_DEFAULT, SEED_BASELINE, build_peer, error_breakdown,
    row_config,
)
from fcos_lib.heldout import (
    CONFIRMATION_CLASSES, DATASET_CLASSES, FINAL_CLASSES, FRESH_CLASSES, HELD_OUT_CLASSES, make_held_out_dataset,
)
from fcos_lib.voc import read_class_names


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out")
    return {kind: make_held_out_dataset(kind, root / kind, num_train=12, num_val=4) for kind in DATASET_CLASSES}


def test_held_out_datasets_are_voc_layout_with_their_own_classes(held_out):
    for kind, root in held_out.items():
        assert (root / "ImageSets" / "Main" / "train.txt").read_text().split() == [f"train_{i:05d}" for i in range(12)]
        names = set(read_class_names(root, "train")) | set(read_class_names(root, "val"))
        assert names <= set(DATASET_CLASSES[kind]) and len(names) >= 3
        data = VOCDataset(root, "train", class_names=list(DATASET_CLASSES[kind]), image_size=160)
        image, target = data[0]
        assert image.shape == (3, 160, 160)
        boxes = target["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    # The datasets share no class with each other or with the course dataset; "letters", "cells"
    # and "aerial" are kept apart from the rows' two.
    from fcos_lib.course_data import COURSE_CLASSES
    every = [*DATASET_CLASSES.values(), COURSE_CLASSES]
    assert sum(len(set(names)) for names in every) == len(set().union(*every))
    assert set(HELD_OUT_CLASSES) == {"signs", "tiles"} and set(CONFIRMATION_CLASSES) == {"letters"}
    assert set(FRESH_CLASSES) == {"cells"} and set(FINAL_CLASSES) == {"aerial"}


def test_held_out_generation_is_reproducible_and_reused(held_out, tmp_path):
    again = make_held_out_dataset("signs", tmp_path / "signs", num_train=12, num_val=4)
    for name in ("train_00003", "val_00001"):
        assert (again / "Annotations" / f"{name}.xml").read_text() == \
            (held_out["signs"] / "Annotations" / f"{name}.xml").read_text()
    stamp = (again / ".done").stat().st_mtime_ns
    make_held_out_dataset("signs", again, num_train=12, num_val=4)  # same stamp: reused, not rewritten
    assert (again / ".done").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("kind", ["signs", "letters", "cells", "aerial"])
def test_held_out_marks_difficult_objects(kind, tmp_path):
    root = make_held_out_dataset(kind, tmp_path / kind, num_train=40, num_val=1)
    flags = [int(obj.findtext("difficult")) for xml in (root / "Annotations").glob("train_*.xml")
             for obj in ET.parse(xml).getroot().iter("object")]
    assert 0 < sum(flags) < len(flags)  # some tiny or hidden objects, most of them not


def test_unknown_held_out_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="signs, tiles, letters"):
        make_held_out_dataset("faces", tmp_path)


def test_row_configs(held_out):
    root = held_out["signs"]
    seed = row_config("seed baseline", "screen", root, 1, "out")
    assert (seed.box_activation, seed.centerness_on, seed.use_groupnorm, seed.center_sampling_radius,
            seed.box_loss, seed.hflip, seed.schedule) == ("relu", "cls", False, None, "l1", False, "step")
    assert (seed.iters, seed.batch_size, seed.image_size, seed.seed) == (300, 8, 160, 1)
    all_six = row_config("+ all six", "screen", root, 0, "out")
    for changes in DESIGN_CHANGES.values():
        assert {k: getattr(all_six, k) for k in changes} == changes
        assert {k: getattr(row_config("+ " + next(n for n, c in DESIGN_CHANGES.items() if c == changes),
                                      "screen", root, 0, "out"), k) for k in changes} == changes
    # The row "course default" is version 0.1's recipe, written out (ROWS_DEFAULT), so that its
    # stored results keep their meaning; every "default" row changes it ...
    default = row_config("course default", "full", root, 0, "out")
    expected = improved_recipe(**ROWS_DEFAULT, data=str(root), classes=default.classes, iters=828, batch_size=16,
                               image_size=224, in_memory=True, num_workers=0, device="cpu", seed=0, out="out",
                               warmup_iters=82)
    assert default == expected and default.ema_decay is None  # version 0.1 evaluated the last weights
    # ... and the rows chapter 10 adopted are what `python -m fcos_lib train --data DIR --iters 828`
    # runs now: AdamW and block1's detail in p3 for a run of this length; the rows measured before the
    # passthrough are the command with `--no-c2-passthrough` (and `--optimizer sgd`: the SGD recipe).
    def cli(*flags):
        return config_from_args(build_parser().parse_args([
            "train", "--data", str(root), "--iters", "828", "--batch-size", "16", "--image-size", "224", "--in-memory",
            "--workers", "0", "--device", "cpu", "--seed", "0", "--out", "out", *flags]))

    adopted = row_config("default, peer's optimiser + EMA", "full", root, 0, "out")
    assert adopted == cli("--optimizer", "sgd", "--no-c2-passthrough").replace(classes=adopted.classes,
                                                                                 num_threads=None)
    assert row_config("adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough", "full", root, 0, "out") == \
        cli().replace(classes=adopted.classes, num_threads=None)
    assert row_config("adopted, AdamW lr 2e-3, warm-up 250", "full", root, 0, "out") == \
        cli("--no-c2-passthrough").replace(classes=adopted.classes, num_threads=None)
    # The AdamW rows measured before that keep AdamW's usual rate and the recipe's warm-up.
    assert row_config("adopted, AdamW", "full", root, 0, "out") == \
        cli("--lr", "1e-3", "--warmup-iters", "82", "--no-c2-passthrough").replace(classes=adopted.classes,
                                                                                   num_threads=None)
    assert row_config("default + ATSS", "full", root, 0, "out") == expected.replace(assigner="atss")
    assert row_config("default, AdamW", "full", root, 0, "out") == \
        expected.replace(optimizer="adamw", lr=1e-3, weight_decay=0.05)
    assert set(SEED_BASELINE) <= {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ValueError, match="torchvision"):
        row_config("torchvision FCOS", "screen", root, 0, "out")


def test_every_row_and_budget_is_a_valid_config(held_out):
    for row, spec in ABLATION_ROWS.items():
        if not spec.get("peer"):
            for budget in BUDGETS:
                assert isinstance(row_config(row, budget, held_out["tiles"], 0, "out"), TrainConfig)


def test_peer_is_torchvision_fcos_on_three_levels():
    torch.manual_seed(0)
    peer = build_peer(num_classes=5, image_size=128)
    assert type(peer).__module__.startswith("torchvision.models.detection")
    assert peer.anchor_generator.sizes == ((8,), (16,), (32,))
    peer.train()
    losses = peer([torch.rand(3, 128, 96)], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 90.0]]),
                                            "labels": torch.tensor([2])}])
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())


def _breakdown_by_loop(predictions, ground_truths, top):
    """error_breakdown's rule, one detection at a time: the reference the vectorised one must equal."""
    rows, num_objects = [], 0
    for pred, gt in zip(predictions, ground_truths):
        num_objects += int((~gt["difficult"]).sum())
        taken = set()
        for d in sorted(range(len(pred["scores"])), key=lambda d: -float(pred["scores"][d])):
            ious = [float(torchvision.ops.box_iou(pred["boxes"][d:d + 1], gt["boxes"][g:g + 1])) for g in range(len(gt["boxes"]))]
            same = [iou if int(gt["labels"][g]) == int(pred["labels"][d]) else 0.0 for g, iou in enumerate(ious)]
            best = max(range(len(same)), key=lambda g: (same[g], -g)) if same else None
            if best is not None and same[best] >= 0.5:
                if bool(gt["difficult"][best]):
                    continue
                kind = "duplicate" if best in taken else "correct"
                taken.add(best)
            elif ious and max(ious) >= 0.5:
                kind = "wrong class"
            elif ious and max(ious) >= 0.1:
                kind = "poor box"
            else:
                kind = "background"
            rows.append((float(pred["scores"][d]), kind))
    rows.sort(key=lambda r: -r[0])
    kinds = [kind for _, kind in rows[:num_objects if top is None else top]]
    return {kind: kinds.count(kind) for kind in ERROR_KINDS}


@pytest.mark.parametrize("top", [None, 7, 1000])
def test_error_breakdown_equals_the_one_detection_at_a_time_rule(top):
    g = torch.Generator().manual_seed(3)
    predictions, ground_truths = [], []
    for num_gt, num_det in ((4, 12), (0, 3), (2, 0), (5, 20)):
        xy = torch.rand(num_gt, 2, generator=g) * 60
        gt_boxes = torch.cat([xy, xy + 10 + torch.rand(num_gt, 2, generator=g) * 30], dim=1)
        gt_labels = torch.randint(3, (num_gt,), generator=g)
        # Detections on the objects (jittered copies, mostly of their class) and anywhere, so
        # that every kind occurs.
        which = torch.randint(max(num_gt, 1), (num_det,), generator=g)
        near = gt_boxes[which] if num_gt else torch.zeros(num_det, 4)
        det_boxes = near + torch.randn(num_det, 4, generator=g) * torch.tensor([1.0, 4.0])[
            torch.randint(2, (num_det, 1), generator=g)]
        det_labels = torch.randint(3, (num_det,), generator=g)
        if num_gt:
            det_labels = torch.where(torch.rand(num_det, generator=g) < 0.6, gt_labels[which], det_labels)
        anywhere = torch.rand(num_det, generator=g) < 0.2
        det_boxes[anywhere] = torch.rand(int(anywhere.sum()), 4, generator=g) * 100
        det_boxes[:, 2:] = torch.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        ground_truths.append({"boxes": gt_boxes, "labels": gt_labels, "difficult": torch.rand(num_gt, generator=g) < 0.2})
        predictions.append({"boxes": det_boxes, "scores": torch.rand(num_det, generator=g), "labels": det_labels})
    found = error_breakdown(predictions, ground_truths, top=top)
    assert found == _breakdown_by_loop(predictions, ground_truths, top)
    if top == 1000:  # every detection that counts: all five kinds occur in this data
        assert all(found[kind] > 0 for kind in ERROR_KINDS), found
