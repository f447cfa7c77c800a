"""Equal training time: `python -m fcos_lib train` with one set of flags against others, in the same minutes.

    .venv/bin/python bench/equal_time.py --data signs --iters 727 --seeds 0 1 \\
        --results bench/results/p2_equal_time.json -- "" "--p2"

The variants are `train` flags, one quoted string each, after `--` (so that a flag is not read as
one of this script's): "" is the default command.

Chapter 10 compares recipes at equal iterations (the issue's budget). A change that makes each
step dearer (p2: twice the step) can win there and lose in the minutes a user has; this script
measures that second comparison.

- The first variant is the reference: it trains for `--iters` iterations. Each other variant
  trains for as many iterations as take the same time, `--iters` x (reference step / its step).
- The two steps are timed in the same call, back to back, each as (time of 2 + 10 steps - time of
  2 steps) / 10 of a fresh run (the first steps' one-off costs cancel; bench_vs_torchvision.py's
  method; a difference that noise makes <= 0 is timed again, and after three such tries the
  script stops and says so). The timing runs are short, so they step with SGD where a long run
  may use AdamW: its extra cost is a few per cent of a step. A variant timed before keeps its
  timing (`--retime` times it again), so adding a variant reruns nothing else.
- Every run is the command a user types, in its own process:
  `python -m fcos_lib train --data DIR --iters N --batch-size 16 --image-size 224 --in-memory
  --device cpu --seed S FLAGS`. Its metrics.json gives mAP@0.5 and the seconds the training
  really took; machines drift, so compare those too.
- Results: one entry per (variant, dataset, seed) with its command, and the timings, in the
  results file. A run already stored with the same command is skipped, so an interrupted call
  continues where it stopped.

`--data` takes a held-out dataset's name (fcos_lib.heldout: signs, tiles, letters, cells,
aerial; generated on first use) or a VOC-layout folder. Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import TimingNoiseError, seconds_per_step, significant  # noqa: E402
from ablations import mean_range, store_run  # noqa: E402
from fcos_lib.cli import build_parser, config_from_args  # noqa: E402
from fcos_lib.heldout import DATASET_CLASSES, make_held_out_dataset  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "equal_time.json"
UNTIMED_STEPS, TIMED_STEPS = 2, 10
# What the script sets for every run: a variant that set one too would silently override it.
FIXED_FLAGS = ("--data", "--iters", "--batch-size", "--image-size", "--in-memory", "--device", "--seed", "--out",
               "--resume", "--overwrite")


def variant_name(flags: str) -> str:
    """The name a variant is stored and printed under: its flags, or "default" for none."""
    return " ".join(shlex.split(flags)) or "default"


def resolve_data(data: str) -> tuple[str, Path]:
    """(name, folder) of --data: a held-out dataset's name, or a VOC-layout folder."""
    if data in DATASET_CLASSES:
        return data, make_held_out_dataset(data)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--data {data!r} is neither a held-out dataset ({', '.join(DATASET_CLASSES)}) "
                         f"nor a folder. Fix: give one of those names, or the folder holding JPEGImages/ and Annotations/.")
    return root.name, root


def train_argv(root: Path, iters: int, seed: int, flags: str, args) -> list[str]:
    """The `python -m fcos_lib train` arguments of one run (without --out)."""
    return ["train", "--data", str(root), "--iters", str(iters), "--batch-size", str(args.batch_size),
            "--image-size", str(args.image_size), "--in-memory", "--device", args.device, "--seed", str(seed),
            *shlex.split(flags)]


def shown_command(argv: list[str]) -> str:
    """The command line as a user types it: shell-quoted, a path under the home folder written ~/..."""
    home = str(Path.home()) + "/"

    def quoted(arg):
        arg = "~/" + arg[len(home):] if arg.startswith(home) else arg
        return "~/" + shlex.quote(arg[2:]) if arg.startswith("~/") else shlex.quote(arg)
    return "python -m fcos_lib " + " ".join(quoted(a) for a in argv)


def store_timing(path: Path, dataset: str, name: str, entry: dict) -> dict:
    """Store a variant's step timing on `dataset` in the results file, re-read just before writing
    (as ablations.store_run does for runs). Returns the results written."""
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results.setdefault("timing", {}).setdefault(dataset, {})[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def step_seconds(root: Path, flags: str, args, out: Path) -> float:
    """Seconds per training step of `flags`: (time of 2 + 10 steps - time of 2 steps) / 10, fresh runs
    (`--timing-steps` sets 2 and 10)."""
    from fcos_lib.train import train

    def seconds(n: int) -> float:
        argv = train_argv(root, n, args.seeds[0], flags, args)
        cfg = config_from_args(build_parser().parse_args([*argv, "--out", str(out)]))
        return train(cfg, progress=False, overwrite=True)["train_seconds"]

    return seconds_per_step(seconds, *args.timing_steps)


def run_command(root: Path, iters: int, seed: int, flags: str, args, out: Path) -> dict:
    """Run the command in its own process; return its metrics.json."""
    argv = train_argv(root, iters, seed, flags, args)
    subprocess.run([sys.executable, "-m", "fcos_lib", *argv, "--out", str(out), "--overwrite"], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def summary(results: dict, dataset: str, variants: list[str]) -> str:
    """Per variant: iterations, training seconds (min-max), mAP@0.5 and mAP@[.5:.95] mean (min-max) over the seeds."""
    width = max(28, max(len(name) for name in variants) + 2)
    lines = [f"{dataset:{width}s}{'iters':>6s}  {'train s':13s}{'mAP@0.5':>22s}{'mAP@[.5:.95]':>22s}"]
    for name in variants:
        found = [v for k, v in results["runs"].items() if k.startswith(f"{name} | {dataset} | seed ")]
        if not found:
            lines.append(f"{name:{width}s}  not measured")
            continue
        seconds = [f["train_seconds"] for f in found]
        lines.append(f"{name:{width}s}{found[0]['iters']:6d}  {min(seconds):5.0f}-{max(seconds):<7.0f}"
                     + "".join(f"{mean_range([f[k] for f in found]):>22s}" for k in ("map50", "map")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a held-out dataset's name, or a VOC-layout folder")
    parser.add_argument("--iters", type=int, required=True, help="the reference's (first variant's) iterations")
    parser.add_argument("variants", nargs="+", metavar="FLAGS",
                        help='after --: `train` flags per variant, quoted, the reference first ("" = the default command)')
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing-steps", type=int, nargs=2, default=[UNTIMED_STEPS, TIMED_STEPS],
                        metavar=("UNTIMED", "TIMED"), help="steps of the timing runs (default: 2 10)")
    parser.add_argument("--retime", action="store_true", help="time the variants again, even those timed before")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default="runs/equal_time")
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters must be >= 1")
    if len(args.variants) < 2:
        parser.error('give the reference and at least one other variant after --, e.g. -- "" "--p2"')
    untimed, timed = args.timing_steps
    if untimed < 1 or timed < 1:
        parser.error("--timing-steps needs two counts >= 1")
    for flags in args.variants:
        fixed = [f for f in shlex.split(flags) if f.split("=")[0] in FIXED_FLAGS]
        if fixed:
            parser.error(f"the variant {flags!r} sets {', '.join(fixed)}, which this script sets for every run. "
                         "Fix: leave it out of the variant (use --iters, --seeds, --batch-size, --image-size, "
                         "--device or --data of this script)")
    names = [variant_name(v) for v in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"a variant is given twice: {names}")
    dataset, root = resolve_data(args.data)
    path, out = Path(args.results), Path(args.out) / dataset
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    timing = results.get("timing", {}).get(dataset, {})
    reference, others = args.variants[0], args.variants[1:]

    # Timing: each variant not timed before, beside the reference, in this call.
    iters = {names[0]: args.iters}
    for flags, name in zip(others, names[1:]):
        known = timing.get(name)
        if args.retime or known is None or known.get("reference") != names[0]:
            print(f"timing {names[0]!r} and {name!r}: {untimed} + {timed} steps each ...", flush=True)
            try:
                ref_s = step_seconds(root, reference, args, out / "timing")
                var_s = step_seconds(root, flags, args, out / "timing")
            except TimingNoiseError as err:
                parser.exit(2, f"error: timing {name!r}: {err} (--timing-steps {untimed} {2 * timed}, say)\n")
            known = {"reference": names[0], "reference_step_seconds": significant(ref_s),
                     "step_seconds": significant(var_s),
                     "how": f"{untimed} + {timed} steps, batch {args.batch_size}, {args.image_size} px, {args.device}",
                     "measured": time.strftime("%Y-%m-%d %H:%M")}
            results = store_timing(path, dataset, name, known)  # now: an interrupted call keeps it
        ratio = known["reference_step_seconds"] / known["step_seconds"]
        iters[name] = max(1, math.floor(args.iters * ratio))
        print(f"{name!r}: step {known['step_seconds']:.4g} s against {known['reference_step_seconds']:.4g} s "
              f"-> {iters[name]} iterations in the time of {args.iters}", flush=True)

    for seed in args.seeds:
        for flags, name in zip(args.variants, names):
            key = f"{name} | {dataset} | seed {seed}"
            command = shown_command(train_argv(root, iters[name], seed, flags, args))
            if results["runs"].get(key, {}).get("command") == command:
                print(f"have  {key}")
                continue
            print(f"run   {key}: {command}", flush=True)
            metrics = run_command(root, iters[name], seed, flags, args, out / f"seed{seed}" / name.replace(" ", "_"))
            entry = {"command": command, **{k: metrics[k] for k in ("iters", "train_seconds", "train_images_per_s",
                                                                     "map50", "map", "voc07_map50", "date")}}
            results = store_run(path, key, entry)
            print(f"done  {key}: mAP@0.5 {entry['map50']:.3f}, {entry['train_seconds']:.0f} s of training", flush=True)
    print(summary(results, dataset, names))


if __name__ == "__main__":
    main()
