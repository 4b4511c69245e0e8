"""The Python API: ``import gct_ablate`` is light, and a tiny study runs through it end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gct_ablate as ga


def test_import_is_light_and_exports_the_api() -> None:
    code = ("import sys, gct_ablate as ga; assert 'torch' not in sys.modules; "
            "print(sorted(ga.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    for name in ("run_study", "load_summary", "train_eval", "make_attention", "build_model",
                 "GCT"):
        assert name in out
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ga.nope  # noqa: B018


def test_a_tiny_study_through_the_python_api(tmp_path) -> None:
    spec = ga.StudySpec(vary=("p",), levels={"p": ("1", "2")}, seeds=2, name="api",
                        fixed={"epochs": "1"},
                        base=ga.TrialConfig(threads=1, save_model=False))
    plan = ga.plan(spec, out=tmp_path, workers=1)
    assert plan.total == 4 and plan.enqueued == 4 and plan.done == 0
    ga.execute(plan)
    summary = ga.finish(plan)
    assert [c.cell for c in summary.cells] == ["p=1", "p=2"]
    assert all(c.n == 2 for c in summary.cells)
    assert summary.reference_cell == "p=2"
    assert all(0.0 < v <= 1.0 for c in summary.cells for v in c.values)
    again = ga.load_summary("api", out=tmp_path)
    assert [c.values for c in again.cells] == [c.values for c in summary.cells]
    again_plan = ga.plan(spec, out=tmp_path, workers=1)
    assert again_plan.done == 4 and again_plan.enqueued == 0
    resumed = ga.run_study(spec, out=tmp_path, workers=1)
    assert [c.values for c in resumed.cells] == [c.values for c in summary.cells]


def test_api_errors_are_usage_errors(tmp_path) -> None:
    from gct_ablate.errors import StudyNotFound

    with pytest.raises(ga.UsageError, match="no study storage"):
        ga.load_summary("nope", out=tmp_path)
    ga.run_study(ga.StudySpec(fixed={"epochs": "1"}, seeds=1, name="one",
                              base=ga.TrialConfig(threads=1, save_model=False)),
                 out=tmp_path, workers=1)
    with pytest.raises(StudyNotFound, match="no study 'nope'"):
        ga.load_summary("nope", out=tmp_path)
