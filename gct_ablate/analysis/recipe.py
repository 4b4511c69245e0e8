"""The recipe of a study as the report states it: data and split, model, training, seeds.

Read from the stored spec alone (the fixed values over :class:`~gct_ablate.spec.TrialConfig`'s
defaults), so a report written long after the run says what was trained.
"""

from __future__ import annotations

from typing import Any

from gct_ablate.errors import SpecError
from gct_ablate.spec import StudySpec, TrialConfig, parse_cell_id
from gct_ablate.stats import Summary

# Per dataset: (what it is, how it is split, is the validation set the test set?)
SPLITS: dict[str, tuple[str, str, str]] = {
    "digits": ("scikit-learn digits: 1797 8x8 grey images, 10 classes",
               "a fixed stratified 80/20 train/validation split (random_state=0), the same "
               "for every trial; pixels normalised by the training mean and sd",
               "no: there is no separate test set; the validation split is held out from "
               "training and only read for the reported number"),
    "cifar10": ("CIFAR-10: 50,000 training and 10,000 test 32x32 images, 10 classes",
                "the official training set; validation = the official test set",
                "yes: the official test set; no choice is made on it (last epoch)"),
    "cifar100": ("CIFAR-100: 50,000 training and 10,000 test 32x32 images, 100 classes",
                 "the official training set; validation = the official test set",
                 "yes: the official test set; no choice is made on it (last epoch)"),
    "imagefolder": ("image folders (--data-dir)",
                    "its val/ folder, else a fixed stratified 80/20 split (random_state=0)",
                    "the val/ folder or split is the only held-out set"),
    "fake": ("torchvision FakeData: random images and labels (smoke tests only)",
             "512 training and 128 validation images", "n/a (random labels)"),
}
TRAINING = ("model", "epochs", "batch_size", "lr", "schedule", "warmup_epochs",
            "weight_decay", "beta_decay", "label_smoothing")
MODULE = ("attention", "placement", "p", "norm", "activation", "remove", "init",
          "alpha_init", "after_relu")


def _config(spec: dict[str, Any], reference: str) -> TrialConfig:
    """The reference cell's configuration (the spec's fixed values over the defaults)."""
    try:
        return StudySpec.from_dict(spec).config(parse_cell_id(reference))
    except SpecError:  # a stored spec this version no longer accepts: its fixed values only
        fixed = {k: v for k, v in spec.get("set", {}).items() if hasattr(TrialConfig, k)}
        try:
            return TrialConfig(**fixed)
        except (SpecError, TypeError):
            return TrialConfig()


def _value(name: str, cfg: TrialConfig, spec: dict[str, Any]) -> str:
    levels = spec.get("levels", {})
    if name in spec.get("vary", []):
        return "varied: " + ", ".join(map(str, levels.get(name, [])))
    return str(cfg.factor_levels().get(name, getattr(cfg, name, "")))


def _seeds(s: Summary) -> str:
    ns = sorted({c.n for c in s.cells if c.n})
    per_cell = (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}") if ns else "0"
    text = (f"{per_cell} complete run(s) per cell (planned {s.spec.get('seeds', '?')}); seed "
            "k fixes the initial weights and the batch order in every cell (a block)")
    if s.schedule:
        text += (f"; adaptive: {s.schedule.get('seeds')} first, +{s.schedule.get('seed_batch')}"
                 f" per look up to {s.schedule.get('max_seeds')}")
    return text


def recipe(summary: Summary) -> list[tuple[str, str]]:
    """(what, value) rows: the question, data and split, model, training, seeds, margin."""
    s = summary
    spec = s.spec
    cfg = _config(spec, s.reference_cell)
    datasets = (spec.get("levels", {}).get("dataset") if "dataset" in spec.get("vary", [])
                else None) or [cfg.dataset]
    rows: list[tuple[str, str]] = []
    if spec.get("question"):
        rows.append(("question", str(spec["question"])))
    rows.append(("varied", ", ".join(f"{n} ({len(spec.get('levels', {}).get(n, []))} levels)"
                                     for n in spec.get("vary", [])) or "nothing (one cell)"))
    rows.append(("reference cell", s.reference_cell or "(single cell)"))
    for name in datasets:
        what, split, is_test = SPLITS.get(str(name), (str(name), "n/a", "n/a"))
        rows += [("dataset", what), ("split", split), ("validation = test set?", is_test)]
    rows.append(("model", _value("model", cfg, spec)))
    rows.append(("GCT module", "; ".join(f"{n} {_value(n, cfg, spec)}" for n in MODULE)))
    rows.append(("training", "; ".join(f"{n} {_value(n, cfg, spec)}" for n in TRAINING[1:])
                 + "; SGD nesterov, momentum 0.9"))
    rows.append(("checkpoint", f"the last epoch ({_value('epochs', cfg, spec)}): no early "
                 "stopping, no best-epoch selection"))
    better = "higher" if s.maximize else "lower"
    rows.append(("metric", f"{s.metric} on the validation set, {better} is better"))
    rows.append(("seeds", _seeds(s)))
    unit = "points" if s.percent else s.metric
    rows.append(("margin", "none: no equivalence test" if s.margin is None else
                 f"±{s.points(s.margin)} {unit}: the smallest difference that matters"))
    rows.append(("tests", f"alpha {s.alpha}; pooled t of metric ~ cell + seed where cells "
                 "share the reference's seeds (else paired t by seed, or Welch; exact tests "
                 "where differences do not vary), Holm over the cells with simultaneous "
                 f"intervals; TOST within the margin; type-II ANOVA "
                 f"{s.anova_formula or '(none)'}"))
    return rows
