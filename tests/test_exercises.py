"""The exercises: exercise notebooks generated from the chapters, and the grader (issue 16).

- exercises/ equals a fresh generation from the chapters' marked blocks (tools/exercises.py), and
  fcos_lib/ carries no marker (the package is the solution; test_course_sync checks the export);
- every exercise has a check cell in its chapter, `with exercise("<name>")`, whose failures name it;
- each chapter (the solution) passes the grader, exercise by exercise; each generated notebook
  (the stubs) fails it, every exercise "not written yet";
- classic mistakes (docs/pitfalls.md), each seeded as a text substitution into a chapter, are
  caught: the grader reports the exercise that holds the mistake as failing;
- the command line, `python tools/grade.py exercises/NN_name.ipynb`.

The grader runs in this process (pytest inside pytest; tools/grade.py puts every module back).
"""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fcos_lib.checks import exercise

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
try:
    import exercises
    import grade
finally:
    sys.path.pop(0)

CHAPTERS = sorted(p.stem for p in exercises.build_all())  # the chapters with exercises

# (chapter, exercise, the mistake, text in the chapter, the same text with the mistake)
MISTAKES = [
    ("01_backbone_fpn", "FPN.forward", "P3: the output p, not the lateral sum m, is sent down",
     "merged = lateral\n            results[p_level] = self.output[p_level](merged)",
     "results[p_level] = self.output[p_level](lateral)\n            merged = results[p_level]"),
    ("01_backbone_fpn", "FPN.forward", "P3: the path runs finest level first (it downsamples)",
     "zip(reversed(self.in_levels), reversed(self.out_levels))", "zip(self.in_levels, self.out_levels)"),
    ("01_backbone_fpn", "FPN.forward", "bilinear instead of nearest upsampling",
     'mode="nearest")', 'mode="bilinear")'),
    ("03_locations", "get_fpn_location_coords", "P6: x and y swapped",
     "torch.stack([grid_x, grid_y], dim=-1)", "torch.stack([grid_y, grid_x], dim=-1)"),
    ("03_locations", "get_fpn_location_coords", "the grid starts at 0, not at half a stride",
     "xs = (torch.arange(W_l, dtype=dtype, device=device) + 0.5) * stride",
     "xs = torch.arange(W_l, dtype=dtype, device=device) * stride"),
    ("03_locations", "get_fpn_location_coords", "meshgrid's xy indexing (the cells column-major)",
     'torch.meshgrid(ys, xs, indexing="ij")', 'torch.meshgrid(ys, xs, indexing="xy")'),
    ("04_matching", "_match_indices", "inclusive scale bounds instead of strict",
     "(max_ltrb > lower.view(1, L, 1)) & (max_ltrb < upper.view(1, L, 1))",
     "(max_ltrb >= lower.view(1, L, 1)) & (max_ltrb <= upper.view(1, L, 1))"),
    ("04_matching", "_match_indices", "a location on a box's edge counts as inside",
     "torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) > 0",
     "torch.minimum(torch.minimum(l, t), torch.minimum(r, b)) >= 0"),
    ("04_matching", "_match_indices", "centre sampling radius in pixels, not strides",
     "radius = center_sampling_radius * strides.view(1, L, 1)", "radius = center_sampling_radius"),
    ("04_matching", "_match_indices", "ties of equal areas go to the last box",
     "min_area, matched_idx = areas.min(dim=-1)",
     "min_area, matched_idx = areas.flip(-1).min(dim=-1)\n    matched_idx = areas.shape[-1] - 1 - matched_idx"),
    ("04_matching", "scale_ranges_per_fpn_level", "the first level starts at 4 strides, not 0",
     "lower = 0.0 if i == 0 else 4.0 * stride", "lower = 4.0 * stride"),
    ("05_deltas", "fcos_get_deltas_from_locations", "deltas in pixels, not divided by the stride",
     "gt_boxes[..., 3] - y], dim=-1) / stride", "gt_boxes[..., 3] - y], dim=-1)"),
    ("05_deltas", "fcos_get_deltas_from_locations", "x and y swapped",
     "[x - gt_boxes[..., 0], y - gt_boxes[..., 1],\n                          gt_boxes[..., 2] - x, gt_boxes[..., 3] - y]",
     "[y - gt_boxes[..., 1], x - gt_boxes[..., 0],\n                          gt_boxes[..., 3] - y, gt_boxes[..., 2] - x]"),
    ("05_deltas", "fcos_apply_deltas_to_locations", "P7: predicted deltas decoded without the clamp at 0",
     "distances = deltas.clamp(min=0) * _stride_column", "distances = deltas * _stride_column"),
    ("06_centerness", "fcos_make_centerness_targets", "no square root",
     "centerness = torch.sqrt(_side_ratio(d[..., 0], d[..., 2]) * _side_ratio(d[..., 1], d[..., 3]))",
     "centerness = _side_ratio(d[..., 0], d[..., 2]) * _side_ratio(d[..., 1], d[..., 3])"),
    ("06_centerness", "fcos_make_centerness_targets", "negative deltas not clamped (NaN outside a box)",
     "d = deltas.clamp(min=0)", "d = deltas"),
    ("06_centerness", "_side_ratio", "0 / 0 left as NaN",
     "return torch.where(positive, low / torch.where(positive, high, torch.ones_like(high)), torch.zeros_like(high))",
     "return low / high"),
    ("07_losses", "sigmoid_focal_loss", "alpha weights the negatives instead of the positives",
     "loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss",
     "loss = ((1 - alpha) * targets + alpha * (1 - targets)) * loss"),
    ("07_losses", "sigmoid_focal_loss", "-log(p_t) from the probabilities (infinite for large logits)",
     'ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")',
     "ce = -torch.log(p * targets + (1 - p) * (1 - targets))"),
    ("07_losses", "fcos_loss", "P10: per-image instead of per-batch normalisation",
     "num_foreground = foreground.sum().clamp(min=1).to(torch.float32)",
     "num_foreground = foreground.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)"),
    ("07_losses", "fcos_loss", "P5/P7: deltas clamped before the loss (no gradient below 0)",
     "pred_deltas = box_deltas.float()  # (B, L, 4)", "pred_deltas = box_deltas.float().clamp(min=0)  # (B, L, 4)"),
    ("07_losses", "fcos_loss", "no clamp(min=1): a batch without objects divides by 0",
     "num_foreground = foreground.sum().clamp(min=1).to(torch.float32)",
     "num_foreground = foreground.sum().to(torch.float32)"),
    ("08_nms_inference", "nms", "an IoU equal to the threshold suppresses (>= instead of >)",
     "pairwise_iou(boxes[order], boxes[order]) > iou_threshold",
     "pairwise_iou(boxes[order], boxes[order]) >= iou_threshold"),
    ("08_nms_inference", "fcos_postprocess", "P12: an in-place sigmoid on the caller's logits",
     "scores = torch.sigmoid(cls_logits.float())  # (B, L, C)", "scores = cls_logits.float().sigmoid_()  # (B, L, C)"),
    ("08_nms_inference", "fcos_postprocess", "P12: the first image of the batch only",
     "for b in range(B):  # NMS per image", "for b in range(1):  # NMS per image"),
    ("08_nms_inference", "fcos_postprocess", "P13: boxes clipped to the padded input, not to each image",
     "for h, w in image_sizes], dtype=boxes.dtype", "for h, w in [predictions.image_size] * B], dtype=boxes.dtype"),
]


def test_exercise_notebooks_match_a_fresh_generation():
    fresh = exercises.build_all()
    assert sorted(fresh) == sorted((ROOT / "exercises").glob("*.ipynb")), "run `make exercises`"
    for path, text in fresh.items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} differs from its chapter: run `make exercises`"


def test_the_course_covers_the_exercises_of_issue_16():
    assert CHAPTERS == ["01_backbone_fpn", "03_locations", "04_matching", "05_deltas", "06_centerness",
                        "07_losses", "08_nms_inference"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_exercise_notebooks_are_stubs_without_outputs(chapter):
    nb = nbformat.read(ROOT / "exercises" / f"{chapter}.ipynb", as_version=4)
    sources = "\n".join(cell.source for cell in nb.cells)
    for name in exercises.exercise_names(ROOT / "notebooks" / f"{chapter}.py"):
        assert f'raise NotImplementedError("{name}: write this function (see the hint above)")' in sources
    assert "### BEGIN SOLUTION" not in sources and "### HINT" not in sources
    assert all(not cell.outputs and cell.execution_count is None for cell in nb.cells if cell.cell_type == "code")


def test_the_package_carries_no_exercise_marker():
    for module in (ROOT / "fcos_lib").glob("*.py"):
        assert "### BEGIN SOLUTION" not in module.read_text(), f"{module.name}: run `make export`"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_has_a_check_cell_that_names_it(chapter):
    script = (ROOT / "notebooks" / f"{chapter}.py").read_text()
    for name in exercises.exercise_names(ROOT / "notebooks" / f"{chapter}.py"):
        assert f'with exercise("{name}"' in script or f', "{name}")' in script, f"{chapter}: no check cell for {name}"


def test_a_failed_check_says_which_exercise_and_why_in_one_line():
    with pytest.raises(AssertionError, match=r"^exercise _match_indices: not written yet"):
        with exercise("fcos_match_indices"):  # the check calls a function whose stub is deeper down
            raise NotImplementedError("_match_indices: write this function (see the hint above)")
    with pytest.raises(AssertionError, match=r"^exercise nms: the worked example keeps \[0\]$"):
        with exercise("nms"):
            assert False, "the worked example keeps [0]"
    with pytest.raises(AssertionError, match=r"^exercise fcos_loss or sigmoid_focal_loss: RuntimeError: boom$"):
        with exercise("fcos_loss", "sigmoid_focal_loss"):
            raise RuntimeError("boom")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_chapter_passes_its_grading(chapter):
    result = grade.grade(ROOT / "notebooks" / f"{chapter}.py")
    assert result["passed"], grade.report(chapter, result)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_generated_notebook_fails_every_exercise(chapter):
    result = grade.grade(ROOT / "exercises" / f"{chapter}.ipynb", stop_at_first_failure=True)
    assert not result["passed"]
    for name, (status, detail) in result["exercises"].items():
        assert status == "not written yet" and not detail.startswith("0 tests"), f"{name}: {status}, {detail}"


@pytest.mark.parametrize("chapter,name,mistake,correct,wrong", MISTAKES, ids=[m[2] for m in MISTAKES])
def test_a_seeded_mistake_is_caught(tmp_path, chapter, name, mistake, correct, wrong):
    text = (ROOT / "notebooks" / f"{chapter}.py").read_text()
    assert text.count(correct) == 1, f"{chapter}: the text the mistake replaces is no longer there once"
    seeded = tmp_path / f"{chapter}.py"
    seeded.write_text(text.replace(correct, wrong))
    status, detail = grade.grade(seeded, only=[name], stop_at_first_failure=True)["exercises"][name]
    assert status == "FAIL", f"{mistake}: {status}, {detail}"


@pytest.mark.parametrize("loop, seconds", [
    # The kept box never leaves the survivors: the loop never ends, and grows.
    (["survivors = torch.cat([survivors[:1], rest[~overlaps[best, rest]]])"], 2),
    # The learner's loop catches every Exception: the stop is not one.
    (["while True:", "    try:", "        while True:", "            survivors = survivors + 0", "    except Exception:",
      "        pass"], 1),
    # The first stop is lost, as it is when it lands in a finalizer (a __del__ during garbage
    # collection): the alarm rings again a second later.
    (["try:", "    while True:", "        pass", "except BaseException:", "    pass", "while True:", "    pass"], 1),
], ids=["grows", "except-Exception", "first-stop-lost"])
def test_an_endless_loop_fails_its_exercise_and_the_grader_goes_on(tmp_path, loop, seconds):
    # The time limit stops the test, even where the first stop is swallowed.
    text = (ROOT / "notebooks" / "08_nms_inference.py").read_text()
    correct = "        survivors = rest[~overlaps[best, rest]]\n"
    assert text.count(correct) == 1
    seeded = tmp_path / "08_nms_inference.py"
    seeded.write_text(text.replace(correct, "".join(f"        {line}\n" for line in loop)))
    status, detail = grade.grade(seeded, only=["nms"], stop_at_first_failure=True, seconds=seconds)["exercises"]["nms"]
    assert status == "FAIL" and f"stopped after {seconds} s: an endless loop" in detail, detail


def test_at_least_three_mistakes_per_chapter():
    assert all(sum(m[0] == chapter for m in MISTAKES) >= 3 for chapter in CHAPTERS)


def test_grading_puts_fcos_lib_back():
    import fcos_lib.locations
    import fcos_lib.matching
    import fcos_lib.targets

    modules = (fcos_lib.locations, fcos_lib.matching, fcos_lib.targets)
    before = [dict(vars(module)) for module in modules]
    grade.grade(ROOT / "exercises" / "03_locations.ipynb", stop_at_first_failure=True)
    for module, names in zip(modules, before):
        assert vars(module).keys() == names.keys()
        assert all(vars(module)[name] is value for name, value in names.items()), module.__name__


def test_the_grading_command_line():
    done = subprocess.run([sys.executable, "tools/grade.py", "exercises/03_locations.ipynb"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "get_fpn_location_coords" in done.stdout and "not written yet" in done.stdout
    assert "0 of 1 exercises pass" in done.stdout
    done = subprocess.run([sys.executable, "tools/grade.py", "exercises/02_head.ipynb"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "chapter with exercises" in done.stderr
