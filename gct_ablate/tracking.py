"""MLflow tracking: one experiment per study, one parent run, one child run per trial.

Talks to ``mlflow.MlflowClient`` directly (no fluent global state), so several worker
processes and threads can log at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gct_ablate._util import mask_url
from gct_ablate.dbcheck import first_call
from gct_ablate.errors import UsageError
from gct_ablate.locks import driver_url, file_lock, sqlite_path
from gct_ablate.relocate import default_tracking_uri, needs_rebase, rebase_artifacts
from gct_ablate.spec import check_name
from gct_ablate.store import _mlflow, keys

PARENT_TAG = keys.TAG_PARENT
# MLflow 3's UI opens an experiment without this tag on its GenAI trace overview; with it,
# on the training runs.
EXPERIMENT_KIND = keys.TAG_EXPERIMENT_KIND


__all__ = ["Tracker", "check_tracking", "default_tracking_uri", "existing_store",
           "resolve_tracking_uri", "ui_command"]


def resolve_tracking_uri(out_dir: Path, override: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite store in ``out_dir``; a
    plain ``postgresql://`` gets the driver that is installed (as the Optuna storage does)."""
    uri = override or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out_dir)
    return driver_url(uri)


# MLflow 3.17's UI picks an experiment's page by its "GenAI | Model training" switch (in
# the URL, else remembered by the browser, GenAI by default), not by the experiment's tag.
TRAINING_VIEW = "?workflowType=machine_learning"


def ui_command(uri: str, experiment_id: str | None = None) -> str:
    """How to open these runs in the MLflow UI (on the experiment's training runs)."""
    page = f"/#/experiments/{experiment_id}{TRAINING_VIEW}" if experiment_id else ""
    uri = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}{page} in a browser (MLflow tracking server)"
    if not page:
        return f"mlflow ui --backend-store-uri {uri}"
    return f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000{page}"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached or a
    server refuses this user's credentials."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status >= 400:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as err:
            reason = getattr(err, "reason", err)
            msg = f"cannot reach MLflow tracking server {mask_url(uri)}: {reason}"
            raise UsageError(msg) from None
        check_credentials(uri)
    elif uri.startswith("sqlite:///"):
        path = sqlite_path(uri)
        folder = (path or Path(".")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UsageError(f"MLflow store folder {folder} is missing or not writable")
        if path is not None:
            prepare_local_store(path)
    else:  # a database: one call, so a wrong password or host is one line before training
        quiet_mlflow()
        first_call(uri)


def existing_store(uri: str) -> str:
    """``uri`` for reading a study's runs: a local SQLite store must exist (nothing is created
    in a folder the study has left) and be whole; its artifact locations are rebased onto
    its folder when the folder was moved or copied (:mod:`gct_ablate.relocate`)."""
    path = sqlite_path(uri)
    if path is None:
        return driver_url(uri)
    if not path.is_file():
        raise UsageError(f"no MLflow store {path}; was the results folder moved? Pass --out "
                         "with the folder that holds it (or --tracking-uri)")
    prepare_local_store(path)
    return uri


def quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines off; no per-run URL printed on stdout."""
    import logging

    import mlflow  # noqa: F401  (importing it sets its loggers' levels: first, then ours)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)  # its retry lines
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def prepare_local_store(path: Path) -> None:
    """Make sure an MLflow SQLite store at ``path`` exists and is whole.

    A new store is created and migrated to MLflow's schema once, under a file lock, in a
    temporary file that is renamed into place when done: processes starting together wait
    for one of them, and a crash mid-migration leaves no half-migrated store behind. An
    existing store that an interrupted migration left half-done is refused in one line.
    """
    quiet_mlflow()
    with file_lock(path):
        if path.exists() and path.stat().st_size:
            _check_whole(path)
            if needs_rebase(path):
                rebase_artifacts(path)
            return
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            _mlflow.create_sqlite_store(tmp, (path.parent / "mlartifacts").resolve().as_uri())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _check_whole(path: Path) -> None:
    import sqlite3

    try:
        left = _mlflow.interrupted_migrations(path)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as err:
        problem = str(err)
    if problem != "ok":
        raise UsageError(f"MLflow store {path} is not a readable SQLite database ({problem}; "
                         f"{path.stat().st_size} bytes); back it up and restore it, or move it "
                         "aside to start a new store") from None
    version = _mlflow.schema_version(path)
    if left:
        raise UsageError(
            f"MLflow store {path} is half-migrated: a schema migration was interrupted and left "
            f"table {left[0]}. Recover: back the file up, then run "
            f"`sqlite3 {path} 'DROP TABLE {left[0]}'` and `mlflow db upgrade sqlite:///{path}`; "
            "or move the file aside to start a new store")
    latest = _mlflow.latest_schema()
    if version is not None and latest is not None and version != latest:
        raise UsageError(
            f"MLflow store {path} has schema {version}, not {latest} that this MLflow writes: a "
            "migration was interrupted, or another MLflow version made it. Recover: back the "
            f"file up, then run `mlflow db upgrade sqlite:///{path}`; or move it aside")


def check_credentials(uri: str) -> None:
    """One authenticated call (search experiments) through MLflow's own client, which sends
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN): a server
    started with ``--app-name basic-auth`` answers 401 or 403 here, before any training.
    ``/health`` needs no credentials, so it cannot tell."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as err:
        status = err.get_http_status_code()
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user {user!r}" if user else "no user (MLFLOW_TRACKING_USERNAME is not set)"
        if status == 401:
            raise UsageError(f"MLflow tracking server {mask_url(uri)} refused the credentials "
                             f"of {who} (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD") from None
        if status == 403:
            raise UsageError(f"MLflow tracking server {mask_url(uri)}: {who} may not read "
                             "experiments (HTTP 403); ask its admin for access") from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UsageError(f"MLflow tracking server {mask_url(uri)} failed: {first}") from None


class Tracker:
    """Logs a study's runs to one MLflow tracking URI."""

    def __init__(self, uri: str, artifact_root: Path | None = None) -> None:
        from mlflow import MlflowClient

        quiet_mlflow()

        self.uri = driver_url(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.artifact_root = artifact_root

    # ------------------------------------------------------------------ study level
    def experiment(self, study_name: str) -> str:
        """Id of the study's experiment, created if missing, tagged as model development."""
        found = self.client.get_experiment_by_name(study_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            self._tag_kind(found)
            return found.experiment_id
        location = None
        if self.artifact_root is not None and not self.uri.startswith(("http:", "https:")):
            root = self.artifact_root.resolve()
            folder = (root / check_name(study_name)).resolve()
            if folder.parent != root:  # never outside the output folder
                raise UsageError(f"invalid study name {study_name!r} for an artifact folder")
            location = folder.as_uri()
        try:
            return self.client.create_experiment(study_name, artifact_location=location,
                                                 tags=dict([EXPERIMENT_KIND]))
        except Exception:  # another worker created it first
            if self.client.get_experiment_by_name(study_name) is None:
                raise
            return self.experiment(study_name)

    def tag_experiment(self, experiment_id: str) -> None:
        """Tag an existing experiment as model development (studies made before the tag)."""
        self._tag_kind(self.client.get_experiment(experiment_id))

    def _tag_kind(self, experiment: Any) -> None:
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            self.client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)

    def start_parent(self, experiment_id: str, study_name: str, spec: dict[str, Any]) -> str:
        run = self.client.create_run(
            experiment_id, run_name=study_name,
            tags={keys.TAG_ROLE: "study", keys.TAG_FINGERPRINT: spec.get("fp", "")},
        )
        params = {"vary": ",".join(spec["vary"]) or "-", "seeds": spec["seeds"],
                  "metric": spec["metric"], "design": spec.get("design", "full")}
        params.update({f"set.{k}": v for k, v in spec["set"].items()})
        params.update({f"levels.{k}": ",".join(v)[:500] for k, v in spec["levels"].items()})
        self.log_params(run.info.run_id, params)
        if spec.get("question"):
            self.client.set_tag(run.info.run_id, keys.TAG_NOTE, spec["question"])
        return run.info.run_id

    def log_summary(
        self, parent_id: str, markdown: str, csv: str, figures: list[Path] = ()
    ) -> None:
        self.client.log_text(parent_id, markdown, "summary/summary.md")
        self.client.log_text(parent_id, csv, "summary/summary.csv")
        for path in figures:
            self.client.log_artifact(parent_id, str(path), "summary")

    def log_report(self, parent_id: str, files: list[Path], table: dict[str, list[Any]],
                   folder: str = "report") -> None:
        """The report's files under ``folder/`` (a folder keeps its name) and the verdict
        table as an MLflow table artifact, ``folder/verdicts.json``."""
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(parent_id, str(path), f"{folder}/{path.name}")
            else:
                self.client.log_artifact(parent_id, str(path), folder)
        self.log_table(parent_id, table, f"{folder}/verdicts.json")

    def log_table(self, run_id: str, table: dict[str, list[Any]], path: str) -> None:
        """A table artifact that ``MlflowClient.load_table`` reads and the MLflow UI shows,
        replacing an earlier one at ``path`` (``MlflowClient.log_table`` would append its
        rows to it: a resumed study would list every cell twice). Same file format (pandas
        ``orient="split"`` JSON) and the same run tag as ``log_table``."""
        import tempfile

        import pandas as pd

        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            pd.DataFrame(table).to_json(local, orient="split", index=False)
            self.client.log_artifact(run_id, str(local), folder or None)
        _mlflow.list_table(self.client, run_id, path)

    def finish_parent(self, parent_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(parent_id, status=status)

    # ------------------------------------------------------------------ trial level
    def start_trial(
        self, experiment_id: str, parent_id: str, *, cell: str, seed: int, trial_number: int,
        params: dict[str, Any], tags: dict[str, str] | None = None,
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"{cell or 'single'} seed={seed}",
            tags={PARENT_TAG: parent_id, keys.TAG_CELL: cell, keys.TAG_SEED: str(seed),
                  keys.TAG_TRIAL_NUMBER: str(trial_number), keys.TAG_ROLE: "trial",
                  **(tags or {})},
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, mask_url(str(v))) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100], synchronous=True)

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self.client.log_batch(run_id, metrics=items, synchronous=True)

    def log_json(self, run_id: str, data: Any, path: str) -> None:
        self.client.log_text(run_id, json.dumps(data, indent=1, default=str), path)

    def log_figure(self, run_id: str, figure: Any, path: str, dpi: int = 80) -> None:
        """Log a matplotlib figure as PNG. It runs once per trial: a modest dpi, and zlib's
        fastest level (a slightly larger file, encoded in a fraction of the time)."""
        self.client.log_figure(run_id, figure, path,
                               save_kwargs={"dpi": dpi, "pil_kwargs": {"compress_level": 1}})

    def log_torch(self, run_id: str, obj: Any, path: str) -> None:
        """Save a torch object (e.g. a state dict) as an artifact."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            buf = io.BytesIO()
            torch.save(obj, buf)
            local.write_bytes(buf.getvalue())
            self.client.log_artifact(run_id, str(local), str(Path(path).parent) or None)

    def has_run(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def running_trial_runs(self, experiment_id: str) -> list[Any]:
        """The experiment's trial runs that MLflow still shows as RUNNING."""
        return self.client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.`{keys.TAG_ROLE}` = 'trial'",
            max_results=10000)

    def end_trial(self, run_id: str, status: str, reason: str | None = None) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's run statuses)."""
        if reason:
            self.client.set_tag(run_id, keys.TAG_STATUS_REASON, mask_url(reason)[:5000])
        self.client.set_terminated(run_id, status=status)
