"""Chapter 01: RegNetX-400MF + FPN (fcos_lib/backbone.py)."""
import pytest
import torch
import torchvision

from fcos_lib.backbone import FPN, BackboneWithFPN


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
