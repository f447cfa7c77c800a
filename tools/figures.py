"""Regenerate the README's images in docs/images/, the one way they are ever produced.

    python tools/figures.py                 # train the main job, then draw everything (~7 min on 2 cores)
    python tools/figures.py --charts-only   # only the chart drawn from bench/results/ (seconds)

- main_job_loss_curve.png, main_job_detections.png: the main job (`make train`, the course
  recipe on the course dataset, CPU) trained into runs/figures/, and its run report's pictures;
  docs/images/main_job_metrics.json keeps the metrics they came with.
- vs_torchvision.png: drawn from bench/results/vs_torchvision.json, which
  `make bench-torchvision` writes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def main_job_images(run: Path) -> None:
    subprocess.run([sys.executable, "-m", "fcos_lib", "train", "--device", "cpu", "--out", str(run), "--overwrite"],
                   cwd=ROOT, check=True)
    shutil.copy(run / "loss_curve.png", IMAGES / "main_job_loss_curve.png")
    shutil.copy(run / "detections.png", IMAGES / "main_job_detections.png")
    metrics = json.loads((run / "metrics.json").read_text())
    keep = ("voc07_map50", "voc_map50", "map50", "map", "iters", "image_size", "train_seconds",
            "train_images_per_s", "fcos_lib_version", "date")
    (IMAGES / "main_job_metrics.json").write_text(json.dumps({k: metrics[k] for k in keep}, indent=2) + "\n")


def charts() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fcos_lib.report import plot_vs_torchvision

    result = json.loads((ROOT / "bench" / "results" / "vs_torchvision.json").read_text())
    ax = plot_vs_torchvision(result)
    ax.figure.savefig(IMAGES / "vs_torchvision.png", dpi=100, bbox_inches="tight")
    plt.close(ax.figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--charts-only", action="store_true", help="skip the main job; redraw the charts")
    args = parser.parse_args(argv)
    IMAGES.mkdir(parents=True, exist_ok=True)
    if not args.charts_only:
        main_job_images(ROOT / "runs" / "figures")
    charts()
    for path in sorted(IMAGES.iterdir()):
        print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
