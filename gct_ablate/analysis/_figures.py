"""Where analysis figures go: a PNG file beside the stores, and the study's MLflow run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gct_ablate.errors import UsageError


def slug(text: str) -> str:
    """File-name form of a cell id or name: 'p=2 activation=tanh' -> 'p=2_activation=tanh'.

    Only letters, digits and ``=+.-_`` survive and the result never starts with a dot: no
    path separator, no '.' or '..', so it names a file inside the folder it is joined to.
    A long one is cut to 120 characters and a hash of the whole: file names stay far below
    the 255 bytes file systems allow."""
    name = re.sub(r"[^A-Za-z0-9=+.-]+", "_", text).strip("_").lstrip(".-") or "single"
    if len(name) > 120:
        import hashlib

        suffix = Path(name).suffix if len(Path(name).suffix) <= 5 else ""
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        name = f"{name[:120 - len(suffix) - 13]}-{digest}{suffix}"
    return name


def png_path(output: Path | None, out: Path, stem: str, part: str, several: bool) -> Path:
    """Where one figure goes: ``output`` (with ``part`` added when there are several), else
    ``out/STEM-PART.png``."""
    if output is None:
        path = out / slug(f"{stem}-{part}.png")
    elif several:
        path = output.with_name(f"{output.stem}-{slug(part)}{output.suffix or '.png'}")
    else:
        path = output
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create folder {path.parent}: {err.strerror}") from None
    return path


def save_figure(fig: Any, path: Path, client: Any = None, run_id: str | None = None,
                artifact: str = "") -> str:
    """Write the PNG and, given a run, log it there too; says where it went."""
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    where = f"figure: {path}"
    if run_id:
        client.log_figure(run_id, fig, artifact)
        where += f"; logged to MLflow run {run_id} as {artifact}"
    return where
