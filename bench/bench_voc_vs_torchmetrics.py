"""Measure VOC AP (fcos_lib.evaluate) against torchmetrics' COCO-style AP@0.5, and split the gap into
  interpolation: VOC matching, exact area vs 101 recall points;
  matching:      VOC matching vs COCO matching (fallback, crowd rules, 100 dets/image), both 101-point.
A plain-loop COCO matcher (pycocotools' evaluateImg rules) checks that these two explain all of it.
Run: .venv/bin/python bench/bench_voc_vs_torchmetrics.py (about a minute on 2 cores). Chapter 09
quotes its table. The synthetic detections come from tests/test_evaluate.py's make_dataset.
"""
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

from fcos_lib.evaluate import voc_match, voc_mean_ap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_evaluate import make_dataset, torchmetrics_map50  # noqa: E402

RECALL_POINTS = torch.linspace(0, 1, 101, dtype=torch.float64)


def ap_101(recall, precision):
    """COCO: mean over r in {0, .01, ..., 1} of the envelope at the first point with recall >= r."""
    if recall.numel() == 0:
        return 0.0
    env = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    idx = torch.searchsorted(recall.contiguous(), RECALL_POINTS, side="left")
    q = torch.where(idx < len(env), env[idx.clamp(max=len(env) - 1)], torch.zeros(()))
    return float(q.mean())


def voc_101(preds, gts, c):
    """VOC matching, COCO 101-point interpolation."""
    cat = lambda items, k, m: torch.cat([it[k][it["labels"] == c] for it in items]) if m else None  # noqa
    det_img = torch.cat([torch.full((int((p["labels"] == c).sum()),), i) for i, p in enumerate(preds)])
    gt_img = torch.cat([torch.full((int((t["labels"] == c).sum()),), i) for i, t in enumerate(gts)])
    m = voc_match(cat(preds, "boxes", 1), cat(preds, "scores", 1), det_img,
                  cat(gts, "boxes", 1), gt_img, cat(gts, "difficult", 1))
    if m.npos == 0:
        return None
    ctp, cfp = m.tp.double().cumsum(0), m.fp.double().cumsum(0)
    keep = m.tp | m.fp  # COCO drops ignored detections from the curve
    return ap_101((ctp / m.npos)[keep], (ctp / (ctp + cfp).clamp(min=1))[keep])


def coco_101(preds, gts, c, max_dets=100, crowd_plain_iou=False):
    """pycocotools' rules in a plain loop: fallback to unmatched gts, crowd = difficult.

    crowd_plain_iou=True measures crowd overlap with IoU instead of intersection / detection area,
    to see how much of the gap that rule alone makes."""
    records, npos = [], 0
    for p, t in zip(preds, gts):
        d = p["labels"] == c
        boxes, scores = p["boxes"][d].double(), p["scores"][d].double()
        order = torch.argsort(scores, descending=True, stable=True)[:max_dets]
        boxes, scores = boxes[order], scores[order]
        g = t["labels"] == c
        gboxes, crowd = t["boxes"][g].double(), t["difficult"][g]
        gorder = torch.argsort(crowd.long(), stable=True)  # normal gts first, crowd last
        gboxes, crowd = gboxes[gorder], crowd[gorder].tolist()
        npos += crowd.count(False)
        iou = box_iou(boxes, gboxes)  # (D, G)
        inter_over_det = _inter(boxes, gboxes) / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
        taken = [False] * len(crowd)
        for k in range(len(boxes)):
            best, m = 0.5, -1
            for j in range(len(crowd)):
                if taken[j] and not crowd[j]:
                    continue
                if m > -1 and not crowd[m] and crowd[j]:
                    break
                ov = float(inter_over_det[k, j] if crowd[j] and not crowd_plain_iou else iou[k, j])
                if ov < best:
                    continue
                best, m = ov, j
            if m == -1:
                records.append((float(scores[k]), 0))  # FP
            elif crowd[m]:
                continue  # ignored
            else:
                taken[m] = True
                records.append((float(scores[k]), 1))  # TP
    if npos == 0:
        return None
    records.sort(key=lambda r: -r[0])
    tp = torch.tensor([r[1] for r in records], dtype=torch.float64)
    ctp, cfp = tp.cumsum(0), (1 - tp).cumsum(0)
    return ap_101(ctp / npos, ctp / (ctp + cfp).clamp(min=1))


def _inter(a, b):
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values)


def main():
    C = 4
    scenarios = {
        "disjoint gts, no difficult, no duplicates": dict(difficult_rate=0.0, duplicate_rate=0.0, disjoint=True),
        "overlapping gts, no difficult, 30% duplicates": dict(difficult_rate=0.0),
        "overlapping gts, 20% difficult, 30% duplicates": dict(difficult_rate=0.2),
        "crowded: up to 15 gts/image, 20% difficult": dict(difficult_rate=0.2, max_gts=15),
        "better detector (jitter 0.3), 20% difficult": dict(difficult_rate=0.2, jitter=0.3),
        "better detector (jitter 0.3), no difficult": dict(difficult_rate=0.0, jitter=0.3),
    }
    print("| scenario | seed | VOC all-point | VOC 11-point | VOC match + 101-pt | loop COCO, crowd by plain IoU | loop COCO (101-pt) | torchmetrics | torchmetrics - VOC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, kw in scenarios.items():
        for seed in range(3):
            preds, gts = make_dataset(100 + seed, num_images=200, num_classes=C, **kw)
            voc = voc_mean_ap(preds, gts, C)["map"]
            voc07 = voc_mean_ap(preds, gts, C, use_07_metric=True)["map"]
            v101 = mean([voc_101(preds, gts, c) for c in range(C)])
            loop_coco = mean([coco_101(preds, gts, c) for c in range(C)])
            plain = mean([coco_101(preds, gts, c, crowd_plain_iou=True) for c in range(C)])
            tm, _ = torchmetrics_map50(preds, gts)
            print(f"| {name} | {seed} | {voc:.4f} | {voc07:.4f} | {v101:.4f} | {plain:.4f} | {loop_coco:.4f} | {tm:.4f} | {tm - voc:+.4f} |")


if __name__ == "__main__":
    main()
