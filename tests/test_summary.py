"""Summary statistics (scipy as the oracle), verdicts, formats, plot, and loading from Optuna."""

from __future__ import annotations

import csv
import functools
import io
import json
import math

import numpy as np
import optuna
import pytest
from conftest import assert_no_legend_over_data
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from gct_ablate import stats
from gct_ablate.cli import app
from gct_ablate.errors import SpecError, StudyNotFound
from gct_ablate.spec import StudySpec
from gct_ablate.study_file import build_spec, load_study_file
from gct_ablate.summary import (
    StudyResults,
    Summary,
    SummaryError,
    TrialRecord,
    levels_figure,
    load_results,
    plot_levels,
    render,
    summarize,
    to_csv,
    to_json,
    to_markdown,
)

LEVELS = {"p": ["1", "2"], "activation": ["tanh", "sigmoid"]}
REF = "p=2 activation=tanh"
VALUES = {  # cell -> complete values, one per seed
    "p=1 activation=tanh": [0.80, 0.81, 0.79],
    "p=1 activation=sigmoid": [0.85],
    "p=2 activation=tanh": [0.90, 0.92, 0.91],
    "p=2 activation=sigmoid": [0.91, 0.94, 0.92],
}
METRICS = {"params_total": 272_474, "params_attention": 1_008, "seconds": 10.0}


def spec_dict(metric: str = "val_top1", vary: tuple[str, ...] = ("p", "activation")) -> dict:
    return {"name": "p_act", "question": "Do p and the gate matter?", "vary": list(vary),
            "levels": {k: LEVELS[k] for k in vary}, "set": {"epochs": "15"}, "seeds": 3,
            "metric": metric}


def records(values: dict[str, list[float]] = VALUES) -> list[TrialRecord]:
    out, number = [], 0
    for cell, vals in values.items():
        params = dict(part.split("=") for part in cell.split())
        for seed, v in enumerate(vals):
            out.append(TrialRecord(cell, seed, "COMPLETE", v, {**METRICS, "val_top1": v},
                                   params, number, f"run{number}"))
            number += 1
    cell, params = "p=1 activation=tanh", {"p": "1", "activation": "tanh"}
    if cell not in values:
        return out
    out.append(TrialRecord(cell, 3, "PRUNED", 0.10, {}, params, number))  # value never used
    out.append(TrialRecord(cell, 4, "FAIL", None, {}, params, number + 1, reason="OOM"))
    out.append(TrialRecord(cell, 5, "WAITING", None, {}, {}, number + 2))
    return out


@functools.cache
def summary(metric: str = "val_top1", maximize: bool = True) -> Summary:
    return summarize(StudyResults(spec_dict(metric), REF, maximize, records(), "p_act"))


def cell(s: Summary, cell_id: str):
    return next(c for c in s.cells if c.cell == cell_id)


# ----------------------------------------------------------------------------- primitives
def test_describe_matches_scipy() -> None:
    x = [0.91, 0.93, 0.92, 0.95]
    d = stats.describe(x)
    sem = np.std(x, ddof=1) / math.sqrt(len(x))
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sem)
    assert d.n == 4
    assert d.mean == pytest.approx(np.mean(x))
    assert d.std == pytest.approx(np.std(x, ddof=1))
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))


@pytest.mark.parametrize("x, n, mean", [([], 0, None), ([0.5], 1, 0.5)])
def test_describe_small_samples_leave_std_and_ci_undefined(x, n, mean) -> None:
    d = stats.describe(x)
    assert (d.n, d.mean, d.std, d.ci_low, d.ci_high) == (n, mean, None, None, None)


def test_describe_constant_values_have_zero_width() -> None:
    d = stats.describe([0.97, 0.97, 0.97])
    assert (d.std, d.ci_low, d.ci_high) == (0.0, 0.97, 0.97)


def test_welch_matches_scipy_when_seeds_are_not_shared() -> None:
    a, b = [0.80, 0.81, 0.79, 0.83], [0.90, 0.92, 0.91]
    c = stats.compare(dict(enumerate(a)), {10 + i: v for i, v in enumerate(b)})
    assert c.test == "Welch t"
    assert c.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)


def test_paired_matches_scipy_when_seeds_are_shared() -> None:
    a, b = [0.80, 0.81, 0.79, 0.83], [0.90, 0.92, 0.91, 0.93]
    c = stats.compare(dict(enumerate(a)), dict(enumerate(b)))
    assert (c.test, c.n, c.n_ref) == ("paired t", 4, 4)
    assert c.p_value == pytest.approx(st.ttest_rel(a, b).pvalue)


@pytest.mark.parametrize("a, b, test, p", [
    ([0.9], [0.9, 0.8], "none", None),  # n < 2
    ([0.97] * 3, [0.97] * 3, "exact sign", 1.0),  # identical: no difference at all
    ([0.97] * 3, [0.98] * 3, "exact sign", 0.25),  # constant differences: 2 * 0.5 ** 3
])
def test_compare_edge_cases(a, b, test, p) -> None:
    c = stats.compare(dict(enumerate(a)), dict(enumerate(b)))
    assert (c.test, c.p_value) == (test, p)


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy's own, as the oracle
def test_welch_one_constant_group_is_defined() -> None:
    a, b = [1.0, 1.0], [1.0, 2.0, 3.0]
    c = stats.compare({"#1": a[0], "#2": a[1]}, {"#3": b[0], "#4": b[1], "#5": b[2]})
    assert c.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)


def test_holm_known_example() -> None:
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> monotone .06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_untested() -> None:
    assert stats.holm([0.5, None, 0.6]) == [1.0, None, 1.0]
    assert stats.holm([None, 0.01]) == [None, 0.01]
    assert stats.holm([]) == []


@pytest.mark.parametrize("delta, p, p_eq, maximize, test, expected", [
    (0.02, 0.01, 0.5, True, "paired t", "better"),
    (-0.02, 0.01, 0.5, True, "paired t", "worse"),
    (-0.02, 0.01, 0.5, False, "Welch t", "better"),  # val_loss: lower is better
    (0.02, 0.01, 0.5, False, "paired t", "worse"),
    (0.02, 0.05, 0.5, True, "paired t", "inconclusive"),  # p must be < alpha
    (0.001, 0.5, 0.01, True, "paired t", "equivalent"),
    (0.001, 0.01, 0.01, True, "paired t", "better"),  # real, within the margin: shown
    (0.02, 0.001, 0.5, True, "Welch t", "better"),
    (0.02, None, None, True, "paired t", "inconclusive"),  # t undefined
    (0.02, None, None, True, "none", "too few runs"),
])
def test_verdict(delta, p, p_eq, maximize, test, expected) -> None:
    comparison = stats.Comparison(test, 3, 3, delta)
    assert stats.verdict(comparison, p, p_eq, maximize, 0.05) == expected


def test_mean_of_means_ci() -> None:
    a, b = [0.80, 0.81, 0.79], [0.85, 0.89, 0.86, 0.88]
    single = stats.describe(a)
    assert stats.mean_of_means_ci([a]) == (single.mean, single.ci_low, single.ci_high)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = st.t.ppf(0.975, df) * math.sqrt(va + vb) / 2
    mean = (np.mean(a) + np.mean(b)) / 2
    assert stats.mean_of_means_ci([a, b]) == pytest.approx((mean, mean - half, mean + half))
    assert stats.mean_of_means_ci([a, [0.9]])[1:] == (None, None)
    assert stats.mean_of_means_ci([]) == (None, None, None)


# ----------------------------------------------------------------------------- summarize
def test_summarize_cells_against_scipy() -> None:
    s = summary()
    assert [c.cell for c in s.cells] == [
        "p=1 activation=tanh", "p=1 activation=sigmoid",
        "p=2 activation=tanh", "p=2 activation=sigmoid"]  # grid order, first factor slowest
    ref, worse, close = cell(s, REF), cell(s, "p=1 activation=tanh"), cell(
        s, "p=2 activation=sigmoid")
    assert ref.is_reference and ref.verdict == "reference" and ref.p_value is None
    assert (ref.n, ref.mean, ref.std) == (3, pytest.approx(0.91), pytest.approx(0.01))
    # seeds 0-2 are shared by three cells: the pooled t of metric ~ cell + seed
    import pandas as pd
    import statsmodels.formula.api as smf

    block = [REF, worse.cell, close.cell]
    frame = pd.DataFrame([(c, s_, v) for c in block for s_, v in enumerate(VALUES[c])],
                         columns=["cell", "seed", "value"])
    fit = smf.ols(f"value ~ C(cell, Treatment({REF!r})) + C(seed)", frame).fit()
    p_worse = fit.pvalues[f"C(cell, Treatment({REF!r}))[T.{worse.cell}]"]
    p_close = fit.pvalues[f"C(cell, Treatment({REF!r}))[T.{close.cell}]"]
    assert (worse.test, close.test) == ("pooled t", "pooled t")
    assert (worse.test_df, worse.sd) == (4, pytest.approx(fit.mse_resid ** 0.5))
    assert worse.p_value == pytest.approx(p_worse)
    assert close.p_value == pytest.approx(p_close)
    assert worse.cell_sd == pytest.approx(np.std(np.subtract(VALUES[worse.cell], VALUES[REF]),
                                                 ddof=1))
    holm = multipletests([p_worse, p_close], method="holm")[1]  # the n=1 cell is no test
    assert worse.p_adjusted == pytest.approx(holm[0])
    assert close.p_adjusted == pytest.approx(holm[1])
    assert worse.delta == pytest.approx(-0.11) and close.delta == pytest.approx(0.04 / 3)
    assert (worse.verdict, close.verdict) == ("worse", "inconclusive")
    assert s.verdict_text(close) == f"inconclusive (detects >= {100 * close.mdd:.1f})"
    assert (ref.params_total, ref.params_attention, ref.seconds_mean) == (272_474, 1_008, 10.0)


def test_pruned_and_failed_counted_not_averaged() -> None:
    c = cell(summary(), "p=1 activation=tanh")
    assert (c.n, c.pruned, c.failed, c.waiting) == (3, 1, 1, 1)
    assert c.mean == pytest.approx(0.80) and c.values == VALUES["p=1 activation=tanh"]
    assert summary().counts == {"complete": 10, "pruned": 1, "failed": 1, "waiting": 1,
                                "running": 0}


def test_single_run_cell_is_too_few_and_na() -> None:
    c = cell(summary(), "p=1 activation=sigmoid")
    assert (c.n, c.mean, c.std, c.ci_low, c.p_value, c.p_adjusted) == (1, 0.85, None, None,
                                                                       None, None)
    assert (c.test, c.mdd, c.seeds_needed) == ("none", None, None)
    assert c.verdict == "too few runs"
    row = next(r for r in to_markdown(summary()).splitlines() if "p=1 activation=sigmoid" in r)
    assert "n/a" in row and "too few runs" in row


def test_val_loss_lower_is_better() -> None:
    s = summary("val_loss", maximize=False)
    assert cell(s, "p=1 activation=tanh").verdict == "better"
    assert not s.percent


def test_missing_cells_and_reference() -> None:
    values = {k: v for k, v in VALUES.items() if k != REF}
    s = summarize(StudyResults(spec_dict(), REF, True, records(values), "p_act"), importance=False)
    ref = cell(s, REF)
    assert (ref.n, ref.mean, ref.verdict) == (0, None, "reference")
    assert {c.verdict for c in s.cells if not c.is_reference} == {"too few runs"}
    assert any("reference" in n for n in s.notes)


def test_duplicates_keep_latest_and_bad_values_fail() -> None:
    recs = records() + [
        TrialRecord(REF, 0, "COMPLETE", 0.95, {}, {"p": "2", "activation": "tanh"}, 100),
        TrialRecord(REF, 9, "COMPLETE", math.nan, {}, {"p": "2", "activation": "tanh"}, 101),
    ]
    s = summarize(StudyResults(spec_dict(), REF, True, recs, "p_act"), importance=False)
    ref = cell(s, REF)
    assert sorted(ref.values) == [0.91, 0.92, 0.95] and ref.failed == 1
    assert any("duplicate" in n for n in s.notes)
    assert any("without a finite value" in n for n in s.notes)


def test_zero_variance_cells() -> None:
    values = {"p=1": [0.97] * 3, "p=2": [0.98] * 3, "p=inf": [0.98] * 3}
    spec = {**spec_dict(vary=("p",)), "levels": {"p": ["1", "2", "inf"]}}
    s = summarize(StudyResults(spec, "p=2", True, records(values), "p"), importance=False)
    # no t from constant differences: exact sign tests, never p = 0
    assert [(c.test, c.p_value, c.verdict) for c in s.cells] == [
        ("exact sign", 0.25, "inconclusive"), ("", None, "reference"),
        ("exact sign", 1.0, "inconclusive")]
    assert cell(s, "p=inf").p_equivalence == 0.125  # identical results: 0.5 ** 3, not 0
    assert cell(s, "p=1").ci_simultaneous is None and cell(s, "p=1").mdd is None
    assert any("exact sign" in n and "'p=1'" in n for n in s.notes)
    assert s.factors[0].F is None and any("no residual variance" in n for n in s.notes)


def test_importance_failure_never_breaks_the_summary(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("zero total variance\nsecond line")

    monkeypatch.setattr(optuna.importance, "get_param_importances", boom)
    s = summarize(StudyResults(spec_dict(), REF, True, records(), "p_act"))
    assert s.importance_method == "n/a: fANOVA failed (RuntimeError: zero total variance)"
    assert [f.importance for f in s.factors] == [None, None]


def test_factor_marginals() -> None:
    s = summary()
    p = next(f for f in s.factors if f.name == "p")
    one, two = p.levels
    assert (one.level, one.n, one.n_cells, one.is_reference) == ("1", 4, 2, False)
    assert one.mean == pytest.approx((0.80 + 0.85) / 2)  # mean of cell means, not of runs
    assert one.ci_low is None  # a contributing cell has n = 1
    mean, lo, hi = stats.mean_of_means_ci([VALUES[REF], VALUES["p=2 activation=sigmoid"]])
    assert (two.mean, two.ci_low, two.ci_high) == (mean, lo, hi) and two.is_reference
    assert p.partial_eta_squared is not None and 0 < p.partial_eta_squared <= 1
    assert p.verdict == "significant" and two.delta == 0.0
    assert one.delta < 0 and one.delta_ci_high < 0 and one.equivalent is False
    assert s.anova_formula == "metric ~ C(p) + C(activation) + C(seed)"  # a cell has n = 1
    assert any("interactions not estimated" in n for n in s.notes)


def test_importance_two_factors_fanova() -> None:
    s = summary()
    imp = {f.name: f.importance for f in s.factors}
    assert s.importance_method.startswith("fANOVA")
    assert sum(imp.values()) == pytest.approx(1.0) and imp["p"] > imp["activation"]


def test_importance_ped_anova_with_many_trials() -> None:
    rng = np.random.default_rng(0)
    values = {f"p={p} activation={a}": list(0.9 - 0.05 * (p == "1") + rng.normal(0, .005, 15))
              for p in LEVELS["p"] for a in LEVELS["activation"]}
    s = summarize(StudyResults(spec_dict(), REF, True, records(values), "p_act"))
    assert s.importance_method.startswith("PED-ANOVA")
    assert all(f.importance is not None for f in s.factors)


def test_importance_single_factor_and_none() -> None:
    values = {"p=1": [0.8, 0.81], "p=2": [0.9, 0.91]}
    s = summarize(StudyResults(spec_dict(vary=("p",)), "p=2", True, records(values), "p"))
    assert s.factors[0].importance is None and s.importance_method.startswith("n/a")
    # p and the seed explain everything: no residual variance, F undefined, never NaN
    assert (s.factors[0].F, s.factors[0].partial_eta_squared) == (None, None)
    single = summarize(StudyResults(spec_dict(vary=()), "", True,
                                    records({"": [0.9, 0.91]}), "base"))
    assert [c.verdict for c in single.cells] == ["reference"] and single.factors == []


# ----------------------------------------------------------------------------- formats
def test_csv_round_trip() -> None:
    every = list(csv.DictReader(io.StringIO(to_csv(summary()))))
    rows = [r for r in every if r["kind"] == "cell"]
    assert [r["cell"] for r in rows] == [c.cell for c in summary().cells]
    worse = rows[0]
    assert float(worse["mean"]) == pytest.approx(0.80) and worse["verdict"] == "worse"
    assert worse["test"] == "pooled t" and float(worse["delta_ci_high"]) < 0
    assert float(worse["mdd"]) > 0 and int(worse["seeds_needed"]) >= 2
    assert rows[1]["std"] == "" and rows[1]["n"] == "1"
    assert rows[0]["pruned"] == "1" and rows[0]["failed"] == "1"
    terms = {r["term"]: r for r in every if r["kind"] == "term"}
    assert set(terms) == {"p", "activation", "seed", "residual"}
    assert float(terms["p"]["F"]) == pytest.approx(summary().factors[0].F)
    assert float(terms["p"]["importance"]) == pytest.approx(summary().factors[0].importance)


def test_json_has_everything() -> None:
    data = json.loads(to_json(summary()))
    assert data["reference_cell"] == REF and data["percent"] is True
    assert data["cells"][1]["std"] is None
    assert data["factors"][0]["levels"][0]["level"] == "1"
    assert "Welch" in data["methods"]["test"] and "pooled" in data["methods"]["test"]
    for c in data["cells"]:
        assert {"test", "delta", "ci", "p_adjusted", "p_equivalence_adjusted", "mdd",
                "seeds_needed", "verdict"} <= set(c)
    worse = data["cells"][0]
    assert worse["test"] == "pooled t" and len(worse["ci"]) == 2 and worse["mdd"] > 0
    assert worse["test_df"] == 4 and worse["sd"] > 0 and worse["cell_sd"] > 0
    assert len(worse["ci_simultaneous"]) == 2 and data["pooled_sd"]["pooled"] == worse["sd"]
    assert data["block"]["df"] == 4 and data["headline"].startswith("Factors")
    for f in data["factors"]:
        assert {"F", "p", "partial_eta_squared", "verdict", "importance"} <= set(f)
    assert data["margin"] == pytest.approx(0.005) and data["conclusion"].startswith("With 3")


def test_markdown_and_table_rows() -> None:
    md = to_markdown(summary())
    assert "| p=1 activation=tanh | 3 | 80.00 ± 1.00 |" in md
    assert "-11.00" in md and "Do p and the gate matter?" in md
    assert "**Conclusion:** With 3 seeds per cell" in md and "| p | 1 |" in md
    console = Console(record=True, width=250)
    render(summary(), "table", console)
    text = console.export_text()
    assert "p=2 activation=sigmoid" in text and "inconclusive (detects >= " in text
    assert "10 complete, 1 pruned, 1 failed, 1 waiting, 0 running" in text
    assert summary().conclusion in text.replace("\n", " ")
    loss = to_markdown(summary("val_loss", maximize=False))
    assert "0.8000 ± 0.0100" in loss


@pytest.mark.parametrize("width", [80, 100, 250])
def test_tables_cut_no_number_at_common_widths(width: int) -> None:
    """At 80 columns (a pipe's default) and wider, every number of the cell, factor and
    level tables is printed whole: columns go before values are cut."""
    console = Console(record=True, width=width)
    render(summary(), "table", console)
    text = console.export_text()
    assert "…" not in text
    for line in text.splitlines():
        assert len(line.rstrip()) <= width


@pytest.mark.parametrize("fmt, check", [
    ("json", json.loads),
    ("csv", lambda t: list(csv.reader(io.StringIO(t)))),
    ("markdown", lambda t: t.index("## Cells")),
])
def test_render_machine_formats_are_plain(fmt, check) -> None:
    console = Console(file=io.StringIO(), width=40, force_terminal=True)
    render(summary(), fmt, console)
    out = console.file.getvalue()
    assert "\x1b[" not in out  # no colour codes in piped output
    check(out)


def test_render_unknown_format() -> None:
    with pytest.raises(SummaryError, match="valid: table, markdown, csv, json"):
        render(summary(), "xml", Console(file=io.StringIO()))


@pytest.mark.parametrize("vary", [("p", "activation"), ("p",)])
def test_plot_levels_writes_png(tmp_path, vary) -> None:
    values = {k: v for k, v in VALUES.items() if "sigmoid" not in k} if len(vary) == 1 else VALUES
    values = {k.split()[0]: v for k, v in values.items()} if len(vary) == 1 else values
    ref = "p=2" if len(vary) == 1 else REF
    s = summarize(StudyResults(spec_dict(vary=vary), ref, True, records(values), "x"),
                  importance=False)
    path = plot_levels(s, tmp_path / "levels.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = levels_figure(s)  # a panel per factor (per cell with one), shared y, no legend
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == list(vary)
    assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels[1:])
    levels = [[t.get_text() for t in ax.get_xticklabels()] for ax in panels]
    assert levels == [LEVELS[f] for f in vary]
    assert_no_legend_over_data(fig)


# ----------------------------------------------------------------------------- loading
def _write_study(storage, name: str = "p_act") -> None:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in {"spec": spec_dict(), "reference_cell": REF, "fingerprint": "abc",
                       "direction_maximize": True, "mlflow_experiment_id": "7"}.items():
        study.set_user_attr(key, value)
    dists = {n: CategoricalDistribution(v) for n, v in LEVELS.items()}
    states = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED,
              "FAIL": TrialState.FAIL, "WAITING": TrialState.WAITING}
    for r in records():
        attrs = {"cell": r.cell, "seed": r.seed}
        if r.state != "WAITING":
            attrs.update(metrics=r.metrics, mlflow_run_id=r.mlflow_run_id or "x")
        if r.reason:
            attrs["status_reason"] = r.reason
        study.add_trial(create_trial(
            state=states[r.state], value=r.value, user_attrs=attrs,
            params=r.params or None, distributions=dists if r.params else None))


def test_load_results_from_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _write_study(url)
    results = load_results(url, "p_act")
    assert (results.reference_cell, results.maximize, results.fingerprint) == (REF, True, "abc")
    assert results.tracking == {"mlflow_experiment_id": "7"}
    assert "MLflow: experiment 7" in to_markdown(summarize(results, importance=False))
    failed = next(t for t in results.trials if t.state == "FAIL")
    assert failed.reason == "OOM" and failed.cell == "p=1 activation=tanh"
    loaded, expected = summarize(results), summary()
    for got, want in zip(loaded.cells, expected.cells, strict=True):
        assert (got.cell, got.n, got.verdict, got.pruned, got.failed) == (
            want.cell, want.n, want.verdict, want.pruned, want.failed)
        assert got.mean == pytest.approx(want.mean)
        assert got.p_adjusted == pytest.approx(want.p_adjusted)
    assert loaded.counts == expected.counts


def test_load_results_missing_study_lists_names(tmp_path) -> None:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    optuna.create_study(study_name="other", storage=storage)
    with pytest.raises(StudyNotFound, match="no study 'p_act' in .*existing studies: other"):
        load_results(storage, "p_act")


def test_load_results_missing_sqlite_file_is_not_created(tmp_path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(SummaryError, match="no storage file"):
        load_results(f"sqlite:///{path}", "p_act")
    assert not path.exists()


# ----------------------------------------------------------------------------- margin
def test_margin_decides_equivalence_and_the_seeds_needed() -> None:
    close = "p=2 activation=sigmoid"
    results = StudyResults(spec_dict(), REF, True, records(), "p_act")
    default, wide = summarize(results, importance=False), summarize(
        results, importance=False, margin=20.0)
    assert default.margin == pytest.approx(0.005) and wide.margin == pytest.approx(0.2)
    assert cell(default, close).verdict == "inconclusive"
    assert cell(wide, close).verdict == "equivalent"  # within +-20 points
    assert cell(wide, close).seeds_needed < cell(default, close).seeds_needed
    stored = summarize(StudyResults({**spec_dict(), "margin": 20.0}, REF, True, records(),
                                    "p_act"), importance=False)
    assert cell(stored, close).verdict == "equivalent"  # the study's own margin
    loss = summarize(StudyResults(spec_dict("val_loss"), REF, False, records(), "p_act"),
                     importance=False)
    assert loss.margin is None and cell(loss, close).p_equivalence is None
    assert any("no margin for val_loss" in n for n in loss.notes)
    with pytest.raises(SpecError, match="invalid margin"):
        summarize(results, margin=0.0)


def test_margin_in_the_spec_is_not_part_of_the_grid(tmp_path) -> None:
    spec = StudySpec(vary=("p",), margin=1.0)
    assert spec.to_dict()["margin"] == 1.0 and StudySpec.from_dict(spec.to_dict()).margin == 1.0
    assert spec.fingerprint() == StudySpec(vary=("p",)).fingerprint()
    assert spec.with_overrides(margin=2.0).margin == 2.0
    assert spec.with_overrides(seeds=5).margin == 1.0
    path = tmp_path / "s.toml"
    path.write_text('vary = ["p"]\nmargin = 0.25\n')
    assert load_study_file(path).margin == 0.25
    assert build_spec(path, None, [], [], None, None, None, margin=2.0).margin == 2.0
    for bad in ("-1", "true", '"big"'):
        path.write_text(f'vary = ["p"]\nmargin = {bad}\n')
        with pytest.raises(SpecError, match="margin"):
            load_study_file(path)


def test_summary_command_margin_overrides_the_stored_one(tmp_path) -> None:
    from optuna.storages.journal import JournalFileBackend

    url = str(tmp_path / "studies.journal")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _write_study(optuna.storages.JournalStorage(JournalFileBackend(url)))
    runner = CliRunner()
    base = ["summary", "p_act", "--storage", url, "--format", "json"]
    default = json.loads(runner.invoke(app, base).output)
    wide = json.loads(runner.invoke(app, [*base, "--margin", "20"]).output)
    assert (default["margin"], wide["margin"]) == (pytest.approx(0.005), pytest.approx(0.2))
    verdicts = {c["cell"]: c["verdict"] for c in wide["cells"]}
    assert verdicts["p=2 activation=sigmoid"] == "equivalent"
    bad = runner.invoke(app, [*base, "--margin", "0"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    table = runner.invoke(app, ["summary", "p_act", "--storage", url])
    assert table.exit_code == 0 and "With 3 seeds per cell" in table.output
    assert "inconclusive (detects >= " in table.output
