"""Post-hoc pruning of GCT modules: how many can go without retraining?

Modules are removed in order of a redundancy score, lowest first, and the model is
re-evaluated on the validation set at each removal fraction. Removal by ``mode``:
``identity`` (the module becomes ``nn.Identity``; at 100 % the network is the plain
backbone) or ``fold`` (its constant part g(beta) is folded into the next conv or the BN
before it, :mod:`gct_ablate.analysis.fold`; exact for a module whose gamma is 0). The order:

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

from gct_ablate.analysis.fold import MODES, removal
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
def modules_removed(model: nn.Module, positions: Sequence[int], mode: str = "identity"
                    ) -> Iterator[nn.Module]:
    """Inside the block the GCT modules at ``positions`` are removed by ``mode``
    (``nn.Identity``, or folded into their neighbour); restored after."""
    sites = gct_sites(model)
    swaps = [removal(model, sites[i], mode) for i in positions]
    done = []
    try:
        for swap in swaps:
            setattr(swap.parent, swap.attr, swap.new)
            done.append(swap)
        yield model
    finally:
        for swap in reversed(done):
            setattr(swap.parent, swap.attr, swap.old)


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
    mode: str = "identity",
) -> list[CurvePoint]:
    """Accuracy after removing the first ``n_to_remove(f, M)`` modules of ``order`` by
    ``mode`` (identity or fold), per f.

    ``data`` must be on the model's device (``device`` mirrors the ``on_end`` signature).
    Fine-tuning (``finetune_epochs > 0``) uses ``cfg``'s lr, batch size, decay and seed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    ranked = removal_order(model, data, order, seed=seed)
    points = []
    for f in fractions:
        k = n_to_remove(f, len(ranked))
        with modules_removed(model, ranked[:k], mode):
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


Curves = tuple[Sequence[Any], Sequence[Any]]  # (by the redundancy order, random order)
MODE_TITLES = {
    "identity": "identity: module → nn.Identity (100 % = plain backbone)",
    "fold": "fold: constant g(β) folded into its conv / BN",
}


def plot_prune(curves: dict[str, Curves | dict[str, Curves]], order: str, title: str = ""
               ) -> Figure:
    """Top-1 vs fraction of GCT modules removed, one panel per removal mode (shared y): per
    label (a colour), ``order`` (solid) and the random control (dashed), with confidence
    bands where points carry ``low``/``high``. A value of ``curves`` is (ranked, random) of
    identity removal, or {mode: (ranked, random)}. The legend sits below the panels; the y
    range follows the curves (a band of few seeds may run past it)."""
    from matplotlib.lines import Line2D

    by_label = {k: v if isinstance(v, dict) else {"identity": v} for k, v in curves.items()}
    modes = [m for m in MODES if any(m in v for v in by_label.values())]
    fig = Figure(figsize=(1.5 + 4.2 * len(modes), 4.6), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    seen: list[float] = []  # the y range follows the curves, not their (wide) bands
    for ax, mode in zip(axes, modes, strict=True):
        for i, by_mode in enumerate(by_label.values()):
            for points, style, alpha in zip(by_mode.get(mode, ()), ("o-", "s--"), (0.15, 0.07),
                                            strict=False):
                x = [100 * p.fraction for p in points]
                seen += [100 * p.val_top1 for p in points]
                ax.plot(x, seen[-len(x):], style, color=f"C{i % 10}", ms=3, lw=1.3)
                low, high = [getattr(p, "low", None) for p in points], [
                    getattr(p, "high", None) for p in points]
                if all(v is not None for v in low + high):
                    ax.fill_between(x, [max(0.0, 100 * v) for v in low],
                                    [min(100.0, 100 * v) for v in high],
                                    color=f"C{i % 10}", alpha=alpha, lw=0)
        ax.set_title(MODE_TITLES[mode], fontsize=9)
        ax.set_xlabel("GCT modules removed (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 (%)")
    if seen:
        axes[0].set_ylim(max(0.0, min(seen) - 5), min(100.0, max(seen) + 5))
    handles = [Line2D([], [], color="0.3", ls="-", marker="o", ms=3, label=f"{order} order"),
               Line2D([], [], color="0.3", ls="--", marker="s", ms=3, label="random order")]
    if len(by_label) > 1 or any(by_label):
        handles += [Line2D([], [], color=f"C{i % 10}", lw=5, label=label or "(single cell)")
                    for i, label in enumerate(by_label)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
               fontsize=8, frameon=False)
    fig.suptitle(title or "post-hoc GCT pruning (no retraining)", fontsize=10)
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


def prune_modes_table(curves: dict[str, Curves], order: str, title: str = "") -> Table:
    """Fraction, modules removed, then per mode top-1 by ``order`` and by random order
    (± 95% CI): the removal modes side by side."""
    first = next(iter(curves.values()))[0]
    caption = "top-1 % on validation data" + (
        "; ± half-width of the 95% t interval over seeds"
        if getattr(first[0], "low", None) is not None else "")
    table = Table(title=title or None, caption=caption)
    table.add_column("removed %", justify="right")
    table.add_column("modules", justify="right")
    for mode in curves:  # two-line headers: order, then mode
        table.add_column(f"{order}\n{mode}", justify="right")
        table.add_column(f"random\n{mode}", justify="right")
    columns = [p for ranked, random in curves.values() for p in (ranked, random)]
    for points in zip(*columns, strict=True):
        table.add_row(f"{100 * points[0].fraction:.0f}", str(points[0].n_removed),
                      *(_top1(p) for p in points))
    return table
