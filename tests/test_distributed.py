"""Data-parallel training (fcos_lib.distributed, chapter 09's "When one GPU is not enough"), on the CPU.

Two processes with gloo, spawned by torch.multiprocessing on a free port, stand in for
`torchrun --nproc_per_node=2`: each sets the variables torchrun sets and joins the group as the
CLI does. A tiny model (64-px inputs, 16 FPN channels, 2 head convs) keeps each run to seconds.

W processes train the same global batches as one process (each its contiguous slice, flips and
scale jitter drawn for the whole batch), with losses normalised by the global foreground count
and DDP's gradient mean, so W = 2 equals W = 1 up to float rounding, as long as nothing depends
on the batch composition inside a process. The from-scratch trunk's BatchNorm does (batch
statistics of the 8 images a process sees, not the 16; SyncBatchNorm fixes that on CUDA only),
so the W-equality tests build the trunk with FrozenBatchNorm2d, as --pretrained does, without
downloading weights (frozen_trunk_batchnorm). Same W, interrupted and resumed: bit for bit,
with the trunk's BatchNorm training.
"""
import contextlib
import faulthandler
import gc
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from fcos_lib import backbone
from fcos_lib.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fcos_lib.cli import main
from fcos_lib.config import improved_recipe
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset
from fcos_lib.distributed import (StoppedOnMain, current_world, evaluate_sharded, join_process_group,
                                  leave_process_group, world_from_env)
from fcos_lib.evaluate import evaluate
from fcos_lib.model import FCOS
from fcos_lib.train import IterationBatchSampler, TrainingInterrupted, random_horizontal_flip, train

ITERS, STOP = 3, 1  # iterations of every run; where the runs resumed with another W stop
# W = 2 against W = 1 after 3 SGD steps: the gradients are the same sums in another order (DDP
# averages two half-batch sums), so the weights agree to float32 rounding: at most 1.5e-8 apart
# when measured. Dividing each slice by its own foreground count instead moved weights by 1e-4,
# and drawing the flips per slice by 3e-3; both fail this tolerance.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def tiny_cfg(data, out, **changes):
    # The global batch: 16 images, 8 per process with W = 2. Scale jitter (0.5-1.5: 32, 64 or 96 px)
    # and flips are on, so their random draws must not depend on W either.
    return improved_recipe(
        data=str(data), image_size=64, batch_size=16, fpn_channels=16, num_convs=2, iters=ITERS, warmup_iters=2,
        num_workers=0, device="cpu", out=str(out), checkpoint_every=1000, scale_jitter=(0.5, 1.5),
    ).replace(**changes)


@contextlib.contextmanager
def frozen_trunk_batchnorm():
    """Build the trunk with FrozenBatchNorm2d (random weights): no batch statistics, as with --pretrained."""
    make = backbone.make_regnet_x_400mf
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backbone, "make_regnet_x_400mf", lambda pretrained=False, frozen_batchnorm=None: make(False, True))
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world_size: int, port: int, job, *args) -> None:
    """One spawned process: torchrun's variables, the process group (gloo), then `job(*args)`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    faulthandler.enable()  # a crash below Python still prints the Python stack
    join_process_group(world_from_env(), torch.device("cpu"))
    try:
        job(*args)
    finally:
        # Free what a kept traceback may hold (a DDP model, its reducer) before the group goes: left
        # to the interpreter's exit, their destruction aborted 2 of 7 runs here (SIGABRT at exit).
        gc.collect()
        leave_process_group()


def on_two_processes(job, *args) -> None:
    """Run job(*args) in 2 spawned processes that form a process group; raises if either fails."""
    torch.multiprocessing.spawn(_process, args=(2, free_port(), job, *args), nprocs=2)


def _frozen_bn_job(data, root) -> None:
    """The two-process side of the W-equality tests (see `runs`)."""
    with frozen_trunk_batchnorm():
        train(tiny_cfg(data, root / "two"), progress=False)  # (a)
        train(tiny_cfg(data, root / "shrink"), progress=False, stop_after=STOP)  # (c) 2 -> 1
        train(tiny_cfg(data, root / "grow"), resume=True, progress=False)  # (c) 1 -> 2
        model, state = model_from_checkpoint(root / "two" / "last.pt")
        val_set = VOCDataset(data, "val", class_names=state["class_names"], image_size=64)
        metrics = evaluate_sharded(model, val_set, current_world(), torch.device("cpu"))
        if metrics is not None:  # process 0
            torch.save({k: metrics[k] for k in ("map50", "map", "voc07_map50", "voc_map50")}, root / "sharded.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Frozen-BatchNorm runs of ITERS iterations: one process, two, and each resumed with the other W."""
    root = tmp_path_factory.mktemp("dist")
    data = make_course_dataset(root / "voc", num_train=16, num_val=4, seed=3)
    with frozen_trunk_batchnorm():
        one = train(tiny_cfg(data, root / "one"), progress=False)
        train(tiny_cfg(data, root / "grow"), progress=False, stop_after=STOP)
    on_two_processes(_frozen_bn_job, data, root)
    with frozen_trunk_batchnorm():
        shrunk = train(tiny_cfg(data, root / "shrink"), resume=True, progress=False)
    return {"data": data, "root": root, "one": one, "shrunk": shrunk,
            "two": load_checkpoint(root / "two" / "last.pt"), "grown": load_checkpoint(root / "grow" / "last.pt")}


def assert_same_run(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"] == ITERS
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, **TOLERANCE, msg=name)
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        assert row_a["iteration"] == row_b["iteration"] and row_a["lr"] == row_b["lr"]
        for key in ("loss_cls", "loss_box", "loss_ctr"):  # rounded to 5 digits in the history
            assert row_a[key] == pytest.approx(row_b[key], abs=2e-5), key
    assert torch.equal(a["rng"]["flip"], b["rng"]["flip"])  # W processes drew what one process draws
    assert a["train_images"] == b["train_images"] == ITERS * 16


def test_two_processes_train_what_one_process_trains(runs):
    # (a) 3 steps on 2 processes with 8 images each == 3 steps on 1 process with the same 16.
    assert_same_run(runs["one"], runs["two"])


def test_resume_with_another_world_size(runs):
    # (c) stopped after 1 iteration on 2 processes, resumed on 1; and stopped on 1, resumed on 2.
    assert_same_run(runs["one"], runs["shrunk"])
    assert_same_run(runs["one"], runs["grown"])


def test_sharded_evaluation_gives_one_process_metrics(runs):
    model, state = model_from_checkpoint(runs["root"] / "two" / "last.pt")
    val_set = VOCDataset(runs["data"], "val", class_names=state["class_names"], image_size=64)
    alone = evaluate(model, val_set)
    sharded = torch.load(runs["root"] / "sharded.pt")
    for key, value in sharded.items():
        assert value == pytest.approx(alone[key], abs=1e-6), key


def _interrupt_and_resume_job(data, root) -> None:
    rank = current_world().rank
    train(tiny_cfg(data, root / "straight", batch_size=8), progress=False)
    # Process 1 alone receives SIGTERM during iteration 2 (in its forward): both must stop after it.
    forward, calls = FCOS.forward, []

    def forward_then_sigterm(self, *args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(TrainingInterrupted) as stopped:
        patch.setattr(FCOS, "forward", forward_then_sigterm)
        train(tiny_cfg(data, root / "stopped", batch_size=8), progress=False)
    assert stopped.value.iteration == 2 and stopped.value.signum == signal.SIGTERM
    del stopped  # its traceback holds the DDP model
    train(tiny_cfg(data, root / "stopped", batch_size=8), resume=True, progress=False)
    # A check process 0 makes for all fails there, and stops the others too (nobody waits for ever).
    with pytest.raises(CheckpointError if rank == 0 else StoppedOnMain, match="already holds a run"):
        train(tiny_cfg(data, root / "stopped", batch_size=8), progress=False)


def test_two_processes_interrupted_and_resumed_bit_for_bit(tmp_path):
    # (b) The trunk's BatchNorm trains here (DDP broadcasts process 0's running statistics at every
    # step, and they are what the checkpoint holds): with the same W, stop + resume is exact.
    data = make_course_dataset(tmp_path / "voc", num_train=8, num_val=2, seed=3)
    on_two_processes(_interrupt_and_resume_job, data, tmp_path)
    straight, resumed = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert resumed["iteration"] == straight["iteration"] == ITERS
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert straight["history"] == resumed["history"]


def test_each_process_takes_its_slice_of_the_global_batch():
    # 10 images, global batches of 4: process 0 takes the first 2 of each, process 1 the last 2.
    one = list(IterationBatchSampler(10, 4, num_iters=5, seed=0))
    halves = [list(IterationBatchSampler(10, 4, num_iters=5, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one
    with pytest.raises(ValueError, match="--batch-size 4 .* not divisible by the world size 3"):
        IterationBatchSampler(10, 4, num_iters=5, rank=0, world_size=3)


def test_flips_are_drawn_for_the_global_batch():
    # The flips of two slices of 3 images, put together, are those of the 6-image batch.
    images = torch.rand(6, 3, 32, 32)
    boxes = torch.tensor([[[2.0, 4.0, 10.0, 20.0, 1.0]]]).repeat(6, 1, 1)  # x1 = 2: x1 = 22 when flipped
    whole, whole_boxes = random_horizontal_flip(images, boxes, torch.Generator().manual_seed(1))
    parts = [random_horizontal_flip(images[3 * r:3 * r + 3], boxes[3 * r:3 * r + 3], torch.Generator().manual_seed(1),
                                    shard=(r, 2)) for r in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_boxes)
    assert 0 < int((whole_boxes[:, 0, 0] == 22).sum()) < 6  # some flipped, some not: the check means something


# --- bad input: one line on stderr, exit status 2 (the CLI, as torchrun would start it) ---

TINY = ["--image-size", "64", "--iters", "1", "--device", "cpu"]


def as_process_0_of(monkeypatch, world_size: int, port: int | None = None) -> None:
    for name, value in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", world_size),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port or free_port())):
        monkeypatch.setenv(name, str(value))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_batch_not_divisible_by_the_world_size(monkeypatch, capsys, tmp_path):
    as_process_0_of(monkeypatch, 3)  # refused before waiting for the other 2 processes
    assert main(["train", "--out", str(tmp_path), "--batch-size", "16", *TINY]) == 2
    line = one_error_line(capsys)
    assert "--batch-size 16" in line and "world size 3" in line and "--batch-size 18" in line


def test_port_in_use(monkeypatch, capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        as_process_0_of(monkeypatch, 2, port)
        assert main(["train", "--out", str(tmp_path), "--batch-size", "2", *TINY]) == 2
    line = one_error_line(capsys)
    assert f"127.0.0.1:{port}" in line and "--master_port" in line


def test_mismatched_world_sizes(tmp_path):
    # Two processes told different world sizes (hand-set variables: torchrun itself gives every
    # process the same one) used to wait 30 minutes for peers that never come; both stop at once.
    port = free_port()
    started = []
    for rank, world_size in ((0, 3), (1, 2)):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "fcos_lib", "train", "--out", str(tmp_path / f"run{rank}"), "--batch-size", "6",
                   *TINY]
        started.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = [process.communicate(timeout=120) for process in started]
    errors = [err.strip() for _, err in outcomes]
    assert [process.returncode for process in started] == [2, 2], errors
    assert all(len(err.splitlines()) == 1 for err in errors), errors
    assert "process 0 was started with WORLD_SIZE=3 but process 1 with WORLD_SIZE=2" in errors[0], errors
    assert f"127.0.0.1:{port}" in errors[1], errors  # the mismatch, or the store gone with process 0
    assert not any((tmp_path / f"run{rank}").exists() for rank in (0, 1))


def test_sync_bn_needs_cuda(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path), "--sync-bn", *TINY]) == 2
    assert "--sync-bn needs CUDA" in one_error_line(capsys)


def test_torchrun_trains_and_reports(tmp_path):
    # The user's command, end to end: torchrun picks its own free port (--standalone); process 0
    # alone writes the run folder and prints the report.
    data = make_course_dataset(tmp_path / "voc", num_train=4, num_val=2, seed=1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fcos_lib",
               "train", "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4", *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mAP@0.5 =") == 1, done.stdout
    assert "for 1 iterations on 2 processes" in done.stdout
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"last.pt", "metrics.json", "loss_curve.png", "detections.png"}
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_images"] == 4
