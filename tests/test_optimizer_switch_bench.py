"""bench/optimizer_switch.py: its two runs are the user's command with --optimizer sgd and adamw."""
import json

import pytest

from fcos_lib.cli import build_parser, config_from_args
from fcos_lib.config import adamw_changes

from bench_scripts import BENCH, load_bench


@pytest.fixture(scope="module")
def switch():
    return load_bench("optimizer_switch")


def _config(switch, optimizer, out, dataset="course", iters=550):
    return config_from_args(build_parser().parse_args(switch.switch_argv(dataset, iters, optimizer, 0, out)))


def test_the_two_runs_differ_in_the_optimiser_only(switch, tmp_path):
    sgd, adamw = _config(switch, "sgd", tmp_path), _config(switch, "adamw", tmp_path)
    # The budget, evaluated as the command evaluates; the course data when no --data.
    assert (sgd.iters, sgd.batch_size, sgd.image_size, sgd.data, sgd.in_memory) == (550, 16, 224, None, True)
    assert (sgd.optimizer, sgd.lr, sgd.warmup_iters) == ("sgd", 0.01, 55)
    changes = adamw_changes(550)
    assert (adamw.optimizer, adamw.lr, adamw.warmup_iters) == ("adamw", changes["lr"], changes["warmup_iters"])
    assert adamw.replace(**{k: getattr(sgd, k) for k in changes}) == sgd


def test_the_digest_ignores_the_folders_but_not_the_recipe(switch, tmp_path):
    a, b = _config(switch, "sgd", tmp_path / "a"), _config(switch, "sgd", tmp_path / "b")
    assert switch.config_digest(a) == switch.config_digest(b.replace(data="/elsewhere"))
    assert switch.config_digest(a) != switch.config_digest(_config(switch, "adamw", tmp_path))
    assert switch.config_digest(a) != switch.config_digest(_config(switch, "sgd", tmp_path, iters=551))


def test_the_stored_entries_are_the_runs_this_script_makes(switch, tmp_path):
    # Each stored entry's digest is the one its key's command line gives today: the results file
    # and the script have not drifted apart (an entry that had would be run again, not reused).
    path = BENCH / "results" / "optimizer_switch.json"
    if not path.is_file():
        pytest.skip("no stored results yet")
    runs = json.loads(path.read_text())["runs"]
    assert runs
    for key, entry in runs.items():
        dataset, iters, optimizer, seed = [part.strip() for part in key.split("|")]
        # the held-out folder itself is not needed to rebuild the config
        argv = switch.switch_argv(dataset, int(iters.split()[0]), optimizer, int(seed.split()[1]), tmp_path, tmp_path)
        assert entry["spec"] == switch.config_digest(config_from_args(build_parser().parse_args(argv))), key


def test_the_table_gives_each_optimiser_and_the_ratio(switch):
    runs = {switch.run_key("letters", 550, opt, s): {"map50": value}
            for opt, values in {"sgd": (0.1, 0.2), "adamw": (0.3, 0.3)}.items() for s, value in zip((0, 1), values)}
    table = switch.markdown_table(runs, 550, (0, 1), ["letters", "cells"])
    assert "| letters | 0.150 (0.100-0.200) | 0.300 (0.300-0.300) | 2.00x |" in table
    assert "cells" not in table  # not measured: no row


def test_a_later_field_at_its_old_value_leaves_the_digest_alone(switch):
    # Stored entries were made before TrainConfig.with_p2, c2_passthrough and focal_gamma existed: with
    # them off (focal_gamma at the paper's 2) they are the same runs.
    import dataclasses
    import hashlib

    from fcos_lib.config import TrainConfig

    cfg = TrainConfig(iters=550)
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out", "with_p2", "c2_passthrough",
                                                                                  "focal_gamma")}
    assert switch.config_digest(cfg) == hashlib.sha1(
        json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert switch.config_digest(cfg.replace(with_p2=True)) != switch.config_digest(cfg)
    assert switch.config_digest(cfg.replace(c2_passthrough=True)) != switch.config_digest(cfg)
    assert switch.config_digest(cfg.replace(focal_gamma=1.0)) != switch.config_digest(cfg)
