"""Count data, ties, the pooled test of a blocked study, power and alpha spending, tested
by simulation against their promised rates (vectorised over replicates, plus end-to-end
runs of the decision function)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
from statsmodels.stats.multitest import multipletests

from gct_ablate import stats
from gct_ablate.stats._decide import holm_matrix
from gct_ablate.stats._pooled import fit_blocks, pooled_tests
from gct_ablate.stats._power import no_power_reason

ALPHA, MARGIN = 0.05, 0.005


def _ceiling(k: int, rate: float = ALPHA) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / k)


def _family(ref: list[int], cell: list[int], n_images: int = 360) -> stats.Decision:
    values = {"ref": {i: k / n_images for i, k in enumerate(ref)},
              "c": {i: k / n_images for i, k in enumerate(cell)}}
    return stats.decide_family(values, "ref", ["c"], alpha=ALPHA, margin=MARGIN,
                               maximize=True, images=n_images)["c"]


def test_a_constant_difference_gets_the_same_exact_test_whatever_the_rounding() -> None:
    a = _family([340, 345, 350], [342, 347, 352])
    b = _family([300, 310, 320], [302, 312, 322])
    for d in (a, b):
        assert (d.comparison.test, d.comparison.p_value, d.verdict) == (
            "exact sign", 0.25, "inconclusive")
        assert d.ci_simultaneous is None and d.mdd is None and d.power_note


@pytest.mark.parametrize("n, p_eq", [(2, 0.25), (3, 0.125), (5, 0.03125)])
def test_identical_values_are_never_equivalent_with_p_zero(n, p_eq) -> None:
    d = _family([350] * n, [350] * n)
    assert (d.comparison.p_value, d.comparison.p_equivalence) == (1.0, p_eq)
    assert d.verdict == ("equivalent" if n >= 3 and p_eq < ALPHA else "inconclusive")


def test_power_solvers_never_raise() -> None:
    assert stats.seeds_needed(True, 0.005, 1e-17, 0.05) is None
    assert "about 0" in no_power_reason(0.005, 1e-17)
    assert stats.min_detectable_difference(True, 3, 1e-17, 0.05) is None
    assert stats.seeds_needed(True, 0.005, 0.01, 1e-12) is not None  # far tails: no NaN


def test_holm_equals_statsmodels() -> None:
    p = np.random.default_rng(1).uniform(0, 0.1, (8, 7))
    want = np.array([multipletests(row, method="holm")[1] for row in p])
    assert np.allclose(holm_matrix(p), want)


def _blocks(rng, r: int, k: int, n: int, sd=1.0, shift=0.0, seed_sd=2.0) -> np.ndarray:
    sd = np.broadcast_to(np.asarray(sd, float), (k,))
    y = rng.standard_normal((r, k, n)) * sd[None, :, None] + seed_sd * rng.standard_normal(
        (r, 1, n))
    y[:, 1:, :] += shift
    return y


@np.errstate(divide="ignore", invalid="ignore")
def _decide(y: np.ndarray, margin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pooled rule vectorised: pooled t where the screen keeps a cell, its own paired t
    where not; Holm over the cells. (rejected, equivalent) per replicate and cell."""
    n = y.shape[2]
    fit = fit_blocks(y)
    p, p_eq, _, _ = pooled_tests(fit, margin)
    d = y[:, 1:, :] - y[:, :1, :]
    se = d.std(axis=2, ddof=1) / math.sqrt(n)
    t = d.mean(axis=2) / se
    own = 2 * st.t.sf(np.abs(t), n - 1)
    use = fit.kept[:, 1:] & fit.pooled[:, None]
    rejected = holm_matrix(np.where(use, p[:, 1:], own)) < ALPHA
    equivalent = np.zeros_like(rejected)
    if margin is not None:
        own_eq = np.maximum(st.t.sf((d.mean(axis=2) + margin) / se, n - 1),
                            st.t.cdf((d.mean(axis=2) - margin) / se, n - 1))
        equivalent = holm_matrix(np.where(use, p_eq[:, 1:], own_eq)) < ALPHA
    return rejected, equivalent & ~rejected


@pytest.mark.parametrize("n", [3, 5])
def test_count_data_keep_the_family_rate(n) -> None:
    """24 cells of k/360 correct (97 %), seeds shared: false better/worse and, at a true
    difference of the margin, false equivalent."""
    rng = np.random.default_rng(n)
    r = 3000
    y = rng.binomial(360, 0.97, (r, 24, n)) / 360
    rejected, _ = _decide(y)
    assert rejected.any(axis=1).mean() <= _ceiling(r)
    shifted = rng.binomial(360, 0.97, (r, 24, n)) / 360
    shifted[:, 1:] += MARGIN
    _, equivalent = _decide(np.round(shifted * 360) / 360, MARGIN)
    assert equivalent.any(axis=1).mean() <= _ceiling(r)


@pytest.mark.parametrize("n", [2, 3])
def test_count_data_end_to_end_through_the_decision_function(n) -> None:
    rng = np.random.default_rng(10 + n)
    wrong = 0
    studies = 60
    for _ in range(studies):
        k = rng.binomial(360, 0.99, (8, n))
        values = {f"c{i}": dict(enumerate(row / 360)) for i, row in enumerate(k)}
        found = stats.decide_family(values, "c0", [f"c{i}" for i in range(1, 8)], alpha=ALPHA,
                                    margin=MARGIN, maximize=True, images=360, power=False)
        wrong += any(d.decided for d in found.values()) if n == 2 else any(
            d.verdict in ("better", "worse") for d in found.values())
        assert all(d.comparison.p_equivalence != 0 for d in found.values())
    assert wrong / studies <= (0.0 if n == 2 else _ceiling(studies))


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("noisy", [5, 0], ids=["a cell", "the reference"])
def test_one_cell_at_three_times_the_sd_keeps_the_family_rate(n, noisy) -> None:
    rng = np.random.default_rng(20 + n + noisy)
    r = 4000
    sd = np.ones(24)
    sd[noisy] = 3.0
    rejected, _ = _decide(_blocks(rng, r, 24, n, sd))
    assert rejected.any(axis=1).mean() <= _ceiling(r)


def test_pooled_test_detects_about_3_points_on_the_main_jobs_data() -> None:
    """24 cells x 3 seeds, residual sd 0.88 points: the README's main job."""
    mdd = stats.min_detectable_difference("pooled t", 3, 0.88, ALPHA / 23, cells=24)
    paired = stats.min_detectable_difference(True, 3, 0.88 * math.sqrt(2), ALPHA / 23)
    assert 2.7 < mdd < 3.2 and paired > 14


@pytest.mark.parametrize("kind", ["paired t", "pooled t", "Welch t"])
def test_power_at_the_reported_mdd_is_80_percent(kind) -> None:
    rng = np.random.default_rng(30)
    r, n, alpha = 6000, 3, ALPHA / 23
    if kind == "pooled t":
        mdd = stats.min_detectable_difference(kind, n, 1.0, alpha, cells=24)
        fit = fit_blocks(_blocks(rng, r, 24, n, shift=mdd), screen=0.0, screen_reference=0.0)
        p = pooled_tests(fit, None)[0][:, 1]
    elif kind == "paired t":
        mdd = stats.min_detectable_difference(kind, n, 1.0, alpha)
        d = rng.standard_normal((r, n)) + mdd
        p = st.ttest_1samp(d, 0.0, axis=1).pvalue
    else:
        mdd = stats.min_detectable_difference(kind, n, 1.0, alpha, n_ref=n)
        a, b = rng.standard_normal((r, n)) + mdd, rng.standard_normal((r, n))
        p = st.ttest_ind(a, b, axis=1, equal_var=False).pvalue
    assert abs(np.mean(p < alpha) - 0.8) <= 0.03


def test_adaptive_looks_from_two_seeds_keep_their_rates_and_spend_better_than_bonferroni(
) -> None:
    rng = np.random.default_rng(40)
    schedule = stats.Schedule(2, 2, 8)
    k = 150

    def studies(shift: float, noise: float) -> list[dict]:
        block = rng.normal(0, 2.0, (k, 8))
        e = rng.normal(0, noise, (k, 5, 8))
        return [{"ref": dict(enumerate(block[i] + e[i, 0])),
                 **{f"c{j}": dict(enumerate(block[i] + shift + e[i, j])) for j in range(1, 5)}}
                for i in range(k)]

    null = stats.replay_many(studies(0.0, 1.0), "ref", schedule, alpha=ALPHA, margin=1.0,
                             maximize=True, power=False)
    assert np.mean([any(d.verdict in ("better", "worse") for d in r.cells.values())
                    for r in null]) <= _ceiling(k)
    assert all(d.look > 1 for r in null for d in r.cells.values() if d.decided)
    edge = stats.replay_many(studies(1.0, 0.5), "ref", schedule, alpha=ALPHA, margin=1.0,
                             maximize=True, power=False)
    assert np.mean([any(d.verdict == "equivalent" for d in r.cells.values())
                    for r in edge]) <= _ceiling(k)
    last = schedule.alpha_per_look(ALPHA, schedule.n_looks)
    assert last > ALPHA / len(schedule.tested_looks)  # the last look keeps more than Bonferroni


def test_a_main_job_like_study_reports_the_pooled_test_and_about_3_points() -> None:
    """24 cells x 3 seeds of k / 360 correct at ~97 % (residual sd ~0.9 points), run
    through summarize: pooled t with 46 df, its sd and each cell's own, and ~3 points."""
    rng = np.random.default_rng(50)
    ps, acts = ["1", "2", "3", "4", "inf", "gap"], ["tanh", "sigmoid", "softsign", "hardtanh"]
    trials, number = [], 0
    for p in ps:
        for a in acts:
            for seed in range(3):
                k = int(rng.binomial(360, 0.97))
                trials.append(stats.TrialRecord(f"p={p} activation={a}", seed, "COMPLETE",
                                                k / 360, {"val_images": 360},
                                                {"p": p, "activation": a}, number))
                number += 1
    spec = {"name": "main", "vary": ["p", "activation"], "levels": {"p": ps, "activation": acts},
            "set": {}, "seeds": 3, "metric": "val_top1"}
    s = stats.summarize(stats.StudyResults(spec, "p=2 activation=tanh", True, trials, "main"),
                        importance=False)
    others = [c for c in s.cells if not c.is_reference]
    pooled = [c for c in others if c.test == "pooled t"]
    assert len(pooled) >= 18 and s.images == 360 and s.block["df"] == 46
    assert all(c.test_df == 46 and c.sd == s.pooled_sd["pooled"] and c.cell_sd is not None
               for c in pooled)
    assert 2.0 < 100 * pooled[0].mdd < 4.0 and 1 < pooled[0].mdd_upper / pooled[0].mdd < 1.4
    assert 60 < pooled[0].seeds_needed < 150  # the 0.5 margin: 360 images set that floor
    assert "pooled t, 46 df" in s.conclusion and s.headline.startswith("Factors")
    for c in others:  # an interval that excludes 0 is never beside 'inconclusive'
        lo, hi = c.ci_simultaneous or (0.0, 0.0)
        assert not (lo > 0 or hi < 0) or c.verdict in ("better", "worse")


def test_alpha_spending_holds_over_looks_and_beats_bonferroni_on_the_same_seeds() -> None:
    """Looks 3, 5, ..., 15 (the 3-2-15 schedule), 6 cells: rejected at any look under the
    null, and the power of a shifted cell by the last look, spending against Bonferroni."""
    rng = np.random.default_rng(60)
    schedule = stats.Schedule(3, 2, 15)
    looks = schedule.tested_looks
    r = 3000

    def rejected(y: np.ndarray, spend: bool) -> np.ndarray:
        out = np.zeros(y.shape[:2], dtype=bool)[:, 1:]
        for look, n in enumerate(looks, start=1):
            p = pooled_tests(fit_blocks(y[:, :, :n]), None)[0][:, 1:]
            if spend:
                out |= holm_matrix(schedule.stagewise(look, p)) < ALPHA
            else:
                out |= holm_matrix(p) < ALPHA / len(looks)
        return out

    null = _blocks(rng, r, 6, 15)
    assert rejected(null, True).any(axis=1).mean() <= _ceiling(r)
    shifted = _blocks(rng, r, 6, 15)
    shifted[:, 1, :] += 1.2  # only cell 1 differs: +1.2 sd
    spend, bonferroni = (rejected(shifted, s)[:, 0].mean() for s in (True, False))
    assert spend > bonferroni + 0.03, (spend, bonferroni)


def test_an_interval_that_excludes_zero_is_never_inconclusive() -> None:
    rng = np.random.default_rng(70)
    seen = 0
    for _ in range(150):
        y = _blocks(rng, 1, 6, 4, shift=rng.uniform(0, 3))[0]
        values = {f"c{i}": dict(enumerate(row)) for i, row in enumerate(y)}
        found = stats.decide_family(values, "c0", [f"c{i}" for i in range(1, 6)], alpha=ALPHA,
                                    margin=0.5, maximize=True, power=False)
        for d in found.values():
            lo, hi = d.ci_simultaneous
            if lo > 0 or hi < 0:
                seen += 1
                assert d.verdict in ("better", "worse")
    assert seen > 50


def test_a_lost_reference_seed_is_named() -> None:
    trials = [stats.TrialRecord(f"p={p}", seed, "COMPLETE", 0.9 + 0.01 * seed + 0.001 * i,
                                {}, {"p": p}, 10 * i + seed)
              for i, p in enumerate(["1", "2", "3"]) for seed in range(4)]
    lost = next(t for t in trials if t.cell == "p=2" and t.seed == 1)
    lost.state, lost.value = "FAIL", None
    spec = {"name": "s", "vary": ["p"], "levels": {"p": ["1", "2", "3"]}, "set": {}, "seeds": 4}
    s = stats.summarize(stats.StudyResults(spec, "p=2", True, trials, "s"), importance=False)
    assert any("reference seed(s) without a usable run" in n and "1 (fail)" in n
               for n in s.notes)
    assert {c.n_test for c in s.cells if not c.is_reference} == {3}


def test_two_constant_groups_get_the_exact_permutation_test() -> None:
    c = stats.compare({"#1": 0.9, "#2": 0.9, "#3": 0.9}, {"#4": 0.8, "#5": 0.8, "#6": 0.8},
                      margin=0.005)
    assert (c.test, c.p_value, c.p_equivalence) == ("exact permutation", 0.1, None)


def test_a_noisy_reference_adds_its_own_variance_with_satterthwaite_df() -> None:
    rng = np.random.default_rng(60)
    sd = np.ones(8)
    sd[0] = 6.0
    y = _blocks(rng, 1, 8, 4, sd)[0]
    values = {f"c{i}": dict(enumerate(row / 100)) for i, row in enumerate(y)}
    found = stats.decide_family(values, "c0", [f"c{i}" for i in range(1, 8)], alpha=ALPHA,
                                margin=None, maximize=True, power=True)
    cmp = found["c1"].comparison
    assert cmp.test == "pooled t" and "reference noisier" in cmp.note
    assert cmp.df < cmp.sd_df == 21 and cmp.se > cmp.sd * math.sqrt(2 / 4)
    assert found["c1"].mdd > stats.min_detectable_difference("pooled t", 4, cmp.sd, ALPHA / 7,
                                                             cells=8)
