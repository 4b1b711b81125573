"""The auto planner's decisions on measured numbers (no model runs here: the history is synthetic)."""

from __future__ import annotations

import math

import pytest
import timm

from thaw.config import FitConfig
from thaw.models.groups import layer_groups
from thaw.strategy.auto import FIT_ACCURACY, AutoStrategy, min_gain
from thaw.strategy.base import Phase, PhaseResult, PlanContext


def _ctx(seconds_left: float | None = None, **signals: object) -> PlanContext:
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    cfg = FitConfig.from_dict({"train": "x", "strategy": "auto", "epochs": 10})
    return PlanContext(
        config=cfg,
        groups=tuple(layer_groups(model)),
        num_train=300,
        num_classes=3,
        seconds_left=seconds_left,
        signals={"num_val": 100, **signals},
    )


def _result(index: int, phase: Phase, val: float, train: float) -> PhaseResult:
    return PhaseResult(index, phase, phase.epochs, 1, val, 1.0, 0.5, train, 10.0, 100.0)


def _probe_then_partial(ctx: PlanContext, probe_val: float, probe_train: float) -> tuple[list[PhaseResult], Phase]:
    """The probe's result and the partial phase auto plans from it."""
    auto = AutoStrategy()
    probe = auto.next_phase(ctx, [])
    assert probe is not None
    history = [_result(0, probe, probe_val, probe_train)]
    partial = auto.next_phase(ctx, history)
    assert partial is not None
    return history, partial


def test_starts_with_a_cached_probe() -> None:
    phase = AutoStrategy().next_phase(_ctx(), [])
    assert phase is not None and phase.name == "linear-probe" and phase.augment == "none"


def test_partial_phase_thaws_the_groups_with_the_highest_gradient_signal() -> None:
    ctx = _ctx()
    names = [g.name for g in ctx.groups]
    rgn = {n: float(i) for i, n in enumerate(reversed(names))}  # earlier groups get larger signals
    ctx = _ctx(rgn=rgn)
    auto = AutoStrategy()
    probe = auto.next_phase(ctx, [])
    assert probe is not None
    partial = auto.next_phase(ctx, [_result(0, probe, 0.70, 0.9)])
    assert partial is not None and partial.name == "auto-partial"
    thawed = [names[i] for i in partial.trainable]
    backbone = len(names) - 1
    assert thawed[-1] == "head" and len(thawed) - 1 == math.ceil(backbone / 2)
    assert thawed[0] == "stem"  # the largest signal
    assert partial.signals["rgn"] == rgn
    # the signal picks the groups; every thawed backbone group gets the same scale
    assert set(partial.lr_scales.values()) == {ctx.config.backbone_lr_scale}
    assert partial.ingredient


def test_thaws_everything_whatever_the_partial_phase_scored() -> None:
    ctx = _ctx()
    h, partial = _probe_then_partial(ctx, 0.70, 0.9)
    gain = min_gain(100)
    for val, word in ((0.70 + 2 * gain, "gained"), (0.70 + gain / 2, "noise margin"), (0.70 - gain, "fell")):
        full = AutoStrategy().next_phase(ctx, [*h, _result(1, partial, val, 0.8)])
        assert full is not None and full.trainable == tuple(range(len(ctx.groups)))
        assert set(full.lr_scales.values()) == {ctx.config.backbone_lr_scale}
        assert word in full.reason and full.signals["gain_over_probe"] == pytest.approx(val - 0.70)
    # only the budget stops it
    tight = _ctx(seconds_left=1.0, full_epoch_seconds=10.0)
    stop = AutoStrategy()
    assert stop.next_phase(tight, [*h, _result(1, partial, 0.70 - gain, 0.8)]) is None
    assert "budget" in stop.stop_reason
    decisions = stop.decisions([*h, _result(1, partial, 0.70 - gain, 0.8)])
    assert decisions[-1]["decision"] == "stop" and decisions[-1]["signals"]["gain_over_probe"] == pytest.approx(-gain)


def test_repeats_go_to_the_phase_holding_the_best_weights() -> None:
    ctx = _ctx(seconds_left=1000.0)
    auto = AutoStrategy()
    history, partial = _probe_then_partial(ctx, 0.70, 1.0)
    history.append(_result(1, partial, 0.80, 1.0))
    full = auto.next_phase(ctx, history)
    assert full is not None
    history.append(PhaseResult(2, full, full.epochs, 0, 0.75, 1.0, 0.5, 1.0, 10.0, 100.0))  # did not beat partial
    repeat = auto.next_phase(ctx, history)
    assert repeat is not None and repeat.restart_from == 1 and repeat.name == "auto-partial-repeat1"


def test_a_large_train_val_gap_alone_does_not_stop_thawing() -> None:
    ctx = _ctx()
    auto = AutoStrategy()
    probe = auto.next_phase(ctx, [])
    assert probe is not None
    partial = auto.next_phase(ctx, [_result(0, probe, 0.60, 0.7)])
    assert partial is not None
    need = min_gain(100)
    full = auto.next_phase(ctx, [_result(0, probe, 0.60, 0.7), _result(1, partial, 0.60 + 1.5 * need, 1.0)])
    assert full is not None and full.signals["train_val_gap"] == pytest.approx(1.0 - 0.60 - 1.5 * need)


def test_time_budget_sizes_phases_from_measured_cost() -> None:
    ctx = _ctx(seconds_left=100.0, full_epoch_seconds=10.0)
    auto = AutoStrategy()
    probe = auto.next_phase(ctx, [])
    assert probe is not None
    partial = auto.next_phase(ctx, [_result(0, probe, 0.7, 0.8)])
    assert partial is not None and partial.epochs == int(100 * 0.35 / 7.5)
    tiny = _ctx(seconds_left=1.0, full_epoch_seconds=10.0)
    none = AutoStrategy()
    assert none.next_phase(tiny, [_result(0, probe, 0.7, 0.8)]) is None
    assert "budget" in none.stop_reason


def _through_full(auto: AutoStrategy, ctx: PlanContext) -> list[PhaseResult]:
    probe = auto.next_phase(ctx, [])
    assert probe is not None
    history = [_result(0, probe, 0.70, 0.8)]
    partial = auto.next_phase(ctx, history)
    assert partial is not None and partial.ingredient
    history.append(_result(1, partial, 0.80, 0.85))
    full = auto.next_phase(ctx, history)
    assert full is not None and full.name == "auto-full" and full.ingredient
    history.append(_result(2, full, 0.85, 0.9))
    return history


def test_leftover_budget_buys_repeats_of_the_winning_phase_for_a_soup() -> None:
    ctx = _ctx(seconds_left=1000.0)
    auto = AutoStrategy()
    history = _through_full(auto, ctx)
    for n in (1, 2):
        repeat = auto.next_phase(ctx, history)
        assert repeat is not None and repeat.restart_from == 2 and repeat.name == f"auto-full-repeat{n}"
        assert repeat.trainable == history[2].phase.trainable and "uniform soup" in repeat.reason
        history.append(_result(len(history), repeat, 0.84, 0.9))
    assert auto.next_phase(ctx, history) is None  # at most two repeats


def test_no_repeats_without_a_budget_or_without_time_for_one() -> None:
    auto = AutoStrategy()
    history = _through_full(auto, _ctx())
    assert auto.next_phase(_ctx(), history) is None
    # the full phase took 10 s (see _result): 12 s left is not 1.25 x 10 s
    assert auto.next_phase(_ctx(seconds_left=12.0), history) is None
    assert auto.next_phase(_ctx(seconds_left=13.0), history) is not None


def test_a_phase_that_fit_its_training_set_makes_the_next_start_from_pretrained() -> None:
    ctx = _ctx()
    probe = AutoStrategy().next_phase(ctx, [])
    assert probe is not None
    # the probe fit the training set: the partial phase starts from the pretrained weights with a fresh head
    fitted = AutoStrategy().next_phase(ctx, [_result(0, probe, 0.70, 1.0)])
    assert fitted is not None and fitted.from_pretrained and "fresh head" in fitted.reason
    # it did not: continue from its head (LP-FT)
    lpft = AutoStrategy().next_phase(ctx, [_result(0, probe, 0.70, 0.8)])
    assert lpft is not None and not lpft.from_pretrained and "continuing" in lpft.reason
    # the full phase is judged on the phase that holds the best weights
    h = [_result(0, probe, 0.70, 1.0)]
    assert fitted is not None
    full = AutoStrategy().next_phase(ctx, [*h, _result(1, fitted, 0.80, 0.85)])
    assert full is not None and not full.from_pretrained  # the partial phase is best and still has gradient
    full = AutoStrategy().next_phase(ctx, [*h, _result(1, fitted, 0.80, FIT_ACCURACY)])
    assert full is not None and full.from_pretrained
    not_better = PhaseResult(1, fitted, fitted.epochs, 0, 0.69, 1.0, 0.5, 0.85, 10.0, 100.0)
    full = AutoStrategy().next_phase(ctx, [*h, not_better])
    assert full is not None and full.from_pretrained  # the probe still holds the best weights, and it fit
