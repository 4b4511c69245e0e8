"""The GCT ablation grid written by hand, the way a user would without gct-ablate.

p in 1, 2, 3 x activation tanh, sigmoid x 3 seeds (the seed is a grid dimension) of
ResNet-20 with the eager reference GCT before every conv, on scikit-learn's 8x8 digits, with
Optuna's GridSampler, optuna-integration's MLflowCallback (one MLflow run per trial, per-epoch
metrics logged through ``track_in_mlflow``), SQLite for both stores, and the usual
DataLoader + per-sample torchvision transform training loop. One process, torch's default
threads. Hyper-parameters are gct-ablate's defaults (``TrialConfig``): SGD nesterov, lr 0.1,
momentum 0.9, weight decay 5e-4 except on GCT's beta, batch 128, one warm-up epoch from
0.1 x lr then cosine per step, +-1 pixel translation (edge padding).

Benchmark 3 (``python -m benchmarks.study``) times this script against ``gct-ablate run``::

    python benchmarks/handwritten_study.py --epochs 15 --seeds 3 --out /tmp/handwritten
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import mlflow
import optuna
import torch
import torch.nn.functional as F
from optuna_integration.mlflow import MLflowCallback
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from gct_ablate.models import build_model

warnings.filterwarnings("ignore", category=FutureWarning)  # MLflowCallback is deprecated
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

BATCH_SIZE = 128
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
WARMUP_EPOCHS = 1


class TransformedTensorDataset(TensorDataset):
    """TensorDataset with a torchvision transform applied to each image."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform=None) -> None:
        super().__init__(x, y)
        self.transform = transform

    def __getitem__(self, index: int):
        x, y = super().__getitem__(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, y


def load_data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, val_idx = train_test_split(
        list(range(len(y))), test_size=0.2, random_state=0, stratify=digits.target
    )
    train_idx, val_idx = sorted(train_idx), sorted(val_idx)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    augment = transforms.RandomCrop(8, padding=1, padding_mode="edge")
    train = TransformedTensorDataset(x[train_idx], y[train_idx], transform=augment)
    val = TensorDataset(x[val_idx], y[val_idx])
    return train, val


def evaluate(model, loader):
    model.eval()
    loss = top1 = top5 = n = 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            pred = logits.topk(5, dim=1).indices
            top1 += (pred[:, 0] == y).sum().item()
            top5 += (pred == y[:, None]).any(dim=1).sum().item()
            n += len(y)
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}


def make_objective(train_set, val_set, epochs: int, search_space: dict, mlflc: MLflowCallback):
    @mlflc.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        p = trial.suggest_categorical("p", search_space["p"])
        activation = trial.suggest_categorical("activation", search_space["activation"])
        seed = trial.suggest_categorical("seed", search_space["seed"])
        torch.manual_seed(seed)

        model = build_model(
            "resnet20", 10, 1, attention="gct", placement="every-conv",
            attention_options={"p": float(p), "activation": activation, "fused": False},
        )
        decay = [w for name, w in model.named_parameters() if not name.endswith(".beta")]
        no_decay = [w for name, w in model.named_parameters() if name.endswith(".beta")]
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": WEIGHT_DECAY},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=LR, momentum=MOMENTUM, nesterov=True,
        )
        train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True)
        val_loader = DataLoader(val_set, batch_size=256)
        warmup = WARMUP_EPOCHS * len(train_loader)
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, total_iters=warmup),
             torch.optim.lr_scheduler.CosineAnnealingLR(
                 optimizer, T_max=max(1, epochs * len(train_loader) - warmup))],
            milestones=[warmup],
        )

        metrics = {}
        for epoch in range(1, epochs + 1):
            model.train()
            running, seen = 0.0, 0
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                running += loss.item() * len(y)
                seen += len(y)
            metrics = evaluate(model, val_loader)
            mlflow.log_metrics({"train_loss": running / seen, **metrics,
                                "lr": scheduler.get_last_lr()[0]}, step=epoch)
        return metrics["val_top1"]

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("handwritten-runs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    search_space = {"p": [1, 2, 3], "activation": ["tanh", "sigmoid"],
                    "seed": list(range(args.seeds))}
    n_trials = len(search_space["p"]) * len(search_space["activation"]) * args.seeds
    study = optuna.create_study(
        study_name="gct-p-activation",
        storage=f"sqlite:///{args.out.resolve()}/optuna.db",
        sampler=optuna.samplers.GridSampler(search_space, seed=0),
        direction="maximize",
        load_if_exists=True,
    )
    mlflc = MLflowCallback(
        tracking_uri=f"sqlite:///{args.out.resolve()}/mlflow.db", metric_name="val_top1"
    )
    train_set, val_set = load_data()
    objective = make_objective(train_set, val_set, args.epochs, search_space, mlflc)
    study.optimize(objective, n_trials=n_trials, callbacks=[mlflc])

    print(f"best: {study.best_params} val_top1 {study.best_value:.4f}")
    for trial in study.trials:
        print(trial.number, trial.params, trial.value)


if __name__ == "__main__":
    main()
