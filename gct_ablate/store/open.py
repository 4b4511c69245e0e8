"""Opening a stored study, and the checks that it is the one a command means.

Every module loads a study through :func:`open_study` (or :func:`find_study`), and checks it
with :func:`verify`. Loading from an opened storage handle is cheap (a fraction of a
millisecond on a journal: the handle keeps the replayed log), so studies are not cached.
"""

from __future__ import annotations

import optuna

from gct_ablate.errors import StudyNotFound, UsageError
from gct_ablate.spec import StudySpec
from gct_ablate.store.records import StoredStudy, stored_study


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def find_study(storage: optuna.storages.BaseStorage, name: str, spec: StudySpec | None = None
               ) -> optuna.Study | None:
    """The stored study ``name``, None if there is none; verified against ``spec`` when
    given (a different grid or a study not made by the tool: one-line UsageError)."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    if spec is not None:
        verify(study, spec)
    return study


def open_study(storage: optuna.storages.BaseStorage, name: str, spec: StudySpec | None = None
               ) -> optuna.Study:
    """Like :func:`find_study`; no such study: one-line StudyNotFound naming those there."""
    study = find_study(storage, name, spec)
    if study is None:
        names = ", ".join(study_names(storage)) or "none"
        raise StudyNotFound(f"no study named {name!r} in this storage; existing: {names}")
    return study


def verify(study: optuna.Study, spec: StudySpec | None = None, *, empty_ok: bool = True
           ) -> StoredStudy:
    """The stored study, after two one-line checks: it was made by gct-ablate (a study of
    that name with no grid was not, unless it is still empty and ``empty_ok``), and it holds
    ``spec``'s grid."""
    stored = stored_study(study)
    if not stored.made_by_tool and (study.trials or not empty_ok):
        raise UsageError(f"study {study.study_name!r} exists and was not made by gct-ablate; "
                         "choose another study name")
    if spec is not None and stored.made_by_tool and stored.fingerprint != spec.fingerprint():
        old = stored.spec or {}
        raise UsageError(
            f"study {spec.study_name!r} exists with a different grid (vary="
            f"{','.join(old.get('vary', ())) or '-'}, set={old.get('set', {})}, design="
            f"{old.get('design', 'full')}); pass --study NEW_NAME to start another")
    return stored
