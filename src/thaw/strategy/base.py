"""The types a strategy speaks: the steps it asks for, what it sees, what each finished step reports.

A strategy answers "what next?" with a ``Step``; the runner executes it; the result joins the history the strategy
reads next time. Strategies never touch the model.

* ``Phase``: train the named layer groups (one stretch of training with one optimizer and schedule).
* ``Candidates``: several phases from the same starting weights (a race); each becomes its own result.
* ``Average``: the uniform average of earlier phases' kept weights (a weight soup), adopted unless validation vetoes.
* ``Refit``: retrain a chosen phase on training + validation data for a measured length (nothing held out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thaw.config import FitConfig
from thaw.models.groups import LayerGroup

__all__ = [
    "Phase",
    "Candidates",
    "Average",
    "Refit",
    "Step",
    "Measurements",
    "Signals",
    "PlanContext",
    "PhaseResult",
    "AverageResult",
    "StepResult",
    "Decision",
    "Strategy",
    "min_gain",
    "phase_results",
]


def min_gain(num_val: int) -> float:
    """Smallest validation-accuracy difference that counts as real: two images, or half a point on large sets."""
    return max(2.0 / max(num_val, 1), 0.005)


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable layer groups.

    The runner applies it: sets ``requires_grad``, BatchNorm modes, and builds a fresh optimizer and scheduler over
    exactly the trainable parameters.
    """

    name: str
    trainable: tuple[int, ...]
    """Indices into the layer groups (input -> output order) that train in this phase."""
    epochs: int
    """Upper bound on the epochs; with ``seconds`` the measured epoch cost sets the length below it."""
    lr: float
    """Peak learning rate of the head; other groups get ``lr * lr_scales[group]``."""
    lr_scales: dict[int, float] = field(default_factory=dict)
    """Per-group multiplier of ``lr``; a group missing here gets 1.0."""
    bn_policy: str = "frozen-eval"
    augment: str = "light"
    patience: int = 3
    """Epochs without validation improvement before the phase ends; 0: off."""
    reason: str = ""
    signals: dict[str, Any] = field(default_factory=dict)
    """The measurements this phase was decided from, for summary.json."""
    start: str = "best"
    """Starting weights: ``best`` (the best weights so far), ``pretrained`` (the weights training began with: the
    pretrained backbone and a fresh head) or ``phase:I`` (the kept weights of phase I)."""
    keep: bool = False
    """Keep this phase's selected weights, for a later ``phase:I`` start or an ``Average``."""
    seconds: float | None = None
    """Wall-clock length to plan for: after the first epochs the schedule is sized (in optimizer steps, from the
    measured epoch cost) to end at this time, so the learning rate anneals to zero within it."""
    cache_views: int | None = None
    """Augmented views to cache for a frozen-prefix phase (None: the run's ``--cache-views``)."""
    refit: bool = False
    """Train on training + validation images (nothing held out: the last weights are the result)."""

    def scale(self, group: int) -> float:
        return self.lr_scales.get(group, 1.0)

    def start_phase(self) -> int | None:
        """The phase index of a ``phase:I`` start."""
        return int(self.start.split(":", 1)[1]) if self.start.startswith("phase:") else None


@dataclass(frozen=True)
class Candidates:
    """Race: train each phase from the same starting weights (their ``start``) and report each one."""

    phases: tuple[Phase, ...]
    reason: str = ""


@dataclass(frozen=True)
class Average:
    """Uniform weight soup of these phases' kept weights; adopted unless validation shows it clearly worse."""

    members: tuple[int, ...]
    reason: str = ""
    validated: bool = True
    """False when the members trained on the validation images (refits): then validation cannot veto the soup, and
    it is adopted on the strength of the validated soup whose recipe they repeat."""


@dataclass(frozen=True)
class Refit:
    """Retrain ``phase`` on training + validation images (``phase.refit`` is set by the runner)."""

    phase: Phase
    reason: str = ""


Step = Phase | Candidates | Average | Refit


@dataclass(frozen=True)
class Measurements:
    """What a strategy wants measured with the current weights before it plans its next step."""

    epoch_seconds: bool = False
    """The cost of a fine-tuning epoch of every group (forward + backward), measured on a few batches."""
    grad_norms: bool = False
    """Relative gradient norm ||g|| / ||theta|| of every layer group (Auto-RGN)."""
    mirrored: bool = False
    """The current weights' per-image numbers on the mirror images of the validation set (their numbers on the
    images themselves are the last phase's ``val_correct`` / ``val_nll``)."""


@dataclass(frozen=True)
class Signals:
    """Measurements made outside training, typed."""

    epoch_seconds: float | None = None
    """Seconds of one fine-tuning epoch of every group: training images forward + backward, validation forward."""
    grad_norms: Mapping[str, float] | None = None
    mirrored: tuple[Sequence[int], Sequence[float]] | None = None
    """Per-image (correct, loss) on the horizontal mirror images of the validation set."""


@dataclass(frozen=True)
class PlanContext:
    """What a strategy may look at when it plans its next step."""

    config: FitConfig
    groups: tuple[LayerGroup, ...]
    num_train: int
    num_classes: int
    num_val: int = 0
    seconds_left: float | None = None
    """Wall-clock budget left for training steps (the final evaluation and export are already set aside)."""
    budget_seconds: float | None = None
    """The whole training budget, when the run has one."""
    signals: Signals = field(default_factory=Signals)

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
    """Epoch within the phase (1-based) whose weights became the best so far; 0 if none did."""
    best_val_accuracy: float
    best_val_loss: float
    last_train_loss: float
    last_train_accuracy: float
    seconds: float
    images_per_second: float
    stopped: str = "completed"
    """Why it ended: completed, early-stopped, time-budget, non-finite-loss."""
    cached_features: bool = False
    steps: int = 0
    """Optimizer steps taken."""
    setup_seconds: float = 0.0
    """Seconds spent before the first epoch computing cached inputs (a head-only phase: one forward pass of the
    backbone over the training and validation images; a frozen-prefix phase: the prefix's)."""
    selected_val_accuracy: float = math.nan
    """Validation accuracy of the weights the phase ended with (its best epoch, or its last within noise)."""
    selected_val_loss: float = math.nan
    val_correct: list[int] = field(default_factory=list)
    """Per validation image, 1 if the selected weights classify it correctly: for paired noise estimates."""
    val_nll: list[float] = field(default_factory=list)
    """Per validation image, the selected weights' cross-entropy."""
    min_val_loss_epoch: int = 0
    """Epoch within the phase (1-based) with the lowest validation loss; 0 if none was measured."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, group_names: Sequence[str]) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.phase.name,
            "trainable_groups": [group_names[i] for i in self.phase.trainable],
            "epochs": self.epochs_run,
            "max_epochs": self.phase.epochs,
            "planned_seconds": self.phase.seconds,
            "steps": self.steps,
            "setup_seconds": self.setup_seconds,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "best_val_loss": self.best_val_loss,
            "min_val_loss_epoch": self.min_val_loss_epoch,
            "selected_val_accuracy": self.selected_val_accuracy,
            "lr": self.phase.lr,
            "lr_scales": {group_names[i]: s for i, s in self.phase.lr_scales.items()},
            "bn_policy": self.phase.bn_policy,
            "augment": self.phase.augment,
            "start": self.phase.start,
            "data": "train+val" if self.phase.refit else "train",
            "stopped": self.stopped,
            "cached_features": self.cached_features,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
            "reason": self.phase.reason,
            "signals": self.phase.signals,
            **self.extra,
        }


@dataclass
class AverageResult:
    """What a weight soup measured."""

    index: int
    members: tuple[int, ...]
    adopted: bool
    info: dict[str, Any] = field(default_factory=dict)


StepResult = PhaseResult | AverageResult


def phase_results(history: Sequence[StepResult]) -> list[PhaseResult]:
    """The trained phases of a history (weight soups left out)."""
    return [r for r in history if isinstance(r, PhaseResult)]


@dataclass(frozen=True)
class Decision:
    """One decision of a strategy with the numbers it was made from (summary.json ``decisions``)."""

    step: int
    """Index in the history of the step the decision led to (or would have: a stop has the next index)."""
    decision: str
    reason: str
    signals: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.step, "decision": self.decision, "reason": self.reason, "signals": dict(self.signals)}


class Strategy(Protocol):
    """Answers "what next?" with a Step, or None when training is done."""

    name: str

    def needs(self, history: Sequence[StepResult]) -> Measurements:
        """What to measure before ``next_step`` is asked (cheap strategies measure nothing)."""
        ...

    def next_step(self, ctx: PlanContext, history: Sequence[StepResult]) -> Step | None:
        """The next step given everything measured so far; a pure function of ``ctx`` and ``history`` (resume
        re-plans from the checkpointed history)."""
        ...

    def decisions(self, history: Sequence[StepResult]) -> list[Decision]:
        """What was decided and why, with its numbers."""
        ...
