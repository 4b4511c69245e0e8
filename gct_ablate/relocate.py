"""A results folder that can be moved or copied: its stores addressed relative to it.

A study whose journal and MLflow SQLite store sit in the same folder (the default
``--out``) stores its tracking URI as :data:`IN_FOLDER`, read as "the ``mlflow.db`` beside
the journal": after ``mv A B`` or ``cp -a A B`` the study in B is tracked in B's store.
MLflow keeps absolute artifact locations, so opening a folder's store rebases those that
still name another folder's ``mlartifacts`` onto this folder's (:func:`rebase_artifacts`):
a copy never writes into the original. Stores on a server keep their absolute URIs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from gct_ablate.errors import UsageError
from gct_ablate.masking import strip_password

IN_FOLDER = "folder:mlflow.db"  # the stored tracking URI of a study tracked beside its journal
STORE_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"
_NEEDS_ESCAPE = ("%", "?", "#")


def default_tracking_uri(out_dir: Path) -> str:
    """``sqlite:///OUT/mlflow.db``; a folder name that a database URL would decode (``%41``,
    ``?``, ``#``) is refused in one line: MLflow would make a second folder of that name."""
    path = str((Path(out_dir) / STORE_NAME).resolve())
    if any(c in path for c in _NEEDS_ESCAPE):
        raise UsageError(f"output folder {str(out_dir)!r} has a '%', '?' or '#' in its path, "
                         "which the MLflow SQLite URL would decode or cut; choose a folder "
                         "name without them (or pass --tracking-uri)")
    return f"sqlite:///{path}"


def _journal_folder(storage: Any) -> Path | None:
    from gct_ablate.store import _optuna

    journal = _optuna.journal_path(storage)
    return Path(journal).resolve().parent if journal else None


def stored_form(uri: str, storage: Any) -> str:
    """What a study stores as its tracking URI: :data:`IN_FOLDER` for the store beside its
    journal, else the URI without its password."""
    folder = _journal_folder(storage)
    if folder is not None:
        with contextlib.suppress(UsageError):
            if uri == default_tracking_uri(folder):
                return IN_FOLDER
    return strip_password(uri)


def study_uri(stored: str | None, storage: Any) -> str | None:
    """The tracking URI a study's stored one means here (:data:`IN_FOLDER` resolved against
    the folder of its journal)."""
    if stored != IN_FOLDER:
        return stored
    folder = _journal_folder(storage)
    if folder is None:
        raise UsageError("the study's MLflow store is the one beside its journal, but this "
                         "storage is not a journal file; pass --tracking-uri")
    return default_tracking_uri(folder)


def same_store(a: str, b: str) -> bool:
    return strip_password(a) == strip_password(b)


_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
              ("logged_models", "artifact_location"))


def _old_roots(db: sqlite3.Connection, root: str) -> set[str]:
    """The ``.../mlartifacts`` roots other than ``root`` that experiments point to."""
    found = set()
    for (location,) in db.execute("SELECT artifact_location FROM experiments"):
        if not isinstance(location, str) or not location.startswith("file://"):
            continue
        head, sep, _ = location.partition(f"/{ARTIFACTS}")
        if sep and head + sep != root:
            found.add(head + sep)
    return found


def rebase_artifacts(db_path: Path) -> int:
    """Point the artifact locations of the MLflow SQLite store ``db_path`` that name another
    folder's ``mlartifacts`` (the folder was moved or copied) at the one beside it; the number
    of rows changed. The caller holds the store's file lock."""
    root = (db_path.parent / ARTIFACTS).resolve().as_uri()
    with contextlib.closing(sqlite3.connect(db_path, timeout=60)) as db:
        try:
            old = _old_roots(db, root)
        except sqlite3.DatabaseError:
            return 0  # no experiments table yet: nothing to rebase
        changed = 0
        for prefix in old:
            for table, column in _LOCATIONS:
                with contextlib.suppress(sqlite3.OperationalError):  # no such table
                    cur = db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (root, len(prefix) + 1, len(prefix), prefix))
                    changed += cur.rowcount
        db.commit()
    return changed


def needs_rebase(db_path: Path) -> bool:
    root = (db_path.parent / ARTIFACTS).resolve().as_uri()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
            return bool(_old_roots(db, root))
    except sqlite3.DatabaseError:
        return False
