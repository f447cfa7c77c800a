"""The run mode (fcos_lib.env, chapter 00) and what depends on it: downloads, recipes, scoring."""
import urllib.error

import pytest
import torch

import fcos_lib.env as env
from fcos_lib.cli import COURSE_DEFAULT_ITERS, FULL_DEFAULT_ITERS, build_parser, config_from_args
from fcos_lib.config import COURSE_ITERS, VOC_ITERS, course_recipe, recipe_for_mode, voc_recipe
from fcos_lib.voc import VOC_CLASSES, DatasetError, download_voc


@pytest.fixture
def learner(monkeypatch):
    """A learner's machine: neither FCOS_OFFLINE nor FCOS_MODE set, no CUDA GPU."""
    monkeypatch.delenv("FCOS_OFFLINE", raising=False)
    monkeypatch.delenv("FCOS_MODE", raising=False)
    monkeypatch.setattr(env, "_has_cuda", lambda: False)
    return monkeypatch


def test_without_a_gpu_the_mode_is_course(learner):
    assert env.run_mode()[0] == "course"
    assert env.describe_run_mode().startswith("run mode: course (no CUDA GPU")


def test_with_a_gpu_the_mode_is_voc(learner):
    learner.setattr(env, "_has_cuda", lambda: True)
    assert env.run_mode()[0] == "voc"


@pytest.mark.parametrize("asked", ["offline", "course", "voc", " VOC "])
def test_fcos_mode_asks_for_a_mode(learner, asked):
    learner.setenv("FCOS_MODE", asked)
    assert env.run_mode() == (asked.strip().lower(), f"FCOS_MODE={asked.strip().lower()}")


def test_fcos_offline_wins_over_everything(learner):
    learner.setattr(env, "_has_cuda", lambda: True)
    learner.setenv("FCOS_MODE", "voc")
    learner.setenv("FCOS_OFFLINE", "1")
    assert env.run_mode() == ("offline", "FCOS_OFFLINE=1")


def test_an_unknown_mode_is_named_with_the_choices(learner):
    learner.setenv("FCOS_MODE", "gpu")
    with pytest.raises(ValueError, match=r"FCOS_MODE='gpu' is not a run mode; use one of offline, course, voc"):
        env.run_mode()


@pytest.mark.parametrize("before", [None, "0", "1"])
def test_offline_only_sets_and_restores_the_switch(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("FCOS_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("FCOS_OFFLINE", before)
    with pytest.raises(RuntimeError):
        with env.offline_only():
            assert env.is_offline()
            raise RuntimeError("leaves the block early")
    assert env.os.environ.get("FCOS_OFFLINE") == before


def test_download_voc_offline_refuses_before_any_network_call(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("download_voc reached torchvision while offline")

    monkeypatch.setattr(torchvision.datasets, "VOCDetection", no_network)
    with env.offline_only(), pytest.raises(DatasetError, match="FCOS_OFFLINE=1 forbids downloading"):
        download_voc(tmp_path, "2007", "trainval")


@pytest.mark.parametrize("failure", [urllib.error.URLError("[Errno 111] Connection refused"),
                                     TimeoutError("timed out"), RuntimeError("File not found or corrupted.")])
def test_a_failed_download_is_one_dataset_error_that_says_what_to_do(learner, tmp_path, failure):
    import torchvision.datasets

    def host_down(*args, **kwargs):
        raise failure

    learner.setattr(torchvision.datasets, "VOCDetection", host_down)
    with pytest.raises(DatasetError) as caught:
        download_voc(tmp_path, "2007", "test")
    message = str(caught.value)
    assert "\n" not in message and "could not download PASCAL VOC 2007 test" in message
    assert "from a mirror" in message and str(tmp_path) in message


def test_the_main_job_is_one_recipe_for_the_cli_and_chapter_09():
    assert (COURSE_DEFAULT_ITERS, FULL_DEFAULT_ITERS) == (COURSE_ITERS, VOC_ITERS)
    from_cli = config_from_args(build_parser().parse_args(["train"]))
    # The same recipe; the command line also picks torch's CPU threads for the machine's load
    # (--threads auto), where chapter 09 keeps torch's setting so that its stored outputs repeat.
    assert from_cli == course_recipe(out="runs/fcos", num_threads="auto")


def test_the_voc_recipe_trains_voc07_trainval_from_imagenet_weights(tmp_path):
    cfg = voc_recipe(tmp_path, out="runs/voc07")
    assert (cfg.data, cfg.classes, cfg.train_split, cfg.val_split) == (str(tmp_path), VOC_CLASSES, "trainval", "test")
    assert cfg.pretrained_backbone and cfg.iters == VOC_ITERS
    # Fine-tuning keeps torchvision's reference schedule, not the from-scratch constant rate.
    assert (cfg.lr, cfg.schedule, cfg.decay_norms, cfg.hflip) == (0.01, "cosine", False, True)


def test_scores_without_centerness_are_the_class_probabilities():
    from fcos_lib.inference import fcos_postprocess
    from test_inference import hand_made_predictions

    predictions = hand_made_predictions(B=1)
    predictions.ctr_logits[:] = -2.0  # centerness 0.12: it lowers the score only when used
    with_ctr, = fcos_postprocess(predictions)
    without_ctr, = fcos_postprocess(predictions, use_centerness=False)
    p, c = torch.sigmoid(torch.tensor(10.0)), torch.sigmoid(torch.tensor(-2.0))
    assert torch.allclose(with_ctr["scores"], torch.sqrt(p * c)[None])
    assert torch.allclose(without_ctr["scores"], p[None])
    assert torch.equal(with_ctr["boxes"], without_ctr["boxes"])


@pytest.mark.parametrize("mode, device", [("offline", "cpu"), ("course", "auto")])
def test_the_offline_and_course_modes_train_the_main_job(mode, device):
    cfg, note = recipe_for_mode(mode)
    assert cfg == course_recipe(device=device, out="runs/chapter09") and note is None


def test_the_voc_mode_trains_voc_when_it_is_on_disk(tmp_path):
    folder = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    folder.mkdir(parents=True)
    for split in ("trainval", "test"):
        (folder / f"{split}.txt").write_text("000001\n")
    cfg, note = recipe_for_mode("voc", voc_root=tmp_path)
    assert note is None and cfg == voc_recipe(tmp_path / "VOCdevkit" / "VOC2007", out="runs/chapter09")


def test_the_voc_mode_falls_back_to_the_main_job_in_one_line_when_the_download_fails(learner, tmp_path):
    import torchvision.datasets

    def host_down(*args, **kwargs):
        raise urllib.error.URLError("[Errno 111] Connection refused")

    learner.setattr(torchvision.datasets, "VOCDetection", host_down)
    cfg, note = recipe_for_mode("voc", voc_root=tmp_path)
    assert cfg == course_recipe(device="auto", out="runs/chapter09")
    assert note.startswith("PASCAL VOC is not available, so this run trains the main job instead.")
    assert "\n" not in note and "Connection refused" in note


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode 'gpu' is not a run mode"):
        recipe_for_mode("gpu")
