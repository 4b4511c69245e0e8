"""Designs: which cells of the grid a study runs.

- ``full``: every combination of the varied factors' levels (the crossing).
- ``ofat``: one factor at a time, the classical one-table ablation: the reference cell,
  then every other level of every varied factor with the rest at their reference.
- ``gsd=R``: a generalized subset design (pyDOE's ``gsd``, Surowiec et al. 2017), a
  screening fraction of about 1/R of the full grid for many mixed-level factors; it is
  balanced for main effects only.

A design is text in its canonical form ('full', 'ofat', 'gsd=4'): what ``--design``, a
study file's ``design`` key and a stored spec hold. No heavy imports (pyDOE loads when a
screening design is built).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gct_ablate.errors import SpecError

Cell = tuple[tuple[str, str], ...]  # as in gct_ablate.spec: ((factor, level), ...)

DESIGNS = ("full", "ofat", "gsd=R")
MAX_CELLS = 100_000  # the most cells a study may have (enqueueing alone would take hours)
_MAX_GSD_WORK = 1_000_000  # R ** K: the rows of the orthogonal arrays pyDOE builds

_WHAT = {
    "full": ("full factorial: every combination of the varied factors",
             "estimates main effects and interactions"),
    "ofat": ("one factor at a time: each change against the reference",
             "cannot estimate interactions (each change is seen at the reference only)"),
    "gsd": ("generalized subset design (screening, about 1/{r} of the full grid)",
            "main effects only; cannot estimate interactions"),
}


def parse_design(raw: Any) -> str:
    """Canonical text of a design: 'full', 'ofat' or 'gsd=R' (R >= 2); else a SpecError."""
    text = str(raw).strip().lower().replace(" ", "") if raw is not None else "full"
    if text in ("full", "ofat"):
        return text
    key, sep, rest = text.partition("=")
    if key == "gsd" and sep and rest.isascii() and rest.isdigit() and int(rest) >= 2:
        return f"gsd={int(rest)}"
    raise SpecError(f"unknown design {str(raw)[:80]!r}; valid: full, ofat, gsd=R "
                    "(a screening fraction of about 1/R of the grid, R >= 2)")


def reduction(design: str) -> int | None:
    """R of 'gsd=R', else None."""
    return int(design.split("=", 1)[1]) if design.startswith("gsd=") else None


def full_size(levels: Mapping[str, Sequence[str]]) -> int:
    return math.prod(len(v) for v in levels.values())


def ofat_size(levels: Mapping[str, Sequence[str]]) -> int:
    return 1 + sum(len(v) - 1 for v in levels.values())


def check_size(design: str, levels: Mapping[str, Sequence[str]]) -> None:
    """Refuse, before building them, designs too large to run or to build."""
    n = ofat_size(levels) if design == "ofat" else full_size(levels)
    r = reduction(design)
    if r is not None:
        n //= r
        work = r ** len(levels)
        if work > _MAX_GSD_WORK:
            raise SpecError(f"design {design} over {len(levels)} factors is too large to build "
                            f"({r}^{len(levels)} rows); use a smaller reduction or fewer "
                            "factors")
    if n > MAX_CELLS:
        hint = "" if design == "ofat" else f"; --design ofat has {ofat_size(levels):,} cells"
        about = "about " if r is not None else ""
        raise SpecError(f"design {design} has {about}{n:,} cells, more than {MAX_CELLS:,}; "
                        f"vary fewer factors or levels{hint}")


def design_cells(design: str, vary: Sequence[str], levels: Mapping[str, Sequence[str]],
                 reference: Cell) -> list[Cell]:
    """The cells of ``design`` in a stable order: the full grid's (first factor slowest), and
    for ofat the reference first, then each factor's other levels in the order given."""
    axes = [[(n, lv) for lv in levels[n]] for n in vary]
    if design == "full":
        return [tuple(c) for c in itertools.product(*axes)]
    if design == "ofat":
        cells = [reference]
        for i, name in enumerate(vary):
            for lv in levels[name]:
                if lv != reference[i][1]:
                    cells.append(reference[:i] + ((name, lv),) + reference[i + 1:])
        return cells
    return _gsd_cells(design, vary, levels, reference)


def _gsd_cells(design: str, vary: Sequence[str], levels: Mapping[str, Sequence[str]],
               reference: Cell) -> list[Cell]:
    """pyDOE's generalized subset design, its level 0 mapped to the reference level (pyDOE's
    design always holds the all-zero row, so the reference cell is in it)."""
    import pydoe

    r = reduction(design)
    assert r is not None
    if len(vary) < 2:
        raise SpecError(f"design {design} needs at least two varied factors")
    ordered = [[ref] + [lv for lv in levels[n] if lv != ref]
               for n, (_, ref) in zip(vary, reference, strict=True)]
    try:
        rows = pydoe.gsd([len(o) for o in ordered], r)
    except ValueError as err:
        raise SpecError(f"design {design} cannot be built for these levels ({err}); use a "
                        "smaller reduction") from None
    position = [{lv: j for j, lv in enumerate(levels[n])} for n in vary]
    chosen = {tuple(ordered[k][int(i)] for k, i in enumerate(row)) for row in rows}
    for k, name in enumerate(vary):
        seen = {c[k] for c in chosen}
        missing = [lv for lv in levels[name] if lv not in seen]
        if missing:
            raise SpecError(f"design {design} leaves out {name}={missing[0]}; use a smaller "
                            "reduction or fewer levels")
    needed = 1 + sum(len(levels[n]) - 1 for n in vary)  # intercept + each main effect
    if _main_effects_rank(chosen, ordered) < needed:
        raise SpecError(f"design {design} over {', '.join(vary)} has {len(chosen)} cells that "
                        f"cannot tell the main effects apart ({needed} independent cells "
                        "needed); use a smaller reduction or --design ofat")
    order = sorted(chosen, key=lambda c: tuple(position[k][lv] for k, lv in enumerate(c)))
    return [tuple(zip(vary, c, strict=True)) for c in order]


def _main_effects_rank(cells: set[tuple[str, ...]], ordered: Sequence[Sequence[str]]) -> int:
    """Rank of the main-effects model matrix (intercept + a dummy per non-reference level)."""
    import numpy as np

    rows = [[1.0] + [float(c[k] == lv) for k, levels in enumerate(ordered) for lv in levels[1:]]
            for c in cells]
    return int(np.linalg.matrix_rank(np.array(rows)))


def describe(design: str) -> tuple[str, str]:
    """(what the design is, what it can and cannot estimate)."""
    r = reduction(design)
    what, limits = _WHAT["gsd" if r is not None else design]
    return what.format(r=r), limits


def summary_line(spec: Mapping[str, Any], markdown: bool = False) -> str:
    """'design: ofat (one factor at a time: ...); cannot estimate interactions' of a stored
    spec (``StudySpec.to_dict()``; a spec from before designs is 'full')."""
    design = str(spec.get("design", "full"))
    label = "**Design:**" if markdown else "design:"
    try:
        what, limits = describe(parse_design(design))
    except SpecError:
        return f"{label} {design}"
    return f"{label} {design} ({what}); {limits}"
