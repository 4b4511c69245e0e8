"""GCT added to a trained network: the backbone's weights, then staged or joint training.

The paper: when GCT is added to an existing model, first train the GCT parameters alone with
the rest frozen, then train everything jointly. The ``training`` factor:

- ``scratch``: the usual run, from a random init;
- ``finetune-joint``: the ``init_from`` backbone with attention inserted at identity (GCT's
  default init, gamma = beta = 0, makes every module the identity, so the loaded network
  keeps its accuracy at step 0), then ``epochs`` of joint training at ``lr``;
- ``finetune-staged``: the same start, then ``gct_epochs`` with only the attention
  parameters trainable (at ``gct_lr``; every BatchNorm in eval mode, so the backbone is
  exactly the loaded one, running statistics included), then ``epochs - gct_epochs`` joint.

``epochs`` counts every stage, so the three levels of a study get the same training budget
after the init. Each stage has its own optimizer (SGD, nesterov) and the run's schedule
(warm-up, cosine or step) over the stage's epochs.

``init_from`` (see :func:`gct_ablate.factors.parse_init_from`) is a file of
``gct-ablate train --attention none --save PATH`` (PATH.json says what it is), an MLflow run
id whose ``model/state_dict.pt`` exists, a torchvision ResNet state dict file, or
``torchvision:WEIGHTS`` if already in the local torch hub cache (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gct_ablate.errors import SpecError, UsageError
from gct_ablate.models import TORCHVISION_MODELS, attention_modules, backbone_keys
from gct_ablate.spec import StudySpec, TrialConfig, cell_id


# ------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Stage:
    """Epochs ``first_epoch .. first_epoch + epochs - 1`` of a run (1-based)."""

    name: str  # "train" (scratch), "gct" (attention alone) or "joint"
    first_epoch: int
    epochs: int
    lr: float
    attention_only: bool

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.epochs - 1

    def set_trainable(self, model: nn.Module) -> None:
        """requires_grad on the attention parameters only, or on every parameter."""
        attention = {id(p) for site in attention_modules(model) for p in site.module.parameters()}
        for p in model.parameters():
            p.requires_grad_(not self.attention_only or id(p) in attention)

    def train_mode(self, model: nn.Module) -> None:
        """``model.train()``; with a frozen backbone its BatchNorms stay in eval mode."""
        model.train()
        if self.attention_only:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def training_stages(cfg: TrialConfig) -> list[Stage]:
    """The stages of a run, covering its ``epochs`` (see the module doc); a SpecError when
    its fine-tuning settings do not go together."""
    cfg.check_training()
    if cfg.training != "finetune-staged":
        return [Stage("train" if cfg.training == "scratch" else "joint", 1, cfg.epochs, cfg.lr,
                      False)]
    stages = [Stage("gct", 1, cfg.gct_epochs, cfg.gct_lr, True)]
    if cfg.epochs > cfg.gct_epochs:
        stages.append(Stage("joint", cfg.gct_epochs + 1, cfg.epochs - cfg.gct_epochs, cfg.lr,
                            False))
    return stages


def stage_at(stages: Iterable[Stage], epoch: int) -> Stage:
    return next(s for s in stages if s.first_epoch <= epoch <= s.last_epoch)


def train_all(model: nn.Module) -> None:
    """Every parameter trainable again (after a run that ended in an attention-only stage)."""
    for p in model.parameters():
        p.requires_grad_(True)


# ------------------------------------------------------------------- the init weights
@dataclass
class InitSource:
    """A plain backbone's state dict, what trained it (when known) and where it came from."""

    state: dict[str, Tensor]
    cfg: TrialConfig | None
    label: str


def _torchvision_source(weights: str, cfg: TrialConfig) -> InitSource:
    import torchvision

    if cfg.model not in TORCHVISION_MODELS:
        raise UsageError(f"init_from torchvision:{weights} needs a torchvision model "
                         f"({', '.join(TORCHVISION_MODELS)}); this run is {cfg.model}")
    enum = torchvision.models.get_model_weights(cfg.model)
    try:
        found = enum[weights]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise UsageError(f"unknown torchvision weights {weights!r} for {cfg.model}; valid: "
                         f"{names}") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(found.url).name
    if not file.is_file():
        raise UsageError(f"torchvision:{weights} ({found}) is not in the local torch hub cache: "
                         f"looked for {file}; gct-ablate downloads nothing (pass a state dict "
                         "file instead)")
    from gct_ablate.checkpoint import load_tensors

    state = load_tensors(file)
    return InitSource(state, None, f"torchvision:{weights} ({file})")


def _run_source(run_id: str, tracking_uri: str | None) -> InitSource:
    from gct_ablate._util import DEFAULT_OUT, mask_url
    from gct_ablate.artifacts import RunStore
    from gct_ablate.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(DEFAULT_OUT, tracking_uri)
    with RunStore(uri) as store:
        raw = store.json(run_id, "config.json")
        weights = store.download(run_id, "model/state_dict.pt")
        if weights is None:
            raise UsageError(f"MLflow run {run_id} in {mask_url(uri)} has no "
                             "model/state_dict.pt (trained with save_model off?)")
        from gct_ablate.checkpoint import load_tensors

        state = load_tensors(weights, f"MLflow run {run_id}: model/state_dict.pt")
    if not isinstance(state, dict):
        raise UsageError(f"MLflow run {run_id}: model/state_dict.pt is not a state dict")
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    return InitSource(state, TrialConfig.from_dict(raw) if raw else None,
                      f"MLflow run {run_id}")


def init_source(source: str, cfg: TrialConfig, tracking_uri: str | None = None) -> InitSource:
    """The weights ``init_from`` names (a file, an MLflow run id, torchvision:WEIGHTS).

    A run id is looked up in ``tracking_uri``, else $MLFLOW_TRACKING_URI, else the default
    output folder's store.
    """
    from gct_ablate.checkpoint import read_state
    from gct_ablate.store.keys import looks_like_run_id

    if source.startswith("torchvision:"):
        return _torchvision_source(source.split(":", 1)[1], cfg)
    if looks_like_run_id(source) and not Path(source).exists():
        return _run_source(source, tracking_uri)
    state, meta = read_state(source)
    saved = TrialConfig.from_dict(meta["config"]) if meta and "config" in meta else None
    return InitSource(state, saved, source)


def _shape(t: Tensor | torch.Size) -> str:
    return "(" + ", ".join(map(str, t.shape if isinstance(t, Tensor) else t)) + ")"


def _more(keys: list[str]) -> str:
    return keys[0] + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def check_fits(src: InitSource, model: nn.Module, cfg: TrialConfig, num_classes: int) -> None:
    """A one-line UsageError naming the mismatch when ``src`` is not ``model``'s backbone."""
    here = f"this run is {cfg.model} with {num_classes} classes"
    saved = src.cfg
    if saved is not None:
        if saved.attention != "none" and saved.placement != "none":
            raise UsageError(f"{src.label} was trained with attention={saved.attention}; "
                             "init_from takes a backbone trained with attention=none")
        if saved.model != cfg.model:
            raise UsageError(f"{src.label} is a {saved.model}; {here}")
    if any(".attn." in k for k in src.state):
        raise UsageError(f"{src.label} holds attention modules; init_from takes a backbone "
                         "trained with attention=none")
    expected = {plain: model.state_dict()[key].shape for key, plain in
                backbone_keys(model).items()}
    missing = [k for k in expected if k not in src.state]
    unexpected = [k for k in src.state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_more(missing)}"] if missing else []) + (
            [f"unexpected {_more(unexpected)}"] if unexpected else [])
        raise UsageError(f"{src.label} does not fit {cfg.model}: {'; '.join(parts)}")
    for key, shape in expected.items():
        if src.state[key].shape != shape:
            if key.startswith("fc."):
                raise UsageError(f"{src.label} has {src.state[key].shape[0]} classes; {here}")
            raise UsageError(f"{src.label} does not fit {cfg.model}: {key} is "
                             f"{_shape(src.state[key])} there, {_shape(shape)} here (other "
                             "input channels or stem?)")


def load_backbone(model: nn.Module, cfg: TrialConfig, num_classes: int,
                  tracking_uri: str | None = None) -> str:
    """Load ``cfg.init_from`` into ``model``'s backbone (attention modules keep their init);
    returns where the weights came from."""
    src = init_source(cfg.init_from, cfg, tracking_uri)
    check_fits(src, model, cfg, num_classes)
    mapping = backbone_keys(model)
    result = model.load_state_dict({key: src.state[plain] for key, plain in mapping.items()},
                                   strict=False)
    assert set(result.missing_keys) == set(model.state_dict()) - set(mapping), result
    return src.label


def check_init(spec: StudySpec, tracking_uri: str | None = None) -> None:
    """Fail before any training when a cell's configuration is invalid (e.g. fine-tuning
    without init_from) or its init_from does not fit its backbone (each distinct model, data
    and init_from loaded once)."""
    from gct_ablate.data import load_dataset
    from gct_ablate.models import model_for

    seen: set[tuple[Any, ...]] = set()
    for cell in spec.cells():
        try:
            cfg = spec.config(cell)
            cfg.check_training()
        except SpecError as err:  # e.g. a fine-tuning cell without init_from
            raise SpecError(f"cell {cell_id(cell)}: {err}") from None
        key = (cfg.model, cfg.dataset, cfg.init_from, cfg.attention, cfg.placement)
        if cfg.training == "scratch" or key in seen:
            continue
        seen.add(key)
        data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=cfg.download)
        model = model_for(cfg, data.num_classes, data.in_channels, data.image_size <= 64)
        check_fits(init_source(cfg.init_from, cfg, tracking_uri), model, cfg, data.num_classes)


def parse_stages(text: str) -> tuple[int, int]:
    """'gct:E1,joint:E2' (either part may be left out) -> (E1, E2), gct first."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    found: dict[str, int] = {}
    for part in parts:
        name, sep, n = part.partition(":")
        if not sep or name not in ("gct", "joint") or not n.strip().isdigit() or name in found:
            raise UsageError(f"invalid --stages {text!r}; expected gct:E1,joint:E2 (epochs)")
        found[name] = int(n)
    if list(found) == ["joint", "gct"]:
        raise UsageError(f"invalid --stages {text!r}: the gct stage comes first")
    if sum(found.values()) < 1:
        raise UsageError(f"invalid --stages {text!r}: no epochs to train")
    return found.get("gct", 0), found.get("joint", 0)
