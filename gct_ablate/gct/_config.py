"""The GCT's choices and its non-tensor configuration (a leaf: no torch, imported anywhere).

The factor registry (:mod:`gct_ablate.factors`) takes its levels from here, so a new
norm or activation is added in one place: this module and the maths that implements it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

NORMS = ("l2", "l1", "layer", "none")
ACTIVATIONS = ("tanh", "sigmoid", "softsign", "hardtanh", "erf")
INITS = ("zeros", "ones", "normal")
ATTENTION_KINDS = ("gct", "se", "none")
P_NAMES = ("inf", "gap")  # p modes besides a number >= 1: max |x| and average pooling

PValue = float | str  # a number >= 1, math.inf, or "gap"


class GCTConfig(NamedTuple):
    """The non-tensor options of one GCT (p is a float >= 1, ``math.inf`` or "gap")."""

    p: float | str
    norm: str
    activation: str
    after_relu: bool
    eps: float


def parse_p(p: Any) -> PValue:
    """Validated p: a float >= 1, ``math.inf`` (also "inf") or "gap"; else a ValueError."""
    shown = p
    if isinstance(p, str):
        text = p.strip().lower()
        if text == "gap":
            return "gap"
        try:
            p = float(text)
        except ValueError:
            raise ValueError(f"invalid p {shown!r}; p is a number >= 1, 'inf' or 'gap'"
                             ) from None
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"invalid p {p!r}; p is a number >= 1, 'inf' or 'gap'")
    p = float(p)
    if math.isnan(p) or p < 1:
        raise ValueError(f"invalid p {shown!r}; p must be >= 1 (or 'inf', 'gap')")
    return p
