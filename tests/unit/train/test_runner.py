"""The runner applies phases exactly: trainable parameters, BatchNorm modes, optimizer groups and lr scales."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import timm
import torch
from torch import nn

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages
from thaw.models.groups import layer_groups, module_groups
from thaw.strategy.base import Average, AverageResult, Candidates, Phase, PhaseResult, Refit
from thaw.train.budget import Budget
from thaw.train.optim import build_optimizer, no_decay_params, param_groups
from thaw.train.runner import Runner


def _data(n: int, classes: int = 3, size: int = 32, seed: int = 0) -> DecodedImages:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, 0] = (labels * 80).to(torch.uint8)[:, None, None]  # learnable: class in the red channel
    return DecodedImages(
        images=images, labels=labels, paths=[f"{i}.png" for i in range(n)], hashes=[str(i) for i in range(n)]
    )


def _runner(
    model_name: str = "test_efficientnet",
    *,
    train: DecodedImages | None = None,
    val: DecodedImages | None = None,
    **options: object,
) -> Runner:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=3)
    cfg = FitConfig.from_dict({"train": "x", "batch_size": 8, "epochs": 2, **options})
    return Runner(
        model=model,
        groups=layer_groups(model),
        train_data=train if train is not None else _data(24),
        val_data=val if val is not None else _data(9, seed=1),
        config=cfg,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        device=torch.device("cpu"),
    )


def _bn_modes(runner: Runner) -> dict[str, bool]:
    return {n: m.training for n, m in runner.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_apply_phase_sets_requires_grad_for_exactly_the_phase_groups() -> None:
    r = _runner()
    head = len(r.groups) - 1
    phase = Phase("p", trainable=(head - 1, head), epochs=1, lr=1e-3)
    r.apply_phase(phase)
    trainable = {n for n, p in r.model.named_parameters() if p.requires_grad}
    expected = set(r.groups[head - 1].param_names) | set(r.groups[head].param_names)
    assert trainable == expected


def test_frozen_eval_policy_puts_bn_of_frozen_groups_in_eval_mode() -> None:
    r = _runner()
    head = len(r.groups) - 1
    phase = Phase("p", trainable=(head - 1, head), epochs=1, lr=1e-3, bn_policy="frozen-eval")
    r.set_modes(phase)
    owner = module_groups(r.model, r.groups)
    modes = _bn_modes(r)
    assert modes, "test model has BatchNorm"
    for name, training in modes.items():
        assert training == (owner[name] in phase.trainable), name


def test_bn_policies_train_all_and_eval_all() -> None:
    r = _runner()
    head = len(r.groups) - 1
    r.set_modes(Phase("p", trainable=(head,), epochs=1, lr=1e-3, bn_policy="train-all"))
    assert all(_bn_modes(r).values())
    r.set_modes(Phase("p", trainable=tuple(range(head + 1)), epochs=1, lr=1e-3, bn_policy="eval-all"))
    assert not any(_bn_modes(r).values())


def test_frozen_bn_statistics_do_not_change_during_training() -> None:
    r = _runner()
    head = len(r.groups) - 1
    before = {k: v.clone() for k, v in r.model.state_dict().items() if "running_mean" in k}
    r.run_phase(0, Phase("p", trainable=(head - 1, head), epochs=1, lr=1e-2, augment="none", patience=0), [])
    owner = module_groups(r.model, r.groups)
    changed = {k for k, v in r.model.state_dict().items() if "running_mean" in k and not torch.equal(v, before[k])}
    for key in changed:
        assert owner[key.rsplit(".", 1)[0]] == head - 1  # only BN of the thawed group updates statistics
    assert changed


def test_optimizer_covers_exactly_the_trainable_parameters_with_their_lr_scales() -> None:
    r = _runner()
    head = len(r.groups) - 1
    phase = Phase("p", trainable=(0, head), epochs=2, lr=1e-2, lr_scales={0: 0.1})
    r.apply_phase(phase)
    groups = param_groups(phase, r.groups, r.params, no_decay_params(r.model), 0.01)
    opt, sched, _ = build_optimizer(r.config, phase, groups, total_steps=6, steps_per_epoch=3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    expected = {
        id(p)
        for n, p in r.model.named_parameters()
        if n in set(r.groups[0].param_names) | set(r.groups[head].param_names)
    }
    assert in_opt == expected
    for _ in range(4):  # the scale survives the scheduler (the timm lr_scale pitfall)
        opt.step()
        sched.step()
        lrs = {g["group"]: g["lr"] for g in opt.param_groups}
        torch.testing.assert_close(lrs["stem"], 0.1 * lrs["head"])
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert all(p.ndim <= 1 for g in no_decay for p in g["params"])


def test_vit_position_embedding_and_class_token_take_no_weight_decay() -> None:
    model = timm.create_model("test_vit", pretrained=False, num_classes=3)
    skip = no_decay_params(model)
    named = dict(model.named_parameters())
    assert id(named["pos_embed"]) in skip and id(named["cls_token"]) in skip  # 3-d tensors, named by the model
    assert id(named["blocks.0.attn.qkv.weight"]) not in skip
    assert id(named["blocks.0.attn.qkv.bias"]) in skip


def test_head_only_phase_trains_on_exact_cached_features() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    features = r.feed.pre_logits(r.model, r.val_data)
    _, logits = r.predict_logits(r.val_data)
    # the classifier on the cached features computes exactly what the whole network computes
    with torch.no_grad():
        torch.testing.assert_close(r.model.get_classifier()(features), logits, rtol=1e-4, atol=1e-5)
    res = r.run_phase(0, Phase("probe", trainable=(head,), epochs=2, lr=1e-2, augment="none", patience=0), [])
    assert res.cached_features and res.epochs_run == 2 and res.steps == 2 * 3  # 24 images, batch 8


def test_patience_ends_a_phase_that_stops_improving() -> None:
    r = _runner()
    head = len(r.groups) - 1
    # lr 0 and frozen statistics: every epoch scores exactly like the first, so patience 1 ends it after epoch 2
    frozen = Phase("p", trainable=(head,), epochs=6, lr=0.0, augment="light", bn_policy="eval-all", patience=1)
    res = r.run_phase(0, frozen, [])
    assert res.stopped == "early-stopped" and res.epochs_run == 2


def test_best_weights_are_restored_after_a_phase() -> None:
    r = _runner()
    head = len(r.groups) - 1
    res = r.run_phase(0, Phase("p", trainable=tuple(range(head + 1)), epochs=4, lr=0.5, augment="none", patience=0), [])
    assert res.epochs_run == 4
    assert r.validation_score().accuracy == r.selection.best.accuracy
    assert r.selection.best_where[0] == 0 and 1 <= r.selection.best_where[1] <= 4


def test_a_phase_records_the_epoch_of_its_lowest_validation_loss() -> None:
    """What auto reads to tell a rung that fitted its images early (``auto.fitted_early``), from the metrics rows."""
    rows: list[dict[str, Any]] = []
    r = _runner()
    r.sink = rows.append
    head = len(r.groups) - 1
    res = r.run_phase(0, Phase("p", trainable=tuple(range(head + 1)), epochs=5, lr=0.5, augment="none", patience=0), [])
    losses = [row["val_loss"] for row in rows]
    assert len(losses) == res.epochs_run == 5
    assert res.min_val_loss_epoch == losses.index(min(losses)) + 1
    assert res.to_dict([g.name for g in r.groups])["min_val_loss_epoch"] == res.min_val_loss_epoch


def _still(name: str, trainable: tuple[int, ...], **kw: object) -> Phase:
    """A phase that changes nothing (lr 0, frozen statistics): its weights are its starting weights."""
    return Phase(name, trainable, epochs=1, lr=0.0, augment="none", bn_policy="eval-all", patience=0, **kw)  # type: ignore[arg-type]


def test_phase_starts_from_kept_weights_or_the_pretrained_ones() -> None:
    r = _runner()
    head = len(r.groups) - 1
    initial = {k: v.clone() for k, v in r.model.state_dict().items()}
    r.run_phase(0, Phase("probe", trainable=(head,), epochs=2, lr=1e-1, augment="none", patience=0, keep=True), [])
    kept = r.selection.kept[0][0]
    assert not torch.equal(kept["classifier.weight"], initial["classifier.weight"])
    r.run_phase(1, _still("from-pretrained", (head,), start="pretrained", keep=True), [])
    torch.testing.assert_close(r.selection.kept[1][0]["classifier.weight"], initial["classifier.weight"])
    r.run_phase(2, _still("from-probe", (head,), start="phase:0", keep=True), [])
    torch.testing.assert_close(r.selection.kept[2][0]["classifier.weight"], kept["classifier.weight"])


def test_candidates_run_from_the_same_start_with_consecutive_indices() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    probe = Phase("probe", trainable=(head,), epochs=2, lr=1e-1, augment="none", patience=0, keep=True)
    history = r.execute(probe, [])
    race = Candidates(
        (
            Phase("a", (head - 1, head), epochs=2, lr=1e-2, augment="none", patience=0, start="phase:0", keep=True),
            Phase("b", (head,), epochs=1, lr=1e-2, augment="none", patience=0, start="phase:0", keep=True),
        )
    )
    results = r.execute(race, history)
    assert [x.index for x in results] == [1, 2] and [x.phase.name for x in results] == ["a", "b"]
    assert [x.epochs_run for x in results] == [2, 1]  # type: ignore[union-attr]
    for res in results:
        assert isinstance(res, PhaseResult)
        assert len(res.val_correct) == len(r.val_data) and len(res.val_nll) == len(r.val_data)
        assert res.selected_val_accuracy == pytest.approx(sum(res.val_correct) / len(r.val_data))


def test_weight_soup_averages_kept_weights_and_is_vetoed_when_validation_collapses() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    base = Phase("ft", trainable=(head - 1, head), epochs=2, lr=1e-2, augment="none", patience=0, keep=True)
    history = r.execute(base, [])
    history += r.execute(replace(base, name="ft-again", start="pretrained"), history)
    first, second = r.selection.kept[0][0], r.selection.kept[1][0]
    w = "classifier.weight"
    soup = r.execute(Average((0, 1)), history)[0]
    assert isinstance(soup, AverageResult) and soup.index == 2 and soup.info["members"] == [0, 1]
    n, p = len(r.val_data), soup.info["mean_ingredient_val_accuracy"]
    assert soup.info["noise_margin"] == pytest.approx(max(2 / n, 0.005, 2 * (p * (1 - p) / n) ** 0.5))
    # every kept phase is in the soup: only the ingredients' mean can veto it
    assert soup.info["best_outside_val_accuracy"] is None
    assert soup.adopted == (soup.info["soup_val_accuracy"] >= p - soup.info["noise_margin"] - 1e-6)
    if soup.adopted:
        torch.testing.assert_close(r.model.state_dict()[w], (first[w] + second[w]) / 2)
    assert r.weight_soup([0], 3).info == {}  # one ingredient is no soup


def test_weight_soup_is_vetoed_when_validation_collapses() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    r.execute(
        Phase("ft", trainable=tuple(range(head + 1)), epochs=4, lr=3e-2, augment="none", patience=0, keep=True), []
    )
    first, w = r.selection.kept[0][0], "classifier.weight"
    assert r.selection.kept[0][1].accuracy > 0.6  # the run learned the task
    # an ingredient from another basin: its classifier points the opposite way, so the average predicts nothing
    bad = {k: v.clone() for k, v in first.items()}
    bad[w], bad["classifier.bias"] = -3 * bad[w], -3 * bad["classifier.bias"]
    r.selection.kept[1] = (bad, r.selection.kept[0][1])
    kept_model = {k: v.clone() for k, v in r.model.state_dict().items()}
    before = r.selection.best.accuracy
    vetoed = r.weight_soup([0, 1], 1)
    assert not vetoed.adopted and vetoed.info["soup_val_accuracy"] < r.selection.kept[0][1].accuracy - 0.1
    assert r.selection.best.accuracy == before
    torch.testing.assert_close(r.model.state_dict(), kept_model)  # the best weights are back in the model


def test_refit_trains_on_training_and_validation_images_and_its_last_weights_are_the_result() -> None:
    r = _runner()
    head = len(r.groups) - 1
    refit = Refit(Phase("ft", (head - 1, head), epochs=2, lr=1e-2, augment="none", patience=3))
    res = r.execute(refit, [])[0]
    assert isinstance(res, PhaseResult) and res.phase.refit and res.phase.patience == 0
    assert res.epochs_run == 2 and res.steps == 2 * 4  # 24 + 9 images, batch 8: 4 steps (a last batch of 1 is dropped)
    assert r.selection.best_where == (0, 2)
    assert res.extra["selection"].startswith("refit")


def test_refits_kept_for_a_soup_are_averaged_without_a_veto() -> None:
    """auto --refit on tiny data: refits of one recipe are kept, and their soup is the result whatever validation
    (which they trained on) says of it; what it measured is recorded as unvalidated."""
    r = _runner()
    head = len(r.groups) - 1
    history: list = []
    for k in range(2):
        phase = Phase(f"refit{k}", (head - 1, head), epochs=2, lr=1e-2, augment="none", patience=0, keep=True)
        history += r.execute(Refit(phase), history)
    assert set(r.selection.kept) == {0, 1} and r.selection.best_where == (1, 2)  # the last refit, until the soup
    w = "classifier.weight"
    # an ingredient that would collapse a validated soup: still adopted, because nothing validates a refit
    bad = {k: v.clone() for k, v in r.selection.kept[1][0].items()}
    bad[w], bad["classifier.bias"] = -3 * bad[w], -3 * bad["classifier.bias"]
    r.selection.kept[1] = (bad, r.selection.kept[1][1])
    soup = r.execute(Average((0, 1), validated=False), history)[0]
    assert isinstance(soup, AverageResult) and soup.adopted and soup.info["validated"] is False
    assert r.selection.best_where == (2, 0)
    torch.testing.assert_close(r.model.state_dict()[w], (r.selection.kept[0][0][w] + bad[w]) / 2)


def test_a_phase_with_planned_seconds_sizes_its_schedule_to_the_clock() -> None:
    r = _runner()
    head = len(r.groups) - 1
    res = r.run_phase(0, Phase("t", (head,), epochs=1000, lr=1e-2, augment="light", patience=0, seconds=1e-3), [])
    # one epoch is measured, then the clock says nothing more fits: the schedule ends with that epoch
    assert res.epochs_run == 1 and res.stopped == "completed"


def test_a_clocked_phase_replans_on_its_last_epochs_and_takes_an_epoch_the_clock_has_room_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-planned after epochs 1, 2, 4, 8, ... and after each of the last two planned: when the last epochs ran
    faster than the plan assumed, the room left becomes another epoch (the schedule grows with it)."""
    from thaw.train import runner as runner_module

    r = _runner()
    head = len(r.groups) - 1
    seen: list[tuple[int, int]] = []
    plan = runner_module.Runner._plan_length

    def spy(self: Runner, phase: Phase, st: Any, schedule: Any, spe: int, started: float) -> None:
        seen.append((st.epochs_done, st.planned_epochs))
        if st.epochs_done < 6:  # the clock's word until epoch 6: exactly six epochs fit
            st.planned_epochs = 6
            schedule.resize(6 * spe)
            st.total_steps = schedule.total_steps
            return
        plan(self, phase, st, schedule, spe, started)

    monkeypatch.setattr(runner_module.Runner, "_plan_length", spy)
    # ends when its own 7 epochs are done: epoch 6's re-plan finds room (a long phase length) and grows it to 7
    res = r.run_phase(0, Phase("t", (head,), epochs=7, lr=1e-2, augment="light", patience=0, seconds=1e4), [])
    assert [done for done, _ in seen] == [1, 2, 4, 5, 6, 7]
    assert res.epochs_run == 7


def test_the_clock_plans_in_steps_and_the_last_epoch_may_be_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time for 2.5 more epochs buys 2.5 epochs of steps: the schedule ends inside the last epoch, which runs only
    the steps that remain (whole epochs alone left up to one epoch of the budget idle)."""
    from thaw.train import runner as runner_module
    from thaw.train.loop import WarmupCosine
    from thaw.train.runner import EpochState

    r = _runner()
    head = len(r.groups) - 1
    phase = Phase("t", (head,), epochs=100, lr=1e-2, augment="none", patience=0, seconds=1e4)
    spe = 3  # 24 images, batch 8
    st = EpochState(phase_index=0, epochs_done=4, planned_epochs=10, total_steps=30, steps=12, steady_seconds=30.0)
    schedule = WarmupCosine(30, 0.0)
    monkeypatch.setattr(runner_module.Runner, "_time_left", lambda self, phase, started, own=True: 25.0)
    r._plan_length(phase, st, schedule, spe, started=0.0)  # 10 s an epoch, 25 s left: 7 more steps of 3 a epoch
    assert (st.total_steps, st.planned_epochs, schedule.total_steps) == (19, 7, 19)

    # the phase runs those steps: two whole epochs, then one of a single step
    def clock(self: Runner, phase: Phase, st: Any, schedule: Any, spe: int, started: float) -> None:
        st.planned_epochs, st.total_steps = 3, 2 * spe + 1
        schedule.resize(st.total_steps)

    monkeypatch.undo()
    monkeypatch.setattr(runner_module.Runner, "_plan_length", clock)
    res = r.run_phase(0, phase, [])
    assert res.epochs_run == 3 and res.steps == 2 * spe + 1 and res.stopped == "completed"


def test_when_the_next_epoch_no_longer_fits_the_schedule_shrinks_to_a_partial_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planned for 4 epochs of 10 s, but after the third the clock has 5 s left (a slower machine, a larger
    reserve): the phase re-plans instead of stopping, and runs the one step of the fourth epoch that fits."""
    from thaw.train import runner as runner_module

    r = _runner()
    head = len(r.groups) - 1
    phase = Phase("t", (head,), epochs=4, lr=1e-2, augment="none", patience=0, seconds=1e4)
    done = [0]
    after = runner_module.Runner._after_epoch

    def count(self: Runner, index: int, phase: Phase, st: Any, ep: Any, opt: Any) -> None:
        after(self, index, phase, st, ep, opt)
        done[0] = st.epochs_done

    def clock(self: Runner, phase: Phase, started: float, own: bool = True) -> float:
        return 100.0 if done[0] < 3 else 5.0 if done[0] == 3 else 0.0

    monkeypatch.setattr(runner_module, "PLAN_END_EPOCHS", 0)  # re-planned after epochs 1, 2 and 4 only
    monkeypatch.setattr(runner_module.EpochState, "epoch_cost", property(lambda self: 10.0))
    monkeypatch.setattr(runner_module.Runner, "_after_epoch", count)
    monkeypatch.setattr(runner_module.Runner, "_time_left", clock)
    res = r.run_phase(0, phase, [])
    # 3 whole epochs of 3 steps (24 images, batch 8), then int(5 s / 10 s x 3) = 1 step
    assert res.epochs_run == 4 and res.steps == 3 * 3 + 1 and res.stopped == "completed"


def test_no_epoch_starts_once_the_budget_is_spent() -> None:
    r = _runner()
    r.budget = Budget(1e-3)
    head = len(r.groups) - 1
    time.sleep(0.01)
    res = r.run_phase(0, Phase("t", (head,), epochs=5, lr=1e-2, augment="light", patience=0), [])
    assert res.epochs_run == 0 and res.stopped == "time-budget"


def test_the_final_reserve_follows_the_measured_cost_of_a_validation_pass() -> None:
    """``Budget.reserve`` is asked at every ``left()``; ``fit`` keeps back the final evaluation at the cost of an
    image that the last whole-model validation pass measured (a refit's copied feed shares the figure)."""
    from thaw.api import EXPORT_SECONDS, _final_seconds

    r = _runner(val=_data(20, seed=1))  # eval batches of 8: a pass over 20 images is long enough to count
    r.budget = Budget(100.0)
    cost = r.feed.eval_cost
    assert cost.seconds_per_image is None  # nothing measured yet: one timed eval batch stands in
    reserve = _final_seconds(r, _data(1000, seed=2))
    assert reserve() > EXPORT_SECONDS
    every = tuple(range(len(r.groups)))  # a whole-model phase validates through the whole model
    r.run_phase(0, Phase("t", every, epochs=1, lr=1e-3, augment="none", patience=0), [])
    measured = cost.seconds_per_image
    assert measured is not None and reserve() == pytest.approx(EXPORT_SECONDS + 1000 * measured)
    cost.seconds_per_image = 0.05  # a later pass's figure is the one the budget keeps back
    r.budget.reserve = reserve
    left = r.budget.left()
    assert left is not None and 100.0 - EXPORT_SECONDS - 50.0 - 5.0 < left < 100.0 - EXPORT_SECONDS - 50.0
    assert replace(r.feed, train=r.train_data).eval_cost is cost
