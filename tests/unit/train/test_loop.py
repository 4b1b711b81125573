"""train/loop.py on its own: the warmup+cosine factor's golden values, and one epoch of a 2x2 linear model whose
losses, accuracy and weight updates are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from thaw.train.loop import NonFiniteLossError, WarmupCosine, evaluate, tensor_batches, train_epoch

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- WarmupCosine
def test_warmup_ramps_linearly_then_cosine_ends_at_zero() -> None:
    f = WarmupCosine(total_steps=10, warmup_fraction=0.2)  # 2 warmup steps, then cosine over 8 steps
    assert f.warmup_steps == 2
    golden = [
        1 / 3,  # warmup: (step + 1) / (warmup + 1), never 0 at the first step
        2 / 3,
        1.0,  # cosine starts at its peak
        0.5 * (1 + math.cos(math.pi / 8)),
        0.5 * (1 + math.cos(math.pi * 2 / 8)),
        0.5 * (1 + math.cos(math.pi * 3 / 8)),
        0.5,  # half way through the cosine
        0.5 * (1 + math.cos(math.pi * 5 / 8)),
        0.5 * (1 + math.cos(math.pi * 6 / 8)),
        0.5 * (1 + math.cos(math.pi * 7 / 8)),
        0.0,  # the end of the schedule
        0.0,  # and it stays there (a step past the end, e.g. a resumed epoch boundary)
    ]
    assert [f(s) for s in range(12)] == pytest.approx(golden, abs=1e-12)


def test_warmup_length_rules() -> None:
    assert WarmupCosine(30, 0.0, min_warmup_steps=4).warmup_steps == 4  # at least one epoch of warmup when asked
    assert WarmupCosine(6, 0.9).warmup_steps == 3  # never more than half the steps
    assert WarmupCosine(6, 0.9, min_warmup_steps=5).warmup_steps == 3
    zero = WarmupCosine(0, 0.1)  # an empty phase still gives a valid factor
    assert zero.total_steps == 1 and zero.warmup_steps == 0 and zero(0) == 1.0 and zero(1) == 0.0


def test_shortened_total_steps_end_the_cosine_earlier() -> None:
    f = WarmupCosine(total_steps=10, warmup_fraction=0.2)
    before = f(4)
    f.total_steps = 6  # a time budget cut the phase: the cosine now spans steps 2..6
    assert f.warmup_steps == 2 and f(1) == pytest.approx(2 / 3)  # warmup unchanged
    assert f(4) == pytest.approx(0.5) and f(4) < before
    assert f(6) == 0.0 and f(8) == 0.0


def test_factor_drives_lambdalr() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total_steps=4, warmup_fraction=0.25))  # 1 warmup
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.4, 0.4 * 0.5 * (1 + math.cos(math.pi / 3)), 0.4 * 0.25, 0.0])


# ---------------------------------------------------------------------------------------------------- train_epoch
def linear_zero() -> nn.Linear:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model


BATCHES = [
    (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])),
    (torch.tensor([[2.0, 0.0]]), torch.tensor([1])),
]


def test_train_epoch_matches_hand_computed_sgd() -> None:
    model = linear_zero()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    steps: list[tuple[int, float, float]] = []
    stats = train_epoch(
        model,
        BATCHES,
        opt,
        sched,
        device=CPU,
        on_step=lambda step, loss, acc, _ips: steps.append((step, loss, acc)),
    )

    # Batch 1: zero weights -> logits 0, loss log 2 per image, argmax 0 -> one of two right.
    # d loss / d W = (softmax - onehot)^T x / 2 = [[-.25, .25], [.25, -.25]] -> W1 = -0.1 * that.
    w1 = torch.tensor([[0.025, -0.025], [-0.025, 0.025]])
    # Batch 2: logits W1 @ [2, 0] = [0.05, -0.05], label 1 -> loss log(e^.05 + e^-.05) + .05, argmax 0 (wrong).
    loss2 = math.log(math.exp(0.05) + math.exp(-0.05)) + 0.05
    p0 = 1 / (1 + math.exp(-0.1))  # softmax probability of class 0
    w2 = w1 - 0.1 * torch.tensor([[2 * p0, 0.0], [-2 * p0, 0.0]])

    assert_close(model.weight.detach(), w2)
    assert stats.images == 3 and stats.steps == 2
    assert stats.loss == pytest.approx((2 * math.log(2) + loss2) / 3)
    assert stats.accuracy == pytest.approx(1 / 3)
    assert steps[0] == (1, pytest.approx(math.log(2)), 0.5)
    assert steps[1] == (2, pytest.approx(stats.loss), pytest.approx(1 / 3))
    assert sched.last_epoch == 2  # the schedule advanced once per step


def test_train_epoch_reports_relative_gradient_norm_per_group() -> None:
    model = linear_zero()
    with torch.no_grad():
        model.weight.fill_(1.0)  # ||theta|| = 2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # measure only: the weights stay put
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    stats = train_epoch(model, [(x, y)], opt, sched, device=CPU, grad_groups={0: [model.weight]})
    # logits [1, 1] -> softmax [.5, .5]; grad = [[-.5, 0], [.5, 0]], ||grad|| = sqrt(.5)
    assert stats.grad_norm == {0: pytest.approx(math.sqrt(0.5) / 2)}


def test_train_epoch_label_smoothing_changes_only_the_target() -> None:
    model = linear_zero()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    stats = train_epoch(model, [BATCHES[0]], opt, sched, device=CPU, label_smoothing=0.2)
    # logits [1, 0] and [0, 0]; smoothed targets put 0.1 on the other class
    lse = math.log(math.e + 1)
    first = 0.9 * (lse - 1) + 0.1 * lse
    second = math.log(2)
    assert stats.loss == pytest.approx((first + second) / 2)


def test_train_epoch_stops_on_a_non_finite_loss() -> None:
    model = linear_zero()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    bad = (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        train_epoch(model, [BATCHES[0], bad], opt, sched, device=CPU)
    assert_close(model.weight.detach(), torch.tensor([[0.025, -0.025], [-0.025, 0.025]]))  # the bad step not taken


# ---------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_returns_logits_loss_and_accuracy_without_training() -> None:
    model = linear_zero()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    stats, logits = evaluate(model, tensor_batches(x, y, 2, device=CPU), device=CPU)
    assert_close(logits, torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    lse = [math.log(math.e + 1), math.log(1 + math.e**2), math.log(math.e**3 + 1)]
    expected = (lse[0] - 1) + (lse[1] - 0) + (lse[2] - 0)
    assert stats.loss == pytest.approx(expected / 3)
    assert stats.accuracy == pytest.approx(1 / 3) and stats.images == 3
    assert model.weight.grad is None


def test_evaluate_on_no_batches() -> None:
    stats, logits = evaluate(linear_zero(), [], device=CPU)
    assert stats.images == 0 and math.isnan(stats.loss) and math.isnan(stats.accuracy)
    assert logits.shape == (0, 0)


def test_tensor_batches_order_and_singleton_rule() -> None:
    x = torch.arange(5.0).unsqueeze(1)
    y = torch.arange(5)
    got = [b[1].tolist() for b in tensor_batches(x, y, 2, order=torch.tensor([4, 3, 2, 1, 0]), device=CPU)]
    assert got == [[4, 3], [2, 1], [0]]
    dropped = [b[1].tolist() for b in tensor_batches(x, y, 2, device=CPU, drop_singleton=True)]
    assert dropped == [[0, 1], [2, 3]]  # a last batch of one would break BatchNorm in train mode


def test_resize_sizes_the_warmup_to_the_new_length() -> None:
    f = WarmupCosine(total_steps=100_000, warmup_fraction=0.1, min_warmup_steps=2)
    assert f.warmup_steps == 10_000  # planned before the epoch cost was known
    f.resize(50)  # the clock says 50 steps fit
    assert f.total_steps == 50 and f.warmup_steps == 5
    assert f(4) == pytest.approx(5 / 6) and f(5) == pytest.approx(1.0) and f(50) == pytest.approx(0.0)


def test_a_phase_that_thaws_backbone_groups_warms_up_for_at_least_min_warmup_steps() -> None:
    from thaw.config import FitConfig
    from thaw.strategy.base import Phase
    from thaw.train.optim import MIN_WARMUP_STEPS, build_optimizer

    cfg = FitConfig(train="unused")
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "lr": 0.1}]
    phase = Phase(name="p", trainable=(0, 1), epochs=10, lr=0.1)
    *_, backbone = build_optimizer(cfg, phase, groups, total_steps=100, steps_per_epoch=2, thaws_backbone=True)
    *_, head_only = build_optimizer(cfg, phase, groups, total_steps=100, steps_per_epoch=2, thaws_backbone=False)
    assert backbone.warmup_steps == MIN_WARMUP_STEPS  # 10 % of 100 steps would be 10
    assert head_only.warmup_steps == 10  # a head on frozen features keeps the 10 % warmup
    *_, short = build_optimizer(cfg, phase, groups, total_steps=30, steps_per_epoch=2, thaws_backbone=True)
    assert short.warmup_steps == 15  # capped at half the phase
