"""The types a strategy speaks: what a phase is, what it sees, what a finished phase reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thaw.config import FitConfig
from thaw.models.groups import LayerGroup

__all__ = ["Phase", "PlanContext", "PhaseResult", "Strategy", "min_gain"]


def min_gain(num_val: int) -> float:
    """Smallest validation-accuracy difference that counts as real: two images, or half a point on large sets."""
    return max(2.0 / max(num_val, 1), 0.005)


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable layer groups.

    The runner applies it: sets ``requires_grad``, BatchNorm modes, and builds a fresh optimizer and scheduler over
    exactly the trainable parameters. Strategies never touch the model themselves.
    """

    name: str
    trainable: tuple[int, ...]
    """Indices into the layer groups (input -> output order) that train in this phase."""
    epochs: int
    lr: float
    """Peak learning rate of the head; other groups get ``lr * lr_scales[group]``."""
    lr_scales: dict[int, float] = field(default_factory=dict)
    """Per-group multiplier of ``lr``; a group missing here gets 1.0."""
    bn_policy: str = "frozen-eval"
    augment: str = "light"
    patience: int = 3
    reason: str = ""
    signals: dict[str, Any] = field(default_factory=dict)
    """The measurements this phase was decided from (auto), for summary.json."""
    ingredient: bool = False
    """Keep this phase's starting and selected weights, for repeats and a weight soup."""
    restart_from: int | None = None
    """Start from the starting weights of that (ingredient) phase instead of the current best: a repeat of it with
    a fresh data order and augmentation, whose result joins the soup of that phase."""
    from_pretrained: bool = False
    """Start from the weights training began with (pretrained backbone, fresh zero head) instead of the current best.
    The best weights so far stay the result until this phase beats them on validation."""

    def scale(self, group: int) -> float:
        return self.lr_scales.get(group, 1.0)


@dataclass(frozen=True)
class PlanContext:
    """What a strategy may look at when it plans the next phase."""

    config: FitConfig
    groups: tuple[LayerGroup, ...]
    num_train: int
    num_classes: int
    seconds_left: float | None = None
    """Wall-clock budget left, when the run has one."""
    signals: dict[str, Any] = field(default_factory=dict)
    """Measurements made before training (auto strategy fills and reads this)."""

    @property
    def head(self) -> int:
        return len(self.groups) - 1


@dataclass
class PhaseResult:
    """What a finished phase measured."""

    index: int
    phase: Phase
    epochs_run: int
    best_epoch: int
    """Epoch within the phase (1-based) whose weights were kept; 0 if no epoch improved on the previous phase."""
    best_val_accuracy: float
    best_val_loss: float
    last_train_loss: float
    last_train_accuracy: float
    seconds: float
    images_per_second: float
    stopped: str = "completed"
    """Why it ended: completed, early-stopped, time-budget, non-finite-loss."""
    cached_features: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, group_names: Sequence[str]) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.phase.name,
            "trainable_groups": [group_names[i] for i in self.phase.trainable],
            "epochs": self.epochs_run,
            "max_epochs": self.phase.epochs,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "lr": self.phase.lr,
            "lr_scales": {group_names[i]: s for i, s in self.phase.lr_scales.items()},
            "bn_policy": self.phase.bn_policy,
            "augment": self.phase.augment,
            "start": (
                f"phase {self.phase.restart_from} start"
                if self.phase.restart_from is not None
                else "pretrained"
                if self.phase.from_pretrained
                else "best so far"
            ),
            "stopped": self.stopped,
            "cached_features": self.cached_features,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "reason": self.phase.reason,
            "signals": self.phase.signals,
            **self.extra,
        }


class Strategy(Protocol):
    """Answers "what next?" with a Phase, or None when training is done."""

    name: str

    def next_phase(self, ctx: PlanContext, history: Sequence[PhaseResult]) -> Phase | None: ...
