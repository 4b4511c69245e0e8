"""The interface that training, evaluation, gate statistics and pruning use of any dataset."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

SPLITS = ("train", "val")


class Data(Protocol):
    """What both the in-memory :class:`Dataset` and the streaming :class:`StreamDataset` give.

    ``batches`` yields (x, y) on ``device``: x float32 normalized NCHW, y int64.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]

    @property
    def device(self) -> torch.device: ...

    def to(self, device: torch.device | str) -> Data: ...

    def size(self, split: str) -> int: ...

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int: ...

    def generator(self, seed: int) -> torch.Generator: ...

    def batches(self, split: str, batch_size: int, *, shuffle: bool,
                generator: torch.Generator | None = None, augment: bool,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]: ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
