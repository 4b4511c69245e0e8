"""The few places where the tool needs MLflow below its public client, in one module.

A local SQLite store is created through MLflow's SQLAlchemy store (which migrates it), its
schema read from alembic's tables, the schema this MLflow writes from a private helper,
a replaced table artifact listed in the run tag MLflow's UI reads, and the artifact folders
of runs stored as local files read from their artifact URIs. If an MLflow release
changes these, this is the file to change (tests/test_library_contracts.py fails first).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def create_sqlite_store(path: Path, artifact_uri: str) -> None:
    """A new SQLite tracking store at ``path``, migrated to this MLflow's schema."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(f"sqlite:///{path}", artifact_uri).engine.dispose()


def interrupted_migrations(path: Path) -> list[str]:
    """The temporary tables an interrupted alembic migration left (read only)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE "
            "'\\_alembic\\_tmp\\_%' ESCAPE '\\'")]


def schema_version(path: Path) -> str | None:
    """The alembic revision of the SQLite store at ``path`` (None: no version table)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.DatabaseError:
            return None
    return row[0] if row else None


def latest_schema() -> str | None:
    """The schema revision this MLflow writes (None if MLflow no longer says)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:  # a private helper of MLflow: the check is skipped without it
        return None


def list_table(client: Any, run_id: str, path: str) -> None:
    """Name ``path`` as a table artifact in the run tag that ``MlflowClient.load_table``
    and the UI read (what ``MlflowClient.log_table`` does)."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": path, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


def local_artifact_dirs(client: Any, experiment_id: str | None) -> dict[str, Path]:
    """run id -> local artifact folder of the experiment's trial runs whose artifacts are
    local files (one query for all of them, instead of a download per artifact)."""
    from urllib.parse import unquote, urlparse

    from gct_ablate.store.keys import TAG_ROLE

    if not experiment_id:
        return {}
    runs = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'trial'",
                              max_results=50000)
    out = {}
    for run in runs:
        uri = urlparse(run.info.artifact_uri or "")
        if uri.scheme == "file" and Path(unquote(uri.path)).is_dir():
            out[run.info.run_id] = Path(unquote(uri.path))
    return out
