"""bench/nms_sweep.py: its scores at NMS 0.6 are fcos_lib.evaluate's, and a threshold does what it says."""
import pytest
import torch
from torch import nn

from fcos_lib.backbone import FPN_STRIDES
from fcos_lib.data import VOCDataset
from fcos_lib.evaluate import evaluate
from fcos_lib.locations import get_fpn_location_coords
from fcos_lib.model import FCOSPredictions
from fcos_lib.targets import strides_per_location

from bench_scripts import load_bench


@pytest.fixture(scope="module")
def sweep():
    return load_bench("nms_sweep")


class OracleWithDuplicates(nn.Module):
    """Predicts each val image's boxes (in network-input pixels) in the loader's order: every box
    at the location nearest its centre, and a copy shifted right by a third of its width (IoU 0.5
    with it) at the next location, scored lower. Scores fall from image to image, so one image's
    duplicates rank above a later image's true boxes."""

    def __init__(self, dataset: VOCDataset, num_classes: int):
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.num_classes, self.seen = num_classes, 0

    def forward(self, images):
        B, _, H, W = images.shape
        per_level = get_fpn_location_coords({k: (H // s, W // s) for k, s in FPN_STRIDES.items()}, FPN_STRIDES)
        locations = torch.cat(list(per_level.values()))  # (L, 2)
        strides = strides_per_location(per_level, FPN_STRIDES)  # (L,)
        L = locations.shape[0]
        cls = torch.full((B, L, self.num_classes), -12.0)
        deltas = torch.ones(B, L, 4)
        p3 = per_level["p3"].shape[0]
        for b in range(B):
            target = self.targets[self.seen]
            score = 0.95 - 0.1 * self.seen
            for box, label in zip(target["boxes"], target["labels"]):
                shifted = box + torch.tensor([1, 0, 1, 0]) * (box[2] - box[0]) / 3  # IoU 0.5 with box
                centre = (box[:2] + box[2:]) / 2
                k = int(((locations[:p3] - centre) ** 2).sum(1).argmin())  # a p3 location
                for loc, b_xyxy, s in ((k, box, score), (k + 1, shifted, score - 0.05)):
                    x, y = locations[loc]
                    deltas[b, loc] = torch.stack([x - b_xyxy[0], y - b_xyxy[1], b_xyxy[2] - x, b_xyxy[3] - y]) / 8
                    cls[b, loc, label] = torch.logit(torch.tensor(s))
            self.seen += 1
        ctr = torch.full((B, L, 1), 20.0)  # centerness 1: the score is the class probability's square root
        return FCOSPredictions(cls, deltas, ctr, locations, strides, [v.shape[0] for v in per_level.values()], (H, W))


def test_sweep_at_0_6_is_evaluate_and_a_lower_threshold_removes_the_duplicates(sweep, tiny_data):
    val = VOCDataset(tiny_data, "val", image_size=128)
    C = len(val.class_names)
    by_threshold = sweep.metrics_by_threshold(OracleWithDuplicates(val, C), val)
    assert set(by_threshold) == set(sweep.THRESHOLDS)
    for t in (0.6, 0.3):  # the paper's threshold, as every ablation row was scored, and another
        reference = evaluate(OracleWithDuplicates(val, C), val, nms_thresh=t)
        assert by_threshold[t] == {k: round(reference[k], 4) for k in sweep.KEYS}
    # IoU 0.5: NMS at 0.3 and 0.4 removes each duplicate, at 0.6 and 0.7 keeps it as a false positive.
    assert by_threshold[0.4]["map50"] == by_threshold[0.3]["map50"] == 1.0
    assert by_threshold[0.6]["map50"] == by_threshold[0.7]["map50"] < 1.0


def test_markdown_table_groups_seeds_and_names_the_main_job(sweep):
    def entry(v):
        return {str(t): {"map50": v + t / 10, "voc07_map50": v, "map": v / 2} for t in sweep.THRESHOLDS}
    runs = {"r | signs | seed 0 | full": entry(0.2), "r | signs | seed 1 | full": entry(0.4),
            "r | main job | seed 0": entry(0.6)}
    table = sweep.markdown_table(runs).splitlines()
    assert table[2].startswith("| r | main job | 1 | 0.630 (0.630-0.630) | 0.640")
    assert table[3].startswith("| r | signs | 2 | 0.330 (0.230-0.430) | 0.340 (0.240-0.440)")
