"""Post-hoc pruning of GCT modules: how many can go without retraining?

Modules are removed (replaced by ``nn.Identity``) in order of a redundancy score, lowest
first, and the model is re-evaluated on the validation set at each removal fraction:

- ``gate``: mean ``|gate - 1|`` on validation data (:func:`gct_ablate.analysis.gates.gate_stats`);
- ``gamma``: mean ``|gamma|`` over the module's channels;
- ``random``: a seeded random order, the control.

The model is restored after each fraction (modules are swapped back), so every point starts
from the trained weights. With ``finetune_epochs > 0`` a copy of the pruned model is trained for
that many epochs (SGD, cosine from 0.1 x lr) before it is evaluated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from rich.table import Table
from torch import nn

from gct_ablate.analysis.gates import gate_stats, gct_sites
from gct_ablate.data import Dataset
from gct_ablate.spec import TrialConfig
from gct_ablate.train import evaluate, param_groups

ORDERS = ("gate", "gamma", "random")
FRACTIONS = tuple(i / 10 for i in range(11))


class CurvePoint(NamedTuple):
    """One point of a pruning curve; accuracies and losses as in ``train.evaluate``."""

    fraction: float
    n_removed: int
    val_top1: float
    val_loss: float


def removal_order(model: nn.Module, data: Dataset, order: str = "gate", *, seed: int = 0,
                  max_batches: int | None = 4) -> list[int]:
    """Positions (in :func:`gct_sites` order) of the GCT modules, most redundant first."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
    n = len(gct_sites(model))
    if order == "random":
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if order == "gamma":
        score = [s.module.gamma.detach().abs().mean().item() for s in gct_sites(model)]
    else:
        score = [row["gate_dev"] for row in gate_stats(model, data, max_batches=max_batches)]
    return sorted(range(n), key=lambda i: (score[i], i))


@contextmanager
def modules_removed(model: nn.Module, positions: Sequence[int]) -> Iterator[nn.Module]:
    """Inside the block the GCT modules at ``positions`` are ``nn.Identity``; restored after."""
    sites = gct_sites(model)
    swapped = []
    try:
        for i in positions:
            parent_name, _, attr = sites[i].name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attr, nn.Identity())
            swapped.append((parent, attr, sites[i].module))
        yield model
    finally:
        for parent, attr, module in reversed(swapped):
            setattr(parent, attr, module)


def n_to_remove(fraction: float, n_modules: int) -> int:
    """round(fraction * n_modules), halves rounded up."""
    return min(n_modules, math.floor(fraction * n_modules + 0.5 + 1e-9))


def finetune(model: nn.Module, data: Dataset, cfg: TrialConfig, epochs: int) -> None:
    """Train ``model`` in place for ``epochs`` (SGD nesterov, cosine from 0.1 x cfg.lr)."""
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.beta_decay),
                                lr=0.1 * cfg.lr, momentum=0.9, nesterov=True)
    steps = epochs * data.num_batches("train", cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    generator = data.generator(cfg.seed)
    model.train()
    for _ in range(epochs):
        for x, y in data.batches("train", cfg.batch_size, shuffle=True, generator=generator,
                                 augment=True):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


def prune_curve(
    model: nn.Module,
    data: Dataset,
    device: Any = None,
    order: str = "gate",
    fractions: Sequence[float] = FRACTIONS,
    *,
    seed: int = 0,
    finetune_epochs: int = 0,
    cfg: TrialConfig | None = None,
    batch_size: int = 256,
) -> list[CurvePoint]:
    """Accuracy after removing the first ``n_to_remove(f, M)`` modules of ``order``, per f.

    ``data`` must be on the model's device (``device`` mirrors the ``on_end`` signature).
    Fine-tuning (``finetune_epochs > 0``) uses ``cfg``'s lr, batch size, decay and seed.
    """
    ranked = removal_order(model, data, order, seed=seed)
    points = []
    for f in fractions:
        k = n_to_remove(f, len(ranked))
        with modules_removed(model, ranked[:k]):
            if finetune_epochs > 0 and k > 0:
                tuned = copy.deepcopy(model)
                finetune(tuned, data, cfg or TrialConfig(), finetune_epochs)
                metrics = evaluate(tuned, data, batch_size)
            else:
                metrics = evaluate(model, data, batch_size)
        points.append(CurvePoint(f, k, metrics["val_top1"], metrics["val_loss"]))
    return points


def max_removable(curve: Sequence[CurvePoint], tolerance_points: float = 0.5) -> int:
    """Most modules removed at a point losing less than ``tolerance_points`` of top-1 (in
    percentage points) against the curve's 0-removed point; 0 if no point qualifies."""
    base = next((p.val_top1 for p in curve if p.n_removed == 0), None)
    if base is None:
        raise ValueError("the curve has no point with 0 modules removed")
    ok = [p.n_removed for p in curve if 100.0 * (base - p.val_top1) < tolerance_points]
    return max(ok, default=0)


# ------------------------------------------------------------------------- over seeds
class CurveBand(NamedTuple):
    """Mean of several seeds' curves at one fraction, with its t confidence interval."""

    fraction: float
    n_removed: int
    val_top1: float  # mean over seeds
    val_loss: float
    low: float | None
    high: float | None
    n: int


def mean_curve(curves: Sequence[Sequence[CurvePoint]]) -> list[CurveBand]:
    """Average same-fraction points over seeds (95% t interval; None for one seed)."""
    from gct_ablate.stats import describe

    out = []
    for points in zip(*curves, strict=True):
        d = describe([p.val_top1 for p in points])
        loss = math.fsum(p.val_loss for p in points) / len(points)
        out.append(CurveBand(points[0].fraction, points[0].n_removed, d.mean, loss, d.ci_low,
                             d.ci_high, d.n))
    return out


def plot_prune(curves: dict[str, tuple[Sequence[Any], Sequence[Any]]], order: str,
               title: str = "") -> Figure:
    """Top-1 vs fraction of GCT modules removed: per label, ``order`` (solid) and the random
    control (dashed), with confidence bands where points carry ``low``/``high``."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (label, (ranked, random)) in enumerate(curves.items()):
        for points, style, name in ((ranked, "o-", order), (random, "s--", "random")):
            x = [100 * p.fraction for p in points]
            y = [100 * p.val_top1 for p in points]
            ax.plot(x, y, style, color=f"C{i}", ms=3, lw=1.3,
                    label=f"{label + ': ' if label else ''}{name} order")
            low, high = [getattr(p, "low", None) for p in points], [
                getattr(p, "high", None) for p in points]
            if all(v is not None for v in low + high):
                ax.fill_between(x, [max(0.0, 100 * v) for v in low],
                                [min(100.0, 100 * v) for v in high],
                                color=f"C{i}", alpha=0.15 if style == "o-" else 0.07, lw=0)
    ax.set_xlabel("GCT modules removed (%)")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "post-hoc GCT pruning (no retraining)", fontsize=10)
    return fig


def _top1(p: Any) -> str:
    text = f"{100 * p.val_top1:.2f}"
    if getattr(p, "low", None) is not None:
        text += f" ±{100 * (p.high - p.low) / 2:.2f}"
    return text


def prune_table(ranked: Sequence[Any], random: Sequence[Any], order: str, title: str = ""
                ) -> Table:
    """Fraction, modules removed, top-1 by ``order`` and by random order (± 95% CI)."""
    caption = "± half-width of the 95% t interval over seeds" if getattr(
        ranked[0], "low", None) is not None else None
    table = Table(title=title or None, caption=caption)
    for col in ("removed %", "modules", f"top-1 % ({order})", "top-1 % (random)",
                f"Δ {order} (points)"):
        table.add_column(col, justify="right")
    base = ranked[0].val_top1
    for a, b in zip(ranked, random, strict=True):
        table.add_row(f"{100 * a.fraction:.0f}", str(a.n_removed), _top1(a), _top1(b),
                      f"{100 * (a.val_top1 - base):+.2f}")
    return table
