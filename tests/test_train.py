"""Tests of chapter 09 (fcos_lib.config, checkpoint, train, report, evaluate): resumable training, checkpoints, metrics."""
import json

import pytest
import torch

from fcos_lib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fcos_lib.config import TrainConfig, baseline_recipe, improved_recipe, resolve_device
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset
from fcos_lib.evaluate import evaluate, format_ap_table
from fcos_lib.report import write_run_report
from fcos_lib.train import (DeviceBatches, IterationBatchSampler, lr_multiplier, random_horizontal_flip, train,
                             training_batches)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_course_dataset(tmp_path_factory.mktemp("data") / "voc", num_train=8, num_val=4, seed=3)


def tiny_cfg(data, out, **changes) -> TrainConfig:
    # 64-px inputs, 16 FPN channels, 2 head convs: a few milliseconds per iteration.
    return improved_recipe(
        data=str(data), image_size=64, batch_size=2, fpn_channels=16, num_convs=2, iters=20,
        warmup_iters=3, num_workers=0, device="cpu", out=str(out), checkpoint_every=1000,
    ).replace(**changes)


def test_resume_continues_exactly(tiny_data, tmp_path):
    # 8 iterations straight, and 4 + stop + resume + 4, give bit-identical weights (the issue's
    # 20 vs 10 + 10 is the same test; 8 keeps CI fast). The stop falls inside an epoch (8 images,
    # batch 2) and inside the warm-up, so the data order, flips and learning rate must all resume.
    straight = train(tiny_cfg(tiny_data, tmp_path / "a", iters=8, warmup_iters=6), progress=False)
    cfg = tiny_cfg(tiny_data, tmp_path / "b", iters=8, warmup_iters=6)
    half = train(cfg, progress=False, stop_after=4)
    assert half["iteration"] == 4
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["iteration"] == 8
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert straight["history"] == resumed["history"]


def test_interrupted_run_keeps_a_checkpoint(tiny_data, tmp_path, monkeypatch):
    # A crash mid-training (here: the 4th forward raises) still leaves last.pt at the last finished iteration.
    cfg = tiny_cfg(tiny_data, tmp_path)
    from fcos_lib import model as model_module

    calls = {"n": 0}
    forward = model_module.FCOS.forward

    def failing_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model_module.FCOS, "forward", failing_forward)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 3


def test_resume_with_other_classes_is_refused(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, iters=2), progress=False)
    with pytest.raises(CheckpointError, match="trained on classes"):
        train(tiny_cfg(tiny_data, tmp_path, iters=4, classes=("cross", "ellipse", "rectangle", "star", "triangle", "disk")), resume=True, progress=False)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an fcos_lib checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_sampler_is_a_function_of_the_iteration():
    full = list(IterationBatchSampler(7, 3, num_iters=6, seed=5))
    assert list(IterationBatchSampler(7, 3, num_iters=6, start_iter=4, seed=5)) == full[4:]
    stream = [i for b in full for i in b]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))  # epochs


def test_flip_moves_boxes_with_pixels():
    # A 1-px bright column at x = 2 in an image 10 px wide, inside the box x in [1, 4): after the
    # flip the column is at x = 7 and the box at [10 - 4, 10 - 1) = [6, 9).
    images = torch.zeros(2, 3, 4, 10)
    images[..., 2] = 1
    boxes = torch.tensor([[[1.0, 0, 4, 4, 0]], [[-1.0, -1, -1, -1, -1]]])
    out_images, out_boxes = random_horizontal_flip(images, boxes, torch.Generator().manual_seed(0), p=1.0)
    assert out_images[0, 0, 0].nonzero().flatten().tolist() == [7]
    assert out_boxes[0, 0].tolist() == [6.0, 0.0, 9.0, 4.0, 0.0]
    assert out_boxes[1, 0].tolist() == [-1.0] * 5  # padding untouched
    assert images[0, 0, 0, 2] == 1  # input not modified


def test_learning_rate_schedules():
    step = baseline_recipe(iters=100)
    assert [round(lr_multiplier(i, step), 6) for i in (0, 59, 60, 90)] == [1.0, 1.0, 0.1, 0.01]
    cosine = improved_recipe(iters=100, warmup_iters=10, schedule="cosine")
    assert lr_multiplier(0, cosine) == pytest.approx(0.001)
    assert lr_multiplier(50, cosine) == pytest.approx(0.5)
    assert lr_multiplier(100, cosine) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, cosine.replace(schedule="linear"))


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_run_report_and_evaluate_agree(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path, iters=4)
    state = train(cfg, progress=False)
    metrics = write_run_report(cfg, state)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert {"map50", "map", "per_class_ap50", "per_class_ap", "iters", "train_images_per_s"} <= set(saved)
    assert saved["iters"] == 4 and saved["map50"] == metrics["map50"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0 and (tmp_path / "detections.png").stat().st_size > 0
    for key in ("map50", "map", "voc07_map50", "voc_map50"):
        assert saved[key] == metrics[key] and 0.0 <= saved[key] <= 1.0, key
    assert saved["per_class_ap50"] == metrics["per_class_ap50"]
    table = format_ap_table(metrics)
    assert table.splitlines()[-1].startswith("mean") and f"{metrics['map50']:.3f}" in table


def test_evaluate_perfect_and_empty_predictions(tiny_data, monkeypatch):
    # A "model" that returns the ground truth scores AP 1; one that returns nothing scores 0.
    from fcos_lib import evaluate as evaluate_module
    from fcos_lib.transforms import boxes_to_original

    val = VOCDataset(tiny_data, "val", image_size=64)

    def oracle(model, images, targets, **kwargs):
        return [{"boxes": boxes_to_original(t["boxes"], t), "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]}
                for t in targets]

    def blind(model, images, targets, **kwargs):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)} for _ in targets]

    for fake, expected in ((oracle, 1.0), (blind, 0.0)):
        monkeypatch.setattr(evaluate_module, "detect", fake)
        result = evaluate(torch.nn.Identity(), val)
        for key in ("map50", "map", "voc07_map50", "voc_map50"):
            assert result[key] == pytest.approx(expected, abs=1e-6), key


# ---------------------------------------------------------------- resume refuses another run

@pytest.mark.parametrize("change", [
    {"iters": 30}, {"batch_size": 3}, {"lr": 0.05}, {"schedule": "step"}, {"image_size": 96}, {"seed": 1},
])
def test_resume_with_a_changed_recipe_is_refused_in_one_line(tiny_data, tmp_path, change):
    train(tiny_cfg(tiny_data, tmp_path, iters=2), progress=False)
    before = load_checkpoint(tmp_path / "last.pt")
    (name, value), = change.items()
    with pytest.raises(CheckpointError) as err:
        train(tiny_cfg(tiny_data, tmp_path, iters=2).replace(**change), resume=True, progress=False)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and f"{name} {before['config'][name]!r} -> {value!r}" in message
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2  # the refused resume wrote nothing


def test_resume_may_change_where_and_how_it_runs(tiny_data, tmp_path):
    # Device, workers, in-memory loading and the checkpoint interval do not change what is learnt.
    train(tiny_cfg(tiny_data, tmp_path, iters=4), progress=False, stop_after=2)
    cfg = tiny_cfg(tiny_data, tmp_path, iters=4, num_workers=1, in_memory=True, checkpoint_every=3)
    assert train(cfg, resume=True, progress=False)["iteration"] == 4


def test_resume_on_changed_data_is_refused(tiny_data, tmp_path):
    import re
    import shutil

    data = shutil.copytree(tiny_data, tmp_path / "voc")
    train(tiny_cfg(data, tmp_path / "run", iters=2), progress=False)
    first = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    xml = data / "Annotations" / f"{first}.xml"
    xml.write_text(xml.read_text() + "\n")  # the same annotation, written differently: accepted
    assert train(tiny_cfg(data, tmp_path / "run", iters=2), resume=True, progress=False)["iteration"] == 2
    text = xml.read_text()  # one box moved by a pixel: another dataset
    xmin = re.search(r"<xmin>(\d+)</xmin>", text)
    xml.write_text(text[:xmin.start(1)] + str(int(xmin.group(1)) + 1) + text[xmin.end(1):])
    with pytest.raises(CheckpointError, match="holds other images or boxes"):
        train(tiny_cfg(data, tmp_path / "run", iters=2), resume=True, progress=False)


def test_cpu_checkpoint_resumes_with_mixed_precision_and_back(tiny_data, tmp_path, monkeypatch):
    # A CPU run saves a disabled (empty) GradScaler state. Resumed where AMP is on (a GPU), the
    # scaler must start fresh instead of raising. The AMP side is built here as CUDA builds it,
    # an enabled GradScaler, on the CPU device so that no GPU is needed.
    from fcos_lib import train as train_module

    cfg = tiny_cfg(tiny_data, tmp_path, iters=4)
    train(cfg, progress=False, stop_after=2)
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] == {}
    enabled = lambda device, amp: torch.amp.GradScaler("cpu", enabled=True)  # noqa: E731
    monkeypatch.setattr(train_module, "make_grad_scaler", enabled)
    state = train(cfg, resume=True, progress=False, stop_after=1)
    assert state["iteration"] == 3 and state["scaler"]["scale"] > 0  # an "AMP" checkpoint now
    # ... and the AMP checkpoint resumes where AMP is off (the CPU): its scaler state is ignored.
    monkeypatch.undo()
    assert train(cfg, resume=True, progress=False)["iteration"] == 4


# ---------------------------------------------------------------- checkpoint files

def test_checkpoint_writes_are_fsynced_and_never_share_a_temporary_file(tmp_path, monkeypatch):
    import os
    import threading

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    save_checkpoint(tmp_path / "last.pt", {"iteration": 0})
    assert len(synced) >= 1  # the file's bytes (and, on POSIX, the folder's rename)

    # Two writers at once: each uses its own temporary file, so every save succeeds and the
    # final file is one writer's complete checkpoint.
    errors = []

    def writer(k):
        try:
            for i in range(20):
                save_checkpoint(tmp_path / "last.pt", {"writer": k, "iteration": i, "w": torch.full((1000,), k)})
        except Exception as err:  # noqa: BLE001 - collect, then fail the test below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = torch.load(tmp_path / "last.pt", weights_only=True)
    assert final["iteration"] == 19 and torch.equal(final["w"], torch.full((1000,), final["writer"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


class _Payload:
    def __reduce__(self):  # unpickling calls print: a stand-in for running any code
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoints_load_with_weights_only(tmp_path, capsys):
    torch.save({"model": {}, "config": {}, "class_names": [], "iteration": 0, "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out


# ---------------------------------------------------------------- the metric and `difficult`

def test_difficult_objects_are_neither_hits_nor_misses(tmp_path, monkeypatch):
    # One 100 x 100 image, class "a": a normal box N = (10, 10, 50, 50) and a difficult box
    # D = (60, 60, 90, 90). Known answers for every metric:
    #   detect N only                      -> AP 1 (missing D costs nothing)
    #   detect D (score 0.9), N (score 0.8) -> AP 1 (the detection on D is not a false positive)
    #   detect nothing on N, only D        -> AP 0 (and not "undefined": N is still a miss)
    # Counting D as a miss would give AP 0.5 in the first case; counting a detection on D as a
    # false positive would put precision 1/2 at recall 1 in the second case (AP 0.5 all-point).
    from PIL import Image

    from fcos_lib import evaluate as evaluate_module

    root = tmp_path / "voc"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (100, 100), (50, 50, 50)).save(root / "JPEGImages" / "x.jpg")
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><size><width>100</width><height>100</height></size>"
        "<object><name>a</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>50</xmax><ymax>50</ymax></bndbox></object>"
        "<object><name>a</name><difficult>1</difficult><bndbox><xmin>61</xmin><ymin>61</ymin><xmax>90</xmax><ymax>90</ymax></bndbox></object>"
        "</annotation>")
    (root / "ImageSets" / "Main" / "val.txt").write_text("x\n")
    dataset = VOCDataset(root, "val", image_size=64)
    N, D = [10.0, 10, 50, 50], [60.0, 60, 90, 90]
    cases = {"N only": ([N], [0.9], 1.0), "D above N": ([D, N], [0.9, 0.8], 1.0), "D only": ([D], [0.9], 0.0)}
    for name, (boxes, scores, expected) in cases.items():
        fake = {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.zeros(len(boxes), dtype=torch.long)}
        monkeypatch.setattr(evaluate_module, "detect", lambda model, images, targets, **kw: [dict(fake)])
        result = evaluate(torch.nn.Identity(), dataset)
        for key in ("map50", "voc07_map50", "voc_map50"):
            assert result[key] == pytest.approx(expected, abs=1e-6), (name, key)


def test_device_batches_equal_the_data_loader_batches(tiny_data):
    # The split on the device, gathered by index, gives the DataLoader's batches: the same uint8
    # images, and gt_boxes padded to the same N (the most boxes in the batch), on empty images too.
    from fcos_lib.data import collate_detection

    dataset = VOCDataset(tiny_data, "train", image_size=64, image_dtype=torch.uint8)
    resident = DeviceBatches(dataset, torch.device("cpu"))
    for indices in ([0, 1, 2], [3], [7, 0, 5, 5]):
        images, gt_boxes = resident.batch(indices)
        want_images, want_boxes, _ = collate_detection([dataset[i] for i in indices])
        assert images.dtype == torch.uint8 and torch.equal(images, want_images)
        assert torch.equal(gt_boxes, want_boxes)
    with pytest.raises(ValueError, match="image_dtype=torch.uint8"):
        DeviceBatches(VOCDataset(tiny_data, "train", image_size=64), torch.device("cpu"))


def test_in_memory_and_data_loader_training_are_the_same_run(tiny_data, tmp_path):
    # The two ways batches reach the step (DeviceBatches; DataLoader with a worker process) train
    # bit-identical weights: uint8 all the way, flipped and converted on the device alike.
    runs = [train(tiny_cfg(tiny_data, tmp_path / name, iters=4, in_memory=in_memory, num_workers=workers),
                  progress=False)["model"] for name, in_memory, workers in (("a", True, 0), ("b", False, 1))]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_training_batches_are_uint8_on_the_device(tiny_data):
    dataset = VOCDataset(tiny_data, "train", image_size=64, image_dtype=torch.uint8)
    sampler = IterationBatchSampler(len(dataset), batch_size=2, num_iters=2)
    for in_memory in (True, False):
        cfg = tiny_cfg(tiny_data, "unused", in_memory=in_memory)
        batches = list(training_batches(dataset, sampler, cfg, torch.device("cpu")))
        assert len(batches) == 2 and all(images.dtype == torch.uint8 and images.shape == (2, 3, 64, 64)
                                         for images, _ in batches)


def test_training_leaves_torch_threads_as_it_found_them(tiny_data, tmp_path):
    before = torch.get_num_threads()
    train(tiny_cfg(tiny_data, tmp_path, iters=1, num_threads=1), progress=False)
    assert torch.get_num_threads() == before


def test_cpu_bf16_trains_in_bfloat16_and_float32_stays_the_default(tiny_data, tmp_path):
    # cpu_bf16 runs the forward under bfloat16 autocast: finite losses, other weights than the
    # float32 run (so autocast was on); without it the run is the float32 one, unchanged.
    assert TrainConfig().cpu_bf16 is False
    fp32 = train(tiny_cfg(tiny_data, tmp_path / "fp32", iters=3), progress=False)
    bf16 = train(tiny_cfg(tiny_data, tmp_path / "bf16", iters=3, cpu_bf16=True), progress=False)
    assert all(torch.isfinite(torch.tensor([h["loss_cls"], h["loss_box"], h["loss_ctr"]])).all() for h in bf16["history"])
    assert any(not torch.equal(fp32["model"][k], bf16["model"][k]) for k in fp32["model"])
    assert all(v.dtype == fp32["model"][k].dtype for k, v in bf16["model"].items())  # the weights stay float32
    with pytest.raises(ValueError, match="TrainConfig.cpu_bf16 must be True or False"):
        TrainConfig(cpu_bf16=1)


def test_vs_torchvision_chart_names_the_data_and_seeds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fcos_lib.report import plot_vs_torchvision

    scores = {"voc07_map50": 0.3, "voc_map50": 0.31, "map50": 0.32, "map": 0.15, "train_images_per_s": 25.0}
    result = {"iters": 828, "batch_size": 16, "image_size": 224, "fcos_lib": scores,
              "torchvision": {**scores, "map50": 0.25}}
    ax = plot_vs_torchvision(result)  # a result without data and seeds, as the first benchmark wrote
    assert ax.get_title() == "828 iterations, batch 16, 224 px"
    ax = plot_vs_torchvision({**result, "data": "fcos_lib.heldout: signs", "seeds": [0, 1]})
    assert ax.get_title() == "signs, mean of 2 seeds: 828 iterations, batch 16, 224 px"
    assert [round(b.get_height(), 2) for b in ax.patches] == [0.3, 0.31, 0.32, 0.15, 0.3, 0.31, 0.25, 0.15]
    plt.close("all")
