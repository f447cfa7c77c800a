"""bench/bench_train_step.py's trials build the model they name and step it beside the default."""
import re
import subprocess
import sys

from bench_scripts import BENCH


def test_p2_with_a_lighter_head_is_stepped_beside_the_default():
    result = subprocess.run([sys.executable, str(BENCH / "bench_train_step.py"), "--no-peer", "--p2", "--num-convs", "2",
                             "--steps", "1", "--batch-size", "2", "--image-size", "64"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    trial = re.search(r"trial p2\+2 head convs: (\d+) ms per step .* ([\d.]+)x the default step", result.stdout)
    assert trial, result.stdout
    assert int(trial.group(1)) > 0 and float(trial.group(2)) > 0
    losses = re.search(r"losses default / trial, last steps: ([\d.]+)/([\d.]+)", result.stdout)
    assert losses and float(losses.group(1)) != float(losses.group(2))  # two models, not one stepped twice


def test_c2_passthrough_is_stepped_beside_the_default_and_not_with_p2():
    argv = [sys.executable, str(BENCH / "bench_train_step.py"), "--no-peer", "--steps", "1", "--batch-size", "2",
            "--image-size", "64"]
    result = subprocess.run([*argv, "--c2-passthrough"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"trial c2 passthrough: \d+ ms per step .* [\d.]+x the default step", result.stdout), result.stdout
    both = subprocess.run([*argv, "--c2-passthrough", "--p2"], capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "pick one" in both.stderr
