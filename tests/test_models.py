"""Backbones and attention placement: counts, order, identity at init, channels_last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gct_ablate.gct import GCT, SqueezeExcite
from gct_ablate.models import (
    MODELS,
    AttentionSite,
    attention_modules,
    build_model,
    count_parameters,
)

# Expected counts by hand. ResNet-20: stem + 9 blocks x 2 convs + 2 downsample = 21.
# ResNet-50: stem + 16 bottlenecks x 3 convs + 4 downsample = 53 (official placement).
R20 = {
    "every-conv": 1 + 9 * 2 + 2,
    "block": 9,
    "after-block": 9,
    "stages=3": 3 * 2 + 1,
    "stages=1": 3 * 2,
    "stages=1+2": 3 * 2 + 3 * 2 + 1,
    "every=2": 11,  # positions 0, 2, ..., 20
    "every=4": 6,  # 0, 4, ..., 20
    "every=1": 21,
    "none": 0,
}
R50 = {
    "every-conv": 1 + 16 * 3 + 4,
    "block": 16,
    "after-block": 16,
    "stages=3": 6 * 3 + 1,
    "stages=1+4": (3 + 3) * 3 + 2,
    "every=2": 27,  # ceil(53 / 2)
    "every=4": 14,  # ceil(53 / 4)
    "none": 0,
}


def _meta_sites(model: str, **kwargs) -> list[AttentionSite]:
    """Sites of a model built on the meta device (no weights: fast, for structure tests)."""
    with torch.device("meta"):
        return attention_modules(build_model(model, 10, **kwargs))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("placement,expected", sorted(R20.items()))
def test_resnet20_counts(placement: str, expected: int) -> None:
    sites = _meta_sites("resnet20", placement=placement)
    assert len(sites) == expected
    assert [s.index for s in sites] == list(range(expected))
    assert all(isinstance(s.module, GCT) and s.module.channels == s.channels for s in sites)


@pytest.mark.parametrize("placement,expected", sorted(R50.items()))
def test_resnet50_counts(placement: str, expected: int) -> None:
    assert len(_meta_sites("resnet50", placement=placement)) == expected


def test_every_conv_sites_resnet20() -> None:
    sites = attention_modules(build_model("resnet20", 10, in_channels=3))
    assert (sites[0].name, sites[0].channels, sites[0].stage) == ("conv1.attn", 3, 0)
    downsample = [s for s in sites if ".downsample." in s.name]
    assert [(s.stage, s.channels) for s in downsample] == [(2, 16), (3, 32)]
    assert [sum(s.stage == k for s in sites) for k in range(4)] == [1, 6, 7, 7]
    assert isinstance(sites[0], AttentionSite)


def test_every_conv_resnet50_stem_and_channels() -> None:
    sites = _meta_sites("resnet50", in_channels=1)
    assert sites[0].channels == 1 and sites[0].stage == 0
    assert (sites[-1].name, sites[-1].channels) == ("layer4.2.conv3.attn", 512)
    down = {s.name: s.channels for s in sites if "downsample" in s.name}
    assert down["layer1.0.downsample.0.attn"] == 64
    assert down["layer4.0.downsample.0.attn"] == 1024
    assert max(s.stage for s in sites) == 4


def test_after_block_channels() -> None:
    sites = _meta_sites("resnet50", placement="after-block")
    assert [s.channels for s in sites][:4] == [256, 256, 256, 512]
    assert all(s.name.endswith("bn3.1") for s in sites)


@pytest.mark.parametrize("model", ["resnet20", "resnet50"])
@pytest.mark.parametrize("placement", ["every-conv", "after-block", "every=3"])
def test_sites_in_forward_order(model: str, placement: str) -> None:
    net = build_model(model, 10, placement=placement)
    sites = attention_modules(net)
    seen: list[str] = []
    names = {id(s.module): s.name for s in sites}
    for s in sites:
        s.module.register_forward_pre_hook(lambda m, _: seen.append(names[id(m)]))
    _forward(net, torch.randn(1, 3, 4, 4))
    assert seen == [s.name for s in sites]


def test_stage_beyond_model_raises() -> None:
    with pytest.raises(ValueError, match="stage 4"):
        build_model("resnet20", 10, placement="stages=4")
    assert len(_meta_sites("resnet18", placement="stages=4")) == 2 * 2 + 1


@pytest.mark.parametrize("kwargs", [{"attention": "none"}, {"placement": "none"}])
def test_no_attention(kwargs: dict) -> None:
    net = build_model("resnet20", 10, **kwargs)
    assert attention_modules(net) == []
    assert count_parameters(net)[1] == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="unknown attention"):
        build_model("resnet20", 10, attention="cbam")
    with pytest.raises(ValueError, match="placement"):
        build_model("resnet20", 10, placement="somewhere")


def test_se_and_parameter_share() -> None:
    net = build_model("resnet20", 10, attention="se", placement="after-block")
    sites = attention_modules(net)
    assert len(sites) == 9 and all(isinstance(s.module, SqueezeExcite) for s in sites)
    total, attn = count_parameters(net)
    plain, _ = count_parameters(build_model("resnet20", 10, attention="none"))
    assert total - plain == attn > 0
    gct_total, gct_attn = count_parameters(build_model("resnet20", 10))
    assert gct_attn == 3 * sum(s.channels for s in attention_modules(build_model("resnet20", 10)))
    assert gct_total - plain == gct_attn


def test_fixed_parameters_are_not_counted() -> None:
    options = {"learn_alpha": False, "learn_beta": False}
    net = build_model("resnet20", 10, attention_options=options)
    channels = sum(s.channels for s in attention_modules(net))
    assert count_parameters(net)[1] == channels  # gamma only


@pytest.mark.parametrize("model", MODELS)
def test_forward_shapes(model: str) -> None:
    torch.manual_seed(0)
    net = build_model(model, 7, in_channels=1, placement="every-conv")
    assert _forward(net, torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_large_input_stem() -> None:
    net = build_model("resnet18", 5, small_input=False)
    assert net.conv1.conv.kernel_size == (7, 7) and not isinstance(net.maxpool, nn.Identity)
    assert _forward(net, torch.randn(1, 3, 64, 64)).shape == (1, 5)
    small = build_model("resnet18", 5, in_channels=1)
    assert small.conv1.conv.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)


@pytest.mark.parametrize("model,placement", [
    ("resnet20", "every-conv"), ("resnet20", "after-block"), ("resnet20", "stages=2"),
    ("resnet18", "after-block"), ("resnet50", "every-conv"),
])
def test_gct_is_identity_at_init(model: str, placement: str) -> None:
    """In float64: in float32 a deep net in train mode (batch 2, 1x1 maps at the end) blows
    rounding differences between conv algorithms up (a strided 1x1 conv after GCT runs on
    the pixels it reads, see GatedConv)."""
    torch.manual_seed(1)
    plain = build_model(model, 10, attention="none").double()
    torch.manual_seed(1)
    gated = build_model(model, 10, placement=placement).double()
    assert len(attention_modules(gated)) > 0
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_forward(plain, x), _forward(gated, x), **close)
    plain.train(), gated.train()
    torch.testing.assert_close(plain(x), gated(x), **close)


@pytest.mark.parametrize("attention", ["gct", "se"])
def test_channels_last(attention: str) -> None:
    torch.manual_seed(0)
    net = build_model("resnet20", 10, attention=attention)
    for site in attention_modules(net):  # a non-trivial gate
        for p in site.module.parameters():
            nn.init.normal_(p, std=0.5)
    x = torch.randn(4, 3, 16, 16)
    ref = _forward(net, x)
    out = _forward(net.to(memory_format=torch.channels_last),
                   x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_backward_and_recompute() -> None:
    torch.manual_seed(0)
    net = build_model("resnet20", 10, attention_options={"recompute": True})
    x = torch.randn(4, 3, 8, 8)
    net(x).sum().backward()
    gammas = [s.module.gamma.grad for s in attention_modules(net)]
    assert all(g is not None for g in gammas)
