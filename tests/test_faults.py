"""Fault injection: the ways real users lose runs or time, each tried the way they happen.

Run folders (an old run overwritten, two runs at once, a run that fails before its first step),
pre-flight (problems found before training, all at once), real exports (border-crossing boxes,
EXIF-rotated phone photos, a BOM in a split file, an empty val.txt, broken boxes), signals and
checkpoints (SIGTERM, kill -9, Ctrl-C then --resume), and nonsense numbers on the command line.
The detect/evaluate commands and the library's own input checks have their own test modules
(test_cli_evaluate_detect.py, test_library_inputs.py).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from PIL import Image, ImageOps

from fcos_lib.checkpoint import load_checkpoint
from fcos_lib.cli import main
from fcos_lib.config import improved_recipe
from fcos_lib.course_data import make_course_dataset
from fcos_lib.data import VOCDataset, load_image
from fcos_lib.train import TrainingInterrupted, train
from fcos_lib.voc import DatasetError

TINY = ["--image-size", "64", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_course_dataset(tmp_path_factory.mktemp("data") / "voc", num_train=6, num_val=3, seed=2)


def run(*argv) -> int:
    return main(["train", *argv])


def tiny_cfg(data, out, **changes):
    return improved_recipe(
        data=str(data), image_size=64, batch_size=2, fpn_channels=16, num_convs=2, iters=6, warmup_iters=2,
        num_workers=0, device="cpu", out=str(out), checkpoint_every=1000,
    ).replace(**changes)


def error_lines(capsys, argv) -> list[str]:
    """Run the command, which must fail cleanly: exit 2, `error: ...`, no traceback."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and "Traceback" not in "\n".join(lines), lines
    return lines


# ---------------------------------------------------------------- 1. a run folder is never silently overwritten

def test_a_new_run_into_a_folder_with_a_run_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--data", str(data), "--out", str(out), "--iters", "2", *TINY) == 0
    before = (out / "last.pt").read_bytes()
    err = error_lines(capsys, ["train", "--data", str(data), "--out", str(out), "--iters", "3", *TINY])
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert (out / "last.pt").read_bytes() == before
    assert run("--data", str(data), "--out", str(out), "--iters", "3", "--overwrite", *TINY) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 3


def test_a_run_that_fails_before_its_first_step_writes_nothing(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run("--data", str(data), "--out", str(out), "--iters", "2", *TINY) == 0
    before = (out / "last.pt").read_bytes()
    # A bad flag (the issue's --workers -1), then a crash in the very first forward.
    error_lines(capsys, ["train", "--data", str(data), "--out", str(out), "--iters", "3", "--workers", "-1", "--overwrite", *TINY])
    from fcos_lib import model as model_module

    def broken_forward(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(model_module.FCOS, "forward", broken_forward)
    error_lines(capsys, ["train", "--data", str(data), "--out", str(out), "--iters", "3", "--overwrite", *TINY])
    assert (out / "last.pt").read_bytes() == before


def test_a_second_run_on_the_same_folder_refuses_while_the_first_holds_it(data, tmp_path, capsys):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a first, running `train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345")
        held.flush()
        err = error_lines(capsys, ["train", "--data", str(data), "--out", str(out), "--iters", "2", *TINY])
    assert len(err) == 1 and "in use by another training run (pid 12345)" in err[0]
    assert not (out / "last.pt").exists()
    assert run("--data", str(data), "--out", str(out), "--iters", "1", *TINY) == 0  # released: free again


def test_an_unwritable_run_folder_is_refused_before_training(data, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    err = error_lines(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "a_file"), "--iters", "2", *TINY])
    assert "is a file, not a folder" in err[0]
    err = error_lines(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "a_file" / "run"), "--iters", "2", *TINY])
    assert "cannot write to the run folder" in err[0]


# ---------------------------------------------------------------- 2. pre-flight: every problem, before training

def test_preflight_reports_every_broken_image_at_once_before_training(data, tmp_path, capsys):
    import shutil

    bad = shutil.copytree(data, tmp_path / "voc")
    train_ids = (bad / "ImageSets/Main/train.txt").read_text().split()
    val_ids = (bad / "ImageSets/Main/val.txt").read_text().split()
    jpeg = (bad / "JPEGImages" / f"{train_ids[0]}.jpg").read_bytes()
    (bad / "JPEGImages" / f"{train_ids[0]}.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    (bad / "JPEGImages" / f"{train_ids[1]}.jpg").write_bytes(b"")  # 0 bytes
    with Image.open(bad / "JPEGImages" / f"{val_ids[0]}.jpg") as im:  # resized by someone
        im.resize((im.width // 2, im.height // 2)).save(bad / "JPEGImages" / f"{val_ids[0]}.jpg")
    out = tmp_path / "run"
    lines = error_lines(capsys, ["train", "--data", str(bad), "--out", str(out), "--iters", "2", *TINY])
    assert lines[0].startswith("error: 3 problems in")
    report = "\n".join(lines)
    assert "2 x unreadable image" in report and train_ids[0] in report and train_ids[1] in report
    assert "1 x size mismatch" in report and val_ids[0] in report
    assert not (out / "last.pt").exists()


def test_an_empty_val_split_is_found_before_training(data, tmp_path, capsys):
    import shutil

    voc = shutil.copytree(data, tmp_path / "voc")
    (voc / "ImageSets/Main/val.txt").write_text("")
    err = error_lines(capsys, ["train", "--data", str(voc), "--out", str(tmp_path / "run"), "--iters", "2", *TINY])
    assert len(err) == 1 and "split 'val' is empty" in err[0] and "--val-split" in err[0]
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- 3. real exports train

CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")


def labelimg_xml(filename, W, H, objects) -> str:
    """An annotation as LabelImg writes it (folder, path, source, pose, truncated)."""
    body = "".join(f"""
    <object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
        <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""
                   for name, (x1, y1, x2, y2) in objects)
    return (f"<annotation><folder>images</folder><filename>{filename}</filename><path>C:\\export\\{filename}</path>"
            f"<source><database>Unknown</database></source><size><width>{W}</width><height>{H}</height>"
            f"<depth>3</depth></size><segmented>0</segmented>{body}\n</annotation>\n")


def exif_rotated_photo(path, upright: Image.Image) -> None:
    """Save `upright` as a phone does in portrait: pixels turned, plus EXIF Orientation 6 ("turn me 90 CW")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def make_facemask_like_export(root):
    """A small export with what real ones have: border-crossing boxes, EXIF-rotated JPEGs (annotated in
    either frame), a BOM and CRLF in a split file, an empty val.txt, and a test split."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = []
    for i in range(8):
        W, H = 96, 72
        image = Image.new("RGB", (W, H), (40 + 20 * i, 90, 120))
        image.paste((230, 30, 30), (20, 16, 52, 48))  # the "face", drawn in the upright frame
        name = f"maksssksksss{i}"
        box = (21, 17, 52, 48)  # 1-based inclusive = pixels 20..51, 16..47
        objects = [(CLASSES[i % 3], box)]
        if i in (1, 2):  # dragged past the border by a pixel or two, as LabelImg allows
            objects.append((CLASSES[(i + 1) % 3], (60, 40, W + 1, H + 2) if i == 1 else (0, -1, 30, 20)))
        if i == 3:  # a phone photo annotated upright (the XML's <size> is the upright size)
            exif_rotated_photo(root / "JPEGImages" / f"{name}.jpg", image)
            (root / "Annotations" / f"{name}.xml").write_text(labelimg_xml(f"{name}.jpg", W, H, objects))
        elif i == 4:  # a phone photo annotated in its stored frame (a tool that ignores EXIF)
            exif_rotated_photo(root / "JPEGImages" / f"{name}.jpg", image)
            stored = image.transpose(Image.Transpose.ROTATE_90)  # H x W
            # box (x1, y1, x2, y2) in the upright frame -> (y1, W - x2, y2, W - x1) after a 90 degree CCW turn
            stored_box = (17, W - 52 + 1, 48, W - 21 + 1)
            (root / "Annotations" / f"{name}.xml").write_text(
                labelimg_xml(f"{name}.jpg", stored.width, stored.height, [(CLASSES[1], stored_box)]))
        else:
            image.save(root / "JPEGImages" / f"{name}.png")
            (root / "Annotations" / f"{name}.xml").write_text(labelimg_xml(f"{name}.png", W, H, objects))
        ids.append(name)
    main_dir = root / "ImageSets" / "Main"
    (main_dir / "train.txt").write_bytes(("\ufeff" + "\r\n".join(ids[:6]) + "\r\n").encode("utf-8"))  # BOM, CRLF
    (main_dir / "val.txt").write_text("")  # real exports ship an empty one
    (main_dir / "test.txt").write_text("\n".join(ids[6:] + ids[3:5]) + "\n")
    return root


def test_a_labelimg_style_export_trains_without_editing_the_data(tmp_path, capsys):
    export = make_facemask_like_export(tmp_path / "facemask")
    out = tmp_path / "run"
    assert run("--data", str(export), "--val-split", "test", "--out", str(out), "--iters", "2", *TINY) == 0
    printed = capsys.readouterr().out
    assert "2 boxes crossed the image border by a little" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and set(metrics["per_class_ap50"]) == set(CLASSES)


@pytest.mark.parametrize("image_id", ["maksssksksss3", "maksssksksss4"])
def test_exif_rotated_photos_are_read_in_the_frame_their_xml_was_drawn_in(tmp_path, image_id):
    # maksssksksss3's XML is in the upright frame, maksssksksss4's in the stored one; in both, the
    # red "face" must lie under the box that training sees.
    export = make_facemask_like_export(tmp_path / "facemask")
    dataset = VOCDataset(export, "test", class_names=CLASSES, image_size=64)
    i = dataset.image_ids.index(image_id)
    image, target = dataset[i]
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    inside = image[:, int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2]  # (3, h, w), away from the edges
    assert inside[0].mean() > 0.75 and inside[1].mean() < 0.3, "the box is not on the red face"
    upright = dataset.annotations[i]["upright"]
    assert upright == (image_id == "maksssksksss3")


def test_detect_and_load_image_use_the_upright_photo(tmp_path):
    export = make_facemask_like_export(tmp_path / "facemask")
    path = export / "JPEGImages" / "maksssksksss3.jpg"
    with Image.open(path) as im:
        assert im.size == (72, 96)  # stored sideways
    assert load_image(path).size == (96, 72)  # as every photo viewer shows it
    assert load_image(path, upright=False).size == (72, 96)


@pytest.mark.parametrize("xml_box, reason", [
    (("nan", 5, 20, 30), "not a finite number"),
    ((30, 5, 20, 30), "degenerate"),
    ((97, 5, 98, 30), "empty once clipped"),
    ((5, 5, 120, 30), "outside the 96 x 72 image"),
])
def test_broken_boxes_are_refused_or_skipped_with_a_flag_and_each_reported(tmp_path, capsys, xml_box, reason):
    export = make_facemask_like_export(tmp_path / "facemask")
    xml = export / "Annotations" / "maksssksksss0.xml"
    xml.write_text(labelimg_xml("maksssksksss0.png", 96, 72, [(CLASSES[0], xml_box)]))
    out = tmp_path / "run"
    argv = ["train", "--data", str(export), "--val-split", "test", "--out", str(out), "--iters", "1", *TINY]
    err = error_lines(capsys, argv)
    assert reason in err[0] and "maksssksksss0.xml" in err[0]
    assert main([*argv, "--skip-bad-boxes"]) == 0
    printed = capsys.readouterr().out
    assert "skipped maksssksksss0" in printed and reason in printed


# ---------------------------------------------------------------- 4. signals and checkpoints

def _signal_at_forward(monkeypatch, call: int, signum: int):
    from fcos_lib import model as model_module

    forward, calls = model_module.FCOS.forward, {"n": 0}

    def forward_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)  # arrives in the middle of an iteration
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model_module.FCOS, "forward", forward_then_signal)


def test_sigterm_checkpoints_prints_one_line_and_exits_143(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _signal_at_forward(monkeypatch, call=3, signum=signal.SIGTERM)
    assert run("--data", str(data), "--out", str(out), "--iters", "6", *TINY) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SIGTERM after iteration 3" in err[0] and "--resume" in err[0]
    assert load_checkpoint(out / "last.pt")["iteration"] == 3  # the interrupted iteration was finished


def test_sigterm_to_the_process_group_with_workers_checkpoints_and_exits_143(data, tmp_path):
    # `timeout` and job schedulers signal the whole group: the DataLoader's workers die too, and
    # PyTorch says so, maybe before the main process's handler runs. Still a stop, not an error.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fcos_lib", "train", "--data", str(data), "--out", str(out), "--iters", "100000",
               "--workers", "2", "--checkpoint-every", "1", *TINY]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:  # wait until the loop runs: its first checkpoint is written
            if line.startswith("training on"):
                break
        deadline = time.monotonic() + 120
        while not (out / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-2000:]
    # "after iteration N" from the loop, or the command line's line when the workers' death is raised
    # after the loop's last save (PyTorch's SIGCHLD handler, held during the write): a stop either way.
    assert "interrupted by SIGTERM" in err and "--resume" in err and "error" not in err, err[-2000:]
    assert load_checkpoint(out / "last.pt")["iteration"] > 0


def test_a_signal_during_a_checkpoint_write_is_handled_once_the_file_is_whole(tmp_path, monkeypatch):
    # A group signal kills the DataLoader's workers, and PyTorch's SIGCHLD handler raises wherever
    # the main process is, often inside torch.save ("unexpected pos ..."). Here: a handler that
    # raises, as the command line's SIGTERM handler does, with the signal sent in the middle of the save.
    from fcos_lib import checkpoint as checkpoint_module

    class Stopped(Exception):
        pass

    def raise_stopped(signum, frame):
        raise Stopped()

    save = torch.save

    def save_with_a_signal_inside(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_with_a_signal_inside)
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        with pytest.raises(Stopped):
            checkpoint_module.save_checkpoint(tmp_path / "last.pt", {"iteration": 7, "w": torch.arange(1000.0)})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous
    saved = torch.load(tmp_path / "last.pt")
    assert saved["iteration"] == 7 and torch.equal(saved["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


@pytest.mark.parametrize("signal_name, status", [("Terminated", 143), ("Interrupt", 130), ("Killed", 2)])
def test_workers_stopped_by_a_group_signal_before_the_loop_is_a_stop_not_an_error(data, tmp_path, capsys, monkeypatch,
                                                                                  signal_name, status):
    # The same group signal can reach the workers while the data is still being checked, before any
    # iteration: a stop (one line, 128 + signum), while a worker killed for memory (SIGKILL) stays an error.
    from fcos_lib import train as train_module

    def workers_stopped(*args, **kwargs):
        raise RuntimeError(f"DataLoader worker (pid 4242) is killed by signal: {signal_name}. ")

    monkeypatch.setattr(train_module, "preflight", workers_stopped)
    assert run("--data", str(data), "--out", str(tmp_path / "run"), "--iters", "3", *TINY) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if status == 2:
        assert err[0].startswith("error: ") and "Killed" in err[0]
    else:
        name = {143: "SIGTERM", 130: "SIGINT"}[status]
        assert err[0].startswith(f"interrupted by {name};") and "--resume" in err[0] and "error" not in err[0]


@pytest.mark.parametrize("message, signalled, expected", [
    ("DataLoader worker (pid 1) is killed by signal: Terminated. ", None, signal.SIGTERM),
    ("DataLoader worker (pid 1) is killed by signal: Interrupt. ", None, signal.SIGINT),
    ("DataLoader worker (pid 1) is killed by signal: Killed. ", None, None),  # out of memory: an error
    ("DataLoader worker (pid(s) 1) exited unexpectedly", None, None),  # nobody signalled us: an error
    ("DataLoader worker (pid(s) 1) exited unexpectedly", signal.SIGTERM, signal.SIGTERM),  # we were: a stop
    ("CUDA out of memory", signal.SIGTERM, None),  # not about the workers at all
])
def test_worker_stop_signal_tells_a_group_stop_from_a_worker_failure(message, signalled, expected):
    from fcos_lib.train import worker_stop_signal

    assert worker_stop_signal(RuntimeError(message), signalled=signalled) == expected


@pytest.mark.parametrize("call", [1, 3, 5])
def test_ctrl_c_then_resume_is_bit_exact(data, tmp_path, monkeypatch, call):
    straight = train(tiny_cfg(data, tmp_path / "straight"), progress=False)
    cfg = tiny_cfg(data, tmp_path / "interrupted")
    _signal_at_forward(monkeypatch, call=call, signum=signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg, progress=False)
    assert stopped.value.iteration == call
    monkeypatch.undo()
    resumed = train(cfg, resume=True, progress=False)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert straight["history"] == resumed["history"]
    assert torch.equal(straight["rng"]["flip"], resumed["rng"]["flip"])


def test_an_error_mid_iteration_saves_the_last_finished_one_and_resumes_exactly(data, tmp_path, monkeypatch):
    # The flips of the failed iteration were already drawn; the checkpoint must not keep them.
    from fcos_lib import model as model_module

    straight = train(tiny_cfg(data, tmp_path / "straight"), progress=False)
    cfg = tiny_cfg(data, tmp_path / "crashed")
    forward, calls = model_module.FCOS.forward, {"n": 0}

    def crash_at_4(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise FloatingPointError("non-finite loss (simulated)")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model_module.FCOS, "forward", crash_at_4)
    with pytest.raises(FloatingPointError):
        train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["iteration"] == 3
    monkeypatch.undo()
    resumed = train(cfg, resume=True, progress=False)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_kill_9_loses_at_most_checkpoint_every_iterations(data, tmp_path):
    # A real hard kill (os._exit, like kill -9 or the OOM killer) in a separate process.
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os
        from fcos_lib import model as model_module
        from fcos_lib.cli import main
        forward, calls = model_module.FCOS.forward, {{"n": 0}}
        def forward_then_die(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 6:
                os._exit(137)
            return forward(self, *args, **kwargs)
        model_module.FCOS.forward = forward_then_die
        main(["train", "--data", {str(data)!r}, "--out", {str(out)!r}, "--iters", "20", "--checkpoint-every", "2",
              "--image-size", "64", "--batch-size", "2", "--device", "cpu"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr
    assert load_checkpoint(out / "last.pt")["iteration"] == 4  # saved at 2 and 4; iteration 6 died


def test_the_main_job_checkpoints_within_minutes():
    from fcos_lib.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert cfg.iters == 300 and cfg.checkpoint_every <= 100 and cfg.checkpoint_minutes <= 5
    assert config_from_args(build_parser().parse_args(["train", "--checkpoint-every", "7"])).checkpoint_every == 7


# ---------------------------------------------------------------- 5. numbers on the command line

@pytest.mark.parametrize("flag, value, allowed", [
    ("--iters", "0", "an int >= 1"),
    ("--iters", "-5", "an int >= 1"),
    ("--batch-size", "0", "an int >= 1"),
    ("--batch-size", "-2", "an int >= 1"),
    ("--lr", "nan", "a finite number > 0"),
    ("--lr", "-0.1", "a finite number > 0"),
    ("--lr", "inf", "a finite number > 0"),
    ("--image-size", "100", "a positive multiple of 32 (the stride of p5)"),
    ("--workers", "-1", "an int >= 0"),
    ("--seed", "-1", "an int >= 0"),
    ("--checkpoint-every", "0", "an int >= 1"),
    ("--checkpoint-minutes", "0", "a number > 0"),
    ("--warmup-iters", "-1", "an int >= 0"),
])
def test_every_numeric_flag_is_checked_in_one_line(data, tmp_path, capsys, flag, value, allowed):
    out = tmp_path / "run"
    err = error_lines(capsys, ["train", "--data", str(data), "--out", str(out), "--device", "cpu", flag, value])
    assert len(err) == 1 and f"{flag} must be {allowed}, got" in err[0]
    assert not (out / "last.pt").exists()


def test_help_shows_every_default():
    from fcos_lib.cli import build_parser

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train_parser._actions:
        if action.option_strings and action.dest not in ("help", "resume", "overwrite"):
            assert "default" in (action.help or ""), action.option_strings


def test_metrics_json_records_what_produced_it(data, tmp_path):
    import fcos_lib

    out = tmp_path / "run"
    assert run("--data", str(data), "--out", str(out), "--iters", "1", *TINY) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == str(data.resolve()) and metrics["image_size"] == 64 and metrics["split"] == "val"
    assert metrics["fcos_lib_version"] == fcos_lib.__version__ and metrics["date"][:2] == "20"
    for key in ("voc07_map50", "voc_map50", "map50", "map"):
        assert metrics[key] is None or 0 <= metrics[key] <= 1


def test_a_split_without_objects_gives_null_metrics_not_minus_one(tmp_path):
    from fcos_lib.evaluate import detection_metrics

    empty_truth = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                    "difficult": torch.zeros(0, dtype=torch.bool)}]
    found = [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    metrics = detection_metrics(found, empty_truth, ["a"])
    assert all(metrics[k] is None for k in ("voc07_map50", "voc_map50", "map50", "map"))
    assert metrics["per_class_ap50"] == {"a": None}


def test_a_bom_in_a_split_file_is_not_part_of_the_first_id(tmp_path):
    export = make_facemask_like_export(tmp_path / "facemask")
    assert VOCDataset(export, "train", class_names=CLASSES, image_size=64).image_ids[0] == "maksssksksss0"


def test_class_names_given_as_one_string_is_a_clear_error(tmp_path):
    export = make_facemask_like_export(tmp_path / "facemask")
    with pytest.raises(ValueError, match=r"class_names must be a list of names, got the string 'with_mask'.*\['with_mask'\]"):
        VOCDataset(export, "train", class_names="with_mask")


def test_a_nan_coordinate_is_refused_not_dropped(tmp_path):
    from fcos_lib.voc import parse_voc_annotation

    (tmp_path / "a.xml").write_text(labelimg_xml("a.png", 96, 72, [(CLASSES[0], ("nan", 5, 20, 30))]))
    with pytest.raises(DatasetError, match=r"a\.xml: object 0 \(with_mask\) xmin=nan .* not a finite number"):
        parse_voc_annotation(tmp_path / "a.xml", CLASSES)


def test_exif_upright_is_what_imageops_gives(tmp_path):
    upright = Image.new("RGB", (30, 20), (10, 200, 10))
    exif_rotated_photo(tmp_path / "p.jpg", upright)
    with Image.open(tmp_path / "p.jpg") as im:
        assert ImageOps.exif_transpose(im).size == (30, 20) == load_image(tmp_path / "p.jpg").size


def test_class_names_come_from_both_splits(data, tmp_path):
    # This seed's val split shows a 'rectangle', its train split none: the run must still train.
    from fcos_lib.train import resolve_data
    from fcos_lib.voc import read_class_names

    assert "rectangle" not in read_class_names(data, "train") and "rectangle" in read_class_names(data, "val")
    _, class_names = resolve_data(tiny_cfg(data, tmp_path))
    assert class_names == ["cross", "ellipse", "rectangle", "star", "triangle"]
