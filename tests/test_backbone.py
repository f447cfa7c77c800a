"""Chapter 01: RegNetX-400MF + FPN (fcos_lib/backbone.py)."""
import pytest
import torch
import torchvision

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from fcos_lib.backbone import STAGES, FPN, BackboneWithFPN, check_images, make_regnet_x_400mf, stack_c2_into_c3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BackboneWithFPN(out_channels=32)


@pytest.mark.parametrize("H, W", [(160, 224), (224, 320), (64, 64)])
def test_level_shapes_non_square(model, H, W):
    with torch.no_grad():
        pyramid = model(torch.rand(2, 3, H, W))
    assert list(pyramid) == ["p3", "p4", "p5"]
    assert model.strides == {"p3": 8, "p4": 16, "p5": 32}
    for level, x in pyramid.items():
        s = model.strides[level]
        assert x.shape == (2, 32, H // s, W // s)


def test_backbone_channels_read_from_modules(model):
    assert model.backbone_channels == {"c3": 64, "c4": 160, "c5": 400}


@pytest.mark.parametrize("H, W", [(100, 224), (224, 100), (240, 240)])
def test_size_not_divisible_by_32_is_refused(model, H, W):
    with pytest.raises(ValueError, match=r"divisible by 32.*got H=%d, W=%d" % (H, W)):
        model(torch.rand(1, 3, H, W))


def test_bad_layout_and_dtype_are_refused(model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"float in \[0, 1\]"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_constructor_prints_nothing(capsys):
    BackboneWithFPN(out_channels=16)
    assert capsys.readouterr() == ("", "")


def _fail_download(*args, **kwargs):
    pytest.fail("a download was attempted")


def test_pretrained_offline_raises_without_download(monkeypatch):
    monkeypatch.setenv("FCOS_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _fail_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fail_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _fail_download)
    with pytest.raises(RuntimeError, match="FCOS_OFFLINE") as info:
        BackboneWithFPN(pretrained=True)
    assert "pretrained=False" in str(info.value)


def test_pretrained_download_failure_says_where_to_put_the_file(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("FCOS_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="network is unreachable") as info:
        BackboneWithFPN(pretrained=True)
    assert str(tmp_path / "checkpoints" / "regnet_x_400mf-62229a5f.pth") in str(info.value)


def test_pretrained_loads_weights_from_the_hub_cache(monkeypatch):
    # Online path without a network: hand back the state dict a download would have given.
    reference = torchvision.models.regnet_x_400mf(weights=None)
    with torch.no_grad():
        reference.stem[0].weight.fill_(0.5)
    monkeypatch.setenv("FCOS_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: reference.state_dict())
    model = BackboneWithFPN(pretrained=True)
    assert torch.all(model.body.stem[0].weight == 0.5)


def test_normalisation_buffers_follow_the_model_not_the_checkpoint():
    model = BackboneWithFPN(out_channels=16)
    assert {"mean", "std"} <= {name for name, _ in model.named_buffers()}
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_fpn_matches_torchvision_with_the_same_weights():
    torch.manual_seed(0)
    channels = {"c3": 8, "c4": 16, "c5": 24}
    fpn = FPN(channels, out_channels=12)
    reference = torchvision.ops.FeaturePyramidNetwork(list(channels.values()), out_channels=12)
    with torch.no_grad():
        for i, p in enumerate(fpn.out_levels):
            reference.inner_blocks[i][0].weight.copy_(fpn.lateral[p].weight)
            reference.inner_blocks[i][0].bias.copy_(torch.randn(12))  # non-zero biases too
            fpn.lateral[p].bias.copy_(reference.inner_blocks[i][0].bias)
            reference.layer_blocks[i][0].weight.copy_(fpn.output[p].weight)
            reference.layer_blocks[i][0].bias.copy_(fpn.output[p].bias)
    # Non-square levels, as a 64 x 96 image gives them: 8x12, 4x6, 2x3.
    feats = {"c3": torch.randn(2, 8, 8, 12), "c4": torch.randn(2, 16, 4, 6), "c5": torch.randn(2, 24, 2, 3)}
    ours, theirs = fpn(feats), reference(feats)
    assert list(ours) == ["p3", "p4", "p5"]
    for a, b in zip(ours.values(), theirs.values()):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


def test_top_down_path_carries_the_lateral_sum():
    # With all output convs zero except p4's identity-like centre tap, p4 = m4 = lat4 + up(m5).
    torch.manual_seed(0)
    fpn = FPN({"c3": 4, "c4": 4, "c5": 4}, out_channels=4)
    feats = {"c3": torch.randn(1, 4, 8, 8), "c4": torch.randn(1, 4, 4, 4), "c5": torch.randn(1, 4, 2, 2)}
    with torch.no_grad():
        for p in fpn.out_levels:
            fpn.output[p].weight.zero_()
            fpn.output[p].bias.zero_()
            for c in range(4):
                fpn.output[p].weight[c, c, 1, 1] = 1.0  # output conv = identity
        out = fpn(feats)
        m5 = fpn.lateral["p5"](feats["c5"])
        m4 = fpn.lateral["p4"](feats["c4"]) + m5.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(out["p5"], m5)
    torch.testing.assert_close(out["p4"], m4)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = BackboneWithFPN(out_channels=16).train()
    pyramid = model(torch.rand(2, 3, 64, 96))
    sum(x.mean() for x in pyramid.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# --- check_images: the one check of the input images (the model calls it too, see test_model.py)

@pytest.mark.parametrize("images, message", [
    (torch.rand(3, 64, 64), r"images must be one \(B, 3, H, W\) float tensor.*got \(3, 64, 64\).*images\[None\]"),
    (torch.rand(1, 1, 64, 64), r"got \(1, 1, 64, 64\)"),
    ([torch.rand(3, 64, 64)], r"got list.*stack the images"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"float in \[0, 1\]; got dtype torch.uint8.*images.float\(\) / 255"),
    (torch.rand(1, 3, 100, 64), r"divisible by 32.*got H=100, W=64.*\(128, 64\)"),
])
def test_check_images_names_the_problem_and_the_fix(images, message):
    with pytest.raises(ValueError, match=message):
        check_images(images)


def test_check_images_accepts_float_batches():
    check_images(torch.rand(2, 3, 64, 96))
    check_images(torch.rand(1, 3, 32, 32, dtype=torch.float16))  # the normalisation promotes it to float32
    check_images(torch.rand(0, 3, 32, 32))  # an empty batch is well-formed
    # float64 is refused (the weights are float32): see tests/test_library_inputs.py


def test_half_and_empty_batches_run_through_the_backbone():
    backbone = BackboneWithFPN(out_channels=16).eval()
    with torch.no_grad():
        half = backbone(torch.rand(1, 3, 64, 64).half())
        empty = backbone(torch.rand(0, 3, 64, 64))
    assert half["p3"].dtype == torch.float32 and empty["p5"].shape == (0, 16, 2, 2)


# --- fine-tuning: FrozenBatchNorm2d and frozen first stages, as torchvision's detection builders

def _norm_types(module):
    return {type(m) for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}


def _frozen_parameter_names(model):
    return {name for name, prm in model.named_parameters() if not prm.requires_grad}


def test_from_scratch_trains_batchnorm_and_every_stage():
    model = BackboneWithFPN(out_channels=16)
    assert model.trainable_layers == 5 and model.frozen_batchnorm is False
    assert _norm_types(model.body) == {nn.BatchNorm2d}
    assert _frozen_parameter_names(model) == set()


def test_make_regnet_x_400mf_frozen_batchnorm():
    assert _norm_types(make_regnet_x_400mf()) == {nn.BatchNorm2d}
    frozen = make_regnet_x_400mf(frozen_batchnorm=True)
    assert _norm_types(frozen) == {FrozenBatchNorm2d}
    # Same architecture: 2 fewer parameters per norm layer (weight, bias became buffers).
    num_norms = sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert len(list(make_regnet_x_400mf().parameters())) - len(list(frozen.parameters())) == 2 * num_norms


@pytest.mark.parametrize("trainable_layers", [0, 1, 2, 3, 4, 5])
def test_trainable_layers_freeze_exactly_the_bottom_stages(trainable_layers):
    model = BackboneWithFPN(out_channels=16, trainable_layers=trainable_layers, frozen_batchnorm=True)
    frozen_stages = STAGES[:5 - trainable_layers]  # 3 -> stem, block1
    expected = {f"body.{name}" for stage in frozen_stages
                for name, _ in model.body.get_submodule(stage).named_parameters(prefix=stage)}
    assert _frozen_parameter_names(model) == expected
    assert all(prm.requires_grad for prm in model.fpn.parameters())  # the FPN always trains
    assert _norm_types(model.body) == {FrozenBatchNorm2d}


def test_frozen_batchnorm_and_frozen_stages_do_not_change_in_a_training_step():
    torch.manual_seed(0)
    model = BackboneWithFPN(out_channels=16, trainable_layers=3, frozen_batchnorm=True).train()
    with torch.no_grad():  # non-trivial statistics, as ImageNet weights would bring
        for m in model.body.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.SGD([prm for prm in model.parameters() if prm.requires_grad], lr=0.1)
    sum(x.mean() for x in model(torch.rand(2, 3, 64, 96)).values()).backward()
    optimizer.step()
    after = model.state_dict()
    frozen_norm = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    for prefix in frozen_norm:
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            key = f"{prefix}.{buffer}"
            assert torch.equal(before[key], after[key]), key
    assert all(prm.grad is None for stage in STAGES[:2] for prm in model.body.get_submodule(stage).parameters())
    assert torch.equal(before["body.stem.0.weight"], after["body.stem.0.weight"])  # frozen stage
    changed = [k for k in before if k.startswith("body.trunk_output.block4") and not torch.equal(before[k], after[k])]
    assert changed  # a trainable stage did learn


def test_pretrained_defaults_to_frozen_batchnorm_and_three_trainable_stages(monkeypatch):
    reference = torchvision.models.regnet_x_400mf(weights=None)  # BatchNorm2d, with num_batches_tracked
    monkeypatch.setenv("FCOS_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, **kw: reference.state_dict())
    model = BackboneWithFPN(out_channels=16, pretrained=True)
    assert model.trainable_layers == 3 and model.frozen_batchnorm is True
    assert _norm_types(model.body) == {FrozenBatchNorm2d}
    frozen = _frozen_parameter_names(model)  # stem and block1, as trainable_layers=3 gives
    assert frozen == _frozen_parameter_names(BackboneWithFPN(out_channels=16, trainable_layers=3, frozen_batchnorm=True))
    assert frozen and all(name.startswith(("body.stem.", "body.trunk_output.block1.")) for name in frozen)


def test_checkpoint_of_a_fine_tuned_model_loads_into_a_rebuilt_one(monkeypatch):
    # Train with ImageNet weights, later rebuild without downloading: pretrained=False, frozen_batchnorm=True.
    torch.manual_seed(0)
    monkeypatch.setenv("FCOS_OFFLINE", "0")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kw: torchvision.models.regnet_x_400mf(weights=None).state_dict())
    trained = BackboneWithFPN(out_channels=16, pretrained=True)
    with torch.no_grad():
        for m in trained.body.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.normal_()
    monkeypatch.setenv("FCOS_OFFLINE", "1")
    rebuilt = BackboneWithFPN(out_channels=16, pretrained=False, frozen_batchnorm=True)
    rebuilt.load_state_dict(trained.state_dict())  # strict
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(trained.eval()(images).values(), rebuilt.eval()(images).values()):
            assert torch.equal(a, b)
    # Between two frozen_batchnorm=True models built from scratch, too.
    torch.manual_seed(1)
    other = BackboneWithFPN(out_channels=16, frozen_batchnorm=True, trainable_layers=3)
    other.load_state_dict(rebuilt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), rebuilt.state_dict().values()))
    # A BatchNorm2d model loads it too (its num_batches_tracked start at 0) and, in eval mode,
    # computes the same thing; but in training mode it would update the statistics again.
    plain = BackboneWithFPN(out_channels=16)
    plain.load_state_dict(trained.state_dict())
    with torch.no_grad():
        for a, b in zip(trained(images).values(), plain.eval()(images).values()):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("trainable_layers", [-1, 6, 2.5, "3", True])
def test_bad_trainable_layers_are_refused_before_any_download(monkeypatch, trainable_layers):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _fail_download)
    monkeypatch.setenv("FCOS_OFFLINE", "0")
    with pytest.raises(ValueError, match=r"trainable_layers must be an int in \[0, 5\].*got"):
        BackboneWithFPN(pretrained=True, trainable_layers=trainable_layers)


def test_frozen_stages_need_frozen_batchnorm():
    with pytest.raises(ValueError, match=r"trainable_layers=3 freezes stem, trunk_output.block1.*frozen_batchnorm=True"):
        BackboneWithFPN(trainable_layers=3)
    with pytest.raises(ValueError, match="frozen_batchnorm=True"):
        BackboneWithFPN(trainable_layers=0, frozen_batchnorm=False)
    BackboneWithFPN(trainable_layers=5, frozen_batchnorm=False)  # nothing frozen: fine


@pytest.mark.parametrize("H, W", [(160, 224), (64, 96)])
def test_with_p2_adds_a_stride_4_level_in_front(H, W):
    torch.manual_seed(0)
    model = BackboneWithFPN(out_channels=16, with_p2=True)
    assert model.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    assert model.backbone_channels == {"c2": 32, "c3": 64, "c4": 160, "c5": 400}  # c2: block1's width
    with torch.no_grad():
        pyramid = model(torch.rand(1, 3, H, W))
    assert list(pyramid) == ["p2", "p3", "p4", "p5"]  # finest first, as the matching needs
    for level, x in pyramid.items():
        assert x.shape == (1, 16, H // model.strides[level], W // model.strides[level])


def test_with_p2_must_be_a_bool():
    with pytest.raises(ValueError, match="with_p2 must be True or False"):
        BackboneWithFPN(out_channels=16, with_p2="False")


def test_stack_c2_into_c3_moves_each_2x2_block_of_c2_into_channels_beside_c3():
    c2, c3 = torch.randn(2, 3, 8, 12), torch.randn(2, 5, 4, 6)
    c4 = torch.randn(2, 7, 2, 3)
    stacked = stack_c2_into_c3({"c2": c2, "c3": c3, "c4": c4})
    assert list(stacked) == ["c3", "c4"] and stacked["c4"] is c4
    assert torch.equal(stacked["c3"][:, :5], c3)
    # The block at (i, j): channel k's pixels (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1), in that order.
    blocks = c2.reshape(2, 3, 4, 2, 6, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 12, 4, 6)
    assert torch.equal(stacked["c3"][:, 5:], blocks)


@pytest.mark.parametrize("H, W", [(160, 224), (64, 96)])
def test_c2_passthrough_keeps_the_levels_and_widens_p3s_lateral(H, W):
    torch.manual_seed(0)
    model = BackboneWithFPN(out_channels=16, c2_passthrough=True)
    assert model.strides == {"p3": 8, "p4": 16, "p5": 32}
    assert model.fpn.lateral["p3"].in_channels == 64 + 4 * 32 and model.fpn.lateral["p4"].in_channels == 160
    pyramid = model(torch.rand(1, 3, H, W))
    assert list(pyramid) == ["p3", "p4", "p5"]
    for level, x in pyramid.items():
        assert x.shape == (1, 16, H // model.strides[level], W // model.strides[level])
    pyramid["p3"].sum().backward()  # block1 now reaches p3 through the passthrough too
    assert model.fpn.lateral["p3"].weight.grad[:, 64:].abs().sum() > 0


def test_c2_passthrough_is_a_bool_and_not_with_p2():
    with pytest.raises(ValueError, match="c2_passthrough must be True or False"):
        BackboneWithFPN(out_channels=16, c2_passthrough=1)
    with pytest.raises(ValueError, match=r"with_p2 and c2_passthrough .* Fix: pick one"):
        BackboneWithFPN(out_channels=16, with_p2=True, c2_passthrough=True)
