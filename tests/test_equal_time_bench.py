"""bench/equal_time.py: the variants train the command a user types, for iterations that take equal time."""
import json
import math
import subprocess
import sys

from bench_scripts import BENCH, load_bench

from fcos_lib.course_data import make_course_dataset


def test_shown_command_quotes_what_a_shell_needs_and_keeps_home_relative_paths():
    shown_command = load_bench("equal_time").shown_command
    assert (shown_command(["train", "--data", "~/.cache/fcos_lib/held_out_signs", "--seed", "0", "--p2"])
            == "python -m fcos_lib train --data ~/.cache/fcos_lib/held_out_signs --seed 0 --p2")
    assert shown_command(["train", "--data", "~/my data", "--out", "a b"]) == \
        "python -m fcos_lib train --data ~/'my data' --out 'a b'"


def test_variants_train_for_equal_time_and_a_second_call_reruns_nothing(tmp_path):
    data = make_course_dataset(tmp_path / "voc", num_train=6, num_val=3, seed=1)
    results = tmp_path / "equal_time.json"
    argv = [sys.executable, str(BENCH / "equal_time.py"), "--data", str(data), "--iters", "4",
            "--seeds", "0", "--batch-size", "2", "--image-size", "64", "--timing-steps", "1", "1",
            "--results", str(results), "--out", str(tmp_path / "runs"), "--", "", "--head-convs 1"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr

    stored = json.loads(results.read_text())
    timing = stored["timing"]["voc"]["--head-convs 1"]
    assert timing["reference"] == "default" and timing["step_seconds"] > 0 and timing["reference_step_seconds"] > 0
    reference, variant = stored["runs"]["default | voc | seed 0"], stored["runs"]["--head-convs 1 | voc | seed 0"]
    assert reference["iters"] == 4  # what metrics.json says the run trained
    assert variant["iters"] == max(1, math.floor(4 * timing["reference_step_seconds"] / timing["step_seconds"]))
    assert reference["command"].endswith(f"--data {data} --iters 4 --batch-size 2 --image-size 64 --in-memory "
                                         "--device cpu --seed 0")
    assert variant["command"].endswith(f"--iters {variant['iters']} --batch-size 2 --image-size 64 --in-memory "
                                       "--device cpu --seed 0 --head-convs 1")
    for run in (reference, variant):
        assert 0.0 <= run["map50"] <= 1.0 and run["train_seconds"] > 0
    assert "default" in first.stdout.splitlines()[-2] and "--head-convs 1" in first.stdout.splitlines()[-1]

    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "timing" not in second.stdout and "run   " not in second.stdout
    assert second.stdout.count("have  ") == 2
    assert json.loads(results.read_text()) == stored


def test_a_missing_dataset_folder_is_named(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "equal_time.py"), "--data", str(tmp_path / "nowhere"),
                             "--iters", "4", "--", "", "--p2"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "neither a held-out dataset" in result.stderr and "Fix:" in result.stderr


def test_a_variant_may_not_set_what_the_script_sets_for_every_run(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "equal_time.py"), "--data", str(tmp_path), "--iters", "4",
                             "--", "", "--p2 --iters=100"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "sets --iters=100, which this script sets for every run" in result.stderr and "Fix:" in result.stderr
