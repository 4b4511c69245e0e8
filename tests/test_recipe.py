"""A study keeps its recipe: every cell's full config is stored at creation, and resuming
after a default changed trains what the study started with."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

from gct_ablate.errors import UsageError
from gct_ablate.grid import prepare_study, spec_from_attrs
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import open_storage
from gct_ablate.store.keys import RECIPE
from gct_ablate.store.open import open_study
from gct_ablate.store.recipe import recipe_of, with_recipe
from gct_ablate.tracking import Tracker, default_tracking_uri

# The CLI with TrialConfig's default epochs changed, as a newer release would change it.
PATCHED_CLI = """
import dataclasses, sys
from gct_ablate.spec import TrialConfig
names = [f.name for f in dataclasses.fields(TrialConfig)]
defaults = list(TrialConfig.__init__.__defaults__)
defaults[names.index("epochs")] = int(sys.argv[1])
TrialConfig.__init__.__defaults__ = tuple(defaults)
print("default epochs", TrialConfig().epochs, file=sys.stderr)
from gct_ablate.cli import app
app(prog_name="gct-ablate", args=sys.argv[2:])
"""


def run_with_default_epochs(epochs: int, args: list[str], cwd: Path):
    return subprocess.run([sys.executable, "-c", PATCHED_CLI, str(epochs), *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=300)


def test_resume_after_a_default_changed_trains_the_stored_recipe(tmp_path):
    args = ["run", "--vary", "p", "--levels", "p=1,2", "--set", "train_size=120,val_size=60",
            "--threads", "1", "--workers", "1", "--no-save-models", "--study", "kept",
            "--out", str(tmp_path)]
    first = run_with_default_epochs(1, [*args, "--seeds", "1"], tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_with_default_epochs(2, [*args, "--seeds", "2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "default epochs 2" in resumed.stderr  # the default did change for the resume
    study = open_study(open_storage(None, tmp_path), "kept")
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.user_attrs["seed"] for t in trials) == [0, 0, 1, 1]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert {t.user_attrs["metrics"]["epochs_done"] for t in trials} == {1}
    assert {len(t.intermediate_values) for t in trials} == {1}
    assert {cell["epochs"] for cell in study.user_attrs[RECIPE].values()} == {"1"}


def tiny_spec(**kw) -> StudySpec:
    return StudySpec(vary=("p",), levels={"p": ("1", "2")}, fixed={"lr": "0.05"}, seeds=1,
                     name="tiny", base=TrialConfig(threads=1, **kw))


def test_recipe_is_stored_at_creation_with_every_default_resolved(tmp_path):
    spec = tiny_spec()
    storage = open_storage(None, tmp_path)
    prepare_study(spec, storage, Tracker(default_tracking_uri(tmp_path)))
    attrs = open_study(storage, "tiny").user_attrs
    recipe = attrs[RECIPE]
    assert list(recipe) == ["p=1", "p=2"]
    assert recipe["p=1"] == TrialConfig(p="1", lr=0.05).factor_levels()
    # a later default (here: the base the worker brings) does not change what is trained
    later = spec_from_attrs(attrs, TrialConfig(epochs=9, threads=2, device="cpu"))
    cfg = later.config((("p", "1"),), seed=3)
    assert (cfg.epochs, cfg.lr, cfg.p, cfg.seed) == (6, 0.05, "1", 3)
    assert (cfg.threads, cfg.device) == (2, "cpu")  # machine options stay the worker's
    assert recipe_of(later) == recipe


def test_a_recipe_this_version_cannot_reproduce_is_refused_in_one_line():
    spec = tiny_spec()
    recipe = recipe_of(spec)
    unknown = {c: {**f, "dropout": "0.1"} for c, f in recipe.items()}
    with pytest.raises(UsageError, match="'dropout' in its stored recipe, which "
                       "gct-ablate .* gct-ablate 9.0$"):
        with_recipe(spec, {RECIPE: unknown, "gct_ablate_version": "9.0"})
    bad = {c: {**f, "norm": "l7"} for c, f in recipe.items()}
    with pytest.raises(UsageError, match="cannot read its stored recipe"):
        with_recipe(spec, {RECIPE: bad})
    other = {**recipe, "p=2": {**recipe["p=2"], "epochs": "3"}}  # cells that disagree
    with pytest.raises(UsageError, match="would train cell 'p=2' with epochs=6, not the "
                       "stored epochs=3; run its workers with the gct-ablate version"):
        with_recipe(spec, {RECIPE: other})
    assert with_recipe(spec, {}) is spec  # a study stored before recipes were kept


def test_a_worker_that_cannot_train_the_stored_recipe_refuses_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from gct_ablate.cli import app

    storage = open_storage(None, tmp_path)
    study = prepare_study(tiny_spec(), storage, Tracker(default_tracking_uri(tmp_path))).study
    recipe = study.user_attrs[RECIPE]
    study.set_user_attr(RECIPE, {c: {**f, "dropout": "0.1"} for c, f in recipe.items()})
    result = CliRunner().invoke(app, ["worker", "tiny", "--out", str(tmp_path), "--wait", "0"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'dropout' in its stored recipe" in lines[0]
    assert all(t.state.name == "WAITING" for t in open_study(storage, "tiny").trials)
