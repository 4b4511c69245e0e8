"""A trial's training state between epochs, saved so that a re-queued trial resumes from it.

One file per cell x seed of a study, ``<dir>/<study>/<cell>-seed<N>.pt`` where ``<dir>`` is
``--checkpoint-dir`` (a folder every node can read, for a study whose workers run on several
machines) or ``OUT/checkpoints``. It holds the model, optimizer, scheduler, GradScaler, every
random generator the trial draws from (the data generator, torch's CPU and CUDA ones), the
epoch, the metrics so far and the MLflow run to continue. It is written to a temporary file,
flushed to disk and renamed into place, so a kill at any moment leaves the previous state
or the new one, never half a file; it is removed when the trial completes or is pruned
(unless ``keep_checkpoints``).

``checkpoint_every``: a number of epochs (0 or "none": never), or "auto": after an epoch
when the time since the last save is at least 50 x what the last save took (the first epoch
always saves, to measure), so saving costs under 2 % of a trial; the last epoch never saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gct_ablate._util import write_atomic
from gct_ablate.spec import TrialConfig

FORMAT = "gct-ablate-trial-state/1"
SAVE_SHARE = 0.02  # "auto": the most of a trial's time that saving may take
# how and where a trial runs, not what it computes: a state saved under other values fits
HOW = ("device", "threads", "loader_workers", "data_dir", "download", "checkpoint_every",
       "checkpoint_dir", "keep_checkpoints", "save_model", "memory_budget_gb")


def state_dir(out: str | Path, cfg: TrialConfig) -> Path:
    """Where the trial states of a run writing to ``out`` go."""
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir).expanduser()
    return Path(out) / "checkpoints"


def state_path(root: str | Path, study: str, cell: str, seed: int) -> Path:
    """``root/study/<cell>-seed<seed>.pt``; the cell's text made file-safe, plus its hash."""
    slug = re.sub(r"[^A-Za-z0-9.=+_-]+", "_", cell or "single")[:80]
    tag = hashlib.sha256(cell.encode()).hexdigest()[:8]
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]+", "_", study) / f"{slug}-{tag}-seed{seed}.pt"


def identity(cfg: TrialConfig) -> str:
    """Hash of what a trial computes (its config less :data:`HOW`)."""
    what = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in HOW}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class TrainingState:
    """The saved state of one trial: :meth:`load` it, :meth:`save` it when :meth:`due`."""

    def __init__(self, path: str | Path, cfg: TrialConfig):
        self.path = Path(path)
        self.every = cfg.checkpoint_every
        self.keep = cfg.keep_checkpoints
        self.identity = identity(cfg)
        self.loaded: dict[str, Any] | None = None  # what load() found
        self.extra: dict[str, Any] = {}  # saved along, e.g. the MLflow run id
        self.saves, self.save_seconds = 0, 0.0
        self._cost: float | None = None
        self._since = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state, if there is one of this configuration (one that cannot be read,
        or of another configuration, is ignored with a line on stderr)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torn or foreign: torch's unpickler raises many kinds
            print(f"gct-ablate: ignoring unreadable trial state {self.path} ({err})"[:300],
                  file=sys.stderr)
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            return None
        if state.get("identity") != self.identity:
            print(f"gct-ablate: ignoring {self.path}: saved by another configuration",
                  file=sys.stderr)
            return None
        self.loaded = state
        self.extra = {k: state[k] for k in ("run_id",) if k in state}
        return state

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether to save after ``epoch`` (of ``last_epoch``)."""
        if epoch >= last_epoch or self.every in (0, "none"):
            return False
        if self.every == "auto":
            return (self._cost is None
                    or time.monotonic() - self._since >= self._cost / SAVE_SHARE)
        return epoch % int(self.every) == 0

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus :attr:`extra`) atomically: temporary file, fsync, rename."""
        start = time.monotonic()
        buf = io.BytesIO()
        torch.save({**state, **self.extra, "format": FORMAT, "identity": self.identity}, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, buf.getvalue())
        self._since = time.monotonic()
        self._cost = self._since - start
        self.saves += 1
        self.save_seconds += self._cost

    def remove(self) -> None:
        """Delete the saved state (the trial is over), unless asked to keep it."""
        if not self.keep:
            self.path.unlink(missing_ok=True)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random generator a trial draws from: the data's, torch's CPU and CUDA ones."""
    state = {"data": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
