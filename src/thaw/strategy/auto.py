"""``auto``: decide each phase from what the previous ones measured.

The plan is validation-gated deepening, the shape that LP-FT and surgical fine-tuning results point to:

1. **Probe.** Train the new head on frozen features (cached, so it costs about one forward pass). It measures how far
   the pretrained features get on their own and gives fine-tuning a good head to start from (LP-FT).
2. **Partial.** Thaw the groups the gradient signal ranks highest (relative gradient norm ||g||/||theta|| per group
   with the probed head, Auto-RGN): about half of the backbone. Learning rates per group follow the same signal.
3. **Deeper, only if it paid.** When the partial phase beat the probe on validation by a real margin (twice that
   margin when the train/val gap is large), thaw everything; otherwise stop and keep the best weights.
4. **Repeat and average, if the budget allows.** With ``--time-budget`` time left over, the phase that won is run
   again from its own starting weights (new data order and augmentation), and the runs' weights are averaged where
   validation agrees (greedy soup, Wortsman et al. 2022): one model, lower variance than any single run.

Every decision is recorded with the numbers it came from (``Phase.signals`` and ``reason``), and phase lengths are
sized to the wall-clock budget from measured throughput.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from thaw.config import phase_patience
from thaw.strategy.base import Phase, PhaseResult, PlanContext, min_gain
from thaw.strategy.fixed import lr_scales, probe_phase

__all__ = ["AutoStrategy", "min_gain"]

#: Train accuracy minus validation accuracy above which thawing more is considered overfitting.
GAP_LIMIT = 0.2

#: Repeats of the deciding phase that a time budget may buy for a weight soup (so at most 3 ingredients).
MAX_REPEATS = 2


def _rgn_scales(rgn: Mapping[str, float], names: Sequence[str], chosen: Sequence[int], base: float) -> dict[int, float]:
    """Auto-RGN: each thawed group's lr scale is proportional to its relative gradient norm (max -> ``base``)."""
    values = [rgn.get(names[g], 0.0) for g in chosen]
    top = max(values, default=0.0)
    if top <= 0:
        return {g: base for g in chosen}
    # floor at 10 % so no thawed group is effectively frozen by a tiny signal
    return {g: base * max(v / top, 0.1) for g, v in zip(chosen, values, strict=True)}


@dataclass
class AutoStrategy:
    name: str = "auto"
    stop_reason: str = ""
    stop_signals: dict[str, Any] = field(default_factory=dict)

    def _epochs(self, ctx: PlanContext, history: Sequence[PhaseResult], share: float, cost: float) -> int:
        """Epochs for the next phase: the config's, cut to ``share`` of the budget left at ``cost`` s/epoch."""
        epochs = ctx.config.epochs
        if ctx.seconds_left is not None and cost > 0:
            epochs = min(epochs, int(ctx.seconds_left * share / cost))
        return epochs

    def next_phase(self, ctx: PlanContext, history: Sequence[PhaseResult]) -> Phase | None:
        if history and history[-1].phase.restart_from is not None:
            return self._repeat(ctx, history)
        phase = self._plan(ctx, history)
        if phase is None and history:
            return self._repeat(ctx, history)
        return phase

    def _repeat(self, ctx: PlanContext, history: Sequence[PhaseResult]) -> Phase | None:
        """Once thawing is decided, spend budget that would go unused on repeats of the phase that won.

        Each repeat starts from that phase's starting weights with a fresh data order and augmentation; the runner
        then averages the runs' weights where validation allows (greedy soup). Only with a time budget: without
        one, repeats would multiply the run time unasked.
        """
        last = history[-1]
        family = last.phase.restart_from if last.phase.restart_from is not None else last.index
        base = history[family]
        if ctx.seconds_left is None or not base.phase.ingredient or base.best_epoch == 0:
            return None
        repeats = [r for r in history if r.phase.restart_from == family]
        if len(repeats) >= MAX_REPEATS:
            return None
        cost = max(r.seconds for r in [base, *repeats])
        # a quarter more than the slowest run so far: the final evaluation and export must still fit
        if ctx.seconds_left < 1.25 * cost:
            return None
        n = len(repeats) + 1
        return replace(
            base.phase,
            name=f"{base.phase.name}-repeat{n}",
            restart_from=family,
            reason=f"auto: {ctx.seconds_left:.0f}s of the budget left, {base.phase.name} took {cost:.0f}s: repeat it "
            f"from its starting weights with a new data order (run {n + 1} of up to {MAX_REPEATS + 1}) and average "
            "the runs' weights if validation agrees (greedy soup)",
            signals={
                "seconds_left": ctx.seconds_left,
                "phase_seconds": cost,
                "base_val_accuracy": base.best_val_accuracy,
            },
        )

    def _plan(self, ctx: PlanContext, history: Sequence[PhaseResult]) -> Phase | None:
        cfg = ctx.config
        names = [g.name for g in ctx.groups]
        head = ctx.head
        backbone = list(range(head))
        per_class = ctx.num_train / max(ctx.num_classes, 1)
        num_val = int(ctx.signals.get("num_val", 0))
        rgn: Mapping[str, float] = ctx.signals.get("rgn", {})

        if not history:
            return probe_phase(
                ctx,
                f"auto: probe first ({per_class:.0f} images/class): cheap on cached features, "
                "measures the pretrained features, and gives fine-tuning a trained head",
            )

        last = history[-1]
        best_before = max(
            (r.best_val_accuracy for r in history[:-1] if math.isfinite(r.best_val_accuracy)), default=-math.inf
        )
        gap = last.last_train_accuracy - last.best_val_accuracy
        sig = {
            "best_val_accuracy": last.best_val_accuracy,
            "train_accuracy": last.last_train_accuracy,
            "train_val_gap": gap,
            "images_per_class": per_class,
        }

        if len(history) == 1:
            # choose which groups to thaw first: the higher half of the backbone by relative gradient norm
            count = max(1, math.ceil(len(backbone) / 2))
            if rgn:
                ranked = sorted(backbone, key=lambda g: rgn.get(names[g], 0.0), reverse=True)
                chosen = sorted(ranked[:count])
                why = "highest relative gradient norms " + ", ".join(
                    f"{names[g]}={rgn.get(names[g], 0):.2e}" for g in chosen
                )
            else:
                chosen = backbone[-count:]
                why = "no gradient signal measured: the groups nearest the head"
            # a partial phase costs roughly the probe's forward pass per image plus a backward over the thawed part
            cost = ctx.signals.get("full_epoch_seconds", 0.0) * 0.75
            epochs = self._epochs(ctx, history, 0.35, cost)
            if epochs < 1:
                self.stop_reason, self.stop_signals = "time budget too small for a fine-tuning epoch", sig
                return None
            scales = (
                _rgn_scales(rgn, names, chosen, cfg.backbone_lr_scale) if rgn else lr_scales([*chosen, head], head, cfg)
            )
            return Phase(
                name="auto-partial",
                trainable=tuple(sorted([*chosen, head])),
                epochs=epochs,
                lr=cfg.lr,
                lr_scales=scales,
                bn_policy=cfg.bn,
                augment=cfg.augment,
                patience=phase_patience(cfg, epochs),
                signals={**sig, "rgn": dict(rgn), "estimated_epoch_seconds": cost},
                ingredient=True,
                reason=f"auto: thaw {len(chosen)} of {len(backbone)} backbone groups ({why}); probe reached "
                f"val {last.best_val_accuracy:.4f}",
            )

        if len(history) == 2:
            gain = last.best_val_accuracy - best_before
            need = min_gain(num_val)
            sig.update(gain_over_probe=gain, min_gain=need)
            if gain < need:
                self.stop_reason = (
                    f"partial fine-tuning gained {gain:+.4f} over the probe (< {need:.4f} needed): "
                    "thawing deeper is not supported by validation; keeping the best weights"
                )
                self.stop_signals = sig
                return None
            # validation is the arbiter: a large train/val gap stops thawing only when the gain was marginal
            # (fashion10: a +0.05 partial gain with a 0.21 gap went on to +0.03 more when thawing everything)
            if gap > GAP_LIMIT and gain < 2 * need:
                self.stop_reason = (
                    f"train/val gap {gap:.3f} > {GAP_LIMIT}: thawing more would overfit; keeping the best weights"
                )
                self.stop_signals = sig
                return None
            cost = ctx.signals.get("full_epoch_seconds", 0.0)
            epochs = self._epochs(ctx, history, 1.0, cost)
            if epochs < 1:
                self.stop_reason, self.stop_signals = "time budget spent before a full fine-tuning epoch", sig
                return None
            scales = (
                _rgn_scales(rgn, names, backbone, cfg.backbone_lr_scale)
                if rgn
                else lr_scales(range(head + 1), head, cfg)
            )
            return Phase(
                name="auto-full",
                trainable=tuple(range(head + 1)),
                epochs=epochs,
                lr=cfg.lr,
                lr_scales=scales,
                bn_policy=cfg.bn,
                augment=cfg.augment,
                patience=phase_patience(cfg, epochs),
                signals={**sig, "estimated_epoch_seconds": cost},
                ingredient=True,
                reason=f"auto: partial phase gained {gain:+.4f} over the probe (>= {need:.4f}) with train/val gap "
                f"{gap:.3f}: thaw every group",
            )
        self.stop_reason = "every group has been thawed"
        self.stop_signals = sig
        return None

    def decisions(self, history: Sequence[PhaseResult]) -> list[dict[str, Any]]:
        """What was decided at each phase boundary, and why, for summary.json."""
        out: list[dict[str, Any]] = [
            {
                "phase": r.index,
                "decision": f"run {r.phase.name}",
                "reason": r.phase.reason,
                "signals": dict(r.phase.signals),
            }
            for r in history
        ]
        if self.stop_reason:
            out.append(
                {"phase": len(history), "decision": "stop", "reason": self.stop_reason, "signals": self.stop_signals}
            )
        return out
