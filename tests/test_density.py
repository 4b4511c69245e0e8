"""Placement density: accuracy per cell against GCT modules and parameters."""

from __future__ import annotations

import pytest
from rich.console import Console

from gct_ablate.analysis.density import applies, density_points, density_table, plot_density
from gct_ablate.stats import StudyResults, Summary, TrialRecord, summarize

CELLS = {  # placement: (modules, total params, attention params, top-1 of 3 seeds)
    "every-conv": (21, 274205, 2019, [0.95, 0.96, 0.94]),
    "block": (9, 273134, 948, [0.93, 0.95, 0.94]),
    "none": (0, 272186, 0, [0.90, 0.92, 0.91]),
}


def _summary() -> Summary:
    trials, number = [], 0
    for level, (modules, total, attn, values) in CELLS.items():
        for seed, value in enumerate(values):
            metrics = {"val_top1": value, "n_attention_modules": modules,
                       "params_total": total, "params_attention": attn}
            trials.append(TrialRecord(f"placement={level}", seed, "COMPLETE", value, metrics,
                                      {"placement": level}, number))
            number += 1
    trials.append(TrialRecord("placement=block", 3, "FAIL", None, {}, {}, number))
    spec = {"name": "placement_density", "vary": ["placement"], "metric": "val_top1",
            "levels": {"placement": list(CELLS)}, "set": {}, "seeds": 3}
    return summarize(StudyResults(spec, "placement=every-conv", True, trials,
                                  "placement_density"))


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
