"""fcos_lib.deploy: the ONNX export and its numpy runtime give the PyTorch path's detections.

- The numpy letterbox gives torchvision's pixels, the numpy post-processing fcos_postprocess's
  detections, and the exported network run by onnxruntime the PyTorch model's detections
  (same labels; boxes within 1e-5 of the image's longest side, 0.0032 px on a 320-px image;
  scores within 1e-6), on 4 images in one batch.
- `export` then `detect --onnx` from the command line write what `detect --checkpoint` writes.
- Each bad input stops with exit status 2 and one line.
- OnnxDetector never imports torch.

The model is untrained (a few seconds to build, export takes ~7 s), with the head's predictor
weights spread (std 0.05) so that scores, boxes and NMS vary; 64-px inputs, 3 classes.
"""
import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcos_lib import deploy
from fcos_lib.checkpoint import build_model, model_from_checkpoint, save_checkpoint
from fcos_lib.cli import main
from fcos_lib.config import TrainConfig
from fcos_lib.inference import detect, fcos_postprocess
from fcos_lib.model import FCOSPredictions
from fcos_lib.transforms import PAD_FILL, boxes_to_original, letterbox

CLASSES = ("cross", "ellipse", "rectangle")
S = 64
BOX_TOL = 1e-5  # of the image's longest side, in its own pixels
SCORE_TOL = 1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("run") / "last.pt")


def untrained_checkpoint(path: Path, **changes) -> Path:
    """An untrained 3-class model at S px with its head's predictor weights spread, saved at `path`."""
    cfg = TrainConfig(image_size=S, fpn_channels=16, num_convs=1, **changes)
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES), load_pretrained_weights=False)
    with torch.no_grad():  # an untrained head scores every pair ~0.07 with 2-stride boxes: spread them
        for conv in (model.head.cls_logits, model.head.box_deltas, model.head.ctr_logits):
            conv.weight.normal_(0, 0.05)
    save_checkpoint(path, {"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                           "class_names": list(CLASSES), "iteration": 0})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """The checkpoint exported by the command line, as a user would."""
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def images(tiny_data):
    """The course's 3 val images (224-320 px, landscape and portrait) and a small noisy one to enlarge."""
    ids = (tiny_data / "ImageSets" / "Main" / "val.txt").read_text().split()
    photos = [Image.open(tiny_data / "JPEGImages" / f"{i}.jpg").convert("RGB") for i in ids]
    noise = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    return photos + [Image.fromarray(noise)]


def torch_uint8(tensor: torch.Tensor) -> np.ndarray:
    """letterbox's float image (3, S, S) in [0, 1] -> its uint8 pixels."""
    return (tensor * 255).round().to(torch.uint8).numpy()


def assert_same_detections(ref: dict, got: dict, longest_side: int) -> None:
    """Same count, and each numpy detection matches a distinct torch one: label equal, box and score close."""
    ref_boxes, ref_scores, ref_labels = (ref[k].numpy() for k in ("boxes", "scores", "labels"))
    assert len(got["scores"]) == len(ref_scores)
    assert got["boxes"].dtype == np.float32 and got["labels"].dtype == np.int64
    assert np.all(np.diff(got["scores"]) <= 0)  # best first
    unused = list(range(len(ref_scores)))
    for box, score, label in zip(got["boxes"], got["scores"], got["labels"]):
        match = next((j for j in unused if ref_labels[j] == label and abs(ref_scores[j] - score) <= SCORE_TOL
                      and np.abs(ref_boxes[j] - box).max() <= BOX_TOL * longest_side), None)
        assert match is not None, (box, score, label)
        unused.remove(match)


# ---------------------------------------------------------------------------- pieces, no onnxruntime

def torchvision_resizes_uint8_natively() -> bool:
    """torchvision's own rule (resize_image): uint8 bilinear stays uint8 on x86 with AVX2 or AVX-512 and on aarch64."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


@pytest.mark.parametrize("height, width", [(240, 320), (320, 224), (50, 90), (64, 64), (64, 200), (7, 5), (1, 1)])
def test_letterbox_array_gives_torchvisions_pixels(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    smooth = np.cumsum(rng.integers(-4, 5, (height, width, 3)), axis=1) + rng.integers(0, 256, (height, 1, 3))
    for pixels in (rng.integers(0, 256, (height, width, 3)), smooth):  # noise and gradients
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        tensor, meta = letterbox(image, S)
        array, meta_np = deploy.letterbox_array(image, S)
        assert meta_np == meta and array.dtype == np.uint8 and array.shape == (3, S, S)
        difference = np.abs(array.astype(int) - torch_uint8(tensor)).max()
        assert difference == 0 if torchvision_resizes_uint8_natively() else difference <= 1


def test_letterbox_array_refuses_what_letterbox_refuses():
    assert deploy.PAD_FILL == PAD_FILL
    with pytest.raises(ValueError, match="mode RGB"):
        deploy.letterbox_array(Image.new("L", (10, 10)), S)
    with pytest.raises(ValueError, match="too elongated"):
        deploy.letterbox_array(Image.new("RGB", (700, 3)), 224)


def test_boxes_to_original_and_locations_match_torch():
    boxes = np.array([[0, 0, 64, 42], [3.3, 7.7, 30.1, 41.9]], dtype=np.float32)
    meta = {"orig_size": (100, 150), "resized_size": (42, 64)}
    expected = boxes_to_original(torch.from_numpy(boxes), meta).numpy()
    assert np.array_equal(deploy.boxes_to_original(boxes, meta), expected)
    model = build_model(TrainConfig(image_size=S, fpn_channels=8, num_convs=0), 2, load_pretrained_weights=False).eval()
    with torch.no_grad():
        predictions = model(torch.zeros(1, 3, S, S))
    locations, strides, counts = deploy.fpn_locations(S, list(model.strides.values()))
    assert np.array_equal(locations, predictions.locations.numpy())
    assert np.array_equal(strides, predictions.strides.numpy()) and counts == predictions.num_locations_per_level


def random_predictions(seed: int, B: int = 3, C: int = 4) -> FCOSPredictions:
    """FCOSPredictions for a 64-px input with logits spread so that a few hundred pairs pass 0.05."""
    g = torch.Generator().manual_seed(seed)
    locations, strides, counts = deploy.fpn_locations(S, (8, 16, 32))
    N = len(locations)
    return FCOSPredictions(torch.randn(B, N, C, generator=g) * 1.5 - 4, torch.rand(B, N, 4, generator=g) * 3,
                           torch.randn(B, N, 1, generator=g), torch.from_numpy(locations), torch.from_numpy(strides),
                           counts, (S, S))


@pytest.mark.parametrize("kwargs", [
    {},  # the defaults: hits max_detections
    {"score_thresh": 0.2, "nms_thresh": 0.3},
    {"topk_candidates": 7, "max_detections": 5},  # the per-level top-k cut, then max_detections
    {"image_sizes": [(64, 40), (30, 64), (64, 64)], "score_thresh": 0.1},  # clipping, padding boxes dropped
])
def test_postprocess_gives_fcos_postprocess_detections(kwargs):
    for seed in range(3):
        predictions = random_predictions(seed)
        ref = fcos_postprocess(predictions, **kwargs)
        got = deploy.postprocess(predictions.cls_logits.numpy(), predictions.box_deltas.numpy(),
                                 predictions.ctr_logits.numpy(), S, (8, 16, 32), **kwargs)
        for r, g in zip(ref, got):
            assert_same_detections(r, g, S)


def test_postprocess_refuses_bad_arguments():
    p = random_predictions(0)
    outputs = (p.cls_logits.numpy(), p.box_deltas.numpy(), p.ctr_logits.numpy())
    for kwargs, says in [({"score_thresh": 1.0}, "score_thresh"), ({"topk_candidates": 0}, "topk_candidates"),
                         ({"image_sizes": [(64, 64)]}, "image_sizes")]:
        with pytest.raises(ValueError, match=says):
            deploy.postprocess(*outputs, S, (8, 16, 32), **kwargs)
    with pytest.raises(ValueError, match="do not fit"):
        deploy.postprocess(*outputs, 96, (8, 16, 32))
    cls_logits = outputs[0].copy()
    cls_logits[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="cls_logits holds NaN"):
        deploy.postprocess(cls_logits, *outputs[1:], S, (8, 16, 32))


# ------------------------------------------------------------------------------ the exported model

def test_onnx_file_describes_itself(exported):
    import onnx

    model = onnx.load(exported)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["class_names"]) == list(CLASSES)
    assert metadata["image_size"] == str(S) and json.loads(metadata["strides"]) == [8, 16, 32]
    assert json.loads(metadata["pad_fill"]) == list(PAD_FILL) and metadata["box_activation"] == "exp"
    assert metadata["fcos_lib_version"] and metadata["onnx_layout"] == deploy.ONNX_LAYOUT
    for key in ("input", "outputs", "box_decoding", "score", "postprocess_defaults"):
        assert metadata[key]
    (images,) = model.graph.input
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    batch, *rest = images.type.tensor_type.shape.dim
    assert batch.dim_param and [d.dim_value for d in rest] == [3, S, S]  # B symbolic, S fixed
    assert [o.name for o in model.graph.output] == list(deploy.ONNX_OUTPUTS)


@pytest.mark.parametrize("score_thresh", [0.05, 0.1])  # 0.05: 100 detections per image (max_detections)
def test_onnx_detections_equal_pytorch_detections(exported, checkpoint, images, score_thresh):
    model, _ = model_from_checkpoint(checkpoint)
    tensors, metas = zip(*(letterbox(image, S) for image in images))
    ref = detect(model, torch.stack(tensors), list(metas), score_thresh=score_thresh)
    detector = deploy.OnnxDetector(exported, num_threads=1)
    assert detector.class_names == CLASSES and detector.image_size == S and detector.strides == (8, 16, 32)
    # The same letterboxed pixels into both, in one batch of 4 (the batch dimension is dynamic).
    got = detector.detect_letterboxed(np.stack([torch_uint8(t) for t in tensors]), metas, score_thresh=score_thresh)
    assert len(got) == len(images) and sum(len(d["scores"]) for d in got) > 0
    for r, g, image in zip(ref, got, images):
        assert_same_detections(r, g, max(image.size))
    if torchvision_resizes_uint8_natively():  # then the numpy letterbox is exact too: detect() gives the same
        for g, d in zip(got, detector.detect(images, score_thresh=score_thresh)):
            assert all(np.array_equal(g[k], d[k]) for k in g)


def test_a_c2_passthrough_model_exports_with_the_same_detections(images, tmp_path):
    # The command's default from scratch for 550-10,000 iterations: pixel_unshuffle in the graph.
    checkpoint = untrained_checkpoint(tmp_path / "last.pt", c2_passthrough=True)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model.onnx")]) == 0
    model, state = model_from_checkpoint(checkpoint)
    assert state["config"]["c2_passthrough"] is True
    tensors, metas = zip(*(letterbox(image, S) for image in images))
    ref = detect(model, torch.stack(tensors), list(metas), score_thresh=0.05)
    detector = deploy.OnnxDetector(tmp_path / "model.onnx", num_threads=1)
    got = detector.detect_letterboxed(np.stack([torch_uint8(t) for t in tensors]), metas, score_thresh=0.05)
    assert sum(len(d["scores"]) for d in got) > 0
    for r, g, image in zip(ref, got, images):
        assert_same_detections(r, g, max(image.size))


def test_onnx_runs_a_batch_of_one(exported, images):
    detector = deploy.OnnxDetector(exported, num_threads=1)
    cls_logits, box_deltas, ctr_logits = detector.predict(detector.letterbox(images[0])[0][None])
    N = sum((S // s) ** 2 for s in (8, 16, 32))
    assert cls_logits.shape == (1, N, 3) and box_deltas.shape == (1, N, 4) and ctr_logits.shape == (1, N, 1)
    assert detector.detect([]) == []


# ---------------------------------------------------------------------------------- command line

@pytest.mark.parametrize("nms_flag", [[], ["--nms-thresh", "0.3"]], ids=["default NMS", "NMS 0.3"])
def test_cli_export_then_detect_onnx_writes_what_detect_checkpoint_writes(exported, checkpoint, images, tmp_path,
                                                                          nms_flag):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, image in enumerate(images[:2]):
        image.save(folder / f"photo{k}.png")
    assert main(["detect", "--onnx", str(exported), str(folder), "--out", str(tmp_path / "onnx"),
                 "--score-thresh", "0.1", "--classes", ",".join(CLASSES), *nms_flag]) == 0
    assert main(["detect", "--checkpoint", str(checkpoint), str(folder), "--out", str(tmp_path / "torch"),
                 "--score-thresh", "0.1", "--device", "cpu", *nms_flag]) == 0
    onnx_json = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    torch_json = json.loads((tmp_path / "torch" / "detections.json").read_text())
    assert onnx_json["failed"] == [] and len(onnx_json["images"]) == 2
    for o, t in zip(onnx_json["images"], torch_json["images"]):
        keys = ("image", "output", "width", "height")
        assert {k: o[k] for k in keys} == {k: t[k] for k in keys}
        assert (tmp_path / "onnx" / o["output"]).is_file()
        assert Image.open(tmp_path / "onnx" / o["output"]).size == (o["width"], o["height"])
        assert len(o["detections"]) == len(t["detections"]) > 0
        # Rounded to 0.01 px and 1e-4 in the JSON: a last-digit difference is allowed.
        for a, b in zip(sorted(o["detections"], key=lambda d: (d["label"], d["box"])),
                        sorted(t["detections"], key=lambda d: (d["label"], d["box"]))):
            assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1.01e-4
            assert np.abs(np.subtract(a["box"], b["box"])).max() <= 0.0101


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_stop_with_one_line(exported, checkpoint, images, tmp_path, capsys, monkeypatch):
    photo = tmp_path / "photo.png"
    images[0].save(photo)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    foreign = tmp_path / "foreign.onnx"
    _write_foreign_onnx(foreign)
    out = ["--out", str(tmp_path / "out")]
    cases = {
        "checkpoint": (["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")],
                       "does not exist; train first"),
        "missing onnx": (["detect", "--onnx", str(tmp_path / "none.onnx"), str(photo), *out],
                         "does not exist; export one with: python -m fcos_lib export"),
        "garbage": (["detect", "--onnx", str(garbage), str(photo), *out], "could not be loaded by onnxruntime"),
        "foreign": (["detect", "--onnx", str(foreign), str(photo), *out], "is not an ONNX file exported by fcos_lib"),
        "classes": (["detect", "--onnx", str(exported), str(photo), "--classes", "cat,dog", *out],
                    "detects the classes cross,ellipse,rectangle, not --classes cat,dog"),
        "classes (checkpoint)": (["detect", "--checkpoint", str(checkpoint), str(photo), "--classes", "cat", *out],
                                 "detects the classes cross,ellipse,rectangle, not --classes cat"),
        "device": (["detect", "--onnx", str(exported), str(photo), "--device", "cuda", *out],
                   "--device cuda cannot run --onnx"),
    }
    for name, (argv, says) in cases.items():
        assert says in one_line_error(capsys, argv), name
    assert not (tmp_path / "out" / "detections.json").exists() and not (tmp_path / "m.onnx").exists()

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    err = one_line_error(capsys, ["detect", "--onnx", str(exported), str(photo), *out])
    assert "needs the package onnxruntime" in err and "pip install 'fcos-lib[export]'" in err
    monkeypatch.setitem(sys.modules, "onnx", None)
    err = one_line_error(capsys, ["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert "needs the packages onnx and onnxscript (onnx is not installed)" in err and "fcos-lib[export]" in err


def _write_foreign_onnx(path: Path) -> None:
    """A valid ONNX model (Identity on a (1, 3, 64, 64) float) with no fcos_lib metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, S, S])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, S, S])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "foreign", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_detect_needs_exactly_one_model(exported, checkpoint, tmp_path, capsys):
    for argv in (["detect", "x.png"], ["detect", "--onnx", str(exported), "--checkpoint", str(checkpoint), "x.png"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
        assert "--checkpoint" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- no torch

def test_onnx_detector_never_imports_torch(exported, images, tmp_path):
    # deploy.py loaded as a file of its own (fcos_lib/__init__.py would import torch), as a user who
    # copies it beside the ONNX file runs it without torch installed.
    photo = tmp_path / "photo.png"
    images[0].save(photo)
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("deploy", {str(Path(deploy.__file__))!r})
deploy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deploy)
from PIL import Image
detector = deploy.OnnxDetector({str(exported)!r}, num_threads=1)
found = detector.detect([Image.open({str(photo)!r}).convert("RGB")], score_thresh=0.05)
assert len(found[0]["scores"]) > 0
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "fcos_lib")))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_numpy_postprocess_defaults_are_fcos_postprocess_defaults():
    """deploy keeps its own copy of the post-processing defaults (it never imports torch): they must
    be fcos_postprocess's, or an exported model would detect differently from the checkpoint."""
    import inspect

    def defaults(fn):
        return {name: p.default for name, p in inspect.signature(fn).parameters.items() if name in deploy.POSTPROCESS_DEFAULTS}

    assert defaults(fcos_postprocess) == deploy.POSTPROCESS_DEFAULTS
    assert defaults(deploy.postprocess) == deploy.POSTPROCESS_DEFAULTS
    assert defaults(deploy.OnnxDetector.detect) == deploy.POSTPROCESS_DEFAULTS
