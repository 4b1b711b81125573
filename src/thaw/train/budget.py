"""The wall-clock budget of a run: its one owner.

The clock starts when ``fit`` starts (loading and decoding count). ``reserve`` is set aside for what follows
training (the final evaluation, export and report), so ``left()`` is what training steps may still spend; it is asked
again at every ``left()``, so an estimate that sharpens as training measures costs is used as it sharpens. Under
torchrun rank 0's clock decides for every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from thaw.train.dist import DistInfo, broadcast_float

__all__ = ["Budget"]


class Budget:
    """Seconds since the run started and, with a budget, seconds left for training."""

    def __init__(
        self,
        seconds: float | None,
        *,
        elapsed_before: float = 0.0,
        dist: DistInfo | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.seconds = seconds
        self.reserve: Callable[[], float] = _nothing
        """Seconds kept back for the final evaluation, export and report (set once they can be estimated)."""
        self._started = time.monotonic() - elapsed_before
        self._dist = dist or DistInfo()
        self._device = device or torch.device("cpu")

    def elapsed(self) -> float:
        """Seconds since the run started (earlier sessions of a resumed run included)."""
        return time.monotonic() - self._started

    def left(self) -> float | None:
        """Seconds left for training (rank 0's clock on every rank); None without a budget.

        A collective under torchrun: every rank must call it at the same point.
        """
        if self.seconds is None:
            return None
        return broadcast_float(self.seconds - self.reserve() - self.elapsed(), self._dist, self._device)


def _nothing() -> float:
    return 0.0
