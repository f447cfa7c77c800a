"""Deployment: export a checkpoint's network to ONNX, and run the ONNX file with onnxruntime and numpy.

Hand-written, like fcos_lib.cli: not generated from a notebook (`make export` leaves it alone).
The CLI's `export` and `detect --onnx` call it.

- export_onnx(checkpoint, out) writes the network alone (backbone + FPN + head, no
  post-processing) with PyTorch's ONNX exporter (torch.onnx.export(..., dynamo=True), which
  needs onnxscript), and stores in the file's metadata_props what running it needs: the class
  names, the input size, the strides, the letterbox padding and the box decoding. See
  ONNX_INPUT, ONNX_OUTPUTS and _export_metadata below.
- OnnxDetector(path) runs such a file: the letterbox, onnxruntime, and the post-processing of
  fcos_lib.inference.fcos_postprocess, in numpy. It never imports torch, and neither does
  anything at this module's top level, so this file also runs on its own, copied beside the
  ONNX file, with numpy, Pillow and onnxruntime alone. (fcos_lib/__init__.py imports torch, so
  `import fcos_lib.deploy` loads torch through the package; the module itself does not.)
- detect_files_onnx is fcos_lib.inference.detect_files with an OnnxDetector: the same
  detections.json and output names; boxes are drawn with PIL, not matplotlib.

How closely the two paths agree (tests/test_deploy.py checks each point):
- letterbox_array gives the uint8 pixels of fcos_lib.transforms.letterbox bit for bit where
  torchvision resizes uint8 images natively (x86 CPUs with AVX2 or AVX-512, aarch64): both run
  the same fixed-point antialiased bilinear filter. Elsewhere torchvision resizes in float32 and
  rounds, which differs by at most 1 grey level on some pixels.
- The network: onnxruntime and PyTorch agree to float rounding (about 1e-6 on a small model's outputs).
- postprocess follows fcos_postprocess step by step, in float32: scores sqrt(sigmoid(cls) *
  sigmoid(ctr)), > score_thresh, the top topk_candidates per level and image, decoding, clipping
  to the image's content, zero-area boxes dropped, class-wise greedy NMS (IoU > nms_thresh
  suppresses), max_detections best first. Equal scores keep their order of appearance (level,
  then location, then class); torch.topk and torch.sort do not specify an order for ties.
  torchvision's batched_nms offsets the boxes of each class by a multiple of the largest
  coordinate when an image has at most 1,000 candidates; the NMS here runs on each class's own
  boxes (torchvision's way above 1,000), so an IoU within float rounding (~1e-6) of nms_thresh
  may be decided differently.

Dimension letters: B images, N locations (levels concatenated p3, p4, p5), N_l locations of one
level, C classes, K detections or candidates, S the square network input. Boxes (x1, y1, x2, y2).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ['ONNX_LAYOUT', 'ONNX_INPUT', 'ONNX_OUTPUTS', 'export_onnx', 'letterbox_array', 'boxes_to_original',
           'fpn_locations', 'postprocess', 'OnnxDetector', 'draw_detections', 'detect_files_onnx']

# The version of what export_onnx writes (input, outputs, metadata); OnnxDetector refuses others.
ONNX_LAYOUT = "1"
ONNX_INPUT = "images"
ONNX_OUTPUTS = ("cls_logits", "box_deltas", "ctr_logits")
# fcos_lib.transforms.PAD_FILL (not imported from there: that module imports torch).
PAD_FILL = (124, 116, 104)
# fcos_lib.inference.fcos_postprocess's defaults.
POSTPROCESS_DEFAULTS = {"score_thresh": 0.05, "nms_thresh": 0.5, "topk_candidates": 1000, "max_detections": 100}
EXPORT_EXTRA = "pip install 'fcos-lib[export]'"


# ------------------------------------------------------------------------------------------ export

def _export_metadata(class_names, image_size: int, strides, box_activation: str, iteration,
                     version: str) -> dict:
    """The metadata_props of an exported file: every value a string (JSON where structured)."""
    return {
        "fcos_lib_version": version,
        "onnx_layout": ONNX_LAYOUT,
        "class_names": json.dumps(list(class_names)),
        "image_size": str(image_size),
        "strides": json.dumps(list(strides)),
        "pad_fill": json.dumps(list(PAD_FILL)),
        "input": (f"{ONNX_INPUT}: uint8 (B, 3, S, S) RGB, S = image_size, B any; each image letterboxed: its "
                  "longest side resized to S (antialiased bilinear, the other side int(S * short / long)), then "
                  "padded at the bottom and right with pad_fill. The graph scales to [0, 1] and applies the "
                  "ImageNet normalisation itself."),
        "outputs": ("cls_logits (B, N, C) float32 class logits; box_deltas (B, N, 4) float32 (l, t, r, b) "
                    "distances in strides, already activated (box_activation); ctr_logits (B, N, 1) float32 "
                    "centerness logits. N = sum over levels of (S / stride)^2, levels in the order of strides, "
                    "each level's locations row-major."),
        "box_activation": box_activation,
        "box_decoding": ("location (x, y) of level cell (row h, column w) = ((w + 0.5) * stride, (h + 0.5) * stride); "
                         "d = max(box_deltas, 0) * stride; box = (x - d_l, y - d_t, x + d_r, y + d_b) in network-input "
                         "pixels, clipped to the image's content (h, w) inside the padding; to the original image: "
                         "x * W / w, y * H / h."),
        "score": "sqrt(sigmoid(cls_logits) * sigmoid(ctr_logits))",
        "postprocess_defaults": json.dumps(POSTPROCESS_DEFAULTS),
        "checkpoint_iteration": str(iteration),
    }


def _network_for_export(model):
    """The network alone as an nn.Module: uint8 (B, 3, S, S) -> (cls_logits, box_deltas, ctr_logits).

    The same operations as FCOS.forward in eval mode up to the concatenation over levels; the
    locations and strides are left out (fixed by S; the metadata describes them).
    """
    import torch

    class Network(torch.nn.Module):
        def __init__(self, fcos):
            super().__init__()
            self.fcos = fcos

        def forward(self, images):
            # As torchvision's to_dtype(..., scale=True), which fcos_lib.transforms.letterbox uses.
            feats = self.fcos.backbone(images.to(torch.float32).mul(1.0 / 255))  # level -> (B, F, S/s, S/s)
            cls_per_level, box_per_level, ctr_per_level = self.fcos.head(feats)  # level -> (B, N_l, C / 4 / 1)
            levels = list(feats)
            return (torch.cat([cls_per_level[level] for level in levels], dim=1),  # (B, N, C)
                    torch.cat([box_per_level[level] for level in levels], dim=1),  # (B, N, 4)
                    torch.cat([ctr_per_level[level] for level in levels], dim=1))  # (B, N, 1)

    return Network(model).eval()


def export_onnx(checkpoint, out, opset: int = 18) -> Path:
    """Write the network of `checkpoint` (a last.pt) to the ONNX file `out`; return its path.

    The file's input is uint8 (B, 3, S, S) letterboxed images with any batch size B and S the
    checkpoint's config image_size; its outputs are the raw predictions (B, N, C), (B, N, 4),
    (B, N, 1) (see ONNX_OUTPUTS and the "outputs" metadata). The weights are the ones
    fcos_lib.checkpoint.model_from_checkpoint loads (the moving average when the run kept one).

    Args:
        checkpoint: path of a checkpoint written by fcos_lib.train.
        out: the ONNX file to write (its folder is created); an existing file is replaced.
        opset: ONNX operator set. The exporter implements 18 and later; an older one is
            converted down by onnx, with a warning.
    Raises:
        CheckpointError for a missing or unreadable checkpoint; ValueError when onnx or onnxscript
        is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  the dynamo exporter's dependency, checked here for a clear error
    except ImportError as err:
        raise ValueError(f"exporting to ONNX needs the packages onnx and onnxscript ({err.name} is not "
                         f"installed); {EXPORT_EXTRA}") from None
    import torch

    from fcos_lib import __version__
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.config import TrainConfig

    model, state = model_from_checkpoint(checkpoint, "cpu")
    cfg = TrainConfig(**state["config"])
    image_size = cfg.image_size
    network = _network_for_export(model)
    example = torch.full((2, 3, image_size, image_size), PAD_FILL[0], dtype=torch.uint8)  # B = 2: B stays symbolic
    with torch.no_grad():
        program = torch.onnx.export(
            network, (example,), dynamo=True, opset_version=opset, input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS), dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = program.model_proto
    metadata = _export_metadata(state["class_names"], image_size, model.strides.values(),
                                cfg.box_activation, state["iteration"], __version__)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]  # the exporter's own
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        proto.metadata_props.add(key=key, value=value)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(proto, tmp)  # the file appears whole or not at all
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------------------------- letterbox

def _resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Antialiased bilinear weights for one axis, in fixed point, as torch's uint8 resize makes them.

    torch (aten UpSampleKernel, _compute_indices_int16_weights_aa; Pillow's Resample.c): a
    triangle filter widened by the scale when shrinking, normalised per output pixel, then
    weights scaled to int by 2^precision, with the largest precision that keeps them in int16.
    Returns:
        first (out_size,) int64 index of each output pixel's first input pixel, weights
        (out_size, T) int64 for T taps (0 past each pixel's own count), and the precision.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(np.ceil(support)) * 2 + 1
    center = scale * (np.arange(out_size) + 0.5)  # (out_size,) float64
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C++ (int64_t) casts truncate
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first  # (out_size,)
    j = np.arange(taps)
    weights = np.maximum(0.0, 1.0 - np.abs((j + first[:, None] - center[:, None] + 0.5) * inv_scale))  # (out_size, T)
    weights[j >= count[:, None]] = 0.0
    total = np.zeros(out_size)
    for t in range(taps):  # summed in torch's order, so the rounding is the same
        total += weights[:, t]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    w_max = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    fixed = np.floor(0.5 + weights * (1 << precision)).astype(np.int64)
    return first, fixed, precision


def _resize_axis(pixels: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """Resize uint8 `pixels` along `axis` to out_size with torch's fixed-point antialiased bilinear filter."""
    in_size = pixels.shape[axis]
    first, weights, precision = _resize_weights(in_size, out_size)
    moved = np.moveaxis(pixels, axis, 0)  # (in_size, ...)
    total = np.full((out_size,) + moved.shape[1:], 1 << (precision - 1), dtype=np.int64)
    extra = (slice(None),) + (None,) * (moved.ndim - 1)
    for t in range(weights.shape[1]):
        index = np.minimum(first + t, in_size - 1)  # taps past the pixel's own count have weight 0
        total += moved[index].astype(np.int64) * weights[:, t][extra]
    resized = np.clip(total >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(resized, 0, axis)


def _resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h, w) with the longest side image_size and the other int(image_size * short / long), as
    torchvision's Resize(size=None, max_size=image_size) computes it."""
    if width <= height:
        return image_size, int(image_size * width / height)
    return int(image_size * height / width), image_size


def letterbox_array(image: Image.Image, image_size: int, pad_fill=PAD_FILL) -> tuple[np.ndarray, dict]:
    """Letterbox one RGB image as fcos_lib.transforms.letterbox does, in uint8.

    Args:
        image: a PIL image in mode RGB.
        image_size: S.
        pad_fill: the padding's RGB.
    Returns:
        (3, S, S) uint8 (letterbox's float image times 255), and a dict with orig_size (H, W) and
        resized_size (h, w).
    Raises:
        ValueError for an image that is not RGB or whose short side would be 0 pixels.
    """
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        got = f"mode {image.mode}" if isinstance(image, Image.Image) else type(image).__name__
        raise ValueError(f"image must be a PIL image in mode RGB; got {got}. Fix: image.convert('RGB')")
    H, W = image.height, image.width
    h, w = _resized_size(H, W, image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image of {W} x {H} pixels is too elongated for a {image_size}-px input "
                         "(its short side would be 0 pixels); crop it first")
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    if w != W:
        pixels = _resize_axis(pixels, w, axis=1)  # horizontal pass first, as torch
    if h != H:
        pixels = _resize_axis(pixels, h, axis=0)
    out = np.empty((3, image_size, image_size), dtype=np.uint8)
    out[:] = np.asarray(pad_fill, dtype=np.uint8)[:, None, None]
    out[:, :h, :w] = pixels.transpose(2, 0, 1)
    return out, {"orig_size": (H, W), "resized_size": (h, w)}


def boxes_to_original(boxes: np.ndarray, meta: dict) -> np.ndarray:
    """(K, 4) float32 boxes in network-input pixels -> the original image's pixels, clipped to it.

    As fcos_lib.transforms.boxes_to_original: x times W / w, y times H / h (in float32), then
    0 <= x <= W, 0 <= y <= H.
    """
    H, W = meta["orig_size"]
    h, w = meta["resized_size"]
    if (h, w) != (H, W):
        boxes = boxes * np.array([W / w, H / h, W / w, H / h], dtype=np.float32)
    limits = np.array([W, H, W, H], dtype=np.float32)
    return np.minimum(np.maximum(boxes, np.float32(0)), limits).astype(np.float32)


# ---------------------------------------------------------------------------------- post-process

def fpn_locations(image_size: int, strides) -> tuple[np.ndarray, np.ndarray, list]:
    """Locations of an S x S input: (N, 2) float32 (x, y), (N,) float32 strides, [N_l per level].

    As fcos_lib.locations.get_fpn_location_coords: ((w + 0.5) * s, (h + 0.5) * s), row-major.
    """
    locations, location_strides, counts = [], [], []
    for stride in strides:
        size = image_size // stride
        centres = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(stride)  # (S/s,)
        ys, xs = np.meshgrid(centres, centres, indexing="ij")  # (S/s, S/s) each, [h, w]
        locations.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        location_strides.append(np.full(size * size, stride, dtype=np.float32))
        counts.append(size * size)
    return np.concatenate(locations), np.concatenate(location_strides), counts


def _check_postprocess_args(score_thresh, nms_thresh, topk_candidates, max_detections) -> None:
    if not 0 <= score_thresh < 1:
        raise ValueError(f"score_thresh must be in [0, 1); got {score_thresh}")
    if not 0 <= nms_thresh <= 1:
        raise ValueError(f"nms_thresh must be in [0, 1]; got {nms_thresh}")
    for name, value in {"topk_candidates": topk_candidates, "max_detections": max_detections}.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 1 / (1 + exp(-x)); exp overflows to inf for x < -88, giving 0 as it should."""
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS as torchvision's CPU kernel: indices kept, best first; IoU > iou_thresh suppresses.

    boxes (K, 4) float32, scores (K,). IoUs in float32, compared with iou_thresh in float64.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)  # (K,)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou.astype(np.float64) > iou_thresh]] = True
    return np.asarray(keep, dtype=np.int64)


def _batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Class-wise NMS: indices kept, by decreasing score (ties: lower index first)."""
    keep = [np.flatnonzero(labels == c)[_nms(boxes[labels == c], scores[labels == c], iou_thresh)]
            for c in np.unique(labels)]
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def postprocess(cls_logits: np.ndarray, box_deltas: np.ndarray, ctr_logits: np.ndarray, image_size: int, strides,
                image_sizes=None, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                topk_candidates: int = 1000, max_detections: int = 100) -> list:
    """fcos_lib.inference.fcos_postprocess in numpy: detections in network-input pixels.

    Args:
        cls_logits (B, N, C), box_deltas (B, N, 4) (activated, in strides), ctr_logits (B, N, 1):
            an exported network's outputs.
        image_size: S; strides: the levels' strides, in the outputs' order.
        image_sizes: list of B (h, w), each image's content inside the padding; None: (S, S).
        score_thresh, nms_thresh, topk_candidates, max_detections: as fcos_postprocess.
    Returns:
        list of B dicts: boxes (K, 4) float32 with 0 <= x1 < x2 <= w, 0 <= y1 < y2 <= h, scores (K,)
        float32, labels (K,) int64, by decreasing score.
    Raises:
        ValueError for an argument out of range, NaN or inf in the outputs, or outputs whose N
        does not fit image_size and strides.
    """
    _check_postprocess_args(score_thresh, nms_thresh, topk_candidates, max_detections)
    for name, array in {"cls_logits": cls_logits, "box_deltas": box_deltas, "ctr_logits": ctr_logits}.items():
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or inf values, but the model's outputs must be finite; "
                             "check the exported model and the input images")
    locations, location_strides, counts = fpn_locations(image_size, strides)
    B, N, C = cls_logits.shape
    if N != len(locations) or box_deltas.shape != (B, N, 4) or ctr_logits.shape != (B, N, 1):
        raise ValueError(f"outputs of shapes {cls_logits.shape}, {box_deltas.shape}, {ctr_logits.shape} do not fit "
                         f"a {image_size}-px input with strides {list(strides)} ({len(locations)} locations)")
    image_sizes = [(image_size, image_size)] * B if image_sizes is None else list(image_sizes)
    if len(image_sizes) != B:
        raise ValueError(f"image_sizes must hold one (h, w) per image: {B} images but {len(image_sizes)} sizes")
    scores = _sigmoid(cls_logits.astype(np.float32))  # (B, N, C)
    scores = np.sqrt(scores * _sigmoid(ctr_logits.astype(np.float32)))  # (B, N, C)
    distances = np.maximum(box_deltas.astype(np.float32), np.float32(0)) * location_strides[:, None]  # (B, N, 4)
    boxes = np.concatenate([locations - distances[..., :2], locations + distances[..., 2:]], axis=-1)  # (B, N, 4)
    return [_postprocess_image(scores[b], boxes[b], counts, image_sizes[b], score_thresh, nms_thresh,
                               topk_candidates, max_detections) for b in range(B)]


def _postprocess_image(scores, boxes, counts, content_size, score_thresh, nms_thresh, topk_candidates,
                       max_detections) -> dict:
    """One image: scores (N, C), boxes (N, 4) decoded -> dict(boxes, scores, labels)."""
    h, w = content_size
    boxes = np.minimum(np.maximum(boxes, np.float32(0)), np.array([w, h, w, h], dtype=np.float32))  # (N, 4)
    C = scores.shape[1]
    picked, start = [], 0
    for count in counts:  # the top candidates of each level, best first
        level = scores[start:start + count].reshape(-1)  # (N_l * C,), index = location * C + class
        above = np.flatnonzero(level > score_thresh)
        above = above[np.argsort(-level[above], kind="stable")[:topk_candidates]]
        picked.append(start * C + above)
        start += count
    flat = np.concatenate(picked)  # (K,) index = location * C + class
    locations, labels = flat // C, flat % C
    top_boxes, top_scores = boxes[locations], scores.reshape(-1)[flat]
    # Boxes wholly in the padding are zero-area once clipped: dropped, as fcos_postprocess does.
    positive = (top_boxes[:, 2] > top_boxes[:, 0]) & (top_boxes[:, 3] > top_boxes[:, 1])
    top_boxes, top_scores, labels = top_boxes[positive], top_scores[positive], labels[positive]
    keep = _batched_nms(top_boxes, top_scores, labels, nms_thresh)[:max_detections]
    return {"boxes": top_boxes[keep].reshape(-1, 4), "scores": top_scores[keep],
            "labels": labels[keep].astype(np.int64)}


# -------------------------------------------------------------------------------------- detector

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"running an ONNX model needs the package onnxruntime, which is not installed; "
                         f"{EXPORT_EXTRA}") from None
    return onnxruntime


def _read_metadata(metadata: dict, path: Path) -> dict:
    """The parsed metadata of an fcos_lib export; ValueError naming the file when it is not one."""
    required = ("fcos_lib_version", "onnx_layout", "class_names", "image_size", "strides", "pad_fill")
    missing = [key for key in required if key not in metadata]
    if missing:
        raise ValueError(f"{str(path)!r} is not an ONNX file exported by fcos_lib (its metadata lacks "
                         f"{', '.join(missing)}); export one with: python -m fcos_lib export --checkpoint last.pt")
    if metadata["onnx_layout"] != ONNX_LAYOUT:
        raise ValueError(f"{str(path)!r} has ONNX layout {metadata['onnx_layout']!r} (fcos_lib "
                         f"{metadata['fcos_lib_version']}), but this fcos_lib reads layout {ONNX_LAYOUT!r}; "
                         "export the checkpoint again with this fcos_lib")
    try:
        parsed = {"class_names": tuple(json.loads(metadata["class_names"])),
                  "image_size": int(metadata["image_size"]),
                  "strides": tuple(int(s) for s in json.loads(metadata["strides"])),
                  "pad_fill": tuple(int(v) for v in json.loads(metadata["pad_fill"]))}
    except (ValueError, TypeError) as err:
        raise ValueError(f"{str(path)!r} has unreadable fcos_lib metadata ({err}); export it again") from None
    return {**metadata, **parsed}


class OnnxDetector:
    """An exported FCOS (export_onnx) run with onnxruntime on the CPU, post-processed in numpy.

    Args:
        path: the ONNX file.
        num_threads: onnxruntime's intra-op threads; None: onnxruntime's default (the cores).
    Attributes (read from the file's metadata, never changed):
        class_names (C names), image_size (S), strides, pad_fill, metadata (every key, as strings
        except the four before).
    Raises:
        FileNotFoundError for a missing file; ValueError when onnxruntime is not installed, or the
        file is not an ONNX model, or not one that export_onnx wrote.
    """

    def __init__(self, path, num_threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist; export one with: "
                                    f"python -m fcos_lib export --checkpoint last.pt --out {path}")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own exception types: a foreign, truncated or broken file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"{str(path)!r} could not be loaded by onnxruntime ({type(err).__name__}: {reason}); "
                             "it is not an ONNX model or it is truncated") from None
        self.metadata = _read_metadata(session.get_modelmeta().custom_metadata_map, path)
        self.path, self.session = path, session
        self.class_names = self.metadata["class_names"]
        self.image_size = self.metadata["image_size"]
        self.strides = self.metadata["strides"]
        self.pad_fill = self.metadata["pad_fill"]

    def letterbox(self, image: Image.Image) -> tuple[np.ndarray, dict]:
        """letterbox_array at this model's input size: (3, S, S) uint8 and dict(orig_size, resized_size)."""
        return letterbox_array(image, self.image_size, self.pad_fill)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The network alone: uint8 (B, 3, S, S) -> cls_logits (B, N, C), box_deltas (B, N, 4), ctr_logits (B, N, 1)."""
        S = self.image_size
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[1:] != (3, S, S) or images.shape[0] < 1:
            got = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"images must be uint8 (B, 3, {S}, {S}) with B >= 1, letterboxed; got {got}")
        outputs = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(images)})
        return tuple(outputs)

    def detect(self, images, score_thresh: float = 0.05, nms_thresh: float = 0.5, topk_candidates: int = 1000,
               max_detections: int = 100) -> list:
        """Detections in RGB PIL images, in one batch: one dict per image, boxes in its own pixels.

        As fcos_lib.inference.detect with the letterbox's targets: boxes (K, 4) float32 clipped to
        each image's content before NMS and mapped to the original image, scores (K,) float32,
        labels (K,) int64 (indices into class_names), by decreasing score.
        """
        if not images:
            return []
        pixels, metas = zip(*(self.letterbox(image) for image in images))
        return self.detect_letterboxed(np.stack(pixels), metas, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                       topk_candidates=topk_candidates, max_detections=max_detections)

    def detect_letterboxed(self, images: np.ndarray, metas, **postprocess_kwargs) -> list:
        """detect for images already letterboxed: uint8 (B, 3, S, S) and their B dicts (orig_size, resized_size).

        postprocess_kwargs: score_thresh, nms_thresh, topk_candidates, max_detections.
        """
        if len(metas) != len(images):
            raise ValueError(f"metas must hold one dict per image: {len(images)} images but {len(metas)} metas")
        cls_logits, box_deltas, ctr_logits = self.predict(images)
        detections = postprocess(cls_logits, box_deltas, ctr_logits, self.image_size, self.strides,
                                 image_sizes=[tuple(meta["resized_size"]) for meta in metas], **postprocess_kwargs)
        for detection, meta in zip(detections, metas):
            detection["boxes"] = boxes_to_original(detection["boxes"], meta)
        return detections


# ------------------------------------------------------------------------------------------ files

# matplotlib's "tab10" colours, the palette of fcos_lib.drawing.draw_boxes.
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def draw_detections(image: Image.Image, boxes, labels, scores, class_names) -> Image.Image:
    """A copy of `image` with the boxes drawn, one tab10 colour per class, "name score" above each.

    boxes (K, 4) in the image's pixels; labels (K,) indices into class_names; scores (K,).
    """
    picture = image.convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(1, round(max(picture.size) / 300))
    for box, label, score in zip(np.asarray(boxes).reshape(-1, 4).tolist(), labels, scores):
        colour = TAB10[int(label) % len(TAB10)]
        draw.rectangle(box, outline=colour, width=width)
        text = f"{class_names[int(label)]} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        y = box[1] - (bottom - top) - 2 if box[1] >= (bottom - top) + 2 else box[1]  # above, or inside at the top
        draw.rectangle((box[0], y, box[0] + right - left + 2, y + bottom - top + 2), fill=colour)
        draw.text((box[0] + 1 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)
    return picture


def detect_files_onnx(detector: OnnxDetector, paths, out, score_thresh: float = 0.3, progress: bool = False,
                      nms_thresh: float = POSTPROCESS_DEFAULTS["nms_thresh"]) -> dict:
    """fcos_lib.inference.detect_files with an OnnxDetector: annotated PNGs and detections.json in `out`.

    The same files, output names, detections.json layout and "failed" list as detect_files (its
    file listing, image reading and naming are reused: fcos_lib.inference.image_files,
    fcos_lib.data.load_image, which import torch; OnnxDetector itself does not). The PNGs are
    drawn with PIL (draw_detections) at the image's own size.
    Returns:
        what detections.json holds, as detect_files.
    """
    from tqdm.auto import tqdm

    from fcos_lib.data import load_image
    from fcos_lib.inference import _unique_output_name, image_files
    from fcos_lib.voc import DatasetError

    out = Path(out)
    files = image_files(paths, exclude=out)  # a missing path stops here, before any work
    out.mkdir(parents=True, exist_ok=True)
    images, failed, taken = [], [], set()
    bar = tqdm(files, desc="detect", unit="image", disable=not progress)
    for path in bar:
        try:
            image = load_image(path)  # DatasetError naming the file when it cannot be read
            pixels, meta = detector.letterbox(image)
        except (DatasetError, OSError, ValueError, Image.DecompressionBombError) as err:
            failed.append({"image": str(path), "error": str(err)})
            bar.set_postfix(failed=len(failed))
            continue
        detection = detector.detect_letterboxed(pixels[None], [meta], score_thresh=score_thresh,
                                                nms_thresh=nms_thresh)[0]
        boxes, scores, labels = detection["boxes"], detection["scores"], detection["labels"]
        output = _unique_output_name(path.stem, taken)
        images.append({
            "image": str(path), "output": output,
            "width": image.width, "height": image.height,
            "detections": [
                {"box": [round(v, 2) for v in b], "score": round(float(s), 4), "label": detector.class_names[int(c)]}
                for b, s, c in zip(boxes.tolist(), scores, labels)
            ],
        })
        draw_detections(image, boxes, labels, scores, detector.class_names).save(out / output)
    results = {"images": images, "failed": failed}
    (out / "detections.json").write_text(json.dumps(results, indent=2))
    return results
