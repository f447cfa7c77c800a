"""Chapter 02: the FCOS head (fcos_lib/head.py)."""
import math

import pytest
import torch
from torch import nn

from fcos_lib.head import FCOSHead, flatten_level, group_norm_groups, positive_deltas


def make_feats(B=2, F=32, sizes=((20, 28), (10, 14), (5, 7))):
    """FPN-like features of a 160 x 224 image: p3 20x28, p4 10x14, p5 5x7."""
    return {p: torch.randn(B, F, h, w) for p, (h, w) in zip(("p3", "p4", "p5"), sizes)}


@pytest.mark.parametrize("sizes", [((20, 28), (10, 14), (5, 7)), ((28, 40), (14, 20), (7, 10))])
def test_output_shapes_non_square(sizes):
    torch.manual_seed(0)
    head = FCOSHead(num_classes=5, in_channels=32)
    cls_logits, box_deltas, ctr_logits = head(make_feats(sizes=sizes))
    for out in (cls_logits, box_deltas, ctr_logits):
        assert list(out) == ["p3", "p4", "p5"]
    for p, (h, w) in zip(("p3", "p4", "p5"), sizes):
        assert cls_logits[p].shape == (2, h * w, 5)
        assert box_deltas[p].shape == (2, h * w, 4)
        assert ctr_logits[p].shape == (2, h * w, 1)


def test_initial_class_probability_is_the_prior():
    torch.manual_seed(0)
    head = FCOSHead(num_classes=20, in_channels=32, prior_prob=0.01)
    # sigmoid(-log(99)) = 1 / (1 + 99) = 0.01
    assert head.cls_logits.bias.detach().allclose(torch.full((20,), -math.log(99)))
    with torch.no_grad():
        cls_logits, _, _ = head(make_feats())
    probs = torch.cat([c.sigmoid().flatten() for c in cls_logits.values()])
    assert abs(probs.mean().item() - 0.01) < 0.002
    assert probs.min() > 0.003 and probs.max() < 0.03


def test_every_head_conv_is_normal_001_with_zero_bias():
    torch.manual_seed(0)
    head = FCOSHead(num_classes=20, in_channels=64)
    convs = {n: m for n, m in head.named_modules() if isinstance(m, nn.Conv2d)}
    assert {"cls_logits", "box_deltas", "ctr_logits"} <= set(convs)  # the predictors too (ERRATA 4)
    assert len(convs) == 2 * 4 + 3
    for name, conv in convs.items():
        assert conv.kernel_size == (3, 3), name
        assert abs(conv.weight.std().item() - 0.01) < 0.001, name
        assert abs(conv.weight.mean().item()) < 0.001, name
        if name != "cls_logits":
            assert torch.all(conv.bias == 0), name


def test_flattening_is_row_major():
    # A 2 x 3 map whose value is 10*h + w: row-major order reads row 0, then row 1.
    h, w = 2, 3
    pos = (10 * torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)).float()
    flat = flatten_level(pos.view(1, 1, h, w))
    assert flat.shape == (1, 6, 1)
    assert flat[0, :, 0].tolist() == [0, 1, 2, 10, 11, 12]


def test_head_row_k_is_the_conv_output_at_divmod_k_w():
    torch.manual_seed(0)
    head = FCOSHead(num_classes=3, in_channels=32, num_convs=2)
    feats = make_feats()
    cls_logits, box_deltas, ctr_logits = head(feats)
    x = feats["p4"]  # (2, 32, 10, 14)
    cls_map = head.cls_logits(head.cls_stem(x))
    reg = head.reg_stem(x)
    box_map, ctr_map = head.box_deltas(reg), head.ctr_logits(reg)
    for k in (0, 13, 14, 139):
        hk, wk = divmod(k, 14)
        torch.testing.assert_close(cls_logits["p4"][:, k], cls_map[:, :, hk, wk])
        torch.testing.assert_close(box_deltas["p4"][:, k], positive_deltas(box_map[:, :, hk, wk]))
        torch.testing.assert_close(ctr_logits["p4"][:, k], ctr_map[:, :, hk, wk])


@pytest.mark.parametrize("use_groupnorm, expected", [(True, 8), (False, 0)])
def test_groupnorm_on_off(use_groupnorm, expected):
    head = FCOSHead(num_classes=3, in_channels=32, num_convs=4, use_groupnorm=use_groupnorm)
    norms = [m for m in head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == expected
    assert all(m.num_groups == 32 for m in norms)


@pytest.mark.parametrize("channels, groups", [(256, 32), (64, 32), (48, 16), (20, 4), (16, 16), (7, 1)])
def test_group_rule(channels, groups):
    assert group_norm_groups(channels) == groups
    nn.GroupNorm(group_norm_groups(channels), channels)  # accepted by GroupNorm


def test_small_channels_work_with_groupnorm():
    head = FCOSHead(num_classes=2, in_channels=20)
    cls_logits, _, _ = head(make_feats(F=20))
    assert cls_logits["p5"].shape == (2, 35, 2)


@pytest.mark.parametrize("use_groupnorm", [True, False])
def test_gradient_reaches_every_parameter(use_groupnorm):
    torch.manual_seed(0)
    head = FCOSHead(num_classes=4, in_channels=32, use_groupnorm=use_groupnorm)
    cls_logits, box_deltas, ctr_logits = head(make_feats())
    loss = sum(c.mean() + d.mean() + t.mean() for c, d, t in zip(
        cls_logits.values(), box_deltas.values(), ctr_logits.values()))
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_wrong_channels_and_arguments_are_refused():
    head = FCOSHead(num_classes=3, in_channels=32)
    with pytest.raises(ValueError, match=r"feats\['p3'\] must be \(B, 32, h, w\).*got shape \(2, 16, 20, 28\)"):
        head(make_feats(F=16))
    with pytest.raises(ValueError, match="num_classes"):
        FCOSHead(num_classes=0)
    with pytest.raises(ValueError, match="prior_prob"):
        FCOSHead(num_classes=3, prior_prob=1.0)


def test_positive_deltas_are_exp_capped_and_never_dead():
    x = torch.tensor([-8.0, -1.0, 0.0, 2.0, 100.0], requires_grad=True)
    y = positive_deltas(x)
    torch.testing.assert_close(y[:4], torch.exp(x[:4]))
    assert y[4].item() == pytest.approx(1000.0)  # capped: exp(100) would overflow float16
    assert positive_deltas(torch.tensor([100.0], dtype=torch.float16)).isfinite().all()
    y.sum().backward()
    assert (x.grad[:4] > 0).all()  # a ReLU would give 0 for the negative inputs


def test_box_deltas_are_positive_even_when_the_conv_output_is_negative():
    head = FCOSHead(num_classes=2, in_channels=32)
    nn.init.constant_(head.box_deltas.bias, -3.0)  # every raw output < 0
    _, box_deltas, _ = head(make_feats())
    assert all((d > 0).all() for d in box_deltas.values())
