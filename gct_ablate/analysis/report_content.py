"""What a study's report holds (:class:`Report`) and where its files went (:class:`ReportPaths`).

Built by :mod:`gct_ablate.analysis.report`, rendered by :mod:`gct_ablate.analysis.report_text`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gct_ablate.stats import Summary

DPI = 110


@dataclass(frozen=True)
class ReportFigure:
    """One embedded picture: its file stem, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    """What the report shows: the summary, the recipe, the figures, what is missing."""

    summary: Summary
    recipe: list[tuple[str, str]]
    figures: list[ReportFigure]
    trials: int  # trials with a recorded training time
    compute_seconds: float  # their total
    missing: list[str] = field(default_factory=list)  # what could not be shown, and why
    written: str = ""  # UTC time of writing

    def figure(self, name: str) -> ReportFigure | None:
        return next((f for f in self.figures if f.name == name), None)


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    images: Path  # the Markdown's PNG files
    logged_to: str | None = None  # the MLflow run it was logged on

    @property
    def files(self) -> list[Path]:
        return [self.html, self.markdown, self.images]


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
