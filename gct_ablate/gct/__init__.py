"""The Gated Channel Transformation, generalized, with its SE baseline and fused CPU path.

Public names (the modules behind them are private)::

    GCT, SqueezeExcite, GatedConv      nn.Modules
    make_attention, is_attention       the factory by name ("gct", "se", "none")
    gct_reference, gct_gate            the eager maths (the fast path's cross-check)
    published_gct                      the official module's forward, line by line
    GCTConfig, parse_p, NORMS, ACTIVATIONS, INITS, ATTENTION_KINDS, P_NAMES
    kernel_description                 which implementation a float32 CPU GCT runs

The configuration names load without torch (the command line imports them); the rest
load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gct_ablate.gct._config import (
    ACTIVATIONS,
    ATTENTION_KINDS,
    INITS,
    NORMS,
    P_NAMES,
    GCTConfig,
    PValue,
    parse_p,
)

if TYPE_CHECKING:
    from gct_ablate.gct._factory import is_attention, make_attention
    from gct_ablate.gct._gated_conv import GatedConv
    from gct_ablate.gct._gct import GCT
    from gct_ablate.gct._kernel import describe as kernel_description
    from gct_ablate.gct._published import published_gct
    from gct_ablate.gct._reference import gct_gate, gct_reference
    from gct_ablate.gct._se import SqueezeExcite

_LAZY = {
    "GCT": ("_gct", "GCT"),
    "SqueezeExcite": ("_se", "SqueezeExcite"),
    "GatedConv": ("_gated_conv", "GatedConv"),
    "make_attention": ("_factory", "make_attention"),
    "is_attention": ("_factory", "is_attention"),
    "gct_reference": ("_reference", "gct_reference"),
    "gct_gate": ("_reference", "gct_gate"),
    "published_gct": ("_published", "published_gct"),
    "kernel_description": ("_kernel", "describe"),
}

__all__ = [
    "ACTIVATIONS", "ATTENTION_KINDS", "GCT", "GCTConfig", "GatedConv", "INITS", "NORMS",
    "P_NAMES", "PValue", "SqueezeExcite", "gct_gate", "gct_reference", "is_attention",
    "kernel_description", "make_attention", "parse_p", "published_gct",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value
