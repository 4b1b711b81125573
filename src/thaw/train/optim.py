"""Optimizer, schedule and regulariser of one phase, over exactly its trainable parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from timm.optim import param_groups_weight_decay  # type: ignore[attr-defined]  # public, not in timm's __all__
from torch import nn

from thaw.config import FitConfig
from thaw.models.groups import LayerGroup
from thaw.strategy.base import Phase
from thaw.train.loop import WarmupCosine

__all__ = [
    "MIN_WARMUP_STEPS",
    "no_decay_params",
    "param_groups",
    "build_optimizer",
    "l2sp_regularizer",
    "steps_per_epoch",
]


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``num_images``: a last batch of one image is dropped (it breaks BatchNorm in
    train mode), so it does not count."""
    return max(1, num_images // batch_size + (1 if num_images % batch_size > 1 or num_images < batch_size else 0))


def no_decay_params(model: nn.Module) -> set[int]:
    """ids of the parameters that take no weight decay, by timm's rule: biases, normalisation weights (1-d) and what
    the model's ``no_weight_decay()`` names (a ViT's ``pos_embed`` and ``cls_token``)."""
    no_wd = getattr(model, "no_weight_decay", None)
    skip = set(no_wd()) if callable(no_wd) else set()
    flags = {id(p): p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():  # timm's helper lists only parameters that require grad
            p.requires_grad_(True)
        groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=tuple(skip))
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    return {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


def param_groups(
    phase: Phase,
    groups: Sequence[LayerGroup],
    params: Mapping[str, nn.Parameter],
    no_decay: set[int],
    weight_decay: float,
) -> list[dict[str, Any]]:
    """One optimizer group per (layer group, decay or not), each with its own peak learning rate."""
    out = []
    for gi in phase.trainable:
        lr = phase.lr * phase.scale(gi)
        members = [params[name] for name in groups[gi].param_names]
        decay = [p for p in members if id(p) not in no_decay]
        plain = [p for p in members if id(p) in no_decay]
        name = groups[gi].name
        if decay:
            out.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "group": name})
        if plain:
            out.append({"params": plain, "lr": lr, "weight_decay": 0.0, "group": name})
    return out


#: Fewest warmup steps of a phase that trains backbone groups (docs/benchmarks.md, "Warmup in steps": on digits, 40
#: steps from a probed head ended at 0.29 and 0.07 validation accuracy without warmup, 0.90-0.94 with 10-20 steps).
MIN_WARMUP_STEPS = 20


def build_optimizer(
    cfg: FitConfig,
    phase: Phase,
    groups: list[dict[str, Any]],
    total_steps: int,
    steps_per_epoch: int,
    thaws_backbone: bool = True,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, WarmupCosine]:
    """A fresh optimizer over ``groups`` and a per-step warmup+cosine schedule over ``total_steps``.

    The schedule multiplies each parameter group's own initial lr, so layer-wise scales survive it. The warmup lasts
    at least one epoch and, when backbone groups train, at least ``MIN_WARMUP_STEPS`` optimizer steps (capped at half
    the phase): on short phases a 10 % warmup is a couple of steps, and AdamW's first steps move every weight by
    about the learning rate whatever its gradient, which collapsed a backbone under a probed head (docs/benchmarks.md,
    "Warmup in steps").
    """
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=phase.lr, momentum=cfg.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=phase.lr)
    floor = max(steps_per_epoch, MIN_WARMUP_STEPS if thaws_backbone else 0) if cfg.warmup else 0
    schedule = WarmupCosine(total_steps, cfg.warmup, floor)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule), schedule


def l2sp_regularizer(
    alpha: float | None,
    phase: Phase,
    groups: Sequence[LayerGroup],
    params: Mapping[str, nn.Parameter],
    initial: Mapping[str, torch.Tensor],
) -> Callable[[], torch.Tensor] | None:
    """L2-SP (Li et al. 2018): alpha/2 ||w - w0||^2 over thawed pretrained weights, beta/2 ||w||^2 on the new head
    with beta = alpha / 10. It replaces weight decay (decay toward zero would fight it)."""
    if not alpha:
        return None
    head = len(groups) - 1
    pre = [(params[n], initial[n]) for g in phase.trainable if g != head for n in groups[g].param_names]
    head_params = [params[n] for n in groups[head].param_names] if head in phase.trainable else []

    device = next(iter(params.values())).device

    def l2sp() -> torch.Tensor:
        total = torch.zeros((), device=device)
        for p, p0 in pre:
            total = total + (p - p0).pow(2).sum() * (alpha / 2)
        for p in head_params:
            total = total + p.pow(2).sum() * (alpha / 20)
        return total

    return l2sp
