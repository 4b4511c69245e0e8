"""``load_dataset``: validation of the arguments, where each dataset is found, caching."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch.nn.functional as F

from gct_ablate.data import _sources
from gct_ablate.data._memory import Dataset
from gct_ablate.data._splits import stratified_subset
from gct_ablate.data._stream import (
    DEFAULT_MEMORY_BUDGET_GB,
    StreamDataset,
    default_loader_workers,
)
from gct_ablate.errors import DataError
from gct_ablate.factors import DATASETS

DEFAULT_ROOTS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's package


def default_data_dir() -> Path:
    """``$GCT_ABLATE_DATA`` if set, else ``~/.cache/gct-ablate``."""
    return Path(os.environ.get("GCT_ABLATE_DATA") or "~/.cache/gct-ablate").expanduser()


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    image_size: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    stream: bool | None = None,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    loader_workers: int | None = None,
) -> Dataset | StreamDataset:
    """Load ``name`` on the CPU, cached per process (same arguments, same object): a
    :class:`Dataset`, or a :class:`StreamDataset` for a streamed image folder.

    ``seed`` only picks the random images of ``fake``: real splits and the subsets of
    ``train_size`` / ``val_size`` images (stratified; None: all) are fixed, so every trial
    of a study sees the same images. ``val_fraction`` applies to digits and single-folder
    imagefolder data. ``image_size``: imagefolder's side (default 64 in memory, 224
    streamed); for the others None keeps the native size and a number resizes (bilinear).
    ``stream`` (imagefolder only): True streams, None streams when the in-memory tensors
    would exceed ``memory_budget_gb``; ``loader_workers`` DataLoader processes (default
    :func:`default_loader_workers`). Callers must not modify the returned tensors in place.
    """
    name = name.strip().lower()
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"invalid val_fraction {val_fraction}; must be between 0 and 1")
    for what, value in (("image_size", image_size), ("train_size", train_size),
                        ("val_size", val_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise DataError(f"invalid {what} {value!r}; must be a positive integer")
    if not memory_budget_gb > 0:
        raise DataError(f"invalid memory budget {memory_budget_gb} GB; must be > 0")
    if loader_workers is not None and loader_workers < 0:
        raise DataError(f"invalid loader_workers {loader_workers}; must be >= 0")
    if data_dir:
        root = Path(data_dir).expanduser().resolve()
    else:
        root = DEFAULT_ROOTS.get(name, default_data_dir())
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("imagefolder needs --data-dir DIR (train/ and val/ class folders)")
        workers = default_loader_workers() if loader_workers is None else loader_workers
        return _imagefolder(root, val_fraction, image_size, train_size, val_size, stream,
                            memory_budget_gb, workers)
    if stream:
        raise DataError(f"streaming applies to imagefolder data, not {name}")
    return _sized(name, root, download, seed if name == "fake" else 0,
                  val_fraction if name == "digits" else 0.0, image_size, train_size, val_size)


_imagefolder = functools.lru_cache(maxsize=4)(_sources.imagefolder)


@functools.lru_cache(maxsize=8)
def _sized(name: str, root: Path, download: bool, seed: int, val_fraction: float,
           image_size: int | None, train_size: int | None, val_size: int | None) -> Dataset:
    data = _load(name, root, download, seed, val_fraction, image_size)
    title = f"{name}'s %s split"
    return data.subset(
        stratified_subset(data.labels("train"), train_size, "train_size", title % "training"),
        stratified_subset(data.labels("val"), val_size, "val_size", title % "validation"))


@functools.lru_cache(maxsize=4)
def _load(name: str, root: Path, download: bool, seed: int, val_fraction: float,
          image_size: int | None) -> Dataset:
    if name == "digits":
        data = _sources.digits(val_fraction)
    elif name in _sources.CIFAR_STATS:
        data = _sources.cifar(name, root, download)
    elif name in _sources.IDX_DATASETS:
        data = _sources.idx_dataset(name, root, download)
    else:
        data = _sources.fake(seed)
    if image_size and image_size != data.image_size:
        check_fits(len(data.train_x) + len(data.val_x), data.in_channels, image_size, name)
        data = dataclasses.replace(
            data, train_x=_resize(data.train_x, image_size), val_x=_resize(data.val_x, image_size),
            image_size=image_size, pad=max(1, data.pad * image_size // data.image_size))
    return data


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (MemAvailable), else its physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(images: int, channels: int, size: int, name: str) -> None:
    """A one-line DataError when ``images`` float32 tensors of ``size`` x ``size`` would not
    fit in the memory this machine has free (the resize makes them all at once)."""
    need = images * channels * size * size * 4
    free = available_memory()
    if free is not None and need > 0.8 * free:
        raise DataError(f"{name} at image_size={size}: {images:,} images x {channels} x "
                        f"{size}x{size} float32 = {need / 2**30:.1f} GiB, more than the "
                        f"{free / 2**30:.1f} GiB of memory free here; choose a smaller "
                        "image_size")


def _resize(x: Any, size: int) -> Any:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)
