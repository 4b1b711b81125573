"""Fixed strategies: a precomputed list of phases, handed out one by one.

linear   head only (a linear probe)
last-k   head + the k groups below it
full     every group
groups   head + an explicit selection (surgical fine-tuning, any subset, early blocks included)
gradual  ULMFiT-style: head first, then one more group per phase, until everything trains
lp-ft    linear probe, then fine-tune everything starting from the probe's head (Kumar et al. 2022)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from thaw.config import FitConfig, phase_patience
from thaw.models.groups import select_groups
from thaw.strategy.base import Decision, Measurements, Phase, PlanContext, Step, StepResult

__all__ = ["FixedStrategy", "plan_fixed", "lr_scales", "probe_phase", "finetune_phase"]


def lr_scales(trainable: Sequence[int], head: int, cfg: FitConfig) -> dict[int, float]:
    """Per-group lr multipliers: the head gets 1; a backbone group gets backbone_lr_scale, times layer_decay once
    per group between it and the head when layer decay is on (so the decay really reaches the optimizer)."""
    scales: dict[int, float] = {}
    for g in trainable:
        if g == head:
            continue
        depth = head - g
        scales[g] = cfg.backbone_lr_scale * (cfg.layer_decay ** (depth - 1) if cfg.layer_decay else 1.0)
    return scales


def probe_phase(ctx: PlanContext, reason: str) -> Phase:
    """A head-only phase without augmentation, so the frozen backbone's features can be computed once."""
    cfg = ctx.config
    return Phase(
        name="linear-probe",
        trainable=(ctx.head,),
        epochs=cfg.probe_epochs,
        lr=cfg.probe_lr,
        bn_policy=cfg.bn,
        augment="none",
        patience=phase_patience(cfg, cfg.probe_epochs, minimum=5),
        reason=reason,
    )


def finetune_phase(ctx: PlanContext, name: str, trainable: Sequence[int], epochs: int, reason: str) -> Phase:
    """A phase that trains ``trainable`` with the run's fine-tuning settings (lr, scales, BN, augmentation)."""
    cfg = ctx.config
    ordered = tuple(sorted(set(trainable)))
    return Phase(
        name=name,
        trainable=ordered,
        epochs=epochs,
        lr=cfg.lr,
        lr_scales=lr_scales(ordered, ctx.head, cfg),
        bn_policy=cfg.bn,
        augment=cfg.augment,
        patience=phase_patience(cfg, epochs),
        reason=reason,
    )


def plan_fixed(name: str, ctx: PlanContext) -> list[Phase]:
    """The whole phase list of a fixed strategy."""
    cfg, head = ctx.config, ctx.head
    n = len(ctx.groups)
    if name == "linear":
        return [probe_phase(ctx, "linear: only the new head trains; the pretrained backbone stays frozen")]
    if name == "full":
        return [finetune_phase(ctx, "full", range(n), cfg.epochs, "full: every layer group trains")]
    if name == "last-k":
        k = min(cfg.k, n - 1)
        first = head - k
        names = ", ".join(ctx.groups[i].name for i in range(first, head)) or "none"
        return [
            finetune_phase(
                ctx, f"last-{k}", range(first, n), cfg.epochs, f"last-k (k={k}): head + {names}; rest frozen"
            )
        ]
    if name == "groups":
        assert cfg.groups is not None  # validated by FitConfig
        chosen = [g for g in select_groups(ctx.groups, cfg.groups) if g != head]
        names = ", ".join(ctx.groups[i].name for i in chosen)
        return [finetune_phase(ctx, "groups", [*chosen, head], cfg.epochs, f"groups: head + {names} (surgical)")]
    if name == "gradual":
        phases = [probe_phase(ctx, "gradual: start with the head alone")]
        for first in range(head - 1, -1, -1):
            last = first == 0
            phases.append(
                finetune_phase(
                    ctx,
                    f"gradual-{head - first}",
                    range(first, n),
                    cfg.epochs if last else cfg.gradual_epochs,
                    f"gradual: thaw {ctx.groups[first].name} (one more group toward the input)",
                )
            )
        return phases
    if name == "lp-ft":
        return [
            probe_phase(ctx, "lp-ft: fit the head on frozen features first, so fine-tuning starts from a good head"),
            finetune_phase(ctx, "fine-tune", range(n), cfg.epochs, "lp-ft: fine-tune every group from the probed head"),
        ]
    raise AssertionError(f"not a fixed strategy: {name}")


@dataclass
class FixedStrategy:
    """Hands out the phases of ``plan_fixed`` in order."""

    name: str

    def needs(self, history: Sequence[StepResult]) -> Measurements:
        return Measurements()

    def next_step(self, ctx: PlanContext, history: Sequence[StepResult]) -> Step | None:
        phases = plan_fixed(self.name, ctx)
        return phases[len(history)] if len(history) < len(phases) else None

    def decisions(self, history: Sequence[StepResult]) -> list[Decision]:
        """A fixed plan decides nothing from measurements: its phases' reasons say what they are."""
        return []
