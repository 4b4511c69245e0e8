"""Backbones with attention inserted at a chosen placement.

Models: CIFAR ResNet-20/32/56/110 (He et al. 2016, BasicBlock, widths 16/32/64, option-B
1x1 conv + BN projection shortcut) and torchvision's ResNet-18/34/50 (built by torchvision,
then edited: attention is inserted by wrapping submodules, never by copying its code).

Placements (canonical strings of :func:`gct_ablate.factors.parse_placement`):

- ``every-conv``: the official placement, one module before every convolution: the stem
  conv (over the input channels, e.g. 3 RGB), each conv of each block and each downsample
  projection conv; none before the FC. ResNet-50: 1 + 16 * 3 + 4 = 53 modules.
- ``block``: one per residual block, before its first conv.
- ``after-block``: the SE position, after the block's last BN, before the residual add.
- ``stages=1+2``: ``every-conv`` restricted to the listed stages. Stages are numbered 1-3
  (CIFAR ResNets) or 1-4 (torchvision ResNets); the stem is stage 0 and never part of a
  stage subset. A stage the model does not have is a ValueError.
- ``every=K``: every K-th of the ``every-conv`` positions in forward order, starting with
  the first (the stem).
- ``none``: no attention (as is ``attention="none"``).

Before-conv modules wrap the conv as ``GatedConv(attn, conv)`` (name ``...conv1.attn``);
after-block modules wrap the last BN as ``AfterBN(bn, attn)``, an ``nn.Sequential`` (name
``...bn2.1``). Submodules are registered in forward order, so ``named_modules`` order is depth
order. :func:`backbone_keys` maps the state-dict keys of such a model to those of the plain
backbone (the one place the wrappers' naming is spelled out); :func:`wrapper_of` finds the
wrapper of an attention module and the plain module inside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from gct_ablate.factors import MODELS, parse_placement
from gct_ablate.gct import ATTENTION_KINDS, GatedConv, is_attention, make_attention

if TYPE_CHECKING:
    import torch

    from gct_ablate.data import Data
    from gct_ablate.spec import TrialConfig

CIFAR_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50")
assert set(MODELS) == {*CIFAR_DEPTHS, *TORCHVISION_MODELS}  # factors.MODELS is the list


# ------------------------------------------------------------------------ CIFAR ResNet
class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 conv + BN projection when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem, stages of widths 16/32/64, GAP, FC."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"invalid CIFAR ResNet depth {depth}; expected 6n + 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes = 16
        for s, width in enumerate((16, 32, 64), start=1):
            blocks = [BasicBlock(planes if i == 0 else width, width, 2 if s > 1 and i == 0 else 1)
                      for i in range(n)]
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
            planes = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _torchvision_resnet(name: str, num_classes: int, in_channels: int, small_input: bool
                        ) -> nn.Module:
    import torchvision  # here: it loads torch._dynamo (~150 MiB, ~1 s) in every process

    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if small_input:  # 3x3 stride-1 stem, no max-pool (CIFAR-style)
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    else:
        return model
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# --------------------------------------------------------------------------- placement
class AfterBN(nn.Sequential):
    """The after-block wrapper: the block's last BN, then its attention module."""

    def __init__(self, bn: nn.Module, attn: nn.Module) -> None:
        super().__init__(bn, attn)


@dataclass(frozen=True)
class _Slot:
    parent: nn.Module
    attr: str
    stage: int
    block: int  # index of the block in depth order; -1 for the stem


def _stages(model: nn.Module) -> list[nn.Sequential]:
    return [getattr(model, f"layer{s}") for s in range(1, 5) if hasattr(model, f"layer{s}")]


def _blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    for s, layer in enumerate(_stages(model), start=1):
        for block in layer:
            yield s, block


def _conv_slots(model: nn.Module) -> list[_Slot]:
    """Every conv in forward order: stem, then per block its convs, then its downsample."""
    slots = [_Slot(model, "conv1", 0, -1)]
    for b, (s, block) in enumerate(_blocks(model)):
        slots += [_Slot(block, a, s, b) for a in ("conv1", "conv2", "conv3") if hasattr(block, a)]
        if block.downsample is not None:
            slots.append(_Slot(block.downsample, "0", s, b))
    return slots


def _select(model: nn.Module, placement: str, model_name: str) -> list[_Slot]:
    slots = _conv_slots(model)
    if placement == "every-conv":
        return slots
    if placement == "block":
        return [x for x in slots if x.attr == "conv1" and x.block >= 0]
    if placement.startswith("every="):
        return slots[:: int(placement.split("=")[1])]
    wanted = {int(s) for s in placement.split("=")[1].split("+")}
    n_stages = len(_stages(model))
    if max(wanted) > n_stages:
        raise ValueError(f"placement {placement!r} names stage {max(wanted)} but {model_name} "
                         f"has stages 1-{n_stages}")
    return [x for x in slots if x.stage in wanted]


def insert_attention(model: nn.Module, attention: str, placement: str,
                     options: dict[str, Any] | None = None, model_name: str = "model") -> None:
    """Insert attention modules into a built ResNet in place (see the module doc)."""
    placement = parse_placement(placement)
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(ATTENTION_KINDS)}")
    if attention == "none" or placement == "none":
        return
    options = dict(options or {})
    if placement == "after-block":
        for _, block in _blocks(model):
            attr = "bn3" if hasattr(block, "bn3") else "bn2"
            bn = getattr(block, attr)
            attn = make_attention(attention, bn.num_features, **options)
            setattr(block, attr, AfterBN(bn, attn))
        return
    for slot in _select(model, placement, model_name):
        conv = getattr(slot.parent, slot.attr)
        attn = make_attention(attention, conv.in_channels, **options)
        setattr(slot.parent, slot.attr, GatedConv(attn, conv))


def build_model(
    model: str,
    num_classes: int,
    in_channels: int = 3,
    *,
    attention: str = "gct",
    placement: str = "every-conv",
    attention_options: dict[str, Any] | None = None,
    small_input: bool = True,
) -> nn.Module:
    """A ResNet with attention at ``placement``.

    ``small_input`` (torchvision models only) swaps the 7x7 stride-2 stem and max-pool for a
    3x3 stride-1 conv, for 8x8 to 64x64 images; CIFAR ResNets always have that stem.
    The backbone is built before any attention module, so with the same seed the backbone
    weights do not depend on the attention settings.
    """
    name = model.strip().lower()
    if name in CIFAR_DEPTHS:
        net: nn.Module = CifarResNet(CIFAR_DEPTHS[name], num_classes, in_channels)
    elif name in TORCHVISION_MODELS:
        net = _torchvision_resnet(name, num_classes, in_channels, small_input)
    else:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    insert_attention(net, attention, placement, attention_options, name)
    return net


def model_for(cfg: TrialConfig, num_classes: int, in_channels: int, small_input: bool = True
              ) -> nn.Module:
    """The network of a run's configuration (model, attention, placement, GCT options) for
    data of ``num_classes`` classes and ``in_channels`` channels."""
    return build_model(cfg.model, num_classes, in_channels, attention=cfg.attention,
                       placement=cfg.placement, attention_options=cfg.attention_options(),
                       small_input=small_input)


# ---------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class AttentionSite:
    """One attention module: qualified name, channels, stage (0 = stem), depth index."""

    name: str
    channels: int
    stage: int
    index: int  # position among the model's attention modules, in forward order
    module: nn.Module = field(compare=False, repr=False)


_STAGE = re.compile(r"(?:^|\.)layer(\d+)\.")


def attention_modules(model: nn.Module) -> list[AttentionSite]:
    """The model's GCT / SE modules in depth (forward) order."""
    sites = []
    for name, module in model.named_modules():
        if is_attention(module):
            match = _STAGE.search(name)
            stage = int(match.group(1)) if match else 0
            sites.append(AttentionSite(name, module.channels, stage, len(sites), module))
    return sites


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters inside attention modules); buffers are not counted."""
    total = sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    attn = 0
    for site in attention_modules(model):
        for p in site.module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                attn += p.numel()
    return total, attn


# ------------------------------------------------------------------ plain <-> attention
def _wrappers(model: nn.Module) -> Iterator[tuple[str, str, str]]:
    """(wrapper name, prefix of its plain module, prefix of its attention module)."""
    for name, module in model.named_modules():
        if isinstance(module, GatedConv):
            yield name, f"{name}.conv.", f"{name}.attn."
        elif isinstance(module, AfterBN):
            yield name, f"{name}.0.", f"{name}.1."


def backbone_keys(model: nn.Module) -> dict[str, str]:
    """This model's state-dict keys of backbone tensors -> their keys in the plain backbone
    (``attention="none"``); attention keys are left out.

    ``GatedConv(attn, conv)`` at ``N`` holds the conv as ``N.conv`` (``N.weight`` becomes
    ``N.conv.weight``, ``N.attn.*`` is attention); ``AfterBN(bn, attn)`` at ``N`` holds the BN
    as ``N.0`` (``N.weight`` becomes ``N.0.weight``, ``N.1.*`` is attention).
    """
    renames = [(inner, f"{name}.") for name, inner, _ in _wrappers(model)]
    attention = tuple(attn for _, _, attn in _wrappers(model))
    out = {}
    for key in model.state_dict():
        if key.startswith(attention):
            continue
        out[key] = next((plain + key[len(inner):] for inner, plain in renames
                         if key.startswith(inner)), key)
    return out


@dataclass(frozen=True)
class Wrapped:
    """Where an attention module sits: ``setattr(parent, attr, plain)`` takes it out."""

    parent: nn.Module
    attr: str
    wrapper: nn.Module  # the GatedConv or AfterBN
    plain: nn.Module  # the conv after the attention module, or the BN before it


def wrapper_of(model: nn.Module, site_name: str) -> Wrapped | None:
    """The wrapper of the attention module called ``site_name``; None when it has none."""
    wrapper_name, _, _ = site_name.rpartition(".")
    wrapper = model.get_submodule(wrapper_name)
    parent_name, _, attr = wrapper_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if isinstance(wrapper, GatedConv):
        return Wrapped(parent, attr, wrapper, wrapper.conv)
    if isinstance(wrapper, AfterBN):
        return Wrapped(parent, attr, wrapper, wrapper[0])
    return None


def unwrap(model: nn.Module, site_names: Iterable[str]) -> None:
    """Take the attention modules ``site_names`` out of ``model`` for good: each wrapper is
    replaced by its plain module (the structure of a pruned network)."""
    for name in list(site_names):
        found = wrapper_of(model, name)
        if found is None:
            raise ValueError(f"{name!r} is not an attention module of this model")
        setattr(found.parent, found.attr, found.plain)


def build_trial(cfg: TrialConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, Data]:
    """The model (at its initial weights for the current RNG state) and the data of a trial,
    both on ``device``."""
    from gct_ablate.data import load_dataset

    data = load_dataset(cfg.dataset, **cfg.data_options()).to(device)
    model = model_for(cfg, data.num_classes, data.in_channels, data.image_size <= 64).to(device)
    return model, data
