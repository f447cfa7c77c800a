"""`python -m fcos_lib train|evaluate|detect`: the README's main job and its bad inputs.

Bad input must give one line on stderr and exit status 2, never a traceback.
"""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fcos_lib.cli import build_parser, config_from_args, main
from fcos_lib.config import baseline_recipe, improved_recipe
from fcos_lib.inference import NMS_THRESH

TINY = ["--image-size", "64", "--batch-size", "2", "--iters", "3", "--device", "cpu"]
# tiny_data and trained: tests/conftest.py


def copy_data(src, dst):
    shutil.copytree(src, dst)
    return dst


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_train_writes_the_run_folder(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"last.pt", "metrics.json", "loss_curve.png", "detections.png"} <= names
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["iters"] == 3 and 0 <= metrics["map50"] <= 1 and 0 <= metrics["map"] <= 1
    assert set(metrics["per_class_ap50"]) == {"cross", "ellipse", "rectangle", "star", "triangle"}
    assert metrics["train_images_per_s"] > 0


def test_the_first_line_names_the_optimiser_its_rate_and_warm_up(tiny_data, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), *TINY,
                 "--optimizer", "adamw", "--warmup-iters", "2"]) == 0
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("training on"))
    assert "for 3 iterations (AdamW, lr 0.002, warm-up 2)" in first, first


def test_evaluate_agrees_with_the_library(trained, tiny_data, tmp_path, capsys):
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.data import VOCDataset
    from fcos_lib.evaluate import evaluate

    assert main(["evaluate", "--checkpoint", str(trained / "last.pt"), "--data", str(tiny_data),
                 "--split", "val", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "mAP@0.5" in capsys.readouterr().out
    printed = json.loads((tmp_path / "metrics_val.json").read_text())
    model, state = model_from_checkpoint(trained / "last.pt")
    library = evaluate(model, VOCDataset(tiny_data, "val", class_names=state["class_names"], image_size=64))
    assert printed["map50"] == library["map50"] and printed["map"] == library["map"]
    assert printed["per_class_ap50"] == library["per_class_ap50"]
    assert printed["nms_thresh"] == NMS_THRESH


def test_nms_thresh_flag_reaches_evaluate_and_detect(trained, tiny_data, tmp_path, capsys):
    from fcos_lib.checkpoint import model_from_checkpoint
    from fcos_lib.data import VOCDataset
    from fcos_lib.evaluate import evaluate
    from torchvision.ops import box_iou

    assert main(["evaluate", "--checkpoint", str(trained / "last.pt"), "--data", str(tiny_data), "--split", "val",
                 "--device", "cpu", "--out", str(tmp_path), "--nms-thresh", "0.3"]) == 0
    printed = json.loads((tmp_path / "metrics_val.json").read_text())
    model, state = model_from_checkpoint(trained / "last.pt")
    library = evaluate(model, VOCDataset(tiny_data, "val", class_names=state["class_names"], image_size=64),
                       nms_thresh=0.3)
    assert printed["nms_thresh"] == 0.3 and printed["map"] == library["map"]
    # detect: at NMS 0 no two kept boxes of one class overlap; at 1 NMS drops (almost) nothing.
    image = next((tiny_data / "JPEGImages").iterdir())
    found = {}
    for thresh in ("0", "1"):
        out = tmp_path / f"nms{thresh}"
        assert main(["detect", "--checkpoint", str(trained / "last.pt"), str(image), "--out", str(out),
                     "--score-thresh", "0", "--nms-thresh", thresh, "--device", "cpu"]) == 0
        found[thresh] = json.loads((out / "detections.json").read_text())["images"][0]["detections"]
    assert 0 < len(found["0"]) < len(found["1"])
    for label in {d["label"] for d in found["0"]}:
        boxes = torch.tensor([d["box"] for d in found["0"] if d["label"] == label])
        assert (box_iou(boxes, boxes).fill_diagonal_(0) == 0).all()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_bad_thresholds_name_the_flag(capsys, value):
    for argv in (["evaluate", "--checkpoint", "x.pt", "--nms-thresh", value],
                 ["detect", "--checkpoint", "x.pt", "x.png", "--nms-thresh", value],
                 ["detect", "--checkpoint", "x.pt", "x.png", "--score-thresh", value]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert argv[-2] in err and "[0, 1]" in err


def test_detect_writes_boxes_in_original_pixels(trained, tiny_data, tmp_path):
    # The same picture at 1x and 2x letterboxes to (almost) the same network input, so the
    # detections must come back in each file's own pixels: the 2x boxes are 2x the 1x boxes.
    image = Image.open(next((tiny_data / "JPEGImages").iterdir())).convert("RGB")
    image = image.resize((128, 96))
    image.save(tmp_path / "small.png")
    image.resize((256, 192), Image.NEAREST).save(tmp_path / "large.png")
    assert main(["detect", "--checkpoint", str(trained / "last.pt"), str(tmp_path / "small.png"),
                 str(tmp_path / "large.png"), "--out", str(tmp_path / "found"), "--score-thresh", "0.0",
                 "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "found" / "detections.json").read_text())["images"]
    small, large = results
    assert (small["width"], small["height"], large["width"], large["height"]) == (128, 96, 256, 192)
    assert len(small["detections"]) > 0
    for det in small["detections"] + large["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= det_width(results, det) and 0 <= y1 <= y2
    # The best small-image box, doubled, is found among the large image's boxes (IoU > 0.9).
    from torchvision.ops import box_iou

    top_small = torch.tensor([small["detections"][0]["box"]])
    large_boxes = torch.tensor([d["box"] for d in large["detections"]])
    assert box_iou(2 * top_small, large_boxes).max() > 0.9
    assert (tmp_path / "found" / "small_detections.png").is_file()


def det_width(results, det):
    return next(r["width"] for r in results if det in r["detections"])


def test_missing_data_folder(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *TINY])
    assert "nowhere" in err


def test_missing_val_split_names_existing_ones(capsys, tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path / "voc")
    (data / "ImageSets" / "Main" / "val.txt").unlink()
    err = one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert "val" in err and "train" in err


def test_empty_split(capsys, tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path / "voc")
    (data / "ImageSets" / "Main" / "train.txt").write_text("\n")
    err = one_line_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert "split 'train' is empty" in err and "['trainval', 'val']" in err
    # With other problems in the val split as well, all of them come at once, grouped by kind.
    assert main(["train", "--data", str(data), "--classes", "cross,star", "--out", str(tmp_path / "run"), *TINY]) == 2
    report = capsys.readouterr().err.strip().splitlines()
    assert report[0].startswith("error: ") and "problems in" in report[0] and "Traceback" not in "".join(report)
    assert any("x empty split" in line for line in report) and any("x unknown class" in line for line in report)


def test_annotation_missing_on_disk(capsys, tiny_data, tmp_path):
    data = copy_data(tiny_data, tmp_path / "voc")
    first = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    (data / "Annotations" / f"{first}.xml").unlink()
    err = one_line_error(capsys, ["train", "--data", str(data), "--classes", "cross,ellipse,rectangle,star,triangle",
                                  "--out", str(tmp_path / "run"), *TINY])
    assert first in err


def test_unknown_class_in_annotation(capsys, tiny_data, tmp_path):
    # Every file with another class is reported, in one grouped report (a count and the first few).
    assert main(["train", "--data", str(tiny_data), "--classes", "cross", "--out", str(tmp_path / "run"), *TINY]) == 2
    report = capsys.readouterr().err.strip().splitlines()
    assert report[0].startswith("error: ") and "problems in" in report[0] and "Traceback" not in "".join(report)
    assert len(report) == 2 and " x unknown class: " in report[1] and "['cross']" in report[1]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_checkpoint_from_another_class_list(capsys, trained, tiny_data, tmp_path):
    # Evaluate a 5-class checkpoint on data annotated with a sixth class.
    data = copy_data(tiny_data, tmp_path / "voc")
    first = (data / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = data / "Annotations" / f"{first}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra_", 1))
    err = one_line_error(capsys, ["evaluate", "--checkpoint", str(trained / "last.pt"), "--data", str(data), "--device", "cpu"])
    assert "was trained on the classes" in err and f"first: {first}.xml" in err
    assert "--classes" not in err and "class_names" not in err  # no advice a CLI user cannot follow


def test_cuda_without_gpu(capsys, tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                                  "--image-size", "64", "--iters", "1", "--device", "cuda"])
    assert "cuda" in err.lower()


def test_missing_checkpoint_and_image(capsys, trained, tmp_path):
    one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"])
    err = one_line_error(capsys, ["detect", "--checkpoint", str(trained / "last.pt"), str(tmp_path / "none.jpg"), "--device", "cpu"])
    assert "none.jpg" in err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fcos_lib", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout


# ---------------------------------------------------------------- flags -> TrainConfig

def cfg_of(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_no_flags_is_the_main_job():
    cfg = cfg_of()
    expected = improved_recipe(iters=300, warmup_iters=30, in_memory=True, num_workers=0, num_threads="auto")
    assert cfg == expected


@pytest.mark.parametrize("context, flag, field, value", [
    ([], ["--data", "D"], "data", "D"),
    ([], ["--classes", "cat, dog"], "classes", ("cat", "dog")),
    ([], ["--train-split", "trainval"], "train_split", "trainval"),
    ([], ["--val-split", "test"], "val_split", "test"),
    ([], ["--image-size", "320"], "image_size", 320),
    ([], ["--iters", "50"], "iters", 50),
    ([], ["--batch-size", "8"], "batch_size", 8),
    ([], ["--lr", "0.005"], "lr", 0.005),
    ([], ["--pretrained"], "pretrained_backbone", True),
    (["--data", "D"], ["--in-memory"], "in_memory", True),
    ([], ["--workers", "3"], "num_workers", 3),
    ([], ["--device", "cpu"], "device", "cpu"),
    ([], ["--out", "runs/x"], "out", "runs/x"),
    ([], ["--seed", "7"], "seed", 7),
    ([], ["--ema-decay", "0.99"], "ema_decay", 0.99),
    ([], ["--ema-decay", "off"], "ema_decay", None),
    ([], ["--scale-jitter", "0.75", "1.25"], "scale_jitter", (0.75, 1.25)),
    ([], ["--assigner", "atss"], "assigner", "atss"),
    ([], ["--p2"], "with_p2", True),
    ([], ["--c2-passthrough"], "c2_passthrough", True),
    (["--iters", "828"], ["--no-c2-passthrough"], "c2_passthrough", False),
    (["--iters", "828"], ["--p2"], "with_p2", True),
    ([], ["--head-convs", "2"], "num_convs", 2),
    ([], ["--focal-gamma", "1"], "focal_gamma", 1.0),
    ([], ["--threads", "1"], "num_threads", 1),
    ([], ["--cpu-bf16"], "cpu_bf16", True),
    ([], ["--weight-decay", "0.001"], "weight_decay", 0.001),
    ([], ["--optimizer", "adamw"], "optimizer", "adamw"),
    (["--schedule", "step"], ["--steps", "0.9"], "steps", (0.9,)),
    ([], ["--warmup-iters", "250"], "warmup_iters", 250),
    ([], ["--warmup-iters", "0"], "warmup_iters", 0),
])
def test_every_flag_reaches_the_config(context, flag, field, value):
    base, changed = cfg_of(*context), cfg_of(*context, *flag)
    assert getattr(changed, field) == value
    # ... and changes nothing else, besides the defaults the flag implies.
    adamw = {"optimizer", "lr", "weight_decay", "schedule", "decay_norms", "ema_decay"}  # --data: 9000 iterations
    implied = {"data": {"iters", "in_memory", "num_workers", "warmup_iters", *adamw, "c2_passthrough"},
               "iters": {"warmup_iters"}, "with_p2": {"c2_passthrough"},  # p2 takes block1 for itself
               "in_memory": {"num_workers"}, "optimizer": {"lr", "weight_decay", "schedule", "decay_norms", "ema_decay",
                                                          "warmup_iters"},
               "pretrained_backbone": {"schedule", "decay_norms", "ema_decay"}}.get(field, set())
    base, changed = dataclass_dict(base), dataclass_dict(changed)
    assert {k for k in base if base[k] != changed[k]} - implied == {field}


def test_adamw_brings_its_own_lr_and_decay_unless_given():
    sgd = cfg_of()
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay) == ("sgd", 0.01, 1e-4)
    adamw = cfg_of("--optimizer", "adamw")
    assert (adamw.optimizer, adamw.lr, adamw.weight_decay) == ("adamw", 2e-3, 0.05)
    # ... on the recipe's constant rate and EMA (chapter 10's "adopted, AdamW"), without decay on norms.
    assert (adamw.schedule, adamw.decay_norms, adamw.ema_decay) == ("constant", False, 0.999)
    # ... warmed up over 250 iterations (chapter 10's "AdamW's learning rate"), at most a third of the run,
    # where SGD takes a tenth, at most 500; a warm-up given is kept.
    assert [cfg_of("--optimizer", "adamw", "--iters", str(n)).warmup_iters for n in (300, 828, 9000)] == [100, 250, 250]
    assert [cfg_of("--optimizer", "sgd", "--iters", str(n)).warmup_iters for n in (300, 828, 9000)] == [30, 82, 500]
    assert cfg_of("--optimizer", "adamw", "--iters", "828", "--warmup-iters", "82").warmup_iters == 82
    assert cfg_of("--optimizer", "adamw", "--schedule", "cosine").schedule == "cosine"
    given = cfg_of("--optimizer", "adamw", "--lr", "3e-4", "--weight-decay", "0.01")
    assert (given.lr, given.weight_decay) == (3e-4, 0.01)


def test_the_runs_length_picks_the_optimizer_unless_told():
    from fcos_lib.config import ADAMW_DEFAULTS, ADAMW_ITERS, ADAMW_SCHEDULE

    def optimizer(*argv):
        return cfg_of(*argv).optimizer

    low, high = ADAMW_ITERS
    assert optimizer() == "sgd"  # the 300-iteration main job
    assert [optimizer("--iters", str(n)) for n in (low - 1, low, high, high + 1)] == ["sgd", "adamw", "adamw", "sgd"]
    assert optimizer("--data", "D") == "adamw"  # 9,000 iterations by default
    long = cfg_of("--iters", "828")
    assert long == cfg_of("--iters", "828", "--optimizer", "adamw") == cfg_of("--iters", "828", "--optimizer", "auto")
    assert {k: getattr(long, k) for k in {**ADAMW_DEFAULTS, **ADAMW_SCHEDULE}} == {**ADAMW_DEFAULTS, **ADAMW_SCHEDULE}
    # Told, or where AdamW was not measured ahead: SGD, the recipe's own settings.
    assert cfg_of("--iters", "828", "--optimizer", "sgd") == improved_recipe(
        iters=828, warmup_iters=82, in_memory=True, num_workers=0, num_threads="auto", c2_passthrough=True)
    assert optimizer("--iters", "828", "--pretrained") == "sgd"
    assert optimizer("--iters", "828", "--recipe", "baseline") == "sgd"
    assert cfg_of("--iters", "828", "--lr", "3e-4").lr == 3e-4  # a given rate is kept


def test_the_runs_length_gives_p3_block1s_detail_where_it_was_measured():
    from fcos_lib.config import ADAMW_ITERS

    def passthrough(*argv):
        return cfg_of(*argv).c2_passthrough

    low, high = ADAMW_ITERS
    assert passthrough() is False  # the 300-iteration main job: not measured there
    assert [passthrough("--iters", str(n)) for n in (low - 1, low, high, high + 1)] == [False, True, True, False]
    assert passthrough("--data", "D") is True  # 9,000 iterations by default
    assert passthrough("--iters", "828", "--optimizer", "sgd") is True  # the architecture follows the length alone
    # A pretrained trunk and the seed's baseline keep p3-p5 as they were; --p2 uses block1 for its own level.
    assert passthrough("--iters", "828", "--pretrained") is False
    assert passthrough("--iters", "828", "--recipe", "baseline") is False
    p2 = cfg_of("--iters", "828", "--p2")
    assert (p2.with_p2, p2.c2_passthrough) == (True, False)
    # Told: on or off, whatever the length; with --p2 the contradiction is refused with its fix.
    assert passthrough("--iters", "828", "--no-c2-passthrough") is False
    assert passthrough("--c2-passthrough") is True
    with pytest.raises(ValueError, match=r"--p2 and c2_passthrough .* Fix: pick one"):
        cfg_of("--iters", "828", "--p2", "--c2-passthrough")


def test_schedule_and_flip_flags_reach_the_config(capsys):
    assert (cfg_of().schedule, cfg_of().hflip) == (improved_recipe().schedule, improved_recipe().hflip)
    for schedule in ("cosine", "step", "constant"):
        assert cfg_of("--schedule", schedule).schedule == schedule
    assert cfg_of("--hflip").hflip is True and cfg_of("--no-hflip").hflip is False
    assert cfg_of("--recipe", "baseline", "--hflip").hflip is True  # a recipe's value, overridden
    # Fine-tuning from ImageNet weights keeps the cosine schedule and no decay on norms, as voc_recipe does.
    tuned = cfg_of("--pretrained")
    assert (tuned.schedule, tuned.decay_norms, tuned.lr) == ("cosine", False, improved_recipe().lr)
    assert cfg_of("--pretrained", "--schedule", "constant").schedule == "constant"
    assert cfg_of("--recipe", "baseline", "--pretrained").schedule == "step"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--schedule", "linear"])
    assert "--schedule" in capsys.readouterr().err


def test_ema_is_on_from_scratch_and_off_where_it_was_not_measured(capsys):
    assert cfg_of().ema_decay == improved_recipe().ema_decay == 0.999
    assert cfg_of("--data", "D").ema_decay == 0.999
    assert cfg_of("--optimizer", "adamw").ema_decay == 0.999  # measured with AdamW too (chapter 10)
    # Fine-tuning and the seed's baseline keep the last weights, unless told otherwise.
    for flags in (["--pretrained"], ["--recipe", "baseline"]):
        assert cfg_of(*flags).ema_decay is None, flags
        assert cfg_of(*flags, "--ema-decay", "0.999").ema_decay == 0.999, flags
    assert cfg_of("--ema-decay", "OFF").ema_decay is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--ema-decay", "fast"])
    assert "expected 'off' or a decay in (0, 1)" in capsys.readouterr().err


def test_steps_flag_sets_the_cuts_and_needs_the_step_schedule():
    late = cfg_of("--schedule", "step", "--steps", "0.9")
    assert (late.schedule, late.steps) == ("step", (0.9,))
    assert cfg_of("--recipe", "baseline", "--steps", "0.5", "0.8").steps == (0.5, 0.8)  # the baseline steps already
    with pytest.raises(ValueError, match="--steps .*--schedule step"):
        cfg_of("--steps", "0.9")  # the improved recipe's constant rate has no steps to move
    with pytest.raises(ValueError, match="--steps"):
        cfg_of("--schedule", "step", "--steps", "1.5")  # a fraction of the run, named by its flag


def test_bad_optimizer_values_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--optimizer", "adam"])
    assert "--optimizer" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--weight-decay must be"):
        cfg_of("--weight-decay", "-1")


def dataclass_dict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def test_data_flag_means_the_full_recipe_and_workers_are_kept_in_memory():
    cfg = cfg_of("--data", "D")
    # 9,000 iterations from scratch: AdamW, with its warm-up (SGD's would be 500).
    assert (cfg.iters, cfg.in_memory, cfg.num_workers, cfg.warmup_iters) == (9000, False, 2, 250)
    assert cfg_of("--data", "D", "--in-memory").num_workers == 0
    assert cfg_of("--data", "D", "--in-memory", "--workers", "3").num_workers == 3  # not ignored
    assert cfg_of("--workers", "2").num_workers == 2  # the course data is in memory: still honoured


def test_baseline_recipe_has_no_warm_up():
    cfg = cfg_of("--recipe", "baseline")
    assert cfg.warmup_iters == 0 and cfg.lr == baseline_recipe().lr and cfg.schedule == "step"
    assert cfg_of("--recipe", "baseline", "--lr", "0.01").lr == 0.01
    assert cfg_of("--iters", "100").warmup_iters == 10  # the improved recipe's, fitted to a short run


def test_resume_keeps_the_runs_settings_and_refuses_changes(trained, tiny_data, capsys):
    import dataclasses

    from fcos_lib.checkpoint import load_checkpoint

    saved = load_checkpoint(trained / "last.pt")["config"]
    cfg = cfg_of("--out", str(trained), "--resume")  # no other flag: the run's own settings
    assert dataclasses.asdict(cfg) == {**saved, "classes": cfg.classes, "steps": cfg.steps}
    err = one_line_error(capsys, ["train", "--out", str(trained), "--resume", "--iters", "5", "--batch-size", "3"])
    assert "iters 3 -> 5" in err and "batch_size 2 -> 3" in err
    assert load_checkpoint(trained / "last.pt")["iteration"] == 3


def test_readme_python_example_runs(tiny_data, tmp_path, monkeypatch):
    # The README's "From Python" block, run as written, on tiny data and a short run.
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"From Python:\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'data="MY_DATA"' in block and "iters=3000" in block
    code = block.replace('data="MY_DATA"', f'data={str(tiny_data)!r}, image_size=64, batch_size=2, device="cpu"') \
                .replace("iters=3000", "iters=2").replace('out="runs/pets"', f'out={str(tmp_path / "pets")!r}')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["state"]["iteration"] == 2 and 0 <= namespace["metrics"]["voc07_map50"] <= 1
    assert (tmp_path / "pets" / "metrics.json").is_file()


def test_a_bad_new_option_names_the_flag():
    with pytest.raises(ValueError, match="--scale-jitter must be"):
        cfg_of("--scale-jitter", "1.25", "0.75")
    with pytest.raises(ValueError, match="--ema-decay must be 'off' or a number in"):
        cfg_of("--ema-decay", "1.5")
    with pytest.raises(ValueError, match="--head-convs must be an int >= 0"):
        cfg_of("--head-convs", "-1")
