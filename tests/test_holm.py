"""Holm's step-down equals statsmodels' multipletests(method="holm"), and leaves gc alone."""

import gc

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from gct_ablate import stats


def test_holm_matches_statsmodels_on_random_families_with_ties_and_gaps(monkeypatch):
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)  # the oracle's slow part
    rng = np.random.default_rng(7)
    for _ in range(300):
        m = int(rng.integers(1, 30))
        p = rng.choice([rng.uniform(0, 1), rng.uniform(0, 0.01)], size=m)
        p = np.where(rng.uniform(size=m) < 0.2, np.round(p, 2), p)  # ties, zeros, ones
        gaps = rng.uniform(size=m) < 0.15
        values = [None if g else float(x) for g, x in zip(gaps, p, strict=True)]
        tested = [x for x in values if x is not None]
        expected = iter(multipletests(tested, method="holm")[1] if tested else [])
        want = [None if x is None else next(expected) for x in values]
        got = stats.holm(values)
        assert [g is None for g in got] == [w is None for w in want]
        assert [g for g in got if g is not None] == pytest.approx(
            [w for w in want if w is not None], abs=1e-15)


def test_holm_does_not_touch_the_garbage_collector():
    collect = gc.collect
    stats.holm([0.01, 0.2, None])
    assert gc.collect is collect
