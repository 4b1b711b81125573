"""Which weights are the result: the best on validation so far, each phase's own selection, kept weights, soups.

One record of the best weights (``Selection.best``) replaces the runner fields and ``best_epoch > 0`` checks that
used to say the same thing twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from thaw.strategy.base import min_gain

__all__ = ["Scored", "Selection", "PhaseSelection", "average_states", "noise_margin", "scored"]

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


@dataclass
class Scored:
    """Validation numbers of one set of weights: accuracy, loss, and per-image correctness and loss."""

    accuracy: float = -math.inf
    loss: float = math.inf
    correct: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)

    def beats(self, other: Scored) -> bool:
        """Higher accuracy, or the same accuracy at a lower loss."""
        return self.accuracy > other.accuracy or (self.accuracy == other.accuracy and self.loss < other.loss)


def scored(logits: torch.Tensor, labels: torch.Tensor) -> Scored:
    """Validation numbers from a validation pass's logits."""
    if logits.numel() == 0:
        return Scored(math.nan, math.nan)
    nll = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(1) == labels).long()
    accuracy = int(correct.sum()) / len(correct)  # exact k/n, as the per-image record gives it
    return Scored(accuracy, float(nll.mean()), correct.tolist(), [round(float(v), 5) for v in nll])


def state_copy(model: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def average_states(states: Sequence[State]) -> State:
    """Uniform average of floating-point tensors; integer buffers (BatchNorm's batch counters) from the first."""
    out = {}
    for key, first in states[0].items():
        out[key] = torch.stack([s[key] for s in states]).mean(0) if first.is_floating_point() else first.clone()
    return out


def noise_margin(mean_accuracy: float, num_val: int) -> float:
    """Noise of a validation accuracy: two binomial standard errors, sqrt(p(1-p)/n), and at least ``min_gain``.

    Used wherever one set of weights must beat another on validation to be taken (a soup, the best epoch over the
    last): on 20 validation images two standard errors are about 18 points, on 1000 about 2."""
    n = max(num_val, 1)
    p = min(max(mean_accuracy, 0.0), 1.0)
    return max(min_gain(n), 2 * math.sqrt(p * (1 - p) / n))


@dataclass
class PhaseSelection:
    """A phase's own best epoch and last epoch (what ``--resume`` needs to continue the selection)."""

    best: Scored = field(default_factory=Scored)
    best_epoch: int = 0
    last: Scored = field(default_factory=Scored)


class Selection:
    """The best weights of the run, the weights phases keep, and the rules that choose between them."""

    def __init__(self, num_val: int) -> None:
        self.num_val = num_val
        self.best = Scored()
        self.best_where: tuple[int, int] = (-1, 0)
        """(phase index, epoch within phase) of the best weights."""
        self.best_state: State = {}
        self.kept: dict[int, tuple[State, Scored]] = {}
        """Phase index -> (its selected weights, their validation numbers), for ``phase:I`` starts and soups."""

    def offer(self, model: torch.nn.Module, score: Scored, where: tuple[int, int]) -> bool:
        """Take the model's weights as the best if they beat the best so far."""
        if not score.beats(self.best):
            return False
        self.best, self.best_where, self.best_state = score, where, state_copy(model)
        return True

    def prefer_last(self, model: torch.nn.Module, phase: int, epochs: int, last: Scored) -> str | None:
        """At a phase's end, keep its last weights when their accuracy is within noise of the best so far.

        The best-validation epoch is a maximum over many noisy estimates, so it is biased upward; the end of the
        schedule is the converged model. A difference within ``noise_margin`` (two binomial standard errors, at least
        two images) is not evidence against the last epoch, so it wins such ties (measurements: docs/benchmarks.md,
        "Selection").

        Returns:
            The note for summary.json when the last epoch was taken, else None.
        """
        margin = noise_margin(self.best.accuracy, self.num_val)
        if self.best_where == (phase, epochs) or not last.accuracy >= self.best.accuracy - margin:
            return None
        before, where = self.best, self.best_where
        self.best, self.best_where, self.best_state = last, (phase, epochs), state_copy(model)
        note = (
            f"kept the last epoch ({epochs}, val {last.accuracy:.4f}): within {margin:.4f} of the best "
            f"({before.accuracy:.4f}, phase {where[0] + 1} epoch {where[1]}), so the difference is noise"
        )
        log.info("phase %d: %s", phase + 1, note)
        return note

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights into the model (no-op before any epoch)."""
        if self.best_state:
            model.load_state_dict(self.best_state)

    def adopt(self, model: torch.nn.Module, state: State, score: Scored, where: tuple[int, int]) -> None:
        """Make ``state`` the result whatever validation says (a refit has no held-out validation)."""
        self.best, self.best_where, self.best_state = score, where, state
        model.load_state_dict(state)

    def soup(
        self,
        model: torch.nn.Module,
        members: Sequence[int],
        evaluate: Any,
        where: tuple[int, int],
        *,
        veto: bool = True,
    ) -> dict[str, Any] | None:
        """Average the kept weights of ``members`` (uniform model soup, Wortsman et al. 2022).

        Runs that start from the same weights and differ only in data order and augmentation land in one basin, so
        their average is one model that usually generalises better than each run (docs/benchmarks.md, "Weight
        soup"). Validation only vetoes: on few images it is too noisy to pick ingredients, so the soup is adopted
        unless it falls below the runs' mean, or below the selected weights of a kept phase outside the soup (the
        probe, a race's loser), by more than ``noise_margin``. Not below the best weights so far: when those belong
        to an ingredient they are one epoch's maximum over hundreds of noisy validation passes, biased upward (stamps,
        20 validation images: epochs at 0.85 and 0.95 vetoed soups at 0.60 and 0.75, whose runs scored 0.651 and
        0.725 on test where the adopted soups of the same task scored 0.70-0.84; docs/benchmarks.md, "Tiny data").

        Args:
            model: the model to load the soup into (the best weights are restored afterwards).
            members: phase indices with kept weights.
            evaluate: callable returning ``Scored`` for the model's current weights on validation.
            where: what ``best_where`` becomes when the soup is adopted (the averaging step's index, epoch 0).
            veto: False when the members trained on the validation images (refits): validation cannot judge them,
                so the soup is adopted and its validation numbers are recorded as measured on training images.

        Returns:
            What was measured (for summary.json), or None with fewer than two kept members.
        """
        present = [m for m in members if m in self.kept]
        if len(present) < 2:
            return None
        soup = average_states([self.kept[m][0] for m in present])
        model.load_state_dict(soup)
        score: Scored = evaluate()
        accs = [self.kept[m][1].accuracy for m in present]
        mean_acc = sum(accs) / len(accs)
        margin = noise_margin(mean_acc, self.num_val)
        slack = margin + 1e-6  # a difference of exactly the margin counts as within it despite float rounding
        outside = max((kept.accuracy for i, (_, kept) in self.kept.items() if i not in present), default=-math.inf)
        adopted = not veto or (score.accuracy >= mean_acc - slack and score.accuracy >= outside - slack)
        info: dict[str, Any] = {
            "ingredients": {str(i): a for i, a in zip(present, accs, strict=True)},
            "members": present,
            "soup_val_accuracy": score.accuracy,
            "soup_val_loss": score.loss,
            "mean_ingredient_val_accuracy": mean_acc,
            "best_val_accuracy_before": self.best.accuracy,
            "best_outside_val_accuracy": outside if math.isfinite(outside) else None,
            "noise_margin": margin,
            "validated": veto,
            "adopted": adopted,
        }
        if adopted:
            self.best, self.best_where, self.best_state = score, where, soup
        self.restore(model)
        return info
