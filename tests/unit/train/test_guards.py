"""Overfitting and numerical guards: non-finite loss recovery, L2-SP, class balance, gap warning."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.unit.train.test_runner import _data, _runner
from thaw.strategy.base import Phase


def _full(r: Any, epochs: int = 2, lr: float = 1e-2) -> Phase:
    return Phase("p", trainable=tuple(range(len(r.groups))), epochs=epochs, lr=lr, augment="none", patience=0)


def _nan_after(module: nn.Module, calls: set[int]) -> None:
    counter = {"n": 0}

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        counter["n"] += 1
        return out * float("nan") if counter["n"] in calls else out

    module.register_forward_hook(hook)


def test_a_nan_loss_restores_good_weights_and_retries_with_lower_lr() -> None:
    r = _runner()
    _nan_after(r.model.get_classifier(), {5})  # one bad training step in epoch 2
    res = r.run_phase(0, _full(r), [])
    assert res.stopped == "completed" and res.epochs_run == 2
    assert any("retrying with lr x0.1" in w for w in r.warnings)


def test_a_persistent_nan_ends_the_phase_with_the_last_good_weights() -> None:
    r = _runner()
    start = {k: v.clone() for k, v in r.model.state_dict().items()}
    _nan_after(r.model.get_classifier(), set(range(1, 10_000)))
    res = r.run_phase(0, _full(r), [])
    assert res.stopped == "non-finite-loss" and res.epochs_run == 0
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert any("again at lr x0.1" in w for w in r.warnings)


def _distance_from_start(r: Any) -> float:
    head = set(r.groups[-1].param_names)
    return sum(float((p.detach() - r._initial[n]).pow(2).sum()) for n, p in r.model.named_parameters() if n not in head)


def test_l2sp_keeps_thawed_weights_near_the_pretrained_ones() -> None:
    free = _runner(weight_decay=0.0)
    free.run_phase(0, _full(free, lr=5e-2), [])
    held = _runner(l2sp=50.0)
    held.run_phase(0, _full(held, lr=5e-2), [])
    assert _distance_from_start(held) < 0.5 * _distance_from_start(free)
    assert all(g["weight_decay"] == 0.0 for g in held._param_groups(_full(held)))  # L2-SP replaces weight decay


def test_balance_weighted_and_sampler() -> None:
    imbalanced = _data(24)
    keep = [i for i in range(24) if imbalanced.labels[i] != 2 or i < 3]  # class 2 has one image
    r = _runner(balance="weighted")
    r.train_data = imbalanced.subset(keep)
    r.__post_init__()
    counts = torch.bincount(r.train_data.labels).double()
    assert r.class_weights is not None
    torch.testing.assert_close((r.class_weights.double() * counts).sum() / counts.sum(), torch.tensor(1.0).double())
    assert r.class_weights[2] > r.class_weights[0]

    s = _runner(balance="sampler")
    s.train_data = imbalanced.subset(keep)
    s.__post_init__()
    drawn = torch.cat([s.train_data.labels[s._epoch_order(len(s.train_data))] for s.global_epoch in range(200)])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    torch.testing.assert_close(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.05, rtol=0)


def test_gap_warning_when_train_far_exceeds_stalled_validation() -> None:
    r = _runner()
    r.val_data = _data(9, seed=5)
    r.val_data.labels = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(3))  # unlearnable val
    r.run_phase(0, _full(r, epochs=12, lr=3e-2), [])
    rows_warn = [w for w in r.warnings if "overfitting" in w]
    assert rows_warn, r.warnings
