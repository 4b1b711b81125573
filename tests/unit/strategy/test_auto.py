"""The auto planner's decisions on measured numbers (no model runs here: the histories are synthetic)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import timm

from thaw.config import FitConfig
from thaw.models.groups import layer_groups
from thaw.strategy.auto import (
    EARLY_MIN_EPOCHS,
    EARLY_MIN_SHARE,
    EXPLORE_SHARE,
    MAX_EXPLORE_SHARE,
    MIN_RUNG_EPOCHS,
    MIN_RUNG_STEPS,
    TIMED_PASS_SECONDS,
    AutoStrategy,
    choose,
    compare_paired,
    fitted_early,
    flip_verdict,
)
from thaw.strategy.base import (
    Average,
    AverageResult,
    Candidates,
    Phase,
    PhaseResult,
    PlanContext,
    Refit,
    Signals,
    StepResult,
)


def _ctx(
    seconds_left: float | None = 170.0,
    budget: float | None = 180.0,
    epoch: float = 2.0,
    num_train: int = 300,
    **cfg: object,
) -> PlanContext:
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    config = FitConfig.from_dict({"train": "x", "strategy": "auto", **cfg}).resolved(
        num_train=num_train
    )  # as the runner
    return PlanContext(
        config=config,
        groups=tuple(layer_groups(model)),
        num_train=num_train,
        num_classes=3,
        num_val=100,
        seconds_left=seconds_left,
        budget_seconds=budget,
        signals=Signals(epoch_seconds=epoch),
    )


def _result(
    index: int, phase: Phase, correct: list[int], nll: float = 0.5, epochs: int = 5, seconds: float = 20.0
) -> PhaseResult:
    acc = sum(correct) / len(correct)
    return PhaseResult(
        index,
        phase,
        epochs,
        epochs,
        acc,
        nll,
        0.3,
        0.9,
        seconds,
        100.0,
        steps=epochs * 5,
        selected_val_accuracy=acc,
        selected_val_loss=nll,
        val_correct=correct,
        val_nll=[nll] * len(correct),
    )


def _probe(ctx: PlanContext) -> tuple[AutoStrategy, list[StepResult]]:
    auto = AutoStrategy()
    probe = auto.next_step(ctx, [])
    assert isinstance(probe, Phase)
    return auto, [_result(0, probe, [1] * 70 + [0] * 30, nll=0.9, seconds=3.0)]


def test_starts_with_a_cached_probe_whose_weights_are_kept() -> None:
    phase = AutoStrategy().next_step(_ctx(), [])
    assert isinstance(phase, Phase) and phase.name == "linear-probe" and phase.augment == "none" and phase.keep
    assert AutoStrategy().needs([]).epoch_seconds is False


def test_after_the_probe_it_races_two_recipes_on_equal_cost_rungs_from_the_probe() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    assert auto.needs(history).epoch_seconds  # the race is sized from the measured epoch cost
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    partial, full = race.phases
    head = ctx.head
    assert full.trainable == tuple(range(head + 1)) and head in partial.trainable and 0 not in partial.trainable
    assert full.bn_policy == ctx.config.bn
    rung = EXPLORE_SHARE * 170.0 / 2
    for p in race.phases:
        assert p.start == "phase:0" and p.seconds == pytest.approx(rung) and p.patience == 0
        assert p.signals["role"] == "candidate" and p.keep  # the winner continues from its rung
    assert sum(p.seconds or 0 for p in race.phases) == pytest.approx(EXPLORE_SHARE * 170.0)


@pytest.mark.parametrize(("setup", "timed"), [(0.0, True), (0.49, True), (TIMED_PASS_SECONDS, False), (6.0, False)])
def test_the_epoch_is_timed_unless_the_probe_feature_pass_was_long_enough_to_price_it(
    setup: float, timed: bool
) -> None:
    """No cached pass (0 s), or one of a few dozen images that is mostly one-time set-up: time an epoch."""
    ctx = _ctx()
    auto, history = _probe(ctx)
    history = [replace(history[0], setup_seconds=setup)]
    assert auto.needs(history).epoch_seconds is timed
    assert auto.needs(history).mirrored


def test_a_race_cut_by_an_interruption_continues_with_the_remaining_candidate_at_the_same_rung() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    history.append(_result(1, race.phases[0], [1] * 75 + [0] * 25))
    rest = auto.next_step(replace(ctx, seconds_left=120.0, signals=Signals()), history)
    assert isinstance(rest, Candidates) and [p.name for p in rest.phases] == [p.name for p in race.phases[1:]]
    assert [p.seconds for p in rest.phases] == [p.seconds for p in race.phases[1:]]


def test_no_race_when_a_rung_is_shorter_than_an_epoch_the_final_run_takes_the_budget() -> None:
    ctx = _ctx(seconds_left=20.0, epoch=10.0)  # rung 2s < 10s per epoch
    auto, history = _probe(ctx)
    final = auto.next_step(ctx, history)
    assert isinstance(final, Phase) and final.name == "auto-full" and final.seconds == pytest.approx(20.0)
    assert final.start == "pretrained" and final.patience == 0 and final.epochs > 10_000


@pytest.mark.parametrize(("epoch", "races"), [(2.5, True), (3.6, False), (10.0, False)])
def test_a_race_needs_rungs_of_at_least_min_rung_steps_of_full(epoch: float, races: bool) -> None:
    """Rungs of 0.3 x 170 s / 2 = 25.5 s; 300 images at batch 32 make 10 steps an epoch: at 2.5 s an epoch a rung
    holds 10 whole epochs (100 steps, the floor); at 3.6 s 7 epochs (70), and 10 epochs would take 72 s of 170 for
    both rungs, over MAX_EXPLORE_SHARE; at 10 s 2 (20): the race would show where ``full`` starts, not where it goes,
    so the budget goes to one run of every group, and the decision says why."""
    assert MIN_RUNG_STEPS == 100 and MAX_EXPLORE_SHARE == 0.4
    ctx = _ctx(epoch=epoch)
    auto, history = _probe(ctx)
    step = auto.next_step(ctx, history)
    if races:
        assert isinstance(step, Candidates) and [p.signals["recipe"] for p in step.phases] == ["partial", "full"]
        assert {p.signals["rung_steps"] for p in step.phases} == {int(25.5 / epoch) * 10}  # recorded with the race
        assert [p.signals["explore_share"] for p in step.phases] == [pytest.approx(EXPLORE_SHARE)] * 2
        assert "lengthened" not in step.reason
        return
    assert isinstance(step, Phase) and step.name == "auto-full" and step.seconds == pytest.approx(170.0)
    assert step.signals["rung_steps"] == int(25.5 / epoch) * 10 and step.signals["rung_seconds"] == pytest.approx(25.5)
    assert f"fewer than the {MIN_RUNG_STEPS}" in step.reason and "lengthened to 40%" in step.reason
    assert step.start == "pretrained" and "fresh head" in step.reason  # not the probe's fitted head


@pytest.mark.parametrize("epoch", [2.6, 3.0, 3.4])
def test_rungs_just_short_of_the_floor_are_lengthened_to_meet_it_within_max_explore_share(epoch: float) -> None:
    """At 2.6-3.4 s an epoch a 25.5 s rung holds 7-9 epochs (70-90 steps), under the floor; 10 epochs (100 steps)
    take 52-68 s for both rungs, at most 0.4 x 170 s: the rungs are lengthened to exactly 10 epochs, and the reason
    and the signals say so. Without this the ``--models`` measurements pushed cvdigits' Lite2 rungs to 90 steps and
    the run that skipped the race scored under the runs that raced."""
    ctx = _ctx(epoch=epoch)
    auto, history = _probe(ctx)
    assert int(25.5 / epoch) * 10 < MIN_RUNG_STEPS
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    for p in race.phases:
        assert p.seconds == pytest.approx(10 * epoch) and p.signals["rung_steps"] == MIN_RUNG_STEPS
        assert EXPLORE_SHARE < p.signals["explore_share"] <= MAX_EXPLORE_SHARE
    assert p.signals["explore_share"] == pytest.approx(2 * 10 * epoch / 170.0)
    assert "lengthened from 30%" in race.reason
    # an interrupted race resumes at the lengthened rung and says the share it planned
    history.append(_result(1, race.phases[0], [1] * 75 + [0] * 25))
    rest = auto.next_step(replace(ctx, seconds_left=120.0, signals=Signals()), history)
    assert isinstance(rest, Candidates) and rest.phases[0].seconds == pytest.approx(10 * epoch)
    assert rest.phases[0].signals["explore_share"] == pytest.approx(2 * 10 * epoch / 170.0)
    assert "of 170s in all" in rest.reason


def test_a_few_images_are_lengthened_to_min_rung_epochs_not_min_rung_steps() -> None:
    """40 images at batch 16 (3 steps an epoch) at 1.5 s an epoch: a 25.5 s rung holds 17 epochs (51 steps); the
    nearer floor is 20 epochs (60 steps, 60 s for both rungs, 35 % of 170 s), not 100 steps (34 epochs)."""
    ctx = _ctx(epoch=1.5, num_train=40)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    assert [p.seconds for p in race.phases] == [pytest.approx(MIN_RUNG_EPOCHS * 1.5)] * 2
    assert {p.signals["rung_steps"] for p in race.phases} == {MIN_RUNG_EPOCHS * 3}


@pytest.mark.parametrize(("epoch", "races"), [(0.8, True), (1.2, True), (1.8, False)])
def test_a_rung_of_few_steps_races_when_it_holds_min_rung_epochs_of_a_few_images(epoch: float, races: bool) -> None:
    """40 images at batch 16 make 3 steps an epoch: a rung of 25.5 s holds 31 epochs (93 steps) at 0.8 s an epoch,
    21 (63) at 1.2 s, 14 (42) at 1.8 s. Under MIN_RUNG_STEPS all three, but 20 passes over 40 images have fitted
    them, so the first two race (stamps' rungs after the --models measurements held 84-93 steps); the third does
    not (20 epochs of both rungs would take 72 s, over 0.4 x 170 s), and the decision names both floors."""
    assert MIN_RUNG_EPOCHS == 20
    ctx = _ctx(epoch=epoch, num_train=40)
    assert ctx.config.batch == 16
    auto, history = _probe(ctx)
    step = auto.next_step(ctx, history)
    steps = int(25.5 / epoch) * 3
    assert steps < MIN_RUNG_STEPS
    if races:
        assert isinstance(step, Candidates) and {p.signals["rung_steps"] for p in step.phases} == {steps}
        return
    assert isinstance(step, Phase) and step.name == "auto-full" and step.signals["rung_steps"] == steps
    assert f"fewer than the {MIN_RUNG_STEPS}" in step.reason and f"{MIN_RUNG_EPOCHS} epochs" in step.reason


def test_a_candidate_worse_beyond_noise_is_dropped_and_the_winner_continues_for_the_rest_of_the_budget() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    history.append(_result(1, race.phases[0], [1] * 60 + [0] * 40, nll=0.6))  # partial
    history.append(_result(2, race.phases[1], [1] * 85 + [0] * 15, nll=0.7))  # full: 25 images better
    final = auto.next_step(replace(ctx, seconds_left=110.0, signals=Signals()), history)
    assert isinstance(final, Phase) and final.name == "auto-full" and final.seconds == pytest.approx(110.0)
    # the winner's recipe continues from the weights its rung selected, with no early stop, and keeps nothing
    assert (final.trainable, final.lr, final.start, final.patience, final.keep) == (
        race.phases[1].trainable,
        race.phases[1].lr,
        "phase:2",
        0,
        False,
    )
    assert "continues from its rung's selected weights" in final.reason
    verdict = final.signals["race"]["1"]
    assert verdict["beyond_noise"] and verdict["accuracy_diff"] == pytest.approx(0.25)
    assert verdict["verdict"].startswith("dropped: val accuracy")
    assert auto.next_step(replace(ctx, seconds_left=2.0), [*history, _result(3, final, [1] * 90 + [0] * 10)]) is None


def test_within_noise_the_lower_validation_loss_decides() -> None:
    phase = Phase("c", (0,), 1, 1e-3)
    a = _result(1, replace(phase, name="a"), [1] * 80 + [0] * 20, nll=0.40)
    b = _result(2, replace(phase, name="b"), [1] * 79 + [0] * 21, nll=0.55)  # one image less, clearly worse loss
    c = _result(3, replace(phase, name="c"), [1] * 81 + [0] * 19, nll=0.60)  # one image more, worst loss
    winner, verdicts = choose([a, b, c])
    assert winner is a and set(verdicts) == {2, 3}  # a verdict for each candidate dropped, none for the winner
    assert not verdicts[2]["beyond_noise"] and not verdicts[3]["beyond_noise"]
    assert "validation loss" in verdicts[3]["verdict"]


def test_paired_bootstrap_sees_noise_and_a_real_difference() -> None:
    phase = Phase("c", (0,), 1, 1e-3)
    same = [1, 0] * 50
    shifted = [0, 1] * 50  # same accuracy, every image different
    assert not compare_paired(_result(1, phase, same), _result(2, phase, shifted)).beyond_noise
    better = [1] * 90 + [0] * 10
    worse = [1] * 70 + [0] * 30
    c = compare_paired(_result(1, phase, better), _result(2, phase, worse))
    assert c.beyond_noise and c.accuracy_diff == pytest.approx(0.2) and 0 < c.accuracy_lower < 0.2


def test_refit_splits_the_budget_and_retrains_the_winner_for_its_measured_epochs() -> None:
    ctx = _ctx(seconds_left=20.0, epoch=10.0, refit=True)
    auto, history = _probe(ctx)
    final = auto.next_step(ctx, history)
    assert isinstance(final, Phase) and final.seconds == pytest.approx(10.0)  # half: the refit needs as long again
    history.append(_result(1, final, [1] * 80 + [0] * 20, epochs=7))
    refit = auto.next_step(replace(ctx, seconds_left=9.0, signals=Signals()), history)
    assert isinstance(refit, Refit) and refit.phase.epochs == 7 and refit.phase.seconds is None
    assert "no validation is held out" in refit.phase.reason
    history.append(_result(2, replace(refit.phase, refit=True), [1] * 80 + [0] * 20, epochs=7))
    assert auto.next_step(ctx, history) is None


def test_without_a_time_budget_auto_chooses_one_from_the_measured_epoch_cost_and_says_so() -> None:
    ctx = _ctx(seconds_left=None, budget=None, epoch=2.0)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    # 300 images at the default batch of 32: 10 steps per epoch, so 600 steps = 60 epochs of 2s, plus the race
    chosen = 60 * 2.0 / (1 - EXPLORE_SHARE)
    assert race.phases[0].seconds == pytest.approx(EXPLORE_SHARE * chosen / 2)
    assert "no --time-budget" in race.phases[0].signals["budget_source"]


def test_decisions_record_every_phase_and_the_share_of_time_spent_exploring() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    history += [_result(i + 1, p, [1] * (60 + 10 * i) + [0] * (40 - 10 * i)) for i, p in enumerate(race.phases)]
    final = auto.next_step(replace(ctx, seconds_left=110.0), history)
    assert isinstance(final, Phase)
    history.append(_result(3, final, [1] * 88 + [0] * 12, seconds=100.0))
    decisions = auto.decisions(history)
    assert [d.decision for d in decisions] == [
        "run linear-probe",
        "run race-partial",
        "run race-full",
        "run auto-full",
        "stop",
    ]
    assert decisions[-1].signals["exploration_share"] == pytest.approx((3 + 2 * 20) / (3 + 2 * 20 + 100))
    # only the loser's rung is thrown away: the winner's continues
    assert decisions[-1].signals["discarded_share"] == pytest.approx(20 / (3 + 2 * 20 + 100))
    assert all(d.reason for d in decisions)


@pytest.mark.parametrize(
    ("epochs", "min_epoch", "early"),
    [(88, 6, True), (53, 15, True), (53, 16, False), (24, 8, False), (30, 18, False), (9, 1, False), (40, 0, False)],
)
def test_a_rung_fitted_early_when_its_lowest_validation_loss_came_in_its_first_30_percent(
    epochs: int, min_epoch: int, early: bool
) -> None:
    """stamps' rungs had their lowest loss at epoch 6 of 88; the other suite tasks' at 33-100 % of their epochs (8 of
    24 on cvdigits). Fewer than EARLY_MIN_EPOCHS epochs say nothing (a first epoch of three is a third), nor does no
    measurement (0)."""
    assert EARLY_MIN_EPOCHS == 10 and EARLY_MIN_SHARE == 0.3
    rung = replace(
        _result(1, Phase("race-partial", (0,), 1, 1e-3), [1, 0], epochs=epochs), min_val_loss_epoch=min_epoch
    )
    assert fitted_early(rung) is early


def _race_fitted_early(ctx: PlanContext) -> tuple[AutoStrategy, list[StepResult], Candidates]:
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    partial = _result(1, race.phases[0], [1] * 80 + [0] * 20, nll=0.5, epochs=60)
    history.append(replace(partial, min_val_loss_epoch=5))  # the winner, fitted by its 5th of 60 epochs
    history.append(_result(2, race.phases[1], [1] * 60 + [0] * 40, nll=0.9, epochs=30))
    return auto, history, race


def test_a_winner_fitted_early_is_repeated_for_a_weight_soup_instead_of_run_longer() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history, race = _race_fitted_early(ctx)
    rung = race.phases[0].seconds or 0.0  # 25.5 s
    step = auto.next_step(replace(ctx, seconds_left=119.0, signals=Signals()), history)
    assert isinstance(step, Phase) and step.name == "auto-partial-repeat1"
    count = int(119.0 // rung)  # 4 repeats of 29.75 s
    assert step.signals["role"] == "repeat" and step.signals["repeats"] == count == 4
    assert step.seconds == pytest.approx(119.0 / count)
    # the rung's recipe from the rung's start (the probe), kept for the soup
    assert (step.trainable, step.lr, step.start, step.keep, step.patience) == (
        race.phases[0].trainable,
        race.phases[0].lr,
        "phase:0",
        True,
        0,
    )
    assert "epoch 5 of 60" in step.reason and step.signals["race"]["2"]["beyond_noise"]
    history.append(_result(3, step, [1] * 82 + [0] * 18, seconds=29.0))
    # the next repeat shares what is left among the repeats still to run
    nxt = auto.next_step(replace(ctx, seconds_left=60.0, signals=Signals()), history)
    assert isinstance(nxt, Phase) and nxt.name == "auto-partial-repeat2" and nxt.seconds == pytest.approx(20.0)
    history.append(_result(4, nxt, [1] * 81 + [0] * 19, seconds=20.0))
    # out of time before the last repeats: the soup of the rung and the repeats that ran
    soup = auto.next_step(replace(ctx, seconds_left=0.0, signals=Signals()), history)
    assert isinstance(soup, Average) and soup.members == (1, 3, 4)
    history.append(AverageResult(5, soup.members, True, {"soup_val_accuracy": 0.84}))
    assert auto.next_step(replace(ctx, seconds_left=0.0), history) is None
    decisions = auto.decisions(history)
    assert [d.decision for d in decisions][-2:] == ["soup adopted", "stop"]
    assert "repeated for a weight soup" in decisions[-1].reason
    # the winner's rung is kept in the soup: only the loser's rung is thrown away
    assert decisions[-1].signals["discarded_seconds"] == pytest.approx(20.0)


def test_the_winner_is_repeated_when_the_losers_rung_fitted_early() -> None:
    """On 20 validation images the winner's own loss curve can bottom out late by noise while the other candidate's
    rung shows the images fitted within a few epochs (stamps: full won with its lowest loss at 74 % of its rung,
    partial's came at 2 %, and the long run drifted): either rung fitting early repeats the winner's rung."""
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    race = auto.next_step(ctx, history)
    assert isinstance(race, Candidates)
    partial = _result(1, race.phases[0], [1] * 60 + [0] * 40, nll=0.9, epochs=52)
    history.append(replace(partial, min_val_loss_epoch=1))  # fitted by its first epoch
    full = _result(2, race.phases[1], [1] * 75 + [0] * 25, nll=0.8, epochs=35)
    history.append(replace(full, min_val_loss_epoch=26))  # the winner, lowest loss late
    step = auto.next_step(replace(ctx, seconds_left=119.0, signals=Signals()), history)
    assert isinstance(step, Phase) and step.name == "auto-full-repeat1" and step.start == "phase:0"
    assert step.trainable == race.phases[1].trainable and step.signals["winner"] == 2
    assert step.signals["fitted_early_recipe"] == "partial"
    assert (step.signals["rung_min_val_loss_epoch"], step.signals["rung_epochs"]) == (1, 52)
    assert "the partial rung reached its lowest validation loss at epoch 1 of 52" in step.reason
    # neither rung early: the winner continues
    history[1] = replace(partial, min_val_loss_epoch=20)
    final = auto.next_step(replace(ctx, seconds_left=119.0, signals=Signals()), history)
    assert isinstance(final, Phase) and final.name == "auto-full" and final.signals["role"] == "final"


def test_with_refit_a_winner_fitted_early_is_repeated_then_refitted_as_often_and_souped_unvetoed() -> None:
    """--refit on tiny data: the validated half repeats the rung and soups it; the refit half repeats the same
    recipe on training + validation images as many times as the soup had members, and soups them without a veto."""
    ctx = _ctx(seconds_left=170.0, refit=True)
    auto, history, race = _race_fitted_early(ctx)
    rung = race.phases[0].seconds or 0.0  # 25.5 s
    step = auto.next_step(replace(ctx, seconds_left=120.0, signals=Signals()), history)
    assert isinstance(step, Phase) and step.signals["role"] == "repeat"
    assert step.signals["repeats"] == int(60.0 // rung) == 2  # half the time left: the refits need the rest
    history.append(_result(3, step, [1] * 82 + [0] * 18, seconds=30.0))
    step = auto.next_step(replace(ctx, seconds_left=90.0, signals=Signals()), history)
    # the refits' half (2 x 30 s) is kept back: the last repeat gets what is left of the validated half only
    assert isinstance(step, Phase) and step.name == "auto-partial-repeat2" and step.seconds == pytest.approx(30.0)
    early = auto.next_step(replace(ctx, seconds_left=59.0, signals=Signals()), history)
    assert isinstance(early, Average) and early.members == (1, 3)  # no validated time left: soup what ran
    history.append(_result(4, step, [1] * 81 + [0] * 19, seconds=30.0))
    soup = auto.next_step(replace(ctx, seconds_left=60.0, signals=Signals()), history)
    assert isinstance(soup, Average) and soup.members == (1, 3, 4) and soup.validated
    history.append(AverageResult(5, soup.members, True, {"soup_val_accuracy": 0.84, "validated": True}))
    refits = []
    for k, left in enumerate((60.0, 41.0, 19.0), start=1):
        refit = auto.next_step(replace(ctx, seconds_left=left, signals=Signals()), history)
        assert isinstance(refit, Refit) and refit.phase.name == f"auto-partial-refit{k}"
        p = refit.phase
        # the winner's rung recipe from the probe, at most its epochs, sharing what is left; kept for the soup
        assert (p.trainable, p.start, p.keep, p.epochs) == (race.phases[0].trainable, "phase:0", True, 60)
        assert p.seconds == pytest.approx(left / (4 - k)) and p.signals["refits"] == 3
        assert "no validation is held out" in p.reason
        history.append(_result(5 + k, replace(p, refit=True), [1] * 95 + [0] * 5, epochs=40))
        refits.append(5 + k)
    final = auto.next_step(replace(ctx, seconds_left=0.5, signals=Signals()), history)
    assert isinstance(final, Average) and final.members == tuple(refits) and not final.validated
    history.append(AverageResult(9, final.members, True, {"validated": False}))
    assert auto.next_step(replace(ctx, seconds_left=0.5), history) is None
    decisions = auto.decisions(history)
    assert [d.decision for d in decisions][-3:] == ["soup adopted", "soup adopted", "stop"]
    assert "without a veto" in decisions[-2].reason and "refitted" in decisions[-1].reason


def test_with_refit_a_vetoed_soup_is_refitted_once_and_without_time_none() -> None:
    ctx = _ctx(seconds_left=170.0, refit=True)
    auto, history, race = _race_fitted_early(ctx)
    step = auto.next_step(replace(ctx, seconds_left=120.0, signals=Signals()), history)
    assert isinstance(step, Phase)
    history += [_result(3 + k, step, [1] * 82 + [0] * 18, seconds=30.0) for k in range(2)]
    soup = auto.next_step(replace(ctx, seconds_left=55.0, signals=Signals()), history)
    assert isinstance(soup, Average)
    vetoed = [*history, AverageResult(5, soup.members, False, {"validated": True})]
    refit = auto.next_step(replace(ctx, seconds_left=55.0, signals=Signals()), vetoed)
    assert isinstance(refit, Refit) and refit.phase.seconds == pytest.approx(55.0)
    assert refit.phase.signals["refits"] == 1 and "vetoed" in refit.phase.reason
    vetoed.append(_result(6, replace(refit.phase, refit=True), [1] * 95 + [0] * 5, epochs=60))
    assert auto.next_step(replace(ctx, seconds_left=1.0), vetoed) is None  # one refit: nothing to soup
    # no time left after the validated soup: no refit, and the validated soup stays the result
    adopted = [*history, AverageResult(5, soup.members, True, {"validated": True})]
    assert auto.next_step(replace(ctx, seconds_left=0.0), adopted) is None


def _mirrored(plain: int, mirrored: int, n: int = 100) -> tuple[PhaseResult, tuple[list[int], list[float]]]:
    """A probe with ``plain`` of n right on the validation images, and its numbers on their mirror images with
    ``mirrored`` right (the mirror's right ones a subset of the plain's, as when orientation carries the class)."""
    probe = _result(0, Phase("linear-probe", (0,), 1, 1e-2), [1] * plain + [0] * (n - plain))
    probe = replace(probe, val_nll=[0.3 if c else 2.0 for c in probe.val_correct])
    b = [1] * mirrored + [0] * (n - mirrored)
    return probe, (b, [0.3 if c else 2.0 for c in b])


def test_flips_are_dropped_only_when_the_mirror_image_is_classified_worse_beyond_noise() -> None:
    augment, record = flip_verdict(*_mirrored(90, 60), "light")  # digits: a mirrored 3 is not a 3
    assert augment == "crop" and not record["flip"] and record["mirrored_val_accuracy"] == pytest.approx(0.6)
    assert record["accuracy_diff_lower_bound"] > 0
    augment, record = flip_verdict(*_mirrored(90, 89), "light")  # photos: one image is noise
    assert augment == "light" and record["flip"]
    assert flip_verdict(*_mirrored(90, 60), "strong") == ("strong", {})  # an explicit preset is the user's choice
    assert flip_verdict(_mirrored(90, 60)[0], None, "light") == ("light", {})  # nothing measured: nothing changes


def test_the_race_and_the_final_run_fine_tune_without_flips_when_the_probe_says_so() -> None:
    ctx = _ctx(seconds_left=170.0)
    auto, history = _probe(ctx)
    assert auto.needs(history).mirrored
    probe, mirrored = _mirrored(90, 60)
    history = [replace(probe, phase=history[0].phase)]
    race = auto.next_step(replace(ctx, signals=Signals(epoch_seconds=2.0, mirrored=mirrored)), history)
    assert isinstance(race, Candidates)
    assert all(p.augment == "crop" and "no horizontal flip" in p.reason for p in race.phases)
    history.append(_result(1, race.phases[0], [1] * 60 + [0] * 40))
    # resumed after the first candidate, with nothing measured: the second keeps the decision
    rest = auto.next_step(replace(ctx, signals=Signals()), history)
    assert isinstance(rest, Candidates) and rest.phases[0].augment == "crop"
    history.append(_result(2, rest.phases[0], [1] * 85 + [0] * 15))
    final = auto.next_step(replace(ctx, seconds_left=110.0, signals=Signals()), history)
    assert isinstance(final, Phase) and final.augment == "crop"
