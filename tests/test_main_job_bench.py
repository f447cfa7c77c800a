"""bench/main_job.py: its runs are the CLI's main job with a row's changes, at 300 iterations or --iters."""
import json

import pytest

from fcos_lib.config import COURSE_ITERS

from bench_scripts import BENCH, load_bench


@pytest.fixture(scope="module")
def main_job():
    return load_bench("main_job")


def test_the_main_job_length_keeps_the_stored_keys_and_digests(main_job):
    # Entries stored before --iters existed must still be found (and not re-run).
    stored = json.loads((BENCH / "results" / "main_job.json").read_text())["runs"]
    row = "adopted, AdamW"
    assert main_job.run_key(row, 0) == f"{row} | seed 0" and main_job.run_key(row, 0, COURSE_ITERS) == f"{row} | seed 0"
    assert stored[f"{row} | seed 0"]["spec"] == main_job._digest(row)


def test_a_longer_run_is_its_own_entry_with_the_clis_warm_up(main_job, tmp_path):
    row = "adopted, AdamW"
    assert main_job.run_key(row, 1, 828) == f"{row} | seed 1 | 828 it"
    assert main_job._digest(row, 828) != main_job._digest(row)
    short, long = main_job.main_job_config(row, 1, tmp_path), main_job.main_job_config(row, 1, tmp_path, 828)
    assert (short.iters, short.warmup_iters) == (COURSE_ITERS, COURSE_ITERS // 10)
    assert (long.iters, long.warmup_iters) == (828, 82)
    # Only the length differs: the data, the row's optimiser and the evaluation are the main job's.
    assert long.replace(iters=short.iters, warmup_iters=short.warmup_iters) == short
    assert long.optimizer == "adamw" and long.in_memory


def test_the_default_row_at_828_iterations_is_what_the_command_line_runs(main_job, tmp_path):
    # chapter 10's adopted AdamW row, on the course data, is `python -m fcos_lib train --iters 828` as it is now
    from fcos_lib.cli import build_parser, config_from_args

    row = main_job.main_job_config("adopted, AdamW lr 2e-3, warm-up 250 + c2 passthrough", 0, tmp_path, 828)
    cli = config_from_args(build_parser().parse_args(["train", "--seed", "0", "--out", str(tmp_path), "--iters", "828"]))
    assert row == cli and (row.optimizer, row.lr, row.warmup_iters, row.c2_passthrough) == ("adamw", 2e-3, 250, True)
