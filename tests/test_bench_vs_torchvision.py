"""bench/bench_vs_torchvision.py's summaries and arguments (the runs themselves take an hour)."""
import sys

import pytest

from bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_vs_torchvision")


def _run(map50_ours, map50_peer, iters=(690, 701)):
    def side(m, it):
        return {"map50": m, "map": m / 2, "iters": it, "train_seconds": 450.0}
    return {"fcos_lib": side(map50_ours, iters[0]), "torchvision": side(map50_peer, iters[1])}


def test_summary_of_a_wall_clock_only_run_judges_no_goal(bench, capsys):
    runs = [_run(0.30, 0.20), _run(0.26, 0.20)]
    summary = bench.summarise(runs)
    assert summary["ratio_map50"] == pytest.approx(0.28 / 0.20)
    assert summary["goal_met"] is False  # 1.4x
    result = {"seeds": [0, 1], "goal_conditions": True, "datasets": {"tiles": {
        "equal_iters": {"runs": []}, "equal_time": {"runs": runs, "summary": summary}}}}
    bench.print_summary(result)
    out = capsys.readouterr().out
    assert "equal wall-clock" in out and "1.40x" in out and "equal iterations  " not in out
    assert "not judged here (no equal-iteration runs: --wall-clock-only)" in out
    assert bench.chart_fields(result) == {}  # no equal-iteration runs: nothing for the README chart


@pytest.mark.parametrize("argv, message", [
    (["--wall-clock-only"], "--wall-clock-only needs --minutes M"),
    # a flag the command lacks fails before any training
    (["--fcos-flags=--p3"], "--fcos-flags '--p3': not options of `python -m fcos_lib train`"),
])
def test_bad_arguments_stop_before_training(bench, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["bench_vs_torchvision.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_letters_is_a_held_out_choice(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_vs_torchvision.py", "--held-out", "digits"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "'letters'" in capsys.readouterr().err  # argparse lists the choices, letters among them


def test_threads_reach_the_fcos_lib_command(bench, tmp_path):
    """--threads N fixes fcos_lib's thread count (runs that repeat bit for bit); without it the
    command's own default, auto, as a user runs it."""
    from argparse import Namespace

    args = Namespace(train_split="train", val_split="val", batch_size=16, image_size=224, threads=0)
    assert bench.fcos_lib_config(tmp_path, args, 828, 0, tmp_path / "out").num_threads == "auto"
    args.threads = 2
    cfg = bench.fcos_lib_config(tmp_path, args, 828, 0, tmp_path / "out")
    assert cfg.num_threads == 2 and cfg.iters == 828 and cfg.optimizer == "adamw"


def test_fcos_flags_reach_the_fcos_lib_command(bench, tmp_path):
    """--fcos-flags passes the command's own options (here --p2) to fcos_lib's runs only."""
    from argparse import Namespace

    args = Namespace(train_split="train", val_split="val", batch_size=16, image_size=224, threads=0, fcos_flags="--p2")
    cfg = bench.fcos_lib_config(tmp_path, args, 828, 0, tmp_path / "out")
    assert cfg.with_p2 is True and cfg.iters == 828
    args.fcos_flags = ""
    assert bench.fcos_lib_config(tmp_path, args, 828, 0, tmp_path / "out").with_p2 is False

