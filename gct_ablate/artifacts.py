"""Read a study's trials back with their MLflow artifacts (config, weights, gate statistics).

Each COMPLETE trial's MLflow run holds ``config.json`` (``dataclasses.asdict(TrialConfig)``),
``gates/gates.json`` (:func:`gct_ablate.analysis.gates.gate_stats`) and, when saved,
``model/state_dict.pt``. The tracking URI comes from the study's ``tracking_uri`` attribute.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gct_ablate._util import mask_url
from gct_ablate.errors import StudyNotFound, UsageError
from gct_ablate.stats import StudyResults, TrialRecord
from gct_ablate.store import keys


def find_results(name: str, storage: str | None, out_dir: Path) -> StudyResults | None:
    """The study's results, or None when the storage has no study of that name."""
    from gct_ablate.storage import JOURNAL_NAME, open_storage
    from gct_ablate.summary import load_results

    if storage is None and not (out_dir / JOURNAL_NAME).exists():
        return None
    try:
        return load_results(open_storage(storage, out_dir, create=False), name)
    except StudyNotFound:
        return None


def load_study_results(name: str, storage: str | None, out_dir: Path) -> StudyResults:
    """Like :func:`find_results`, with a one-line error when there is no such study."""
    results = find_results(name, storage, out_dir)
    if results is None:
        where = storage or str(out_dir)
        raise StudyNotFound(f"no study named {name!r} in {where} (see --storage / --out)")
    return results


def completed_by_cell(results: StudyResults, cell: str | None = None
                      ) -> dict[str, list[TrialRecord]]:
    """COMPLETE trials with an MLflow run, grouped by cell (grid order), latest per seed."""
    latest: dict[tuple[str, Any], TrialRecord] = {}
    for t in sorted(results.trials, key=lambda t: t.number):
        if t.state == "COMPLETE" and t.mlflow_run_id:
            latest[(t.cell, t.seed)] = t
    groups: dict[str, list[TrialRecord]] = {}
    for t in latest.values():
        groups.setdefault(t.cell, []).append(t)
    if cell is not None:
        if cell not in groups:
            known = ", ".join(repr(c) for c in groups) or "none"
            raise UsageError(f"no completed trial in cell {cell!r}; cells: {known}")
        return {cell: groups[cell]}
    if not groups:
        raise UsageError(f"study {results.study_name!r} has no completed trial with an MLflow run")
    return groups


def gate_stats_by_cell(results: StudyResults, store: RunStore,
                       groups: dict[str, list[TrialRecord]]) -> dict[str, list[Any]]:
    """cell -> the gate statistics of each of its trials in ``groups`` that logged them
    (:func:`completed_by_cell`); runs stored as local files are read in place."""
    from gct_ablate.store._mlflow import local_artifact_dirs

    local = local_artifact_dirs(store.client, results.tracking.get(keys.EXPERIMENT_ID))
    found: dict[str, list[Any]] = {}
    for cell, trials in groups.items():
        found[cell] = []
        for t in trials:
            folder = local.get(t.mlflow_run_id or "")
            if folder is not None:
                path = folder / "gates" / "gates.json"
                stats = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
            else:
                stats = store.gates(t.mlflow_run_id or "")
            if stats:
                found[cell].append(stats)
    return found


def tracking_uri(results: StudyResults) -> str:
    uri = results.tracking.get(keys.TRACKING_URI)
    if not uri:
        raise UsageError(f"study {results.study_name!r} has no tracking_uri attribute")
    return uri


class RunStore:
    """Artifacts of MLflow runs on one tracking URI (downloaded to a temporary folder)."""

    def __init__(self, uri: str) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow import MlflowClient

        from gct_ablate.tracking import existing_store

        self.uri = existing_store(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._tmp = tempfile.TemporaryDirectory(prefix="gct-ablate-")
        self._checked: set[str] = set()

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def download(self, run_id: str, path: str) -> Path | None:
        """Local copy of one artifact; None when the run has no such artifact."""
        from mlflow.exceptions import MlflowException

        from gct_ablate.analysis._figures import slug

        self.check_run(run_id)
        dst = Path(self._tmp.name) / slug(run_id)  # a stored id is data, never a path
        dst.mkdir(exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError):
            return None

    def check_run(self, run_id: str) -> None:
        """A one-line UsageError when the tracking store has no such run."""
        if run_id in self._checked:
            return
        try:
            self.client.get_run(run_id)
        except Exception:  # MlflowException, or a connection error of a remote store
            raise UsageError(f"no MLflow run {run_id} in {mask_url(self.uri)}") from None
        self._checked.add(run_id)

    def json(self, run_id: str, path: str) -> Any | None:
        local = self.download(run_id, path)
        return None if local is None else json.loads(local.read_text(encoding="utf-8"))

    def gates(self, run_id: str) -> list[dict[str, Any]] | None:
        return self.json(run_id, "gates/gates.json")

    def trained(self, run_id: str, device: Any) -> tuple[Any, Any, Any]:
        """(model with its trained weights, TrialConfig, Dataset on device) of one run."""

        from gct_ablate.models import build_trial
        from gct_ablate.spec import TrialConfig

        raw = self.json(run_id, "config.json")
        if raw is None:
            raise UsageError(f"MLflow run {run_id} has no config.json artifact")
        cfg = TrialConfig.from_dict(raw)
        weights = self.download(run_id, "model/state_dict.pt")
        if weights is None:
            raise UsageError(f"MLflow run {run_id} has no model/state_dict.pt (trained with "
                             "save_model off?)")
        model, data = build_trial(cfg.replace(download=False), "cpu")
        from gct_ablate.checkpoint import load_tensors

        state = load_tensors(weights, f"MLflow run {run_id}: model/state_dict.pt")
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
        model.load_state_dict(state)
        return model.to(device).eval(), cfg, data.to(device)
