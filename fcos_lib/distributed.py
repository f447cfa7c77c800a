"""Data-parallel plumbing: torchrun's process group for fcos_lib.train, fcos_lib.report and the CLI.

Hand-written, like cli.py (no notebook exports it): it wires torch.distributed into chapter 09's
training loop, and chapter 09's section "When one GPU is not enough" explains what it does and
what is exact. `torchrun --nproc_per_node=N [--nnodes ...] -m fcos_lib train ...` starts W
processes (W = nodes x N) and gives each RANK (0 .. W-1), LOCAL_RANK (its GPU on its machine) and
WORLD_SIZE. Without those variables (a plain `python -m fcos_lib train`) World() is one process
and nothing here changes anything.

What W processes share, so that they train the run one process would train:
- every process takes its contiguous slice of the same global batch (IterationBatchSampler);
- the losses are normalised by the global batch's foreground count (losses.global_foreground_count);
- process 0 alone checks and locks the run folder, writes checkpoints and the run report.
References: torchvision's references/detection/utils.py (init_distributed_mode: the same torchrun
variables, NCCL on GPUs); Goyal et al. 2017, "Accurate, Large Minibatch SGD" (the learning rate
scales with the global batch, chapter 09).

A script of your own, started by torchrun, does what the CLI does:

    world = world_from_env()
    join_process_group(world, process_device(resolve_device(cfg.device), world))
    state = train(cfg)                      # every process; process 0 writes last.pt
    metrics = write_run_report(cfg, state)  # None on processes 1 .. W-1
    leave_process_group()
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["World", "GROUP_TIMEOUT", "StoppedOnMain", "world_from_env", "current_world", "check_global_batch", "process_device",
           "join_process_group", "rendezvous_store", "WorldSizeMismatch", "check_same_world_size", "leave_process_group", "run_on_main", "barrier", "data_parallel",
           "with_sync_batchnorm", "check_sync_bn", "mean_losses_and_stop", "evaluate_sharded"]


@dataclass(frozen=True)
class World:
    """Where this process stands: process `rank` of `size`, GPU `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# How long a process waits in a collective: long enough for process 0's pre-flight check of a large
# dataset while the others wait (NCCL's default is 10 minutes; gloo's is already 30).
GROUP_TIMEOUT = timedelta(minutes=30)


class StoppedOnMain(RuntimeError):
    """Raised on processes 1 .. W-1 when work that process 0 does for all failed; process 0 says why."""


def world_from_env(environ=os.environ) -> World:
    """The World that torchrun's variables describe; World() when WORLD_SIZE is not set (or is 1)."""
    if "WORLD_SIZE" not in environ:
        return World()
    try:
        size = int(environ["WORLD_SIZE"])
        rank = int(environ.get("RANK", "-1"))
        local_rank = int(environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(f"torchrun's variables must be integers; got WORLD_SIZE={environ.get('WORLD_SIZE')!r}, "
                         f"RANK={environ.get('RANK')!r}, LOCAL_RANK={environ.get('LOCAL_RANK')!r}") from None
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={environ.get('RANK')} must be in [0, WORLD_SIZE={size}); start the command with "
                         "torchrun, which sets both, or unset WORLD_SIZE to train in one process")
    return World(rank, size, local_rank) if size > 1 else World()


def current_world() -> World:
    """The World of the process group this process has joined; World() when it has joined none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def check_global_batch(batch_size: int, world_size: int) -> None:
    """ValueError unless the global batch splits into equal slices, one per process."""
    if batch_size % world_size:
        multiple = -(-batch_size // world_size) * world_size
        raise ValueError(
            f"--batch-size {batch_size} (the global batch) is not divisible by the world size {world_size} (the "
            f"processes torchrun started): each process takes an equal slice of every batch; pass a multiple of "
            f"{world_size}, e.g. --batch-size {multiple} (and scale --lr with it), or start fewer processes")


def process_device(device: torch.device, world: World) -> torch.device:
    """This process's device: cuda:LOCAL_RANK when several processes train on CUDA, else `device`."""
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"--device {device} names one GPU, but each of the {world.size} processes takes its own "
                         "(cuda:LOCAL_RANK); pass --device cuda")
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"process {world.rank} needs cuda:{world.local_rank} but this machine has "
                         f"{torch.cuda.device_count()} GPUs; start at most that many processes per machine "
                         "(torchrun --nproc_per_node)")
    return torch.device("cuda", world.local_rank)


def join_process_group(world: World, device: torch.device) -> None:
    """Join torchrun's process group: NCCL when `device` is CUDA, gloo on the CPU; nothing for one process.

    Raises RuntimeError in one line naming MASTER_ADDR:MASTER_PORT when the group cannot be made
    (a port in use, an address that cannot be reached, a variable missing), and naming both
    values when two processes were given different world sizes (check_same_world_size).
    """
    if world.size == 1 or dist.is_initialized():
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    where = f"{os.environ.get('MASTER_ADDR', '(MASTER_ADDR not set)')}:{os.environ.get('MASTER_PORT', '(MASTER_PORT not set)')}"
    try:
        store = rendezvous_store(world)
        check_same_world_size(store, world)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=world.rank, world_size=world.size,
                                timeout=GROUP_TIMEOUT, device_id=device if cuda else None)
    except WorldSizeMismatch as err:
        raise RuntimeError(f"{err} (process group at {where})") from None
    except (RuntimeError, ValueError) as err:  # DistNetworkError, DistStoreError are RuntimeErrors
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(
            f"process {world.rank} of {world.size} could not join the process group at {where} ({reason}); if "
            "another run holds that port, give torchrun a free one (--master_port PORT, or --rdzv_endpoint "
            "HOST:PORT), and check that every machine reaches that address with the same --nnodes") from None


def rendezvous_store(world: World) -> "dist.TCPStore":
    """The key-value store at MASTER_ADDR:MASTER_PORT that the processes meet in.

    As torch's env:// rendezvous makes it (process 0 serves it, or torchrun's agent does when
    TORCHELASTIC_USE_AGENT_STORE is set), except that process 0 does not wait for the others to
    connect first: check_same_world_size must run before anyone waits for a count of processes.
    """
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not set; torchrun sets them")
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=world.is_main and not agent,
                         timeout=GROUP_TIMEOUT, wait_for_workers=False, multi_tenant=True)


class WorldSizeMismatch(Exception):
    """Two processes of one group were started with different WORLD_SIZE values."""


def check_same_world_size(store, world: World, poll_seconds: float = 0.05) -> None:
    """Every process posts its WORLD_SIZE in the rendezvous store, and waits for the others' posts.

    Without this, processes given different world sizes (hand-set variables, or two launches
    that disagree) each wait for peers that never come until GROUP_TIMEOUT (30 minutes), then fail
    deep inside gloo or NCCL. Here a process stops as soon as it reads another world size, with
    both values named. torchrun itself hands every process the same WORLD_SIZE, also when its
    machines disagree on --nnodes (the rendezvous host's count wins; tried here with two launches).

    Raises WorldSizeMismatch, or the store's own timeout error after GROUP_TIMEOUT.
    """
    # torchrun makes a new store for each restart of its workers; the count keeps keys apart anyway.
    key = f"fcos_lib/world_size/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{{}}".format
    store.set(key(world.rank), str(world.size))
    deadline = time.monotonic() + GROUP_TIMEOUT.total_seconds()
    waiting = set(range(world.size)) - {world.rank}
    # A process of a larger world posts a rank beyond this world: look at one rank past ours too.
    watch = sorted(waiting | {world.size})
    while True:
        for rank in watch:
            if store.check([key(rank)]):
                size = int(store.get(key(rank)))
                if size != world.size:
                    _leave_after_the_others_read(store, key, world, watch)
                    raise WorldSizeMismatch(
                        f"process {world.rank} was started with WORLD_SIZE={world.size} but process {rank} with "
                        f"WORLD_SIZE={size}: every process of one run needs the same world size; start them all with "
                        "one torchrun command per machine (the same --nnodes on every machine), or set WORLD_SIZE alike")
                waiting.discard(rank)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {sorted(waiting)} of {world.size} did not arrive within {GROUP_TIMEOUT}")
        time.sleep(poll_seconds)


def _leave_after_the_others_read(store, key, world: World, watch, grace_seconds: float = 5.0) -> None:
    """Mark this process as stopping, and on process 0 wait (at most `grace_seconds`) until every
    process that posted its world size has read the mismatch too.

    Process 0 hosts the store (torchrun's agent excepted): if it exits while another process is
    half-way through a read, that process prints torch's C++ warning and a stack trace before its
    own one-line error. Each process marks that it has seen the mismatch as its last store write.
    """
    seen = "{}/seen".format
    store.set(seen(key(world.rank)), "1")
    if world.rank != 0:
        return
    deadline = time.monotonic() + grace_seconds
    others = [rank for rank in watch if rank != world.rank]
    while time.monotonic() < deadline:
        posted = [rank for rank in others if store.check([key(rank)])]
        if all(store.check([seen(key(rank))]) for rank in posted):
            return
        time.sleep(0.05)


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_on_main(world: World, fn, *args, **kwargs):
    """fn(*args, **kwargs) on process 0 alone, the others waiting; its result on every process.

    For the work one process does for all (the run folder's check and lock, the pre-flight
    check). If it fails, process 0 raises the error and the others StoppedOnMain, so none waits
    for ever. The result must pickle (it is broadcast).
    """
    if world.size == 1:
        return fn(*args, **kwargs)
    outcome, error = [None], None
    if world.is_main:
        try:
            outcome[0] = ("ok", fn(*args, **kwargs))
        except Exception as err:
            error, outcome[0] = err, ("error", f"{type(err).__name__}: {err}")
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if error is not None:
        raise error
    if kind == "error":
        raise StoppedOnMain(f"process 0 stopped the run: {value}")
    return value


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def data_parallel(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """`model` wrapped in DistributedDataParallel for several processes; `model` itself for one.

    DDP broadcasts process 0's weights at the start and averages the gradients in backward().
    """
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def with_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` as SyncBatchNorm: batch statistics over the global batch, not one slice.

    The same parameters and buffers (state_dict keys unchanged). FrozenBatchNorm2d (--pretrained) is
    left alone: it has no batch statistics.
    """
    check_sync_bn(device)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_sync_bn(device: torch.device) -> None:
    """ValueError unless SyncBatchNorm can run here (on CUDA)."""
    if device.type != "cuda":
        raise ValueError(f"--sync-bn needs CUDA GPUs (torch's SyncBatchNorm runs on GPUs, with NCCL), but this run is "
                         f"on {device.type} (gloo); leave out --sync-bn")


def mean_losses_and_stop(losses: dict, stop: bool) -> tuple[dict, bool]:
    """The losses of the global batch, and whether any process was asked to stop; one all_reduce.

    Args:
        losses: {name: () tensor}, this process's losses (fcos_loss with sync_foreground=True: its
            share of the global loss, times W).
        stop: this process has received SIGINT/SIGTERM.
    Returns:
        ({name: () detached tensor}, the mean over processes: the one-process loss of the global
        batch), and True when any process asked to stop, the same on every process, so that all
        stop after the same iteration (one alone would leave the others waiting in the next
        all_reduce).
    """
    values = torch.stack([value.detach().float() for value in losses.values()])  # (K,)
    flag = torch.full((1,), float(stop), device=values.device)  # (1,)
    both = torch.cat([values, flag])  # (K + 1,)
    dist.all_reduce(both)  # sums (gloo has no average)
    mean = both[:-1] / dist.get_world_size()
    return dict(zip(losses, mean)), bool(both[-1] > 0)


def evaluate_sharded(model: nn.Module, dataset, world: World, device: torch.device,
                     progress: bool = False) -> dict | None:
    """fcos_lib.evaluate.evaluate with the images shared out: process r detects images r, r + W, ...

    Process 0 gathers every image's detections, puts them back in the dataset's order and scores
    them; it returns evaluate's dict, the other processes None. The per-image detections are those
    of one process (up to float rounding of other batch compositions), so are the metrics.
    """
    from torch.utils.data import Subset

    from fcos_lib.evaluate import collect_detections, detection_metrics

    if len(dataset) == 0:
        raise ValueError("the evaluation split has no images")
    shard = Subset(dataset, range(world.rank, len(dataset), world.size))
    part = collect_detections(model, shard, device=device, progress=progress) if len(shard) else ([], [])
    parts = [None] * world.size if world.is_main else None
    dist.gather_object(part, parts, dst=0)
    # No process leaves (closing its connections) while process 0 may still be receiving.
    dist.barrier()
    if not world.is_main:
        return None
    predictions, ground_truths = [None] * len(dataset), [None] * len(dataset)
    for rank, (shard_predictions, shard_truths) in enumerate(parts):
        predictions[rank::world.size], ground_truths[rank::world.size] = shard_predictions, shard_truths
    return {**detection_metrics(predictions, ground_truths, dataset.class_names), "num_images": len(dataset)}
