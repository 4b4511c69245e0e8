"""Gate analysis of a trained model: per GCT module, its parameters and its gates.

For each GCT module in depth order, :func:`gate_stats` reports the mean and spread (population
std over channels) of alpha, gamma and beta, and, on validation data, the gate
``g[n, c]`` (sample n, channel c):

- ``gate_mean`` / ``gate_std``: mean and std of all ``g[n, c]``;
- ``gate_dev``: mean of ``|g[n, c] - 1|`` (how far the module is from the identity);
- ``near_identity``: fraction of channels c with ``|g[n, c] - 1| <= 0.05`` for EVERY
  validation sample n seen (the channel is a pass-through on this data);
- ``gamma_small``: fraction of channels with ``|gamma_c| < 0.05``.

Gates are computed by a forward pre-hook calling ``GCT.gate`` on the module's input; the hooks
exist only inside :func:`gate_stats`, so training pays nothing. Pooling over seeds, the
paper-style figure (annotated with the test of the paper's depth claim,
:func:`gct_ablate.analysis.trend.depth_trend`) and the table need no torch: they live in
:mod:`gct_ablate.analysis.gate_plots` (re-exported here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gct_ablate.analysis.gate_plots import NEAR, gates_table, plot_gates, pool_stats
from gct_ablate.data import Dataset
from gct_ablate.gct import GCT
from gct_ablate.models import AttentionSite, attention_modules

__all__ = ["NEAR", "gate_stats", "gates_table", "gct_sites", "plot_gates", "pool_stats"]


def gct_sites(model: nn.Module) -> list[AttentionSite]:
    """The model's GCT modules in depth order (SE modules are left out)."""
    return [s for s in attention_modules(model) if isinstance(s.module, GCT)]


class _GateAccumulator:
    """Running per-channel sums and largest |gate - 1| of one module's gate over samples."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None
        self.sq: Tensor | None = None
        self.abs_dev: Tensor | None = None
        self.max_dev: Tensor | None = None

    def __call__(self, module: GCT, inputs: tuple[Tensor, ...]) -> None:
        g = _host(module.gate(inputs[0]).flatten(1))  # (B, C)
        dev = (g - 1).abs()
        if self.sum is None:
            self.sum, self.sq = g.sum(0), g.pow(2).sum(0)
            self.abs_dev, self.max_dev = dev.sum(0), dev.amax(0)
        else:
            self.sum += g.sum(0)
            self.sq += g.pow(2).sum(0)
            self.abs_dev += dev.sum(0)
            self.max_dev = torch.maximum(self.max_dev, dev.amax(0))
        self.n += g.shape[0]

    def summary(self) -> dict[str, float]:
        if self.sum is None:
            return {k: math.nan for k in ("gate_mean", "gate_std", "gate_dev", "near_identity")}
        count = self.n * self.sum.numel()
        mean = self.sum.sum().item() / count
        var = max(self.sq.sum().item() / count - mean**2, 0.0)
        return {
            "gate_mean": mean,
            "gate_std": math.sqrt(var),
            "gate_dev": self.abs_dev.sum().item() / count,
            "near_identity": (self.max_dev <= NEAR).double().mean().item(),
        }


def _host(t: Tensor) -> Tensor:
    """float64 copy on the CPU (MPS has no float64)."""
    return t.detach().float().cpu().double()


def _spread(name: str, t: Tensor) -> dict[str, float]:
    t = _host(t).flatten()
    return {f"{name}_mean": t.mean().item(), f"{name}_std": t.std(correction=0).item()}


@torch.no_grad()
def gate_stats(
    model: nn.Module,
    data: Dataset,
    device: torch.device | str | None = None,
    max_batches: int | None = 4,
    *,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Per GCT module (depth order): parameter and gate statistics (see the module doc).

    Gates are measured in eval mode on the first ``max_batches`` validation batches (all
    when None); ``data`` must already be on the model's device (``device`` is accepted for
    the ``on_end(model, data, device)`` signature and not otherwise used).
    """
    sites = gct_sites(model)
    if not sites:
        return []
    accs = [_GateAccumulator() for _ in sites]
    handles = [s.module.register_forward_pre_hook(a) for s, a in zip(sites, accs, strict=True)]
    was_training = model.training
    model.eval()
    try:
        for i, (x, _) in enumerate(data.batches("val", batch_size, shuffle=False, augment=False)):
            if max_batches is not None and i >= max_batches:
                break
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    for site, acc in zip(sites, accs, strict=True):
        m = site.module
        out.append({
            "index": site.index, "name": site.name, "stage": site.stage,
            "channels": site.channels,
            **_spread("alpha", m.alpha), **_spread("gamma", m.gamma), **_spread("beta", m.beta),
            **acc.summary(),
            "gamma_small": (_host(m.gamma).abs() < NEAR).double().mean().item(),
        })
    return out
