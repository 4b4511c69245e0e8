"""Image folders too large for memory, streamed from disk by DataLoader worker processes.

Training images get RandomResizedCrop + horizontal flip, validation images a resize and a
center crop (the ImageNet recipe). Workers decode to uint8 tensors (pinned when the data
lives on CUDA), which are moved with ``non_blocking`` and normalized on the device, so a
batch crosses the bus at a quarter of its float32 size.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gct_ablate.data._base import check_split, count_batches

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STREAM_IMAGE_SIZE = 224  # the paper's ImageNet resolution
DEFAULT_MEMORY_BUDGET_GB = 2.0


def memory_estimate(n_images: int, image_size: int, channels: int = 3) -> int:
    """Bytes that ``n_images`` float32 images of ``image_size``^2 pixels take in memory."""
    return n_images * channels * image_size * image_size * 4


def should_stream(n_images: int, image_size: int, budget_gb: float) -> bool:
    """The rule for ``stream=None``: stream when the in-memory tensors would exceed the budget."""
    return memory_estimate(n_images, image_size) > budget_gb * 2**30


def default_loader_workers() -> int:
    """DataLoader worker processes when none are asked for: the usable cores, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def train_transform(size: int) -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.RandomResizedCrop(size),
                               transforms.RandomHorizontalFlip(), transforms.PILToTensor()])


def eval_transform(size: int) -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(round(size * 256 / 224)),
                               transforms.CenterCrop(size), transforms.PILToTensor()])


@dataclass(frozen=True)
class StreamDataset:
    """Train and validation ``torchvision.datasets.ImageFolder`` objects (without transforms),
    read in batches by DataLoaders that are made on first use and kept (persistent workers).

    ``workers`` DataLoader worker processes per loader (0: the calling process decodes).
    """

    name: str
    train_set: Any  # ImageFolder
    val_set: Any
    num_classes: int
    image_size: int
    classes: tuple[str, ...]
    workers: int = 0
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_STATS[0]
    std: tuple[float, ...] = IMAGENET_STATS[1]
    device: torch.device = torch.device("cpu")
    _loaders: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def to(self, device: torch.device | str) -> StreamDataset:
        """A copy that delivers its batches on ``device`` (with loaders of its own)."""
        return dataclasses.replace(self, device=torch.device(device))

    def size(self, split: str) -> int:
        return len(self._set(split).samples)

    def labels(self, split: str) -> list[int]:
        return list(self._set(split).targets)

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        return count_batches(self.size(split), batch_size, drop_last)

    def generator(self, seed: int) -> torch.Generator:
        """A CPU generator: the loader's sampler draws the shuffling order on the host."""
        return torch.Generator().manual_seed(seed)

    def subset(self, train: Sequence[int] | None, val: Sequence[int] | None) -> StreamDataset:
        """A copy holding only the given images of each split (None keeps all)."""
        return dataclasses.replace(self, train_set=select_samples(self.train_set, train),
                                   val_set=select_samples(self.val_set, val))

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        augment: bool,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of (x, y) on ``device``; the shuffling order comes from ``generator``
        (else the global RNG), the crops and flips from the workers' RNGs, which the
        DataLoader seeds from the global RNG."""
        loader = self._loader(split, batch_size, shuffle, augment, drop_last)
        if shuffle:
            loader.sampler.generator = generator  # read by RandomSampler at each epoch
        scale, shift = self._normalizer()
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).float().mul_(scale).sub_(shift)
            yield x, y.to(self.device, non_blocking=True)

    def _set(self, split: str) -> Any:
        check_split(split)
        return self.train_set if split == "train" else self.val_set

    def _normalizer(self) -> tuple[Tensor, Tensor]:
        if "norm" not in self._loaders:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            self._loaders["norm"] = ((1 / (255 * std)).to(self.device),
                                     (mean / std).to(self.device))
        return self._loaders["norm"]

    def _loader(self, split: str, batch_size: int, shuffle: bool, augment: bool,
                drop_last: bool) -> Any:
        key = (split, batch_size, shuffle, augment, drop_last)
        if key not in self._loaders:
            from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

            view = copy.copy(self._set(split))
            view.transform = (train_transform if augment else eval_transform)(self.image_size)
            sampler = RandomSampler(view) if shuffle else SequentialSampler(view)
            self._loaders[key] = DataLoader(
                view, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                num_workers=self.workers, persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda")
        return self._loaders[key]


def select_samples(folder: Any, index: Sequence[int] | None) -> Any:
    """A shallow copy of an ImageFolder holding only the samples at ``index``."""
    if index is None:
        return folder
    part = copy.copy(folder)
    part.samples = [folder.samples[i] for i in index]
    part.imgs = part.samples
    part.targets = [s[1] for s in part.samples]
    return part
