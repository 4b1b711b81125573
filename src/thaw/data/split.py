"""Seeded, stratified index splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from thaw.errors import ConfigError

__all__ = ["stratified_split", "subsample_per_class"]


def _indices_by_class(labels: Sequence[int]) -> dict[int, np.ndarray]:
    array = np.asarray(labels, dtype=np.int64)
    return {int(c): np.flatnonzero(array == c) for c in np.unique(array)}


def _per_class_pick(labels: Sequence[int], seed: int, count: dict[int, int]) -> list[int]:
    """Pick ``count[c]`` indices of each class ``c`` at random (seeded); return them sorted.

    Each class gets its own generator, derived from (seed, class), so adding or removing a class does not
    reshuffle the others.
    """
    picked: list[int] = []
    for c, idx in _indices_by_class(labels).items():
        rng = np.random.default_rng([seed & 0xFFFFFFFF, c])
        picked.extend(int(i) for i in rng.permutation(idx)[: count.get(c, 0)])
    return sorted(picked)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into train and validation parts with the same class proportions.

    Each class with ``n >= 2`` images gives ``round(n * val_fraction)`` of them to validation, clamped to
    ``[1, n - 1]`` so that every class is seen by both training and validation; a class with a single image
    stays in train. (sklearn's ``train_test_split(stratify=...)`` rounds over the whole set: it may give a
    small class no validation image and refuses when there are fewer validation slots than classes, so the
    per-class rounding is done here.)

    Args:
        labels: Class index of each sample.
        val_fraction: Share of each class for validation, in (0, 1).
        seed: Random seed; the same seed and labels always give the same split.

    Returns:
        ``(train_indices, val_indices)``, each sorted ascending, disjoint, together all indices.

    Raises:
        ConfigError: ``val_fraction`` is outside (0, 1).

    Example:
        >>> train_idx, val_idx = stratified_split([0, 0, 0, 1, 1, 1], 0.34, seed=0)
    """
    if not 0.0 < val_fraction < 1.0 or math.isnan(val_fraction):
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}: e.g. use 0.2")
    count: dict[int, int] = {}
    for c, idx in _indices_by_class(labels).items():
        n = len(idx)
        count[c] = 0 if n < 2 else min(max(round(n * val_fraction), 1), n - 1)
    val = _per_class_pick(labels, seed, count)
    val_set = set(val)
    train = [i for i in range(len(labels)) if i not in val_set]
    return train, val


def subsample_per_class(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Keep about ``fraction`` of each class (at least one image per class), seeded.

    Args:
        labels: Class index of each sample.
        fraction: Share of each class to keep, in (0, 1].
        seed: Random seed.

    Returns:
        The kept indices, sorted ascending.

    Raises:
        ConfigError: ``fraction`` is outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise ConfigError(f"the data fraction must be in (0, 1], got {fraction}: e.g. use 0.25 for a quarter")
    count = {c: max(1, round(len(idx) * fraction)) for c, idx in _indices_by_class(labels).items()}
    return _per_class_pick(labels, seed, count)
