"""run_study is plan + execute + finish: nothing stored by the plan, the cost approved
between plan and execute, one storage handle per process, every figure drawn once."""

from __future__ import annotations

import optuna
import pytest

import gct_ablate as ga
from gct_ablate import storage as storage_module
from gct_ablate import summary as summary_module
from gct_ablate.analysis import report_figures
from gct_ablate.cost import CostLimits, TooCostly


def tiny(name: str, **kw) -> ga.StudySpec:
    return ga.StudySpec(vary=("p",), levels={"p": ("1", "2")}, seeds=1, name=name,
                        fixed={"epochs": "1", "train_size": "120", "val_size": "60"},
                        base=ga.TrialConfig(threads=1, save_model=False), **kw)


def counting(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_plan_stores_nothing_and_a_costly_plan_needs_approval(tmp_path):
    plan = ga.plan(tiny("costly"), out=tmp_path, workers=1, limits=CostLimits(trials=1))
    assert plan.needs_approval and plan.enqueued == 2 and plan.done == 0
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store made
    with pytest.raises(TooCostly, match="not started, nothing was queued"):
        ga.execute(plan)
    assert storage_module.study_names(plan.handle) == []  # refused: nothing queued


def test_a_run_opens_its_storage_once_and_draws_each_figure_once(tmp_path, monkeypatch):
    opens = counting(monkeypatch, storage_module, "_open_new")
    levels = counting(monkeypatch, summary_module, "levels_figure")
    forest = counting(monkeypatch, report_figures, "forest_figure")
    summary = ga.run_study(tiny("once"), out=tmp_path, workers=1)
    assert [c.n for c in summary.cells] == [1, 1]
    assert len(opens) == 1, "the Optuna storage was opened more than once in this process"
    assert (len(levels), len(forest)) == (1, 1)
    assert (tmp_path / "once-levels.png").stat().st_size > 0
    assert (tmp_path / "once-report.html").exists()


def test_a_storage_handle_is_reused_until_its_journal_is_replaced_or_shortened(tmp_path):
    from gct_ablate.storage import open_storage

    first = open_storage(None, tmp_path)
    assert open_storage(None, tmp_path) is first
    journal = tmp_path / "optuna.journal"
    optuna.create_study(study_name="s", storage=first)
    assert open_storage(None, tmp_path) is first  # grown: the same handle
    journal.write_bytes(b"")  # shortened (a repair, a hand edit): opened afresh
    again = open_storage(None, tmp_path)
    assert again is not first and storage_module.study_names(again) == []
