"""Each fixed strategy's plan: which groups train in each phase, with which learning-rate scales."""

from __future__ import annotations

import pytest
import timm

from thaw.config import FitConfig
from thaw.errors import ConfigError
from thaw.models.groups import layer_groups
from thaw.strategy.base import PhaseResult, PlanContext
from thaw.strategy.fixed import plan_fixed
from thaw.strategy.registry import make_strategy


def _ctx(**options: object) -> PlanContext:
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    groups = tuple(layer_groups(model))
    cfg = FitConfig.from_dict({"train": "x", **options})
    return PlanContext(config=cfg, groups=groups, num_train=30, num_classes=3)


def _names(ctx: PlanContext, trainable: tuple[int, ...]) -> list[str]:
    return [ctx.groups[i].name for i in trainable]


def test_linear_trains_only_the_head_without_augmentation() -> None:
    ctx = _ctx(strategy="linear")
    (phase,) = plan_fixed("linear", ctx)
    assert _names(ctx, phase.trainable) == ["head"]
    assert phase.augment == "none"  # so features can be cached
    assert phase.lr == ctx.config.probe_lr


def test_full_trains_every_group() -> None:
    ctx = _ctx(strategy="full")
    (phase,) = plan_fixed("full", ctx)
    assert phase.trainable == tuple(range(len(ctx.groups)))


@pytest.mark.parametrize("k", [0, 1, 2, 99])
def test_last_k_is_head_plus_k_groups(k: int) -> None:
    ctx = _ctx(strategy="last-k", k=k)
    (phase,) = plan_fixed("last-k", ctx)
    n = len(ctx.groups)
    expected = list(range(max(n - 1 - k, 0), n))
    assert list(phase.trainable) == expected


def test_groups_is_surgical_and_always_includes_head() -> None:
    ctx = _ctx(strategy="groups", groups="stem,blocks.0")
    (phase,) = plan_fixed("groups", ctx)
    assert _names(ctx, phase.trainable) == ["stem", "blocks.0", "head"]


def test_groups_regex() -> None:
    ctx = _ctx(strategy="groups", groups="re:^blocks")
    (phase,) = plan_fixed("groups", ctx)
    names = _names(ctx, phase.trainable)
    assert names[-1] == "head" and all(n.startswith("blocks") for n in names[:-1]) and len(names) > 2


def test_groups_unknown_name_is_a_config_error() -> None:
    ctx = _ctx(strategy="groups", groups="blocks.O")
    with pytest.raises(ConfigError):
        plan_fixed("groups", ctx)


def test_gradual_adds_one_group_per_phase_toward_the_input() -> None:
    ctx = _ctx(strategy="gradual", epochs=5, gradual_epochs=1)
    phases = plan_fixed("gradual", ctx)
    n = len(ctx.groups)
    assert len(phases) == n
    for i, ph in enumerate(phases):
        assert ph.trainable == tuple(range(n - 1 - i, n))
    assert [p.epochs for p in phases[1:-1]] == [1] * (n - 2)
    assert phases[-1].epochs == 5


def test_lp_ft_probe_then_everything() -> None:
    ctx = _ctx(strategy="lp-ft")
    probe, ft = plan_fixed("lp-ft", ctx)
    assert probe.trainable == (len(ctx.groups) - 1,)
    assert ft.trainable == tuple(range(len(ctx.groups)))
    assert ft.lr == ctx.config.lr


def test_layer_decay_scales_each_group_below_the_head() -> None:
    ctx = _ctx(strategy="full", layer_decay=0.5, backbone_lr_scale=1.0)
    (phase,) = plan_fixed("full", ctx)
    head = len(ctx.groups) - 1
    assert phase.scale(head) == 1.0
    for g in range(head):
        assert phase.scale(g) == pytest.approx(0.5 ** (head - g - 1))


def test_fixed_strategy_hands_out_phases_in_order() -> None:
    ctx = _ctx(strategy="lp-ft")
    strat = make_strategy("lp-ft")
    first = strat.next_step(ctx, [])
    assert first is not None and first.name == "linear-probe"
    fake = PhaseResult(0, first, 1, 1, 0.5, 1.0, 1.0, 0.5, 1.0, 10.0)
    second = strat.next_step(ctx, [fake])
    assert second is not None and second.name == "fine-tune"
    assert strat.next_step(ctx, [fake, fake]) is None


def test_unknown_strategy_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'gradual'"):
        make_strategy("gradul")
