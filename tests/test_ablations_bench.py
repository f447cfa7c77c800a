"""bench/ablations.py's bookkeeping, shared by the scripts that re-score its runs (nms_sweep.py,
error_breakdown.py): where a run's checkpoint is, the refusal of a run that is missing or is not
the one that was scored, and a results file that keeps what another run stored."""
import json

import pytest
from bench_scripts import load_bench

ROW = "adopted, AdamW lr 2e-3"


@pytest.fixture(scope="module")
def ablations():
    return load_bench("ablations")


def test_a_scored_run_is_found_with_its_entry_and_checkpoint(ablations, tmp_path):
    folder = ablations.row_folder(tmp_path, "full", "signs", 1, ROW)
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"")
    key = f"{ROW} | signs | seed 1 | full"
    runs = {key: {"map50": 0.5}}
    assert ablations.scored_checkpoint(runs, ROW, "signs", 1, "full", out=tmp_path) == (
        key, {"map50": 0.5}, tmp_path / "full" / "signs" / "seed1" / "adopted,_AdamW_lr_2e-3" / "last.pt")


@pytest.mark.parametrize("missing", ["entry", "checkpoint"])
def test_a_missing_run_is_refused_with_the_command_that_trains_it(ablations, tmp_path, missing):
    key = f"{ROW} | tiles | seed 0 | screen"
    runs = {} if missing == "entry" else {key: {"map50": 0.5}}
    if missing == "entry":
        folder = ablations.row_folder(tmp_path, "screen", "tiles", 0, ROW)
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as refusal:
        ablations.scored_checkpoint(runs, ROW, "tiles", 0, "screen", out=tmp_path)
    assert str(refusal.value).startswith(f"no scored checkpoint for {key!r}")
    assert str(refusal.value).endswith(
        f'Fix: train it with .venv/bin/python bench/ablations.py --budget screen --datasets tiles --rows "{ROW}" --seeds 0')


def test_a_checkpoint_that_scores_otherwise_is_not_the_run_that_was_scored(ablations):
    ablations.check_is_scored_run("k", 0.4204, {"map50": 0.4210}, 0.6, "ablations.json")  # within 1e-3: accepted
    with pytest.raises(SystemExit, match=r"k: the checkpoint scores mAP@0.5 0.4000 at NMS 0.5, but ablations.json "
                                         r"holds 0.4210: it is not the run that was scored. Fix: train it again."):
        ablations.check_is_scored_run("k", 0.4, {"map50": 0.421}, 0.5, "ablations.json")


def test_store_run_keeps_the_entries_another_run_stored(ablations, tmp_path):
    path = tmp_path / "results" / "r.json"
    ablations.store_run(path, "a", {"map50": 0.1})
    path.write_text(json.dumps({"runs": {"a": {"map50": 0.1}, "b": {"map50": 0.2}}}))  # another run's entry
    written = ablations.store_run(path, "c", {"map50": 0.3})
    assert written == json.loads(path.read_text()) == {"runs": {"a": {"map50": 0.1}, "b": {"map50": 0.2},
                                                                 "c": {"map50": 0.3}}}
