"""Datasets for trials: in-memory tensors for small data, streamed image folders for large.

Every dataset gives the :class:`Data` interface (``batches``, ``num_batches``, ``size``,
``generator``, ``to``; ``num_classes``, ``in_channels``, ``image_size``) that training,
evaluation, gate statistics and pruning use. :func:`load_dataset` reads digits (bundled
with scikit-learn), MNIST / Fashion-MNIST (idx files; Debian's ``dataset-fashion-mnist``),
CIFAR-10/100 (torchvision's files), image folders and FakeData; ``docs/data.md`` says where
each is found, how it is split and when an image folder is streamed.
"""

from gct_ablate.data._base import Data
from gct_ablate.data._idx import read_idx
from gct_ablate.data._load import DEFAULT_ROOTS, default_data_dir, load_dataset
from gct_ablate.data._memory import Dataset, augment_batch
from gct_ablate.data._splits import stratified_subset
from gct_ablate.data._stream import (
    DEFAULT_MEMORY_BUDGET_GB,
    STREAM_IMAGE_SIZE,
    StreamDataset,
    default_loader_workers,
    memory_estimate,
    should_stream,
)
from gct_ablate.errors import DataError

__all__ = [
    "DEFAULT_MEMORY_BUDGET_GB",
    "DEFAULT_ROOTS",
    "STREAM_IMAGE_SIZE",
    "Data",
    "DataError",
    "Dataset",
    "StreamDataset",
    "augment_batch",
    "default_data_dir",
    "default_loader_workers",
    "load_dataset",
    "memory_estimate",
    "read_idx",
    "should_stream",
    "stratified_subset",
]
