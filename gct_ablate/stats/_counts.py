"""Accuracies are counts: correct / N validation images.

Stored as floats, k / 360 - m / 360 is not exactly (k - m) / 360, so a constant per-seed
difference gets an sd of 0 or of 1e-17 by chance, and a t-test p of 1 or of 1e-29. Values
are snapped to their grain (1 / N) before testing, and a comparison whose differences do
not vary is judged by exact sign tests (:func:`sign_p`, :func:`sign_tost_p`), never by a t.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

MAX_GRAIN = 100_000  # largest N inferred from the values alone


def infer_images(values: Iterable[float], tol: float = 1e-9) -> int | None:
    """The smallest N <= MAX_GRAIN with every value a multiple of 1 / N (None if none)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size == 0 or np.any((v < 0) | (v > 1)):
        return None
    n = np.arange(1, MAX_GRAIN + 1, dtype=float)
    fits = np.ones(n.size, dtype=bool)
    for x in v:  # one value at a time keeps memory at MAX_GRAIN floats
        k = x * n
        fits &= np.abs(k - np.round(k)) <= tol * n
        if not fits.any():
            return None
    return int(n[np.argmax(fits)])


def snap(values: Mapping, images: int | None) -> dict:
    """cell -> seed -> value with each value rounded to a multiple of 1 / ``images``."""
    if not images:
        return {c: dict(v) for c, v in values.items()}
    return {c: {s: round(x * images) / images for s, x in v.items()} for c, v in values.items()}


def constant(d: np.ndarray, images: int | None = None) -> np.ndarray:
    """Columns of d (n x k differences) that do not vary: max - min below half a grain
    (1e-12 without a grain)."""
    tol = 0.5 / images if images else 1e-12
    return (d.max(axis=0) - d.min(axis=0)) < tol


def sign_p(n_positive: int, n_negative: int) -> float:
    """Exact two-sided sign test (zeros dropped): 1 when no difference is nonzero."""
    from scipy.stats import binomtest

    m = n_positive + n_negative
    return 1.0 if m == 0 else float(binomtest(n_positive, m, 0.5).pvalue)


def sign_tost_p(d: np.ndarray, margin: float) -> float:
    """Exact TOST by sign tests: H0 |median difference| >= margin; the larger of the two
    one-sided p-values (n differences all inside +-margin give 0.5 ** n, never 0)."""
    from scipy.stats import binomtest

    n = d.size
    above = int(np.sum(d > -margin))  # evidence against median <= -margin
    below = int(np.sum(d < margin))
    return max(float(binomtest(above, n, 0.5, alternative="greater").pvalue),
               float(binomtest(below, n, 0.5, alternative="greater").pvalue))
