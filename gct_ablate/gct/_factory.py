"""Attention modules by name (timm's ``create_attn`` pattern)."""

from __future__ import annotations

from typing import Any

from torch import nn

from gct_ablate.gct._checks import _check_channels
from gct_ablate.gct._config import ATTENTION_KINDS
from gct_ablate.gct._gct import GCT
from gct_ablate.gct._se import SqueezeExcite


def make_attention(kind: str, channels: int, **options: Any) -> nn.Module:
    """Build an attention module: "gct" (options go to :class:`GCT`), "se" or "none".

    GCT options are ignored for "se" and "none" ("se" takes only ``reduction``).
    """
    if kind == "gct":
        return GCT(channels, **options)
    if kind == "se":
        return SqueezeExcite(channels, reduction=options.get("reduction", 16))
    if kind == "none":
        _check_channels(channels)
        return nn.Identity()
    raise ValueError(f"unknown attention {kind!r}; valid: {', '.join(ATTENTION_KINDS)}")


def is_attention(module: nn.Module) -> bool:
    """True for a GCT or SE module (``nn.Identity`` of kind "none" is not attention)."""
    return isinstance(module, (GCT, SqueezeExcite))
