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
    _nan_after(r.model.get_classifier(), {6})  # epoch 1: 3 train + 2 val calls; call 6 is epoch 2, step 1
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
    return sum(float((p.detach() - r.initial[n]).pow(2).sum()) for n, p in r.model.named_parameters() if n not in head)


def test_l2sp_keeps_thawed_weights_near_the_pretrained_ones() -> None:
    free = _runner(weight_decay=0.0)
    free.run_phase(0, _full(free, lr=5e-2), [])
    held = _runner(l2sp=50.0)
    held.run_phase(0, _full(held, lr=5e-2), [])
    assert _distance_from_start(held) < 0.5 * _distance_from_start(free)
    assert all(g["weight_decay"] == 0.0 for g in held.optimizer_groups(_full(held)))  # L2-SP replaces weight decay
    assert any(g["weight_decay"] > 0.0 for g in _runner().optimizer_groups(_full(free)))


def test_balance_weighted_and_sampler() -> None:
    imbalanced = _data(24)
    keep = [i for i in range(24) if imbalanced.labels[i] != 2 or i < 3]  # class 2 has one image
    r = _runner(balance="weighted", train=imbalanced.subset(keep))
    counts = torch.bincount(r.train_data.labels).double()
    assert r.class_weights is not None
    torch.testing.assert_close((r.class_weights.double() * counts).sum() / counts.sum(), torch.tensor(1.0).double())
    assert r.class_weights[2] > r.class_weights[0]

    s = _runner(balance="sampler", train=imbalanced.subset(keep))
    drawn = torch.cat([s.train_data.labels[s.epoch_order(len(s.train_data))] for s.global_epoch in range(200)])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    torch.testing.assert_close(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.05, rtol=0)


def test_gap_warning_when_train_far_exceeds_stalled_validation() -> None:
    val = _data(9, seed=5)
    val.labels = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(3))  # unlearnable val
    r = _runner(val=val)
    r.run_phase(0, _full(r, epochs=12, lr=3e-2), [])
    rows_warn = [w for w in r.warnings if "overfitting" in w]
    assert rows_warn, r.warnings


def _logits_scoring(labels: torch.Tensor, accuracy: float, loss: float, classes: int = 3) -> torch.Tensor:
    """Logits on which ``labels`` score exactly ``accuracy`` and (to 1e-4) mean cross-entropy ``loss``.

    The first images are predicted right with margin t; the rest put t on a wrong class and t - 0.01 on the right
    one. The loss falls monotonically with t (from about log 3 toward (1 - accuracy) * log 2), so t is bisected.
    """
    n = len(labels)
    right = round(accuracy * n)
    wrong = (labels + 1) % classes

    def logits(t: float) -> torch.Tensor:
        out = nn.functional.one_hot(labels, classes).double() * t
        out[right:] = nn.functional.one_hot(wrong[right:], classes).double() * t
        out[right:] += nn.functional.one_hot(labels[right:], classes).double() * (t - 0.01)
        return out

    lo, hi = 0.0, 60.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(nn.functional.cross_entropy(logits(mid), labels)) > loss else (lo, mid)
    out = logits(lo).float()
    assert abs(float(nn.functional.cross_entropy(out, labels)) - loss) < 1e-4, "loss not reachable at this accuracy"
    assert int((out.argmax(1) == labels).sum()) == right
    return out


def _scripted_validation(r: Any, results: list[tuple[float, float]]) -> None:
    """Make the runner's validation pass return logits that score the given (accuracy, loss) per epoch."""
    from thaw.train.loop import EpochStats

    script = iter(results)

    def predict(_model: Any, data: Any) -> tuple[EpochStats, torch.Tensor]:
        acc, loss = next(script)
        return EpochStats(loss=loss, accuracy=acc, images=len(data), seconds=0.0), _logits_scoring(
            data.labels, acc, loss
        )

    r.feed.predict_logits = predict


def test_patience_counts_epochs_where_neither_val_accuracy_nor_val_loss_improved() -> None:
    r = _runner(val=_data(100, seed=1))
    phase = Phase("p", trainable=tuple(range(len(r.groups))), epochs=6, lr=1e-3, augment="none", patience=2)
    # accuracy flat after epoch 1, but the loss keeps falling: no early stop
    _scripted_validation(r, [(0.5, 1.0), (0.5, 0.9), (0.5, 0.8), (0.5, 0.7), (0.5, 0.6), (0.5, 0.5)])
    assert r.run_phase(0, phase, []).epochs_run == 6
    r = _runner(val=_data(100, seed=1))
    # both flat from epoch 2: stops after two bad epochs
    _scripted_validation(r, [(0.5, 1.0), (0.6, 0.9), (0.6, 0.9), (0.55, 0.95), (0.7, 0.1), (0.7, 0.1)])
    res = r.run_phase(0, phase, [])
    assert res.epochs_run == 4 and res.stopped == "early-stopped"


def test_last_epoch_is_kept_when_within_noise_of_the_best() -> None:
    phase = Phase("p", trainable=tuple(range(len(_runner().groups))), epochs=4, lr=1e-3, augment="none", patience=0)
    # noise margin at 0.80 on 100 images: two binomial standard errors, 2 * sqrt(0.8 * 0.2 / 100) = 0.08
    for last in (0.79, 0.75):  # one image, and five images (the old two-image margin rejected this one)
        r = _runner(val=_data(100, seed=1))
        _scripted_validation(r, [(0.60, 1.0), (0.80, 0.7), (0.78, 0.6), (last, 0.6)])
        res = r.run_phase(0, phase, [])
        assert r.selection.best_where == (0, 4) and r.selection.best.accuracy == last
        assert "kept the last epoch" in res.extra["selection"] and "within 0.0800" in res.extra["selection"]
    final = {k: v.clone() for k, v in r.model.state_dict().items()}

    r = _runner(val=_data(100, seed=1))
    _scripted_validation(r, [(0.60, 1.0), (0.80, 0.7), (0.78, 0.6), (0.70, 0.6)])  # 10 images worse: real
    res = r.run_phase(0, phase, [])
    assert r.selection.best_where == (0, 2) and "selection" not in res.extra
    # the restored weights are epoch 2's, not the last epoch's
    assert any(not torch.equal(final[k], v) for k, v in r.model.state_dict().items() if v.is_floating_point())
