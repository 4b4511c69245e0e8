"""Fixed, stratified splits and subsets: they depend on the labels only, never on a seed."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from gct_ablate._util import cache_dir, write_atomic
from gct_ablate.errors import DataError


def stratified_split(labels: Sequence[int], val_fraction: float) -> tuple[list, list]:
    """Train and validation indices, ``val_fraction`` of each class in validation.

    scikit-learn's ``train_test_split`` (``random_state=0``) makes the split; it is kept in
    the cache folder under a hash of the labels and the fraction, so that later processes
    (every worker of a study) read it instead of importing scikit-learn again.
    """
    labels = [int(y) for y in labels]
    n = len(labels)
    key = hashlib.sha256(json.dumps([labels, float(val_fraction)]).encode()).hexdigest()[:20]
    path = cache_dir() / "splits" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        val = json.loads(path.read_text())
        if (isinstance(val, list) and all(isinstance(i, int) and 0 <= i < n for i in val)
                and len(set(val)) == len(val)):
            chosen = set(val)
            return [i for i in range(n) if i not in chosen], sorted(val)
    train, val = _sklearn_split(labels, val_fraction)
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(val).encode())
    return train, val


def _sklearn_split(labels: list[int], val_fraction: float) -> tuple[list, list]:
    from sklearn.model_selection import train_test_split

    index = list(range(len(labels)))
    try:
        train, val = train_test_split(index, test_size=val_fraction, random_state=0,
                                      stratify=labels)
    except ValueError as err:
        raise DataError(f"cannot split {len(index)} images into train and validation: {err}"
                        ) from None
    return sorted(train), sorted(val)


def stratified_subset(labels: Sequence[int], size: int | None, what: str, where: str
                      ) -> list[int] | None:
    """Sorted indices of ``size`` images with the classes in the proportions of ``labels``
    (largest remainders), None for all of them. Errors name the setting (``what``, e.g.
    "train_size") and the images (``where``, e.g. "fashion-mnist's training split")."""
    n = len(labels)
    if size is None or size == n:
        return None
    y = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    if size > n:
        raise DataError(f"invalid {what} {size}: above the {n} images of {where}")
    if size < len(classes):
        raise DataError(f"invalid {what} {size}: below the {len(classes)} classes of {where} "
                        "(a stratified subset needs an image of each class)")
    quota = counts * size / n
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: size - int(take.sum())]
    take[extra] += 1
    rng = np.random.default_rng(0)
    keep = [rng.choice(np.flatnonzero(y == c), k, replace=False)
            for c, k in zip(classes, take, strict=True)]
    return sorted(int(i) for i in np.concatenate(keep))
