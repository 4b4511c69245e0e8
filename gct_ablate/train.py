"""One training run: ``train_eval(config, report) -> metrics``.

Knows nothing of Optuna or MLflow: per-epoch values go to ``report(epoch, metrics)``
(which may raise to stop the run, e.g. for pruning), the final metrics are returned.
Fine-tuning runs (``training`` other than scratch) start from ``init_from`` and train in
stages: :mod:`gct_ablate.finetune`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gct_ablate import finetune
from gct_ablate._util import raise_pending
from gct_ablate.data import Data
from gct_ablate.gct import GCT, _kernel
from gct_ablate.models import attention_modules, build_trial, count_parameters
from gct_ablate.resume import TrainingState, rng_state, set_rng_state
from gct_ablate.spec import TrialConfig

Report = Callable[[int, dict[str, float]], None]
OnEnd = Callable[[nn.Module, Data, torch.device], dict[str, Any] | None]
OnStage = Callable[[str, int, dict[str, float]], None]  # (stage, epoch, validation metrics)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA by default, none on CPU unless asked for."""
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[mode]


def param_groups(model: nn.Module, weight_decay: float, beta_decay: bool) -> list[dict]:
    """All parameters decay except GCT's beta (the official recipe) unless beta_decay."""
    no_decay = set()
    if not beta_decay:
        for module in model.modules():
            if isinstance(module, GCT) and isinstance(module.beta, nn.Parameter):
                no_decay.add(id(module.beta))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, steps_per_epoch: int, cfg: TrialConfig, epochs: int | None = None
              ) -> float:
    """Linear warm-up from 0.1 x lr, then cosine to 0 or step decay x0.1 at 50% and 75%,
    over ``epochs`` (default ``cfg.epochs``; a training stage passes its own). A run of at
    most ``warmup_epochs`` warms up over its first fifth only."""
    total = (cfg.epochs if epochs is None else epochs) * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm >= total:  # a run no longer than its warm-up: warm up over its first fifth
        warm = total // 5
    if step < warm:
        return 0.1 + 0.9 * step / warm
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, batch_size: int, autocast: Any = nullcontext
) -> dict[str, float]:
    """Validation loss, top-1 and top-5 accuracy (fractions)."""
    model.eval()
    k = min(5, data.num_classes)
    loss = torch.zeros((), device=data.device)
    top1 = torch.zeros((), device=data.device)
    topk = torch.zeros((), device=data.device)
    for x, y in data.batches("val", max(batch_size, 256), shuffle=False, augment=False):
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum")
        pred = logits.topk(k, dim=1).indices
        hit = pred.eq(y[:, None])
        top1 += hit[:, 0].sum()
        topk += hit.any(dim=1).sum()
    n = data.size("val")
    return {"val_loss": loss.item() / n, "val_top1": top1.item() / n, "val_top5": topk.item() / n}


def gct_implementation(cfg: TrialConfig, device: torch.device) -> str:
    """Which fused GCT implementation a trial runs: the C kernel or torch (and why)."""
    if cfg.attention != "gct":
        return "-"
    if device.type != "cpu" or amp_dtype(cfg, device) is not None:
        return "torch"
    return "C kernel" if _kernel.library() is not None else _kernel.describe()


def train_eval(
    cfg: TrialConfig,
    report: Report | None = None,
    *,
    on_end: OnEnd | None = None,
    on_stage: OnStage | None = None,
    tracking_uri: str | None = None,
    state: TrainingState | None = None,
) -> dict[str, Any]:
    """Train one configuration and return its final metrics.

    ``metrics['status']`` is 'ok', or 'diverged' when the loss became NaN/inf (the run
    stops at that epoch; the metrics are those of the last evaluation).
    ``on_end(model, data, device)`` runs after training; its dict is merged into the result.
    Fine-tuning: ``on_stage(stage, epoch, metrics)`` gets the validation metrics of the loaded
    network ("init", epoch 0) and at the end of each stage, and the result holds them as
    ``val_top1_step0`` (``val_loss_step0``) and, for finetune-staged, ``val_top1_after_gct``.
    ``tracking_uri`` is where an MLflow run id in ``init_from`` is looked up.
    ``cfg.threads`` applies while it runs; the caller's thread count is restored after.
    ``state``: the trial's saved state (:mod:`gct_ablate.resume`): a run resumes after the
    epoch it loaded (``result['resumed_from']``) and saves when it is due; ``report`` is
    called for the epochs after it only.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_eval(cfg, report, on_end, on_stage, tracking_uri, state)
    finally:
        torch.set_num_threads(threads)


def _train_eval(cfg: TrialConfig, report: Report | None, on_end: OnEnd | None,
                on_stage: OnStage | None, tracking_uri: str | None,
                state: TrainingState | None) -> dict[str, Any]:
    start = time.perf_counter()
    stages = finetune.training_stages(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, data = build_trial(cfg, device)
    saved = state.loaded if state is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
    elif cfg.training != "scratch":
        finetune.load_backbone(model, cfg, data.num_classes, tracking_uri)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    total, attn = count_parameters(model)
    n_modules = len(attention_modules(model))
    step_model = torch.compile(model) if cfg.compile else model

    dtype = amp_dtype(cfg, device)

    def autocast() -> Any:
        if dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    steps_per_epoch = data.num_batches("train", cfg.batch_size)
    staged: dict[str, float] = {}
    if cfg.training != "scratch" and saved is None:
        staged = _stage_end(on_stage, "init", 0, evaluate(model, data, cfg.batch_size, autocast))
    generator = data.generator(cfg.seed)
    metrics: dict[str, Any] = {"val_loss": math.nan, "val_top1": 0.0, "val_top5": 0.0}
    status, epochs_done, train_loss = "ok", 0, math.nan
    history: list[dict[str, float]] = []  # each epoch's metrics and its "epoch"
    if saved is not None:
        epochs_done, metrics, staged = saved["epoch"], saved["metrics"], saved["staged"]
        history = list(saved["history"])
        train_loss = saved["train_loss"]
        set_rng_state(generator, saved["rng"])
        scaler.load_state_dict(saved["scaler"])
    first = epochs_done + 1
    for epoch in range(first, cfg.epochs + 1):
        stage = finetune.stage_at(stages, epoch)
        if epoch in (stage.first_epoch, first):  # its trainable parameters, optimizer, schedule
            stage.set_trainable(model)
            optimizer = torch.optim.SGD(
                param_groups(model, cfg.weight_decay, cfg.beta_decay),
                lr=stage.lr, momentum=0.9, nesterov=True,
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step, n=stage.epochs: lr_factor(step, steps_per_epoch, cfg, n)
            )
            if saved is not None and stage.first_epoch < epoch == first:  # mid-stage
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
        stage.train_mode(step_model)
        loss_sum = torch.zeros((), device=device)
        count = 0
        for x, y in data.batches(
            "train", cfg.batch_size, shuffle=True, generator=generator, augment=True
        ):
            raise_pending()  # a Ctrl-C that a finalizer swallowed
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            count += y.numel()
        train_loss = loss_sum.item() / count  # one host sync per epoch
        if not math.isfinite(train_loss):
            status = "diverged"
            break
        metrics = evaluate(model, data, cfg.batch_size, autocast)
        epochs_done = epoch
        epoch_metrics = {"train_loss": train_loss, **metrics, "lr": scheduler.get_last_lr()[0]}
        history.append({**epoch_metrics, "epoch": epoch})
        if report is not None:
            report(epoch, epoch_metrics)
        if cfg.training != "scratch" and epoch == stage.last_epoch:
            staged.update(_stage_end(on_stage, stage.name, epoch, metrics))
        if state is not None and state.due(epoch, cfg.epochs):
            state.save({"epoch": epoch, "metrics": metrics, "staged": staged, "history": history,
                        "train_loss": train_loss, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_state(generator)})
    finetune.train_all(model)
    result: dict[str, Any] = {
        **metrics,
        **staged,
        "train_loss": train_loss,
        "status": status,
        "epochs_done": epochs_done,
        "params_total": total,
        "params_attention": attn,
        "n_attention_modules": n_modules,
        "val_images": data.size("val"),  # the grain of the accuracies (correct / N)
        "device": str(device),
        "gct_impl": gct_implementation(cfg, device),
    }
    if saved is not None:
        result["resumed_from"] = saved["epoch"]
    if on_end is not None and status == "ok":
        result.update(on_end(model, data, device) or {})
    result["seconds"] = time.perf_counter() - start
    return result


def _stage_end(on_stage: OnStage | None, name: str, epoch: int, metrics: dict[str, float]
               ) -> dict[str, float]:
    """Tell ``on_stage``; the metrics a fine-tuning result keeps of this stage."""
    if on_stage is not None:
        on_stage(name, epoch, metrics)
    if name == "init":
        return {"val_top1_step0": metrics["val_top1"], "val_loss_step0": metrics["val_loss"]}
    return {f"val_top1_after_{name}": metrics["val_top1"]} if name == "gct" else {}
