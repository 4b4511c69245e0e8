"""End to end: a real tiny study (2 cells x 2 seeds), then `gates` and `prune` on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from gct_ablate.analysis.gates import gate_stats
from gct_ablate.artifacts import RunStore, load_study_results
from gct_ablate.cli import app
from gct_ablate.data import load_dataset
from gct_ablate.train import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()




@pytest.fixture(scope="module")
def study(vary_p_study):
    """The session's finished study 'vary-p' (conftest), its store in OUT for every test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield vary_p_study


def _artifacts(uri: str, run_id: str, folder: str) -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, folder)}


def test_gates_pools_each_cell_and_logs_to_the_parent_run(study, tmp_path) -> None:
    result = runner.invoke(app, ["gates", "vary-p", "--out", str(study)])
    assert result.exit_code == 0, result.output
    for cell in ("p=1", "p=2"):
        assert f"vary-p: {cell} (2 seeds pooled)" in result.output
        assert (study / f"vary-p-gates-{cell}.png").read_bytes()[:4] == b"\x89PNG"
    results = load_study_results("vary-p", None, study)
    uri, parent = results.tracking["tracking_uri"], results.tracking["mlflow_parent_run_id"]
    assert _artifacts(uri, parent, "gates") == {"gates/p=1.png", "gates/p=2.png"}
    verdicts = re.findall(r"p=[12]: depth trend \(paper: γ < 0 shallow, > 0 deep\): "
                          r"(REPRODUCED|OPPOSITE|NOT DETECTED): ", result.output)
    assert len(verdicts) == 2, result.output  # one verdict per cell
    assert "Spearman ρ(γ, depth)" in result.output and "2 seeds, 95% t intervals" in result.output
    one = runner.invoke(app, ["gates", "vary-p", "--out", str(study), "--cell", "p=2",
                              "--output", str(tmp_path / "g.png")])
    assert one.exit_code == 0 and "p=1" not in one.output
    assert (tmp_path / "g.png").exists()


def test_stored_weights_and_gates_reproduce_the_trials(study) -> None:
    results = load_study_results("vary-p", None, study)
    trials = [t for t in results.trials if t.state == "COMPLETE"]
    assert len(trials) == 4
    with RunStore(results.tracking["tracking_uri"]) as store:
        for t in trials[:2]:
            model, cfg, data = store.trained(t.mlflow_run_id, torch.device("cpu"))
            assert cfg.p == t.cell.split("=")[1] and cfg.seed == t.seed
            assert evaluate(model, data, 256)["val_top1"] == t.metrics["val_top1"]
            stored = store.gates(t.mlflow_run_id)
            again = gate_stats(model, data)
            assert [r["name"] for r in stored] == [r["name"] for r in again]
            assert [r["gamma_mean"] for r in stored] == [r["gamma_mean"] for r in again]
            assert [r["gate_mean"] for r in stored] == pytest.approx(
                [r["gate_mean"] for r in again], abs=1e-9)


def test_prune_a_study_cell(study, tmp_path) -> None:
    png = tmp_path / "curve.png"
    result = runner.invoke(app, ["prune", "vary-p", "--cell", "p=2", "--out", str(study),
                                 "--output", str(png)])
    assert result.exit_code == 0, result.output
    assert "vary-p: p=2 (2 seed(s), no retraining)" in result.output
    assert "top-1 % (random)" in result.output
    match = re.search(r"p=2: (\d+) of 21 modules can go for less than 0.5 points", result.output)
    assert match and 0 <= int(match.group(1)) <= 21
    assert png.read_bytes()[:4] == b"\x89PNG"
    results = load_study_results("vary-p", None, study)
    uri, parent = results.tracking["tracking_uri"], results.tracking["mlflow_parent_run_id"]
    assert "prune/gate.png" in _artifacts(uri, parent, "prune")


def test_prune_a_run_by_id(study) -> None:
    results = load_study_results("vary-p", None, study)
    trial = next(t for t in results.trials if t.state == "COMPLETE")
    run_id = trial.mlflow_run_id
    result = runner.invoke(app, ["prune", run_id, "--order", "gamma", "--out", str(study)])
    assert result.exit_code == 0, result.output
    zero = next(line for line in result.output.splitlines() if re.match(r"\W*0\W+0\W", line))
    assert f"{100 * trial.metrics['val_top1']:.2f}" in zero  # 0 % point = the run's accuracy
    assert f"run {run_id[:8]}: " in result.output and "of 21 modules can go" in result.output
    assert (study / f"run-{run_id[:8]}-prune-gamma.png").exists()


def test_prune_fold_shows_both_modes_and_exports_loadable_networks(study, tmp_path) -> None:
    from gct_ablate.checkpoint import load_model

    result = runner.invoke(app, ["prune", "vary-p", "--cell", "p=2", "--mode", "fold",
                                 "--out", str(study), "--export", str(tmp_path / "net.pt")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if "removed %" in line)
    assert re.findall(r"identity|fold", lines[at]) == ["identity", "identity", "fold", "fold"]
    assert re.findall(r"gate|random", lines[at - 1]) == ["gate", "random", "gate", "random"]
    assert "(order: gate, mode: fold)" in result.output
    assert (study / "vary-p-prune-gate-fold.png").read_bytes()[:4] == b"\x89PNG"
    printed = dict(re.findall(r"exported (\S+) \(\+ .json\): .*? val top-1 ([\d.]+) %",
                              result.output))
    assert sorted(Path(p).name for p in printed) == ["net-seed0.pt", "net-seed1.pt"]
    for path, top1 in printed.items():
        saved = load_model(path)
        assert saved.info["mode"] == "fold" and saved.cfg.p == "2"
        n_removed = len(saved.info["removed"])
        assert len(gate_stats(saved.model, load_dataset("digits"))) == 21 - n_removed
        assert f"{100 * evaluate(saved.model, load_dataset('digits'), 256)['val_top1']:.2f}" \
            == top1
        again = runner.invoke(app, ["evaluate", path, "--device", "cpu"])
        assert again.exit_code == 0 and f"val top-1 {top1} %" in again.output, again.output


@pytest.mark.parametrize("args, message", [
    (["prune", "vary-p", "--export", "x.pt"], "--export writes the networks of one cell"),
    (["prune", "vary-p", "--cell", "p=2", "--finetune", "1", "--export", "x.pt"],
     "leave --finetune out"),
    (["prune", "vary-p", "--mode", "drop"], "unknown mode 'drop'"),
    (["prune", "no-such-study"], "neither a study"),
    (["prune", "0" * 32], "no MLflow run"),
    (["prune", "0" * 32, "--cell", "p=2"], "--cell applies to a study"),
    (["prune", "vary-p", "--order", "beta"], "unknown order"),
    (["gates", "no-such-study"], "no study named"),
    (["gates", "vary-p", "--cell", "p=9"], "no completed trial in cell 'p=9'"),
])
def test_bad_input_is_one_line_and_exit_code_2(study, args, message) -> None:
    result = runner.invoke(app, [*args, "--out", str(study)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_evaluate_a_missing_file_is_one_line(tmp_path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nothing.pt")])
    assert result.exit_code == 2 and "nothing.pt: no such file" in result.output


def test_prune_a_run_without_saved_weights_says_so(study) -> None:
    results = load_study_results("vary-p", None, study)
    uri = results.tracking["tracking_uri"]
    client = MlflowClient(uri)
    run = client.create_run(results.tracking["mlflow_experiment_id"])
    trial = next(t for t in results.trials if t.state == "COMPLETE")
    with RunStore(uri) as store:
        client.log_dict(run.info.run_id, store.json(trial.mlflow_run_id, "config.json"),
                        "config.json")
    result = runner.invoke(app, ["prune", run.info.run_id, "--out", str(study)])
    assert result.exit_code == 2
    assert "has no model/state_dict.pt" in result.output
