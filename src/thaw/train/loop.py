"""One epoch of training and one pass of evaluation, written once for every phase.

Both take a ``forward`` callable and an iterable of ``(inputs, labels)`` batches, so the same code trains a full
network on images and a bare classifier on cached features.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from thaw.models.groups import LayerGroup

__all__ = [
    "EpochStats",
    "NonFiniteLossError",
    "train_epoch",
    "evaluate",
    "autocast",
    "WarmupCosine",
    "relative_grad_norm",
    "weight_drift",
    "tensor_batches",
]

Batch = tuple[torch.Tensor, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    grad_norm: dict[int, float] = field(default_factory=dict)
    steps: int = 0
    """Optimizer steps taken (training only)."""
    """Mean relative gradient norm ||g|| / ||theta|| per layer group index (training only)."""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    """Mixed-precision context, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class WarmupCosine:
    """Learning-rate factor for LambdaLR: linear warmup, then cosine to zero over ``total_steps``.

    A small callable object rather than a closure so that ``total_steps`` can be shortened when a time budget cuts
    a phase, and saved in a checkpoint.
    """

    def __init__(self, total_steps: int, warmup_fraction: float, min_warmup_steps: int = 0) -> None:
        self.warmup_fraction, self.min_warmup_steps = warmup_fraction, min_warmup_steps
        self.total_steps = max(1, total_steps)
        self.warmup_steps = self._warmup(self.total_steps)

    def _warmup(self, total: int) -> int:
        return min(max(int(self.warmup_fraction * total), self.min_warmup_steps), total // 2)

    def resize(self, total_steps: int) -> None:
        """Re-size the schedule to ``total_steps`` (the clock planned the phase's length), warmup included: a
        phase planned long before its epoch cost was known would otherwise keep a warmup sized to the guess."""
        self.total_steps = max(1, total_steps)
        self.warmup_steps = self._warmup(self.total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def relative_grad_norm(params: Sequence[nn.Parameter]) -> float | None:
    """||g|| / ||theta|| over ``params`` (None when none has a gradient): the relative gradient norm of a layer group
    (Auto-RGN, Lee et al. 2023), shared by the training loop's metrics and ``strategy.signals``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    gnorm = torch.nn.utils.get_total_norm(grads)
    pnorm = torch.nn.utils.get_total_norm([p.detach() for p in params])
    return float(gnorm / pnorm.clamp_min(1e-12))


def weight_drift(
    model: nn.Module, initial_state: Mapping[str, torch.Tensor], groups: Sequence[LayerGroup]
) -> dict[str, float]:
    """How far each layer group moved from its initial weights: ||theta - theta0|| / ||theta0||.

    Args:
        model: the model now.
        initial_state: parameter name -> initial tensor (e.g. a copy of ``model.state_dict()`` before training);
            parameters missing from it are ignored.
        groups: ``layer_groups(model)``.

    Returns:
        Group name -> relative drift; a group whose initial weights are all zero gets 0.0 when unchanged and
        ``inf`` otherwise.
    """
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    with torch.no_grad():
        for g in groups:
            names = [p for p in g.param_names if p in params and p in initial_state]
            diff = math.sqrt(sum(float((params[p].double() - initial_state[p].double()).pow(2).sum()) for p in names))
            base = math.sqrt(sum(float(initial_state[p].double().pow(2).sum()) for p in names))
            out[g.name] = diff / base if base > 0 else (0.0 if diff == 0 else math.inf)
    return out


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    device: torch.device,
    grad_groups: dict[int, list[nn.Parameter]] | None = None,
    regularizer: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[int, float, float, float], None] | None = None,
    all_agree: Callable[[bool], bool] | None = None,
) -> EpochStats:
    """Train over ``batches`` once; returns the mean loss and accuracy over the images seen.

    ``regularizer`` (e.g. L2-SP) is added to the objective but not to the reported loss; ``on_step`` is called after
    every step with (steps done, mean loss, accuracy, images/second) for a progress display.

    Raises:
        NonFiniteLossError: a batch produced a NaN/inf loss (the caller restores good weights).
    """
    start = time.perf_counter()
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    seen = 0
    grad_sums: dict[int, float] = {}
    steps = 0
    for inputs, labels in batches:
        with autocast(device, amp_dtype):
            logits = forward(inputs)
            loss = F.cross_entropy(logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing)
        finite = bool(torch.isfinite(loss))
        if all_agree is not None:
            finite = all_agree(finite)  # every rank stops together, or DDP's gradient all-reduce would hang
        if not finite:
            raise NonFiniteLossError(f"loss became {loss.item()} at step {steps}")
        optimizer.zero_grad(set_to_none=True)
        objective = loss + regularizer() if regularizer is not None else loss
        objective.backward()  # type: ignore[no-untyped-call]
        if grad_groups:
            for g, params in grad_groups.items():
                ratio = relative_grad_norm(params)
                if ratio is not None:
                    grad_sums[g] = grad_sums.get(g, 0.0) + ratio
        optimizer.step()
        scheduler.step()
        steps += 1
        n = labels.shape[0]
        total_loss += loss.detach().double() * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        if on_step is not None:
            on_step(steps, float(total_loss) / seen, correct / seen, seen / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=float(total_loss) / max(seen, 1),
        accuracy=correct / max(seen, 1),
        images=seen,
        seconds=seconds,
        grad_norm={g: s / max(steps, 1) for g, s in grad_sums.items()},
        steps=steps,
    )


@torch.inference_mode()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    *,
    amp_dtype: torch.dtype | None = None,
    device: torch.device,
) -> tuple[EpochStats, torch.Tensor]:
    """Loss and accuracy over ``batches`` (plain cross-entropy, no smoothing) and the float32 logits, on CPU."""
    start = time.perf_counter()
    outputs: list[torch.Tensor] = []
    labels_all: list[torch.Tensor] = []
    for inputs, labels in batches:
        with autocast(device, amp_dtype):
            logits = forward(inputs)
        outputs.append(logits.float().cpu())
        labels_all.append(labels.cpu())
    logits = torch.cat(outputs) if outputs else torch.zeros(0, 0)
    labels_cat = torch.cat(labels_all) if labels_all else torch.zeros(0, dtype=torch.long)
    n = labels_cat.shape[0]
    loss = float(F.cross_entropy(logits, labels_cat)) if n else float("nan")
    acc = float((logits.argmax(1) == labels_cat).float().mean()) if n else float("nan")
    return EpochStats(loss=loss, accuracy=acc, images=n, seconds=time.perf_counter() - start), logits


def tensor_batches(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    order: torch.Tensor | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device,
    drop_singleton: bool = False,
) -> Iterator[Batch]:
    """Slice in-memory tensors into batches (in ``order`` when given), moving each to ``device``.

    Used for evaluation and for cached features; a DataLoader would add per-sample collation for nothing here.
    """
    n = order.shape[0] if order is not None else inputs.shape[0]
    idx = order
    for s in range(0, n, batch_size):
        if drop_singleton and n - s == 1 and s > 0:
            break  # a batch of one breaks BatchNorm in train mode and adds noise
        sel = idx[s : s + batch_size] if idx is not None else slice(s, s + batch_size)
        x = inputs[sel]
        if transform is not None:
            x = transform(x)
        yield x.to(device, non_blocking=True), labels[sel].to(device, non_blocking=True)
