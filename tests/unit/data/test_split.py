"""stratified_split and subsample_per_class."""

from __future__ import annotations

from collections import Counter

import pytest

from thaw.data.split import stratified_split, subsample_per_class
from thaw.errors import ConfigError


def test_stratified_proportions_and_partition() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(100))
    assert not set(train) & set(val)
    assert Counter(labels[i] for i in val) == {0: 10, 1: 6, 2: 4}
    assert train == sorted(train) and val == sorted(val)


def test_deterministic_per_seed() -> None:
    labels = [i % 4 for i in range(80)]
    assert stratified_split(labels, 0.25, seed=3) == stratified_split(labels, 0.25, seed=3)
    assert stratified_split(labels, 0.25, seed=3) != stratified_split(labels, 0.25, seed=4)


def test_small_classes_get_one_val_image_and_singletons_stay_in_train() -> None:
    labels = [0] * 100 + [1] * 2 + [2] * 1 + [3] * 3
    train, val = stratified_split(labels, 0.1, seed=0)
    per_class = Counter(labels[i] for i in val)
    assert per_class == {0: 10, 1: 1, 3: 1}
    assert 102 in train  # the single image of class 2
    # with a large fraction each class still keeps one training image
    _, val = stratified_split([0, 0, 1, 1], 0.9, seed=0)
    assert Counter([0, 0, 1, 1][i] for i in val) == {0: 1, 1: 1}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split([0, 1], fraction, seed=0)


def test_subsample_per_class() -> None:
    labels = [0] * 40 + [1] * 8 + [2] * 1
    kept = subsample_per_class(labels, 0.25, seed=1)
    assert Counter(labels[i] for i in kept) == {0: 10, 1: 2, 2: 1}
    assert kept == subsample_per_class(labels, 0.25, seed=1)
    assert subsample_per_class(labels, 1.0, seed=0) == list(range(49))
    with pytest.raises(ConfigError):
        subsample_per_class(labels, 0.0, seed=0)
