"""Tests of fcos_lib.cpu_threads: the thread count training uses on an idle or a shared CPU."""
import os
import subprocess
import sys

import pytest
import torch

from fcos_lib import cpu_threads
from fcos_lib.config import TrainConfig
from fcos_lib.cpu_threads import ThreadGovernor, busy_seconds_of_cores

STAT = """cpu  900 0 300 5000 10 0 0 0 0 0
cpu0 400 5 100 2000 7 1 2 3 0 0
cpu1 500 0 200 3000 3 0 0 0 0 0
intr 12345
"""


def test_busy_seconds_counts_the_chosen_cores_without_idle_and_iowait(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds_of_cores([0], str(stat)) == pytest.approx((400 + 5 + 100 + 1 + 2 + 3) / hz)
    assert busy_seconds_of_cores([0, 1], str(stat)) == pytest.approx((511 + 700) / hz)
    assert busy_seconds_of_cores([0], str(tmp_path / "missing")) is None


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def two_core_governor(threads: int, monkeypatch) -> ThreadGovernor:
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: [0, 1])
    governor = ThreadGovernor(None, max_threads=2)
    governor.threads = threads
    return governor


@pytest.mark.parametrize("others, threads, expected", [
    (0.0, 2, 2), (0.3, 2, 2), (0.49, 2, 2),  # an idle machine keeps both threads
    (0.5, 2, 1), (0.67, 2, 1), (1.0, 2, 1),  # a competitor takes half a core or more: one thread
    (1.0, 1, 1), (0.45, 1, 1),  # the hysteresis: between 0.4 and 0.5 of a core nothing changes
    (0.39, 1, 2), (0.0, 1, 2),  # the competitor has gone: both threads again
    (1.9, 2, 1),  # never fewer than one
])
def test_choose_drops_a_thread_at_half_a_core_and_takes_it_back_below_04(others, threads, expected, monkeypatch):
    assert two_core_governor(threads, monkeypatch).choose(others) == expected


def test_auto_follows_the_load_and_restores_torch_threads(monkeypatch, restore_threads):
    # Scripted readings (wall, busy seconds of the cores, own CPU seconds): one second each.
    torch.set_num_threads(2)
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: [0, 1])
    readings = iter([(0.0, 0.0, 0.0),  # __init__'s reading
                     (1.0, 2.0, 1.3),  # a competitor took 0.7 of a core: down to 1
                     (2.0, 4.0, 2.3),  # it takes 1.0: stay at 1
                     (3.0, 5.0, 3.3)])  # it has gone: back to 2
    monkeypatch.setattr(ThreadGovernor, "_read", lambda self: next(readings))
    clock = iter([0.5, 1.0, 2.0, 3.0])
    monkeypatch.setattr(cpu_threads.time, "perf_counter", lambda: next(clock))
    governor = ThreadGovernor("auto")
    assert governor.active and governor.threads == 2
    assert [governor.step() for _ in range(4)] == [2, 1, 1, 2]  # the first call comes too early to read
    assert [threads for _, threads in governor.changes] == [1, 2] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    governor.restore()
    assert torch.get_num_threads() == 2


def test_a_fixed_count_is_set_once_and_restored(restore_threads):
    torch.set_num_threads(2)
    governor = ThreadGovernor(1)
    assert torch.get_num_threads() == 1 and not governor.active and governor.step() == 1
    governor.restore()
    assert torch.get_num_threads() == 2


def test_none_and_machines_without_proc_stat_keep_torch_setting(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    assert not ThreadGovernor(None).active
    monkeypatch.setattr(cpu_threads, "busy_seconds_of_cores", lambda cores: None)
    governor = ThreadGovernor("auto")
    assert not governor.active and governor.step() == 2 == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "all", True])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="num_threads must be"):
        ThreadGovernor(bad)
    with pytest.raises(ValueError, match="TrainConfig.num_threads must be None, 'auto' or an int >= 1"):
        TrainConfig(num_threads=bad)


@pytest.mark.parametrize("value", ["0", "many"])
def test_cli_threads_flag_refuses_bad_values_in_one_line(value):
    result = subprocess.run([sys.executable, "-m", "fcos_lib", "train", "--threads", value],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--threads: expected 'auto' or a number of threads >= 1" in result.stderr
    assert "Traceback" not in result.stderr
