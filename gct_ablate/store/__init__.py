"""What a study stores in Optuna and MLflow, and the only code that knows how.

- :mod:`.keys`: every attribute key and MLflow tag name, spelled once.
- :mod:`.records`: ``StoredStudy`` and ``StoredTrial``, typed reads of a study and its trials.
- :mod:`.write`: the writes (the study's grid, recipe and MLflow places; a trial's labels).
- :mod:`.recipe`: every cell's full TrialConfig, kept at creation and trained on resume.
- :mod:`.open`: ``open_study`` (the one place a study is loaded) and ``verify``, the checks
  that a stored study is the one a command means.
- :mod:`._optuna`, :mod:`._mlflow`: the calls below the libraries' public APIs.
- :mod:`.journal`: journal files that heal a torn last record or refuse damage in one line.
"""
