"""A trial's saved training state: a killed trial resumes where it was, bit for bit on the
CPU, continuing its MLflow run with each epoch logged once; staged fine-tuning resumes too."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_cli, stop, wait_for
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_faults import journal_trials

from gct_ablate.resume import TrainingState
from gct_ablate.spec import TrialConfig
from gct_ablate.train import train_eval

ARGS = ["--vary", "p", "--levels", "p=2", "--seeds", "1", "--set", "epochs=6,train_size=500",
        "--threads", "1", "--no-save-models", "--workers", "1", "--study", "resume",
        "--checkpoint-every", "1"]


def _saved_epoch(out: Path) -> int:
    files = list((out / "checkpoints" / "resume").glob("*.pt"))
    if not files:
        return 0
    try:
        return int(torch.load(files[0], weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def test_killed_trial_resumes_bit_identical_with_one_history(tmp_path):
    """SIGKILL a single-worker `run` once epoch 3 of 6 is saved (during epoch 4), then the
    same command: the trial resumes after its saved epoch and ends exactly like an
    uninterrupted run of the same cell and seed; its MLflow run has each epoch once."""
    killed_out = tmp_path / "killed"
    args = ["run", *ARGS, "--out", str(killed_out)]
    proc = start_cli(args, tmp_path, tmp_path / "kill.log")
    try:
        saved = wait_for(lambda: _saved_epoch(killed_out) >= 3 and _saved_epoch(killed_out),
                         180, "epoch 3 saved", poll=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert saved < 6
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    first = min(_saved_epoch(killed_out) or saved, saved)
    assert "resumed at epoch" in again.stderr, again.stderr
    resumed_at = int(again.stderr.split("resumed at epoch ")[1].split()[0])
    assert resumed_at >= first + 1 and resumed_at in (4, 5, 6)
    assert not list((killed_out / "checkpoints" / "resume").glob("*.pt"))  # removed when done

    torch.set_num_threads(1)  # the same cell x seed, uninterrupted, as the worker runs it
    values: dict[int, float] = {}
    clean = train_eval(TrialConfig(p="2", epochs=6, train_size=500, threads=1, seed=0),
                       lambda epoch, m: values.update({epoch: m["val_top1"]}))
    [resumed] = [t for t in journal_trials(killed_out, "resume")
                 if t.state == TrialState.COMPLETE]
    assert resumed.user_attrs["resumed_from_epoch"] == resumed_at - 1
    for key in ("val_top1", "val_loss", "val_top5", "train_loss"):
        assert resumed.user_attrs["metrics"][key] == clean[key], key
    assert resumed.intermediate_values == values

    client = MlflowClient(tracking_uri=f"sqlite:///{killed_out / 'mlflow.db'}")
    run_id = resumed.user_attrs["mlflow_run_id"]
    dead = [t for t in journal_trials(killed_out, "resume") if t.state == TrialState.FAIL]
    assert [t.user_attrs["mlflow_run_id"] for t in dead] == [run_id]  # one run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for metric in ("val_top1", "train_loss", "lr"):
        steps = [m.step for m in client.get_metric_history(run_id, metric)]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6], (metric, steps)


def test_staged_finetuning_resumes_mid_stage_exactly(tmp_path):
    """finetune-staged: a state saved in the joint stage (and one at the stage boundary)
    resumes to the uninterrupted result, stage metrics included."""
    backbone = tmp_path / "backbone.pt"
    base = dict(train_size=200, val_size=100, threads=1, device="cpu")
    saved = run_cli(["train", "--attention", "none", "--epochs", "1", "--train-size", "200",
                     "--val-size", "100", "--threads", "1", "--save", str(backbone)], tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    cfg = TrialConfig(**base, epochs=4, training="finetune-staged", gct_epochs=2,
                      init_from=str(backbone), keep_checkpoints=True)
    torch.set_num_threads(1)
    for every, epoch in ((1, 3), (2, 2)):  # mid joint stage; at the end of the first stage
        cfg = cfg.replace(checkpoint_every=every)
        path = tmp_path / f"every{every}.pt"
        full = train_eval(cfg, state=TrainingState(path, cfg))  # the last epoch never saves
        state = TrainingState(path, cfg)
        assert state.load()["epoch"] == epoch
        again = train_eval(cfg, state=state)
        assert again["resumed_from"] == epoch
        for key in ("val_top1", "val_loss", "train_loss", "val_top1_step0", "val_top1_after_gct"):
            assert again[key] == full[key], key


def test_state_of_another_configuration_is_ignored(tmp_path):
    cfg = TrialConfig(train_size=100, val_size=50, epochs=2, threads=1, device="cpu",
                      checkpoint_every=1, keep_checkpoints=True)
    path = tmp_path / "state.pt"
    train_eval(cfg, state=TrainingState(path, cfg))
    assert TrainingState(path, cfg.replace(threads=2)).load() is not None  # how, not what
    assert TrainingState(path, cfg.replace(lr=0.05)).load() is None
    path.write_bytes(b"torn")
    assert TrainingState(path, cfg).load() is None


def test_bad_checkpoint_every_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from gct_ablate.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--vary", "p", "--checkpoint-every", "x",
                                      "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert "invalid checkpoint_every 'x'; valid: auto, none, or a number" in result.output


@pytest.mark.parametrize("flags", [["--pruner", "median"],
                                   ["--until-decided", "--max-seeds", "3", "--seed-batch", "1"]],
                         ids=["median-pruner", "until-decided"])
def test_an_interrupted_trial_resumes_under_a_pruner_and_adaptive_seeds(tmp_path, monkeypatch,
                                                                        flags):
    """Ctrl-C during epoch 3 of 4 (after epoch 2 is saved), then the same command: the trial
    resumes at epoch 3 and goes on as an uninterrupted one would, to its end or to where the
    pruner stops it; Optuna has each epoch once (the pruner saw the whole curve); every cell
    x seed ends once."""
    from typer.testing import CliRunner

    import gct_ablate.train
    from gct_ablate.cli import app

    out = tmp_path / "out"
    args = ["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "2", "--set",
            "epochs=4,train_size=300,val_size=100", "--threads", "1", "--no-save-models",
            "--workers", "1", "--study", "resume", "--checkpoint-every", "1", "--out", str(out),
            *flags]
    checks = gct_ablate.train.raise_pending
    interrupted = []

    def ctrl_c_once_epoch_2_is_saved() -> None:
        if not interrupted and _saved_epoch(out) >= 2:
            interrupted.append(_saved_epoch(out))
            raise KeyboardInterrupt
        checks()

    monkeypatch.setattr(gct_ablate.train, "raise_pending", ctrl_c_once_epoch_2_is_saved)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 130 and interrupted == [2], first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resumed at epoch 3" in again.output

    trials = journal_trials(out, "resume")
    [resumed] = [t for t in trials if "resumed_from_epoch" in t.user_attrs]
    assert resumed.user_attrs["resumed_from_epoch"] == 2
    ended = (TrialState.COMPLETE, TrialState.PRUNED)
    keys = [(t.user_attrs["cell"], t.user_attrs["seed"]) for t in trials if t.state in ended]
    assert len(keys) == len(set(keys)) >= 4
    values: dict[int, float] = {}
    torch.set_num_threads(1)
    clean = train_eval(TrialConfig(**resumed.params, seed=resumed.user_attrs["seed"], epochs=4,
                                   train_size=300, val_size=100, threads=1),
                       lambda epoch, m: values.update({epoch: m["val_top1"]}))
    curve = resumed.intermediate_values
    assert sorted(curve) == list(range(1, len(curve) + 1)) and len(curve) >= 3
    assert curve == {epoch: values[epoch] for epoch in curve}  # the uninterrupted curve
    if resumed.state == TrialState.COMPLETE:
        assert len(curve) == 4 and resumed.user_attrs["metrics"]["val_top1"] == clean["val_top1"]
    else:
        assert resumed.state == TrialState.PRUNED
