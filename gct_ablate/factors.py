"""The ablation axes: one registry of names, levels, reference levels and validation.

Every factor turns a raw level (a command-line string or a TOML value) into a typed
value with :func:`parse_level` and back into its canonical text with :func:`format_level`.
The canonical text is what cell ids, Optuna params and MLflow params hold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gct_ablate.errors import FactorError
from gct_ablate.gct._config import ACTIVATIONS, ATTENTION_KINDS, INITS, NORMS
from gct_ablate.gct._config import parse_p as gct_parse_p
from gct_ablate.store.keys import looks_like_run_id


@dataclass(frozen=True)
class Factor:
    """One ablation axis."""

    name: str
    parse: Callable[[Any], Any]
    levels: tuple[str, ...]
    reference: str
    help: str
    group: str = "gct"  # "gct" (module/placement axes) or "training" (knobs)
    choices: tuple[str, ...] | None = None  # closed set of allowed levels, if any

    def format(self, value: Any) -> str:
        return format_value(value)


def format_value(value: Any) -> str:
    """Canonical text of a typed level: 2.0 -> '2', inf -> 'inf', True -> 'true'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:g}" if value == int(value) and abs(value) < 1e15 else repr(value)
    return str(value)


# ----------------------------------------------------------------------------- parsers
def _text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return format_value(raw).strip().lower() if isinstance(raw, float) else str(raw).strip()


def _choice(name: str, allowed: Iterable[str]) -> Callable[[Any], str]:
    allowed = tuple(allowed)

    def parse(raw: Any) -> str:
        text = _text(raw).lower()
        if text not in allowed:
            raise FactorError(f"unknown level {text!r} for {name}; valid: {', '.join(allowed)}")
        return text

    return parse


def parse_p(raw: Any) -> str:
    """Canonical text of the embedding norm's p (validated by :func:`gct_ablate.gct.parse_p`)."""
    try:
        return format_value(gct_parse_p(_text(raw).lower()))
    except ValueError as err:
        raise FactorError(str(err)) from None


def _number(name: str, kind: type, minimum: float, strict: bool,
            below: float | None = None) -> Callable[[Any], Any]:
    """A number >= ``minimum`` (> when ``strict``) and, given ``below``, < ``below``."""

    def parse(raw: Any) -> Any:
        text = _text(raw)
        try:
            value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            raise FactorError(f"invalid {name} {text!r}; expected {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise FactorError(f"invalid {name} {text!r}; expected a finite number")
        if value < minimum or (strict and value == minimum):
            rel = ">" if strict else ">="
            raise FactorError(f"invalid {name} {text!r}; must be {rel} {format_value(minimum)}")
        if below is not None and value >= below:
            raise FactorError(f"invalid {name} {text!r}; must be in [{format_value(minimum)}, "
                              f"{format_value(below)})")
        return value

    return parse


def _boolean(name: str) -> Callable[[Any], bool]:
    def parse(raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        text = _text(raw).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise FactorError(f"invalid {name} {text!r}; expected true or false")

    return parse


def _size(name: str, word: str) -> Callable[[Any], int | str]:
    """A positive number of images or pixels, or ``word`` ('all', 'auto') for the default."""

    def parse(raw: Any) -> int | str:
        text = word if raw is None else _text(raw).lower()
        if text == word:
            return word
        if not text.isdigit() or int(text) < 1:
            raise FactorError(f"invalid {name} {text!r}; expected a positive integer or {word}")
        return int(text)

    return parse


PLACEMENT_NAMES = ("every-conv", "block", "after-block", "none")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() is also true of '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def parse_placement(raw: Any) -> str:
    """'every-conv', 'block', 'after-block', 'none', 'stages=1+2' (or 1,2), 'every=K'."""
    text = _text(raw).lower().replace(" ", "")
    if text in PLACEMENT_NAMES:
        return text
    key, sep, rest = text.partition("=")
    if sep and key == "stages":
        parts = [s for s in rest.replace(",", "+").split("+") if s]
        if parts and all(_digits(s) and 1 <= int(s) <= 4 for s in parts):
            return "stages=" + "+".join(str(s) for s in sorted({int(s) for s in parts}))
    elif sep and key == "every" and _digits(rest) and int(rest) >= 1:
        return f"every={int(rest)}"
    raise FactorError(
        f"unknown placement {text!r}; valid: {', '.join(PLACEMENT_NAMES)}, "
        "stages=1+2 (stage numbers 1-4), every=K (K >= 1)"
    )


TRAININGS = ("scratch", "finetune-joint", "finetune-staged")


def parse_init_from(raw: Any) -> str:
    """'none', an MLflow run id (32 hex digits), 'torchvision:WEIGHTS' or a file path.

    A path is made absolute here, so the trials of a study find the file whichever folder
    their worker was started in (the canonical text is what the study stores).
    """
    text = _text(raw)
    if text.lower() in ("", "none"):
        return "none"
    if looks_like_run_id(text) and not os.path.exists(text):
        return text.lower()
    if text.lower().startswith("torchvision:"):
        weights = text.split(":", 1)[1].strip().upper()
        if not weights:
            raise FactorError("invalid init_from 'torchvision:'; name the weights, e.g. "
                              "torchvision:IMAGENET1K_V1")
        return f"torchvision:{weights}"
    return os.path.abspath(os.path.expanduser(text))


REMOVALS = ("none", "alpha", "beta", "alpha+beta", "gamma-fixed")
ATTENTIONS = ATTENTION_KINDS
MODELS = ("resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50")
DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder", "fake")
SCHEDULES = ("cosine", "step")


def _f(name, parse, levels, reference, help, group="gct", choices=None) -> Factor:
    return Factor(name, parse, tuple(levels), reference, help, group, choices)


FACTORS: dict[str, Factor] = {
    f.name: f
    for f in (
        _f("attention", _choice("attention", ATTENTIONS), ATTENTIONS, "gct",
           "attention module: gct, se (squeeze-excitation, r=16) or none", choices=ATTENTIONS),
        _f("p", parse_p, ("1", "2", "3", "4", "inf", "gap"), "2",
           "p of the embedding norm (any p >= 1, inf = max|x|, gap = average pooling)"),
        _f("norm", _choice("norm", NORMS), NORMS, "l2",
           "channel normalization: l2 (paper), l1, layer (mean/std across channels), none",
           choices=NORMS),
        _f("activation", _choice("activation", ACTIVATIONS), ACTIVATIONS[:4], "tanh",
           "gate g with g(0)=1: 1+tanh (paper), 2*sigmoid, 1+softsign, 1+hardtanh, 1+erf",
           choices=ACTIVATIONS),
        _f("remove", _choice("remove", REMOVALS), REMOVALS, "none",
           "parameters removed (fixed alpha=1 / beta=0) or gamma kept fixed at its init",
           choices=REMOVALS),
        _f("init", _choice("init", INITS), INITS, "zeros",
           "initialisation of gamma and beta: zeros (paper), ones, normal (std 0.1)",
           choices=INITS),
        _f("alpha_init", _choice("alpha_init", INITS), ("ones", "normal"), "ones",
           "initialisation of alpha: ones (paper), zeros, normal (1 + 0.1 N(0,1))",
           choices=INITS),
        _f("after_relu", _boolean("after_relu"), ("false", "true"), "false",
           "l1 mode only: input known non-negative, so |x| is skipped (paper's after_relu)"),
        _f("placement", parse_placement,
           ("every-conv", "block", "after-block", "stages=3", "every=2", "every=4", "none"),
           "every-conv",
           "where modules go: every-conv (official), block, after-block (SE position), "
           "stages=1+2, every=K, none"),
        _f("model", _choice("model", MODELS), ("resnet20", "resnet56"), "resnet20",
           "backbone: CIFAR ResNet-20/32/56/110 or torchvision ResNet-18/34/50",
           group="training", choices=MODELS),
        _f("dataset", _choice("dataset", DATASETS), ("digits",), "digits",
           "data: digits (bundled with scikit-learn), fashion-mnist (Debian's "
           "dataset-fashion-mnist), mnist, cifar10, cifar100, imagefolder, fake",
           group="training", choices=DATASETS),
        _f("train_size", _size("train_size", "all"), ("500", "1000", "all"), "all",
           "training images: a stratified subset fixed by the split (not the seed), or all",
           group="training"),
        _f("val_size", _size("val_size", "all"), ("all",), "all",
           "validation images: a stratified subset fixed by the split, or all",
           group="training"),
        _f("image_size", _size("image_size", "auto"), ("auto",), "auto",
           "image side in pixels; auto: the dataset's own (imagefolder 64, streamed 224)",
           group="training"),
        _f("epochs", _number("epochs", int, 1, False, 100_001), ("6",), "6",
           "training epochs", group="training"),
        _f("batch_size", _number("batch_size", int, 1, False, 1 << 20), ("64", "128"), "128",
           "mini-batch size", group="training"),
        _f("lr", _number("lr", float, 0.0, True), ("0.05", "0.1", "0.2"), "0.1",
           "peak learning rate of SGD (nesterov momentum 0.9)", group="training"),
        _f("weight_decay", _number("weight_decay", float, 0.0, False), ("0.0005",), "0.0005",
           "weight decay (never on beta unless beta_decay=true)", group="training"),
        _f("beta_decay", _boolean("beta_decay"), ("false", "true"), "false",
           "apply weight decay to beta too (the official recipe says no)", group="training"),
        _f("schedule", _choice("schedule", SCHEDULES), SCHEDULES, "cosine",
           "learning-rate schedule after warm-up: cosine or step (x0.1 at 50% and 75%)",
           group="training", choices=SCHEDULES),
        _f("warmup_epochs", _number("warmup_epochs", int, 0, False, 100_001), ("1",), "1",
           "epochs of linear warm-up from 0.1 x lr (a run of at most that many epochs warms up "
           "over its first fifth)", group="training"),
        _f("training", _choice("training", TRAININGS), TRAININGS, "scratch",
           "scratch (random init), or fine-tuning the init_from backbone with attention added "
           "at identity: finetune-joint (all parameters) or finetune-staged (gct_epochs of "
           "attention alone, then the rest of the epochs jointly)", group="training",
           choices=TRAININGS),
        _f("init_from", parse_init_from, ("none",), "none",
           "fine-tuning's starting weights: a backbone trained with attention=none (a file of "
           "`gct-ablate train --save`, an MLflow run id, a torchvision ResNet state dict file, "
           "or torchvision:WEIGHTS from the local torch hub cache)", group="training"),
        _f("gct_epochs", _number("gct_epochs", int, 0, False, 100_001), ("1",), "1",
           "finetune-staged: epochs (of the total) training the attention modules alone",
           group="training"),
        _f("gct_lr", _number("gct_lr", float, 0.0, True), ("0.1",), "0.1",
           "finetune-staged: peak learning rate of the attention-only stage", group="training"),
        _f("label_smoothing", _number("label_smoothing", float, 0.0, False, 1.0), ("0", "0.1"), "0",
           "label smoothing of the cross-entropy loss", group="training"),
    )
}


def get_factor(name: str) -> Factor:
    """The factor called ``name``, or a one-line error listing the valid names."""
    key = name.strip().lower().replace("-", "_")
    if key not in FACTORS:
        raise FactorError(f"unknown factor {name!r}; valid: {', '.join(FACTORS)}")
    return FACTORS[key]


def parse_level(name: str, raw: Any) -> Any:
    """Typed value of one level of factor ``name``."""
    return get_factor(name).parse(raw)


def canonical_level(name: str, raw: Any) -> str:
    """Canonical text of one level (what cell ids and params hold)."""
    return format_value(parse_level(name, raw))


def split_levels(text: str) -> list[str]:
    """Split 'a,b,stages=1,2,c' into levels, keeping 'stages=1,2' together."""
    out: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if _digits(token) and out and out[-1].lower().startswith("stages="):
            out[-1] += "+" + token
        else:
            out.append(token)
    return out


def parse_assignments(text: str, what: str) -> dict[str, list[str]]:
    """Parse 'p=1,2,inf;norm=l2' or 'epochs=30,model=resnet56' into {factor: [raw levels]}.

    A token without '=' continues the previous factor's list, so both
    ``p=1,2,inf`` and ``epochs=30,model=resnet56`` read as expected.
    """
    result: dict[str, list[str]] = {}
    current: str | None = None
    for token in (t.strip() for t in text.replace(";", ",").split(",")):
        if not token:
            continue
        key, sep, value = token.partition("=")
        if sep and key.strip().lower().replace("-", "_") in FACTORS:
            current = get_factor(key).name
            result.setdefault(current, []).append(value.strip())
        elif sep and current == "placement" and key.strip().lower() in ("stages", "every"):
            result[current].append(token)
        elif sep:
            get_factor(key)  # raises: unknown factor
        elif current is None:
            raise FactorError(f"malformed {what} {token!r}; expected NAME=VALUE")
        else:
            result[current].append(token)
    return {k: split_levels(",".join(v)) for k, v in result.items()}
