"""StudySpec and TrialConfig: frozen descriptions of a study and of one training run.

Study files and command-line text become a StudySpec in :mod:`gct_ablate.study_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gct_ablate import designs
from gct_ablate.errors import FactorError, SpecError
from gct_ablate.factors import FACTORS, canonical_level, get_factor, parse_level

METRICS = ("val_top1", "val_top5", "val_loss")
OUTPUT_FORMATS = ("table", "markdown", "csv", "json")  # of a summary


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs. Factor fields hold typed, validated values."""

    attention: str = "gct"
    p: str = "2"
    norm: str = "l2"
    activation: str = "tanh"
    remove: str = "none"
    init: str = "zeros"
    alpha_init: str = "ones"
    after_relu: bool = False
    placement: str = "every-conv"
    model: str = "resnet20"
    dataset: str = "digits"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    beta_decay: bool = False
    schedule: str = "cosine"
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    train_size: int | str = "all"  # a number of images, or "all"
    val_size: int | str = "all"
    image_size: int | str = "auto"  # pixels, or "auto" (the dataset's own)
    training: str = "scratch"  # scratch | finetune-joint | finetune-staged
    init_from: str = "none"  # the backbone fine-tuning starts from
    gct_epochs: int = 1  # finetune-staged: the first gct_epochs train attention alone
    gct_lr: float = 0.1  # finetune-staged: learning rate of that stage
    # --- not factors: the replicate and how/where to run
    seed: int = 0
    data_dir: str | None = None
    download: bool = False
    stream: bool | None = None  # imagefolder: None streams above memory_budget_gb
    memory_budget_gb: float = 2.0
    loader_workers: int | None = None  # streaming DataLoader processes; None: cores, <= 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp16 | none
    channels_last: bool | None = None  # None: on for CUDA
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    compile: bool = False
    recompute: bool = False  # GCT recomputes the gated tensor in backward
    save_model: bool | None = None  # None: save when the model has < 5 M parameters
    checkpoint_every: int | str = "auto"  # epochs between saved states; "auto": by time; 0: never
    checkpoint_dir: str | None = None  # where a study's trial states go (default OUT/checkpoints)
    keep_checkpoints: bool = False  # keep a trial's state after it completes

    def __post_init__(self) -> None:
        for name in FACTORS:
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, parse_level(name, value))
            except FactorError as err:
                raise SpecError(str(err)) from None
        if self.seed < 0:
            raise SpecError(f"invalid seed {self.seed}; must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise SpecError(f"invalid threads {self.threads}; must be >= 1")
        if not self.memory_budget_gb > 0:
            raise SpecError(f"invalid memory_budget_gb {self.memory_budget_gb}; must be > 0")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise SpecError(f"invalid loader_workers {self.loader_workers}; must be >= 0")
        every = self.checkpoint_every
        if isinstance(every, str) and every.strip().isdigit():
            every = int(every)
            object.__setattr__(self, "checkpoint_every", every)
        if every not in ("auto", "none") and (isinstance(every, bool) or not isinstance(every, int)
                                              or every < 0):
            raise SpecError(f"invalid checkpoint_every {every!r}; valid: auto, none, or a "
                            "number of epochs (0: never)")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise SpecError(f"invalid amp {self.amp!r}; valid: auto, bf16, fp16, none")

    def check_training(self) -> None:
        """A SpecError when the fine-tuning settings do not go together (checked before a run,
        not at construction: a study file may leave init_from to the command line)."""
        if self.training == "scratch":
            return
        if self.init_from == "none":
            raise SpecError(f"training={self.training} needs init_from: a backbone trained "
                            "with attention=none (--set init_from=PATH or RUN_ID)")
        if self.training == "finetune-staged":
            if self.attention == "none" or self.placement == "none":
                raise SpecError("training=finetune-staged trains the attention modules alone "
                                "first; this configuration has none")
            if not 1 <= self.gct_epochs <= self.epochs:
                raise SpecError(f"training=finetune-staged needs 1 <= gct_epochs <= epochs "
                                f"(epochs counts both stages); got gct_epochs="
                                f"{self.gct_epochs}, epochs={self.epochs}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrialConfig:
        """A config back from ``dataclasses.asdict`` (keys it does not know are ignored, so
        configs stored by other versions still load)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def factor_levels(self) -> dict[str, str]:
        """Canonical text of every factor (what MLflow params hold)."""
        return {name: FACTORS[name].format(getattr(self, name)) for name in FACTORS}

    def data_options(self) -> dict[str, Any]:
        """Keyword arguments of ``gct_ablate.data.load_dataset`` for this configuration."""
        def number(value: int | str) -> int | None:
            return value if isinstance(value, int) else None

        return dict(data_dir=self.data_dir, download=self.download,
                    train_size=number(self.train_size), val_size=number(self.val_size),
                    image_size=number(self.image_size), stream=self.stream,
                    memory_budget_gb=self.memory_budget_gb, loader_workers=self.loader_workers)

    def attention_options(self) -> dict[str, Any]:
        """Keyword options of ``make_attention`` for this configuration."""
        if self.attention != "gct":
            return {}
        p: Any = self.p if self.p in ("inf", "gap") else float(self.p)
        return dict(
            p=p,
            norm=self.norm,
            activation=self.activation,
            learn_alpha=self.remove not in ("alpha", "alpha+beta"),
            learn_beta=self.remove not in ("beta", "alpha+beta"),
            learn_gamma=self.remove != "gamma-fixed",
            gamma_init=self.init,
            beta_init=self.init,
            alpha_init=self.alpha_init,
            after_relu=self.after_relu,
            recompute=self.recompute,
        )


Cell = tuple[tuple[str, str], ...]  # ((factor, canonical level), ...) in `vary` order


def cell_id(cell: Cell) -> str:
    """Readable, unique id of a grid cell: 'p=2 activation=tanh' ('' when nothing varies)."""
    return " ".join(f"{k}={v}" for k, v in cell)


def parse_cell_id(text: str) -> Cell:
    return tuple(tuple(part.split("=", 1)) for part in text.split())  # type: ignore[misc]


_SAFE_NAME = re.compile(r"[A-Za-z0-9_=][A-Za-z0-9._=-]{0,199}")
NAME_RULE = ("letters, digits and . _ - = only, no leading dot or dash, at most 200 "
             "characters")


def check_name(name: str, what: str = "study name") -> str:
    """``name`` if it is safe as a file or folder name (study names become MLflow artifact
    folders and figure files), else a one-line SpecError naming the allowed form."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise SpecError(f"invalid {what} {str(name)[:80]!r}; use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class StudySpec:
    """A grid over factors, replicated over seeds."""

    vary: tuple[str, ...] = ()
    levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fixed: Mapping[str, str] = field(default_factory=dict)
    seeds: int = 3
    name: str | None = None
    question: str = ""
    metric: str = "val_top1"
    base: TrialConfig = field(default_factory=TrialConfig)  # non-factor run options
    # The smallest difference that matters, in points of the metric (percentage points for
    # accuracies); None: the metric's default (0.5 for accuracies, none for val_loss). Not
    # part of the fingerprint: a study can be re-analysed with another margin.
    margin: float | None = None
    # Adaptive seeds (``run --until-decided``): after ``seeds``, ``seed_batch`` more to the
    # reference and every undecided cell per look, up to ``max_seeds``. None: a fixed design.
    max_seeds: int | None = None
    seed_batch: int | None = None
    design: str = "full"  # which cells run: full, ofat or gsd=R (gct_ablate.designs)

    def __post_init__(self) -> None:
        try:
            vary = tuple(dict.fromkeys(get_factor(n).name for n in self.vary))
            levels = {
                get_factor(k).name: tuple(dict.fromkeys(canonical_level(k, x) for x in v))
                for k, v in self.levels.items()
            }
            fixed = {get_factor(k).name: canonical_level(k, v) for k, v in self.fixed.items()}
        except FactorError as err:
            raise SpecError(str(err)) from None
        for name in levels:
            if name not in vary:
                raise SpecError(f"levels given for {name!r}, which does not vary; add it to vary")
            if not levels[name]:
                raise SpecError(f"no levels for {name!r}")
        for name in vary:
            if name in fixed:
                raise SpecError(f"factor {name!r} cannot both vary and be set to one value")
            levels.setdefault(name, FACTORS[name].levels)
        if self.seeds < 1:
            raise SpecError(f"invalid seeds {self.seeds}; must be >= 1")
        if self.metric not in METRICS:
            raise SpecError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.name is not None and not self.name.strip():
            raise SpecError("study name is empty")
        if self.margin is not None and not (math.isfinite(self.margin) and self.margin > 0):
            raise SpecError(f"invalid margin {self.margin}; must be a positive number "
                            "(points of the metric)")
        if (self.max_seeds is None) != (self.seed_batch is None):
            raise SpecError("adaptive seeds need both max_seeds and seed_batch")
        if self.seed_batch is not None and self.seed_batch < 1:
            raise SpecError(f"invalid seed_batch {self.seed_batch}; must be >= 1")
        if self.max_seeds is not None and self.max_seeds < self.seeds:
            raise SpecError(f"max_seeds {self.max_seeds} is below seeds {self.seeds}")
        if self.name is not None:
            check_name(self.name.strip())
        design = designs.parse_design(self.design)
        object.__setattr__(self, "vary", vary)
        object.__setattr__(self, "levels", {n: levels[n] for n in vary})
        object.__setattr__(self, "fixed", fixed)
        object.__setattr__(self, "design", design)
        self.config(())  # validates the fixed values against TrialConfig
        designs.check_size(design, self.levels)
        object.__setattr__(self, "_cells", designs.design_cells(
            design, self.vary, self.levels, self.reference_cell()))

    @property
    def study_name(self) -> str:
        if self.name:
            return self.name.strip()
        parts = "-".join(self.vary) if self.vary else "single"
        return f"vary-{parts}"

    @property
    def maximize(self) -> bool:
        return self.metric != "val_loss"

    def cells(self) -> list[Cell]:
        """The design's cells in a stable order: the full grid's (first factor varies
        slowest), or for ofat the reference cell first (see :mod:`gct_ablate.designs`)."""
        return list(self._cells)  # type: ignore[attr-defined]

    def reference_cell(self) -> Cell:
        """The cell at the paper's reference levels (else the first level of that factor)."""
        ref = []
        for n in self.vary:
            want = FACTORS[n].reference
            ref.append((n, want if want in self.levels[n] else self.levels[n][0]))
        return tuple(ref)

    def config(self, cell: Cell, seed: int = 0) -> TrialConfig:
        values = {**self.fixed, **dict(cell)}
        typed = {k: parse_level(k, v) for k, v in values.items()}
        return self.base.replace(**typed, seed=seed)

    def trials(self) -> list[tuple[Cell, int]]:
        return [(c, s) for c in self.cells() for s in range(self.seeds)]

    def fingerprint(self) -> str:
        """Hash of the grid (not of the seed count, so a study can grow more seeds)."""
        grid = {"vary": list(self.vary), "levels": {k: list(v) for k, v in self.levels.items()},
                "fixed": dict(sorted(self.fixed.items())), "metric": self.metric}
        if self.design != "full":  # the full grid's fingerprint is the one it always had
            grid["design"] = self.design
        return hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: TrialConfig | None = None) -> StudySpec:
        """The spec back from :meth:`to_dict` (what a stored study keeps)."""
        return cls(vary=tuple(d.get("vary", ())),
                   levels={k: tuple(v) for k, v in d.get("levels", {}).items()},
                   fixed=dict(d.get("set", {})), seeds=int(d.get("seeds", 3)),
                   name=d.get("name"), question=d.get("question", ""),
                   metric=d.get("metric", "val_top1"), base=base or TrialConfig(),
                   margin=None if d.get("margin") is None else float(d["margin"]),
                   max_seeds=d.get("max_seeds"), seed_batch=d.get("seed_batch"),
                   design=d.get("design", "full"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.study_name, "question": self.question, "vary": list(self.vary),
                "levels": {k: list(v) for k, v in self.levels.items()},
                "set": dict(self.fixed), "seeds": self.seeds, "metric": self.metric,
                "margin": self.margin, "design": self.design,
                **({"max_seeds": self.max_seeds, "seed_batch": self.seed_batch}
                   if self.adaptive else {})}

    @property
    def adaptive(self) -> bool:
        """Seeds are added until every cell is decided (``run --until-decided``)."""
        return self.max_seeds is not None

    def with_overrides(
        self,
        *,
        vary: tuple[str, ...] | None = None,
        levels: Mapping[str, tuple[str, ...]] | None = None,
        fixed: Mapping[str, str] | None = None,
        seeds: int | None = None,
        name: str | None = None,
        metric: str | None = None,
        base: TrialConfig | None = None,
        margin: float | None = None,
        max_seeds: int | None = None,
        seed_batch: int | None = None,
        design: str | None = None,
    ) -> StudySpec:
        """The command line over a study file: vary replaces, levels/set merge, rest replace."""
        new_vary = tuple(vary) if vary else self.vary
        new_levels = {k: v for k, v in {**self.levels, **(levels or {})}.items()}
        new_fixed = {**self.fixed, **(fixed or {})}
        vary_names = {get_factor(n).name for n in new_vary} if new_vary else set()
        # A factor set on the command line stops varying; levels of non-varying drop out.
        vary_names -= {get_factor(k).name for k in (fixed or {})}
        new_vary = tuple(n for n in (get_factor(x).name for x in new_vary) if n in vary_names)
        new_levels = {k: v for k, v in new_levels.items() if get_factor(k).name in vary_names
                      and (k in (levels or {}) or get_factor(k).name in self.vary)}
        new_fixed = {k: v for k, v in new_fixed.items() if get_factor(k).name not in vary_names}
        return StudySpec(
            vary=new_vary, levels=new_levels, fixed=new_fixed,
            seeds=self.seeds if seeds is None else seeds,
            name=name or self.name, question=self.question,
            metric=metric or self.metric, base=base or self.base,
            margin=self.margin if margin is None else margin,
            max_seeds=self.max_seeds if max_seeds is None else max_seeds,
            seed_batch=self.seed_batch if seed_batch is None else seed_batch,
            design=design or self.design,
        )
