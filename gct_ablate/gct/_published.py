"""The official GCT forward (z-x-yang/GCT, PyTorch/GCT.py), line by line: the oracle.

Tests check every implementation against it and the benchmarks time against it. Only the
paper's two modes exist here: ``l2`` and ``l1`` (with its ``after_relu`` shortcut).
"""

from __future__ import annotations

import torch
from torch import Tensor


def published_gct(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, *, mode: str = "l2",
                  after_relu: bool = False, eps: float = 1e-5) -> Tensor:
    """``x * (1 + tanh(embedding * norm + beta))`` with the official mode's embedding and norm."""
    if mode == "l2":
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + eps).pow(0.5) * alpha
        norm = gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + eps).pow(0.5)
    elif mode == "l1":
        embedding = (x if after_relu else x.abs()).sum((2, 3), keepdim=True) * alpha
        norm = gamma / (embedding.abs().mean(dim=1, keepdim=True) + eps)
    else:  # the official code calls sys.exit() here
        raise ValueError(f"unknown GCT mode {mode!r}; valid: l2, l1")
    return x * (1.0 + torch.tanh(embedding * norm + beta))
