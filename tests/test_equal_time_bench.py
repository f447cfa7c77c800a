"""bench/equal_time.py: the variants train the command a user types, for iterations that take equal time."""
import argparse
import json
import subprocess
import sys

import pytest

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
    # A stored timing (the variant's step is half the default's), so the iterations are known: the
    # timing itself is tested below, apart from this machine's noise.
    timing = {"reference": "default", "reference_step_seconds": 0.2, "step_seconds": 0.1, "how": "a test"}
    results.write_text(json.dumps({"runs": {}, "timing": {"voc": {"--head-convs 1": timing}}}))
    argv = [sys.executable, str(BENCH / "equal_time.py"), "--data", str(data), "--iters", "4",
            "--seeds", "0", "--batch-size", "2", "--image-size", "64",
            "--results", str(results), "--out", str(tmp_path / "runs"), "--", "", "--head-convs 1"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "timing" not in first.stdout  # the stored timing is kept
    assert "'--head-convs 1': step 0.1 s against 0.2 s -> 8 iterations in the time of 4" in first.stdout

    stored = json.loads(results.read_text())
    assert stored["timing"]["voc"]["--head-convs 1"] == timing
    reference, variant = stored["runs"]["default | voc | seed 0"], stored["runs"]["--head-convs 1 | voc | seed 0"]
    assert (reference["iters"], variant["iters"]) == (4, 8)  # what each run's metrics.json says it trained
    assert reference["command"].endswith(f"--data {data} --iters 4 --batch-size 2 --image-size 64 --in-memory "
                                         "--device cpu --seed 0")
    assert variant["command"].endswith("--iters 8 --batch-size 2 --image-size 64 --in-memory "
                                       "--device cpu --seed 0 --head-convs 1")
    for run in (reference, variant):
        assert 0.0 <= run["map50"] <= 1.0 and run["train_seconds"] > 0
    assert "default" in first.stdout.splitlines()[-2] and "--head-convs 1" in first.stdout.splitlines()[-1]

    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "timing" not in second.stdout and "run   " not in second.stdout
    assert second.stdout.count("have  ") == 2
    assert json.loads(results.read_text()) == stored


def fake_train(step_seconds_of):
    """A stand-in for fcos_lib.train.train: an n-step run takes 0.5 s + n x its step, and is recorded."""
    calls = []

    def train(cfg, progress=False, overwrite=False):
        calls.append(cfg)
        return {"train_seconds": 0.5 + cfg.iters * step_seconds_of(cfg)}

    return train, calls


def test_a_variant_is_timed_beside_the_reference_with_its_own_flags(tmp_path, monkeypatch):
    equal_time = load_bench("equal_time")
    train, calls = fake_train(lambda cfg: 0.125 if cfg.num_convs == 1 else 0.25)
    monkeypatch.setattr("fcos_lib.train.train", train)
    args = argparse.Namespace(seeds=[3], batch_size=2, image_size=64, device="cpu", timing_steps=[2, 10])
    assert equal_time.step_seconds(tmp_path, "", args, tmp_path / "out") == 0.25
    assert equal_time.step_seconds(tmp_path, "--head-convs 1", args, tmp_path / "out") == 0.125
    assert [(cfg.iters, cfg.num_convs, cfg.seed) for cfg in calls] == [(12, 4, 3), (2, 4, 3), (12, 1, 3), (2, 1, 3)]


def test_seconds_per_step_cancels_the_first_steps_and_retries_noise():
    seconds_per_step = load_bench("_timing").seconds_per_step
    assert seconds_per_step(lambda n: 3.0 + 0.5 * n, untimed=2, timed=10) == 0.5
    # Noise: the first pair of runs comes out the wrong way round; the second is measured.
    times = iter([1.0, 1.2, 2.0, 1.0])
    assert seconds_per_step(lambda n: next(times), untimed=1, timed=4) == 0.25


def test_timing_noise_larger_than_the_steps_is_an_error_that_names_the_fix():
    timing = load_bench("_timing")
    with pytest.raises(timing.TimingNoiseError, match=r"in 3 tries .*Fix: time more steps"):
        timing.seconds_per_step(lambda n: 1.0, untimed=1, timed=1)


def test_the_script_reports_timing_noise_without_a_traceback(tmp_path, monkeypatch, capsys):
    equal_time = load_bench("equal_time")
    train, _ = fake_train(lambda cfg: 0.0)  # every run takes the same time, however many steps
    monkeypatch.setattr("fcos_lib.train.train", train)
    monkeypatch.setattr(sys, "argv", ["equal_time.py", "--data", str(tmp_path), "--iters", "4", "--timing-steps",
                                      "1", "1", "--results", str(tmp_path / "r.json"), "--", "", "--p2"])
    with pytest.raises(SystemExit) as stopped:
        equal_time.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "error: timing '--p2'" in err and "--timing-steps 1 2" in err and "Traceback" not in err


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
