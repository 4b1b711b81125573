"""Checkpoints: atomic replacement, a failing disk keeps the previous one, no pickles."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
import torch

from thaw.errors import CheckpointError
from thaw.train import checkpoint as ckpt


def _save(d: Path, value: float) -> None:
    ckpt.save_checkpoint(d, {"model": {"w": torch.full((3,), value)}}, {"value": value})


def test_round_trip_and_replace(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints" / "last"
    _save(d, 1.0)
    _save(d, 2.0)
    tensors, state = ckpt.load_checkpoint(d)
    assert state == {"value": 2.0}
    torch.testing.assert_close(tensors["model"]["w"], torch.full((3,), 2.0))
    assert sorted(p.name for p in d.parent.iterdir()) == ["last"]
    assert all(p.suffix in {".json", ".safetensors"} for p in d.iterdir())  # data, not pickles


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "last"
    _save(d, 1.0)

    def no_space(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(CheckpointError, match="No space left on device"):
        _save(d, 2.0)
    monkeypatch.undo()
    _tensors, state = ckpt.load_checkpoint(d)
    assert state == {"value": 1.0}


def test_interrupted_swap_falls_back_to_prev(tmp_path: Path) -> None:
    d = tmp_path / "last"
    _save(d, 1.0)
    d.rename(tmp_path / "last.prev")  # SIGKILL between the two renames
    _tensors, state = ckpt.load_checkpoint(d)
    assert state == {"value": 1.0}


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "last")


def test_optimizer_state_round_trips_through_safetensors_and_json() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    tensors, meta = ckpt.optimizer_to_flat(opt)
    fresh = torch.optim.AdamW([p], lr=0.5)
    ckpt.optimizer_from_flat(fresh, tensors, meta)
    assert fresh.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_phase_round_trips_and_older_phase_keys_are_dropped() -> None:
    """A phase goes through JSON (the run directory's state); keys a field no longer has, as a run directory
    written by an older thaw holds (``optimizer``, ``weight_decay``), do not stop ``--resume``."""
    import dataclasses
    import json

    from thaw.strategy.base import Phase
    from thaw.train.state import phase_from_dict

    phase = Phase("full", (0, 1, 2), 5, 1e-3, lr_scales={0: 0.1, 1: 0.5}, seconds=12.5, start="phase:1", keep=True)
    saved = json.loads(json.dumps(dataclasses.asdict(phase)))
    assert phase_from_dict(saved) == phase
    assert phase_from_dict({**saved, "optimizer": None, "weight_decay": 0.05}) == phase
