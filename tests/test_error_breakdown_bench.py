"""bench/error_breakdown.py: its mAP is fcos_lib.evaluate's, its kinds count the best detections, and a
missing run is named with the command that trains it."""
import subprocess
import sys

from bench_scripts import BENCH, load_bench

from fcos_lib.checkpoint import model_from_checkpoint
from fcos_lib.data import VOCDataset
from fcos_lib.evaluate import collect_detections, evaluate
from fcos_lib.experiments import ERROR_KINDS


def test_a_checkpoints_breakdown_counts_one_detection_per_object_and_keeps_evaluates_map(trained, tiny_data):
    entry = load_bench("error_breakdown").breakdown_of_checkpoint(trained / "last.pt", tiny_data, nms_thresh=0.6)
    model, state = model_from_checkpoint(trained / "last.pt")
    val = VOCDataset(tiny_data, "val", class_names=list(state["class_names"]), image_size=state["config"]["image_size"])
    assert entry["map50"] == round(evaluate(model, val, nms_thresh=0.6)["map50"], 4)
    objects = sum(int((~val[i][1]["difficult"]).sum()) for i in range(len(val)))
    predictions, _ = collect_detections(model, val, nms_thresh=0.6)
    detections = sum(len(p["scores"]) for p in predictions)
    # As many as there are objects, unless the model kept fewer detections than that (those on a
    # difficult object do not count).
    assert 0 <= entry["top"] <= min(objects, detections) and (entry["top"] > 0 or detections == 0)
    assert sum(entry[kind] for kind in ERROR_KINDS) == entry["top"]


def test_a_row_without_a_checkpoint_is_named_with_the_command_that_trains_it(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "error_breakdown.py"), "--rows", "course default",
                             "--datasets", "signs", "--seeds", "7", "--results", str(tmp_path / "r.json")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "no scored checkpoint for 'course default | signs | seed 7 | full'" in result.stderr
    assert "Fix: train it with .venv/bin/python bench/ablations.py --budget full --datasets signs" in result.stderr


def test_an_unknown_row_is_refused():
    result = subprocess.run([sys.executable, str(BENCH / "error_breakdown.py"), "--rows", "no such row"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "not fcos_lib ablation rows: ['no such row']" in result.stderr
