"""Trained networks on disk: the state dict at PATH, what it is at PATH.json.

PATH is a plain ``torch.save(model.state_dict())``: ``torch.load(PATH, weights_only=True)``
reads it anywhere, as it reads a torchvision checkpoint. PATH.json says how to rebuild the
module it fits: the :class:`TrialConfig`, the data's geometry (classes, input channels,
small-input stem), the attention modules taken out (a pruned export, see
:func:`gct_ablate.models.unwrap`), the SHA-256 of PATH and any metrics. :func:`load_model`
rebuilds the module from PATH.json and loads PATH strictly, so the network comes back
exactly; no pickled code is involved.

Both files are written to temporary names and renamed into place, so a reader never sees
half a file; the hash catches a PATH and a PATH.json left by two different saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gct_ablate._util import write_atomic
from gct_ablate.errors import UsageError
from gct_ablate.spec import TrialConfig

FORMAT = "gct-ablate-model/1"


def config_path(path: str | Path) -> Path:
    """PATH.json, beside PATH (``m.pt`` -> ``m.pt.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_model(path: str | Path, model: nn.Module, cfg: TrialConfig, data: Any, *,
               removed: Iterable[str] = (), info: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` and its description to PATH.json (returned).

    ``data`` (a :class:`~gct_ablate.data.Dataset`) gives the geometry; ``removed`` names the
    attention modules taken out of the network (:func:`gct_ablate.models.unwrap`).
    """
    import io

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        weights = buf.getvalue()
        meta = {
            "format": FORMAT, "config": dataclasses.asdict(cfg),
            "num_classes": data.num_classes, "in_channels": data.in_channels,
            "small_input": data.image_size <= 64, "removed": list(removed),
            "sha256": hashlib.sha256(weights).hexdigest(), **(info or {}),
        }
        write_atomic(path, weights)
        write_atomic(config_path(path), json.dumps(meta, indent=1, default=str).encode())
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    return config_path(path)


def load_tensors(path: str | Path, what: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)``; a file that is not one (text, a truncated
    file: the unpickler fails in many ways) is one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, IndexError, EOFError, RuntimeError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UsageError(f"{what or path}: not a torch state dict ({type(err).__name__}: "
                         f"{first})") from None


def read_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state dict, PATH.json's content or None when there is none) of a saved file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
        state = load_tensors(path)
    except OSError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UsageError(f"{path}: not a torch state dict ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # {"state_dict": ...}, as many training scripts save
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"{path}: not a state dict (a dict of tensors)")
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    meta = None
    described = config_path(path)
    if described.is_file():
        try:
            meta = json.loads(described.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"{described}: unreadable ({err})") from None
        if meta.get("sha256") != hashlib.sha256(raw).hexdigest():
            raise UsageError(f"{described} does not describe {path} (their hashes differ: "
                             "written by two different saves?)")
    return state, meta


@dataclass
class SavedModel:
    """A network read back by :func:`load_model`, with its config and PATH.json."""

    model: nn.Module
    cfg: TrialConfig
    info: dict[str, Any]


def load_model(path: str | Path, device: torch.device | str = "cpu") -> SavedModel:
    """Rebuild the network saved at ``path`` (by ``--save`` or ``prune --export``), in eval
    mode on ``device``. Needs PATH.json beside it."""
    from gct_ablate.models import model_for, unwrap

    state, meta = read_state(path)
    if meta is None or meta.get("format") != FORMAT:
        raise UsageError(f"{path}: no {config_path(path).name} of gct-ablate beside it (a bare "
                         "state dict: load it into your own module)")
    cfg = TrialConfig.from_dict(meta["config"])
    model = model_for(cfg, meta["num_classes"], meta["in_channels"], meta["small_input"])
    unwrap(model, meta.get("removed", []))
    model.load_state_dict(state, strict=True)
    return SavedModel(model.to(device).eval(), cfg, meta)
