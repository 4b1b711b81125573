"""Run state <-> checkpoint: what ``--resume`` needs to continue exactly where a run stopped.

Tensors (safetensors files in ``checkpoints/last/``): ``model`` (current weights), ``initial`` (the weights training
began with), ``overall`` (the best weights so far), ``own_best`` (the running phase's best, when it keeps weights),
``kept{I}`` (phase I's kept weights), ``optimizer``. ``state.json``: the step history, the running phase's
``EpochState``, selection scores, elapsed seconds, RNG states and optimizer scalars. Written atomically by
``checkpoint.save_checkpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from thaw.strategy.base import AverageResult, Phase, PhaseResult, StepResult
from thaw.train import checkpoint as ckpt
from thaw.train.selection import PhaseSelection, Scored

if TYPE_CHECKING:
    from thaw.train.runner import EpochState, Runner

__all__ = ["save", "restore", "history_to_dicts", "history_from_dicts", "epoch_state_from_dict", "phase_from_dict"]

VERSION = 2


def history_to_dicts(history: Sequence[StepResult]) -> list[dict[str, Any]]:
    return [{"type": "phase" if isinstance(r, PhaseResult) else "average", **dataclasses.asdict(r)} for r in history]


def history_from_dicts(rows: Sequence[dict[str, Any]]) -> list[StepResult]:
    out: list[StepResult] = []
    for row in rows:
        d = {k: v for k, v in row.items() if k != "type"}
        if row.get("type") == "average":
            out.append(AverageResult(**{**d, "members": tuple(d["members"])}))
            continue
        out.append(PhaseResult(**{**d, "phase": phase_from_dict(d["phase"])}))
    return out


_PHASE_FIELDS = frozenset(f.name for f in dataclasses.fields(Phase))


def phase_from_dict(p: dict[str, Any]) -> Phase:
    """A phase saved by ``dataclasses.asdict``; keys of fields that no longer exist (a run directory written by an
    older thaw, e.g. ``optimizer`` and ``weight_decay`` before 2026-12) are dropped, so ``--resume`` still works."""
    known = {k: v for k, v in p.items() if k in _PHASE_FIELDS}
    return Phase(
        **{**known, "trainable": tuple(p["trainable"]), "lr_scales": {int(k): v for k, v in p["lr_scales"].items()}}
    )


def _scored(d: dict[str, Any]) -> Scored:
    return Scored(**d)


def epoch_state_from_dict(d: dict[str, Any]) -> EpochState:
    from thaw.train.runner import EpochState

    sel = d.get("selection") or {}
    selection = PhaseSelection(
        best=_scored(sel.get("best", {})), best_epoch=int(sel.get("best_epoch", 0)), last=_scored(sel.get("last", {}))
    )
    return EpochState(**{**d, "selection": selection})


def save(
    runner: Runner,
    where: Path,
    history: Sequence[StepResult],
    epoch_state: EpochState | None,
    opt: torch.optim.Optimizer | None,
    running: Phase | None = None,
) -> None:
    sel = runner.selection
    tensors: dict[str, dict[str, torch.Tensor]] = {"model": runner.model.state_dict(), "initial": runner.initial}
    if sel.best_state:
        tensors["overall"] = sel.best_state
    if epoch_state is not None and runner._own_best:
        tensors["own_best"] = runner._own_best
    for i, (weights, _) in sel.kept.items():
        tensors[f"kept{i}"] = weights
    state: dict[str, Any] = {
        "version": VERSION,
        "global_epoch": runner.global_epoch,
        "best": dataclasses.asdict(sel.best),
        "best_where": list(sel.best_where),
        "kept": {str(i): dataclasses.asdict(score) for i, (_, score) in sel.kept.items()},
        "history": history_to_dicts(history),
        "epoch_state": dataclasses.asdict(epoch_state) if epoch_state is not None else None,
        "running_phase": dataclasses.asdict(running) if running is not None and epoch_state is not None else None,
        "elapsed_seconds": runner.budget.elapsed(),
        "rng": ckpt.rng_state(),
    }
    if opt is not None and epoch_state is not None:
        tensors["optimizer"], state["optimizer"] = ckpt.optimizer_to_flat(opt)
    ckpt.save_checkpoint(where, tensors, state)


def restore(runner: Runner, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
    """Weights, selection and counters from a checkpoint written by ``save``."""
    if state.get("version") != VERSION:
        from thaw.errors import CheckpointError

        raise CheckpointError(
            f"this checkpoint was written by another version of thaw (format {state.get('version')}, this one reads "
            f"{VERSION}): start the run again without --resume"
        )
    device = runner.device

    def on_device(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in weights.items()}

    runner.model.load_state_dict(tensors["model"])
    # over the freshly built model's state, so a checkpoint that stored parameters only still restarts whole
    runner.initial = {**runner.initial, **on_device(tensors["initial"])}
    sel = runner.selection
    sel.best_state = on_device(tensors.get("overall", {}))
    sel.best = _scored(state["best"])
    sel.best_where = (state["best_where"][0], state["best_where"][1])
    sel.kept = {int(i): (on_device(tensors[f"kept{i}"]), _scored(score)) for i, score in state["kept"].items()}
    runner._own_best = on_device(tensors.get("own_best", {}))
    runner.global_epoch = state["global_epoch"]
    runner._resume_opt = (tensors.get("optimizer"), state.get("optimizer"))
    ckpt.set_rng(state["rng"])
