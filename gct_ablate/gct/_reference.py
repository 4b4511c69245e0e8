"""The generalized GCT maths, transcribed eagerly: the cross-check of the fused path.

Formulas in :mod:`gct_ablate.gct._gct`'s doc. Reductions run in float32 (float64 for
float64 input); autograd differentiates them as written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gct_ablate.gct._config import PValue


def embedding(x: Tensor, p: PValue, after_relu: bool = False, eps: float = 1e-5) -> Tensor:
    """E(x) of shape (B, C, 1, 1) in float32 (float64 if x is float64); no alpha."""
    xf = x if x.dtype == torch.float64 else x.float()
    if p == "gap":
        return xf.mean(dim=(2, 3), keepdim=True)
    if p == math.inf:
        return xf.abs().amax(dim=(2, 3), keepdim=True)
    if p == 1.0:
        return (xf if after_relu else xf.abs()).sum(dim=(2, 3), keepdim=True)
    if p == 2.0:
        return (xf.pow(2).sum(dim=(2, 3), keepdim=True) + eps).sqrt()
    return (xf.abs().pow(p).sum(dim=(2, 3), keepdim=True) + eps).pow(1.0 / p)


def normalized(s: Tensor, gamma: Tensor, norm: str, eps: float = 1e-5) -> Tensor:
    """The term t inside the gate, from the embedding s (B, C, 1, 1)."""
    if norm == "l2":
        return s * gamma / (s.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()
    if norm == "l1":
        return s * gamma / (s.abs().mean(dim=1, keepdim=True) + eps)
    if norm == "layer":
        mean = s.mean(dim=1, keepdim=True)
        var = s.var(dim=1, unbiased=False, keepdim=True)
        return gamma * (s - mean) / (var + eps).sqrt()
    return gamma * s


def gate_activation(z: Tensor, activation: str) -> Tensor:
    """g(z) with g(0) = 1."""
    if activation == "tanh":
        return 1.0 + torch.tanh(z)
    if activation == "sigmoid":
        return 2.0 * torch.sigmoid(z)
    if activation == "softsign":
        return 1.0 + F.softsign(z)
    if activation == "hardtanh":
        return 1.0 + F.hardtanh(z)
    return 1.0 + torch.erf(z)


def gct_gate(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    *,
    p: PValue = 2.0,
    norm: str = "l2",
    activation: str = "tanh",
    after_relu: bool = False,
    eps: float = 1e-5,
) -> Tensor:
    """The gate (B, C, 1, 1), computed eagerly in float32 (float64 for float64 input)."""
    s = embedding(x, p, after_relu, eps)
    dt = s.dtype
    t = normalized(alpha.to(dt) * s, gamma.to(dt), norm, eps)
    return gate_activation(t + beta.to(dt), activation)


def gct_reference(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, **options: Any) -> Tensor:
    """Eager GCT: ``x * gct_gate(x, ...)`` in the dtype of x (the cross-check of the fast path).

    Half-precision input is multiplied in float32, so that autograd's reduction for the
    gate's gradient runs in float32 too.
    """
    gate = gct_gate(x, alpha, gamma, beta, **options)
    if x.dtype in (torch.float32, torch.float64):
        return x * gate.to(x.dtype)
    return (x.float() * gate).to(x.dtype)
