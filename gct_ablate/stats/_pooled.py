"""The pooled test of a blocked study: every cell shares the reference's seeds.

A seed fixes the initial weights and the batch order in every cell, so the study is a
randomized complete block design. The additive model ``metric ~ cell + seed`` fitted on the
block has (cells - 1)(seeds - 1) residual df, so each cell's difference from the reference
is tested with that pooled error instead of its own n - 1 df (3 seeds: 46 df for 24 cells
instead of 2, and a critical t of 3.3 instead of 21 at Holm's first step).

Unequal variances (the two-step rule, its error rate simulated in the tests): each cell's
share of the residuals is screened against the rest's with an F test at ``SCREEN_LEVEL``;
a cell that fails gets its own paired t. The pooled error stays that of every cell: refitted
on the cells that pass, it would be biased low (they pass because their residuals are
small), while the full fit's error is independent of every cell's difference under equal
variances and only larger with a noisy cell.

The reference enters every comparison, so an unnoticed noisy reference shifts them all at
once: it is screened at the looser ``REFERENCE_SCREEN_LEVEL`` (the loosest level at which a
reference at 3x the others' sd keeps the family rate with 3 seeds), and when it fails, its own
variance replaces its share of the pooled one: se^2 = (s_ref^2 + s^2) / n, with s_ref^2 the
unbiased estimate of the reference's variance from its residuals (Shukla's stability
variance, at least s^2) on n - 1 df and Satterthwaite's df. Fewer than 3 cells sharing the
reference's seeds pool nothing.

``fit_blocks`` works on many studies at once (an array replicates x cells x seeds), which
is what the simulations run; :func:`block_comparisons` is the same fit for one stored study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from gct_ablate.stats._compare import POOLED, Comparison, SeedKey
from gct_ablate.stats._records import CONFIDENCE

SCREEN_LEVEL = 0.1  # a cell whose residual variance is this unlikely under equality is own-tested
REFERENCE_SCREEN_LEVEL = 0.35  # the reference: its own variance enters every comparison
NOISY_REFERENCE = "reference noisier than the other cells"  # the pooled cells' note
MIN_POOLED_CELLS = 3  # the reference and >= 2 cells: fewer pool nothing a paired t lacks


@dataclass(frozen=True)
class BlockFit:
    """The additive model on the block, per replicate (arrays; cell 0 is the reference).

    ``kept``: cells in the pooled model (after the variance screen); ``pooled``: whether a
    pooled test applies at all; ``sd``/``resid_df``: the residual sd and df of the model;
    ``delta``: cell - reference; ``se``/``df``: delta's standard error and the test's df
    (the residual df, or Satterthwaite's where ``noisy_reference``); ``screen_p``: each
    cell's F-test p of equal variance.
    """

    kept: np.ndarray  # (R, k) bool
    pooled: np.ndarray  # (R,) bool
    sd: np.ndarray  # (R,)
    df: np.ndarray  # (R,)
    delta: np.ndarray  # (R, k)
    se: np.ndarray  # (R,)
    screen_p: np.ndarray  # (R, k)
    noisy_reference: np.ndarray  # (R,) bool
    resid_df: np.ndarray  # (R,)


def _residual_ss(y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per-cell residual sums of squares of cell + seed fitted on the kept cells."""
    w = keep.astype(float)[..., None]
    kept = np.maximum(w.sum(axis=1), 1.0)  # (R, 1)
    seed_mean = (w * y).sum(axis=1) / kept  # (R, n)
    cell_mean = y.mean(axis=2, keepdims=True)  # (R, k, 1)
    grand = (w * cell_mean).sum(axis=1, keepdims=True) / kept[:, None]
    r = y - cell_mean - seed_mean[:, None, :] + grand
    return (r**2).sum(axis=2) * keep


def fit_blocks(y: np.ndarray, screen: float = SCREEN_LEVEL,
               screen_reference: float = REFERENCE_SCREEN_LEVEL) -> BlockFit:
    """Fit cell + seed on y (replicates x cells x seeds, the reference first) and screen
    the cells' variances (the reference at ``screen_reference``)."""
    _, k, n = y.shape
    every = np.ones(y.shape[:2], dtype=bool)
    ss_cell = _residual_ss(y, every)
    df_cell = (n - 1) * (k - 1) / k
    df_rest = (n - 1) * (k - 1) - df_cell
    ss_rest = ss_cell.sum(axis=1, keepdims=True) - ss_cell
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (ss_cell / df_cell) / (ss_rest / df_rest)
    screen_p = np.where(np.isfinite(ratio), stats.f.sf(ratio, df_cell, df_rest), 1.0)
    kept = screen_p >= screen
    noisy_reference = screen_p[:, 0] < screen_reference
    kept[:, 0] = True
    n_kept = kept.sum(axis=1)
    pooled = (n_kept >= MIN_POOLED_CELLS) & (n >= 2)
    ss = ss_cell.sum(axis=1)
    resid_df = np.full(len(y), float((n - 1) * (k - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(resid_df > 0, ss / np.maximum(resid_df, 1), np.nan)
        # E ss_i = (n-1) (sigma_i^2 (1 - 2/k) + sum_j sigma_j^2 / k^2): the reference's own
        own = (ss_cell[:, 0] / max(n - 1, 1) - ss / max((n - 1) * k * (k - 1), 1)) * k / max(
            k - 2, 1)
        ref_var = np.where(noisy_reference, np.maximum(own, var), var)
        se = np.sqrt((ref_var + var) / n)
        satterthwaite = (ref_var + var) ** 2 / (ref_var**2 / max(n - 1, 1) + var**2 / resid_df)
        df = np.where(noisy_reference, np.minimum(satterthwaite, resid_df), resid_df)
    means = y.mean(axis=2)
    return BlockFit(kept, pooled, np.sqrt(var), df, means - means[:, :1], se, screen_p,
                    noisy_reference, resid_df)


def pooled_tests(fit: BlockFit, margin: float | None, confidence: float = CONFIDENCE
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """(p, TOST p, ci_low, ci_high) of each cell's pooled t (NaN where the sd is 0)."""
    df = np.maximum(fit.df, 1.0)[:, None]
    se = fit.se[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = fit.delta / se
        p = 2 * stats.t.sf(np.abs(t), df)
        p_eq = None
        if margin is not None:
            p_eq = np.maximum(stats.t.sf((fit.delta + margin) / se, df),
                              stats.t.cdf((fit.delta - margin) / se, df))
        half = stats.t.ppf((1 + confidence) / 2, df) * se
    return p, p_eq, fit.delta - half, fit.delta + half


def block_seeds(values: Mapping[str, Mapping[SeedKey, float]], reference: str,
                cells: Sequence[str]) -> tuple[list[int], list[str]]:
    """The reference's seeds, and the cells that have every one of them."""
    seeds = sorted(s for s in values.get(reference, {}) if isinstance(s, int))
    members = [c for c in cells if seeds and all(s in values.get(c, {}) for s in seeds)]
    return seeds, members


@dataclass(frozen=True)
class Block:
    """The pooled model of one study: its seeds, cells, residual sd and df, screened out
    cells (own paired t), whether the reference's own variance was used, and the screen's
    level."""

    seeds: list[int]
    cells: list[str]  # in the pooled model, without the reference
    screened_out: list[str]
    sd: float | None
    df: float
    noisy_reference: bool = False
    screen: float = SCREEN_LEVEL


def block_comparisons(values: Mapping[str, Mapping[SeedKey, float]], reference: str,
                      cells: Sequence[str], margin: float | None,
                      confidence: float = CONFIDENCE, screen: float = SCREEN_LEVEL
                      ) -> tuple[dict[str, Comparison], Block | None]:
    """Pooled-t comparisons of the cells that share the reference's seeds (None: no block
    fit, every cell keeps its own test). Cells left out here get their own test."""
    seeds, members = block_seeds(values, reference, cells)
    if len(seeds) < 2 or len(members) + 1 < MIN_POOLED_CELLS:
        return {}, None
    order = [reference, *members]
    y = np.array([[values[c][s] for s in seeds] for c in order], dtype=float)[None]
    fit = fit_blocks(y, screen)
    if not fit.pooled[0] or not fit.sd[0] > 1e-9 * (1 + np.abs(y).max()):  # sd 0 but rounding
        return {}, None
    p, p_eq, lo, hi = pooled_tests(fit, margin, confidence)
    n = len(seeds)
    d = y[0, 1:] - y[0, :1]
    out = {}
    noisy = bool(fit.noisy_reference[0])
    note = (f"{NOISY_REFERENCE} (F test p = {fit.screen_p[0, 0]:.2g} < "
            f"{REFERENCE_SCREEN_LEVEL:g}): its own variance in the se, Satterthwaite df"
            if noisy else None)
    kept = [c for i, c in enumerate(order) if i and fit.kept[0, i]]
    for i, c in enumerate(order[1:], start=1):
        if not fit.kept[0, i]:
            continue
        out[c] = Comparison(POOLED, n, n, float(fit.delta[0, i]), float(lo[0, i]),
                            float(hi[0, i]), float(p[0, i]),
                            None if p_eq is None else float(p_eq[0, i]), float(fit.sd[0]),
                            int(fit.resid_df[0]), len(values[c]) - n, se=float(fit.se[0]),
                            df=float(fit.df[0]), cell_sd=float(d[i - 1].std(ddof=1)),
                            note=note)
    out_cells = [c for i, c in enumerate(order) if i and not fit.kept[0, i]]
    return out, Block(seeds, kept, out_cells, float(fit.sd[0]), float(fit.resid_df[0]), noisy,
                      screen)
