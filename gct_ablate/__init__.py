"""gct-ablate: ablation studies of the Gated Channel Transformation (GCT, CVPR 2020).

The Python API (the command line is a thin layer over it)::

    import gct_ablate as ga

    spec = ga.StudySpec(vary=("p",), levels={"p": ("1", "2", "inf")}, seeds=3)
    plan = ga.plan(spec, out="runs")                   # stores, cost, queue: nothing run
    ga.execute(plan)                                   # train and track
    summary = ga.finish(plan)                          # summarise (ga.run_study: all three)
    again = ga.load_summary("vary-p", out="runs")      # later, from storage alone
    metrics = ga.train_eval(ga.TrialConfig(p="inf"))   # one run, no Optuna or MLflow
    model = ga.build_model("resnet20", 10, attention="gct", placement="block")

Names load on first use, so ``import gct_ablate`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gct_ablate.errors import UsageError
    from gct_ablate.gct import GCT, make_attention
    from gct_ablate.models import build_model
    from gct_ablate.spec import StudySpec, TrialConfig
    from gct_ablate.steps import StudyPlan, execute, finish, plan, run_study
    from gct_ablate.study import join_study, load_summary
    from gct_ablate.study_file import load_study_file
    from gct_ablate.summary import Summary
    from gct_ablate.train import train_eval

_LAZY = {
    "run_study": "gct_ablate.steps", "join_study": "gct_ablate.study",
    "plan": "gct_ablate.steps", "execute": "gct_ablate.steps", "finish": "gct_ablate.steps",
    "StudyPlan": "gct_ablate.steps",
    "load_summary": "gct_ablate.study", "Summary": "gct_ablate.summary",
    "StudySpec": "gct_ablate.spec", "TrialConfig": "gct_ablate.spec",
    "load_study_file": "gct_ablate.study_file", "train_eval": "gct_ablate.train",
    "build_model": "gct_ablate.models", "GCT": "gct_ablate.gct",
    "make_attention": "gct_ablate.gct", "UsageError": "gct_ablate.errors",
}

__all__ = [
    "GCT", "StudyPlan", "StudySpec", "Summary", "TrialConfig", "UsageError", "build_model",
    "execute", "finish", "join_study", "load_study_file", "load_summary", "make_attention",
    "plan", "run_study", "train_eval",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
