"""Whole datasets as uint8 arrays in a cache folder that every process of a node maps.

The first process to load a dataset from its files (idx, CIFAR batches) writes its arrays
as ``.npy`` files to ``<cache>/arrays/<name>-<key>/`` (``key``: a hash of the source files'
paths, sizes and modification times) through a temporary folder and a rename; every process
then maps them copy-on-write (``np.load(mmap_mode="c")``), so the workers of a study on one
machine share the page cache's one copy of the images. Without a writable cache folder the
arrays stay in this process's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gct_ablate._util import cache_dir

VERSION = 1
DONE = "complete"  # written last into a folder of arrays: it is whole


def cached_arrays(name: str, sources: list[Path], build: Callable[[], dict[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """The arrays ``build()`` makes of the files ``sources``, memory-mapped from the cache
    (made there by the first caller)."""
    stamp = [VERSION, *[(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in sources]]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    folder = cache_dir() / "arrays" / f"{name}-{key}"
    arrays = None
    if not (folder / DONE).is_file():
        arrays = build()
        with contextlib.suppress(OSError):
            _write(folder, arrays)
    try:
        names = json.loads((folder / DONE).read_text())
        return {k: np.load(folder / f"{k}.npy", mmap_mode="c") for k in names}
    except (OSError, ValueError):
        return arrays if arrays is not None else build()


def _write(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the folder under a temporary name, then rename it into place (a folder already
    there, written by another process at the same time, is kept)."""
    tmp = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    try:
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(array))
        (tmp / DONE).write_text(json.dumps(sorted(arrays)))
        with contextlib.suppress(OSError):  # another process was first: keep its folder
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) standard deviation of uint8 images ``x`` (N, C, H, W),
    from their histograms: no float copy of the images."""
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.zeros(256, dtype=np.int64)
        for start in range(0, x.shape[0], 4096):  # a few MB at a time
            counts += np.bincount(np.asarray(x[start:start + 4096, c]).ravel(), minlength=256)
        values = np.arange(256, dtype=np.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / max(1, n - 1))
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-6))
    return tuple(means), tuple(stds)
