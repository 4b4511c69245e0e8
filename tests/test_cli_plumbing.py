"""How command-line options reach the core: the CLI in this process, the core patched to
record its call. Nothing trains and nothing is stored; the end-to-end runs of the same
commands are in test_cli.py, test_readme_tour.py and the study tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import gct_ablate.steps
import gct_ablate.train
from gct_ablate.cli import app
from gct_ablate.errors import UsageError

runner = CliRunner()
METRICS = {"status": "ok", "val_top1": 0.5, "val_top5": 0.9, "val_loss": 1.0,
           "train_loss": 1.0, "epochs_done": 1, "seconds": 0.1, "device": "cpu"}


@pytest.fixture
def trained(monkeypatch) -> list[tuple[Any, dict[str, Any]]]:
    """Calls of ``train_eval`` (its TrialConfig and keyword arguments), which trains nothing."""
    calls: list[tuple[Any, dict[str, Any]]] = []

    def record(cfg, report=None, **kwargs):
        calls.append((cfg, kwargs))
        return dict(METRICS, epochs_done=cfg.epochs)

    monkeypatch.setattr(gct_ablate.train, "train_eval", record)
    return calls


@pytest.fixture
def planned(monkeypatch) -> list[tuple[Any, dict[str, Any]]]:
    """Calls of the study's ``plan`` step (its spec and keyword arguments); the step then
    stops the command with one line, so nothing is queued, stored or trained."""
    calls: list[tuple[Any, dict[str, Any]]] = []

    def record(spec, **kwargs):
        calls.append((spec, kwargs))
        raise UsageError("planned, stopped by the test")

    monkeypatch.setattr(gct_ablate.steps, "plan", record)
    return calls


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def test_train_options_reach_the_trial_config(trained, tmp_path):
    result = invoke("train", "--p", "1", "--activation", "sigmoid", "--norm", "l1",
                    "--epochs", "3", "--batch-size", "32", "--threads", "1", "--seed", "7",
                    "--device", "cpu", "--dataset", "fashion-mnist", "--train-size", "400",
                    "--tracking-uri", tmp_path / "mlruns")
    assert result.exit_code == 0, result.output
    [(cfg, kwargs)] = trained
    assert (cfg.p, cfg.activation, cfg.norm) == ("1", "sigmoid", "l1")
    assert (cfg.epochs, cfg.batch_size, cfg.threads, cfg.seed) == (3, 32, 1, 7)
    assert (cfg.device, cfg.dataset, cfg.train_size) == ("cpu", "fashion-mnist", 400)
    assert cfg.training == "scratch" and cfg.init_from == "none"
    assert kwargs["tracking_uri"] == str(tmp_path / "mlruns")
    assert "50.00 %" in result.output  # the core's metrics are what the table prints


def test_train_defaults_are_the_trial_configs(trained):
    from gct_ablate.spec import TrialConfig

    assert invoke("train").exit_code == 0
    [(cfg, _)] = trained
    assert cfg == TrialConfig(training="scratch", init_from="none", gct_epochs=cfg.gct_epochs)


def test_train_stages_become_a_staged_finetuning_of_their_epochs(trained, tmp_path):
    init = tmp_path / "m.pt"
    init.write_bytes(b"")  # the core, not the CLI, reads it
    result = invoke("train", "--init-from", init, "--stages", "gct:2,joint:3")
    assert result.exit_code == 0, result.output
    [(cfg, _)] = trained
    assert (cfg.training, cfg.epochs, cfg.gct_epochs) == ("finetune-staged", 5, 2)
    assert cfg.init_from == str(init)


def test_stages_with_epochs_is_one_line_before_the_core(trained, tmp_path):
    result = invoke("train", "--init-from", tmp_path / "m.pt", "--stages", "gct:1,joint:1",
                    "--epochs", "3")
    assert result.exit_code == 2 and "--stages sets the epochs" in result.output
    assert trained == []


def test_run_options_reach_the_plan(planned, tmp_path):
    result = invoke("run", "--vary", "p,activation", "--levels", "p=1,2", "--seeds", "4",
                    "--set", "epochs=2,model=resnet32", "--study", "s1", "--margin", "1.5",
                    "--out", tmp_path, "--workers", "2", "--pruner", "median",
                    "--heartbeat", "5", "--retry-failed", "--threads", "1", "--device", "cpu",
                    "--no-save-models", "--checkpoint-every", "2", "--keep-checkpoints", "--yes")
    assert result.exit_code == 2, result.output
    assert "planned, stopped by the test" in result.output
    [(spec, kwargs)] = planned
    assert spec.vary == ("p", "activation") and spec.levels["p"] == ("1", "2")
    assert spec.seeds == 4 and spec.name == "s1" and spec.margin == 1.5
    assert spec.fixed == {"epochs": "2", "model": "resnet32"}
    assert (spec.base.threads, spec.base.device, spec.base.save_model) == (1, "cpu", False)
    assert (spec.base.checkpoint_every, spec.base.keep_checkpoints) == (2, True)
    assert Path(kwargs["out"]) == tmp_path and kwargs["workers"] == 2
    assert kwargs["pruner"] == "median" and kwargs["heartbeat"] == 5
    assert kwargs["retry_failed"] is True
    assert kwargs["limits"] is None  # --yes: no cost limits
    assert list(tmp_path.iterdir()) == []  # the CLI itself wrote nothing


def test_run_cost_limits_and_adaptive_seeds_reach_the_plan(planned, tmp_path):
    result = invoke("run", "--vary", "p", "--until-decided", "--max-seeds", "9",
                    "--seed-batch", "2", "--ask-above-trials", "40", "--ask-above-hours", "0.5",
                    "--out", tmp_path)
    assert result.exit_code == 2, result.output
    [(spec, kwargs)] = planned
    assert (spec.max_seeds, spec.seed_batch) == (9, 2)
    limits = kwargs["limits"]
    assert (limits.trials, limits.hours) == (40, 0.5)


def test_a_study_file_with_command_line_overrides_reaches_the_plan(planned, tmp_path):
    study = Path(__file__).parents[1] / "studies" / "paper_ablation.toml"
    result = invoke("run", study, "--seeds", "2", "--set", "epochs=1", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    [(spec, _)] = planned
    assert spec.seeds == 2 and spec.fixed["epochs"] == "1"
    assert spec.vary  # the file's factors
