"""Opening a stored study, and the checks that it is the one a command means."""

from __future__ import annotations

import optuna

from gct_ablate.errors import UsageError
from gct_ablate.spec import StudySpec
from gct_ablate.store.records import StoredStudy, stored_study


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
