"""Placement density: accuracy per cell against GCT modules and parameters."""

from __future__ import annotations

import pytest
from conftest import assert_no_legend_over_data
from rich.console import Console

from gct_ablate.analysis.density import (
    MAX_GROUPS,
    applies,
    density_points,
    density_table,
    plot_density,
)
from gct_ablate.stats import StudyResults, Summary, TrialRecord, summarize

CELLS = {  # placement: (modules, total params, attention params, top-1 of 3 seeds)
    "every-conv": (21, 274205, 2019, [0.95, 0.96, 0.94]),
    "block": (9, 273134, 948, [0.93, 0.95, 0.94]),
    "none": (0, 272186, 0, [0.90, 0.92, 0.91]),
}


def _summary(others: tuple[str, ...] = ("",)) -> Summary:
    """Placement crossed with ``others`` (levels of activation; "" = placement alone)."""
    trials, number = [], 0
    for level, (modules, total, attn, values) in CELLS.items():
        for other in others:
            cell = f"placement={level}" + (f" activation={other}" if other else "")
            for seed, value in enumerate(values):
                metrics = {"val_top1": value, "n_attention_modules": modules,
                           "params_total": total, "params_attention": attn}
                trials.append(TrialRecord(cell, seed, "COMPLETE", value, metrics,
                                          {"placement": level}, number))
                number += 1
    trials.append(TrialRecord("placement=block", 3, "FAIL", None, {}, {}, number))
    vary = ["placement"] + (["activation"] if others != ("",) else [])
    levels = {"placement": list(CELLS)} | ({"activation": list(others)} if len(vary) > 1
                                           else {})
    spec = {"name": "placement_density", "vary": vary, "metric": "val_top1",
            "levels": levels, "set": {}, "seeds": 3}
    ref = "placement=every-conv" + (f" activation={others[0]}" if others[0] else "")
    return summarize(StudyResults(spec, ref, True, trials, "placement_density"),
                     importance=False)


def test_one_point_per_cell_with_modules_params_and_ci() -> None:
    summary = _summary()
    assert applies(summary)
    points = {p.cell: p for p in density_points(summary)}
    assert set(points) == {f"placement={c}" for c in CELLS}
    block = points["placement=block"]
    assert (block.n_modules, block.params_total, block.params_attention, block.n) == (
        9, 273134, 948, 3)
    assert block.mean == pytest.approx(0.94)
    assert block.ci_low < 0.94 < block.ci_high


def test_table_sorted_by_modules_and_plot(tmp_path) -> None:
    summary = _summary()
    console = Console(width=120, record=True)
    console.print(density_table(summary))
    text = console.export_text()
    assert text.index("placement=none") < text.index("placement=block") < text.index(
        "placement=every-conv")
    assert "94.00" in text and "2,019" in text
    fig = plot_density(summary)
    fig.savefig(tmp_path / "density.png")
    assert (tmp_path / "density.png").read_bytes()[:4] == b"\x89PNG"
    assert [ax.get_xlabel() for ax in fig.axes] == ["GCT modules", "GCT parameters"]
    assert fig.axes[0].get_ylabel() == "val_top1 (%)"


def test_applies_only_when_placement_varies() -> None:
    summary = _summary()
    summary.spec["vary"] = ["p"]
    assert not applies(summary)


def _labels(ax) -> list[str]:
    return sorted(t.get_text() for t in ax.texts)


def test_points_are_labelled_beside_them_and_no_legend_covers_the_data() -> None:
    fig = plot_density(_summary())
    for ax in fig.axes:
        assert _labels(ax) == sorted(CELLS)  # each placement named at its point
        assert ax.get_legend() is None
    assert not fig.legends  # one group: nothing to tell apart by colour
    assert_no_legend_over_data(fig)


def test_other_factors_get_a_colour_each_named_outside_the_axes() -> None:
    fig = plot_density(_summary(("tanh", "sigmoid")))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["activation=tanh",
                                                          "activation=sigmoid"]
    assert _labels(fig.axes[0]) == sorted(CELLS)  # the labels once, not per colour
    assert_no_legend_over_data(fig)
    many = plot_density(_summary(tuple(f"a{i}" for i in range(MAX_GROUPS + 1))))
    assert not many.legends  # too many to tell apart: only the reference's levels
    assert len(many.axes[0].containers) == len(CELLS)  # one error bar per placement
    assert "the reference's levels" in many.get_suptitle()
