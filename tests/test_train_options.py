"""Tests of the chapter-10 training options: box activation, centerness stem, ATSS, scale jitter,
EMA of the weights, weight decay on norms, the constant schedule, and their checkpoints."""
import copy
import dataclasses

import pytest
import torch
from torch import nn

from fcos_lib import train as train_module
from fcos_lib.checkpoint import load_checkpoint, model_from_checkpoint
from fcos_lib.config import TrainConfig, config_differences, improved_recipe
from fcos_lib.course_data import make_course_dataset
from fcos_lib.model import FCOS, FCOSPredictions
from fcos_lib.train import (
    LOSS_NAMES, build_optimizer, ema_decay_at, ema_update, lr_multiplier, random_rescale, train,
)

# The fields this change added to TrainConfig: a checkpoint written before it lacks all of them.
NEW_FIELDS = ("box_activation", "centerness_on", "assigner", "scale_jitter", "ema_decay", "decay_norms", "optimizer")


@pytest.fixture(autouse=True)
def one_thread():
    # One intra-op thread: these models are tiny, and on a busy machine extra OpenMP threads
    # spin against other processes (about 10x slower here with 2 threads beside a benchmark).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_course_dataset(tmp_path_factory.mktemp("data") / "voc", num_train=8, num_val=4, seed=3)


def tiny_cfg(data, out, **changes) -> TrainConfig:
    # As tests/test_train.py: small inputs, 16 FPN channels, batches of 2, on the CPU.
    return improved_recipe(
        data=str(data), image_size=64, batch_size=2, fpn_channels=16, num_convs=2, iters=20,
        warmup_iters=3, num_workers=0, device="cpu", out=str(out), checkpoint_every=1000,
    ).replace(**changes)


# ---------------------------------------------------------------- random_rescale

def _bright_rectangle_batch():
    # Two 64 x 96 images: a bright rectangle on black in image 0, with its box; image 1 has one
    # real box and a padding row.
    images = torch.zeros(2, 3, 64, 96)
    images[0, :, 8:40, 16:48] = 1.0  # rows y in [8, 40), columns x in [16, 48)
    gt_boxes = torch.tensor([
        [[16.0, 8.0, 48.0, 40.0, 2.0], [-1.0, -1.0, -1.0, -1.0, -1.0]],
        [[0.0, 0.0, 96.0, 64.0, 1.0], [-1.0, -1.0, -1.0, -1.0, -1.0]],
    ])
    return images, gt_boxes


def test_random_rescale_moves_boxes_with_pixels():
    images, gt_boxes = _bright_rectangle_batch()
    before_images, before_boxes = images.clone(), gt_boxes.clone()
    # s = 1.5: H 64 -> 96 (3 x 32), W 96 -> round(4.5) * 32 = 128: a different factor per axis.
    out_images, out_boxes = random_rescale(images, gt_boxes, (1.5, 1.5), torch.Generator().manual_seed(0))
    assert out_images.shape == (2, 3, 96, 128)
    fx, fy = 128 / 96, 96 / 64
    expected = torch.tensor([16 * fx, 8 * fy, 48 * fx, 40 * fy])
    assert torch.allclose(out_boxes[0, 0, :4], expected)
    assert torch.allclose(out_boxes[1, 0, :4], torch.tensor([0.0, 0.0, 128.0, 96.0]))
    assert out_boxes[0, 0, 4] == 2 and out_boxes[1, 0, 4] == 1  # classes untouched
    assert out_boxes[:, 1].tolist() == [[-1.0] * 5, [-1.0] * 5]  # padding rows untouched
    # The pixels moved with the box: bright inside it (1 px in from the edges, where bilinear
    # resizing blends), dark outside it.
    x1, y1, x2, y2 = (round(float(v)) for v in out_boxes[0, 0, :4])
    inside = out_images[0, :, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
    assert inside.mean() > 0.95
    outside = out_images[0].clone()
    outside[:, y1 - 1:y2 + 1, x1 - 1:x2 + 1] = 0
    assert outside.max() < 0.05
    # The inputs are not modified.
    assert torch.equal(images, before_images) and torch.equal(gt_boxes, before_boxes)


@pytest.mark.parametrize("seed", range(6))
def test_random_rescale_sides_are_multiples_of_32_and_factor_is_in_range(seed):
    images, gt_boxes = _bright_rectangle_batch()
    out_images, out_boxes = random_rescale(images, gt_boxes, (0.5, 2.0), torch.Generator().manual_seed(seed))
    H, W = out_images.shape[-2:]
    assert H % 32 == 0 and W % 32 == 0 and H >= 32 and W >= 32
    assert 32 <= H <= 128 and 48 <= W <= 192  # 64 * [0.5, 2] and 96 * [0.5, 2], rounded to 32
    assert torch.allclose(out_boxes[1, 0, :4], torch.tensor([0.0, 0.0, float(W), float(H)]))
    assert (out_boxes[:, 1] == -1).all()


def test_random_rescale_never_goes_below_one_multiple():
    images, gt_boxes = _bright_rectangle_batch()
    out_images, out_boxes = random_rescale(images, gt_boxes, (0.1, 0.1), torch.Generator().manual_seed(0))
    assert out_images.shape[-2:] == (32, 32)
    assert torch.allclose(out_boxes[1, 0, :4], torch.tensor([0.0, 0.0, 32.0, 32.0]))


def test_random_rescale_is_a_function_of_the_generator_state():
    images, gt_boxes = _bright_rectangle_batch()
    a = random_rescale(images, gt_boxes, (0.5, 2.0), torch.Generator().manual_seed(7))
    b = random_rescale(images, gt_boxes, (0.5, 2.0), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # ... and the draw advances the generator (it is part of the resumable state).
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    random_rescale(images, gt_boxes, (0.5, 2.0), g)
    assert not torch.equal(state, g.get_state())
    # Different seeds give several sizes.
    sizes = {tuple(random_rescale(images, gt_boxes, (0.5, 2.0), torch.Generator().manual_seed(s))[0].shape[-2:])
             for s in range(20)}
    assert len(sizes) > 1


def test_random_rescale_with_unit_range_returns_the_input():
    images, gt_boxes = _bright_rectangle_batch()
    out_images, out_boxes = random_rescale(images, gt_boxes, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.equal(out_images, images) and torch.equal(out_boxes, gt_boxes)


# ---------------------------------------------------------------- EMA

def test_ema_decay_ramps_up_to_the_decay():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.999) == pytest.approx(0.5)  # (1 + 8) / (10 + 8)
    assert ema_decay_at(10**6, 0.999) == pytest.approx(0.999)
    assert ema_decay_at(10**6, 0.9) == 0.9 and ema_decay_at(100, 0.9) == 0.9  # capped by the decay
    ramp = [ema_decay_at(i, 0.999) for i in range(0, 5000, 100)]
    assert ramp == sorted(ramp) and all(0 < d <= 0.999 for d in ramp)


def test_ema_update_lerps_parameters_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():  # the model moves away from the average ...
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(2, 3, 8, 8))  # ... and its BatchNorm statistics change
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    decay = 0.7
    ema_update(ema, model, decay)

    for (name, p_ema), p_model in zip(ema.named_parameters(), model.parameters()):
        expected = decay * before[name] + (1 - decay) * p_model
        assert torch.allclose(p_ema, expected, atol=1e-6), name
        assert not torch.allclose(p_ema, p_model), name  # an average, not a copy
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for name, b_ema in ema.named_buffers():
        assert torch.equal(b_ema, buffers[name]), name
        assert b_ema.data_ptr() != buffers[name].data_ptr()  # copied, not shared
    assert int(ema.state_dict()["1.num_batches_tracked"]) == 1
    assert all(not p.requires_grad for p in ema.parameters())


# ---------------------------------------------------------------- schedule and optimiser

def test_constant_schedule_after_a_linear_warm_up():
    cfg = TrainConfig(schedule="constant", iters=100, warmup_iters=10)
    warm = [lr_multiplier(i, cfg) for i in range(10)]
    assert warm[0] == pytest.approx(0.001)
    steps = [b - a for a, b in zip(warm, warm[1:])]
    assert all(s == pytest.approx(0.0999) for s in steps)  # linear: (1 - 0.001) / 10 per iteration
    assert lr_multiplier(5, cfg) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [lr_multiplier(i, cfg) for i in (10, 11, 50, 99, 100, 500)] == [1.0] * 6
    no_warm = cfg.replace(warmup_iters=0)
    assert [lr_multiplier(i, no_warm) for i in (0, 1, 99)] == [1.0] * 3


def _param_ids(group):
    return {id(p) for p in group["params"]}


@pytest.mark.parametrize("use_groupnorm", [True, False])
def test_build_optimizer_decay_norms(use_groupnorm):
    model = FCOS(3, fpn_channels=16, num_convs=1, use_groupnorm=use_groupnorm)
    params = [p for p in model.parameters() if p.requires_grad]
    one_d = {id(p) for p in params if p.ndim <= 1}
    assert one_d and len(one_d) < len(params)  # biases and norm weights, and conv weights

    everything = build_optimizer(model, TrainConfig(decay_norms=True, weight_decay=1e-3))
    decayed, plain = everything.param_groups
    assert decayed["weight_decay"] == 1e-3 and plain["weight_decay"] == 0.0
    assert _param_ids(decayed) == {id(p) for p in params} and not plain["params"]

    default = build_optimizer(model, TrainConfig(weight_decay=1e-3))  # decay_norms=False
    decayed, plain = default.param_groups
    assert decayed["weight_decay"] == 1e-3 and plain["weight_decay"] == 0.0
    assert _param_ids(plain) == one_d
    assert _param_ids(decayed) == {id(p) for p in params} - one_d
    assert all(p.ndim > 1 for p in decayed["params"])


def test_build_optimizer_adamw():
    model = FCOS(3, fpn_channels=16, num_convs=1)
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = build_optimizer(model, TrainConfig(weight_decay=1e-3))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, momentum=0.85, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["lr"] == 1e-3 and adamw.defaults["betas"] == (0.85, 0.999)
    decayed, plain = adamw.param_groups  # the same split as SGD's: no decay on norms and biases
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert _param_ids(plain) == {id(p) for p in params if p.ndim <= 1}
    # One step on a loss moves the weights (AdamW's first step moves each by about lr).
    before = [p.detach().clone() for p in params]
    sum(p.sum() for p in params).backward()
    adamw.step()
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(params, before)]
    assert max(moved) == pytest.approx(1e-3, rel=0.05)


def test_resume_refuses_another_optimizer(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, iters=2), progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        train(tiny_cfg(tiny_data, tmp_path, iters=4, optimizer="adamw"), resume=True, progress=False)


# ---------------------------------------------------------------- the config

@pytest.mark.parametrize("field, value", [
    ("box_activation", "tanh"), ("centerness_on", "x"), ("assigner", "yolo"),
    ("scale_jitter", (1.2, 0.8)), ("scale_jitter", (0, 1)), ("scale_jitter", (0.5,)),
    ("scale_jitter", (0.5, float("inf"))), ("ema_decay", 1.0), ("ema_decay", 0.0), ("ema_decay", -0.5),
    ("schedule", "linear"), ("optimizer", "adam"), ("optimizer", "SGD"),
])
def test_config_rejects_bad_new_options(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} must be"):
        TrainConfig().replace(**{field: value})


def test_config_accepts_the_new_options():
    cfg = TrainConfig(box_activation="relu", centerness_on="cls", assigner="atss", scale_jitter=(0.8, 1.2),
                      ema_decay=0.9998, decay_norms=True, schedule="constant")
    assert cfg.scale_jitter == (0.8, 1.2) and cfg.ema_decay == 0.9998
    assert TrainConfig(scale_jitter=(1.0, 1.0)).scale_jitter == (1.0, 1.0)  # lo == hi is allowed
    defaults = TrainConfig()
    assert (defaults.box_activation, defaults.centerness_on, defaults.assigner) == ("exp", "reg", "fcos")
    assert defaults.scale_jitter is None and defaults.ema_decay is None and defaults.decay_norms is False


def test_config_differences_treats_missing_new_fields_as_defaults():
    old = dataclasses.asdict(TrainConfig())
    for name in NEW_FIELDS:
        del old[name]  # a checkpoint written before these options existed
    assert config_differences(old, TrainConfig()) == {}
    assert config_differences(old, TrainConfig(ema_decay=0.9)) == {"ema_decay": (None, 0.9)}
    assert config_differences(old, TrainConfig(assigner="atss")) == {"assigner": ("fcos", "atss")}

    with_ema = dataclasses.asdict(TrainConfig(ema_decay=0.999))
    assert config_differences(with_ema, TrainConfig()) == {"ema_decay": (0.999, None)}
    assert config_differences(with_ema, TrainConfig(ema_decay=0.999)) == {}
    # A checkpoint may hold the jitter range as a list: the same range.
    jitter = dict(dataclasses.asdict(TrainConfig(scale_jitter=(0.75, 1.25))), scale_jitter=[0.75, 1.25])
    assert config_differences(jitter, TrainConfig(scale_jitter=(0.75, 1.25))) == {}
    assert set(config_differences(jitter, TrainConfig())) == {"scale_jitter"}


# ---------------------------------------------------------------- the model's new options

def _tiny_batch():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    gt_boxes = torch.tensor([
        [[4.0, 4.0, 40.0, 40.0, 0.0], [30.0, 10.0, 60.0, 50.0, 1.0]],
        [[10.0, 20.0, 50.0, 60.0, 2.0], [-1.0, -1.0, -1.0, -1.0, -1.0]],
    ])
    return images, gt_boxes


def _tiny_model(**options):
    torch.manual_seed(0)
    return FCOS(3, fpn_channels=16, num_convs=1, **options)


def _check_losses(losses):
    assert set(losses) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert losses[name].dim() == 0 and torch.isfinite(losses[name]), name


@pytest.mark.parametrize("centerness_on, stem_with_grad, stem_without", [("cls", "cls_stem", "reg_stem"),
                                                                         ("reg", "reg_stem", "cls_stem")])
def test_relu_deltas_and_the_centerness_stem(centerness_on, stem_with_grad, stem_without):
    images, gt_boxes = _tiny_batch()
    model = _tiny_model(box_activation="relu", centerness_on=centerness_on).train()
    losses = model(images, gt_boxes)
    _check_losses(losses)
    # The centerness loss reaches the stem that predicts it, and only that one.
    losses["loss_ctr"].backward()
    assert getattr(model.head, stem_without)[0].weight.grad is None
    assert getattr(model.head, stem_with_grad)[0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        predictions = model(images)
    assert isinstance(predictions, FCOSPredictions)
    assert predictions.box_deltas.shape == (2, 64 + 16 + 4, 4)
    assert (predictions.box_deltas >= 0).all()
    assert (predictions.box_deltas == 0).any()  # ReLU, not exp (exp is never 0)


def test_exp_deltas_are_positive():
    images, _ = _tiny_batch()
    with torch.no_grad():
        predictions = _tiny_model().eval()(images)
    assert (predictions.box_deltas > 0).all()


def test_atss_assigner_trains():
    images, gt_boxes = _tiny_batch()
    model = _tiny_model(assigner="atss").train()
    losses = model(images, gt_boxes)
    _check_losses(losses)
    sum(losses.values()).backward()
    assert model.head.box_deltas.weight.grad.abs().sum() > 0
    # Same weights, other positives: the FCOS rule gives other losses on this batch.
    fcos_model = _tiny_model(assigner="fcos").train()
    fcos_model.load_state_dict(model.state_dict())
    fcos_losses = fcos_model(images, gt_boxes)
    assert any(not torch.allclose(losses[k], fcos_losses[k]) for k in LOSS_NAMES)


def test_p2_trains_on_four_levels_and_predicts_their_locations():
    images, gt_boxes = _tiny_batch()
    model = _tiny_model(with_p2=True).train()
    assert model.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    losses = model(images, gt_boxes)
    _check_losses(losses)
    sum(losses.values()).backward()
    assert model.backbone.fpn.lateral["p2"].weight.grad.abs().sum() > 0  # p2 gets positives and a gradient
    with torch.no_grad():
        predictions = model.eval()(images)
    assert predictions.num_locations_per_level == [16 * 16, 8 * 8, 4 * 4, 2 * 2]  # 64 px at strides 4-32
    assert predictions.box_deltas.shape == (2, 256 + 64 + 16 + 4, 4)


def test_p2_run_rebuilds_from_its_checkpoint(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, iters=1, with_p2=True), progress=False)
    model, state = model_from_checkpoint(tmp_path / "last.pt")
    assert state["config"]["with_p2"] is True and list(model.strides) == ["p2", "p3", "p4", "p5"]
    # A checkpoint written before the option existed lacks the field: it meant no p2.
    old = dataclasses.asdict(TrainConfig())
    del old["with_p2"]
    assert config_differences(old, TrainConfig()) == {}
    assert config_differences(old, TrainConfig(with_p2=True)) == {"with_p2": (False, True)}
    with pytest.raises(ValueError, match=r"TrainConfig\.with_p2 must be True or False"):
        TrainConfig(with_p2="yes")


def test_c2_passthrough_run_rebuilds_from_its_checkpoint(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, iters=1, c2_passthrough=True), progress=False)
    model, state = model_from_checkpoint(tmp_path / "last.pt")
    assert state["config"]["c2_passthrough"] is True and list(model.strides) == ["p3", "p4", "p5"]
    assert model.backbone.fpn.lateral["p3"].in_channels == 64 + 4 * 32
    old = dataclasses.asdict(TrainConfig())
    del old["c2_passthrough"]  # a checkpoint from before the option: it meant no passthrough
    assert config_differences(old, TrainConfig(c2_passthrough=True)) == {"c2_passthrough": (False, True)}
    with pytest.raises(ValueError, match=r"TrainConfig\.with_p2 and c2_passthrough .* Fix: pick one"):
        TrainConfig(with_p2=True, c2_passthrough=True)


def test_focal_gamma_run_rebuilds_from_its_checkpoint(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, iters=1, focal_gamma=1.0), progress=False)
    model, state = model_from_checkpoint(tmp_path / "last.pt")
    assert state["config"]["focal_gamma"] == 1.0 and model.focal_gamma == 1.0
    old = dataclasses.asdict(TrainConfig())
    del old["focal_gamma"]  # a checkpoint from before the option: the paper's 2
    assert config_differences(old, TrainConfig(focal_gamma=1.0)) == {"focal_gamma": (2.0, 1.0)}
    with pytest.raises(ValueError, match=r"TrainConfig\.focal_gamma must be a finite number >= 0, got -0.5"):
        TrainConfig(focal_gamma=-0.5)


def test_model_rejects_unknown_options():
    with pytest.raises(ValueError, match="box_activation"):
        FCOS(3, fpn_channels=16, num_convs=1, box_activation="tanh")
    with pytest.raises(ValueError, match="centerness_on"):
        FCOS(3, fpn_channels=16, num_convs=1, centerness_on="x")
    with pytest.raises(ValueError, match="assigner"):
        FCOS(3, fpn_channels=16, num_convs=1, assigner="yolo")


# ---------------------------------------------------------------- training with EMA and scale jitter

def test_ema_and_scale_jitter_run_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    # 96-px inputs: s in (0.75, 1.25) gives sides 64, 96 or 128 (at 64 px every s rounds back to
    # 64). seed=2: the jitter's six draws give 96, 64, 96, 96, 64, 128 (seeds 0 and 1 give 96 only).
    sizes = []
    real_rescale = train_module.random_rescale

    def spy(images, gt_boxes, scale_range, generator, multiple=32):
        out = real_rescale(images, gt_boxes, scale_range, generator, multiple)
        sizes.append(tuple(out[0].shape[-2:]))
        return out

    monkeypatch.setattr(train_module, "random_rescale", spy)
    options = dict(seed=2, image_size=96, iters=6, warmup_iters=4, ema_decay=0.9, scale_jitter=(0.75, 1.25),
                   box_activation="relu", centerness_on="cls", decay_norms=True)

    straight = train(tiny_cfg(tiny_data, tmp_path / "a", **options), progress=False)
    assert straight["iteration"] == 6 and len(sizes) == 6
    assert len(set(sizes)) > 1 and all(h % 32 == 0 and w % 32 == 0 for h, w in sizes)
    straight_sizes = list(sizes)

    # The checkpoint holds the moving average, and model_from_checkpoint picks it by default.
    saved = load_checkpoint(tmp_path / "a" / "last.pt")
    assert saved["ema"] is not None and set(saved["ema"]) == set(saved["model"])
    averaged, _ = model_from_checkpoint(tmp_path / "a" / "last.pt")
    raw, _ = model_from_checkpoint(tmp_path / "a" / "last.pt", use_ema=False)
    assert not averaged.training and not raw.training
    for name, tensor in averaged.state_dict().items():
        assert torch.equal(tensor, saved["ema"][name]), name
    for name, tensor in raw.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name
    float_params = [name for name, _ in raw.named_parameters()]
    assert any(not torch.equal(averaged.state_dict()[n], raw.state_dict()[n]) for n in float_params)
    assert raw.head.box_activation is torch.relu and raw.head.centerness_on == "cls"  # the run's options

    # 3 iterations, stop, resume, 3 more: the same weights, the same average, the same losses.
    sizes.clear()
    cfg = tiny_cfg(tiny_data, tmp_path / "b", **options)
    half = train(cfg, progress=False, stop_after=3)
    assert half["iteration"] == 3 and half["ema"] is not None
    resumed = train(cfg, resume=True, progress=False)
    assert resumed["iteration"] == 6
    assert sizes == straight_sizes  # the jitter's draws resume too
    for key in ("model", "ema"):
        assert set(straight[key]) == set(resumed[key])
        for name, tensor in straight[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)
    assert straight["history"] == resumed["history"]


def test_model_from_checkpoint_without_ema_uses_the_weights(tiny_data, tmp_path):
    # A run without EMA (ema None in the checkpoint): use_ema=True falls back to the weights.
    train(tiny_cfg(tiny_data, tmp_path, iters=1, ema_decay=None), progress=False)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["ema"] is None
    model, _ = model_from_checkpoint(tmp_path / "last.pt", use_ema=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name
