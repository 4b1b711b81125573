"""The runner applies phases exactly: trainable parameters, BatchNorm modes, optimizer groups and lr scales."""

from __future__ import annotations

from dataclasses import replace

import pytest
import timm
import torch
from torch import nn

from thaw.config import FitConfig
from thaw.data.cache import DecodedImages
from thaw.models.groups import layer_groups, module_groups
from thaw.strategy.base import Phase
from thaw.train.runner import Runner


def _data(n: int, classes: int = 3, size: int = 32, seed: int = 0) -> DecodedImages:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, 0] = (labels * 80).to(torch.uint8)[:, None, None]  # learnable: class in the red channel
    return DecodedImages(
        images=images, labels=labels, paths=[f"{i}.png" for i in range(n)], hashes=[str(i) for i in range(n)]
    )


def _runner(model_name: str = "test_efficientnet", **options: object) -> Runner:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=3)
    cfg = FitConfig.from_dict({"train": "x", "batch_size": 8, "epochs": 2, **options})
    return Runner(
        model=model,
        groups=layer_groups(model),
        train_data=_data(24),
        val_data=_data(9, seed=1),
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
    opt, sched, _ = r.build_optimizer(phase, steps_per_epoch=3)
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


def test_cached_linear_phase_matches_uncached() -> None:
    """A head-only phase on cached features gives the same metrics as the full forward pass."""
    head_phase = lambda: Phase("probe", trainable=(head,), epochs=2, lr=1e-2, augment="none", patience=0)  # noqa: E731
    results = []
    for cached in (True, False):
        r = _runner(label_smoothing=0.0)
        head = len(r.groups) - 1
        if not cached:
            r._cacheable = lambda phase: False  # type: ignore[method-assign]
        res = r.run_phase(0, head_phase(), [])
        assert res.cached_features is cached
        results.append(
            (
                res.best_val_accuracy,
                res.best_val_loss,
                res.last_train_loss,
                r.model.get_classifier().weight.detach().clone(),
            )
        )
    (a_acc, a_loss, a_tr, a_w), (b_acc, b_loss, b_tr, b_w) = results
    assert a_acc == b_acc
    torch.testing.assert_close(a_loss, b_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_tr, b_tr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a_w, b_w, rtol=1e-4, atol=1e-5)


def test_best_weights_are_restored_and_patience_stops_early() -> None:
    r = _runner(patience=1)
    head = len(r.groups) - 1
    res = r.run_phase(0, Phase("p", trainable=tuple(range(head + 1)), epochs=6, lr=0.5, augment="none", patience=1), [])
    assert res.epochs_run <= 6
    if res.epochs_run < 6:
        assert res.stopped == "early-stopped"
    stats, _ = r.predict_logits(r.val_data)
    assert stats.accuracy == r.best_val_accuracy


def test_repeat_restarts_from_the_phase_start_and_weight_soup_averages_weights() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    base = Phase("ft", trainable=(head - 1, head), epochs=2, lr=1e-2, augment="none", patience=0, ingredient=True)
    start = {k: v.clone() for k, v in r.model.state_dict().items()}
    r.run_phase(0, base, [])
    first = {k: v.clone() for k, v in r._ingredients[0][0].items()}
    repeat = replace(base, name="ft-repeat1", restart_from=0)
    r.run_phase(1, repeat, [])
    torch.testing.assert_close(r._phase_start[0], start)
    second = r._ingredients[1][0]
    w = "classifier.weight"
    assert not torch.equal(first[w], second[w])  # a new data order gives a different run
    best_before = r.best_val_accuracy
    info = r.weight_soup([0, 1])
    assert info is not None and info["members"] == [0, 1]
    assert info["mean_ingredient_val_accuracy"] == pytest.approx((r._ingredients[0][1] + r._ingredients[1][1]) / 2)
    n, p = len(r.val_data), info["mean_ingredient_val_accuracy"]
    assert info["noise_margin"] == pytest.approx(max(2 / n, 0.005, 2 * (p * (1 - p) / n) ** 0.5))
    expected = (
        info["soup_val_accuracy"] >= info["mean_ingredient_val_accuracy"] - info["noise_margin"] - 1e-6
        and info["soup_val_accuracy"] >= best_before - info["noise_margin"] - 1e-6
    )
    assert info["adopted"] == expected
    if info["adopted"]:
        torch.testing.assert_close(r.model.state_dict()[w], (first[w] + second[w]) / 2)
        assert r.best_val_accuracy == info["soup_val_accuracy"]
    assert r.weight_soup([0]) is None  # one ingredient is no soup


def test_weight_soup_is_vetoed_when_validation_collapses() -> None:
    r = _runner(label_smoothing=0.0)
    head = len(r.groups) - 1
    phase = Phase("ft", trainable=(head - 1, head), epochs=3, lr=1e-2, augment="none", patience=0, ingredient=True)
    r.run_phase(0, phase, [])
    good = r._ingredients[0]
    # an ingredient from another basin: its classifier points the opposite way, so the average predicts nothing
    bad = {k: v.clone() for k, v in good[0].items()}
    bad["classifier.weight"] = -3 * bad["classifier.weight"]
    bad["classifier.bias"] = -3 * bad["classifier.bias"]
    r._ingredients[1] = (bad, good[1], good[2])
    before = r.best_val_accuracy
    kept = {k: v.clone() for k, v in r.model.state_dict().items()}
    info = r.weight_soup([0, 1])
    assert info is not None and not info["adopted"]
    assert info["soup_val_accuracy"] < good[1] - info["noise_margin"]
    assert r.best_val_accuracy == before
    torch.testing.assert_close(r.model.state_dict(), kept)  # the best weights are back in the model


def test_from_pretrained_phase_starts_from_the_initial_weights() -> None:
    r = _runner()
    head = len(r.groups) - 1
    initial = {k: v.clone() for k, v in r.model.state_dict().items()}
    r.run_phase(0, Phase("probe", trainable=(head,), epochs=2, lr=1e-1, augment="none", patience=0), [])
    assert not torch.equal(r.model.state_dict()["classifier.weight"], initial["classifier.weight"])
    fresh = Phase("ft", (head - 1, head), epochs=1, lr=1e-3, augment="none", patience=0, from_pretrained=True)
    fresh = replace(fresh, ingredient=True)
    r.run_phase(1, fresh, [])
    torch.testing.assert_close(r._phase_start[1], initial)
