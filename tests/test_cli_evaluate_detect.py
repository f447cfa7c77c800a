"""`python -m fcos_lib evaluate|detect`: never lose a run, and fail before the work, not after.

detect takes files and folders, skips (and lists) the files it cannot read, never overwrites
one output with another, and exits 0 (all done), 1 (some images failed) or 2 (nothing could be
done). evaluate writes its own metrics_<split>.json with what was evaluated, and says so when a
split has nothing to score. Both show progress bars.
"""
import json
import shutil
from datetime import datetime, timedelta

import pytest
from PIL import Image

import fcos_lib
from fcos_lib.cli import build_parser, main

TINY = ["--image-size", "64", "--batch-size", "2", "--iters", "3", "--device", "cpu"]
# tiny_data and trained: tests/conftest.py


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the run folder (last.pt, metrics.json), so a test may write into it."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "metrics.json"):
        shutil.copy(trained / name, run / name)
    return run


def a_photo(tiny_data, size=(96, 64)) -> Image.Image:
    """A course image resized to `size` (W, H)."""
    return Image.open(sorted((tiny_data / "JPEGImages").iterdir())[0]).convert("RGB").resize(size)


def detect(trained, *args) -> int:
    return main(["detect", "--checkpoint", str(trained / "last.pt"), "--device", "cpu", *map(str, args)])


def stderr_lines(err: str) -> list[str]:
    """stderr's lines, without the progress bar's carriage-return redraws."""
    return [part.strip() for line in err.splitlines() for part in line.split("\r") if part.strip()]


# ---------------------------------------------------------------------------------------- detect

def test_detect_takes_a_folder_recursively_in_sorted_order(trained, tiny_data, tmp_path):
    # photos/b.png, photos/a.jpg, photos/sub/c.PNG (any case), photos/notes.txt (not an image),
    # photos/.hidden.png (hidden): a folder means its 3 images, each folder's own files first.
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    a_photo(tiny_data).save(photos / "b.png")
    a_photo(tiny_data).save(photos / "a.jpg")
    a_photo(tiny_data).save(photos / "sub" / "c.PNG")
    a_photo(tiny_data).save(photos / ".hidden.png")
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "found"
    assert detect(trained, photos, "--out", out) == 0
    results = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in results["images"]] == [str(photos / "a.jpg"), str(photos / "b.png"),
                                                       str(photos / "sub" / "c.PNG")]
    assert results["failed"] == []
    assert sorted(p.name for p in out.glob("*.png")) == ["a_detections.png", "b_detections.png", "c_detections.png"]


def test_detect_skips_its_own_output_folder(trained, tiny_data, tmp_path):
    # --out inside the input folder: a second run must not detect on the first run's PNGs.
    photos = tmp_path / "photos"
    photos.mkdir()
    a_photo(tiny_data).save(photos / "a.png")
    for _ in range(2):
        assert detect(trained, photos, "--out", photos / "found") == 0
        results = json.loads((photos / "found" / "detections.json").read_text())
        assert [r["image"] for r in results["images"]] == [str(photos / "a.png")]


def test_detect_skips_bad_files_reports_each_and_exits_1(trained, tiny_data, tmp_path, capsys):
    good = tmp_path / "good.png"
    a_photo(tiny_data).save(good)
    jpeg = sorted((tiny_data / "JPEGImages").iterdir())[0].read_bytes()
    bad = {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "text.jpg": b"this is not an image\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "found"
    inputs = [tmp_path / "empty.jpg", good, tmp_path / "truncated.jpg", tmp_path / "text.jpg"]
    assert detect(trained, *inputs, "--out", out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = stderr_lines(err)
    for name in bad:  # one line per bad file, naming it
        assert len([line for line in lines if line.startswith("skipped") and name in line]) == 1, lines
    assert f"3 of 4 images failed; see {out / 'detections.json'}" in lines
    results = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in results["images"]] == [str(good)]
    assert [f["image"] for f in results["failed"]] == [str(tmp_path / n) for n in ("empty.jpg", "truncated.jpg", "text.jpg")]
    assert all(f["error"] for f in results["failed"])
    assert [p.name for p in out.glob("*.png")] == ["good_detections.png"]


def test_detect_writes_detections_json_even_when_every_file_fails(trained, tmp_path, capsys):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "found"
    assert detect(trained, tmp_path / "a.jpg", tmp_path / "b.png", "--out", out) == 1
    assert "2 of 2 images failed" in capsys.readouterr().err
    results = json.loads((out / "detections.json").read_text())
    assert results["images"] == [] and len(results["failed"]) == 2


def test_detect_output_names_never_collide(trained, tiny_data, tmp_path):
    # a/photo.jpg is wide (96 x 64), b/photo.jpg tall (64 x 96): two outputs, and the JSON says
    # which is which (the annotated PNG keeps its photo's orientation).
    for folder, size in (("a", (96, 64)), ("b", (64, 96))):
        (tmp_path / folder).mkdir()
        a_photo(tiny_data, size).save(tmp_path / folder / "photo.jpg")
    out = tmp_path / "found"
    assert detect(trained, tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg", "--out", out) == 0
    assert len(list(out.glob("*.png"))) == 2  # neither overwrote the other
    results = json.loads((out / "detections.json").read_text())
    outputs = {r["image"]: r["output"] for r in results["images"]}
    assert outputs == {str(tmp_path / "a" / "photo.jpg"): "photo_detections.png",
                       str(tmp_path / "b" / "photo.jpg"): "photo_2_detections.png"}
    for r in results["images"]:
        with Image.open(out / r["output"]) as annotated:
            assert (annotated.width > annotated.height) == (r["width"] > r["height"])


def test_detect_shows_progress(trained, tiny_data, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        a_photo(tiny_data).save(tmp_path / name)
    assert detect(trained, tmp_path / "a.png", tmp_path / "b.png", "--out", tmp_path / "found") == 0
    err = capsys.readouterr().err
    assert "detect" in err and "2/2" in err


def test_detect_refuses_before_any_work(trained, tiny_data, tmp_path, capsys):
    # Exit 2 and no detections.json: a missing path, a folder without images, a bad checkpoint.
    (tmp_path / "empty_folder").mkdir()
    a_photo(tiny_data).save(tmp_path / "a.png")
    not_a_checkpoint = tmp_path / "last.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    cases = {
        "missing.png": ["detect", "--checkpoint", str(trained / "last.pt"), str(tmp_path / "a.png"), str(tmp_path / "missing.png")],
        "no image files": ["detect", "--checkpoint", str(trained / "last.pt"), str(tmp_path / "empty_folder")],
        "last.pt": ["detect", "--checkpoint", str(not_a_checkpoint), str(tmp_path / "a.png")],
    }
    for expected, argv in cases.items():
        out = tmp_path / f"out_{len(expected)}"
        assert main([*argv, "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and expected in err, err
        assert not (out / "detections.json").exists()


# -------------------------------------------------------------------------------------- evaluate

def evaluate(run, data, *args) -> int:
    return main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--device", "cpu", *map(str, args)])


def test_evaluate_writes_metrics_split_json_and_leaves_the_runs_metrics_json(run_copy, tiny_data):
    before = (run_copy / "metrics.json").read_bytes()
    assert evaluate(run_copy, tiny_data, "--split", "train") == 0  # --out: the checkpoint's folder
    assert (run_copy / "metrics.json").read_bytes() == before
    record = json.loads((run_copy / "metrics_train.json").read_text())
    assert record["split"] == "train" and record["num_images"] == 6
    assert record["data"] == str(tiny_data.resolve())
    assert record["checkpoint"] == str((run_copy / "last.pt").resolve())
    assert record["image_size"] == 64
    assert record["fcos_lib_version"] == fcos_lib.__version__
    date = datetime.fromisoformat(record["date"])
    assert date.utcoffset() == timedelta(0)  # UTC
    assert 0 <= record["map50"] <= 1


def test_evaluate_shows_progress(run_copy, tiny_data, tmp_path, capsys):
    assert evaluate(run_copy, tiny_data, "--out", tmp_path / "eval") == 0
    assert "evaluate" in capsys.readouterr().err
    assert (tmp_path / "eval" / "metrics_val.json").is_file()


def test_evaluate_split_without_objects_gives_null_and_says_so(run_copy, tiny_data, tmp_path, capsys):
    import re

    data = shutil.copytree(tiny_data, tmp_path / "voc")
    for image_id in (data / "ImageSets" / "Main" / "val.txt").read_text().split():
        xml = data / "Annotations" / f"{image_id}.xml"
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))
    assert evaluate(run_copy, data, "--out", tmp_path / "eval") == 0
    captured = capsys.readouterr()
    # A -1 (torchmetrics' "no objects") must not show as a metric; "pytest-1" in a path is fine.
    assert not re.search(r"(?<![\w-])-1(\.0+)?\b", captured.out), captured.out
    assert "n/a" in captured.out
    notes = [line for line in stderr_lines(captured.err) if "no objects" in line]
    assert len(notes) == 1 and "val" in notes[0], captured.err
    record = json.loads((tmp_path / "eval" / "metrics_val.json").read_text())
    for key in ("map50", "map", "voc07_map50", "voc_map50"):
        assert record[key] is None
    assert set(record["per_class_ap50"].values()) == {None}


# --------------------------------------------------------------------------------------- parser

def test_version_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"fcos_lib {fcos_lib.__version__}"


@pytest.mark.parametrize("command, says", [("evaluate", "metrics_<SPLIT>.json"), ("detect", "folders")])
def test_help_shows_every_default(command, says):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        expected = "required" if action.required else "(default:"
        assert expected in action.help, (command, action.dest, action.help)
    assert says in sub.format_help().replace("\n", " ")
