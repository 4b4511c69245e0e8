"""The names under which a study is stored: Optuna user attributes and MLflow tags.

Every module reads and writes stored attributes through these constants, so a key is
spelled once (a test greps the rest of the package for the bare strings).
"""

from __future__ import annotations

import re

# --- the Optuna study's user attributes
SPEC = "spec"  # StudySpec.to_dict(): vary, levels, set, seeds, design, margin, schedule
FINGERPRINT = "fingerprint"  # StudySpec.fingerprint(): the grid, not the seed count
RECIPE = "recipe"  # {cell id: every factor of that cell's TrialConfig}, fixed at creation
TOOL_VERSION = "gct_ablate_version"  # the version that stored the recipe
REFERENCE_CELL = "reference_cell"
DIRECTION_MAXIMIZE = "direction_maximize"
EXPERIMENT_ID = "mlflow_experiment_id"
PARENT_RUN_ID = "mlflow_parent_run_id"
TRACKING_URI = "tracking_uri"
QUEUED = "grid_queued"  # set once the grid is in the queue: workers may start pulling

# --- each trial's user attributes
CELL = "cell"  # cell id, e.g. 'p=2 activation=tanh'
SEED = "seed"
HOST = "host"  # the worker that runs it: host, pid, 'pid:start-time'
PID = "pid"
PROC = "proc"
DEVICE = "device"
RUN_ID = "mlflow_run_id"
METRICS = "metrics"  # the final metrics of train_eval
STATUS_REASON = "status_reason"  # why it failed or was pruned
RETRY_OF = "retry_of"  # the number of the failed trial it redoes
RETRY_REASON = "retry_reason"
RESUMED_FROM = "resumed_from_epoch"  # the epoch a re-queued trial resumed after

# --- MLflow tags of the study's runs (MLflow's own: mlflow.parentRunId, ...)
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TAG_ROLE = "gct_ablate.role"  # study (the parent run) or trial
TAG_FINGERPRINT = "gct_ablate.fingerprint"
TAG_CELL = "cell"
TAG_SEED = "seed"
TAG_TRIAL_NUMBER = "optuna_trial_number"
TAG_DEVICE = "device"
TAG_STATUS_REASON = "status_reason"
TAG_RESUMED_FROM = "resumed_from_epoch"

RUN_ID_PATTERN = re.compile(r"[0-9a-fA-F]{32}")  # a run id: 32 hex digits (MLflow: lower case)


def looks_like_run_id(text: str) -> bool:
    return RUN_ID_PATTERN.fullmatch(text) is not None
